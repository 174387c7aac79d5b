//! What the io_uring channels (the file bdev's and the NVMe passthrough bdev's) share: sizing the
//! ring, registering the channel's descriptor as fixed file 0, reaping completions in batches,
//! telling transient `io_uring_enter` failures from a broken ring (and which queued entries a
//! broken ring never took), and waiting for the kernel when a channel is dropped.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use io_uring::{cqueue, squeue, IoUring};

use crate::{BdevError, Completion};

/// CQEs taken off the completion queue at a time.
const BATCH: usize = 32;

/// `depth` clamped to `1..=max_depth`, and the ring's entries for it: rounded up to a power of
/// two. `max_depth` is at most io_uring's 32768, so that fits a `u32` and the kernel's limit.
pub(crate) fn ring_depth(depth: usize, max_depth: usize) -> (usize, u32) {
    debug_assert!(max_depth <= 32768);
    let depth = depth.clamp(1, max_depth);
    (depth, depth.next_power_of_two() as u32)
}

/// Registers `file` as fixed file 0 of `ring`; `what` names it in the error ("the file").
pub(crate) fn register_fixed_file<S, C>(
    ring: &IoUring<S, C>,
    file: &File,
    what: &str,
) -> Result<(), BdevError>
where
    S: squeue::EntryMarker,
    C: cqueue::EntryMarker,
{
    ring.submitter()
        .register_files(&[file.as_raw_fd()])
        .map_err(|e| {
            BdevError::Os(std::io::Error::new(
                e.kind(),
                format!("cannot register {what} with io_uring: {e}"),
            ))
        })
}

/// Creates a non-blocking eventfd and registers it with `ring` (`IORING_REGISTER_EVENTFD`): the
/// kernel adds to it whenever it posts a CQE, so a reactor can sleep in epoll on it while
/// requests are in flight. The channel never reads it (that would cost a system call per pass):
/// watch it edge-triggered (every CQE is a new edge) or read it to reset it. Not for IOPOLL
/// rings, whose completions are found only inside `io_uring_enter` and signal nothing.
pub(crate) fn register_completion_eventfd<S, C>(ring: &IoUring<S, C>) -> Result<OwnedFd, BdevError>
where
    S: squeue::EntryMarker,
    C: cqueue::EntryMarker,
{
    // SAFETY: eventfd creates a new descriptor; no memory is passed.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(BdevError::Os(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ring.submitter()
        .register_eventfd(fd.as_raw_fd())
        .map_err(|e| {
            BdevError::Os(std::io::Error::new(
                e.kind(),
                format!("cannot register a completion eventfd with io_uring: {e}"),
            ))
        })?;
    Ok(fd)
}

/// Whether an `io_uring_enter` failure is transient: the kernel was short of memory for
/// requests (`EAGAIN`), the completion queue had overflowed (`EBUSY`), a signal or a timeout
/// interrupted a wait (`EINTR`, `ETIME`), or completions were dropped and this reports it once
/// (`EBADR`). The queued entries stay queued and the next pass submits them. Anything else
/// (`EBADF`, `EBADFD`, `EFAULT`, `EINVAL`, `ENXIO`, `EOWNERDEAD`, ...) means the ring itself
/// cannot be used: see [`SqShadow`].
pub(crate) fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR | libc::ETIME | libc::EBADR)
    )
}

/// The `user_data` of the entries pushed to a submission queue, in order, so that when the
/// ring breaks (a non-transient `io_uring_enter` failure) the channel can tell which requests
/// the kernel never took: the last `sq.len()` pushed. Those are failed, and the ring is never
/// entered with entries to submit again, so the kernel never sees them (no SQPOLL). One store
/// per push, no allocation after open.
pub(crate) struct SqShadow {
    user_data: Box<[u64]>,
    pushed: usize,
}

impl SqShadow {
    /// A shadow of a submission queue of `entries` entries.
    pub(crate) fn new(entries: usize) -> Self {
        SqShadow {
            user_data: vec![0; entries.max(1)].into_boxed_slice(),
            pushed: 0,
        }
    }

    /// An entry with `user_data` was pushed.
    pub(crate) fn record(&mut self, user_data: u64) {
        let n = self.user_data.len();
        self.user_data[self.pushed % n] = user_data;
        self.pushed = self.pushed.wrapping_add(1);
    }

    /// Of the last `unconsumed` entries pushed (`unconsumed` <= the queue's size), the
    /// `user_data` of the `i`-th, oldest first.
    pub(crate) fn last(&self, unconsumed: usize, i: usize) -> u64 {
        let n = self.user_data.len();
        let k = unconsumed.min(n);
        self.user_data[self.pushed.wrapping_sub(k - i.min(k - 1)) % n]
    }
}

