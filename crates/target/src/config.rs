//! spinblk's own configuration format: bdevs and the controllers that serve them. Built from a
//! JSON file (`--config`), from repeatable `--bdev`/`--controller` options, or from the
//! single-disk shorthand options; all three end in the same [`TargetConfig`] and the same checks,
//! and are then applied to a [`Target`](crate::Target) like any other request.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::bdev::{BdevKind, BdevParams, FileFlavor, QosLimits};
use crate::qos::QosUpdate;
use crate::rbd::{RbdClusterParams, RbdClusterRef, RbdSpec};
use crate::target::{ControllerParams, DEFAULT_IOPS_THRESHOLD, DEFAULT_NUM_QUEUES};
use spinblk_protocol::{parse_socket_mode, resolve_group, Coalescing, SocketOptions};
use spinblk_reactor::{PollMode, MAX_BATCH_WAIT};

/// Parses "4096", "64K", "512M", "1G", "2T" (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a size"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if bytes == 0 {
        return Err("size must not be zero".into());
    }
    Ok(bytes)
}

/// Everything `spinblk` serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Reactor cores ("0-3"); default: the union of the controllers' cores.
    #[serde(default, deserialize_with = "cpus_opt")]
    pub cpus: Option<Vec<usize>>,
    /// Block devices, by name.
    #[serde(default)]
    pub bdevs: Vec<BdevConfig>,
    /// vhost-user-blk controllers, one socket each.
    #[serde(default)]
    pub controllers: Vec<ControllerConfig>,
    /// Print one summary line per controller every this many seconds.
    #[serde(default)]
    pub stats_interval: Option<u64>,
    /// Permissions of every controller socket, octal ("0660"; default "0600").
    #[serde(default)]
    pub socket_mode: Option<String>,
    /// Group of every controller socket (a name or a gid).
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Reactor poll mode: "adaptive" (default) or "busy".
    #[serde(default)]
    pub poll_mode: Option<String>,
    /// Reactor batch wait in nanoseconds (0 turns it off; default
    /// [`DEFAULT_BATCH_WAIT`](crate::DEFAULT_BATCH_WAIT); at most
    /// [`MAX_BATCH_WAIT`](crate::MAX_BATCH_WAIT)).
    #[serde(default)]
    pub batch_wait_ns: Option<u64>,
}

/// What kind of block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BdevType {
    /// RAM disk (`size` required).
    Malloc,
    /// Reads zeroes, drops writes (`size` required).
    Null,
    /// A regular file or block device through io_uring (`path` required).
    File,
    /// An NVMe namespace's generic char device (/dev/ngXnY) through io_uring passthrough
    /// (`path` required).
    Nvme,
    /// A Ceph RBD image (`pool` and `image` required; `conf`, `user`, `op_timeout`,
    /// `ceph_options` optional).
    Rbd,
}

/// The Ceph configuration file an `rbd` bdev reads when none is given.
pub const DEFAULT_CEPH_CONF: &str = "/etc/ceph/ceph.conf";

/// One bdev.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevConfig {
    /// Unique name (also the default serial).
    pub name: String,
    /// Kind of bdev.
    #[serde(rename = "type")]
    pub bdev_type: BdevType,
    /// Capacity in bytes (K/M/G/T suffixes in strings) for malloc and null bdevs.
    #[serde(default, deserialize_with = "size_opt")]
    pub size: Option<u64>,
    /// Logical block size (512 or 4096; default 512, or the device's for block devices).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// File or block device for `file` bdevs.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Open without O_DIRECT (through the page cache), e.g. on filesystems without direct I/O.
    #[serde(default)]
    pub buffered: bool,
    /// For nvme bdevs: an IOPOLL ring (the nvme driver needs poll queues).
    #[serde(default)]
    pub poll: bool,
    /// Start in write-back mode (default); `false` makes every write durable on completion
    /// until the guest turns the cache on.
    #[serde(default)]
    pub write_cache: Option<bool>,
    /// For null bdevs: whether reads fill the buffer with zeroes (default true); false leaves
    /// it as it was, as SPDK's null bdev does (`no-read-zeroes` in `--bdev` text).
    #[serde(default)]
    pub read_zeroes: Option<bool>,
    /// Allow several writable controllers on this bdev (their guests must coordinate).
    #[serde(default)]
    pub shared: bool,
    /// A fixed uuid (default: a new random one each start).
    #[serde(default)]
    pub uuid: Option<String>,
    /// For rbd bdevs: the pool.
    #[serde(default)]
    pub pool: Option<String>,
    /// For rbd bdevs: the image.
    #[serde(default)]
    pub image: Option<String>,
    /// For rbd bdevs: the Ceph configuration file (default /etc/ceph/ceph.conf).
    #[serde(default)]
    pub conf: Option<PathBuf>,
    /// For rbd bdevs: the Ceph user, without `client.` (default admin).
    #[serde(default)]
    pub user: Option<String>,
    /// For rbd bdevs: seconds a request may wait for the cluster before it fails with IOERR
    /// (`rados_osd_op_timeout`; default: the config file's, else 30).
    #[serde(default)]
    pub op_timeout: Option<u64>,
    /// For rbd bdevs: more Ceph options (`{"rbd_cache": "false"}`), set after the file.
    #[serde(default)]
    pub ceph_options: Option<std::collections::BTreeMap<String, String>>,
    /// QoS: read + write I/Os per second (SPDK's `bdev_set_qos_limit` key; rounded up to a
    /// multiple of 1000; 0 or absent: no limit).
    #[serde(default)]
    pub rw_ios_per_sec: Option<u64>,
    /// QoS: read + write MiB per second.
    #[serde(default)]
    pub rw_mbytes_per_sec: Option<u64>,
    /// QoS: read MiB per second.
    #[serde(default)]
    pub r_mbytes_per_sec: Option<u64>,
    /// QoS: write MiB per second.
    #[serde(default)]
    pub w_mbytes_per_sec: Option<u64>,
}

