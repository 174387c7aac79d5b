//! The methods: SPDK's names, parameters, defaults and result shapes over a [`Target`], plus
//! `spinblk_*` methods for what SPDK has no name for. Parameters are decoded strictly (an unknown
//! or missing key is -32602), and every key SPDK's rpc.py 26.9 sends is accepted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use spinblk_bdev::IoOp;
use spinblk_protocol::{ControllerReport, QueueStats, SocketOptions};
use spinblk_reactor::{PollMode, Tick};
use spinblk_target::config::socket_options;
use spinblk_target::{
    BdevEntry, BdevKind, BdevParams, Coalescing, ControllerEntry, ControllerParams, CoreMask,
    FileFlavor, QosUpdate, Target, TargetError, Uuid, DEFAULT_NUM_QUEUES,
};

use crate::jsonrpc::{Handler, RpcError, INVALID_PARAMS, INVALID_STATE};

mod rbd;

/// Ticks per second in every tick count spinblk reports (nanoseconds).
pub const TICK_RATE: u64 = 1_000_000_000;
/// The SPDK release whose RPC interface spinblk follows.
pub const SPDK_COMPAT: (u32, u32, u32) = (26, 9, 0);
/// The transport name SPDK uses for vhost-user-blk controllers.
pub const TRANSPORT: &str = "vhost_user_blk";
/// Longest `timeout` bdev_get_bdevs waits for a bdev to appear.
const MAX_GET_BDEVS_WAIT: Duration = Duration::from_secs(60);

/// Every method, in the order rpc_get_methods lists them.
pub const METHODS: &[&str] = &[
    "spdk_get_version",
    "rpc_get_methods",
    "framework_start_init",
    "framework_wait_init",
    "framework_get_subsystems",
    "framework_get_config",
    "framework_get_reactors",
    "framework_get_scheduler",
    "thread_get_stats",
    "thread_get_pollers",
    "bdev_set_options",
    "bdev_wait_for_examine",
    "bdev_get_bdevs",
    "bdev_get_iostat",
    "bdev_set_qos_limit",
    "bdev_malloc_create",
    "bdev_malloc_delete",
    "bdev_null_create",
    "bdev_null_delete",
    "bdev_null_resize",
    "bdev_aio_create",
    "bdev_aio_delete",
    "bdev_aio_rescan",
    "bdev_uring_create",
    "bdev_uring_delete",
    "bdev_uring_rescan",
    "vhost_create_blk_controller",
    "vhost_delete_controller",
    "vhost_get_controllers",
    "vhost_controller_set_coalescing",
    "bdev_rbd_register_cluster",
    "bdev_rbd_unregister_cluster",
    "bdev_rbd_get_clusters_info",
    "bdev_rbd_create",
    "bdev_rbd_delete",
    "bdev_rbd_resize",
    "spinblk_bdev_nvme_create",
    "spinblk_bdev_nvme_delete",
    "spinblk_bdev_set_options",
    "spinblk_bdev_resize",
    "spinblk_get_stats",
    "spinblk_set_poll_mode",
    "spinblk_get_poll_mode",
];

/// Methods SPDK allows only before initialization (spinblk is always initialized).
const STARTUP_ONLY: &[&str] = &["framework_start_init"];

/// The SPDK method set over a target.
pub struct SpdkMethods {
    target: Arc<Target>,
    next_malloc: AtomicU64,
    /// The number in the next default RBD bdev name (`Ceph<N>`, as SPDK).
    next_rbd: AtomicU64,
    started: Instant,
}

/// Maps a target error to SPDK's answer: invalid parameters are -32602, everything else the
/// negative errno SPDK would send, with spinblk's message.
pub fn target_error(e: TargetError) -> RpcError {
    if e.is_invalid_param() {
        RpcError::new(INVALID_PARAMS, e.to_string())
    } else {
        RpcError::new(-e.errno(), e.to_string())
    }
}

fn decode<T: DeserializeOwned>(method: &str, params: Option<&Value>) -> Result<T, RpcError> {
    let value = match params {
        None => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(RpcError::invalid_params(format!(
                "{method}: params must be an object"
            )))
        }
    };
    serde_json::from_value(value).map_err(|e| RpcError::invalid_params(format!("{method}: {e}")))
}

fn no_params(method: &str, params: Option<&Value>) -> Result<(), RpcError> {
    match params {
        None => Ok(()),
        Some(_) => Err(RpcError::invalid_params(format!(
            "{method} method requires no parameters"
        ))),
    }
}

fn parse_uuid(u: Option<&str>) -> Result<Option<Uuid>, RpcError> {
    u.map(|s| {
        s.parse()
            .map_err(|e: spinblk_target::BadUuid| RpcError::invalid_params(e.to_string()))
    })
    .transpose()
}

fn unsupported(what: &str) -> RpcError {
    RpcError::invalid_params(format!("{what} is not supported by spinblk"))
}

