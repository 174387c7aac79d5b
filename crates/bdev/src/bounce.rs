//! Page-aligned buffers for the kernel-backed bdevs: a channel's pool of bounce buffers for
//! requests whose iovecs miss the zero-copy alignment (one allocation made when the channel
//! opens, carved into fixed slots handed out by index; a request larger than one buffer moves
//! through it in buffer-sized chunks, so nothing is allocated per request), the copies in and
//! out of them, and one-off aligned buffers (a direct-I/O probe, Identify data).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use crate::memory::FreeList;
use crate::{BdevError, BdevIo, IoOp, IoVec};

/// Alignment of every buffer: a page, which covers any logical block size we serve (512 or
/// 4096), any DMA alignment a device asks of direct I/O, and the NVMe PRP rules.
pub(crate) const BOUNCE_ALIGN: usize = 4096;
/// Bytes per pool buffer: virtio-blk's `size_max` (one segment), so a misaligned request of one
/// segment moves in one go; larger ones move in chunks of this size.
pub(crate) const BOUNCE_SLOT_SIZE: usize = 1 << 20;
/// Most pool buffers per channel (fewer when the depth is smaller): misaligned requests in
/// flight at once; more wait (are handed back by `submit`) until one is free.
pub(crate) const BOUNCE_SLOTS_MAX: usize = 8;

/// A zero-filled, [`BOUNCE_ALIGN`]-aligned heap buffer.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    /// `len` bytes (at least one), or `None` when the allocator refuses.
    pub(crate) fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), BOUNCE_ALIGN).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| AlignedBuf { ptr, layout })
    }

    /// The start of the buffer.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The buffer's bytes.
    ///
    /// # Safety
    /// Nothing may write into the buffer while the returned slice lives: no request (kernel or
    /// device) whose data lands in it may be in flight.
    pub(crate) unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: `layout.size()` initialised (zeroed) bytes owned by `self`; the caller
        // promises that no one writes into them while the slice is alive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed exactly once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A bounced request's chunk: the request's bytes `[start, end)` are staged in pool buffer
/// `buf`. A request larger than one buffer moves chunk by chunk through the same buffer, so
/// no request ever needs more memory than the pool was given when the channel opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// The pool buffer.
    pub(crate) buf: usize,
    /// First request byte staged.
    pub(crate) start: u64,
    /// One past the last request byte staged (`end - start` <= the buffer size).
    pub(crate) end: u64,
}

/// A channel's bounce buffers: `slots` buffers of `slot_size` bytes carved out of one aligned
/// allocation made when the channel opens, handed out and returned by index (no allocation per
/// request).
pub(crate) struct BouncePool {
    mem: Option<AlignedBuf>,
    slot_size: usize,
    free: FreeList,
}

