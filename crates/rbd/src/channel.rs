//! The data plane: one channel per reactor over a shared image handle.
//!
//! librbd runs each request's completion callback on one of its own threads. The callback takes
//! the return value, releases librbd's completion object, pushes `(slot, result)` onto this
//! channel's bounded lock-free queue and, if the reactor has not been told yet, writes the
//! channel's eventfd. The reactor drains the queue in `poll_completions`; nothing on its path
//! takes a lock. The queue holds `depth` entries and a slot produces at most one entry at a
//! time, so a push never finds it full.

use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use spinblk_bdev::{BdevIo, Completion, IoChannel, IoOp, IoStatus, IoVec};

use crate::ffi::{self, Api, RbdCompletionT};
use crate::image::ImageHandle;
use crate::RbdError;

/// One finished librbd request: the slot it ran in and librbd's return value.
#[derive(Debug, Clone, Copy)]
struct Done {
    slot: u32,
    ret: i64,
}

/// What librbd's threads and the reactor share.
///
/// The wake-up handshake: a producer pushes, then sets `signalled` and writes the eventfd only
/// if it was the one to set it. The consumer, when it sees `signalled`, first reads the eventfd
/// and only then clears `signalled`, then drains the queue. Reading before clearing matters: a
/// read after the clear could swallow the write of a producer that set `signalled` anew, and the
/// producers after it (who see it set and do not write) would then never wake the reactor.
struct Shared {
    queue: ArrayQueue<Done>,
    /// Set by the first completion after the reactor last looked; the eventfd is written only
    /// then (one write per batch, not per completion).
    signalled: AtomicBool,
    efd: OwnedFd,
}

impl Shared {
    fn new(depth: usize, efd: OwnedFd) -> Shared {
        Shared {
            queue: ArrayQueue::new(depth),
            signalled: AtomicBool::new(false),
            efd,
        }
    }

    /// Consumer side, before draining the queue: takes a pending wake-up (see the type's doc).
    fn take_signal(&self) {
        if self.signalled.load(Ordering::Acquire) {
            self.read_eventfd();
            self.signalled.swap(false, Ordering::AcqRel);
        }
    }

