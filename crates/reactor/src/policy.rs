//! The adaptive idle window: how long a reactor in [`PollMode::Adaptive`] keeps spinning after
//! its last work before it goes to sleep. The policy is a pure state machine over "a sleep of
//! this length ended, and the pass after it did / did not find work" events, so it is unit
//! tested without threads or clocks; the crate documentation explains the choice of rules.
//!
//! [`PollMode::Adaptive`]: crate::PollMode::Adaptive

use std::time::Duration;

use crate::clock::Tick;

/// Tuning of the adaptive idle window, in wall time. [`IdleConfig::default`] is the policy
/// spinblk ships; see the crate documentation for why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleConfig {
    /// The window a reactor starts with (default 50 us: Cloud Hypervisor's vhost-user-blk
    /// poll-then-sleep time).
    pub start: Duration,
    /// The smallest window (default 5 us): below it a sleep costs more than the spin it saves.
    pub floor: Duration,
    /// The spin budget and largest window (default 100 us, QEMU's `poll-max-ns`): an idle gap
    /// shorter than this is worth spinning through to save a wake-up, a longer one is slept
    /// through.
    pub cap: Duration,
}

impl Default for IdleConfig {
    fn default() -> Self {
        IdleConfig {
            start: Duration::from_micros(50),
            floor: Duration::from_micros(5),
            cap: Duration::from_micros(100),
        }
    }
}

/// What one [`IdlePolicy::on_wake`] did to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowChange {
    /// Doubled (up to the cap): the sleep was premature.
    Grew,
    /// Halved (down to the floor): the gap was too long to spin through.
    Shrank,
    /// Unchanged.
    Kept,
}

/// The idle window state machine, in abstract time units (the reactor uses clock ticks; tests
/// use nanoseconds). Invariant: `floor <= window <= cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    window: u64,
    floor: u64,
    cap: u64,
}

impl IdlePolicy {
    /// A policy over plain numbers. `floor` is raised to 1, `cap` to `floor`, and `start` is
    /// clamped into `[floor, cap]`.
    pub fn new(start: u64, floor: u64, cap: u64) -> IdlePolicy {
        let floor = floor.max(1);
        let cap = cap.max(floor);
        IdlePolicy {
            window: start.clamp(floor, cap),
            floor,
            cap,
        }
    }

    /// The policy of `config`, in clock ticks.
    pub fn from_config(config: &IdleConfig) -> IdlePolicy {
        let t = Tick::from_duration;
        IdlePolicy::new(t(config.start), t(config.floor), t(config.cap))
    }

    /// How long to spin without work before sleeping.
    #[inline]
    pub fn window(&self) -> u64 {
        self.window
    }

