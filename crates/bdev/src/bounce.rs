//! Page-aligned buffers for the kernel-backed bdevs: a channel's pool of bounce buffers for
//! requests whose iovecs miss the zero-copy alignment (one allocation made when the channel
//! opens, carved into fixed slots handed out by index), the copies in and out of them, and
//! one-off aligned buffers (a direct-I/O probe, Identify data).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use crate::memory::FreeList;
use crate::{BdevError, BdevIo, IoOp, IoVec};

/// Alignment of every buffer: a page, which covers any logical block size we serve (512 or
/// 4096), any DMA alignment a device asks of direct I/O, and the NVMe PRP rules.
pub(crate) const BOUNCE_ALIGN: usize = 4096;
/// Bytes per pool buffer: virtio-blk's `size_max` (one segment), so a misaligned request of one
/// segment always fits.
pub(crate) const BOUNCE_SLOT_SIZE: usize = 1 << 20;
/// Most pool buffers per channel (fewer when the depth is smaller).
pub(crate) const BOUNCE_SLOTS_MAX: usize = 16;

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

/// Where a read or write's data lives while the kernel moves it.
pub(crate) enum Bounce {
    /// In the request's own iovecs.
    None,
    /// In buffer `i` of the channel's pool.
    Pool(usize),
    /// In a buffer allocated for this request (larger than a pool buffer, or no pool).
    Owned(AlignedBuf),
}

/// Why [`BouncePool::stage`] gave a request no buffer.
pub(crate) enum StageError {
    /// Every pool buffer is lent to a request in flight: hand the request back, try later.
    NoBuffer,
    /// The request cannot be served (no memory for a buffer of its own): fail it.
    Failed,
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
        debug_assert!(slot_size.is_multiple_of(BOUNCE_ALIGN));
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

    /// Bytes per buffer (0 for an empty pool).
    pub(crate) fn slot_size(&self) -> usize {
        if self.mem.is_some() {
            self.slot_size
        } else {
            0
        }
    }

    /// Whether the pool has any buffers at all.
    pub(crate) fn is_empty_pool(&self) -> bool {
        self.mem.is_none()
    }

    /// A free buffer's index, or `None` while all are lent out.
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

    /// Stages a read or write of `io.len` bytes in one contiguous buffer: one of the pool's if
    /// it fits one, else one allocated for it (the rare path: larger than a pool buffer, or no
    /// pool). A write's data is gathered into it. Returns the buffer and its start.
    ///
    /// # Safety
    /// The request's iovec lengths must add up to `io.len` (`io_in_range`).
    pub(crate) unsafe fn stage(&mut self, io: &BdevIo) -> Result<(Bounce, *mut u8), StageError> {
        let len = usize::try_from(io.len).map_err(|_| StageError::Failed)?;
        let (bounce, dst) = if len <= self.slot_size() && !self.is_empty_pool() {
            let i = self.take().ok_or(StageError::NoBuffer)?;
            (Bounce::Pool(i), self.ptr(i))
        } else {
            let buf = AlignedBuf::new(len).ok_or(StageError::Failed)?;
            let dst = buf.as_ptr();
            (Bounce::Owned(buf), dst)
        };
        if io.op == IoOp::Write {
            // SAFETY: `dst` has room for `len` bytes (a pool buffer of at least `len`, or an
            // allocation of `len`), which is the sum of the iovec lengths (the caller's
            // promise); the iovecs are live readable request buffers (`BdevIo::with_iovecs`)
            // and none of them is channel memory.
            unsafe { gather(io.iovecs(), dst) };
        }
        Ok((bounce, dst))
    }

    /// The start of the buffer `bounce` names; `None` for [`Bounce::None`].
    pub(crate) fn buffer(&self, bounce: &Bounce) -> Option<*mut u8> {
        match bounce {
            Bounce::None => None,
            Bounce::Pool(i) => Some(self.ptr(*i)),
            Bounce::Owned(buf) => Some(buf.as_ptr()),
        }
    }

