//! State shared by the workload threads, the watchdog that finds lost requests, and the
//! progress reporter.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Errors printed in full; the rest are only counted.
const PRINT_LIMIT: u64 = 20;

/// Prints one line to stdout at once (lines of different threads never mix). The line and its
/// newline go out in one write: `writeln!` through stdout's line buffer makes two (the text,
/// then the newline), and a process that exits between them leaves the line unterminated, so
/// the next one on the console (the init script's `GIO-EXIT`) runs into it.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

/// What a slot's request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum OpKind {
    /// A read.
    Read = 1,
    /// A write.
    Write = 2,
    /// A flush (fdatasync).
    Flush = 3,
}

impl OpKind {
    fn name(v: u64) -> &'static str {
        match v {
            1 => "read",
            2 => "write",
            3 => "flush",
            _ => "?",
        }
    }
}

/// One thread's request in flight (at most one: every thread does synchronous I/O).
#[derive(Default)]
pub struct Slot {
    /// Effective clock (ms) when it started; 0 = none in flight.
    start: AtomicU64,
    /// Counts requests, so the watchdog reports each lost one once.
    seq: AtomicU64,
    kind: AtomicU64,
    offset: AtomicU64,
    len: AtomicU64,
    /// The watchdog reported the current request lost.
    reported: AtomicBool,
}

/// Which failure a check found.
#[derive(Debug, Clone, Copy)]
pub enum Bad {
    /// Damaged bytes (checksum, fill, zeroes, misplaced, foreign).
    Corrupt,
    /// An older generation than the last completed write.
    Stale,
    /// An I/O error returned by the kernel.
    Io,
}

/// Counters and flags of one run.
pub struct Shared {
    /// Workers stop at their next request boundary.
    pub stop: AtomicBool,
    /// The watchdog stops.
    pub quit_watchdog: AtomicBool,
    /// Effective clock in ms, advanced by the watchdog: wall time, but a gap in the watchdog's
    /// own scheduling counts as at most 500 ms (a descheduled vCPU does not fake a lost I/O).
    eff_ms: AtomicU64,
    /// One per worker, then the memory thread, then the main thread.
    pub slots: Vec<Slot>,
    /// Completed writes.
    pub writes: AtomicU64,
    /// Completed reads.
    pub reads: AtomicU64,
    /// Completed flushes.
    pub flushes: AtomicU64,
    /// Blocks read and found as expected.
    pub verified: AtomicU64,
    /// Completed passes of the memory thread.
    pub mem_passes: AtomicU64,
    /// Chunks the memory thread refilled.
    pub mem_refills: AtomicU64,
    /// mem_refills at the last `mark` command.
    pub mark_refills: AtomicU64,
    /// Memory checks that failed (the memory thread's own ones at a host switch).
    pub memcheck_failures: AtomicU64,
    /// Blocks with damaged contents.
    pub corrupt: AtomicU64,
    /// Blocks with an older generation.
    pub stale: AtomicU64,
    /// Failed requests.
    pub io_errors: AtomicU64,
    /// Requests that did not complete within the bound.
    pub lost: AtomicU64,
    /// Errors printed so far (capped at PRINT_LIMIT).
    printed: AtomicU64,
    /// Longest request latency (us) since the last progress line.
    max_lat_us: AtomicU64,
    /// Longest request latency (us) of the run.
    pub max_lat_total_us: AtomicU64,
    /// A fault to inject in worker 0 (0 none, 1 stale, 2 corrupt, 3 hang).
    pub inject: AtomicU32,
    /// The bound after which a request counts as lost.
    pub lost_after: Duration,
    /// When the run started.
    pub t0: Instant,
}

impl Shared {
    /// State for `workers` worker threads (plus the memory and main threads).
    pub fn new(workers: usize, lost_after: Duration) -> Self {
        Self {
            stop: AtomicBool::new(false),
            quit_watchdog: AtomicBool::new(false),
            eff_ms: AtomicU64::new(1),
            slots: (0..workers + 2).map(|_| Slot::default()).collect(),
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            mem_passes: AtomicU64::new(0),
            mem_refills: AtomicU64::new(0),
            mark_refills: AtomicU64::new(0),
            memcheck_failures: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            printed: AtomicU64::new(0),
            max_lat_us: AtomicU64::new(0),
            max_lat_total_us: AtomicU64::new(0),
            inject: AtomicU32::new(0),
            lost_after,
            t0: Instant::now(),
        }
    }

    /// Seconds since the start, for reports.
    pub fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// Slot index of the memory thread.
    pub fn mem_slot(&self) -> usize {
        self.slots.len() - 2
    }

