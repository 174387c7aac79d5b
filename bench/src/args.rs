//! Command-line interface and the small parsers behind it (sizes; CPU lists are `cpus.rs`'s).

use clap::{Parser, ValueEnum};

pub use crate::cpus::{parse_cpu_list, CpuList};

/// I/O pattern, named like fio's `--rw`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Uniformly random reads.
    Randread,
    /// Uniformly random writes.
    Randwrite,
    /// Uniformly random mix of reads and writes (see --rwmixread).
    Randrw,
}

impl Rw {
    /// Whether offsets are drawn at random (as opposed to walking sequentially).
    pub fn is_random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }

    /// Whether the workload issues any write.
    pub fn writes(self) -> bool {
        matches!(self, Rw::Write | Rw::Randwrite | Rw::Randrw)
    }

    /// Percentage of reads in the workload.
    pub fn read_pct(self, rwmixread: u8) -> u8 {
        match self {
            Rw::Read | Rw::Randread => 100,
            Rw::Write | Rw::Randwrite => 0,
            Rw::Randrw => rwmixread,
        }
    }

    /// The fio-style name.
    pub fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Randrw => "randrw",
        }
    }
}

/// fio-like load generator for vhost-user-blk targets (via libblkio).
///
/// Each queue is driven by its own thread that keeps --iodepth requests in
/// flight, resubmitting as soon as a request completes. In the default
/// (interrupt) mode the thread sleeps in `blkioq_do_io(min_completions=1)`,
/// which blocks on the queue's completion eventfd; with --poll the queues are
/// libblkio poll queues and the thread busy-loops on
/// `blkioq_do_io(min_completions=0)`.
#[derive(Parser, Debug)]
#[command(name = "spinblk-bench", version)]
pub struct Args {
    /// vhost-user-blk UNIX socket of the target.
    #[arg(long, value_name = "PATH")]
    pub socket: String,

    /// I/O pattern.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,

    /// Percentage of reads for --rw randrw.
    #[arg(long, default_value_t = 50, value_name = "PCT",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,

    /// Block size per request (bytes; K/M/G suffixes are powers of 1024).
    #[arg(long, default_value = "4k", value_name = "SIZE", value_parser = parse_size)]
    pub bs: u64,

    /// Requests kept in flight per queue.
    #[arg(long, default_value_t = 32, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=32768))]
    pub iodepth: u32,

    /// Number of virtqueues; one pinned thread drives each.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queues: u32,

    /// CPUs to pin the queue threads to (e.g. `1,3,8-11`); thread i gets the
    /// i-th entry, wrapping around if there are fewer CPUs than queues.
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,

    /// Measured run time in seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub runtime: u64,

    /// Warm-up seconds before the measured run (excluded from all figures).
    #[arg(long, default_value_t = 0, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub ramp: u64,

    /// Size of the region (from offset 0) the workload touches; default is
    /// the whole device.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,

    /// Use libblkio poll queues and busy-poll for completions.
    #[arg(long)]
    pub poll: bool,

    /// Pause after each completion before resubmitting that request, in
    /// microseconds: a light, latency-bound load (each of the --iodepth
    /// requests is resubmitted THINK us after it completes). The pause is not
    /// part of the measured latency. In interrupt mode the thread sleeps
    /// through the pause (timer slack set to 1 ns) unless --think-spin is
    /// given; in --poll mode it always spins. 0 (default): resubmit at once.
    #[arg(long, default_value_t = 0, value_name = "US",
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub think_us: u64,

    /// Busy-wait through the --think-us pause instead of sleeping.
    #[arg(long)]
    pub think_spin: bool,

    /// Connect, set up the queues and the memory region, then submit nothing
    /// for --ramp + --runtime seconds: a connected but idle client (for the
    /// target's idle CPU cost). The report shows zero I/O and the window.
    #[arg(long)]
    pub idle: bool,

    /// Virtqueue size (power of two). Default: big enough for --iodepth
    /// (each request takes 3 descriptors), at least 256.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=32768))]
    pub queue_size: Option<u32>,

    /// Split each request's buffer into data segments of at most SIZE bytes
    /// (submitted with readv/writev), to exercise multi-descriptor requests.
    /// Requests are also split when the device reports a max-segment-len.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub segment_size: Option<u64>,

    /// Seed for the offset / read-write-mix generator.
    #[arg(long, default_value_t = 0x5eed_b10c, value_name = "N")]
    pub seed: u64,

    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    pub json: bool,

    /// Print device properties and setup details to stderr.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Parses a size such as `4096`, `4k`, `4K`, `4KiB`, `1m`, `2G`, `1T`.
/// Suffixes are binary (K = 1024), like fio's defaults.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid size '{s}': expected a number"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}': number too large"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("invalid size '{s}': unknown suffix '{suffix}'")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size '{s}': too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size(" 8k "), Ok(8192));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes() {
        for bad in [
            "",
            "k",
            "-4k",
            "4x",
            "4.5k",
            "1kk",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn cli() {
        let a = Args::try_parse_from([
            "spinblk-bench",
            "--socket",
            "/tmp/x.sock",
            "--rw",
            "randrw",
            "--rwmixread",
            "70",
            "--bs",
            "16k",
            "--cpus",
            "1-2",
            "--think-us",
            "200",
        ]);
        let a = match a {
            Ok(a) => a,
            Err(e) => panic!("valid command line rejected: {e}"),
        };
        assert_eq!(a.rw, Rw::Randrw);
        assert_eq!(a.bs, 16384);
        assert_eq!(a.iodepth, 32);
        assert_eq!(a.rw.read_pct(a.rwmixread), 70);
        assert_eq!(a.cpus, Some(CpuList(vec![1, 2])));
        assert_eq!(a.think_us, 200);
        assert!(!a.think_spin);

        for bad in [
            vec!["spinblk-bench"],
            vec!["spinblk-bench", "--socket", "s", "--bs", "4q"],
            vec!["spinblk-bench", "--socket", "s", "--iodepth", "0"],
            vec!["spinblk-bench", "--socket", "s", "--rwmixread", "101"],
            vec!["spinblk-bench", "--socket", "s", "--rw", "trim"],
            vec!["spinblk-bench", "--socket", "s", "--think-us", "-1"],
            vec!["spinblk-bench", "--socket", "s", "--think-us", "1000001"],
        ] {
            assert!(
                Args::try_parse_from(&bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
