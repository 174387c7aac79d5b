//! Latency/throughput accounting, CPU usage, and the final report (human or
//! JSON).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::target::DeviceInfo;

/// Highest trackable latency: 100 s in ns (larger values saturate).
const MAX_TRACKABLE_NS: u64 = 100_000_000_000;

/// Statistics for one direction (reads or writes).
#[derive(Clone)]
pub struct DirStats {
    pub ios: u64,
    pub bytes: u64,
    /// Submit-to-completion latency in ns.
    pub hist: Histogram<u64>,
}

impl DirStats {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            ios: 0,
            bytes: 0,
            hist: Histogram::new_with_bounds(1, MAX_TRACKABLE_NS, 3)
                .map_err(|e| format!("cannot create histogram: {e}"))?,
        })
    }

    #[inline]
    pub fn record(&mut self, bytes: u64, lat_ns: u64) {
        self.ios += 1;
        self.bytes += bytes;
        self.hist.saturating_record(lat_ns.max(1));
    }

    pub fn merge(&mut self, other: &DirStats) -> Result<(), String> {
        self.ios += other.ios;
        self.bytes += other.bytes;
        self.hist
            .add(&other.hist)
            .map_err(|e| format!("cannot merge histograms: {e}"))
    }
}

/// What one worker thread hands back.
pub struct WorkerStats {
    pub read: DirStats,
    pub write: DirStats,
    /// Completions with a non-zero `ret`.
    pub errors: u64,
    /// Requests that never completed (target stalled).
    pub timeouts: u64,
    pub first_error: Option<String>,
    pub fatal: Option<String>,
}

impl WorkerStats {
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            read: DirStats::new()?,
            write: DirStats::new()?,
            errors: 0,
            timeouts: 0,
            first_error: None,
            fatal: None,
        })
    }
}

/// CPU time consumed by the whole process so far (getrusage RUSAGE_SELF).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTime {
    pub fn now() -> Self {
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes into the rusage we pass a valid pointer to.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        if rc != 0 {
            return Self::default();
        }
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        Self {
            user_s: secs(ru.ru_utime),
            sys_s: secs(ru.ru_stime),
        }
    }

    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            sys_s: (self.sys_s - earlier.sys_s).max(0.0),
        }
    }
}

/// Everything printed at the end.
pub struct Report {
    pub socket: String,
    pub rw: &'static str,
    pub rwmixread: u8,
    pub bs: u64,
    pub iodepth: u32,
    pub queues: u32,
    pub poll: bool,
    pub queue_size: u32,
    pub size: u64,
    pub capacity: u64,
    pub device: DeviceInfo,
    pub ramp_s: u64,
    /// Pause after each completion before resubmitting (--think-us).
    pub think_us: u64,
    /// Whether that pause is busy-waited (--think-spin, or --poll).
    pub think_spin: bool,
    /// Length of the measured window in seconds.
    pub runtime_s: f64,
    pub read: DirStats,
    pub write: DirStats,
    pub cpu: CpuTime,
    /// Wall-clock start and end of the measured window (seconds since the
    /// Unix epoch), so that other tools can line up their own samples, e.g.
    /// the target's CPU time, with exactly the window the figures cover.
    pub window_unix_s: (f64, f64),
    pub errors: u64,
    pub timeouts: u64,
    pub first_error: Option<String>,
    pub fatal: Vec<String>,
}

/// Derived figures for one direction (or the total).
struct Summary {
    ios: u64,
    iops: f64,
    mib_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    mean_us: f64,
}

impl Summary {
    fn of(d: &DirStats, secs: f64) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        let empty = d.hist.is_empty();
        let q = |p: f64| {
            if empty {
                0.0
            } else {
                us(d.hist.value_at_quantile(p))
            }
        };
        Self {
            ios: d.ios,
            iops: d.ios as f64 / secs,
            mib_s: d.bytes as f64 / secs / (1u64 << 20) as f64,
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if empty { 0.0 } else { us(d.hist.max()) },
            mean_us: if empty { 0.0 } else { d.hist.mean() / 1000.0 },
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"ios\":{},\"iops\":{:.1},\"mib_s\":{:.3},\"lat_us\":{{\"p50\":{:.3},\"p99\":{:.3},\"p99_9\":{:.3},\"max\":{:.3},\"mean\":{:.3}}}}}",
            self.ios,
            self.iops,
            self.mib_s,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us
        )
    }

    fn human(&self, label: &str) -> String {
        format!(
            "  {label:<5}: IOPS={:.0} BW={:.1}MiB/s ios={}  lat(us): p50={:.1} p99={:.1} p99.9={:.1} max={:.1} mean={:.1}",
            self.iops,
            self.mib_s,
            self.ios,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us
        )
    }
}

