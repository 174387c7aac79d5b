//! Command-line options.

use std::path::PathBuf;

use clap::Parser;
pub use spinblk_target::config::parse_size;
use spinblk_target::CoreMask;

/// `--batch-wait-ns`' bound: the reactor's own.
const MAX_BATCH_WAIT_NS: u64 = spinblk_target::MAX_BATCH_WAIT.as_nanos() as u64;

/// spinblk: a polled-mode vhost-user-blk target. Serves block devices on unix sockets to QEMU,
/// Cloud Hypervisor or any libblkio client; pinned reactors poll their virtqueues. Disks and
/// controllers come from the options below, a configuration file, or SPDK's JSON-RPC at run time.
#[derive(Parser, Debug)]
#[command(name = "spinblk", version)]
pub struct Cli {
    /// The vhost-user socket of the single-disk shorthand (a stale socket file is replaced).
    #[arg(long, value_name = "PATH", default_value = "/tmp/spinblk.sock")]
    pub socket: PathBuf,

    /// Serve SPDK's JSON-RPC on this unix socket (default /var/tmp/spdk.sock when given without
    /// a path, or with --json). Without a disk option, spinblk then starts with no bdevs and no
    /// controllers.
    #[arg(short = 'r', long, value_name = "PATH", num_args = 0..=1,
          default_missing_value = spinblk_rpc::DEFAULT_RPC_SOCKET)]
    pub rpc_socket: Option<PathBuf>,

    /// Directory of the sockets of controllers created without an explicit path (by RPC,
    /// --json, or a --config controller without "socket"): DIR/<controller name>. Default: the
    /// current directory, as SPDK.
    #[arg(short = 'S', long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,

    /// Load an SPDK JSON configuration (as save_config writes it: bdev and vhost_blk
    /// subsystems) at start.
    #[arg(long = "json", value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Permissions of the controller sockets, octal (default 0600; never writable by others).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// Group of the controller sockets (a name or a gid), e.g. the group QEMU runs in, with
    /// --socket-mode 0660.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Serve a RAM disk of SIZE (K/M/G/T suffixes; the default is a 1 GiB malloc disk).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "null")]
    pub malloc: Option<u64>,

    /// Serve a null disk of SIZE: reads return zeroes, writes are dropped.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "file")]
    pub null: Option<u64>,

    /// Serve a regular file or block device, with O_DIRECT through io_uring.
    #[arg(long, value_name = "PATH", conflicts_with = "malloc")]
    pub file: Option<PathBuf>,

    /// Serve an NVMe namespace through io_uring passthrough on its generic char device
    /// (/dev/ngXnY), skipping the block layer.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["malloc", "null", "file", "block_size"])]
    pub nvme: Option<PathBuf>,

    /// Serve a Ceph RBD image (POOL/IMAGE) through librbd. Connecting and opening happen before
    /// the socket is created; an unreachable cluster is an error (exit 2) after the mount
    /// timeout.
    #[arg(long, value_name = "POOL/IMAGE", value_parser = parse_rbd,
          conflicts_with_all = ["malloc", "null", "file", "nvme"])]
    pub rbd: Option<RbdImage>,

    /// With --rbd: the Ceph configuration file (monitors, keyring, options).
    #[arg(long, value_name = "FILE", requires = "rbd",
          default_value = spinblk_target::config::DEFAULT_CEPH_CONF)]
    pub rbd_conf: PathBuf,

    /// With --rbd: the Ceph user, without "client." (default admin).
    #[arg(long, value_name = "ID", requires = "rbd")]
    pub rbd_user: Option<String>,

    /// With --rbd: seconds a request may wait for the cluster before it fails with IOERR
    /// (rados_osd_op_timeout; default: the config file's, else 30).
    #[arg(long, value_name = "SECS", requires = "rbd")]
    pub rbd_op_timeout: Option<u64>,

    /// With --rbd: a Ceph option, repeatable (`client_mount_timeout=10`, `rbd_cache=false`).
    #[arg(long, value_name = "KEY=VALUE", requires = "rbd", value_parser = parse_key_value)]
    pub rbd_option: Vec<(String, String)>,

    /// With --nvme: poll for completions (IOPOLL; the nvme driver needs poll_queues > 0).
    /// Flushes and write-zeroes, which carry no data, still complete by interrupt.
    #[arg(long, requires = "nvme")]
    pub nvme_poll: bool,

    /// With --null: reads leave the guest's buffer as it was instead of filling it with
    /// zeroes, as SPDK's null bdev does (saves writing every byte "read").
    #[arg(long, requires = "null")]
    pub null_no_read_zeroes: bool,

    /// With --file: open through the page cache (for filesystems without O_DIRECT).
    #[arg(long, requires = "file")]
    pub buffered: bool,

    /// Start with the write cache off: writes are durable when they complete (RWF_DSYNC) until
    /// the guest enables the cache.
    #[arg(long)]
    pub no_write_cache: bool,

    /// Logical block size in bytes (default 512; for block devices, the device's).
    #[arg(long, value_name = "BYTES", value_parser = parse_block_size)]
    pub block_size: Option<u32>,

    /// Offer the disk read-only (VIRTIO_BLK_F_RO); writes fail with IOERR.
    #[arg(long)]
    pub readonly: bool,

    /// Serial number returned by GET_ID (at most 20 bytes; default: the bdev name).
    #[arg(long, value_name = "STR", value_parser = parse_serial)]
    pub serial: Option<String>,

    /// The bdev's name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Reactor cores, one pinned polling thread each: "0", "2-5", "0,2,4-6".
    #[arg(long, value_name = "LIST", value_parser = parse_cpus, conflicts_with = "cpumask")]
    pub cpus: Option<CpuList>,

    /// Reactor cores as SPDK's core mask: hexadecimal ("0x3") or a list ("[0,2-3]").
    #[arg(short = 'm', long, value_name = "MASK", value_parser = parse_cpumask)]
    pub cpumask: Option<CpuList>,

    /// How reactors poll: "adaptive" (spin while there is work, sleep when idle; the default)
    /// or "busy" (always spin: a whole core per reactor).
    #[arg(long, value_name = "MODE")]
    pub poll_mode: Option<spinblk_target::PollMode>,

    /// After a reactor pass that found work while requests stream in, wait this many
    /// nanoseconds before the next pass, so that the drivers queue a batch meanwhile (fewer
    /// cache lines handed between their cores and the reactor's per request); 0 turns it off.
    /// Default 250 (or the config file's `batch_wait_ns`); at most 100000.
    #[arg(long, value_name = "NS",
          value_parser = clap::value_parser!(u64).range(0..=MAX_BATCH_WAIT_NS))]
    pub batch_wait_ns: Option<u64>,

    /// Guest interrupt coalescing of the single-disk controller: base delay in microseconds
    /// (SPDK's delay_base_us; 0, the default, is off).
    #[arg(long, value_name = "US")]
    pub delay_base_us: Option<u32>,

    /// With --delay-base-us: the IOPS above which interrupts are held back (default 60000).
    #[arg(long, value_name = "IOPS", requires = "delay_base_us")]
    pub iops_threshold: Option<u32>,

    /// Most virtqueues offered. The default lets QEMU's own default (one queue per vCPU) work
    /// for guests of up to 16 vCPUs.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub num_queues: u16,

    /// A bdev, repeatable: `name=m0,malloc=1G[,block-size=4096][,shared]` or
    /// `name=n0,null=1G`. Used with `--controller`.
    #[arg(long = "bdev", value_name = "SPEC", conflicts_with_all = ["malloc", "null", "file", "nvme", "rbd", "config"])]
    pub bdevs: Vec<String>,

    /// A controller, repeatable: `socket=PATH,bdev=NAME[,name=N][,cpus=LIST][,num-queues=N]
    /// [,queue-cpus=0:1:..][,readonly][,serial=S]`. Replaces the single-disk options.
    #[arg(
        long = "controller",
        value_name = "SPEC",
        requires = "bdevs",
        conflicts_with = "config"
    )]
    pub controllers: Vec<String>,

    /// JSON configuration file with bdevs and controllers (see docs/configuration.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["malloc", "null", "file", "nvme", "rbd"])]
    pub config: Option<PathBuf>,

    /// Print one summary line per controller every SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_interval: Option<u64>,

    /// Log level: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
}

