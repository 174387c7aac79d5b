//! One reactor: its pollers (plain and timed), its inbox, adaptive sleep and its accounting.

use std::any::Any;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::clock::Tick;
use crate::policy::{Anticipator, IdleConfig, IdlePolicy};
use crate::sys::{self, Epoll, EventFd};

/// What one call of [`Poller::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Found nothing to do.
    Idle,
    /// Did work (the pass counts as busy).
    Busy,
    /// Finished for good: the reactor unwatches its fds and drops it in this pass.
    Done,
}

/// Work a reactor runs once per pass (or, added with [`Reactor::add_timed_poller`], once per
/// period). `Any` lets its owner find it again by id ([`Reactor::poller_mut`]).
pub trait Poller: Any {
    /// Does whatever is ready, without blocking.
    fn poll(&mut self) -> PollStatus;

    /// A short name for listings (SPDK's `thread_get_pollers`).
    fn name(&self) -> &str {
        "poller"
    }

    /// Called when an adaptive reactor wants to sleep: arm every wake-up source this poller
    /// needs (enable guest notifications, ask for completion events), then re-check for work
    /// that arrived before arming took effect. `true` = nothing is pending and every source
    /// that can bring work will fire a watched fd ([`Reactor::watch_fd`]); `false` = work is
    /// pending, or this poller cannot be woken (the default: it is busy-polled only).
    ///
    /// Whatever it returns, [`Poller::wake`] follows (after the sleep, or at once when the
    /// sleep is abandoned), so arming and disarming always pair up. Timed pollers are not asked:
    /// the reactor wakes for them by timeout.
    fn prepare_sleep(&mut self) -> bool {
        false
    }

    /// Called after a sleep, or after an abandoned attempt to sleep: disarm what
    /// [`Poller::prepare_sleep`] armed (suppress notifications again). Must tolerate being
    /// called when nothing is armed.
    fn wake(&mut self) {}

    /// Whether spinning now would catch this poller's next work soon enough to be worth it
    /// (the default). `false` while its next work is mostly made by other threads of this
    /// process that signal a watched fd anyway (a queue with requests in flight at an RBD
    /// image), so a spin would save only a wake-up while taking the CPU those threads need on
    /// a shared core. While no plain poller is worth spinning for, a reactor sleeps at the
    /// first pass that finds no work (no idle window) and anticipates nothing. Asked only in
    /// passes that found no work.
    fn worth_spinning_for(&self) -> bool {
        true
    }
}

/// A poller's identity, unique in the process (ids are never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PollerId(u64);

impl PollerId {
    fn next() -> PollerId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        PollerId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number (for listings).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PollerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a reactor behaves when it finds no work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum PollMode {
    /// Spin always (lowest latency; a core per reactor). A reactor with no pollers at all still
    /// sleeps on its inbox.
    Busy,
    /// Spin while there is work; after an idle window (see [`IdleConfig`]) arm the pollers'
    /// wake-ups and sleep in epoll until a watched fd, a message or a timed poller is due.
    #[default]
    Adaptive,
}

impl fmt::Display for PollMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PollMode::Busy => "busy",
            PollMode::Adaptive => "adaptive",
        })
    }
}

/// A poll mode name other than `busy` or `adaptive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPollMode(pub String);

impl fmt::Display for UnknownPollMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown poll mode '{}' (busy or adaptive)", self.0)
    }
}

impl std::error::Error for UnknownPollMode {}

impl FromStr for PollMode {
    type Err = UnknownPollMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "busy" => Ok(PollMode::Busy),
            "adaptive" => Ok(PollMode::Adaptive),
            other => Err(UnknownPollMode(other.to_string())),
        }
    }
}

/// How a reactor is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactorConfig {
    /// Busy or adaptive (default adaptive).
    pub poll_mode: PollMode,
    /// The adaptive idle window's tuning.
    pub idle: IdleConfig,
    /// How long the reactor waits before its next pass after a short pass that found work
    /// while work is streaming in (a busy pass at most [`STREAMING_IDLE_PASSES`] idle passes
    /// after the last busy one, shorter than [`SHORT_PASS_WAITS`] waits), so that the driver
    /// queues a batch meanwhile; zero turns it off. Default [`DEFAULT_BATCH_WAIT`].
    pub batch_wait: Duration,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            poll_mode: PollMode::default(),
            idle: IdleConfig::default(),
            batch_wait: DEFAULT_BATCH_WAIT,
        }
    }
}

/// The default [`ReactorConfig::batch_wait`]. A driver on another core writes the avail ring,
/// descriptors and headers while the reactor reads them: polled back to back, every line
/// moves between the two cores once per request and the driver's stores wait for it. 250 ns
/// after a busy pass, about the time a fast driver needs to queue a few requests, let a pass
/// take them as one batch: bdevperf through SPDK's initiator at null QD32 gained 1.05-1.10x
/// the IOPS with 1.18-1.35x less reactor time per I/O (docs/benchmarks.md).
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_nanos(250);

/// The longest [`ReactorConfig::batch_wait`] the launcher and the configuration file accept
/// (100 us): a wait is meant to be a few requests' worth of a fast driver, and longer ones
/// would hold every queue of the reactor.
pub const MAX_BATCH_WAIT: Duration = Duration::from_micros(100);

/// A busy pass waits [`ReactorConfig::batch_wait`] only when at most this many idle passes
/// came since the last busy one: work is streaming in. A lone request (a QD1 driver: its next
/// request cannot come before it has seen this one complete) is not waited after, so QD1
/// latency does not pay for the wait.
pub const STREAMING_IDLE_PASSES: u32 = 2;

