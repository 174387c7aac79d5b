//! Pinned reactors for spinblk, in SPDK's shape: one thread per core runs its [`Poller`]s in a
//! loop, accounts each pass as busy or idle, and takes work from other threads only as
//! messages (closures run on the reactor between passes). Knows nothing of virtio or block
//! devices.
//!
//! # Pollers
//!
//! [`Reactor::add_poller`] returns a [`PollerId`]; [`Reactor::poller_mut`] finds the poller again
//! as its concrete type (`Poller: Any`), [`Reactor::remove_poller`] takes it out. A poller that
//! returns [`PollStatus::Done`] is dropped in that pass, after its watched fds are unregistered.
//! [`Reactor::add_timed_poller`] adds SPDK's timed poller: run about once per period, checked
//! with one clock comparison per pass. Every poller counts its runs and busy runs
//! ([`Reactor::poller_info`]).
//!
//! # Batches
//!
//! After a pass in which a plain poller found work, which came at most
//! [`STREAMING_IDLE_PASSES`] idle passes after the last such pass and took less than
//! [`SHORT_PASS_WAITS`] waits, the reactor spins for [`ReactorConfig::batch_wait`]
//! ([`DEFAULT_BATCH_WAIT`], 250 ns) before its next pass, so that a driver streaming requests
//! from another core queues several meanwhile and the next pass takes them together. A busy
//! pass after a longer idle stretch (a lone request) or a long one (the reactor is the
//! bottleneck) is not waited after. The wait is accounted as idle time.
//!
//! # Messages
//!
//! A sender pushes its closure into a crossbeam channel and then bumps a counter; the reactor's
//! per-pass check is one plain load of that counter, and it touches the channel only when the
//! counter moved (an empty crossbeam `try_recv` costs a SeqCst fence). At most 64 messages run
//! per pass. [`ReactorHandle::call_timeout`] bounds every control-plane wait.
//!
//! # Adaptive polling
//!
//! In [`PollMode::Busy`] a reactor spins always (a reactor with no pollers at all still sleeps
//! on its inbox). In [`PollMode::Adaptive`] (the default) it spins while there is work and,
//! once no plain poller and no message has done anything for the *idle window*, goes to sleep:
//!
//! 1. set the `sleeping` flag (SeqCst), then re-read the inbox counter (SeqCst) and give up if
//!    it moved: a sender bumps the counter (SeqCst) and then reads the flag (SeqCst), writing
//!    the inbox eventfd if it is set, so of the two at least one sees the other (Dekker) and a
//!    message sent at that moment is never missed;
//! 2. call [`Poller::prepare_sleep`] on every plain poller: each arms its wake-ups (enables
//!    guest notifications, completion events) and re-checks for work; if any says `false`, the
//!    sleep is abandoned and [`Poller::wake`] is called on those asked so far (and the next
//!    attempt waits a whole window);
//! 3. `epoll_pwait2` on every fd registered with [`Reactor::watch_fd`] (edge-triggered EPOLLIN:
//!    virtqueue kicks, io_uring completion eventfds) and the inbox eventfd, with a nanosecond
//!    timeout at the next timed poller's due time (`epoll_wait` in ms where the kernel lacks
//!    it);
//! 4. on waking: clear the flag, call [`Poller::wake`] on every plain poller, drain the
//!    eventfds that fired (one non-blocking read each) and spin again.
//!
//! Timed pollers are not asked to prepare: they bound the sleep instead. A timed poller that is
//! busy does not restart the idle window (a statistics timer must not keep a reactor awake).
//!
//! ## The idle window ([`IdlePolicy`], [`IdleConfig`])
//!
//! The window is adapted once per sleep from the *idle gap*: the time from the last work to
//! the wake-up (the spun window plus the sleep), and whether the pass after the wake-up found
//! I/O work. It has a *spin budget* (`cap`, 100 us): a gap shorter than that is worth spinning
//! through to save a wake-up, a longer one is worth sleeping through. The rule is QEMU's
//! adaptive polling (`adjust_polling_time` in util/aio-posix.c, `poll-max-ns`), with a floor:
//!
//! - **gap < budget, work found: grow x2 (up to the budget).** The sleep was premature: the
//!   reactor paid a wake-up (syscall, context switch, often an IPI: several microseconds, tens
//!   on a VM) for work a spin within budget would have caught.
//! - **gap >= budget: shrink /2 (down to 5 us).** Sleeping was right, and the window spun
//!   before it was wasted.
//! - **otherwise keep it**: a short wake without I/O work (a timer, a message, a spurious edge)
//!   says nothing about the load.
//!
//! It starts at 50 us (Cloud Hypervisor's vhost-user-blk spins 50 us after each kick). So:
//! a load whose gaps stay below the window never sleeps and never changes it; a load whose gaps
//! are anywhere below the budget costs at most log2(budget/floor) = 5 premature sleeps even
//! from the floor, then spins for good (a steady load never sleeps); a load with longer gaps
//! (QD1 with a 200 us think time) sleeps in every gap and its window shrinks to the floor, so it
//! costs a few microseconds of spin per request instead of a core; an idle reactor reaches the
//! floor within 4 long sleeps and afterwards sleeps 5 us after any stray work.
//!
//! Why not "grow when work follows a sleep within a few microseconds, shrink after long
//! sleeps" with a fixed threshold: after an idle period has shrunk the window to the floor, a
//! load with gaps of, say, 20 us sleeps 15 us per request, which is neither "within a few
//! microseconds" nor "long", and it would stay asleep (and slow) for good; and a window grown
//! to near a light load's gap could tip it into spinning 100% for good. Comparing the whole gap
//! with one budget makes the outcome depend on the load only, not on history. Why a budget of
//! 100 us and not milliseconds: the light-load goal (200 us think time at well under half a
//! core) requires gaps of 200 us to be slept through, and a wake-up costs tens of
//! microseconds, so spinning longer than ~100 us to avoid one saves nothing a client would see.
//!
//! The rules are a pure state machine with unit tests (policy.rs) that feed it gap sequences.
//!
//! The window applies while some plain poller is worth spinning for
//! ([`Poller::worth_spinning_for`], asked in passes that found no work). A poller whose only
//! pending work is made by other threads of the process that signal a watched fd anyway (a
//! virtqueue with requests in flight at an RBD image) is not: spinning would save one
//! wake-up and take the CPU those threads need on a shared core. With no poller worth spinning
//! for, the reactor sleeps at the first idle pass and anticipates nothing.
//!
//! ## Anticipation ([`Anticipator`])
//!
//! A light load that is *regular* (one request, its completion, a pause of about the same
//! length, the next request) would pay one wake-up per request, and on a VM an idle vCPU's
//! wake-up costs tens of microseconds: more than the request. So when the last 8 idle gaps
//! (last work to next work; each longer than the budget) agree to within an eighth (the
//! smallest and largest left out), the reactor sleeps with a timeout that ends 15 us plus the
//! measured lateness of its timed wake-ups before the shortest expected gap, and spins until
//! 15 us after the longest one; the fds stay watched, so a request that comes early wakes it
//! as usual. Gaps that ended a sleep are shortened by the same lateness, so they agree with
//! gaps a spin caught. A spin that ends without work, or a gap over 2 ms, forgets the history:
//! an irregular load is slept through as before (a test drives 600 random gaps from 150 us to
//! 1.5 ms and checks that almost none are anticipated). The CPU cost is the spin around each
//! arrival: at a 200 us think time, about 15% of a core (measured with `bench/idle-light.sh`),
//! against 100% for spinning and a wake-up per request for sleeping. `IdleConfig::anticipate`
//! turns it off. Counted in [`ReactorStats::anticipations`] and `anticipation_hits`.
//!
//! # Accounting
//!
//! Per reactor, in TSC ticks converted only when read ([`Reactor::stats`]): busy (passes that
//! did work), idle (spinning without work, including arming and disarming), sleep (in epoll);
//! counts of sleeps, wake-ups by an fd and abandoned sleeps; the kernel thread id for
//! `/proc`-based usr/sys/irq figures; and `in_interrupt` (see [`ReactorStats::in_interrupt`]).
//!
//! No allocation, lock or formatting happens per pass in a reactor's steady state.
#![deny(missing_docs)]

mod clock;
mod policy;
mod pool;
mod reactor;
#[cfg(test)]
mod sleep_tests;
mod sys;

pub use clock::Tick;
pub use policy::{AnticipationPlan, Anticipator, IdleConfig, IdlePolicy, WindowChange};
pub use pool::{parse_cpu_list, CpuListError, ReactorPool, ReactorPoolError, STATS_TIMEOUT};
pub use reactor::{
    CallError, PollMode, PollStatus, Poller, PollerId, PollerInfo, Reactor, ReactorConfig,
    ReactorGone, ReactorHandle, ReactorMsg, ReactorStats, UnknownPollMode, DEFAULT_BATCH_WAIT,
    MAX_BATCH_WAIT, SHORT_PASS_WAITS, STREAMING_IDLE_PASSES,
};
pub use sys::wait_readable_or_stop;
