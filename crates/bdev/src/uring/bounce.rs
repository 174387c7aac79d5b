//! Aligned bounce buffers for requests whose iovecs do not meet `O_DIRECT`'s alignment.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use crate::{BdevError, IoVec};

/// Alignment of every bounce buffer: a page, which covers any logical block size we serve
/// (512 or 4096) and any DMA alignment a device asks of direct I/O.
pub(super) const BOUNCE_ALIGN: usize = 4096;

/// A zero-filled, [`BOUNCE_ALIGN`]-aligned heap buffer.
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    /// `len` bytes (at least one), or `None` when the allocator refuses.
    pub(super) fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), BOUNCE_ALIGN).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| AlignedBuf { ptr, layout })
    }

    /// The start of the buffer.
    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed exactly once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// A channel's bounce buffers: `slots` buffers of `slot_size` bytes carved out of one aligned
/// allocation made when the channel opens, handed out and returned by index (no allocation per
/// request).
pub(super) struct BouncePool {
    mem: Option<AlignedBuf>,
    slot_size: usize,
    free: Vec<usize>,
}

impl BouncePool {
    /// A pool of `slots` buffers of `slot_size` bytes (a multiple of [`BOUNCE_ALIGN`]); `slots`
    /// may be zero.
    pub(super) fn new(slots: usize, slot_size: usize) -> Result<Self, BdevError> {
        debug_assert!(slot_size.is_multiple_of(BOUNCE_ALIGN));
        let mem = if slots == 0 {
            None
        } else {
            let len = slots.checked_mul(slot_size).ok_or_else(|| {
                BdevError::Os(std::io::Error::from(std::io::ErrorKind::OutOfMemory))
            })?;
            Some(AlignedBuf::new(len).ok_or_else(|| {
                BdevError::Os(std::io::Error::from(std::io::ErrorKind::OutOfMemory))
            })?)
        };
        Ok(BouncePool {
            mem,
            slot_size,
            free: (0..slots).rev().collect(),
        })
    }

    /// Bytes per buffer.
    pub(super) fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Whether the pool has any buffers at all.
    pub(super) fn is_empty_pool(&self) -> bool {
        self.mem.is_none()
    }

    /// A free buffer's index, or `None` while all are lent out.
    pub(super) fn take(&mut self) -> Option<usize> {
        self.free.pop()
    }

    /// Returns buffer `i` to the pool.
    pub(super) fn give(&mut self, i: usize) {
        debug_assert!(!self.free.contains(&i));
        self.free.push(i);
    }

    /// The start of buffer `i`.
    pub(super) fn ptr(&self, i: usize) -> *mut u8 {
        match &self.mem {
            // `i < slots` for every index `take` hands out, so this stays inside the allocation.
            Some(mem) => mem.as_ptr().wrapping_add(i * self.slot_size),
            None => std::ptr::null_mut(),
        }
    }

    /// Gives up the pool's memory without freeing it: for a channel that could not confirm the
    /// kernel has finished with its buffers.
    pub(super) fn leak(&mut self) {
        if let Some(mem) = self.mem.take() {
            std::mem::forget(mem);
        }
    }
}

/// Copies the bytes the iovecs describe, in order, to `dst`.
///
/// # Safety
/// Each iovec must describe a readable buffer of `iov_len` bytes, and `dst` must be valid for
/// writes of the sum of the lengths and overlap none of them.
pub(super) unsafe fn gather(iov: &[IoVec], dst: *mut u8) {
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
pub(super) unsafe fn scatter(src: *const u8, iov: &[IoVec]) {
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
        // SAFETY: as above, in the other direction.
        unsafe { std::ptr::write_bytes(buf.as_ptr(), 9, 5) };
        // SAFETY: as above.
        unsafe { scatter(buf.as_ptr(), &iov) };
        assert_eq!((a, b), ([9; 3], [9; 2]));
    }
}