    /// Copies a bounced read's data out of its buffer into the request's iovecs; nothing for an
    /// unbounced one.
    ///
    /// # Safety
    /// `bounce` is what [`stage`](Self::stage) gave `io`, and holds the `io.len` bytes the
    /// kernel has read (it is done with the buffer); the iovec lengths add up to `io.len`.
    pub(crate) unsafe fn copy_out(&self, bounce: &Bounce, io: &BdevIo) {
        if let Some(src) = self.buffer(bounce) {
            // SAFETY: the bounce buffer holds `len` bytes the kernel has just read; the iovecs
            // describe `len` writable bytes of the request (the caller's promise) that live
            // until completion (`BdevIo::with_iovecs`), in other memory.
            unsafe { scatter(src, io.iovecs()) };
        }
    }

    /// Frees the buffer `bounce` names (back to the pool, or dropped) and leaves
    /// [`Bounce::None`].
    pub(crate) fn release(&mut self, bounce: &mut Bounce) {
        match std::mem::replace(bounce, Bounce::None) {
            Bounce::Pool(i) => self.give(i),
            Bounce::Owned(buf) => drop(buf),
            Bounce::None => {}
        }
    }
}

/// Copies the bytes the iovecs describe, in order, to `dst`.
///
/// # Safety
/// Each iovec must describe a readable buffer of `iov_len` bytes, and `dst` must be valid for
/// writes of the sum of the lengths and overlap none of them.
pub(crate) unsafe fn gather(iov: &[IoVec], dst: *mut u8) {
    let mut pos = 0;
    for v in iov {
        // SAFETY: the caller guarantees the source buffer, room at `dst + pos` and no overlap.
        unsafe { std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), dst.add(pos), v.iov_len) };
        pos += v.iov_len;
    }
}

/// Copies `src`, in order, into the buffers the iovecs describe.
///
/// # Safety
/// Each iovec must describe a writable buffer of `iov_len` bytes, and `src` must be valid for
/// reads of the sum of the lengths and overlap none of them.
pub(crate) unsafe fn scatter(src: *const u8, iov: &[IoVec]) {
    let mut pos = 0;
    for v in iov {
        // SAFETY: the caller guarantees `src + pos` is readable, the destination buffer and no
        // overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.add(pos), v.iov_base.cast::<u8>(), v.iov_len) };
        pos += v.iov_len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(BouncePool::new(0, 4096).expect("empty").is_empty_pool());
    }

    #[test]
    fn pool_buffers_are_adjacent_and_an_empty_pool_has_none() {
        let mut pool = BouncePool::new(2, 8192).expect("pool");
        let a = pool.take().expect("a");
        let b = pool.take().expect("b");
        assert!(pool.take().is_none());
        assert_eq!(pool.ptr(a) as usize % BOUNCE_ALIGN, 0);
        assert_eq!((pool.ptr(b) as usize).abs_diff(pool.ptr(a) as usize), 8192);
        pool.give(a);
        assert_eq!(pool.take(), Some(a));
        assert_eq!(BouncePool::new(0, 4096).expect("empty").slot_size(), 0);
    }

    #[test]
    fn gather_and_scatter_round_trip() {
        let mut a = [1u8, 2, 3];
        let mut b = [4u8, 5];
        let iov = [
            IoVec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 3,
            },
            IoVec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 2,
            },
        ];
        let buf = AlignedBuf::new(5).expect("buf");
        // SAFETY: the buffer has 5 bytes; the iovecs describe 5 live bytes elsewhere.
        unsafe { gather(&iov, buf.as_ptr()) };
        // SAFETY: 5 initialised bytes at the start of the buffer.
        let got = unsafe { std::slice::from_raw_parts(buf.as_ptr(), 5) }.to_vec();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        // SAFETY: no request uses the buffer.
        assert_eq!(unsafe { buf.bytes() }[..5], [1, 2, 3, 4, 5]);
        for fill in [9, 7] {
            // SAFETY: as above, in the other direction.
            unsafe { std::ptr::write_bytes(buf.as_ptr(), fill, 5) };
            // SAFETY: as above.
            unsafe { scatter(buf.as_ptr(), &iov) };
            assert_eq!((a, b), ([fill; 3], [fill; 2]));
        }
    }
}