/// A busy pass waits [`ReactorConfig::batch_wait`] only when it took less than this many
/// waits. A longer pass already gave the drivers that time, and the reactor, not the driver,
/// is what the requests wait for: waiting would only idle it (filled malloc, where a 4 KiB
/// copy takes most of a microsecond, served 1.03-1.16x the IOPS at QD32 with this rule than
/// without).
pub const SHORT_PASS_WAITS: u64 = 4;

/// A message to a reactor: a closure run on the reactor's thread between passes.
pub type ReactorMsg = Box<dyn FnOnce(&mut Reactor) + Send>;

/// One reactor's time and sleep accounting: the CPU-utilisation truth of a polling target.
/// Kept in clock ticks on the reactor, converted when read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// The reactor's index in its pool.
    pub id: usize,
    /// The core it is pinned to, if any.
    pub core: Option<usize>,
    /// The kernel thread id (for `/proc/self/task/<tid>/stat`: usr/sys/irq figures).
    pub tid: i32,
    /// Its poll mode now.
    pub poll_mode: PollMode,
    /// Time in passes where some poller, timed poller or message did work.
    pub busy: Duration,
    /// Time spinning without work (including arming and disarming around sleeps).
    pub idle: Duration,
    /// Time blocked in epoll.
    pub sleep: Duration,
    /// How many times it blocked in epoll.
    pub sleeps: u64,
    /// How many of those ended because a watched fd or the inbox fired (the rest: timeouts
    /// for timed pollers, signals).
    pub wakeups: u64,
    /// Attempts to sleep abandoned because a message was pending or a poller's
    /// [`Poller::prepare_sleep`] said no.
    pub sleep_aborts: u64,
    /// Whether the reactor is in its sleeping regime: it slept more than half of the recent
    /// past (a time-weighted moving average with a 100 ms time constant, over sleep cycles and
    /// the awake time since the last one). Reading statistics sends a message, which wakes a
    /// sleeping reactor, so "asleep at this instant" could never be observed; this is what
    /// SPDK's `framework_get_reactors` `in_interrupt` means for a reactor that switches by
    /// itself.
    pub in_interrupt: bool,
    /// The adaptive idle window now (used while some plain poller is worth spinning for:
    /// [`Poller::worth_spinning_for`]; otherwise the reactor sleeps as soon as it is idle).
    pub idle_window: Duration,
    /// Pollers registered now (plain and timed).
    pub pollers: usize,
    /// Of which timed.
    pub timed_pollers: usize,
    /// Sleeps cut short by the [`Anticipator`] to spin through a predicted arrival.
    pub anticipations: u64,
    /// Of which the arrival came during the spin (the rest forgot the history).
    pub anticipation_hits: u64,
}

/// One poller in a listing (SPDK's `thread_get_pollers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerInfo {
    /// Its id.
    pub id: PollerId,
    /// [`Poller::name`].
    pub name: String,
    /// How many times it was polled.
    pub run_count: u64,
    /// How many of those returned [`PollStatus::Busy`].
    pub busy_count: u64,
    /// The period of a timed poller; `None` for a plain one.
    pub period: Option<Duration>,
    /// How many fds it has watched ([`Reactor::watch_fd`]).
    pub watched_fds: usize,
}

/// A reactor's thread has exited, so it cannot take messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactorGone;

impl fmt::Display for ReactorGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reactor has stopped")
    }
}

impl std::error::Error for ReactorGone {}

/// Why [`ReactorHandle::call_timeout`] has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The reactor has stopped (the closure will never run).
    Gone,
    /// No answer in time (the closure may still run later; its result is then dropped).
    Timeout,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallError::Gone => "reactor has stopped",
            CallError::Timeout => "reactor did not answer in time",
        })
    }
}

impl std::error::Error for CallError {}

impl From<ReactorGone> for CallError {
    fn from(_: ReactorGone) -> Self {
        CallError::Gone
    }
}

/// The inbox state shared by a reactor and its senders, on its own cache line (the `Arc`
/// counts sit on the line before it).
#[repr(align(64))]
struct Shared {
    /// Bumped by every send, after the message is in the channel. The reactor compares it with
    /// the value it last drained at, once per pass (one plain load).
    posted: AtomicU64,
    /// Set by the reactor before it re-checks `posted` and sleeps; a sender that sees it
    /// writes `wake`. SeqCst on both sides (Dekker): either the sender sees the flag or the
    /// reactor sees the new count.
    sleeping: AtomicBool,
    /// The inbox eventfd the reactor sleeps on.
    wake: EventFd,
}

impl Shared {
    fn notify(&self) {
        self.posted.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake.signal();
        }
    }
}

/// The sending half behind every clone of one reactor's handle.
struct Sending {
    /// `None` only while dropping.
    tx: Option<Sender<ReactorMsg>>,
    shared: Arc<Shared>,
}

impl Drop for Sending {
    fn drop(&mut self) {
        // Disconnect first, then wake the reactor so a sleeping one sees the disconnection.
        drop(self.tx.take());
        self.shared.notify();
    }
}

/// The sending side of a reactor's inbox; cheap to clone and `Send`. When every handle is
/// dropped the reactor leaves its loop.
#[derive(Clone)]
pub struct ReactorHandle {
    id: usize,
    core: Option<usize>,
    inner: Arc<Sending>,
}

