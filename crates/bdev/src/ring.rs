//! What the io_uring channels (the file bdev's and the NVMe passthrough bdev's) share: sizing the
//! ring, registering the channel's descriptor as fixed file 0, reaping completions in batches,
//! and waiting for the kernel when a channel is dropped.

use std::fs::File;
use std::os::fd::AsRawFd;

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
        match ch.ring().submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(_) => {
                // Cannot tell when the kernel is done: never free what it may still use.
                ch.abandon();
                return;
            }
        }
        for_each_cqe(ch, |ch, user_data, _| ch.retire(user_data));
    }
}