/// Minimal JSON string escaping.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Report {
    fn total(&self) -> Result<DirStats, String> {
        let mut t = self.read.clone();
        t.merge(&self.write)?;
        Ok(t)
    }

    fn cpu_pct(&self) -> f64 {
        (self.cpu.user_s + self.cpu.sys_s) / self.runtime_s * 100.0
    }

    fn mode(&self) -> &'static str {
        if self.poll {
            "poll"
        } else {
            "interrupt"
        }
    }

    fn think_wait(&self) -> &'static str {
        if self.think_us == 0 {
            "none"
        } else if self.poll || self.think_spin {
            "spin"
        } else {
            "sleep"
        }
    }

    pub fn to_json(&self) -> Result<String, String> {
        let secs = self.runtime_s;
        let total = Summary::of(&self.total()?, secs);
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"socket\":{},\"rw\":\"{}\",\"rwmixread\":{},\"bs\":{},\"iodepth\":{},\"queues\":{},\"mode\":\"{}\",\"queue_size\":{},\"size\":{},\"capacity\":{},\"ramp_s\":{},\"think_us\":{},\"think_wait\":\"{}\",\"runtime_s\":{:.3}",
            json_str(&self.socket),
            self.rw,
            self.rwmixread,
            self.bs,
            self.iodepth,
            self.queues,
            self.mode(),
            self.queue_size,
            self.size,
            self.capacity,
            self.ramp_s,
            self.think_us,
            self.think_wait(),
            secs
        );
        let _ = write!(
            s,
            ",\"iops\":{:.1},\"mib_s\":{:.3},\"lat_us\":{{\"p50\":{:.3},\"p99\":{:.3},\"p99_9\":{:.3},\"max\":{:.3},\"mean\":{:.3}}}",
            total.iops,
            total.mib_s,
            total.p50_us,
            total.p99_us,
            total.p999_us,
            total.max_us,
            total.mean_us
        );
        let _ = write!(
            s,
            ",\"read\":{},\"write\":{}",
            Summary::of(&self.read, secs).json(),
            Summary::of(&self.write, secs).json()
        );
        let d = &self.device;
        let _ = write!(
            s,
            ",\"device\":{{\"capacity\":{},\"max_queues\":{},\"request_alignment\":{},\"max_segment_len\":{},\"max_segments\":{},\"max_transfer\":{},\"mem_region_alignment\":{},\"segment_len\":{},\"segments_per_request\":{}}}",
            d.capacity,
            d.max_queues,
            d.request_alignment,
            d.max_segment_len,
            d.max_segments,
            d.max_transfer,
            d.mem_region_alignment,
            d.seg_len,
            d.segs
        );
        let _ = write!(
            s,
            ",\"cpu\":{{\"user_s\":{:.3},\"sys_s\":{:.3},\"pct_one_core\":{:.1}}}",
            self.cpu.user_s,
            self.cpu.sys_s,
            self.cpu_pct()
        );
        let _ = write!(
            s,
            ",\"window_unix_s\":[{:.6},{:.6}]",
            self.window_unix_s.0, self.window_unix_s.1
        );
        let _ = write!(
            s,
            ",\"errors\":{},\"timeouts\":{},\"first_error\":{},\"fatal\":[{}]}}",
            self.errors,
            self.timeouts,
            self.first_error
                .as_deref()
                .map_or_else(|| "null".to_string(), json_str),
            self.fatal
                .iter()
                .map(|f| json_str(f))
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(s)
    }

    pub fn to_human(&self) -> Result<String, String> {
        let secs = self.runtime_s;
        let mut s = String::new();
        let mix = if self.rw == "randrw" {
            format!(" rwmixread={}", self.rwmixread)
        } else {
            String::new()
        };
        let segs = if self.device.segs > 1 {
            format!(" segments={}x{}", self.device.segs, self.device.seg_len)
        } else {
            String::new()
        };
        let think = if self.think_us > 0 {
            format!(" think={}us({})", self.think_us, self.think_wait())
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "spinblk-bench: {}{mix} bs={}{segs} iodepth={}{think} queues={} mode={} queue-size={} size={}MiB ramp={}s runtime={:.1}s target={}",
            self.rw,
            self.bs,
            self.iodepth,
            self.queues,
            self.mode(),
            self.queue_size,
            self.size >> 20,
            self.ramp_s,
            secs,
            self.socket
        );
        if self.read.ios > 0 {
            let _ = writeln!(s, "{}", Summary::of(&self.read, secs).human("read"));
        }
        if self.write.ios > 0 {
            let _ = writeln!(s, "{}", Summary::of(&self.write, secs).human("write"));
        }
        if self.read.ios > 0 && self.write.ios > 0 || self.read.ios + self.write.ios == 0 {
            let _ = writeln!(s, "{}", Summary::of(&self.total()?, secs).human("total"));
        }
        let _ = writeln!(
            s,
            "  cpu  : user={:.2}s sys={:.2}s ({:.1}% of one core)",
            self.cpu.user_s,
            self.cpu.sys_s,
            self.cpu_pct()
        );
        let _ = write!(s, "  errors: {}", self.errors);
        if self.timeouts > 0 {
            let _ = write!(s, ", timeouts: {}", self.timeouts);
        }
        if let Some(e) = &self.first_error {
            let _ = write!(s, " (first: {e})");
        }
        for f in &self.fatal {
            let _ = write!(s, "\n  fatal: {f}");
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn summary_math() {
        let mut d = DirStats::new().expect("histogram");
        for i in 1..=1000u64 {
            d.record(4096, i * 1000); // 1..1000 us
        }
        let s = Summary::of(&d, 2.0);
        assert_eq!(s.ios, 1000);
        assert!((s.iops - 500.0).abs() < 1e-9);
        assert!((s.mib_s - 1000.0 * 4096.0 / 2.0 / 1048576.0).abs() < 1e-9);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{}", s.p50_us);
        assert!((s.p99_us - 990.0).abs() < 1.0, "{}", s.p99_us);
        assert!((s.max_us - 1000.0).abs() < 1.0, "{}", s.max_us);
    }
}
