//! Helpers shared by the bdevs' channels: request bookkeeping that never allocates after the
//! channel opens, range checks, and the malloc bdev's memory.

use std::collections::VecDeque;

use crate::{BdevError, BdevIo, Completion, IoVec};

/// A channel's requests in flight (taken by `submit` and not yet reported; at most the channel
/// depth) and the completions among them already decided, which the next poll reports. Its
/// capacity is the channel depth, fixed at creation, so pushing never allocates.
///
/// A channel that executes requests in `submit` only [`push`](Self::push)es; a kernel-backed
/// one also [`start`](Self::start)s requests and reports the kernel's completions itself
/// ([`finished`](Self::finished)).
pub(crate) struct CompletionRing {
    done: VecDeque<Completion>,
    in_flight: usize,
    depth: usize,
}

impl CompletionRing {
    pub(crate) fn new(depth: usize) -> Self {
        CompletionRing {
            done: VecDeque::with_capacity(depth),
            in_flight: 0,
            depth,
        }
    }

    /// Whether `depth` requests are in flight.
    pub(crate) fn is_full(&self) -> bool {
        self.in_flight >= self.depth
    }

    /// Takes a request decided in `submit`: its completion waits for the next poll.
    pub(crate) fn push(&mut self, c: Completion) {
        debug_assert!(!self.is_full());
        self.done.push_back(c);
        self.in_flight += 1;
    }

    /// Takes a request handed to the kernel.
    pub(crate) fn start(&mut self) {
        debug_assert!(!self.is_full());
        self.in_flight += 1;
    }

    /// A request already in flight was decided without a completion from the kernel: the next
    /// poll reports it.
    pub(crate) fn defer(&mut self, c: Completion) {
        self.done.push_back(c);
    }

    /// `n` requests handed to the kernel have been reported.
    pub(crate) fn finished(&mut self, n: usize) {
        self.in_flight -= n;
    }

    /// Reports the decided completions to `done`; returns how many.
    pub(crate) fn drain(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let n = self.done.len();
        for c in self.done.drain(..) {
            done(c);
        }
        self.in_flight -= n;
        n
    }

    /// Requests in flight.
    pub(crate) fn len(&self) -> usize {
        self.in_flight
    }
}

/// Which of `n` slots (requests, commands, buffers) indexed `0..n` are free: handed out lowest
/// first, taken back in any order. Allocates only when made.
pub(crate) struct FreeList {
    free: Vec<usize>,
    n: usize,
}

impl FreeList {
    /// All of `0..n` free.
    pub(crate) fn new(n: usize) -> Self {
        FreeList {
            free: (0..n).rev().collect(),
            n,
        }
    }

    /// A free index, or `None` while all are in use.
    pub(crate) fn take(&mut self) -> Option<usize> {
        self.free.pop()
    }

    /// Frees index `i`.
    pub(crate) fn give(&mut self, i: usize) {
        self.free.push(i);
    }

    /// Whether index `i` is free.
    pub(crate) fn is_free(&self, i: usize) -> bool {
        self.free.contains(&i)
    }

    /// How many indices are in use.
    pub(crate) fn in_use(&self) -> usize {
        self.n - self.free.len()
    }
}

/// Checks that `io` lies inside a device of `size` bytes and that its iovecs add up to `len`.
pub(crate) fn io_in_range(io: &BdevIo, size: u64) -> bool {
    let end_ok = io.offset.checked_add(io.len).is_some_and(|end| end <= size);
    let data_ok = match io.op {
        crate::IoOp::Read | crate::IoOp::Write => {
            io.iovecs().iter().map(|v| v.iov_len as u64).sum::<u64>() == io.len
        }
        _ => true,
    };
    end_ok && data_ok
}

/// Fills every iovec of a read with zeroes.
pub(crate) fn zero_iovecs(iov: &[IoVec]) {
    for v in iov {
        // SAFETY: BdevIo::with_iovecs' contract: each iovec describes a live buffer of iov_len
        // bytes that this request may write.
        unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
    }
}

/// An anonymous, lazily zero-filled private mapping: the malloc bdev's RAM.
pub(crate) struct AnonMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; concurrent access from several
// channels is by raw copies only, like a disk shared by several queues.
unsafe impl Send for AnonMapping {}
// SAFETY: as above; no Rust references into the mapping are ever handed out.
unsafe impl Sync for AnonMapping {}

impl AnonMapping {
    pub(crate) fn new(len: usize) -> Result<Self, BdevError> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BdevError::Os(std::io::Error::last_os_error()));
        }
        Ok(AnonMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Copies the device bytes at `offset` into the iovecs.
    ///
    /// Callers check `offset + sum(iov) <= len` first (`io_in_range`).
    pub(crate) fn read_into(&self, offset: u64, iov: &[IoVec]) {
        let mut pos = offset as usize;
        for v in iov {
            // SAFETY: pos + iov_len <= self.len (checked by the caller); the destination is a
            // live request buffer per BdevIo's contract; the two never overlap (guest memory
            // and this private mapping are distinct mappings).
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.add(pos), v.iov_base.cast(), v.iov_len)
            };
            pos += v.iov_len;
        }
    }

    /// Copies the iovecs into the device at `offset`.
    pub(crate) fn write_from(&self, offset: u64, iov: &[IoVec]) {
        let mut pos = offset as usize;
        for v in iov {
            // SAFETY: as in read_into, with the copy reversed.
            unsafe {
                std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), self.ptr.add(pos), v.iov_len)
            };
            pos += v.iov_len;
        }
    }

    /// Makes `[offset, offset + len)` read as zeroes, giving whole pages back to the kernel.
    pub(crate) fn zero(&self, offset: u64, len: u64) {
        const PAGE: usize = 4096;
        let start = offset as usize;
        let end = start + len as usize;
        let page_start = start.next_multiple_of(PAGE);
        let page_end = end / PAGE * PAGE;
        if page_start < page_end {
            // SAFETY: [start, end) lies inside the mapping (caller-checked).
            unsafe { std::ptr::write_bytes(self.ptr.add(start), 0, page_start - start) };
            // SAFETY: page-aligned sub-range of our private anonymous mapping; MADV_DONTNEED
            // makes it read back as zeroes and frees its pages.
            let rc = unsafe {
                libc::madvise(
                    self.ptr.add(page_start).cast(),
                    page_end - page_start,
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                // SAFETY: as above, the range lies inside the mapping.
                unsafe {
                    std::ptr::write_bytes(self.ptr.add(page_start), 0, page_end - page_start)
                };
            }
            // SAFETY: the tail [page_end, end) lies inside the mapping.
            unsafe { std::ptr::write_bytes(self.ptr.add(page_end), 0, end - page_end) };
        } else {
            // SAFETY: [start, end) lies inside the mapping.
            unsafe { std::ptr::write_bytes(self.ptr.add(start), 0, end - start) };
        }
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no references into it outlive self.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
