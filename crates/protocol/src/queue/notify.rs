//! Signalling the guest: at most one write of the call eventfd per pass, only when the driver
//! asked for an interrupt (EVENT_IDX `used_event`, or no `VRING_AVAIL_F_NO_INTERRUPT`), and, with
//! interrupt coalescing on, no sooner than the coalescing delay after the previous one. The call
//! fd was checked to be an eventfd and made non-blocking when the frontend handed it over, so a
//! saturated counter can never block the reactor.

use std::fs::File;
use std::os::fd::AsRawFd;

use spinblk_reactor::Tick;

use super::poller::VirtqPoller;
use crate::device::{Coalescing, COALESCING_INTERVAL_MS};

/// A queue's interrupt coalescing state (see [`Coalescing`] for the policy).
#[derive(Default)]
pub(super) struct Coalescer {
    /// Base delay in ticks; 0 = coalescing off.
    delay_base: u64,
    /// Requests per interval above which interrupts are delayed.
    threshold: u64,
    interval: u64,
    next_check: u64,
    /// Requests completed in the current interval.
    completed: u64,
    /// Current delay after each interrupt, in ticks.
    delay: u64,
    /// No interrupt before this tick.
    next_signal: u64,
    /// Used elements were published and their interrupt is being held back.
    pub pending: bool,
}

impl Coalescer {
    /// Applies new settings (0 delay = off).
    pub(super) fn configure(&mut self, c: Coalescing) {
        let per_us = Tick::per_micro();
        *self = Coalescer {
            delay_base: u64::from(c.delay_base_us) * per_us,
            threshold: (u64::from(c.iops_threshold) * u64::from(COALESCING_INTERVAL_MS) / 1000)
                .max(1),
            interval: u64::from(COALESCING_INTERVAL_MS) * 1000 * per_us,
            ..Coalescer::default()
        };
    }

    fn on(&self) -> bool {
        self.delay_base > 0
    }

    /// `n` more requests completed; returns whether the interrupt may go out now.
    fn may_signal(&mut self, n: u64, now: u64) -> bool {
        self.completed += n;
        if now >= self.next_check {
            self.delay = if self.completed > self.threshold {
                self.delay_base * (self.completed - self.threshold) / self.threshold
            } else {
                0
            };
            self.completed = 0;
            self.next_check = now + self.interval;
        }
        now >= self.next_signal
    }

    fn signalled(&mut self, now: u64) {
        self.next_signal = now + self.delay;
        self.pending = false;
    }
}

impl VirtqPoller {
    /// Writes the call eventfd if the driver wants an interrupt for what was just published
    /// (`completed` requests), or holds it back while coalescing says so.
    pub(super) fn notify_guest(&mut self, completed: u64) {
        if self.coalescer.on() {
            let now = Tick::now().raw();
            if !self.coalescer.may_signal(completed, now) {
                self.coalescer.pending = true;
                return;
            }
            if self.signal_if_wanted() {
                self.coalescer.signalled(now);
            }
            self.coalescer.pending = false;
            return;
        }
        self.signal_if_wanted();
    }

    /// A held-back interrupt whose delay has passed (called every pass while one is pending).
    pub(super) fn flush_coalesced(&mut self) {
        if self.coalescer.pending && self.coalescer.may_signal(0, Tick::now().raw()) {
            let now = Tick::now().raw();
            if self.signal_if_wanted() {
                self.coalescer.signalled(now);
            }
            self.coalescer.pending = false;
        }
    }

    /// One eventfd write if the driver wants an interrupt; returns whether it was written. The
    /// check runs without the full fence; a "no" waits for [`confirm_signal`](Self::confirm_signal)
    /// (`SplitRing::needs_notification` says why and when).
    fn signal_if_wanted(&mut self) -> bool {
        if !self.ring.needs_notification() {
            return false;
        }
        self.signal()
    }

    /// The fenced re-check of a signal the unfenced check held back, if one waits for it; the
    /// poller runs it in every pass that publishes nothing, before the reactor sleeps and before
    /// the queue stops. A held-back coalesced interrupt is left to the coalescer, which checks
    /// again when its delay has passed.
    pub(super) fn confirm_signal(&mut self) {
        if !self.coalescer.pending && self.ring.confirm_notification() {
            self.signal();
        }
    }

    /// Writes the call eventfd, if there is one; returns whether it did.
    fn signal(&mut self) -> bool {
        let Some(call) = &self.call else { return false };
        if !signal_call(call) {
            self.stats.notify_errors += 1;
        }
        true
    }
}

/// Writes 1 to a (non-blocking) call eventfd; `false` when the write failed for a reason other
/// than EAGAIN, which means the counter is full: the guest already has an interrupt pending.
#[inline]
pub(crate) fn signal_call(call: &File) -> bool {
    let one = 1u64;
    // SAFETY: writing 8 bytes from a live u64 to an eventfd we own.
    let n = unsafe { libc::write(call.as_raw_fd(), (&one as *const u64).cast(), 8) };
    n == 8 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_delays_only_above_the_threshold_and_grows_with_load() {
        Tick::calibrate();
        let per_us = Tick::per_micro();
        let mut c = Coalescer::default();
        c.configure(Coalescing {
            delay_base_us: 100,
            iops_threshold: 10_000, // 100 per 10 ms interval
        });
        let ms = 1000 * per_us;
        // Light load: 50 requests in the first interval, then a check: no delay.
        assert!(c.may_signal(50, 0));
        c.signalled(0);
        assert!(c.may_signal(50, 11 * ms), "below the threshold: no delay");
        c.signalled(11 * ms);
        // Heavy load: 300 requests in the next interval -> delay = 100 us * 200 / 100 = 200 us.
        assert!(c.may_signal(300, 22 * ms));
        c.signalled(22 * ms);
        assert!(!c.may_signal(1, 22 * ms + 100 * per_us), "held back");
        assert!(
            c.may_signal(0, 22 * ms + 201 * per_us),
            "released after the delay"
        );
    }
}
