//! Helpers shared by the bdevs that execute requests synchronously in `submit`.

use std::collections::VecDeque;

use crate::{BdevError, BdevIo, Completion, IoVec};

/// Completions of requests that finished inside `submit`, reported on the next poll. Its
/// capacity is the channel depth, fixed at creation, so pushing never allocates.
pub(crate) struct CompletionRing {
    done: VecDeque<Completion>,
    depth: usize,
}

impl CompletionRing {
    pub(crate) fn new(depth: usize) -> Self {
        CompletionRing {
            done: VecDeque::with_capacity(depth),
            depth,
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.done.len() >= self.depth
    }

    pub(crate) fn push(&mut self, c: Completion) {
        debug_assert!(!self.is_full());
        self.done.push_back(c);
    }

    pub(crate) fn drain(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let n = self.done.len();
        for c in self.done.drain(..) {
            done(c);
        }
        n
    }

    pub(crate) fn len(&self) -> usize {
        self.done.len()
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
