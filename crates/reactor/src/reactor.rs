//! One reactor: its poller list, its inbox and its busy/idle accounting.

use std::fmt;
use std::time::Duration;

use crate::clock::Tick;

use crossbeam_channel::{Receiver, Sender};

/// What one call of [`Poller::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Found nothing to do.
    Idle,
    /// Did work (the pass counts as busy).
    Busy,
    /// Finished for good: the reactor drops the poller after this pass.
    Done,
}

/// Work a reactor runs once per pass.
pub trait Poller {
    /// Does whatever is ready, without blocking.
    fn poll(&mut self) -> PollStatus;
}

/// A message to a reactor: a closure run on the reactor's thread between passes.
pub type ReactorMsg = Box<dyn FnOnce(&mut Reactor) + Send>;

/// Busy/idle time of one reactor: the CPU-utilisation truth of a polling target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// The reactor's index in its pool.
    pub id: usize,
    /// The core it is pinned to, if any.
    pub core: Option<usize>,
    /// Time spent in passes where some poller (or a message) did work.
    pub busy: Duration,
    /// Time spent in passes where nothing happened.
    pub idle: Duration,
    /// Number of pollers registered now.
    pub pollers: usize,
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

/// The sending side of a reactor's inbox; cheap to clone and `Send`.
#[derive(Clone)]
pub struct ReactorHandle {
    id: usize,
    core: Option<usize>,
    tx: Sender<ReactorMsg>,
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

    /// Queues `f` to run on the reactor.
    pub fn send(&self, f: impl FnOnce(&mut Reactor) + Send + 'static) -> Result<(), ReactorGone> {
        self.tx.send(Box::new(f)).map_err(|_| ReactorGone)
    }

    /// Runs `f` on the reactor and waits for its result.
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

    /// Asks the reactor to leave its loop after the current pass.
    pub fn stop(&self) -> Result<(), ReactorGone> {
        self.send(|r| r.stop = true)
    }
}

/// A set of pollers driven by one thread. Built without a thread it can be stepped with
/// [`Reactor::run_once`], which is how its users' tests drive it deterministically.
pub struct Reactor {
    id: usize,
    core: Option<usize>,
    pollers: Vec<Box<dyn Poller>>,
    inbox: Receiver<ReactorMsg>,
    stop: bool,
    /// Busy and idle time in clock ticks (converted when stats are read).
    busy: u64,
    idle: u64,
}

impl Reactor {
    /// A reactor with no pollers, and the handle that sends to it.
    pub fn new(id: usize, core: Option<usize>) -> (Reactor, ReactorHandle) {
        let (handle, inbox) = Self::channel(id, core);
        (Self::with_inbox(id, core, inbox), handle)
    }

    /// A handle and the inbox it sends to, for building the reactor later on its own thread
    /// (pollers are not `Send`, so a reactor never moves between threads).
    pub(crate) fn channel(id: usize, core: Option<usize>) -> (ReactorHandle, Receiver<ReactorMsg>) {
        let (tx, inbox) = crossbeam_channel::unbounded();
        (ReactorHandle { id, core, tx }, inbox)
    }

    /// A reactor with no pollers reading `inbox`.
    pub(crate) fn with_inbox(id: usize, core: Option<usize>, inbox: Receiver<ReactorMsg>) -> Self {
        Reactor {
            id,
            core,
            pollers: Vec::new(),
            inbox,
            stop: false,
            busy: 0,
            idle: 0,
        }
    }

    /// The reactor's index in its pool.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Registers a poller; it runs from the next pass on.
    pub fn add_poller(&mut self, poller: Box<dyn Poller>) {
        self.pollers.push(poller);
    }

    /// Busy/idle time so far.
    pub fn stats(&self) -> ReactorStats {
        ReactorStats {
            id: self.id,
            core: self.core,
            busy: Duration::from_nanos(Tick::to_nanos(self.busy)),
            idle: Duration::from_nanos(Tick::to_nanos(self.idle)),
            pollers: self.pollers.len(),
        }
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop
    }

    /// One pass: run queued messages, then every poller once.
    pub fn run_once(&mut self) -> PollStatus {
        let mut status = PollStatus::Idle;
        while let Ok(msg) = self.inbox.try_recv() {
            msg(self);
            status = PollStatus::Busy;
        }
        let mut i = 0;
        while i < self.pollers.len() {
            match self.pollers[i].poll() {
                PollStatus::Idle => i += 1,
                PollStatus::Busy => {
                    status = PollStatus::Busy;
                    i += 1;
                }
                PollStatus::Done => {
                    // Order among pollers carries no meaning, so an O(1) removal is fine.
                    drop(self.pollers.swap_remove(i));
                    status = PollStatus::Busy;
                }
            }
        }
        status
    }

    /// Loops until [`ReactorHandle::stop`] (or every handle is dropped), then returns its stats.
    pub fn run(mut self) -> ReactorStats {
        let mut last = Tick::now();
        while !self.stop {
            let status = self.run_once();
            let now = Tick::now();
            let spent = now.ticks_since(last);
            last = now;
            if status == PollStatus::Idle {
                self.idle += spent;
                if self.pollers.is_empty() && self.inbox.is_empty() {
                    // Nothing to poll: wait for a message instead of burning the core.
                    match self.inbox.recv_timeout(Duration::from_millis(1)) {
                        Ok(msg) => msg(&mut self),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    std::hint::spin_loop();
                }
            } else {
                self.busy += spent;
            }
        }
        self.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

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
    }

    #[test]
    fn pollers_run_until_done_then_are_dropped() {
        let (mut r, _h) = Reactor::new(0, None);
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
    fn messages_run_on_the_reactor_between_passes() {
        let (mut r, h) = Reactor::new(7, None);
        h.send(|r| assert_eq!(r.id(), 7)).expect("reactor alive");
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let s = std::sync::Arc::clone(&seen);
        h.send(move |_| {
            s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .expect("reactor alive");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(r.run_once(), PollStatus::Busy);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(r.run_once(), PollStatus::Idle);
    }

    #[test]
    fn call_returns_the_result_and_stop_ends_the_thread() {
        let (h, inbox) = Reactor::channel(1, None);
        let t = std::thread::spawn(move || Reactor::with_inbox(1, None, inbox).run());
        assert_eq!(h.call(|r| r.id() + 41), Ok(42));
        h.stop().expect("reactor alive");
        let stats = t.join().expect("reactor thread");
        assert_eq!(stats.id, 1);
        assert!(h.call(|_| ()).is_err(), "a stopped reactor refuses calls");
    }
}