impl BouncePool {
    /// A pool of `slots` buffers of `slot_size` bytes (a multiple of [`BOUNCE_ALIGN`]); `slots`
    /// may be zero.
    pub(crate) fn new(slots: usize, slot_size: usize) -> Result<Self, BdevError> {
        debug_assert!(slot_size.is_multiple_of(BOUNCE_ALIGN) && slot_size > 0);
        let oom = || BdevError::Os(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        let mem = if slots == 0 {
            None
        } else {
            let len = slots.checked_mul(slot_size).ok_or_else(oom)?;
            Some(AlignedBuf::new(len).ok_or_else(oom)?)
        };
        Ok(BouncePool {
            mem,
            slot_size,
            free: FreeList::new(slots),
        })
    }

    /// A free buffer's index, or `None` while all are lent out (or the pool has none).
    pub(crate) fn take(&mut self) -> Option<usize> {
        self.free.take()
    }

    /// Returns buffer `i` to the pool.
    pub(crate) fn give(&mut self, i: usize) {
        debug_assert!(!self.free.is_free(i));
        self.free.give(i);
    }

    /// The start of buffer `i`.
    pub(crate) fn ptr(&self, i: usize) -> *mut u8 {
        match &self.mem {
            // `i < slots` for every index `take` hands out, so this stays inside the allocation.
            Some(mem) => mem.as_ptr().wrapping_add(i * self.slot_size),
            None => std::ptr::null_mut(),
        }
    }

    /// Gives up the pool's memory without freeing it: for a channel that could not confirm the
    /// kernel has finished with its buffers.
    pub(crate) fn leak(&mut self) {
        if let Some(mem) = self.mem.take() {
            std::mem::forget(mem);
        }
    }

    /// Takes a buffer for `io` (a read or write of `io.len` bytes) and stages its first chunk
    /// in it ([`stage`](Self::stage)); `None` while every buffer is lent out.
    ///
    /// # Safety
    /// As for [`stage`](Self::stage).
    pub(crate) unsafe fn start(&mut self, io: &BdevIo) -> Option<Chunk> {
        let buf = self.take()?;
        let mut chunk = Chunk {
            buf,
            start: 0,
            end: 0,
        };
        // SAFETY: the caller's promise, passed on.
        unsafe { self.stage(&mut chunk, io, 0) };
        Some(chunk)
    }

    /// Makes `chunk` the request's bytes from `start` on, as many as the buffer holds, and for
    /// a write gathers them into the buffer.
    ///
    /// # Safety
    /// The request's iovec lengths must add up to `io.len` (`io_in_range`), `start < io.len`,
    /// and the kernel must not be using the chunk's buffer.
    pub(crate) unsafe fn stage(&self, chunk: &mut Chunk, io: &BdevIo, start: u64) {
        let len = (io.len - start).min(self.slot_size as u64);
        chunk.start = start;
        chunk.end = start + len;
        if io.op == IoOp::Write {
            // SAFETY: the buffer has `slot_size` >= `len` bytes and the kernel is not using it
            // (the caller's promise); `[start, start + len)` lies within the request's iovecs,
            // which are live readable buffers (`BdevIo::with_iovecs`) and none of them is
            // channel memory.
            unsafe { copy_range(io.iovecs(), start, len as usize, self.ptr(chunk.buf), true) };
        }
    }

    /// Copies a bounced read's chunk out of its buffer into the request's iovecs.
    ///
    /// # Safety
    /// `chunk` belongs to `io` and its buffer holds the chunk's bytes as the kernel read them
    /// (it is done with the buffer); the iovec lengths add up to `io.len`.
    pub(crate) unsafe fn copy_out(&self, chunk: &Chunk, io: &BdevIo) {
        let len = (chunk.end - chunk.start) as usize;
        // SAFETY: the buffer holds `len` bytes the kernel has just read; `[start, end)` lies
        // within the request's iovecs (the caller's promise), which are writable request
        // buffers that live until completion (`BdevIo::with_iovecs`), in other memory.
        unsafe { copy_range(io.iovecs(), chunk.start, len, self.ptr(chunk.buf), false) };
    }

    /// Returns `chunk`'s buffer to the pool and leaves `None`.
    pub(crate) fn release(&mut self, chunk: &mut Option<Chunk>) {
        if let Some(c) = chunk.take() {
            self.give(c.buf);
        }
    }
}

/// Copies between the bytes `[skip, skip + len)` of the buffers `iov` describes (in order) and
/// `buf`: into `buf` when `gather`, out of it otherwise.
///
/// # Safety
/// The iovecs must describe live buffers (readable when gathering, writable when scattering)
/// holding at least `skip + len` bytes in all, and `buf` must be valid for `len` bytes the other
/// way and overlap none of them.
unsafe fn copy_range(iov: &[IoVec], skip: u64, len: usize, buf: *mut u8, gather: bool) {
    let mut skip = skip;
    let mut pos = 0usize;
    for v in iov {
        if pos == len {
            return;
        }
        if skip >= v.iov_len as u64 {
            skip -= v.iov_len as u64;
            continue;
        }
        let from = skip as usize;
        skip = 0;
        let n = (v.iov_len - from).min(len - pos);
        let seg = v.iov_base.cast::<u8>().wrapping_add(from);
        // SAFETY: `seg` has `n` bytes left in its iovec and `buf + pos` has `n` bytes left of
        // `len` (the caller's promises); they do not overlap.
        unsafe {
            if gather {
                std::ptr::copy_nonoverlapping(seg, buf.add(pos), n);
            } else {
                std::ptr::copy_nonoverlapping(buf.add(pos), seg, n);
            }
        }
        pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rw, Buf};

    #[test]
    fn pool_hands_out_distinct_aligned_buffers() {
        let mut pool = BouncePool::new(3, 8192).expect("pool");
        let a = pool.take().expect("a");
        let b = pool.take().expect("b");
        let c = pool.take().expect("c");
        assert!(pool.take().is_none());
        let mut ptrs = [pool.ptr(a), pool.ptr(b), pool.ptr(c)];
        for p in ptrs {
            assert_eq!(p as usize % BOUNCE_ALIGN, 0);
        }
        ptrs.sort();
        assert!(ptrs
            .windows(2)
            .all(|w| w[1] as usize - w[0] as usize >= 8192));
        pool.give(b);
        assert_eq!(pool.take(), Some(b));
        let mut empty = BouncePool::new(0, 4096).expect("empty");
        assert!(empty.take().is_none(), "an empty pool lends nothing");
    }

    /// A request several buffers long moves through one buffer chunk by chunk: each chunk
    /// gathers (writes) or scatters (reads) exactly its share, across iovec boundaries.
    #[test]
    fn chunks_walk_the_request_through_one_buffer() {
        let mut pool = BouncePool::new(1, 8192).expect("pool");
        let len = 3 * 8192 + 1000;
        let mut src = Buf::new(len + 7, 0);
        for (i, b) in src.bytes_mut().iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        // Iovec boundaries that fall inside chunks and on them.
        let cuts = [0, 1, 5000, 8192, 8193, 20000, len];
        let iov: Vec<IoVec> = cuts
            .windows(2)
            .map(|w| src.iov(7 + w[0], w[1] - w[0]))
            .collect();
        let w = rw(1, IoOp::Write, 0, &iov);
        // SAFETY: the iovecs add up to len; no kernel uses the buffer.
        let mut chunk = unsafe { pool.start(&w) }.expect("buffer");
        assert!(pool.take().is_none(), "the only buffer is lent");
        let mut staged = Vec::new();
        loop {
            let n = (chunk.end - chunk.start) as usize;
            assert!(n <= 8192);
            // SAFETY: the pool buffer holds 8192 bytes; no kernel uses it.
            staged.extend_from_slice(unsafe { std::slice::from_raw_parts(pool.ptr(chunk.buf), n) });
            if chunk.end == len as u64 {
                break;
            }
            let next = chunk.end;
            // SAFETY: as above; next < len.
            unsafe { pool.stage(&mut chunk, &w, next) };
        }
        assert_eq!(staged, src.bytes()[7..]);

        // Reads: scatter each chunk back into a differently cut destination.
        let dst = Buf::new(len, 0);
        let dcuts = [0, 4096, 4097, 16384, len];
        let diov: Vec<IoVec> = dcuts
            .windows(2)
            .map(|w| dst.iov(w[0], w[1] - w[0]))
            .collect();
        let r = rw(2, IoOp::Read, 0, &diov);
        let mut chunk = Some(Chunk {
            buf: chunk.buf,
            start: 0,
            end: 0,
        });
        let mut at = 0u64;
        while at < len as u64 {
            let c = chunk.as_mut().expect("chunk");
            // SAFETY: as above (a read stages nothing).
            unsafe { pool.stage(c, &r, at) };
            let n = (c.end - c.start) as usize;
            // The "kernel" fills the buffer with the source bytes of this chunk.
            // SAFETY: n <= 8192 bytes of the pool buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.bytes()[7 + at as usize..].as_ptr(),
                    pool.ptr(c.buf),
                    n,
                )
            };
            // SAFETY: the chunk belongs to `r` and holds its bytes.
            unsafe { pool.copy_out(c, &r) };
            at = c.end;
        }
        assert_eq!(dst.bytes(), &src.bytes()[7..]);
        pool.release(&mut chunk);
        assert!(chunk.is_none());
        assert!(pool.take().is_some(), "the buffer is back");
    }
}