impl ReactorHandle {
    /// The reactor's index in its pool.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The core the reactor is pinned to, if any.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// Queues `f` to run on the reactor (waking it if it sleeps).
    pub fn send(&self, f: impl FnOnce(&mut Reactor) + Send + 'static) -> Result<(), ReactorGone> {
        let tx = self.inner.tx.as_ref().ok_or(ReactorGone)?;
        tx.send(Box::new(f)).map_err(|_| ReactorGone)?;
        self.inner.shared.notify();
        Ok(())
    }

    /// Runs `f` on the reactor and waits for its result, without a time limit. Control-plane
    /// code should use [`ReactorHandle::call_timeout`]: a stuck reactor must not hang it.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reactor) -> R + Send + 'static,
    ) -> Result<R, ReactorGone> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(move |r| {
            // The caller may have given up waiting; nothing to do then.
            let _ = tx.send(f(r));
        })?;
        rx.recv().map_err(|_| ReactorGone)
    }

    /// Runs `f` on the reactor and waits at most `timeout` for its result. After a timeout `f`
    /// may still run; its result is dropped.
    pub fn call_timeout<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Reactor) -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(move |r| {
            let _ = tx.send(f(r));
        })?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => CallError::Timeout,
            RecvTimeoutError::Disconnected => CallError::Gone,
        })
    }

    /// Switches the reactor's poll mode (takes effect after the current pass).
    pub fn set_poll_mode(&self, mode: PollMode) -> Result<(), ReactorGone> {
        self.send(move |r| r.set_poll_mode(mode))
    }

    /// Asks the reactor to leave its loop after the current pass.
    pub fn stop(&self) -> Result<(), ReactorGone> {
        self.send(|r| r.request_stop())
    }
}

/// A registered poller with its counters.
struct Slot {
    id: PollerId,
    poller: Box<dyn Poller>,
    run_count: u64,
    busy_count: u64,
    /// Ticks between runs of a timed poller; 0 for a plain one.
    period: u64,
    /// Raw tick at which a timed poller is due next.
    due: u64,
}

/// A watched fd and the poller it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watch {
    poller: PollerId,
    fd: RawFd,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default)]
struct Pass {
    /// A plain poller was busy (or finished).
    io: bool,
    /// Messages ran.
    msg: bool,
    /// A timed poller was busy (or finished).
    timer: bool,
}