    /// The spin budget.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// A sleep ended `gap` after the last work (the spun window plus the sleep); `work` says
    /// whether the first pass after it found I/O work (a poller was busy: not only a timer or a
    /// control message).
    ///
    /// - `gap >= cap`: too long to spin through; sleeping was right and the spin before it was
    ///   wasted -> halve the window, down to `floor`;
    /// - `gap < cap` with work: the sleep was premature (it paid a wake-up for work that a
    ///   longer spin within budget would have caught) -> double the window, up to `cap`;
    /// - otherwise (a short wake without work: a timer, a message, a spurious edge; or a gap
    ///   within the window) -> keep it.
    pub fn on_wake(&mut self, gap: u64, work: bool) -> WindowChange {
        if gap <= self.window {
            return WindowChange::Kept;
        }
        if gap >= self.cap {
            let shrunk = (self.window / 2).max(self.floor);
            if shrunk != self.window {
                self.window = shrunk;
                return WindowChange::Shrank;
            }
        } else if work {
            let grown = self.window.saturating_mul(2).min(self.cap);
            if grown != self.window {
                self.window = grown;
                return WindowChange::Grew;
            }
        }
        WindowChange::Kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;
    const FLOOR: u64 = 5 * US;
    const CAP: u64 = 100 * US;

    /// The default policy in nanoseconds.
    fn ns_policy() -> IdlePolicy {
        let c = IdleConfig::default();
        let n = |d: Duration| d.as_nanos() as u64;
        IdlePolicy::new(n(c.start), n(c.floor), n(c.cap))
    }

    /// Simulates a reactor under requests that arrive `gaps[i]` after the previous one's work
    /// ended: it sleeps when a gap exceeds the window, and wakes with work at the gap's end.
    /// Returns how many gaps were slept through.
    fn simulate(p: &mut IdlePolicy, gaps: &[u64]) -> usize {
        let mut sleeps = 0;
        for &gap in gaps {
            if gap > p.window() {
                sleeps += 1;
                p.on_wake(gap, true);
            }
        }
        sleeps
    }

    fn idle_to_floor(p: &mut IdlePolicy) {
        for _ in 0..10 {
            p.on_wake(100_000 * US, false);
        }
        assert_eq!(p.window(), FLOOR);
    }

    #[test]
    fn construction_clamps_into_floor_and_cap() {
        let p = IdlePolicy::new(500, 10, 100);
        assert_eq!((p.window(), p.cap()), (100, 100));
        let p = IdlePolicy::new(1, 10, 100);
        assert_eq!(p.window(), 10);
        let p = IdlePolicy::new(0, 0, 0);
        assert_eq!(p.window(), 1, "a zero floor is raised to one unit");
        assert_eq!(ns_policy().window(), 50 * US);
    }

    #[test]
    fn premature_sleeps_double_up_to_the_cap() {
        let mut p = ns_policy();
        assert_eq!(p.on_wake(52 * US, true), WindowChange::Grew);
        assert_eq!(p.window(), CAP);
        assert_eq!(p.on_wake(99 * US, true), WindowChange::Kept, "capped");
        let mut p = ns_policy();
        idle_to_floor(&mut p);
        assert_eq!(p.on_wake(6 * US, true), WindowChange::Grew);
        assert_eq!(p.window(), 10 * US);
    }

    #[test]
    fn gaps_beyond_the_budget_halve_down_to_the_floor() {
        let mut p = ns_policy();
        assert_eq!(p.on_wake(CAP, true), WindowChange::Shrank);
        assert_eq!(p.window(), 25 * US);
        assert_eq!(p.on_wake(5_000 * US, false), WindowChange::Shrank);
        assert_eq!(p.window(), 12_500);
        idle_to_floor(&mut p);
        assert_eq!(p.on_wake(10_000 * US, true), WindowChange::Kept, "floored");
    }

    #[test]
    fn workless_short_wakes_keep_the_window() {
        let mut p = ns_policy();
        assert_eq!(
            p.on_wake(60 * US, false),
            WindowChange::Kept,
            "timer or message"
        );
        assert_eq!(
            p.on_wake(40 * US, true),
            WindowChange::Kept,
            "within the window"
        );
        assert_eq!(p.window(), 50 * US);
    }

    #[test]
    fn a_steady_load_never_sleeps() {
        // Gaps below the starting window: no sleep, no change, forever.
        let mut p = ns_policy();
        let gaps: Vec<u64> = (0..10_000).map(|i| (i % 50) * US).collect();
        assert_eq!(simulate(&mut p, &gaps), 0);
        assert_eq!(p.window(), 50 * US);
    }

    #[test]
    fn any_load_within_budget_stops_sleeping_after_a_few_premature_sleeps() {
        // Even from the floor (after a long idle period), a load with gaps anywhere below the
        // budget costs at most log2(cap/floor) premature sleeps, then spins for good.
        for gap in [6, 8, 20, 45, 55, 70, 99].map(|g| g * US) {
            let mut p = ns_policy();
            idle_to_floor(&mut p);
            let gaps = vec![gap; 1_000];
            let sleeps = simulate(&mut p, &gaps);
            assert!(sleeps <= 5, "gap {gap}: {sleeps} premature sleeps");
            assert!(p.window() >= gap);
            assert_eq!(
                simulate(&mut p, &gaps),
                0,
                "gap {gap}: then never sleeps again"
            );
        }
    }

    #[test]
    fn a_light_load_sleeps_in_its_gaps_with_a_short_window() {
        // QD1 with a 200 us think time: every gap is slept through (CPU saved), and the spin
        // before each sleep shrinks to the floor, whatever the window was before (no history
        // can leave it spinning through gaps above the budget).
        for start in [5, 50, 100].map(|s| s * US) {
            let mut p = IdlePolicy::new(start, FLOOR, CAP);
            let gaps = vec![200 * US; 1_000];
            assert_eq!(simulate(&mut p, &gaps), 1_000);
            assert_eq!(p.window(), FLOOR);
        }
    }

    #[test]
    fn an_idle_reactor_converges_to_the_floor() {
        // Idle: every sleep is long (ended by a statistics timer, no work).
        let mut p = ns_policy();
        let mut steps = 0;
        while p.window() > FLOOR {
            assert_eq!(p.on_wake(100_000 * US, false), WindowChange::Shrank);
            steps += 1;
        }
        assert!(steps <= 4, "{steps} long sleeps to reach the floor");
    }

    #[test]
    fn bursts_and_pauses_stay_bounded() {
        // Bursts of 8 us gaps (above the floor) with random pauses: the window stays in range,
        // and each burst pays at most one premature sleep before the window covers its gaps.
        let mut p = ns_policy();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..1_000 {
            let pause = next() % (5_000 * US);
            simulate(&mut p, &[pause]);
            let burst = vec![8 * US; 100];
            assert!(simulate(&mut p, &burst) <= 1);
            assert!(p.window() >= FLOOR && p.window() <= CAP);
        }
    }
}
