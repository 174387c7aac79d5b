//! Helpers for the channel tests.

use crate::bounce::AlignedBuf;
use crate::{BdevIo, IoOp, IoVec};

/// A page-aligned test buffer.
pub(crate) struct Buf {
    mem: AlignedBuf,
    len: usize,
}

impl Buf {
    /// `len` bytes of `fill`.
    pub(crate) fn new(len: usize, fill: u8) -> Self {
        let b = Buf {
            mem: AlignedBuf::new(len).expect("alloc"),
            len,
        };
        // SAFETY: `len` bytes owned by `b`.
        unsafe { std::ptr::write_bytes(b.mem.as_ptr(), fill, len) };
        b
    }

    /// The buffer's bytes; the kernel is not using them while a test looks (every request has
    /// completed).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: tests look only while no request over the buffer is in flight.
        let all = unsafe { self.mem.bytes() };
        &all[..self.len]
    }

    /// The buffer's bytes, to fill in.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` initialised bytes owned by self, exclusively; the kernel is not using
        // them while a test writes (no request over them is in flight).
        unsafe { std::slice::from_raw_parts_mut(self.mem.as_ptr(), self.len) }
    }

    /// An iovec over `[start, start + len)`.
    pub(crate) fn iov(&self, start: usize, len: usize) -> IoVec {
        assert!(start + len <= self.len);
        IoVec {
            iov_base: self.mem.as_ptr().wrapping_add(start).cast(),
            iov_len: len,
        }
    }
}

/// A request over `iov` (which the test keeps alive until it completes).
pub(crate) fn rw(tag: u32, op: IoOp, offset: u64, iov: &[IoVec]) -> BdevIo {
    let len = iov.iter().map(|v| v.iov_len as u64).sum();
    // SAFETY: every test keeps the iovec array and its buffers alive until the request's
    // completion has been reaped (or the channel dropped).
    unsafe { BdevIo::with_iovecs(tag, op, offset, len, iov.as_ptr(), iov.len()) }
}

/// The test binary's allocator: the system's, counting the allocations each thread makes so a
/// test can prove a code path allocates nothing.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn count_one() {
    // `try_with`: a thread being torn down has no counter left; nothing to count then.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to the system allocator unchanged; counting touches only a
// const-initialised thread-local `Cell` (no allocation, no reentrancy).
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Allocations (and reallocations) this thread has made so far.
pub(crate) fn allocations() -> u64 {
    ALLOCATIONS.with(|n| n.get())
}

/// Waits up to `ms` for `fd` to be readable (poll(2)); whether it is.
pub(crate) fn readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        let e = std::io::Error::last_os_error();
        // EINTR: task work (a CQE being posted) interrupted the wait; wait again.
        if rc < 0 && e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        assert!(rc >= 0, "poll: {e}");
        return rc == 1 && p.revents & libc::POLLIN != 0;
    }
}