impl Pass {
    fn status(self) -> PollStatus {
        if self.io || self.msg || self.timer {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

/// The epoll token of the inbox eventfd (watched fds use their fd number).
const INBOX_TOKEN: u64 = u64::MAX;
/// Messages run per pass at most, so a flood of them cannot starve the pollers.
const MSG_BATCH: usize = 64;
/// Epoll events taken per sleep (more stay queued for the next one).
const EVENTS: usize = 32;
/// A timed poller due sooner than this is waited for by spinning, not sleeping.
const MIN_SLEEP: Duration = Duration::from_micros(2);
/// Time constant of the sleeping-share average behind `in_interrupt`.
const SHARE_TAU: Duration = Duration::from_millis(100);
/// Fixed-point one for shares.
const ONE: u64 = 1024;
/// How early an anticipated wake-up comes (besides the measured lateness of timed wake-ups),
/// and how long after the latest expected arrival the spin goes on.
const ANTICIPATION_MARGIN: Duration = Duration::from_micros(15);
/// Longer gaps are slept through: an anticipation would save a wake-up on a rare request.
const ANTICIPATION_MAX_GAP: Duration = Duration::from_millis(2);

/// A set of pollers driven by one thread. Built without a thread it can be stepped with
/// [`Reactor::run_once`], which is how its users' tests drive it deterministically.
pub struct Reactor {
    id: usize,
    core: Option<usize>,
    tid: i32,
    pollers: Vec<Slot>,
    timers: Vec<Slot>,
    /// Raw tick of the earliest timed poller's due time; `u64::MAX` when there is none.
    next_due: u64,
    inbox: Receiver<ReactorMsg>,
    shared: Arc<Shared>,
    /// `shared.posted` as of the last complete drain of the inbox.
    seen: u64,
    epoll: Epoll,
    events: [libc::epoll_event; EVENTS],
    watches: Vec<Watch>,
    mode: PollMode,
    policy: IdlePolicy,
    /// Predicts periodic arrivals (adaptive mode with `IdleConfig::anticipate`).
    anticipator: Option<Anticipator>,
    /// While spinning through a predicted arrival: no sleep before this tick.
    spin_until: Option<Tick>,
    anticipations: u64,
    anticipation_hits: u64,
    /// End of the last pass in which a plain poller or a message did work.
    last_busy: Tick,
    /// [`ReactorConfig::batch_wait`] in ticks.
    batch_wait: u64,
    /// Idle passes since the last pass in which a poller did work (saturating).
    idle_passes: u32,
    /// After an abandoned sleep, no new attempt before this.
    retry_at: Tick,
    /// Idle gap (last work to wake-up) of the sleep that just ended, for the policy after the
    /// next pass (0: none).
    woke_after: u64,
    stop: bool,
    min_sleep: u64,
    share_tau: u64,
    // Accounting, in ticks and counts.
    busy: u64,
    idle: u64,
    sleep: u64,
    sleeps: u64,
    wakeups: u64,
    sleep_aborts: u64,
    /// Time-weighted moving average of the sleeping share, in 1/[`ONE`], as of the end of the
    /// last sleep.
    sleep_share: u64,
    /// End of the last sleep (or creation).
    last_sleep_end: Tick,
}

impl Reactor {
    /// A reactor with no pollers in the default configuration (adaptive), and the handle that
    /// sends to it. Fails only if the kernel refuses an eventfd or an epoll instance.
    pub fn new(id: usize, core: Option<usize>) -> io::Result<(Reactor, ReactorHandle)> {
        Self::with_config(id, core, ReactorConfig::default())
    }

    /// A reactor with no pollers, configured, and the handle that sends to it. The reactor
    /// stays on the calling thread (pollers are not `Send`); the handle may go anywhere.
    pub fn with_config(
        id: usize,
        core: Option<usize>,
        config: ReactorConfig,
    ) -> io::Result<(Reactor, ReactorHandle)> {
        Tick::calibrate();
        let shared = Arc::new(Shared {
            posted: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            wake: EventFd::new()?,
        });
        let epoll = Epoll::new()?;
        epoll.add(shared.wake.fd(), INBOX_TOKEN)?;
        let (tx, inbox) = crossbeam_channel::unbounded();
        let handle = ReactorHandle {
            id,
            core,
            inner: Arc::new(Sending {
                tx: Some(tx),
                shared: Arc::clone(&shared),
            }),
        };
        let now = Tick::now();
        let reactor = Reactor {
            id,
            core,
            tid: sys::gettid(),
            pollers: Vec::new(),
            timers: Vec::new(),
            next_due: u64::MAX,
            inbox,
            shared,
            seen: 0,
            epoll,
            events: [libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            watches: Vec::new(),
            mode: config.poll_mode,
            policy: IdlePolicy::from_config(&config.idle),
            anticipator: config.idle.anticipate.then(|| {
                let t = Tick::from_duration;
                Anticipator::new(
                    t(ANTICIPATION_MARGIN),
                    t(config.idle.cap),
                    t(ANTICIPATION_MAX_GAP),
                )
            }),
            spin_until: None,
            anticipations: 0,
            anticipation_hits: 0,
            last_busy: now,
            batch_wait: Tick::from_duration(config.batch_wait),
            idle_passes: 0,
            retry_at: now,
            woke_after: 0,
            stop: false,
            min_sleep: Tick::from_duration(MIN_SLEEP),
            share_tau: Tick::from_duration(SHARE_TAU).max(1),
            busy: 0,
            idle: 0,
            sleep: 0,
            sleeps: 0,
            wakeups: 0,
            sleep_aborts: 0,
            sleep_share: 0,
            last_sleep_end: now,
        };
        Ok((reactor, handle))
    }

    /// The reactor's index in its pool.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Registers a poller; it runs from the next pass on.
    pub fn add_poller(&mut self, poller: Box<dyn Poller>) -> PollerId {
        let id = PollerId::next();
        self.pollers.push(Slot {
            id,
            poller,
            run_count: 0,
            busy_count: 0,
            period: 0,
            due: 0,
        });
        id
    }

    /// Registers a poller run about every `period` (first one `period` from now), SPDK's
    /// timed poller: checked with one clock comparison per pass, and its due time bounds how
    /// long the reactor sleeps. Its [`Poller::prepare_sleep`] is not consulted. A zero period
    /// runs it every pass.
    pub fn add_timed_poller(&mut self, period: Duration, poller: Box<dyn Poller>) -> PollerId {
        let id = PollerId::next();
        let period = Tick::from_duration(period).max(1);
        let due = Tick::now().plus(period).0;
        self.timers.push(Slot {
            id,
            poller,
            run_count: 0,
            busy_count: 0,
            period,
            due,
        });
        self.next_due = self.next_due.min(due);
        id
    }

    /// The poller `id` as its concrete type, if it is registered here and is a `T`.
    pub fn poller_mut<T: Poller>(&mut self, id: PollerId) -> Option<&mut T> {
        let slot = self.slot_mut(id)?;
        let any: &mut dyn Any = &mut *slot.poller;
        any.downcast_mut::<T>()
    }

    /// The poller `id` as its concrete type, if it is registered here and is a `T`.
    pub fn poller<T: Poller>(&self, id: PollerId) -> Option<&T> {
        let slot = self
            .pollers
            .iter()
            .chain(&self.timers)
            .find(|s| s.id == id)?;
        let any: &dyn Any = &*slot.poller;
        any.downcast_ref::<T>()
    }

    /// Unregisters the poller `id` (its watched fds first, so the caller may close them) and
    /// hands it back; `None` if it is not registered here. Downcast the box with
    /// `let any: Box<dyn Any> = poller; any.downcast::<T>()`.
    pub fn remove_poller(&mut self, id: PollerId) -> Option<Box<dyn Poller>> {
        let slot = if let Some(i) = self.pollers.iter().position(|s| s.id == id) {
            self.pollers.swap_remove(i)
        } else {
            let i = self.timers.iter().position(|s| s.id == id)?;
            let slot = self.timers.swap_remove(i);
            self.next_due = self.timers.iter().map(|t| t.due).min().unwrap_or(u64::MAX);
            slot
        };
        self.unwatch_all(id);
        Some(slot.poller)
    }

    /// Makes `fd` (an eventfd: kick, call or completion notifier) wake this reactor when it
    /// sleeps, on behalf of poller `id`: edge-triggered readability in the reactor's epoll. The
    /// fd is made non-blocking (on its open file description) and is drained with one read
    /// after a sleep it ended. It stays registered until [`Reactor::unwatch_fd`], the poller's
    /// removal, or its [`PollStatus::Done`]; its owner must keep it open until then (epoll
    /// registrations outlive a closed fd number if the file is open elsewhere). Several pollers
    /// may watch one fd. Watching twice is a no-op.
    pub fn watch_fd(&mut self, id: PollerId, fd: RawFd) -> io::Result<()> {
        if fd < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
        }
        if !self.pollers.iter().chain(&self.timers).any(|s| s.id == id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no poller {id} on reactor {}", self.id),
            ));
        }
        let w = Watch { poller: id, fd };
        if self.watches.contains(&w) {
            return Ok(());
        }
        if !self.watches.iter().any(|x| x.fd == fd) {
            sys::set_nonblocking(fd)?;
            self.epoll.add(fd, fd as u64)?;
        }
        self.watches.push(w);
        Ok(())
    }

    /// Stops watching `fd` for poller `id`; false if it was not watched.
    pub fn unwatch_fd(&mut self, id: PollerId, fd: RawFd) -> bool {
        let Some(i) = self
            .watches
            .iter()
            .position(|w| w.poller == id && w.fd == fd)
        else {
            return false;
        };
        self.watches.swap_remove(i);
        if !self.watches.iter().any(|w| w.fd == fd) {
            // An fd already closed is gone from epoll anyway.
            let _ = self.epoll.del(fd);
        }
        true
    }

    /// How many (poller, fd) pairs are watched.
    pub fn watched_fds(&self) -> usize {
        self.watches.len()
    }

    /// Every poller with its counters (plain ones first), for listings.
    pub fn poller_info(&self) -> Vec<PollerInfo> {
        self.pollers
            .iter()
            .chain(&self.timers)
            .map(|s| PollerInfo {
                id: s.id,
                name: s.poller.name().to_string(),
                run_count: s.run_count,
                busy_count: s.busy_count,
                period: (s.period != 0).then(|| Tick::to_duration(s.period)),
                watched_fds: self.watches.iter().filter(|w| w.poller == s.id).count(),
            })
            .collect()
    }

    /// The poll mode now.
    pub fn poll_mode(&self) -> PollMode {
        self.mode
    }

    /// Switches between busy and adaptive polling.
    pub fn set_poll_mode(&mut self, mode: PollMode) {
        self.mode = mode;
    }

    /// Asks [`Reactor::run`] to return after the current pass.
    pub fn request_stop(&mut self) {
        self.stop = true;
    }

    /// Whether a stop was asked for (or every handle was dropped).
    pub fn stopping(&self) -> bool {
        self.stop
    }

    /// Time and sleep accounting so far.
    pub fn stats(&self) -> ReactorStats {
        // The awake time since the last sleep counts as a cycle with no sleep in it.
        let awake = Tick::now().ticks_since(self.last_sleep_end);
        let share = self.blend(self.sleep_share, 0, awake);
        ReactorStats {
            id: self.id,
            core: self.core,
            tid: self.tid,
            poll_mode: self.mode,
            busy: Tick::to_duration(self.busy),
            idle: Tick::to_duration(self.idle),
            sleep: Tick::to_duration(self.sleep),
            sleeps: self.sleeps,
            wakeups: self.wakeups,
            sleep_aborts: self.sleep_aborts,
            in_interrupt: share > ONE / 2,
            idle_window: Tick::to_duration(self.policy.window()),
            pollers: self.pollers.len() + self.timers.len(),
            timed_pollers: self.timers.len(),
            anticipations: self.anticipations,
            anticipation_hits: self.anticipation_hits,
        }
    }

    /// One pass without sleeping: run queued messages, every poller once, and the timed
    /// pollers that are due. Busy if anything did work.
    pub fn run_once(&mut self) -> PollStatus {
        let start = Tick::now();
        let pass = self.pass(start);
        self.account(pass, start, Tick::now());
        pass.status()
    }

    /// Loops until [`ReactorHandle::stop`] (or every handle is dropped), sleeping when the
    /// poll mode allows it, then returns its stats.
    pub fn run(mut self) -> ReactorStats {
        let mut now = Tick::now();
        self.last_busy = now;
        while !self.stop {
            let start = now;
            let pass = self.pass(start);
            let end = Tick::now();
            self.account(pass, start, end);
            now = end;
            if self.stop {
                break;
            }
            if self.wants_sleep(now) {
                now = self.sleep(now);
                // Whatever wakes it comes after a long idle stretch: not a stream.
                self.idle_passes = u32::MAX;
            } else if pass.status() == PollStatus::Idle {
                self.idle_passes = self.idle_passes.saturating_add(1);
                now = self.pause_until(now, now);
            } else if pass.io {
                let streaming = self.idle_passes <= STREAMING_IDLE_PASSES;
                self.idle_passes = 0;
                let short =
                    end.ticks_since(start) < self.batch_wait.saturating_mul(SHORT_PASS_WAITS);
                if streaming && short {
                    now = self.pause_until(now, now.plus(self.batch_wait));
                }
            }
        }
        self.stats()
    }

    /// Spins (at least one pause) until `until`. The pause is idle waiting and accounted as
    /// such, so the pass after it, busy or not, is timed from its own start, as SPDK times
    /// its iterations (busy time per I/O is compared between the two). Returns the time after.
    #[inline]
    fn pause_until(&mut self, now: Tick, until: Tick) -> Tick {
        let mut after;
        loop {
            std::hint::spin_loop();
            after = Tick::now();
            if after >= until {
                break;
            }
        }
        self.idle += after.ticks_since(now);
        after
    }

    fn slot_mut(&mut self, id: PollerId) -> Option<&mut Slot> {
        self.pollers
            .iter_mut()
            .chain(self.timers.iter_mut())
            .find(|s| s.id == id)
    }

    fn unwatch_all(&mut self, id: PollerId) {
        let mut i = 0;
        while i < self.watches.len() {
            if self.watches[i].poller == id {
                let fd = self.watches[i].fd;
                self.unwatch_fd(id, fd);
            } else {
                i += 1;
            }
        }
    }

    /// One pass starting at `now`; no allocation, lock or formatting in its steady state.
    #[inline]
    fn pass(&mut self, now: Tick) -> Pass {
        let mut pass = Pass::default();
        // A plain load per pass; the channel is touched only when a sender bumped the count.
        let posted = self.shared.posted.load(Ordering::Relaxed);
        if posted != self.seen {
            // Pairs with the senders' fetch_add: their channel writes are visible below.
            fence(Ordering::Acquire);
            pass.msg = self.drain_inbox(posted);
        }
        let mut i = 0;
        while i < self.pollers.len() {
            let slot = &mut self.pollers[i];
            slot.run_count += 1;
            match slot.poller.poll() {
                PollStatus::Idle => i += 1,
                PollStatus::Busy => {
                    slot.busy_count += 1;
                    pass.io = true;
                    i += 1;
                }
                PollStatus::Done => {
                    // Order among pollers carries no meaning, so an O(1) removal is fine.
                    let done = self.pollers.swap_remove(i);
                    self.unwatch_all(done.id);
                    drop(done);
                    pass.io = true;
                }
            }
        }
        if now.0 >= self.next_due {
            pass.timer = self.run_timers(now);
        }
        pass
    }

    /// Runs up to [`MSG_BATCH`] messages; `posted` is the count read before.
    fn drain_inbox(&mut self, posted: u64) -> bool {
        let mut ran = 0;
        loop {
            if ran == MSG_BATCH {
                // Leave `seen` behind so the next pass drains again.
                return true;
            }
            match self.inbox.try_recv() {
                Ok(msg) => {
                    msg(self);
                    ran += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.stop = true;
                    break;
                }
            }
        }
        self.seen = posted;
        ran > 0
    }

    fn run_timers(&mut self, now: Tick) -> bool {
        let mut busy = false;
        let mut next = u64::MAX;
        let mut i = 0;
        while i < self.timers.len() {
            let t = &mut self.timers[i];
            if now.0 >= t.due {
                // The next run is due a period after this one starts, not after the pass
                // started: a pass stretched by a preemption must not make it run early.
                let started = Tick::now();
                t.run_count += 1;
                match t.poller.poll() {
                    PollStatus::Idle => {}
                    PollStatus::Busy => {
                        t.busy_count += 1;
                        busy = true;
                    }
                    PollStatus::Done => {
                        let done = self.timers.swap_remove(i);
                        self.unwatch_all(done.id);
                        drop(done);
                        busy = true;
                        continue;
                    }
                }
                t.due = started.plus(t.period).0;
            }
            next = next.min(t.due);
            i += 1;
        }
        self.next_due = next;
        busy
    }

    fn account(&mut self, pass: Pass, start: Tick, end: Tick) {
        let spent = end.ticks_since(start);
        if pass.status() == PollStatus::Busy {
            self.busy += spent;
        } else {
            self.idle += spent;
        }
        if pass.io {
            if let Some(a) = &mut self.anticipator {
                let gap = start.ticks_since(self.last_busy);
                if self.woke_after != 0 {
                    a.observe_woken(gap);
                } else {
                    a.observe(gap);
                }
                if self.spin_until.take().is_some() {
                    self.anticipation_hits += 1;
                }
            }
        }
        if pass.io || pass.msg {
            self.last_busy = end;
        }
        if self.woke_after != 0 {
            self.policy.on_wake(self.woke_after, pass.io);
            self.woke_after = 0;
        }
    }

    /// Whether some plain poller is worth spinning for now ([`Poller::worth_spinning_for`]).
    fn worth_spinning(&self) -> bool {
        self.pollers.iter().any(|s| s.poller.worth_spinning_for())
    }

    #[inline]
    fn wants_sleep(&mut self, now: Tick) -> bool {
        if self.pollers.is_empty() {
            return true;
        }
        // After a pass that did work (`last_busy` is its end, which is `now`) keep going
        // without asking the pollers.
        let idle_for = now.ticks_since(self.last_busy);
        if self.mode != PollMode::Adaptive
            || idle_for == 0
            || now < self.retry_at
            || (idle_for < self.policy.window() && self.worth_spinning())
        {
            return false;
        }
        if let Some(until) = self.spin_until {
            if now < until {
                return false;
            }
            // The predicted arrival did not come: forget the pattern.
            self.spin_until = None;
            if let Some(a) = &mut self.anticipator {
                a.forget();
            }
        }
        true
    }

    /// With a regular light load: the tick at which to end this sleep early, and the tick until
    /// which to spin through the predicted arrival; `None` when there is no plan, or when the
    /// wake-up is too close to sleep at all (then the spin starts now).
    fn anticipate(&mut self, now: Tick) -> Option<(u64, Tick)> {
        if !self.worth_spinning() {
            return None;
        }
        let plan = self.anticipator.as_ref()?.plan()?;
        let wake = self.last_busy.0.saturating_add(plan.wake_at);
        let until = Tick(self.last_busy.0.saturating_add(plan.spin_until));
        if wake <= now.0.saturating_add(self.min_sleep) {
            if until > now {
                self.spin_until = Some(until);
            }
            return None;
        }
        Some((wake, until))
    }

    /// Tries to sleep (see the crate documentation for the protocol); returns the time after.
    fn sleep(&mut self, now: Tick) -> Tick {
        let anticipated = self.anticipate(now);
        if self.spin_until.is_some() {
            return now;
        }
        let due = self
            .next_due
            .min(anticipated.map_or(u64::MAX, |(wake, _)| wake));
        let timeout = if due == u64::MAX {
            None
        } else {
            let left = due.saturating_sub(now.0);
            if left < self.min_sleep {
                return now;
            }
            Some(Tick::to_nanos(left))
        };
        self.shared.sleeping.store(true, Ordering::SeqCst);
        if self.shared.posted.load(Ordering::SeqCst) != self.seen {
            return self.abort_sleep(now, 0);
        }
        for i in 0..self.pollers.len() {
            if !self.pollers[i].poller.prepare_sleep() {
                return self.abort_sleep(now, i + 1);
            }
        }
        let t0 = Tick::now();
        let fired = self.epoll.wait(&mut self.events, timeout);
        self.shared.sleeping.store(false, Ordering::SeqCst);
        let t1 = Tick::now();
        for slot in &mut self.pollers {
            slot.poller.wake();
        }
        for ev in &self.events[..fired] {
            let token = ev.u64;
            if token == INBOX_TOKEN {
                sys::drain(self.shared.wake.fd());
            } else {
                sys::drain(token as RawFd);
            }
        }
        let slept = t1.ticks_since(t0);
        self.sleep += slept;
        self.sleeps += 1;
        if fired > 0 {
            self.wakeups += 1;
        }
        let cycle = t1.ticks_since(self.last_sleep_end).max(1);
        let share = (slept.saturating_mul(ONE) / cycle).min(ONE);
        self.sleep_share = self.blend(self.sleep_share, share, cycle);
        self.last_sleep_end = t1;
        self.woke_after = t1.ticks_since(self.last_busy).max(1);
        match (anticipated, fired) {
            (Some((wake, until)), 0) if wake <= t1.0 && wake <= self.next_due => {
                // The anticipation timeout ended this sleep: spin through the arrival.
                self.anticipations += 1;
                self.after_anticipated_wake(wake, until, t1);
            }
            (Some((wake, _)), 1..) if t1.0 < wake => {
                // An event came before the planned wake-up: plan earlier.
                if let Some(a) = &mut self.anticipator {
                    a.woke_before_plan();
                }
            }
            _ => {}
        }
        let end = Tick::now();
        self.idle += t0.ticks_since(now) + end.ticks_since(t1);
        end
    }

    /// A sleep that the anticipation timeout (due at `wake`) ended at `t1`: learn how late it
    /// came, spin until `until` (the end of the predicted arrival), and keep the idle window as
    /// it is (this wake-up says nothing about the spin budget).
    fn after_anticipated_wake(&mut self, wake: u64, until: Tick, t1: Tick) {
        self.woke_after = 0;
        if let Some(a) = &mut self.anticipator {
            a.woke_late(t1.0 - wake);
        }
        self.spin_until = Some(until);
    }

    /// Moves the average `old` towards `share` by the weight of a cycle `len` ticks long
    /// (`len / tau`, at most all of it).
    fn blend(&self, old: u64, share: u64, len: u64) -> u64 {
        let w = (len.saturating_mul(ONE) / self.share_tau).min(ONE);
        (old * (ONE - w) + share * w) / ONE
    }

    /// Abandons a sleep after `armed` pollers were asked to prepare; they are woken again.
    fn abort_sleep(&mut self, now: Tick, armed: usize) -> Tick {
        self.shared.sleeping.store(false, Ordering::SeqCst);
        for slot in &mut self.pollers[..armed] {
            slot.poller.wake();
        }
        self.sleep_aborts += 1;
        let end = Tick::now();
        // Retry after a whole window (a poller that can never sleep costs one attempt per
        // window); pending work resets the window anyway.
        self.retry_at = end.plus(self.policy.window());
        self.idle += end.ticks_since(now);
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn reactor(id: usize) -> (Reactor, ReactorHandle) {
        Reactor::new(id, None).expect("eventfd and epoll")
    }

    struct Countdown {
        left: u32,
        polls: Rc<Cell<u32>>,
    }

    impl Poller for Countdown {
        fn poll(&mut self) -> PollStatus {
            self.polls.set(self.polls.get() + 1);
            match self.left {
                0 => PollStatus::Done,
                _ => {
                    self.left -= 1;
                    PollStatus::Busy
                }
            }
        }
        fn name(&self) -> &str {
            "countdown"
        }
    }

    struct Named(&'static str, u32);

    impl Poller for Named {
        fn poll(&mut self) -> PollStatus {
            self.1 += 1;
            PollStatus::Idle
        }
        fn name(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn pollers_run_until_done_then_are_dropped() {
        let (mut r, _h) = reactor(0);
        let polls = Rc::new(Cell::new(0));
        r.add_poller(Box::new(Countdown {
            left: 2,
            polls: Rc::clone(&polls),
        }));
        assert_eq!(r.run_once(), PollStatus::Busy);
        assert_eq!(r.run_once(), PollStatus::Busy);
        assert_eq!(r.stats().pollers, 1);
        assert_eq!(r.run_once(), PollStatus::Busy); // returns Done and is removed
        assert_eq!(r.stats().pollers, 0);
        assert_eq!(r.run_once(), PollStatus::Idle);
        assert_eq!(polls.get(), 3);
    }

    #[test]
    fn pollers_are_found_by_id_downcast_and_removed() {
        let (mut r, _h) = reactor(0);
        let a = r.add_poller(Box::new(Named("a", 0)));
        let b = r.add_poller(Box::new(Countdown {
            left: 100,
            polls: Rc::new(Cell::new(0)),
        }));
        let t = r.add_timed_poller(Duration::from_secs(3600), Box::new(Named("t", 0)));
        assert_ne!(a, b);
        assert_ne!(b, t);
        for _ in 0..3 {
            r.run_once();
        }
        assert_eq!(r.poller_mut::<Named>(a).map(|p| p.1), Some(3));
        assert!(r.poller_mut::<Named>(b).is_none(), "wrong type");
        assert!(r.poller::<Countdown>(b).is_some());
        assert_eq!(r.poller::<Named>(t).map(|p| p.0), Some("t"));
        r.poller_mut::<Named>(a).expect("a is a Named").1 = 100;

        let info = r.poller_info();
        assert_eq!(info.len(), 3);
        let ia = info.iter().find(|i| i.id == a).expect("a listed");
        assert_eq!((ia.name.as_str(), ia.run_count, ia.busy_count), ("a", 3, 0));
        let ib = info.iter().find(|i| i.id == b).expect("b listed");
        assert_eq!(
            (ib.name.as_str(), ib.run_count, ib.busy_count),
            ("countdown", 3, 3)
        );
        let it = info.iter().find(|i| i.id == t).expect("t listed");
        assert_eq!(it.run_count, 0, "not due yet");
        assert!(it.period.is_some() && ia.period.is_none());
        assert_eq!(r.stats().timed_pollers, 1);

        let removed = r.remove_poller(a).expect("registered");
        let any: Box<dyn Any> = removed;
        assert_eq!(any.downcast::<Named>().map(|n| n.1).ok(), Some(100));
        assert!(r.remove_poller(a).is_none(), "already removed");
        assert!(r.poller_mut::<Named>(a).is_none());
        assert!(r.remove_poller(t).is_some());
        assert_eq!(r.next_due, u64::MAX, "no timers left");
        assert_eq!(r.stats().pollers, 1);
    }

    /// Whether `fd` is registered in the reactor's epoll (ADD of a registered fd is EEXIST).
    fn in_epoll(r: &Reactor, fd: RawFd) -> bool {
        match r.epoll.add(fd, 0) {
            Ok(()) => {
                r.epoll.del(fd).expect("just added");
                false
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
                true
            }
        }
    }

    #[test]
    fn done_and_removal_unregister_watched_fds() {
        let (mut r, _h) = reactor(0);
        let efd = EventFd::new().expect("eventfd");
        let efd2 = EventFd::new().expect("eventfd");
        let polls = Rc::new(Cell::new(0));
        let done = r.add_poller(Box::new(Countdown {
            left: 1,
            polls: Rc::clone(&polls),
        }));
        let other = r.add_poller(Box::new(Named("other", 0)));
        r.watch_fd(done, efd.fd()).expect("watch");
        r.watch_fd(done, efd.fd())
            .expect("watching twice is a no-op");
        r.watch_fd(other, efd.fd()).expect("a shared fd");
        r.watch_fd(done, efd2.fd()).expect("watch");
        assert_eq!(r.watched_fds(), 3);
        assert!(in_epoll(&r, efd.fd()) && in_epoll(&r, efd2.fd()));
        assert!(
            r.watch_fd(PollerId(u64::MAX), efd.fd()).is_err(),
            "no such poller"
        );

        r.run_once();
        r.run_once(); // Done
        assert!(r.poller::<Countdown>(done).is_none());
        assert_eq!(r.watched_fds(), 1, "only the other poller's watch is left");
        assert!(!in_epoll(&r, efd2.fd()), "Done unregistered its own fd");
        assert!(in_epoll(&r, efd.fd()), "a shared fd stays while watched");

        r.remove_poller(other).expect("registered");
        assert_eq!(r.watched_fds(), 0);
        assert!(!in_epoll(&r, efd.fd()));
        assert!(!r.unwatch_fd(other, efd.fd()));
    }

    #[test]
    fn messages_run_on_the_reactor_between_passes() {
        let (mut r, h) = reactor(7);
        h.send(|r| assert_eq!(r.id(), 7)).expect("reactor alive");
        let seen = Arc::new(AtomicU64::new(0));
        let s = Arc::clone(&seen);
        h.send(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .expect("reactor alive");
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        assert_eq!(r.run_once(), PollStatus::Busy);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(r.run_once(), PollStatus::Idle);
    }

    #[test]
    fn a_message_flood_is_drained_in_batches() {
        let (mut r, h) = reactor(0);
        let seen = Arc::new(AtomicU64::new(0));
        for _ in 0..(MSG_BATCH * 2 + 1) {
            let s = Arc::clone(&seen);
            h.send(move |_| {
                s.fetch_add(1, Ordering::SeqCst);
            })
            .expect("alive");
        }
        r.run_once();
        assert_eq!(seen.load(Ordering::SeqCst), MSG_BATCH as u64);
        r.run_once();
        r.run_once();
        assert_eq!(seen.load(Ordering::SeqCst), MSG_BATCH as u64 * 2 + 1);
        assert_eq!(r.run_once(), PollStatus::Idle);
    }

    #[test]
    fn dropping_every_handle_stops_the_reactor() {
        let (mut r, h) = reactor(0);
        let h2 = h.clone();
        drop(h);
        r.run_once();
        assert!(!r.stopping(), "a clone is still alive");
        drop(h2);
        r.run_once();
        assert!(r.stopping());
    }

    #[test]
    fn poll_modes_parse_and_print() {
        assert_eq!("busy".parse::<PollMode>(), Ok(PollMode::Busy));
        assert_eq!("adaptive".parse::<PollMode>(), Ok(PollMode::Adaptive));
        assert!("fast".parse::<PollMode>().is_err());
        assert_eq!(PollMode::default().to_string(), "adaptive");
    }
}
