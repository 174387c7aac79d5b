//! A cheap monotonic clock for per-pass busy/idle accounting and per-request latency stamps.
//! On x86_64 it reads the TSC (invariant on the CPUs spinblk targets, and the kernel's own
//! clocksource here), which costs a few nanoseconds against ~20 for `clock_gettime`; it is
//! converted to nanoseconds only when statistics are read. Elsewhere it falls back to `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in time, in clock ticks. Only differences between ticks read on the same thread
/// (reactors are pinned) are meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(pub(crate) u64);

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

#[cfg(target_arch = "x86_64")]
fn raw() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no preconditions and touches no memory.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn raw() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// One (`Instant`, tick) pair read as close together as this thread manages: the tick read is
/// bracketed by two, and of a few tries the tightest bracket wins, so a preemption between the
/// two clocks cannot skew the pair.
#[cfg(target_arch = "x86_64")]
fn paired() -> (Instant, u64) {
    let mut best = (Instant::now(), raw(), u64::MAX);
    for _ in 0..16 {
        let a = raw();
        let t = Instant::now();
        let b = raw();
        let width = b.saturating_sub(a);
        if width < best.2 {
            best = (t, a + width / 2, width);
        }
    }
    (best.0, best.1)
}

/// Nanoseconds per tick, measured once against `Instant` over 50 ms with paired reads.
fn ns_per_tick() -> f64 {
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let (t0, c0) = paired();
            std::thread::sleep(Duration::from_millis(50));
            let (t1, c1) = paired();
            let ticks = c1.saturating_sub(c0).max(1);
            (t1 - t0).as_nanos() as f64 / ticks as f64
        }
        #[cfg(not(target_arch = "x86_64"))]
        1.0
    })
}

impl Tick {
    /// Now.
    #[inline]
    pub fn now() -> Tick {
        Tick(raw())
    }

    /// Measures the clock rate (blocks ~50 ms the first time). Call before latency-sensitive
    /// threads start, so none of them pays for it.
    pub fn calibrate() {
        let _ = origin();
        let _ = ns_per_tick();
    }

    /// Ticks from `earlier` to `self` (zero if `earlier` is later).
    #[inline]
    pub fn ticks_since(self, earlier: Tick) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The raw tick count (for deadlines kept as plain integers).
    #[inline]
    pub fn raw(self) -> u64 {
        self.0
    }

    /// Ticks per microsecond (at least 1), for turning configured delays into deadlines.
    pub fn per_micro() -> u64 {
        ((1000.0 / ns_per_tick()) as u64).max(1)
    }

    /// Converts a tick count to nanoseconds.
    pub fn to_nanos(ticks: u64) -> u64 {
        (ticks as f64 * ns_per_tick()) as u64
    }

    /// Converts nanoseconds to a tick count (the inverse of [`Tick::to_nanos`]).
    pub fn from_nanos(ns: u64) -> u64 {
        (ns as f64 / ns_per_tick()) as u64
    }

    /// A tick count as a [`Duration`].
    pub fn to_duration(ticks: u64) -> Duration {
        Duration::from_nanos(Tick::to_nanos(ticks))
    }

    /// A [`Duration`] as a tick count (saturating).
    pub fn from_duration(d: Duration) -> u64 {
        Tick::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// `ticks` later than `self` (saturating).
    #[inline]
    pub fn plus(self, ticks: u64) -> Tick {
        Tick(self.0.saturating_add(ticks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_track_wall_time() {
        Tick::calibrate();
        let (t0, i0) = (Tick::now(), Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        let ns = Tick::to_nanos(Tick::now().ticks_since(t0));
        let wall = i0.elapsed().as_nanos() as u64;
        assert!(
            ns > wall / 2 && ns < wall * 2,
            "tick ns {ns} vs wall ns {wall}"
        );
        assert_eq!(
            t0.ticks_since(Tick::now()),
            0,
            "backwards differences clamp to zero"
        );
    }
}
