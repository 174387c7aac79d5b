//! Signalling the guest: at most one write of the call eventfd per pass, only when the driver
//! asked for an interrupt (EVENT_IDX `used_event`, or no `VRING_AVAIL_F_NO_INTERRUPT`). The call
//! fd was checked to be an eventfd and made non-blocking when the frontend handed it over, so a
//! saturated counter can never block the reactor.

use std::os::fd::AsRawFd;

use super::poller::VirtqPoller;

impl VirtqPoller {
    /// Writes the call eventfd if the driver wants an interrupt for what was just published.
    pub(super) fn notify_guest(&mut self) {
        if !self.ring.needs_notification() {
            return;
        }
        let Some(call) = &self.call else { return };
        let one = 1u64;
        // SAFETY: writing 8 bytes from a live u64 to a non-blocking eventfd we own. EAGAIN (the
        // counter is full) means the guest already has an interrupt pending.
        let n = unsafe { libc::write(call.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n != 8 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            self.stats.notify_errors += 1;
        }
    }
}