impl BdevConfig {
    /// The registry parameters for this bdev; `readonly` opens a file or namespace read-only.
    pub fn params(&self, readonly: bool) -> Result<BdevParams, String> {
        self.check()?;
        let name = &self.name;
        let blocks = |bs: u32| -> Result<u64, String> {
            let size = self.required_size()?;
            if size % u64::from(bs) != 0 {
                return Err(format!(
                    "bdev '{name}': size {size} is not a multiple of the block size {bs}"
                ));
            }
            Ok(size / u64::from(bs))
        };
        let bs = self.block_size.unwrap_or(512);
        let kind = match self.bdev_type {
            BdevType::Malloc => BdevKind::Malloc {
                num_blocks: blocks(bs)?,
                block_size: bs,
            },
            BdevType::Null => BdevKind::Null {
                num_blocks: blocks(bs)?,
                block_size: bs,
                read_zeroes: self.read_zeroes.unwrap_or(true),
            },
            BdevType::File => BdevKind::File {
                flavor: FileFlavor::Uring,
                path: self.path.clone().unwrap_or_default(),
                block_size: self.block_size,
                readonly,
                buffered: self.buffered,
            },
            BdevType::Nvme => BdevKind::Nvme {
                path: self.path.clone().unwrap_or_default(),
                poll: self.poll,
                readonly,
            },
            BdevType::Rbd => BdevKind::Rbd(RbdSpec {
                pool: self.pool.clone().unwrap_or_default(),
                image: self.image.clone().unwrap_or_default(),
                block_size: bs,
                read_only: readonly,
                cluster: RbdClusterRef::Direct(RbdClusterParams {
                    user_id: self.user.clone(),
                    config_file: Some(
                        self.conf
                            .clone()
                            .unwrap_or_else(|| PathBuf::from(DEFAULT_CEPH_CONF)),
                    ),
                    config_param: self
                        .ceph_options
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    key_file: None,
                    core_mask: None,
                    op_timeout: self.op_timeout,
                }),
            }),
        };
        let uuid = match &self.uuid {
            Some(u) => Some(u.parse().map_err(|e| format!("bdev '{name}': {e}"))?),
            None => None,
        };
        Ok(BdevParams {
            name: name.clone(),
            uuid,
            kind,
            write_cache: self.write_cache.unwrap_or(true),
            shared: self.shared,
            qos: self.qos().apply(name, QosLimits::default()),
        })
    }

    /// The QoS limits this bdev asks for (SPDK's `bdev_set_qos_limit` keys).
    pub fn qos(&self) -> QosUpdate {
        QosUpdate {
            rw_ios_per_sec: self.rw_ios_per_sec,
            rw_mbytes_per_sec: self.rw_mbytes_per_sec,
            r_mbytes_per_sec: self.r_mbytes_per_sec,
            w_mbytes_per_sec: self.w_mbytes_per_sec,
        }
    }

    /// The capacity, which malloc and null bdevs must have.
    pub fn required_size(&self) -> Result<u64, String> {
        self.size
            .ok_or_else(|| format!("bdev '{}': size is required", self.name))
    }