    /// Reads the eventfd's counter back to zero (EAGAIN when it already is).
    fn read_eventfd(&self) {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe { libc::read(self.efd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Queues a finished request and wakes the reactor (any thread).
    fn push(&self, mut done: Done) {
        // Never full (see the module doc); if it ever were, waiting is correct and losing a
        // completion is not.
        while let Err(back) = self.queue.push(done) {
            done = back;
            std::thread::yield_now();
        }
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to our eventfd. It cannot block
            // (EFD_NONBLOCK) and fails only if the counter would overflow, which takes 2^64
            // writes without a read.
            unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// The callback argument for one slot: librbd hands it back to [`on_complete`].
#[repr(C)]
struct SlotCtx {
    shared: *const Shared,
    slot: u32,
}

/// librbd's completion callback (runs on a librbd thread).
unsafe extern "C" fn on_complete(c: RbdCompletionT, arg: *mut c_void) {
    let api = ffi::loaded();
    // SAFETY: `c` is the completion librbd is finishing; we read its value, then release it
    // (librbd allows release from the callback, and nothing else refers to it).
    let ret = unsafe { (api.rbd_aio_get_return_value)(c) };
    // SAFETY: as above.
    unsafe { (api.rbd_aio_release)(c) };
    // SAFETY: `arg` points into the channel's `ctxs`, which (with the `Shared` it names) lives
    // until every request has completed: the channel's Drop waits for them, or leaks both.
    let ctx = unsafe { &*(arg as *const SlotCtx) };
    // SAFETY: as above.
    let shared = unsafe { &*ctx.shared };
    shared.push(Done {
        slot: ctx.slot,
        ret: ret as i64,
    });
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    tag: u32,
    /// A durable write: once the write completes, the slot issues a flush and reports the
    /// request when that completes.
    then_flush: bool,
}

/// A per-reactor channel on an RBD image.
pub struct RbdChannel {
    api: &'static Api,
    handle: Arc<ImageHandle>,
    shared: Arc<Shared>,
    ctxs: Box<[SlotCtx]>,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    depth: usize,
}

// SAFETY: the raw pointers in `ctxs` point to `shared`, which moves with the channel (it is
// heap-allocated); the channel is used by one thread at a time (its reactor) and librbd's
// threads only touch `Shared`, which is Sync.
unsafe impl Send for RbdChannel {}

impl RbdChannel {
    pub(crate) fn new(handle: Arc<ImageHandle>, depth: usize) -> Result<RbdChannel, RbdError> {
        let slots_max = u32::MAX as usize;
        if depth > slots_max {
            return Err(RbdError::Invalid(format!(
                "channel depth {depth} too large"
            )));
        }
        // SAFETY: plain eventfd creation; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(RbdError::Os(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared::new(depth, efd));
        let ctxs = (0..depth as u32)
            .map(|slot| SlotCtx {
                shared: Arc::as_ptr(&shared),
                slot,
            })
            .collect();
        Ok(RbdChannel {
            api: ffi::loaded(),
            handle,
            shared,
            ctxs,
            slots: vec![Slot::default(); depth].into_boxed_slice(),
            free: (0..depth as u32).rev().collect(),
            depth,
        })
    }

    /// Bytes a channel of `depth` allocates (its slots, their callback arguments, the free list
    /// and the completion queue).
    pub(crate) fn memory(depth: usize) -> usize {
        let per_slot = std::mem::size_of::<SlotCtx>()
            + std::mem::size_of::<Slot>()
            + std::mem::size_of::<u32>()
            // An ArrayQueue slot: the value and its stamp.
            + std::mem::size_of::<Done>()
            + std::mem::size_of::<usize>();
        std::mem::size_of::<RbdChannel>() + std::mem::size_of::<Shared>() + depth * per_slot
    }

    /// Starts `op` in `slot`; librbd's negative errno if it refused to.
    fn start(&mut self, slot: u32, op: IoOp, offset: u64, len: u64, iov: &[IoVec]) -> c_int {
        let api = self.api;
        let image = self.handle.image;
        let arg = (&self.ctxs[slot as usize] as *const SlotCtx)
            .cast_mut()
            .cast();
        let mut c = RbdCompletionT::null();
        // SAFETY: `arg` stays valid until the callback has run (see `on_complete`); valid
        // out-pointer.
        let r = unsafe { (api.rbd_aio_create_completion)(arg, Some(on_complete), &mut c) };
        if r < 0 {
            return r;
        }
        let Ok(iovcnt) = c_int::try_from(iov.len()) else {
            // SAFETY: the completion was never handed to a request.
            unsafe { (api.rbd_aio_release)(c) };
            return -libc::EINVAL;
        };
        // SAFETY: (all arms) the image is open (this channel holds a reference and the image
        // closes only when none is left); `iov` and its buffers stay valid until the completion
        // is reported (BdevIo's contract), which is after librbd's callback has run.
        let r = unsafe {
            match op {
                IoOp::Read => (api.rbd_aio_readv)(image, iov.as_ptr(), iovcnt, offset, c),
                IoOp::Write => (api.rbd_aio_writev)(image, iov.as_ptr(), iovcnt, offset, c),
                IoOp::Flush => (api.rbd_aio_flush)(image, c),
                IoOp::Discard => (api.rbd_aio_discard)(image, offset, len, c),
                IoOp::WriteZeroes => match (api.rbd_aio_write_zeroes, usize::try_from(len)) {
                    (Some(f), Ok(len)) => f(image, offset, len, c, 0, 0),
                    (None, _) => -libc::EOPNOTSUPP,
                    (_, Err(_)) => -libc::EINVAL,
                },
            }
        };
        if r < 0 {
            // SAFETY: librbd refused the request, so the completion is still ours.
            unsafe { (api.rbd_aio_release)(c) };
        }
        r
    }

    /// Blocks up to `timeout` for the eventfd (used only by Drop, off the data path).
    fn wait_eventfd(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.shared.efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

fn status_of(ret: i64) -> IoStatus {
    if ret >= 0 {
        IoStatus::Success
    } else if ret == -i64::from(libc::EOPNOTSUPP) {
        IoStatus::Unsupported
    } else {
        IoStatus::IoError
    }
}

impl IoChannel for RbdChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        let Some(slot) = self.free.pop() else {
            return Err(io);
        };
        self.slots[slot as usize] = Slot {
            tag: io.tag,
            then_flush: io.op == IoOp::Write && io.durable(),
        };
        let r = self.start(slot, io.op, io.offset, io.len, io.iovecs());
        if r < 0 {
            // Refused at once: reported like any completion (through the queue and eventfd).
            self.shared.push(Done {
                slot,
                ret: r.into(),
            });
        }
        Ok(())
    }

    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        self.shared.take_signal();
        let mut n = 0;
        while let Some(mut d) = self.shared.queue.pop() {
            let slot = self.slots[d.slot as usize];
            if slot.then_flush && d.ret >= 0 {
                self.slots[d.slot as usize].then_flush = false;
                let r = self.start(d.slot, IoOp::Flush, 0, 0, &[]);
                if r >= 0 {
                    continue;
                }
                d.ret = r.into();
            }
            self.free.push(d.slot);
            done(Completion {
                tag: slot.tag,
                status: status_of(d.ret),
            });
            n += 1;
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.depth - self.free.len()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.shared.efd.as_raw_fd())
    }

    /// librbd's threads make every completion and the eventfd carries it: spinning for them
    /// would only take the CPU those threads need (docs/architecture.md, "RBD").
    fn worth_spinning_for(&self) -> bool {
        false
    }
}

impl Drop for RbdChannel {
    /// Waits for every request librbd holds: it may still write into the request's buffers
    /// (guest memory) and it will call back into `ctxs`. Their completions are dropped. librbd
    /// fails stuck requests after the cluster's op timeout; if even a generous multiple of that
    /// passes, the channel's state and the image are leaked rather than freed under librbd.
    fn drop(&mut self) {
        let op_timeout = self.handle.cluster.op_timeout();
        let limit = if op_timeout.is_zero() {
            None
        } else {
            Some(op_timeout * 2 + Duration::from_secs(30))
        };
        let start = Instant::now();
        let mut warned = false;
        while self.in_flight() > 0 {
            // Read the counter unconditionally here (a late eventfd write can leave it non-zero
            // with nothing queued), then drain: the poll below then sleeps until a new write.
            self.shared.read_eventfd();
            self.poll_completions(&mut |_| {});
            if self.in_flight() == 0 {
                break;
            }
            let waited = start.elapsed();
            if !warned && waited > Duration::from_secs(5) {
                log::warn!(
                    "rbd {}: waiting for {} request(s) before closing a channel",
                    self.handle.spec,
                    self.in_flight()
                );
                warned = true;
            }
            if limit.is_some_and(|l| waited > l) {
                log::error!(
                    "rbd {}: {} request(s) still held by librbd after {waited:?}; leaking the \
                     channel and the image",
                    self.handle.spec,
                    self.in_flight()
                );
                std::mem::forget(Arc::clone(&self.shared));
                std::mem::forget(Arc::clone(&self.handle));
                Box::leak(std::mem::take(&mut self.ctxs));
                return;
            }
            self.wait_eventfd(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status_of(0), IoStatus::Success);
        assert_eq!(status_of(4096), IoStatus::Success);
        assert_eq!(status_of(-5), IoStatus::IoError);
        assert_eq!(status_of(-110), IoStatus::IoError);
        assert_eq!(
            status_of(-i64::from(libc::EOPNOTSUPP)),
            IoStatus::Unsupported
        );
    }

    /// The queue/eventfd handshake from many producer threads: every completion arrives once,
    /// and the eventfd is readable whenever one is waiting.
    #[test]
    fn completions_from_other_threads_arrive_once() {
        // SAFETY: plain eventfd creation; checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: new descriptor.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        let depth = 64usize;
        let shared = Arc::new(Shared::new(depth, efd));
        let total = 200_000u32;
        let producers: Vec<_> = (0..4u32)
            .map(|p| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for i in (p..total).step_by(4) {
                        shared.push(Done { slot: i, ret: 0 });
                    }
                })
            })
            .collect();
        let mut seen = vec![false; total as usize];
        let mut got = 0;
        while got < total {
            // Sleep on the eventfd as a reactor would, then drain.
            let mut pfd = libc::pollfd {
                fd: shared.efd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 5000) };
            assert!(r > 0, "eventfd not readable while completions were pending");
            shared.take_signal();
            while let Some(d) = shared.queue.pop() {
                assert!(!seen[d.slot as usize], "slot {} twice", d.slot);
                seen[d.slot as usize] = true;
                got += 1;
            }
        }
        for p in producers {
            p.join().expect("producer");
        }
        assert!(shared.queue.pop().is_none());
    }
}