/// A channel that owns an io_uring: what [`reap`] and [`drain`] need of it.
pub(crate) trait RingChannel {
    /// The ring's submission queue entry.
    type Sqe: squeue::EntryMarker;
    /// The ring's completion queue entry.
    type Cqe: cqueue::EntryMarker;

    /// The channel's ring.
    fn ring(&mut self) -> &mut IoUring<Self::Sqe, Self::Cqe>;

    /// Handles one CQE: the completion of the request it finished, if it finished one.
    fn handle_cqe(&mut self, user_data: u64, res: i32) -> Option<Completion>;

    /// Entries (requests or commands) the kernel may still hold.
    fn in_kernel(&self) -> usize;

    /// Frees what the entry of a CQE reaped by [`drain`] held; nothing is reported.
    fn retire(&mut self, user_data: u64);

    /// Gives up, without freeing it, all memory the kernel may still write into: for a channel
    /// that cannot wait for the kernel to finish.
    fn abandon(&mut self);

    /// Whether the ring is broken: entries left in its submission queue belong to requests
    /// already failed and must never be submitted.
    fn broken(&self) -> bool;
}

/// Takes every CQE off the ring, [`BATCH`] at a time, and hands each to `f`.
fn for_each_cqe<R: RingChannel>(ch: &mut R, mut f: impl FnMut(&mut R, u64, i32)) {
    let mut batch = [(0u64, 0i32); BATCH];
    loop {
        let mut got = 0;
        for cqe in ch.ring().completion().take(BATCH) {
            let cqe: cqueue::Entry = cqe.into();
            batch[got] = (cqe.user_data(), cqe.result());
            got += 1;
        }
        for &(user_data, res) in &batch[..got] {
            f(ch, user_data, res);
        }
        if got < BATCH {
            return;
        }
    }
}

/// Hands every CQE in the ring to the channel, and the completions that finishes to `done`;
/// returns how many.
pub(crate) fn reap<R: RingChannel>(ch: &mut R, done: &mut dyn FnMut(Completion)) -> usize {
    let mut n = 0;
    for_each_cqe(ch, |ch, user_data, res| {
        if let Some(c) = ch.handle_cqe(user_data, res) {
            n += 1;
            done(c);
        }
    });
    n
}

/// Waits until the kernel holds none of the channel's entries (it may still write into guest
/// memory and channel buffers), submitting what is queued and retiring entries as their CQEs
/// arrive; their completions are dropped. If the kernel cannot be waited for, abandons the
/// channel's memory instead.
pub(crate) fn drain<R: RingChannel>(ch: &mut R) {
    while ch.in_kernel() > 0 {
        let entered = if ch.broken() {
            // Wait without submitting: what is queued was failed already.
            // SAFETY: no entries are submitted and no argument is passed; this only waits for
            // completions of entries the kernel already holds.
            unsafe {
                ch.ring().submitter().enter::<libc::sigset_t>(
                    0,
                    1,
                    io_uring::EnterFlags::GETEVENTS.bits(),
                    None,
                )
            }
        } else {
            ch.ring().submit_and_wait(1)
        };
        match entered {
            Ok(_) => {}
            Err(e) if is_transient(&e) => {}
            Err(_) => {
                // Cannot tell when the kernel is done: never free what it may still use.
                ch.abandon();
                return;
            }
        }
        for_each_cqe(ch, |ch, user_data, _| ch.retire(user_data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_names_the_last_entries_pushed() {
        let mut sh = SqShadow::new(4);
        for ud in 10..17 {
            sh.record(ud);
        }
        let last = |n: usize| (0..n.min(4)).map(|i| sh.last(n, i)).collect::<Vec<_>>();
        assert_eq!(last(0), Vec::<u64>::new());
        assert_eq!(last(1), [16]);
        assert_eq!(last(2), [15, 16]);
        assert_eq!(last(4), [13, 14, 15, 16]);
        assert_eq!(last(9), [13, 14, 15, 16], "at most the queue");
    }

    #[test]
    fn transient_errors() {
        for e in [
            libc::EAGAIN,
            libc::EBUSY,
            libc::EINTR,
            libc::ETIME,
            libc::EBADR,
        ] {
            assert!(is_transient(&std::io::Error::from_raw_os_error(e)), "{e}");
        }
        for e in [
            libc::EBADF,
            libc::EBADFD,
            libc::EFAULT,
            libc::EINVAL,
            libc::ENXIO,
        ] {
            assert!(!is_transient(&std::io::Error::from_raw_os_error(e)), "{e}");
        }
    }
}