/// `--rbd POOL/IMAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdImage {
    /// The pool.
    pub pool: String,
    /// The image.
    pub image: String,
}

fn parse_rbd(s: &str) -> Result<RbdImage, String> {
    match s.split_once('/') {
        Some((pool, image)) if !pool.is_empty() && !image.is_empty() && !image.contains('/') => {
            Ok(RbdImage {
                pool: pool.into(),
                image: image.into(),
            })
        }
        _ => Err(format!("'{s}' is not POOL/IMAGE")),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().into(), v.trim().into())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    spinblk_protocol::parse_socket_mode(s)
}

fn parse_cpumask(s: &str) -> Result<CpuList, String> {
    CoreMask::parse(s)
        .map(|m| CpuList(m.cores()))
        .map_err(|e| e.to_string())
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    match s.trim() {
        "512" => Ok(512),
        "4096" | "4K" | "4k" => Ok(4096),
        _ => Err("block size must be 512 or 4096".into()),
    }
}

fn parse_serial(s: &str) -> Result<String, String> {
    if s.len() > spinblk_protocol::ID_BYTES {
        return Err(format!(
            "serial is longer than {} bytes",
            spinblk_protocol::ID_BYTES
        ));
    }
    Ok(s.to_string())
}

/// A parsed core list (a newtype so clap treats it as one value, not many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    spinblk_reactor::parse_cpu_list(s)
        .map(CpuList)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn options_parse_and_conflict() {
        let c = Cli::try_parse_from([
            "spinblk",
            "--socket",
            "/tmp/s",
            "--malloc",
            "64M",
            "--block-size",
            "4096",
            "--cpus",
            "0-1",
            "--num-queues",
            "4",
        ])
        .expect("valid");
        assert_eq!(
            (c.malloc, c.block_size, c.num_queues),
            (Some(64 << 20), Some(4096), 4)
        );
        assert!(Cli::try_parse_from(["spinblk", "--file", "/x", "--malloc", "1M"]).is_err());
        assert!(
            Cli::try_parse_from(["spinblk", "--buffered"]).is_err(),
            "--buffered needs --file"
        );
        assert_eq!(c.cpus, Some(CpuList(vec![0, 1])));
        assert!(Cli::try_parse_from(["spinblk", "--malloc", "1M", "--null", "1M"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--block-size", "1024"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--num-queues", "0"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--serial", "a-serial-that-is-too-long"]).is_err());
    }

    #[test]
    fn rbd_options() {
        let c = Cli::try_parse_from([
            "spinblk",
            "--rbd",
            "pool/img",
            "--rbd-user",
            "u",
            "--rbd-op-timeout",
            "5",
            "--rbd-option",
            "rbd_cache=false",
        ])
        .expect("valid");
        assert_eq!(
            c.rbd,
            Some(RbdImage {
                pool: "pool".into(),
                image: "img".into()
            })
        );
        assert_eq!(c.rbd_conf, PathBuf::from("/etc/ceph/ceph.conf"));
        assert_eq!(
            (c.rbd_user.as_deref(), c.rbd_op_timeout),
            (Some("u"), Some(5))
        );
        assert_eq!(c.rbd_option, vec![("rbd_cache".into(), "false".into())]);
        assert!(Cli::try_parse_from(["spinblk", "--rbd", "noslash"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--rbd", "p/i/x"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--rbd", "p/i", "--malloc", "1M"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--rbd-user", "u"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--rbd", "p/i", "--rbd-option", "x"]).is_err());
    }

    #[test]
    fn spdk_style_options() {
        let c =
            Cli::try_parse_from(["spinblk", "-r", "-S", "/run/vm", "-m", "0x6"]).expect("valid");
        assert_eq!(
            c.rpc_socket.as_deref(),
            Some(std::path::Path::new("/var/tmp/spdk.sock"))
        );
        assert_eq!(
            c.socket_dir.as_deref(),
            Some(std::path::Path::new("/run/vm"))
        );
        assert_eq!(c.cpumask, Some(CpuList(vec![1, 2])));
        let c = Cli::try_parse_from(["spinblk", "--rpc-socket", "/tmp/x.sock", "-m", "[0,3]"])
            .expect("valid");
        assert_eq!(
            c.rpc_socket.as_deref(),
            Some(std::path::Path::new("/tmp/x.sock"))
        );
        assert_eq!(c.cpumask, Some(CpuList(vec![0, 3])));
        assert!(Cli::try_parse_from(["spinblk", "-m", "0x1", "--cpus", "0"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "-m", "zz"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--socket-mode", "0666"]).is_err());
        let c = Cli::try_parse_from(["spinblk", "--socket-mode", "0660", "--json", "/x.json"])
            .expect("valid");
        assert_eq!(c.socket_mode, Some(0o660));
        let c = Cli::try_parse_from(["spinblk", "--poll-mode", "busy", "--delay-base-us", "10"])
            .expect("valid");
        assert_eq!(c.poll_mode, Some(spinblk_target::PollMode::Busy));
        assert!(Cli::try_parse_from(["spinblk", "--poll-mode", "lazy"]).is_err());
        let c = Cli::try_parse_from(["spinblk"]).expect("defaults");
        assert_eq!(
            c.batch_wait_ns, None,
            "the config file's, else the reactor's default"
        );
        let c = Cli::try_parse_from(["spinblk", "--batch-wait-ns", "0"]).expect("off");
        assert_eq!(c.batch_wait_ns, Some(0));
        let c = Cli::try_parse_from(["spinblk", "--batch-wait-ns", "100000"]).expect("the most");
        assert_eq!(c.batch_wait_ns, Some(100_000));
        assert!(Cli::try_parse_from(["spinblk", "--batch-wait-ns", "200000"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--batch-wait-ns", "-1"]).is_err());
        assert!(Cli::try_parse_from(["spinblk", "--iops-threshold", "100"]).is_err());
    }
}