    /// Slot index of the main thread.
    pub fn main_slot(&self) -> usize {
        self.slots.len() - 1
    }

    /// Runs `f` as request `kind` at (`offset`, `len` bytes) of slot `s`, for the watchdog.
    pub fn timed<T>(
        &self,
        s: usize,
        kind: OpKind,
        offset: u64,
        len: u64,
        f: impl FnOnce() -> T,
    ) -> T {
        let slot = &self.slots[s];
        slot.kind.store(kind as u64, Relaxed);
        slot.offset.store(offset, Relaxed);
        slot.len.store(len, Relaxed);
        slot.seq.fetch_add(1, Relaxed);
        slot.reported.store(false, Relaxed);
        let t = Instant::now();
        slot.start.store(self.eff_ms.load(Relaxed).max(1), Relaxed);
        let r = f();
        slot.start.store(0, Relaxed);
        let us = t.elapsed().as_micros() as u64;
        self.max_lat_us.fetch_max(us, Relaxed);
        self.max_lat_total_us.fetch_max(us, Relaxed);
        if slot.reported.load(Relaxed) {
            say(&format!(
                "GIO NOTE t={:.1} the request reported lost completed after {} ms",
                self.secs(),
                us / 1000
            ));
        }
        match kind {
            OpKind::Read => self.reads.fetch_add(1, Relaxed),
            OpKind::Write => self.writes.fetch_add(1, Relaxed),
            OpKind::Flush => self.flushes.fetch_add(1, Relaxed),
        };
        r
    }

    /// Counts a failure and prints `detail` (the first PRINT_LIMIT of them).
    pub fn bad(&self, what: Bad, detail: &str) {
        let (counter, name) = match what {
            Bad::Corrupt => (&self.corrupt, "CORRUPT"),
            Bad::Stale => (&self.stale, "STALE"),
            Bad::Io => (&self.io_errors, "IOERR"),
        };
        counter.fetch_add(1, Relaxed);
        if self.printed.fetch_add(1, Relaxed) < PRINT_LIMIT {
            say(&format!("GIO ERROR {name} t={:.1} {detail}", self.secs()));
        }
    }

    /// The progress line's fields.
    pub fn progress(&self) -> String {
        format!(
            "t={:.1} w={} r={} fl={} vb={} mp={} lat_max_ms={} corrupt={} stale={} ioerr={} lost={}",
            self.secs(),
            self.writes.load(Relaxed),
            self.reads.load(Relaxed),
            self.flushes.load(Relaxed),
            self.verified.load(Relaxed),
            self.mem_passes.load(Relaxed),
            self.max_lat_us.swap(0, Relaxed) / 1000,
            self.corrupt.load(Relaxed),
            self.stale.load(Relaxed),
            self.io_errors.load(Relaxed),
            self.lost.load(Relaxed),
        )
    }

    /// The watchdog: advances the effective clock, reports requests older than the bound as
    /// LOST (each once), prints a progress line every `progress`.
    pub fn watchdog(&self, progress: Duration) {
        let tick = Duration::from_millis(100);
        let lost_ms = self.lost_after.as_millis() as u64;
        let mut last = Instant::now();
        let mut next_progress = last + progress;
        while !self.quit_watchdog.load(Relaxed) {
            std::thread::sleep(tick);
            let now = Instant::now();
            let gap = (now - last).as_millis() as u64;
            last = now;
            let eff = self.eff_ms.load(Relaxed) + gap.min(500);
            self.eff_ms.store(eff, Relaxed);
            for (i, slot) in self.slots.iter().enumerate() {
                let s = slot.start.load(Relaxed);
                if s == 0 || eff.saturating_sub(s) <= lost_ms || slot.reported.load(Relaxed) {
                    continue;
                }
                slot.reported.store(true, Relaxed);
                self.lost.fetch_add(1, Relaxed);
                let who = if i == self.main_slot() {
                    "main".to_string()
                } else if i == self.mem_slot() {
                    "mem".to_string()
                } else {
                    format!("worker{i}")
                };
                say(&format!(
                    "GIO ERROR LOST t={:.1} {who} {} offset={} len={} pending for more than {} ms (seq {})",
                    self.secs(),
                    OpKind::name(slot.kind.load(Relaxed)),
                    slot.offset.load(Relaxed),
                    slot.len.load(Relaxed),
                    lost_ms,
                    slot.seq.load(Relaxed),
                ));
            }
            if now >= next_progress {
                next_progress = now + progress;
                say(&format!("GIO PROGRESS {}", self.progress()));
            }
        }
    }
}
