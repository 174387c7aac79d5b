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
    /// Anticipate periodic arrivals (default on): when the last idle gaps were nearly equal
    /// and longer than `cap`, sleep only until shortly before the next one is due and spin
    /// through its arrival (see [`Anticipator`]).
    pub anticipate: bool,
}

impl Default for IdleConfig {
    fn default() -> Self {
        IdleConfig {
            start: Duration::from_micros(50),
            floor: Duration::from_micros(5),
            cap: Duration::from_micros(100),
            anticipate: true,
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

/// How many recent idle gaps [`Anticipator`] looks at.
const GAPS: usize = 8;

/// Wake-up anticipation for a periodic light load: a client that submits one request, waits
/// for it, pauses for about the same time and submits the next one. Sleeping through each gap
/// makes every request pay a wake-up (on a VM an idle vCPU's wake-up costs tens of
/// microseconds); spinning through it costs a whole core. When the last 8 (`GAPS`) idle gaps
/// (last work to next work, each longer than the spin budget) agree to within an eighth of
/// their typical length (the smallest and largest are left out), the reactor sleeps with a
/// timeout that ends `margin` plus the measured lateness of a timed wake-up before the shortest
/// expected gap, then spins until `margin` after the longest one. A gap longer than anticipated,
/// or a spin that ends without work, forgets the history, so an irregular load is slept through as
/// before and costs at most one anticipation per 8 requests. In abstract time units like
/// [`IdlePolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anticipator {
    gaps: [u64; GAPS],
    filled: usize,
    next: usize,
    /// Smoothed lateness of a timed wake-up.
    late: u64,
    margin: u64,
    min_gap: u64,
    max_gap: u64,
}

/// When to wake and how long to spin, both as offsets from the end of the last work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnticipationPlan {
    /// End the sleep at this offset (already early by the expected lateness).
    pub wake_at: u64,
    /// Spin, if nothing came, until this offset; then sleep as usual.
    pub spin_until: u64,
}

impl Anticipator {
    /// Anticipates gaps from `min_gap` (shorter ones are spun through anyway) to `max_gap`,
    /// waking `margin` early and spinning `margin` late.
    pub fn new(margin: u64, min_gap: u64, max_gap: u64) -> Anticipator {
        Anticipator {
            gaps: [0; GAPS],
            filled: 0,
            next: 0,
            late: 0,
            margin,
            min_gap,
            max_gap,
        }
    }

    /// Work came `gap` after the end of the last work. Gaps shorter than `min_gap` (the passes
    /// of one burst, or a load the spin budget covers) are ignored; longer than `max_gap`
    /// forget the history.
    pub fn observe(&mut self, gap: u64) {
        if gap < self.min_gap {
            return;
        }
        if gap > self.max_gap {
            self.forget();
            return;
        }
        self.gaps[self.next] = gap;
        self.next = (self.next + 1) % GAPS;
        self.filled = (self.filled + 1).min(GAPS);
    }

    /// Work that woke a sleep came `gap` after the end of the last work: it arrived about one
    /// wake-up latency earlier (estimated by the lateness of timed wake-ups), which is what
    /// gaps caught by a spin measure, so both kinds of gaps agree.
    pub fn observe_woken(&mut self, gap: u64) {
        self.observe(gap.saturating_sub(self.late));
    }

    /// Drops the history (a spin ended without work, or the load changed).
    pub fn forget(&mut self) {
        self.filled = 0;
    }

    /// A timed wake-up came `late` after its due time.
    pub fn woke_late(&mut self, late: u64) {
        let late = late.min(self.max_gap);
        self.late = (self.late * 3 + late) / 4;
    }

    /// An event woke the sleep before the planned wake-up: the arrival came sooner than the
    /// plan expects, because the woken gaps still hold a wake-up latency that `late` (learnt
    /// only from timed wake-ups, none yet) does not cover. Raise `late` by the margin, so the
    /// next plan wakes earlier and a timed wake-up gets to measure the real lateness.
    pub fn woke_before_plan(&mut self) {
        self.late = (self.late + self.margin).min(self.max_gap);
    }

    /// The plan for the gap that starts now, if the recent gaps are regular.
    pub fn plan(&self) -> Option<AnticipationPlan> {
        if self.filled < GAPS {
            return None;
        }
        let mut sorted = self.gaps;
        sorted.sort_unstable();
        // Leave out one outlier on each side.
        let (lo, hi) = (sorted[1], sorted[GAPS - 2]);
        if hi - lo > hi / 8 {
            return None;
        }
        Some(AnticipationPlan {
            wake_at: lo.saturating_sub(self.margin + self.late),
            spin_until: hi + self.margin,
        })
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

    /// Woken gaps hold a wake-up latency that no timed wake-up has measured yet: an event
    /// before the planned wake-up moves the next plan earlier by the margin.
    #[test]
    fn an_arrival_before_the_planned_wake_up_plans_earlier() {
        let mut a = Anticipator::new(15 * US, CAP, 2_000 * US);
        for _ in 0..GAPS {
            a.observe_woken(425 * US);
        }
        let first = a.plan().expect("regular").wake_at;
        assert_eq!(first, 410 * US);
        a.woke_before_plan();
        a.observe_woken(425 * US);
        let next = a.plan().expect("still regular").wake_at;
        assert_eq!(next, first - 15 * US, "earlier by the margin");
    }

    #[test]
    fn anticipation_needs_regular_gaps_and_forgets_on_a_change() {
        let mut a = Anticipator::new(20 * US, CAP, 2_000 * US);
        for _ in 0..GAPS - 1 {
            a.observe(260 * US);
        }
        assert_eq!(a.plan(), None, "not enough history");
        a.observe(250 * US);
        // The smallest and largest gaps are left out: 260 on both sides.
        let p = a.plan().expect("regular gaps");
        assert_eq!(p.wake_at, 240 * US);
        assert_eq!(p.spin_until, 280 * US);
        // Timed wake-ups that come late move the wake-up earlier (smoothed: a quarter of it).
        a.woke_late(40 * US);
        assert_eq!(a.plan().map(|p| p.wake_at), Some(230 * US));
        // One outlier on each side is tolerated...
        a.observe(900 * US);
        a.observe(150 * US);
        assert!(a.plan().is_some());
        // ...a spread beyond an eighth is not.
        a.observe(400 * US);
        assert_eq!(a.plan(), None, "irregular");
        // A gap the spin budget covers (the passes of one burst) is ignored; a very long one
        // forgets everything.
        let mut b = a;
        b.forget();
        for _ in 0..GAPS {
            b.observe(300 * US);
        }
        assert!(b.plan().is_some());
        b.observe(50 * US);
        b.observe(0);
        assert!(b.plan().is_some());
        for _ in 0..GAPS {
            b.observe(300 * US);
        }
        b.observe(5_000 * US);
        assert_eq!(b.plan(), None);
    }
}