    /// Checks that the fields the bdev's type needs are there, and no others.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.name;
        let rbd_fields = self.pool.is_some()
            || self.image.is_some()
            || self.conf.is_some()
            || self.user.is_some()
            || self.op_timeout.is_some()
            || self.ceph_options.is_some();
        if self.read_zeroes.is_some() && self.bdev_type != BdevType::Null {
            return Err(format!("bdev '{name}': read_zeroes is for null bdevs"));
        }
        if rbd_fields && self.bdev_type != BdevType::Rbd {
            return Err(format!(
                "bdev '{name}': pool, image, conf, user, op_timeout and ceph_options are for rbd bdevs"
            ));
        }
        match self.bdev_type {
            BdevType::Malloc | BdevType::Null => {
                self.required_size()?;
                if self.path.is_some() || self.buffered || self.poll {
                    return Err(format!(
                        "bdev '{name}': path and buffered are for file bdevs"
                    ));
                }
            }
            BdevType::File | BdevType::Nvme => {
                if self.path.is_none() {
                    return Err(format!("bdev '{name}': path is required"));
                }
                if self.size.is_some() {
                    return Err(format!("bdev '{name}': its size is the device's"));
                }
                if self.bdev_type == BdevType::Nvme && (self.buffered || self.block_size.is_some())
                {
                    return Err(format!(
                        "bdev '{name}': an nvme bdev takes its block size from the namespace and has no buffered mode"
                    ));
                }
            }
            BdevType::Rbd => {
                if self.pool.as_deref().is_none_or(str::is_empty)
                    || self.image.as_deref().is_none_or(str::is_empty)
                {
                    return Err(format!(
                        "bdev '{name}': an rbd bdev needs pool and image (rbd=POOL/IMAGE)"
                    ));
                }
                if self.size.is_some() || self.path.is_some() || self.buffered || self.poll {
                    return Err(format!(
                        "bdev '{name}': an rbd bdev's size is the image's; path, buffered and poll are for file and nvme bdevs"
                    ));
                }
                if self.block_size.is_some_and(|b| b != 512 && b != 4096) {
                    return Err(format!("bdev '{name}': block size must be 512 or 4096"));
                }
            }
        }
        Ok(())
    }
}

/// One vhost-user-blk controller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Unique name (default `vhost<N>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Unix socket it listens on (default: `<socket dir>/<name>`).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Name of the bdev it serves.
    pub bdev: String,
    /// Reactor cores its queues are spread over (default: all reactors).
    #[serde(default, deserialize_with = "cpus_opt")]
    pub cpus: Option<Vec<usize>>,
    /// Explicit queue-to-core map: queue i runs on `queue_cpus[i % len]`.
    #[serde(default)]
    pub queue_cpus: Option<Vec<usize>>,
    /// Most virtqueues offered.
    #[serde(default = "default_num_queues")]
    pub num_queues: u16,
    /// Offer the disk read-only.
    #[serde(default)]
    pub readonly: bool,
    /// GET_ID serial (default: the bdev name).
    #[serde(default)]
    pub serial: Option<String>,
    /// Permissions of this controller's socket, octal (default: the target's).
    #[serde(default)]
    pub socket_mode: Option<String>,
    /// Group of this controller's socket (default: the target's).
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Interrupt coalescing base delay in microseconds (SPDK's delay_base_us; default 0: off).
    #[serde(default)]
    pub delay_base_us: Option<u32>,
    /// Interrupt coalescing IOPS threshold (default 60000).
    #[serde(default)]
    pub iops_threshold: Option<u32>,
}

/// Socket permissions from a mode and a group given as text, over `base`.
pub fn socket_options(
    base: SocketOptions,
    mode: Option<&str>,
    group: Option<&str>,
) -> Result<SocketOptions, String> {
    let mut o = base;
    if let Some(m) = mode {
        o.mode = parse_socket_mode(m)?;
    }
    if let Some(g) = group {
        o.group = Some(resolve_group(g)?);
    }
    Ok(o)
}

fn default_num_queues() -> u16 {
    DEFAULT_NUM_QUEUES
}

fn size_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("size must be a positive integer")),
        Value::String(s) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom(
            "size must be a number or a string like \"1G\"",
        )),
    }
}

