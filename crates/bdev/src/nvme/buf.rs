//! Page-aligned buffers: the bounce pool for requests whose iovecs miss the zero-copy
//! alignment, and scratch buffers for Identify data.
//!
//! The same shape as the io_uring bdev's bounce module (one allocation carved into fixed slots,
//! handed out by index), kept separate because that module is private to `uring`.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use crate::{BdevError, IoVec};

/// Alignment of every buffer: a page, which meets any DMA alignment and the NVMe PRP rules.
pub(super) const ALIGN: usize = 4096;

/// A zero-filled, [`ALIGN`]-aligned heap buffer.
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    /// `len` bytes (at least one), or `None` when the allocator refuses.
    pub(super) fn new(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), ALIGN).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| AlignedBuf { ptr, layout })
    }

    /// The start of the buffer.
    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The buffer's bytes.
    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: `layout.size()` initialised (zeroed) bytes owned by `self`; callers only look
        // while no device command is writing into the buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(self.layout)` and is freed exactly once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// `slots` buffers of `slot_size` bytes in one aligned allocation, made when the channel opens.
pub(super) struct BouncePool {
    mem: Option<AlignedBuf>,
    slot_size: usize,
    free: Vec<usize>,
}

impl BouncePool {
    /// A pool of `slots` (may be zero) buffers of `slot_size` bytes, a multiple of [`ALIGN`].
    pub(super) fn new(slots: usize, slot_size: usize) -> Result<Self, BdevError> {
        debug_assert!(slot_size.is_multiple_of(ALIGN));
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
            free: (0..slots).rev().collect(),
        })
    }

    /// Bytes per buffer (0 for an empty pool).
    pub(super) fn slot_size(&self) -> usize {
        if self.mem.is_some() {
            self.slot_size
        } else {
            0
        }
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
            // `i < slots` for every index `take` hands out: inside the allocation.
            Some(mem) => mem.as_ptr().wrapping_add(i * self.slot_size),
            None => std::ptr::null_mut(),
        }
    }

    /// Gives up the memory without freeing it: the kernel may still write into it.
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
        // SAFETY: the caller guarantees `src + pos` is readable, the destination and no overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.add(pos), v.iov_base.cast::<u8>(), v.iov_len) };
        pos += v.iov_len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_copies() {
        let mut pool = BouncePool::new(2, 8192).expect("pool");
        let a = pool.take().expect("a");
        let b = pool.take().expect("b");
        assert!(pool.take().is_none());
        assert_eq!(pool.ptr(a) as usize % ALIGN, 0);
        assert_eq!((pool.ptr(b) as usize).abs_diff(pool.ptr(a) as usize), 8192);
        pool.give(a);
        assert_eq!(pool.take(), Some(a));
        assert_eq!(BouncePool::new(0, 4096).expect("empty").slot_size(), 0);

        let mut x = [1u8, 2, 3];
        let mut y = [4u8, 5];
        let iov = [
            IoVec {
                iov_base: x.as_mut_ptr().cast(),
                iov_len: 3,
            },
            IoVec {
                iov_base: y.as_mut_ptr().cast(),
                iov_len: 2,
            },
        ];
        let buf = AlignedBuf::new(5).expect("buf");
        // SAFETY: 5 bytes of room; the iovecs describe 5 live bytes elsewhere.
        unsafe { gather(&iov, buf.as_ptr()) };
        assert_eq!(buf.bytes()[..5], [1, 2, 3, 4, 5]);
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(buf.as_ptr(), 7, 5) };
        // SAFETY: as above, the other way.
        unsafe { scatter(buf.as_ptr(), &iov) };
        assert_eq!((x, y), ([7; 3], [7; 2]));
    }
}