/// Refuses a non-default value of an SPDK parameter spinblk accepts only at its default.
fn only_default<T: PartialEq + Default + std::fmt::Debug>(
    key: &str,
    v: Option<T>,
) -> Result<(), RpcError> {
    match v {
        Some(x) if x != T::default() => Err(unsupported(&format!("{key} = {x:?}"))),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    current: Option<bool>,
    include_aliases: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    with_batches: Option<bool>,
}

/// SPDK's bdev layer options: accepted (SPDK's own configs carry them) with no effect.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct BdevSetOptions {
    bdev_io_pool_size: Option<u32>,
    bdev_io_cache_size: Option<u32>,
    bdev_auto_examine: Option<bool>,
    iobuf_small_cache_size: Option<u32>,
    iobuf_large_cache_size: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    name: Option<String>,
    timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIostat {
    names: Option<Vec<String>>,
    per_channel: Option<bool>,
    reset_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MallocCreate {
    name: Option<String>,
    block_size: u32,
    num_blocks: u64,
    uuid: Option<String>,
    optimal_io_boundary: Option<u32>,
    md_size: Option<u32>,
    md_interleave: Option<bool>,
    dif_type: Option<i32>,
    dif_is_head_of_md: Option<bool>,
    physical_block_size: Option<u32>,
    dif_pi_format: Option<u32>,
    /// Accepted, no effect: spinblk's malloc memory follows the process's NUMA policy.
    #[allow(dead_code)]
    numa_id: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NullCreate {
    name: String,
    block_size: u32,
    num_blocks: u64,
    uuid: Option<String>,
    physical_block_size: Option<u32>,
    md_size: Option<u32>,
    dif_type: Option<i32>,
    dif_pi_format: Option<u32>,
    dif_is_head_of_md: Option<bool>,
    preferred_write_granularity: Option<u32>,
    preferred_write_alignment: Option<u32>,
    optimal_write_size: Option<u32>,
    preferred_unmap_granularity: Option<u32>,
    preferred_unmap_alignment: Option<u32>,
    /// spinblk's own: false makes reads leave the buffer as it was, as SPDK's null bdev does
    /// (default true: reads return zeroes). `save_config` writes it only when false.
    read_zeroes: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AioCreate {
    name: String,
    filename: String,
    block_size: Option<u32>,
    readonly: Option<bool>,
    /// Accepted, no effect: discard and write-zeroes support follows what the file's
    /// filesystem or the device offers.
    #[allow(dead_code)]
    fallocate: Option<bool>,
    uuid: Option<String>,
    nowait: Option<bool>,
    /// spinblk: open through the page cache.
    buffered: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UringCreate {
    filename: String,
    name: String,
    block_size: Option<u32>,
    uuid: Option<String>,
    /// spinblk: open read-only.
    readonly: Option<bool>,
    /// spinblk: open through the page cache.
    buffered: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NvmeCreate {
    name: String,
    filename: String,
    poll: Option<bool>,
    readonly: Option<bool>,
    uuid: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQosLimit {
    name: String,
    rw_ios_per_sec: Option<u64>,
    rw_mbytes_per_sec: Option<u64>,
    r_mbytes_per_sec: Option<u64>,
    w_mbytes_per_sec: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NullResize {
    name: String,
    /// MiB.
    new_size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rescan {
    name: String,
    /// spinblk: apply a smaller size even while controllers serve the bdev.
    force: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpinblkResize {
    name: String,
    /// MiB, as bdev_null_resize.
    new_size: u64,
    force: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BdevOptions {
    name: String,
    write_cache: Option<bool>,
    shared: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBlk {
    ctrlr: String,
    dev_name: String,
    readonly: Option<bool>,
    packed_ring: Option<bool>,
    cpumask: Option<String>,
    transport: Option<String>,
    // spinblk extensions
    num_queues: Option<u16>,
    serial: Option<String>,
    socket: Option<String>,
    queue_cpus: Option<Vec<usize>>,
    socket_mode: Option<String>,
    socket_group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByCtrlr {
    ctrlr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetControllers {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCoalescing {
    ctrlr: String,
    delay_base_us: u32,
    iops_threshold: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetStats {
    ctrlr: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPollMode {
    mode: String,
}

/// A size in MiB as bytes: at least 1 MiB, and representable.
fn mib_to_bytes(mib: u64) -> Result<u64, RpcError> {
    if mib == 0 {
        return Err(RpcError::new(
            -libc::EINVAL,
            "new_size must be at least 1 (MiB)",
        ));
    }
    mib.checked_mul(1 << 20)
        .ok_or_else(|| RpcError::new(-libc::EINVAL, format!("new_size {mib} MiB is too large")))
}

fn rate_limits(e: &BdevEntry) -> Value {
    let q = e.qos();
    json!({
        "rw_ios_per_sec": q.rw_ios_per_sec,
        "rw_mbytes_per_sec": q.rw_mbytes_per_sec,
        "r_mbytes_per_sec": q.r_mbytes_per_sec,
        "w_mbytes_per_sec": q.w_mbytes_per_sec,
    })
}

/// SPDK's claim type for the current claims.
fn claim_type(e: &BdevEntry) -> Option<&'static str> {
    let claims = e.claims();
    if claims.is_empty() {
        None
    } else if claims.iter().all(|c| c.readonly) {
        Some("read_many_write_none")
    } else if e.shared() {
        Some("read_many_write_shared")
    } else {
        Some("read_many_write_one")
    }
}

fn bdev_info(target: &Target, e: &BdevEntry) -> Value {
    let mut rbd = None;
    let b = e.bdev();
    let io = |op| b.supports(op);
    let mut supported = Map::new();
    for name in [
        "read",
        "write",
        "unmap",
        "flush",
        "reset",
        "nvme_admin",
        "nvme_io",
        "nvme_io_md",
        "write_zeroes",
        "zcopy",
        "get_zone_info",
        "zone_management",
        "zone_append",
        "compare",
        "compare_and_write",
        "abort",
        "seek_hole",
        "seek_data",
        "copy",
        "nvme_iov_md",
        "nvme_nssr",
        "write_uncorrectable",
    ] {
        let yes = match name {
            "read" => io(IoOp::Read),
            "write" => io(IoOp::Write),
            "unmap" => io(IoOp::Discard),
            "flush" => io(IoOp::Flush),
            "write_zeroes" => io(IoOp::WriteZeroes),
            _ => false,
        };
        supported.insert(name.to_string(), Value::Bool(yes));
    }
    let mut spinblk = json!({
        "module": e.kind().module(),
        "write_cache": e.write_cache(),
        "shared": e.shared(),
        "claimed_by": e.claims().iter().map(|c| c.controller.clone()).collect::<Vec<_>>(),
    });
    match e.kind() {
        BdevKind::File {
            path,
            readonly,
            buffered,
            ..
        } => {
            spinblk["filename"] = json!(path.display().to_string());
            spinblk["readonly"] = json!(readonly);
            spinblk["buffered"] = json!(buffered);
        }
        BdevKind::Nvme {
            path,
            poll,
            readonly,
        } => {
            spinblk["filename"] = json!(path.display().to_string());
            spinblk["poll"] = json!(poll);
            spinblk["readonly"] = json!(readonly);
        }
        BdevKind::Null { read_zeroes, .. } => {
            spinblk["read_zeroes"] = json!(read_zeroes);
        }
        BdevKind::Rbd(spec) => {
            let (rbd_info, extra) = rbd::driver_specific(target, e, spec);
            rbd = Some(rbd_info);
            spinblk["rbd"] = extra;
        }
        _ => {}
    }
    let mut out = json!({
        "name": e.name(),
        "aliases": [],
        "product_name": e.kind().product_name(),
        "block_size": b.block_size(),
        "num_blocks": b.num_blocks(),
        "preferred_write_alignment": 0,
        "preferred_write_granularity": 0,
        "optimal_write_size": 0,
        "preferred_unmap_alignment": 0,
        "preferred_unmap_granularity": 0,
        "uuid": e.uuid().to_string(),
        "assigned_rate_limits": rate_limits(e),
        "claimed": !e.claims().is_empty(),
        "zoned": false,
        "supported_io_types": supported,
        "driver_specific": { "spinblk": spinblk },
    });
    if let Some(r) = rbd {
        out["driver_specific"]["rbd"] = r;
    }
    if let Some(t) = claim_type(e) {
        out["claim_type"] = json!(t);
    }
    out
}

/// SPDK's io stat keys from spinblk's counters. Latencies are in nanoseconds (TICK_RATE).
fn io_stat(s: &QueueStats, out: &mut Map<String, Value>) {
    let ns = Tick::to_nanos;
    let kv = [
        ("bytes_read", s.read.bytes),
        ("num_read_ops", s.read.ops),
        ("bytes_written", s.write.bytes),
        ("num_write_ops", s.write.ops),
        ("bytes_unmapped", s.discard.bytes),
        ("num_unmap_ops", s.discard.ops),
        ("bytes_copied", 0),
        ("num_copy_ops", 0),
        ("read_latency_ticks", ns(s.read.latency_ticks)),
        ("max_read_latency_ticks", ns(s.read.max_ticks)),
        ("min_read_latency_ticks", ns(s.read.min_ticks)),
        ("write_latency_ticks", ns(s.write.latency_ticks)),
        ("max_write_latency_ticks", ns(s.write.max_ticks)),
        ("min_write_latency_ticks", ns(s.write.min_ticks)),
        ("unmap_latency_ticks", ns(s.discard.latency_ticks)),
        ("max_unmap_latency_ticks", ns(s.discard.max_ticks)),
        ("min_unmap_latency_ticks", ns(s.discard.min_ticks)),
        ("copy_latency_ticks", 0),
        ("max_copy_latency_ticks", 0),
        ("min_copy_latency_ticks", 0),
    ];
    for (k, v) in kv {
        out.insert(k.to_string(), json!(v));
    }
    out.insert(
        "driver_specific".into(),
        json!({ "spinblk": {
            "num_flush_ops": s.flush.ops,
            "num_write_zeroes_ops": s.write_zeroes.ops,
            "bytes_write_zeroes": s.write_zeroes.bytes,
            "io_errors": s.io_errors,
            "unsupported": s.unsupported,
        }}),
    );
}

/// spinblk's own statistics object (spinblk_get_stats).
fn stats_json(s: &QueueStats) -> Value {
    let l = &s.latency_ns();
    let mut hist = Vec::new();
    if !l.is_empty() {
        for v in l.iter_log(1_000, 2.0) {
            if v.count_since_last_iteration() > 0 {
                hist.push(json!([
                    v.value_iterated_to(),
                    v.count_since_last_iteration()
                ]));
            }
        }
    }
    json!({
        "read_ops": s.read.ops, "read_bytes": s.read.bytes,
        "write_ops": s.write.ops, "write_bytes": s.write.bytes,
        "flush_ops": s.flush.ops,
        "discard_ops": s.discard.ops, "discard_bytes": s.discard.bytes,
        "write_zeroes_ops": s.write_zeroes.ops, "write_zeroes_bytes": s.write_zeroes.bytes,
        "get_id_ops": s.get_id.ops,
        "io_errors": s.io_errors, "unsupported": s.unsupported, "dropped": s.dropped,
        "in_flight": s.in_flight,
        "latency_ns": {
            "count": l.len(),
            "min": if l.is_empty() { 0 } else { l.min_nz() },
            "mean": if l.is_empty() { 0.0 } else { l.mean() },
            "p50": l.value_at_quantile(0.5),
            "p90": l.value_at_quantile(0.9),
            "p99": l.value_at_quantile(0.99),
            "p999": l.value_at_quantile(0.999),
            "max": l.max(),
        },
        "histogram": hist,
    })
}

impl SpdkMethods {
    /// The methods over `target`.
    pub fn new(target: Arc<Target>) -> SpdkMethods {
        SpdkMethods {
            target,
            next_malloc: AtomicU64::new(0),
            next_rbd: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The target.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    fn ticks(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// The thread id spinblk reports for the reactor on `core` (1-based, like SPDK's).
    fn thread_id(&self, core: usize) -> u64 {
        self.target
            .app_mask()
            .cores()
            .iter()
            .position(|&c| c == core)
            .map_or(0, |i| i as u64 + 1)
    }

    fn bdev(&self, name: &str) -> Result<Arc<BdevEntry>, RpcError> {
        self.target.bdevs().get(name).ok_or_else(|| {
            target_error(TargetError::NotFound {
                what: "bdev",
                name: name.to_string(),
            })
        })
    }

    fn create_bdev(&self, params: BdevParams) -> Result<Value, RpcError> {
        let e = self.target.create_bdev(params).map_err(target_error)?;
        Ok(json!(e.name()))
    }

    fn delete_bdev(
        &self,
        method: &str,
        params: Option<&Value>,
        module: &str,
    ) -> Result<Value, RpcError> {
        let p: ByName = decode(method, params)?;
        self.target
            .delete_bdev(&p.name, Some(module))
            .map_err(target_error)?;
        Ok(Value::Bool(true))
    }

    fn malloc_create(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: MallocCreate = decode("bdev_malloc_create", params)?;
        only_default("md_size", p.md_size)?;
        only_default("md_interleave", p.md_interleave)?;
        only_default("dif_type", p.dif_type)?;
        only_default("dif_is_head_of_md", p.dif_is_head_of_md)?;
        only_default("dif_pi_format", p.dif_pi_format)?;
        only_default("optimal_io_boundary", p.optimal_io_boundary)?;
        if p.physical_block_size
            .is_some_and(|pbs| pbs != 0 && pbs != p.block_size)
        {
            return Err(unsupported("a physical_block_size other than block_size"));
        }
        if p.num_blocks == 0 {
            return Err(RpcError::invalid_params(
                "num_blocks must be greater than 0",
            ));
        }
        let name = match p.name {
            Some(n) => n,
            None => loop {
                let n = format!("Malloc{}", self.next_malloc.fetch_add(1, Ordering::Relaxed));
                if self.target.bdevs().get(&n).is_none() {
                    break n;
                }
            },
        };
        let mut bp = BdevParams::new(
            name,
            BdevKind::Malloc {
                num_blocks: p.num_blocks,
                block_size: p.block_size,
            },
        );
        bp.uuid = parse_uuid(p.uuid.as_deref())?;
        self.create_bdev(bp)
    }

    fn null_create(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: NullCreate = decode("bdev_null_create", params)?;
        only_default("md_size", p.md_size)?;
        only_default("dif_type", p.dif_type)?;
        only_default("dif_is_head_of_md", p.dif_is_head_of_md)?;
        only_default("dif_pi_format", p.dif_pi_format)?;
        only_default("preferred_write_granularity", p.preferred_write_granularity)?;
        only_default("preferred_write_alignment", p.preferred_write_alignment)?;
        only_default("optimal_write_size", p.optimal_write_size)?;
        only_default("preferred_unmap_granularity", p.preferred_unmap_granularity)?;
        only_default("preferred_unmap_alignment", p.preferred_unmap_alignment)?;
        if p.physical_block_size
            .is_some_and(|pbs| pbs != 0 && pbs != p.block_size)
        {
            return Err(unsupported("a physical_block_size other than block_size"));
        }
        if p.num_blocks == 0 {
            return Err(RpcError::invalid_params(
                "num_blocks must be greater than 0",
            ));
        }
        let mut bp = BdevParams::new(
            p.name,
            BdevKind::Null {
                num_blocks: p.num_blocks,
                block_size: p.block_size,
                read_zeroes: p.read_zeroes.unwrap_or(true),
            },
        );
        bp.uuid = parse_uuid(p.uuid.as_deref())?;
        self.create_bdev(bp)
    }

    fn aio_create(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: AioCreate = decode("bdev_aio_create", params)?;
        only_default("nowait", p.nowait)?;
        let mut bp = BdevParams::new(
            p.name,
            BdevKind::File {
                flavor: FileFlavor::Aio,
                path: PathBuf::from(p.filename),
                block_size: p.block_size.filter(|&b| b != 0),
                readonly: p.readonly.unwrap_or(false),
                buffered: p.buffered.unwrap_or(false),
            },
        );
        bp.uuid = parse_uuid(p.uuid.as_deref())?;
        self.create_bdev(bp)
    }

    fn uring_create(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: UringCreate = decode("bdev_uring_create", params)?;
        let mut bp = BdevParams::new(
            p.name,
            BdevKind::File {
                flavor: FileFlavor::Uring,
                path: PathBuf::from(p.filename),
                block_size: p.block_size.filter(|&b| b != 0),
                readonly: p.readonly.unwrap_or(false),
                buffered: p.buffered.unwrap_or(false),
            },
        );
        bp.uuid = parse_uuid(p.uuid.as_deref())?;
        self.create_bdev(bp)
    }

    fn nvme_create(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: NvmeCreate = decode("spinblk_bdev_nvme_create", params)?;
        let mut bp = BdevParams::new(
            p.name,
            BdevKind::Nvme {
                path: PathBuf::from(p.filename),
                poll: p.poll.unwrap_or(false),
                readonly: p.readonly.unwrap_or(false),
            },
        );
        bp.uuid = parse_uuid(p.uuid.as_deref())?;
        self.create_bdev(bp)
    }

    /// SPDK's bdev_set_qos_limit: the limits given change (0 removes one), the others stay;
    /// at least one must be given (SPDK: -EINVAL "No rate limits specified"); an IOPS limit is
    /// rounded up to a multiple of 1000.
    fn set_qos_limit(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: SetQosLimit = decode("bdev_set_qos_limit", params)?;
        let update = QosUpdate {
            rw_ios_per_sec: p.rw_ios_per_sec,
            rw_mbytes_per_sec: p.rw_mbytes_per_sec,
            r_mbytes_per_sec: p.r_mbytes_per_sec,
            w_mbytes_per_sec: p.w_mbytes_per_sec,
        };
        if update.is_empty() {
            return Err(RpcError::new(-libc::EINVAL, "No rate limits specified"));
        }
        self.target
            .set_bdev_qos(&p.name, &update)
            .map_err(target_error)?;
        Ok(Value::Bool(true))
    }

    /// SPDK's bdev_null_resize: a null bdev's new size in MiB, never smaller than now (SPDK
    /// refuses a shrink with -EINVAL; spinblk_bdev_resize with force shrinks).
    fn null_resize(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: NullResize = decode("bdev_null_resize", params)?;
        let e = self.bdev(&p.name)?;
        if e.kind().module() != "null" {
            return Err(RpcError::new(
                -libc::EINVAL,
                format!("bdev '{}' is not a null bdev", p.name),
            ));
        }
        let bytes = mib_to_bytes(p.new_size)?;
        if bytes < e.bdev().size_bytes() {
            return Err(RpcError::new(
                -libc::EINVAL,
                format!(
                    "The new bdev size must not be smaller than current bdev size ({} MiB); \
                     spinblk_bdev_resize with force shrinks",
                    e.bdev().size_bytes() >> 20
                ),
            ));
        }
        self.target
            .resize_bdev(e.name(), bytes, false)
            .map_err(target_error)?;
        Ok(Value::Bool(true))
    }

    /// SPDK's bdev_aio_rescan / bdev_uring_rescan: re-read the file's or device's size. The
    /// bdev must be of that module (SPDK: -ENODEV). A smaller size is applied only while no
    /// controller serves the bdev, or with spinblk's `force`.
    fn rescan(
        &self,
        method: &str,
        params: Option<&Value>,
        module: &str,
    ) -> Result<Value, RpcError> {
        let p: Rescan = decode(method, params)?;
        let e = self.bdev(&p.name)?;
        if e.kind().module() != module {
            return Err(RpcError::new(
                -libc::ENODEV,
                format!("bdev '{}' is not an {module} bdev", p.name),
            ));
        }
        self.target
            .rescan_bdev(e.name(), p.force.unwrap_or(false))
            .map_err(target_error)?;
        Ok(Value::Bool(true))
    }

    /// spinblk_bdev_resize: a malloc or null bdev's new size in MiB; a shrink while controllers
    /// serve the bdev needs `force`.
    fn spinblk_resize(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: SpinblkResize = decode("spinblk_bdev_resize", params)?;
        let e = self.bdev(&p.name)?;
        if matches!(e.kind(), BdevKind::File { .. } | BdevKind::Nvme { .. }) {
            return Err(RpcError::new(
                -libc::ENOTSUP,
                format!(
                    "bdev '{}' takes its size from its file or device: grow it, then call \
                     bdev_{}_rescan",
                    p.name,
                    e.kind().module()
                ),
            ));
        }
        let bytes = mib_to_bytes(p.new_size)?;
        self.target
            .resize_bdev(e.name(), bytes, p.force.unwrap_or(false))
            .map_err(target_error)?;
        Ok(Value::Bool(true))
    }

    fn get_bdevs(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: GetBdevs = decode("bdev_get_bdevs", params)?;
        match p.name {
            None => Ok(Value::Array(
                self.target
                    .bdevs()
                    .list()
                    .iter()
                    .map(|e| bdev_info(&self.target, e))
                    .collect(),
            )),
            Some(name) => {
                let wait = Duration::from_millis(p.timeout.unwrap_or(0)).min(MAX_GET_BDEVS_WAIT);
                let deadline = Instant::now() + wait;
                loop {
                    if let Some(e) = self.target.bdevs().get(&name) {
                        return Ok(json!([bdev_info(&self.target, &e)]));
                    }
                    if Instant::now() >= deadline {
                        return Err(target_error(TargetError::NotFound { what: "bdev", name }));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn get_iostat(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: GetIostat = decode("bdev_get_iostat", params)?;
        match p.reset_mode.as_deref() {
            None | Some("none") => {}
            Some(m @ ("all" | "maxmin" | "error")) => {
                return Err(unsupported(&format!("reset_mode '{m}'")))
            }
            Some(m) => {
                return Err(RpcError::invalid_params(format!(
                    "reset_mode '{m}' is not one of all, maxmin, error, none"
                )))
            }
        }
        let bdevs = match &p.names {
            Some(names) => names
                .iter()
                .map(|n| self.bdev(n))
                .collect::<Result<Vec<_>, _>>()?,
            None => self.target.bdevs().list(),
        };
        let mut out = Map::new();
        out.insert("tick_rate".into(), json!(TICK_RATE));
        out.insert("ticks".into(), json!(self.ticks()));
        if p.per_channel.unwrap_or(false) {
            let [bdev] = bdevs.as_slice() else {
                return Err(RpcError::new(
                    -libc::EINVAL,
                    "per_channel needs exactly one bdev in names",
                ));
            };
            out.insert("name".into(), json!(bdev.name()));
            let mut channels = Vec::new();
            for report in self.target.bdev_channel_stats(bdev) {
                for q in &report.queues {
                    let mut ch = Map::new();
                    ch.insert(
                        "thread_id".into(),
                        json!(q.core.map_or(0, |c| self.thread_id(c))),
                    );
                    io_stat(&q.stats, &mut ch);
                    channels.push(Value::Object(ch));
                }
            }
            out.insert("channels".into(), Value::Array(channels));
        } else {
            let list = bdevs
                .iter()
                .map(|b| {
                    let mut m = Map::new();
                    m.insert("name".into(), json!(b.name()));
                    io_stat(&self.target.bdev_stats(b), &mut m);
                    Value::Object(m)
                })
                .collect();
            out.insert("bdevs".into(), Value::Array(list));
        }
        Ok(Value::Object(out))
    }

    fn create_blk(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: CreateBlk = decode("vhost_create_blk_controller", params)?;
        if p.packed_ring == Some(true) {
            return Err(RpcError::invalid_params(
                "packed_ring is not supported: spinblk serves split virtqueues only",
            ));
        }
        if let Some(t) = p.transport.as_deref().filter(|t| *t != TRANSPORT) {
            return Err(RpcError::invalid_params(format!(
                "transport '{t}' is not supported (only {TRANSPORT})"
            )));
        }
        let cpumask = p
            .cpumask
            .as_deref()
            .map(CoreMask::parse)
            .transpose()
            .map_err(|e| RpcError::invalid_params(e.to_string()))?;
        let socket_options = if p.socket_mode.is_some() || p.socket_group.is_some() {
            Some(
                socket_options(
                    self.target.options().socket,
                    p.socket_mode.as_deref(),
                    p.socket_group.as_deref(),
                )
                .map_err(RpcError::invalid_params)?,
            )
        } else {
            None
        };
        let params = ControllerParams {
            name: p.ctrlr,
            bdev: p.dev_name,
            cpumask,
            queue_cores: p.queue_cpus,
            num_queues: p.num_queues.unwrap_or(DEFAULT_NUM_QUEUES),
            readonly: p.readonly.unwrap_or(false),
            serial: p.serial,
            socket: p.socket.map(PathBuf::from),
            socket_options,
            coalescing: None,
        };
        self.target
            .create_controller(params)
            .map_err(target_error)?;
        Ok(Value::Bool(true))
    }

    fn controller_info(&self, c: &ControllerEntry) -> Value {
        let co = c.coalescing();
        let live = c.sessions();
        // The requests the controller's queues hold now (submitted, throttled or waiting for
        // room), asked of the reactors with bounded waits only when someone is connected. The
        // protocol layer counts them per controller, not per session: the whole count goes on
        // the first session, so the sessions' counts add up to it.
        let in_flight = if live.is_empty() {
            0
        } else {
            c.report().total.in_flight
        };
        let sessions: Vec<Value> = live
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({
                    "vid": s.vid,
                    "id": s.id,
                    "name": s.name,
                    "started": s.running_queues.is_some_and(|n| n > 0),
                    "max_queues": c.params().num_queues,
                    "inflight_task_cnt": if i == 0 { in_flight } else { 0 },
                })
            })
            .collect();
        json!({
            "ctrlr": c.name(),
            "cpumask": c.cores().to_string(),
            "delay_base_us": co.delay_base_us,
            "iops_threshold": co.iops_threshold,
            "socket": c.socket().display().to_string(),
            "sessions": sessions,
            "backend_specific": {
                "block": {
                    "readonly": c.readonly(),
                    "bdev": c.bdev().name(),
                    "transport": TRANSPORT,
                },
                "spinblk": {
                    "inflight_task_cnt": in_flight,
                    "capacity": c.capacity(),
                    "num_queues": c.params().num_queues,
                    "queue_cpus": c.queue_cores(),
                    "serial": c.serial(),
                    "write_cache": c.bdev().write_cache(),
                },
            },
        })
    }

    fn get_controllers(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: GetControllers = decode("vhost_get_controllers", params)?;
        let list = match p.name {
            Some(n) => vec![self.target.controller(&n).ok_or_else(|| {
                target_error(TargetError::NotFound {
                    what: "controller",
                    name: n,
                })
            })?],
            None => self.target.controllers(),
        };
        Ok(Value::Array(
            list.iter().map(|c| self.controller_info(c)).collect(),
        ))
    }

    fn set_coalescing(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: SetCoalescing = decode("vhost_controller_set_coalescing", params)?;
        self.target
            .set_coalescing(
                &p.ctrlr,
                Coalescing {
                    delay_base_us: p.delay_base_us,
                    iops_threshold: p.iops_threshold,
                },
            )
            .map_err(target_error)?;
        Ok(Value::Bool(true))
    }

    /// The bdev subsystem's configuration as SPDK writes it: one create call per bdev (with its
    /// size now), spinblk_bdev_set_options where not default and bdev_set_qos_limit where
    /// limits are set, then bdev_wait_for_examine.
    pub fn bdev_config(&self) -> Vec<Value> {
        // Registered RBD clusters first: their bdevs name them.
        let mut out = rbd::cluster_config(&self.target);
        for e in self.target.bdevs().list() {
            let b = e.bdev();
            let uuid = e.uuid().to_string();
            let (method, params) = match e.kind() {
                BdevKind::Malloc { block_size, .. } => (
                    "bdev_malloc_create",
                    json!({
                        // The size now (a resize changes it).
                        "name": e.name(), "num_blocks": b.num_blocks(), "block_size": block_size,
                        "physical_block_size": block_size, "uuid": uuid,
                        "optimal_io_boundary": 0, "md_size": 0, "dif_type": 0,
                        "dif_is_head_of_md": false, "dif_pi_format": 0,
                    }),
                ),
                BdevKind::Null {
                    block_size,
                    read_zeroes,
                    ..
                } => {
                    let mut p = json!({
                        "name": e.name(), "num_blocks": b.num_blocks(), "block_size": block_size,
                        "physical_block_size": block_size, "md_size": 0, "dif_type": 0,
                        "dif_is_head_of_md": false, "dif_pi_format": 0, "uuid": uuid,
                    });
                    if !read_zeroes {
                        p["read_zeroes"] = json!(false);
                    }
                    ("bdev_null_create", p)
                }
                BdevKind::File {
                    flavor,
                    path,
                    block_size,
                    readonly,
                    buffered,
                } => {
                    let mut p = json!({
                        "name": e.name(),
                        "filename": path.display().to_string(),
                        "uuid": uuid,
                    });
                    if block_size.is_some() {
                        p["block_size"] = json!(b.block_size());
                    }
                    if *buffered {
                        p["buffered"] = json!(true);
                    }
                    match flavor {
                        FileFlavor::Aio => {
                            p["readonly"] = json!(readonly);
                            p["fallocate"] = json!(false);
                            p["nowait"] = json!(false);
                            ("bdev_aio_create", p)
                        }
                        FileFlavor::Uring => {
                            if *readonly {
                                p["readonly"] = json!(true);
                            }
                            ("bdev_uring_create", p)
                        }
                    }
                }
                BdevKind::Nvme {
                    path,
                    poll,
                    readonly,
                } => (
                    "spinblk_bdev_nvme_create",
                    json!({
                        "name": e.name(), "filename": path.display().to_string(),
                        "poll": poll, "readonly": readonly, "uuid": uuid,
                    }),
                ),
                BdevKind::Rbd(spec) => rbd::create_config(&e, spec),
            };
            out.push(json!({ "method": method, "params": params }));
            if !e.write_cache() || e.shared() {
                out.push(json!({
                    "method": "spinblk_bdev_set_options",
                    "params": { "name": e.name(), "write_cache": e.write_cache(), "shared": e.shared() },
                }));
            }
            // As SPDK writes it: the limits that are set, after the bdev's creation.
            let q = e.qos();
            if q.any() {
                let mut params = json!({ "name": e.name() });
                for (k, v) in [
                    ("rw_ios_per_sec", q.rw_ios_per_sec),
                    ("rw_mbytes_per_sec", q.rw_mbytes_per_sec),
                    ("r_mbytes_per_sec", q.r_mbytes_per_sec),
                    ("w_mbytes_per_sec", q.w_mbytes_per_sec),
                ] {
                    if v > 0 {
                        params[k] = json!(v);
                    }
                }
                out.push(json!({ "method": "bdev_set_qos_limit", "params": params }));
            }
        }
        out.push(json!({ "method": "bdev_wait_for_examine" }));
        out
    }

    /// The vhost_blk subsystem's configuration: one vhost_create_blk_controller per controller
    /// (spinblk's own keys only where they differ from the defaults), then coalescing where set.
    pub fn vhost_blk_config(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for c in self.target.controllers() {
            let p = c.params();
            let mut params = json!({
                "ctrlr": c.name(),
                "dev_name": c.bdev().name(),
                "cpumask": c.cores().hex(),
                "readonly": c.readonly(),
                "transport": TRANSPORT,
            });
            if p.num_queues != DEFAULT_NUM_QUEUES {
                params["num_queues"] = json!(p.num_queues);
            }
            if let Some(s) = &p.serial {
                params["serial"] = json!(s);
            }
            if c.socket() != self.target.default_socket(c.name()) {
                params["socket"] = json!(c.socket().display().to_string());
            }
            if c.queue_cores() != c.cores().cores().as_slice() {
                params["queue_cpus"] = json!(c.queue_cores());
            }
            if let Some(o) = p.socket_options {
                let SocketOptions { mode, group } = o;
                params["socket_mode"] = json!(format!("{mode:04o}"));
                if let Some(g) = group {
                    params["socket_group"] = json!(g.to_string());
                }
            }
            out.push(json!({ "method": "vhost_create_blk_controller", "params": params }));
            let co = c.coalescing();
            if co.delay_base_us != 0 {
                out.push(json!({
                    "method": "vhost_controller_set_coalescing",
                    "params": {
                        "ctrlr": c.name(),
                        "delay_base_us": co.delay_base_us,
                        "iops_threshold": co.iops_threshold,
                    },
                }));
            }
        }
        out
    }

    fn get_config(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: GetConfig = decode("framework_get_config", params)?;
        // Batches are never emitted, so with_batches changes nothing.
        let _ = p.with_batches;
        match p.name.as_str() {
            "spinblk" => Ok(Value::Array(self.spinblk_config())),
            "bdev" => Ok(Value::Array(self.bdev_config())),
            "vhost_blk" => Ok(Value::Array(self.vhost_blk_config())),
            _ => Err(RpcError::invalid_params("Subsystem not found")),
        }
    }

    fn reactors(&self) -> Value {
        let elapsed = self.ticks();
        let list: Vec<Value> = self
            .target
            .reactors()
            .iter()
            .map(|r| {
                let mask = CoreMask::from_cores([r.core]);
                let st = &r.stats;
                // spdk_top's decoder takes exactly these keys.
                json!({
                    "lcore": r.core,
                    "numa_id": r.numa_id,
                    "tid": st.tid,
                    "busy": st.busy.as_nanos() as u64,
                    "idle": (st.idle + st.sleep).as_nanos() as u64,
                    "in_interrupt": st.in_interrupt,
                    "irq": r.irq,
                    "sys": r.sys,
                    "usr": r.usr,
                    "lw_threads": [{
                        "name": format!("reactor_{}", r.core),
                        "id": self.thread_id(r.core),
                        "cpumask": mask.hex(),
                        "elapsed": elapsed,
                    }],
                })
            })
            .collect();
        json!({ "tick_rate": TICK_RATE, "pid": std::process::id(), "reactors": list })
    }

    fn thread_stats(&self) -> Value {
        let threads: Vec<Value> = self
            .target
            .reactors()
            .iter()
            .map(|r| {
                let st = &r.stats;
                json!({
                    "name": format!("reactor_{}", r.core),
                    "id": self.thread_id(r.core),
                    "cpumask": CoreMask::from_cores([r.core]).hex(),
                    "busy": st.busy.as_nanos() as u64,
                    "idle": (st.idle + st.sleep).as_nanos() as u64,
                    "active_pollers_count": st.pollers.saturating_sub(st.timed_pollers),
                    "timed_pollers_count": st.timed_pollers,
                    "paused_pollers_count": 0,
                })
            })
            .collect();
        json!({ "tick_rate": TICK_RATE, "threads": threads })
    }

    fn thread_pollers(&self) -> Value {
        let threads: Vec<Value> = self
            .target
            .reactors()
            .iter()
            .map(|r| {
                let poller = |p: &spinblk_reactor::PollerInfo| {
                    let mut v = json!({
                        "name": p.name,
                        "id": p.id.get(),
                        "state": "waiting",
                        "run_count": p.run_count,
                        "busy_count": p.busy_count,
                    });
                    if let Some(period) = p.period {
                        v["period_ticks"] = json!(period.as_nanos() as u64);
                    }
                    v
                };
                let active: Vec<Value> = r
                    .pollers
                    .iter()
                    .filter(|p| p.period.is_none())
                    .map(poller)
                    .collect();
                let timed: Vec<Value> = r
                    .pollers
                    .iter()
                    .filter(|p| p.period.is_some())
                    .map(poller)
                    .collect();
                json!({
                    "name": format!("reactor_{}", r.core),
                    "id": self.thread_id(r.core),
                    "active_pollers": active,
                    "timed_pollers": timed,
                    "paused_pollers": [],
                })
            })
            .collect();
        json!({ "tick_rate": TICK_RATE, "threads": threads })
    }

    /// spinblk's own subsystem: the poll mode, when it is not the default.
    pub fn spinblk_config(&self) -> Vec<Value> {
        let mode = self.target.poll_mode();
        if mode == PollMode::default() {
            return Vec::new();
        }
        vec![json!({ "method": "spinblk_set_poll_mode", "params": { "mode": mode.to_string() } })]
    }

    fn stats(&self, params: Option<&Value>) -> Result<Value, RpcError> {
        let p: GetStats = decode("spinblk_get_stats", params)?;
        let list = match p.ctrlr {
            Some(n) => vec![self.target.controller(&n).ok_or_else(|| {
                target_error(TargetError::NotFound {
                    what: "controller",
                    name: n,
                })
            })?],
            None => self.target.controllers(),
        };
        Ok(Value::Array(
            list.iter()
                .map(|c| {
                    let r: ControllerReport = c.report();
                    json!({
                        "ctrlr": r.name,
                        "bdev": c.bdev().name(),
                        "connected": r.connected,
                        "complete": r.complete,
                        "total": stats_json(&r.total),
                        "queues": r.queues.iter().map(|q| {
                            let mut v = stats_json(&q.stats);
                            v["queue"] = json!(q.index);
                            v["lcore"] = json!(q.core);
                            v
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        ))
    }

    fn dispatch(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
        match method {
            "spdk_get_version" => {
                no_params(method, params)?;
                let (major, minor, patch) = SPDK_COMPAT;
                Ok(json!({
                    "version": format!("SPDK v{major}.{minor:02} (spinblk {})", env!("CARGO_PKG_VERSION")),
                    "fields": {
                        "major": major, "minor": minor, "patch": patch,
                        "suffix": format!("-spinblk{}", env!("CARGO_PKG_VERSION")),
                    },
                }))
            }
            "rpc_get_methods" => {
                let p: GetMethods = decode(method, params)?;
                let _ = p.include_aliases;
                let current = p.current.unwrap_or(false);
                Ok(json!(METHODS
                    .iter()
                    .filter(|m| !(current && STARTUP_ONLY.contains(m)))
                    .collect::<Vec<_>>()))
            }
            "framework_start_init" => {
                no_params(method, params)?;
                Err(RpcError::new(
                    INVALID_STATE,
                    "Method may only be called before framework is initialized. spinblk \
                     initializes at start and has no --wait-for-rpc state.",
                ))
            }
            "framework_wait_init" => no_params(method, params).map(|_| Value::Bool(true)),
            "framework_get_subsystems" => {
                no_params(method, params)?;
                Ok(json!([
                    { "subsystem": "spinblk", "depends_on": [] },
                    { "subsystem": "bdev", "depends_on": [] },
                    { "subsystem": "vhost_blk", "depends_on": ["bdev"] },
                ]))
            }
            "framework_get_config" => self.get_config(params),
            "framework_get_reactors" => no_params(method, params).map(|_| self.reactors()),
            "framework_get_scheduler" => {
                no_params(method, params)?;
                let first = self.target.app_mask().cores().first().copied().unwrap_or(0);
                Ok(json!({
                    "scheduler_name": "static",
                    "scheduler_period": 0,
                    "isolated_core_mask": "",
                    "scheduling_core": first,
                }))
            }
            "thread_get_stats" => no_params(method, params).map(|_| self.thread_stats()),
            "thread_get_pollers" => no_params(method, params).map(|_| self.thread_pollers()),
            "bdev_set_options" => {
                let _: BdevSetOptions = decode(method, params)?;
                Ok(Value::Bool(true))
            }
            "bdev_wait_for_examine" => no_params(method, params).map(|_| Value::Bool(true)),
            "bdev_get_bdevs" => self.get_bdevs(params),
            "bdev_get_iostat" => self.get_iostat(params),
            "bdev_set_qos_limit" => self.set_qos_limit(params),
            "bdev_malloc_create" => self.malloc_create(params),
            "bdev_malloc_delete" => self.delete_bdev(method, params, "malloc"),
            "bdev_null_create" => self.null_create(params),
            "bdev_null_delete" => self.delete_bdev(method, params, "null"),
            "bdev_null_resize" => self.null_resize(params),
            "bdev_aio_create" => self.aio_create(params),
            "bdev_aio_delete" => self.delete_bdev(method, params, "aio"),
            "bdev_aio_rescan" => self.rescan(method, params, "aio"),
            "bdev_uring_create" => self.uring_create(params),
            "bdev_uring_delete" => self.delete_bdev(method, params, "uring"),
            "bdev_uring_rescan" => self.rescan(method, params, "uring"),
            m if rbd::RBD_METHODS.contains(&m) => self.rbd_call(m, params),
            "spinblk_bdev_nvme_create" => self.nvme_create(params),
            "spinblk_bdev_nvme_delete" => self.delete_bdev(method, params, "nvme"),
            "spinblk_bdev_set_options" => {
                let p: BdevOptions = decode(method, params)?;
                self.bdev(&p.name)?.set_options(p.write_cache, p.shared);
                Ok(Value::Bool(true))
            }
            "spinblk_bdev_resize" => self.spinblk_resize(params),
            "vhost_create_blk_controller" => self.create_blk(params),
            "vhost_delete_controller" => {
                let p: ByCtrlr = decode(method, params)?;
                self.target
                    .delete_controller(&p.ctrlr)
                    .map_err(target_error)?;
                Ok(Value::Bool(true))
            }
            "vhost_get_controllers" => self.get_controllers(params),
            "vhost_controller_set_coalescing" => self.set_coalescing(params),
            "spinblk_get_stats" => self.stats(params),
            "spinblk_set_poll_mode" => {
                let p: SetPollMode = decode(method, params)?;
                let mode: PollMode =
                    p.mode
                        .parse()
                        .map_err(|e: spinblk_reactor::UnknownPollMode| {
                            RpcError::invalid_params(e.to_string())
                        })?;
                self.target.set_poll_mode(mode).map_err(target_error)?;
                Ok(Value::Bool(true))
            }
            "spinblk_get_poll_mode" => {
                no_params(method, params)?;
                Ok(json!({ "mode": self.target.poll_mode().to_string() }))
            }
            _ => Err(RpcError::method_not_found()),
        }
    }
}

impl Handler for SpdkMethods {
    fn call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
        let started = Instant::now();
        let out = self.dispatch(method, params);
        let took = started.elapsed();
        match &out {
            Err(e) => log::info!("RPC {method}: error {}: {}", e.code, e.message),
            Ok(_) if took > Duration::from_millis(500) => {
                log::info!("RPC {method}: {:.1} s", took.as_secs_f64())
            }
            Ok(_) => log::debug!("RPC {method}: ok"),
        }
        out
    }
}