fn cpus_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<usize>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => spinblk_reactor::parse_cpu_list(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_u64()
            .map(|c| Some(vec![c as usize]))
            .ok_or_else(|| serde::de::Error::custom("cpu must be a non-negative integer")),
        Value::Array(a) => a
            .iter()
            .map(|v| {
                v.as_u64()
                    .map(|c| c as usize)
                    .ok_or_else(|| serde::de::Error::custom("cpus must be integers"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(serde::de::Error::custom(
            "cpus must be a list like \"0-3\" or [0, 1]",
        )),
    }
}

/// Parses `key=value,key=value,flag` option text into a JSON object: keys with `-` become `_`,
/// bare words become `true`, numbers stay numbers, and a bare piece that follows `cpus=` or
/// `queue-cpus=` continues that list (so `cpus=0,2,bdev=m0` works). `malloc=SIZE`,
/// `null=SIZE` and `file=PATH` set the bdev type; `no-write-cache` is `write_cache=false` and
/// `no-read-zeroes` is `read_zeroes=false`;
/// `rw-ios-per-sec=N`, `rw-mbytes-per-sec=N`, `r-mbytes-per-sec=N`, `w-mbytes-per-sec=N` are
/// QoS limits (numbers).
pub fn parse_kv(text: &str) -> Result<Value, String> {
    let mut map = Map::new();
    let mut last_list: Option<String> = None;
    for piece in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = piece.split_once('=') else {
            if let Some(k) = &last_list {
                if piece.chars().all(|c| c.is_ascii_digit() || c == '-') {
                    if let Some(Value::String(s)) = map.get_mut(k) {
                        s.push(',');
                        s.push_str(piece);
                    }
                    continue;
                }
            }
            match piece.replace('-', "_").as_str() {
                "no_write_cache" => map.insert("write_cache".into(), Value::Bool(false)),
                "no_read_zeroes" => map.insert("read_zeroes".into(), Value::Bool(false)),
                flag => map.insert(flag.to_string(), Value::Bool(true)),
            };
            last_list = None;
            continue;
        };
        let key = key.trim().replace('-', "_");
        let value = value.trim();
        last_list = None;
        match key.as_str() {
            "malloc" | "null" => {
                map.insert("type".into(), Value::String(key.clone()));
                map.insert("size".into(), Value::String(value.into()));
            }
            "file" | "nvme" => {
                map.insert("type".into(), Value::String(key.clone()));
                map.insert("path".into(), Value::String(value.into()));
            }
            "rbd" => {
                let (pool, image) = value
                    .split_once('/')
                    .ok_or_else(|| format!("rbd={value}: use rbd=POOL/IMAGE"))?;
                map.insert("type".into(), Value::String(key.clone()));
                map.insert("pool".into(), Value::String(pool.into()));
                map.insert("image".into(), Value::String(image.into()));
            }
            "cpus" => {
                map.insert(key.clone(), Value::String(value.into()));
                last_list = Some(key);
            }
            "queue_cpus" => {
                let cores = value
                    .split(':')
                    .map(|c| {
                        c.parse::<u64>()
                            .map(Value::from)
                            .map_err(|_| format!("bad core '{c}' in queue-cpus"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                map.insert(key, Value::Array(cores));
            }
            "num_queues" | "block_size" | "delay_base_us" | "iops_threshold" | "rw_ios_per_sec"
            | "rw_mbytes_per_sec" | "r_mbytes_per_sec" | "w_mbytes_per_sec" | "op_timeout" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("{key} must be a number"))?;
                map.insert(key, Value::from(n));
            }
            _ => {
                map.insert(key, Value::String(value.into()));
            }
        }
    }
    Ok(Value::Object(map))
}

/// Deserializes one `--bdev` option.
pub fn bdev_from_kv(text: &str) -> Result<BdevConfig, String> {
    serde_json::from_value(parse_kv(text)?).map_err(|e| format!("--bdev '{text}': {e}"))
}

/// Deserializes one `--controller` option.
pub fn controller_from_kv(text: &str) -> Result<ControllerConfig, String> {
    serde_json::from_value(parse_kv(text)?).map_err(|e| format!("--controller '{text}': {e}"))
}

/// A checked configuration: names resolved, cores known, sharing allowed.
#[derive(Debug, Clone)]
pub struct ResolvedController {
    /// The controller as configured.
    pub config: ControllerConfig,
    /// Its name.
    pub name: String,
    /// Index into `TargetConfig::bdevs`.
    pub bdev: usize,
    /// The core of each queue's reactor, cycled by queue index.
    pub queue_cores: Vec<usize>,
    /// Its socket path.
    pub socket: PathBuf,
    /// Its socket permissions (`None`: the target's).
    pub socket_options: Option<SocketOptions>,
}

impl ResolvedController {
    /// The target's parameters for this controller.
    pub fn params(&self, bdev_name: &str) -> ControllerParams {
        let c = &self.config;
        ControllerParams {
            name: self.name.clone(),
            bdev: bdev_name.to_string(),
            cpumask: None,
            queue_cores: Some(self.queue_cores.clone()),
            num_queues: c.num_queues,
            readonly: c.readonly,
            serial: c.serial.clone(),
            socket: Some(self.socket.clone()),
            socket_options: self.socket_options,
            coalescing: c.delay_base_us.map(|delay_base_us| Coalescing {
                delay_base_us,
                iops_threshold: c.iops_threshold.unwrap_or(DEFAULT_IOPS_THRESHOLD),
            }),
        }
    }
}

impl TargetConfig {
    /// The poll mode this configuration asks for, if any.
    pub fn poll_mode(&self) -> Result<Option<PollMode>, String> {
        self.poll_mode
            .as_deref()
            .map(|m| {
                m.parse()
                    .map_err(|e: spinblk_reactor::UnknownPollMode| e.to_string())
            })
            .transpose()
    }

    /// The batch wait this configuration asks for, if any; more than
    /// [`MAX_BATCH_WAIT`](crate::MAX_BATCH_WAIT) is an error.
    pub fn batch_wait(&self) -> Result<Option<Duration>, String> {
        self.batch_wait_ns
            .map(|ns| {
                let wait = Duration::from_nanos(ns);
                if wait > MAX_BATCH_WAIT {
                    Err(format!(
                        "batch_wait_ns {ns} is more than {} ({MAX_BATCH_WAIT:?})",
                        MAX_BATCH_WAIT.as_nanos()
                    ))
                } else {
                    Ok(wait)
                }
            })
            .transpose()
    }

    /// The default socket permissions this configuration asks for, over `base`.
    pub fn socket_options(&self, base: SocketOptions) -> Result<SocketOptions, String> {
        socket_options(
            base,
            self.socket_mode.as_deref(),
            self.socket_group.as_deref(),
        )
    }

    /// Checks names, sockets, cores and bdev sharing; fills in defaults. Controllers without a
    /// socket path get `<socket_dir>/<name>`.
    pub fn resolve(
        &self,
        default_cpu: usize,
        socket_dir: &std::path::Path,
    ) -> Result<(Vec<usize>, Vec<ResolvedController>), String> {
        self.socket_options(SocketOptions::default())?;
        self.poll_mode()?;
        self.batch_wait()?;
        let mut bdev_index = HashMap::new();
        for (i, b) in self.bdevs.iter().enumerate() {
            b.check()?;
            if bdev_index.insert(b.name.as_str(), i).is_some() {
                return Err(format!("bdev name '{}' is used twice", b.name));
            }
        }
        let all_cpus: Vec<usize> = match &self.cpus {
            Some(c) => c.clone(),
            None => {
                let union: BTreeSet<usize> = self
                    .controllers
                    .iter()
                    .flat_map(|c| {
                        c.cpus
                            .iter()
                            .flatten()
                            .chain(c.queue_cpus.iter().flatten())
                            .copied()
                    })
                    .collect();
                if union.is_empty() {
                    vec![default_cpu]
                } else {
                    union.into_iter().collect()
                }
            }
        };
        let mut names = BTreeSet::new();
        let mut sockets = BTreeSet::new();
        let mut users: HashMap<usize, Vec<&ControllerConfig>> = HashMap::new();
        let mut out = Vec::new();
        for (i, c) in self.controllers.iter().enumerate() {
            let name = c.name.clone().unwrap_or_else(|| format!("vhost{i}"));
            if !names.insert(name.clone()) {
                return Err(format!("controller name '{name}' is used twice"));
            }
            let socket = c.socket.clone().unwrap_or_else(|| socket_dir.join(&name));
            if !sockets.insert(socket.clone()) {
                return Err(format!(
                    "socket {} is used by two controllers",
                    socket.display()
                ));
            }
            let socket_options = if c.socket_mode.is_some() || c.socket_group.is_some() {
                Some(
                    socket_options(
                        self.socket_options(SocketOptions::default())?,
                        c.socket_mode.as_deref(),
                        c.socket_group.as_deref(),
                    )
                    .map_err(|e| format!("controller '{name}': {e}"))?,
                )
            } else {
                None
            };
            let &bdev = bdev_index
                .get(c.bdev.as_str())
                .ok_or_else(|| format!("controller '{name}': no bdev named '{}'", c.bdev))?;
            if !(1..=256).contains(&c.num_queues) {
                return Err(format!("controller '{name}': num_queues must be 1 to 256"));
            }
            if c.serial
                .as_ref()
                .is_some_and(|s| s.len() > spinblk_protocol::ID_BYTES)
            {
                return Err(format!(
                    "controller '{name}': serial is longer than {} bytes",
                    spinblk_protocol::ID_BYTES
                ));
            }
            let queue_cores = match (&c.queue_cpus, &c.cpus) {
                (Some(map), _) if !map.is_empty() => map.clone(),
                (Some(_), _) => return Err(format!("controller '{name}': queue_cpus is empty")),
                (None, Some(cpus)) => cpus.clone(),
                (None, None) => all_cpus.clone(),
            };
            if let Some(c) = queue_cores.iter().find(|c| !all_cpus.contains(c)) {
                return Err(format!(
                    "controller '{name}': cpu {c} is not one of the reactor cpus {all_cpus:?}"
                ));
            }
            users.entry(bdev).or_default().push(c);
            out.push(ResolvedController {
                config: c.clone(),
                name,
                bdev,
                queue_cores,
                socket,
                socket_options,
            });
        }
        for (bdev, ctrls) in users {
            let b = &self.bdevs[bdev];
            if ctrls.len() > 1 && !b.shared && ctrls.iter().any(|c| !c.readonly) {
                return Err(format!(
                    "bdev '{}' is served by {} controllers and not all of them are readonly; make them readonly or mark the bdev shared",
                    b.name,
                    ctrls.len()
                ));
            }
        }
        Ok((all_cpus, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn kv_options_become_configs() {
        let b = bdev_from_kv("name=m0,malloc=64M,block-size=4096,shared").expect("bdev");
        assert_eq!((b.bdev_type, b.size), (BdevType::Malloc, Some(64 << 20)));
        assert_eq!((b.block_size, b.shared), (Some(4096), true));
        let c = controller_from_kv(
            "socket=/tmp/a.sock,bdev=m0,cpus=0,2-3,num-queues=4,readonly,serial=abc",
        )
        .expect("controller");
        assert_eq!(c.cpus, Some(vec![0, 2, 3]));
        assert_eq!(
            (c.num_queues, c.readonly, c.serial.as_deref()),
            (4, true, Some("abc"))
        );
        let m = controller_from_kv("socket=/tmp/b.sock,bdev=m0,queue-cpus=1:0:1").expect("map");
        assert_eq!(m.queue_cpus, Some(vec![1, 0, 1]));
        assert!(bdev_from_kv("name=x,malloc=1Q").is_err());
        let f = bdev_from_kv("name=f0,file=/var/lib/a.img,buffered,no-write-cache").expect("file");
        assert_eq!(
            (f.bdev_type, f.buffered, f.write_cache),
            (BdevType::File, true, Some(false))
        );
        assert_eq!(
            f.path.as_deref(),
            Some(std::path::Path::new("/var/lib/a.img"))
        );
        assert!(f.check().is_ok());
        let q = bdev_from_kv("name=q0,null=1G,rw-ios-per-sec=20500,w-mbytes-per-sec=50")
            .expect("qos keys");
        let p = q.params(false).expect("params");
        assert_eq!(p.qos.rw_ios_per_sec, 21_000, "rounded up as SPDK does");
        assert_eq!((p.qos.w_mbytes_per_sec, p.qos.r_mbytes_per_sec), (50, 0));
        assert!(bdev_from_kv("name=q1,null=1G,rw-ios-per-sec=lots").is_err());
        let n = bdev_from_kv("name=n9,null=1M,no-read-zeroes").expect("null without zeroes");
        assert!(matches!(
            n.params(false).expect("params").kind,
            BdevKind::Null {
                read_zeroes: false,
                ..
            }
        ));
        let z = bdev_from_kv("name=n8,null=1M").expect("null");
        assert!(matches!(
            z.params(false).expect("params").kind,
            BdevKind::Null {
                read_zeroes: true,
                ..
            }
        ));
        let m = bdev_from_kv("name=m9,malloc=1M,no-read-zeroes").expect("parses");
        assert!(m.check().is_err(), "read_zeroes is for null bdevs only");
        assert!(!bdev_from_kv("name=q2,null=1G")
            .expect("no qos")
            .params(false)
            .expect("params")
            .qos
            .any());
        let n = bdev_from_kv("name=n0,nvme=/dev/ng0n1,poll").expect("nvme");
        assert_eq!((n.bdev_type, n.poll), (BdevType::Nvme, true));
        assert!(n.check().is_ok());
        assert!(bdev_from_kv("name=n1,nvme=/dev/ng0n1,block-size=512")
            .expect("parses")
            .check()
            .is_err());
        assert!(bdev_from_kv("name=f1,file=/x,size=1G")
            .expect("parses")
            .check()
            .is_err());
        assert!(bdev_from_kv("name=m1,malloc=1G,buffered")
            .expect("parses")
            .check()
            .is_err());
        assert!(controller_from_kv("socket=/tmp/a,bdev=m0,bogus=1").is_err());
        assert!(
            controller_from_kv("socket=/tmp/a").is_err(),
            "bdev is required"
        );
        let d = controller_from_kv("name=vm1,bdev=m0,socket-mode=0660").expect("no socket");
        assert_eq!((d.socket, d.socket_mode.as_deref()), (None, Some("0660")));
        let co = controller_from_kv("bdev=m0,delay-base-us=20,iops-threshold=5000").expect("co");
        let r = ResolvedController {
            config: co.clone(),
            name: "x".into(),
            bdev: 0,
            queue_cores: vec![0],
            socket: "/s".into(),
            socket_options: None,
        };
        assert_eq!(
            r.params("m0").coalescing,
            Some(Coalescing {
                delay_base_us: 20,
                iops_threshold: 5000
            })
        );
    }

    #[test]
    fn rbd_bdevs_from_kv_and_json() {
        let b = bdev_from_kv("name=r0,rbd=pool1/img1,conf=/x/ceph.conf,user=u1,op-timeout=7")
            .expect("rbd");
        assert_eq!(b.bdev_type, BdevType::Rbd);
        assert!(b.check().is_ok());
        let p = b.params(false).expect("params");
        let BdevKind::Rbd(spec) = p.kind else {
            panic!("not rbd: {:?}", p.kind)
        };
        assert_eq!((spec.pool.as_str(), spec.image.as_str()), ("pool1", "img1"));
        assert_eq!((spec.block_size, spec.read_only), (512, false));
        let RbdClusterRef::Direct(c) = spec.cluster else {
            panic!("a direct connection")
        };
        assert_eq!(c.config_file, Some(PathBuf::from("/x/ceph.conf")));
        assert_eq!((c.user_id.as_deref(), c.op_timeout), (Some("u1"), Some(7)));
        // Defaults: /etc/ceph/ceph.conf, admin, read-only when every controller is.
        let d = bdev_from_kv("name=r1,type=rbd,pool=p,image=i,block-size=4096").expect("rbd");
        let BdevKind::Rbd(spec) = d.params(true).expect("params").kind else {
            panic!("not rbd")
        };
        assert_eq!((spec.block_size, spec.read_only), (4096, true));
        assert_eq!(
            spec.cluster,
            RbdClusterRef::Direct(RbdClusterParams {
                config_file: Some(PathBuf::from(DEFAULT_CEPH_CONF)),
                ..Default::default()
            })
        );
        assert!(bdev_from_kv("name=r2,rbd=noslash").is_err());
        assert!(bdev_from_kv("name=r3,type=rbd,pool=p")
            .expect("parses")
            .check()
            .is_err());
        assert!(bdev_from_kv("name=r4,rbd=p/i,size=1G")
            .expect("parses")
            .check()
            .is_err());
        assert!(bdev_from_kv("name=m,malloc=1M,pool=p")
            .expect("parses")
            .check()
            .is_err());
        let j: BdevConfig = serde_json::from_str(
            r#"{"name": "r5", "type": "rbd", "pool": "p", "image": "i",
                "ceph_options": {"rbd_cache": "false"}}"#,
        )
        .expect("json");
        let BdevKind::Rbd(spec) = j.params(false).expect("params").kind else {
            panic!("not rbd")
        };
        let RbdClusterRef::Direct(c) = spec.cluster else {
            panic!("direct")
        };
        assert_eq!(c.config_param, vec![("rbd_cache".into(), "false".into())]);
    }

    #[test]
    fn sockets_default_to_the_socket_dir_and_modes_are_checked() {
        let mut cfg = two_on(true, false);
        cfg.controllers[1].socket = None;
        cfg.controllers[1].name = Some("vm1".into());
        cfg.controllers[1].socket_mode = Some("0660".into());
        let (_, ctrls) = cfg.resolve(0, Path::new("/run/x")).expect("valid");
        assert_eq!(ctrls[1].socket, PathBuf::from("/run/x/vm1"));
        assert_eq!(ctrls[1].socket_options.map(|o| o.mode), Some(0o660));
        assert_eq!(ctrls[0].socket_options, None);
        cfg.controllers[1].socket_mode = Some("0666".into());
        assert!(
            cfg.resolve(0, Path::new("/run/x")).is_err(),
            "world-writable"
        );
        cfg.controllers[1].socket_mode = None;
        cfg.socket_mode = Some("0777".into());
        assert!(
            cfg.resolve(0, Path::new("/run/x")).is_err(),
            "world-writable"
        );
        cfg.socket_mode = Some("0640".into());
        assert_eq!(
            cfg.socket_options(SocketOptions::default()).map(|o| o.mode),
            Ok(0o640)
        );
    }

    #[test]
    fn bdev_params_carry_geometry_and_uuid() {
        let b = bdev_from_kv("name=m0,malloc=1M,block-size=4096,no-write-cache").expect("bdev");
        let p = b.params(false).expect("params");
        assert_eq!(
            p.kind,
            BdevKind::Malloc {
                num_blocks: 256,
                block_size: 4096
            }
        );
        assert!(!p.write_cache);
        let mut b = bdev_from_kv("name=n0,null=1000").expect("bdev");
        assert!(b.params(false).is_err(), "size not a multiple of 512");
        b.size = Some(1024);
        b.uuid = Some("0e8a5d5c-7c4e-4b8e-9b3e-0123456789ab".into());
        assert_eq!(
            b.params(false).expect("params").uuid.map(|u| u.to_string()),
            b.uuid
        );
        b.uuid = Some("nope".into());
        assert!(b.params(false).is_err());
    }

    #[test]
    fn json_config_parses() {
        let text = r#"{
            "cpus": "0-1",
            "stats_interval": 5,
            "bdevs": [{"name": "m0", "type": "malloc", "size": "1G"},
                      {"name": "n0", "type": "null", "size": 1048576, "block_size": 4096}],
            "controllers": [{"socket": "/tmp/a.sock", "bdev": "m0", "num_queues": 4},
                            {"name": "b", "socket": "/tmp/b.sock", "bdev": "n0", "cpus": [1]}]
        }"#;
        let cfg: TargetConfig = serde_json::from_str(text).expect("config");
        let (cpus, ctrls) = cfg.resolve(0, Path::new("/tmp")).expect("valid");
        assert_eq!(cpus, vec![0, 1]);
        assert_eq!(ctrls[0].name, "vhost0");
        assert_eq!(ctrls[0].queue_cores, vec![0, 1]);
        assert_eq!(ctrls[1].queue_cores, vec![1]);
        assert_eq!(cfg.stats_interval, Some(5));
        assert_eq!(cfg.batch_wait().expect("none"), None);
    }

    #[test]
    fn batch_wait_from_the_file() {
        let with = |ns: u64| -> TargetConfig {
            serde_json::from_str(&format!(r#"{{"batch_wait_ns": {ns}}}"#)).expect("config")
        };
        assert_eq!(
            with(0).batch_wait().expect("off"),
            Some(Duration::ZERO),
            "0 turns it off"
        );
        assert_eq!(
            with(100_000).batch_wait().expect("the most"),
            Some(MAX_BATCH_WAIT)
        );
        let too_long = with(100_001);
        assert!(too_long.batch_wait().is_err());
        assert!(too_long.resolve(0, Path::new("/tmp")).is_err());
        assert!(serde_json::from_str::<TargetConfig>(r#"{"batch_wait_ns": -1}"#).is_err());
    }

    fn two_on(bdev_shared: bool, ro: bool) -> TargetConfig {
        let ro = if ro { ",readonly" } else { "" };
        TargetConfig {
            cpus: None,
            bdevs: vec![bdev_from_kv(&format!(
                "name=m0,malloc=1M{}",
                if bdev_shared { ",shared" } else { "" }
            ))
            .expect("bdev")],
            controllers: vec![
                controller_from_kv(&format!("socket=/tmp/a,bdev=m0{ro}")).expect("a"),
                controller_from_kv(&format!("socket=/tmp/b,bdev=m0{ro}")).expect("b"),
            ],
            stats_interval: None,
            socket_mode: None,
            socket_group: None,
            poll_mode: None,
            batch_wait_ns: None,
        }
    }

    #[test]
    fn sharing_rules() {
        assert!(
            two_on(false, false).resolve(0, Path::new("/tmp")).is_err(),
            "two writers on one bdev"
        );
        assert!(
            two_on(false, true).resolve(0, Path::new("/tmp")).is_ok(),
            "readers may share"
        );
        assert!(
            two_on(true, false).resolve(0, Path::new("/tmp")).is_ok(),
            "explicitly shared"
        );
    }

    #[test]
    fn bad_references_are_refused() {
        let mut cfg = two_on(true, false);
        cfg.controllers[1].socket = Some(PathBuf::from("/tmp/a"));
        assert!(
            cfg.resolve(0, Path::new("/tmp")).is_err(),
            "duplicate socket"
        );
        let mut cfg = two_on(true, false);
        cfg.controllers[1].bdev = "nope".into();
        assert!(cfg.resolve(0, Path::new("/tmp")).is_err(), "unknown bdev");
        let mut cfg = two_on(true, false);
        cfg.cpus = Some(vec![0]);
        cfg.controllers[0].cpus = Some(vec![3]);
        assert!(
            cfg.resolve(0, Path::new("/tmp")).is_err(),
            "cpu outside the reactor set"
        );
    }
}
