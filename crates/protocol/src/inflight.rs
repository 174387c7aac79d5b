//! Inflight I/O tracking (vhost-user INFLIGHT_SHMFD) for split rings, in the layout
//! libvhost-user uses. The region is shared memory the frontend keeps across backend restarts;
//! the reactor records each request's head when popped and clears it once its used element is
//! published, so a restarted target can resubmit exactly the requests the old one left unfinished.
//!
//! Per queue (`queue_region_size` bytes, 64-byte aligned):
//! ```text
//! u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//! struct { u8 inflight; u8 padding[5]; u16 next; u64 counter; } desc[desc_num];
//! ```

use std::fmt;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{compiler_fence, fence, Ordering};
use std::sync::Arc;

use crate::sigbus::SharedMapping;

const HEADER: usize = 16;
const DESC: usize = 16;
const ALIGN: u64 = 64;
const VERSION: u16 = 1;
const MAX_QUEUE_SIZE: u16 = 32768;

/// Bytes one queue's part of the region takes (libvhost-user's `vu_inflight_queue_size`).
pub fn queue_region_size(queue_size: u16) -> u64 {
    (DESC as u64 * u64::from(queue_size) + 2).next_multiple_of(ALIGN)
}

/// A region the frontend handed over that cannot be used.
#[derive(Debug)]
pub enum InflightError {
    /// num_queues is zero, or queue_size is zero, over 32768 or not a power of two.
    BadGeometry,
    /// mmap_size or the file is smaller than num_queues regions of queue_size.
    TooSmall,
    /// The queue's ring is larger than the region's queue_size, or a recorded head is out of
    /// range.
    Mismatch,
    /// Creating, sizing or mapping the shared memory failed.
    Os(std::io::Error),
}

impl fmt::Display for InflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InflightError::BadGeometry => f.write_str("bad inflight region geometry"),
            InflightError::TooSmall => f.write_str("inflight region is too small"),
            InflightError::Mismatch => f.write_str("inflight region does not match the ring"),
            InflightError::Os(e) => write!(f, "inflight region: {e}"),
        }
    }
}

impl std::error::Error for InflightError {}

/// A mapped inflight region covering `num_queues` queues of `queue_size` descriptors.
pub struct InflightRegion {
    ptr: *mut u8,
    num_queues: u16,
    queue_size: u16,
    /// Owns the mapping (unmapped when the region goes).
    _mapping: SharedMapping,
}

// SAFETY: the mapping is plain shared memory owned by this value; queues write disjoint parts of
// it from their one reactor each, and the control plane only reads the geometry.
unsafe impl Send for InflightRegion {}
// SAFETY: as above; no Rust references into the mapping are handed out.
unsafe impl Sync for InflightRegion {}

fn check_geometry(num_queues: u16, queue_size: u16) -> Result<u64, InflightError> {
    if num_queues == 0
        || queue_size == 0
        || queue_size > MAX_QUEUE_SIZE
        || !queue_size.is_power_of_two()
    {
        return Err(InflightError::BadGeometry);
    }
    Ok(queue_region_size(queue_size) * u64::from(num_queues))
}

impl InflightRegion {
    /// GET_INFLIGHT_FD: a new zeroed, sealed memfd region; returns it and the fd to send.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<(Self, File), InflightError> {
        let size = check_geometry(num_queues, queue_size)?;
        // SAFETY: memfd_create with a NUL-terminated name; the returned fd is owned below.
        let fd = unsafe {
            libc::memfd_create(
                c"spinblk-inflight".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(InflightError::Os(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(InflightError::Os)?;
        // Seal the size so neither side can shrink it under the other's mapping (SIGBUS).
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                fd,
                libc::F_ADD_SEALS,
                libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
            )
        };
        let region = Self::map(&file, 0, size, num_queues, queue_size)?;
        Ok((region, file))
    }

    /// SET_INFLIGHT_FD: maps a region the frontend kept, after checking that `mmap_size` and
    /// the file itself are large enough for the geometry it claims.
    pub fn map(
        file: &File,
        offset: u64,
        mmap_size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        let need = check_geometry(num_queues, queue_size)?;
        let file_len = file.metadata().map_err(InflightError::Os)?.len();
        // The frontend's claimed size must fit the geometry and the file (a region it says is
        // larger than its file is inconsistent, even if the part we map would fit).
        if mmap_size < need
            || offset
                .checked_add(mmap_size)
                .is_none_or(|end| end > file_len)
        {
            return Err(InflightError::TooSmall);
        }
        let len = usize::try_from(need).map_err(|_| InflightError::TooSmall)?;
        // Checked against the file and guarded: a frontend that truncates its file later gets
        // zero pages in the target, not a SIGBUS of the whole process.
        let mapping = SharedMapping::map(file, offset, len).map_err(InflightError::Os)?;
        Ok(InflightRegion {
            ptr: mapping.as_ptr(),
            num_queues,
            queue_size,
            _mapping: mapping,
        })
    }

    /// The part for queue `index`, for a ring of `ring_size` descriptors.
    pub fn queue(
        self: &Arc<Self>,
        index: u16,
        ring_size: u16,
    ) -> Result<InflightQueue, InflightError> {
        if index >= self.num_queues || ring_size > self.queue_size {
            return Err(InflightError::Mismatch);
        }
        let offset = queue_region_size(self.queue_size) as usize * usize::from(index);
        // SAFETY: offset + queue_region_size <= len by the geometry check in `map`.
        let base = unsafe { self.ptr.add(offset) };
        Ok(InflightQueue {
            _region: Arc::clone(self),
            base,
            ring_size,
            counter: 0,
        })
    }
}

/// What a restarted queue must do before taking new requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Heads to resubmit, oldest submission first.
    pub resubmit: Vec<u16>,
    /// The used ring's index: where completions continue.
    pub used_idx: u16,
    /// Where popping new requests continues: `used_idx` plus the requests still in flight.
    pub next_avail: u16,
}

/// One queue's part of the region, written only by the reactor that polls the queue.
pub struct InflightQueue {
    _region: Arc<InflightRegion>,
    base: *mut u8,
    ring_size: u16,
    counter: u64,
}

// SAFETY: an InflightQueue is created on the control plane and moved once to the reactor that
// polls its queue; its part of the mapping is written by that reactor alone, and the Arc keeps
// the mapping alive.
unsafe impl Send for InflightQueue {}

impl InflightQueue {
    fn at<T>(&self, offset: usize) -> *mut T {
        // SAFETY: every caller passes an offset inside this queue's part (header fields, or a
        // descriptor below ring_size <= the region's queue_size).
        unsafe { self.base.add(offset).cast() }
    }
    fn read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: `at` stays in the mapping; fields are naturally aligned (64-byte aligned
        // base, 16-byte records); volatile because the frontend shares the memory.
        unsafe { std::ptr::read_volatile(self.at::<T>(offset)) }
    }
    fn write<T: Copy>(&self, offset: usize, value: T) {
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_volatile(self.at::<T>(offset), value) }
    }
    fn version(&self) -> u16 {
        self.read(8)
    }
    fn desc_inflight(&self, head: u16) -> bool {
        self.read::<u8>(HEADER + DESC * usize::from(head)) != 0
    }
    fn set_desc_inflight(&self, head: u16, on: bool) {
        self.write::<u8>(HEADER + DESC * usize::from(head), u8::from(on));
    }
    fn desc_counter(&self, head: u16) -> u64 {
        self.read(HEADER + DESC * usize::from(head) + 8)
    }

    /// Called when the queue starts, with the used ring's current index. A fresh (or reset)
    /// region is initialised and `None` returned: the frontend's vring base stands. Otherwise
    /// the requests the previous backend left in flight are returned for resubmission, and a
    /// crash between publishing used elements and clearing their inflight flags is repaired:
    /// the heads of the used entries between the region's `used_idx` and the ring's are read
    /// back through `used_head(idx)` (the target publishes a whole pass's elements with one
    /// store of the used index, so there can be several), and `last_batch_head` is cleared too.
    pub fn recover(
        &mut self,
        ring_used_idx: u16,
        used_head: impl Fn(u16) -> u16,
    ) -> Result<Option<Recovery>, InflightError> {
        if self.version() == 0 {
            self.write::<u64>(0, 0);
            self.write::<u16>(10, self.ring_size);
            self.write::<u16>(12, 0);
            self.write::<u16>(14, ring_used_idx);
            compiler_fence(Ordering::SeqCst);
            self.write::<u16>(8, VERSION);
            self.counter = 0;
            return Ok(None);
        }
        let desc_num: u16 = self.read(10);
        if desc_num != self.ring_size {
            return Err(InflightError::Mismatch);
        }
        let recorded_used: u16 = self.read(14);
        if recorded_used != ring_used_idx {
            // The used index went out but the inflight flags were not cleared yet.
            let last: u16 = self.read(12);
            if last >= self.ring_size {
                return Err(InflightError::Mismatch);
            }
            self.set_desc_inflight(last, false);
            let published = ring_used_idx.wrapping_sub(recorded_used);
            if published > self.ring_size {
                return Err(InflightError::Mismatch);
            }
            for i in 0..published {
                let head = used_head(recorded_used.wrapping_add(i));
                if head < self.ring_size {
                    self.set_desc_inflight(head, false);
                }
            }
            compiler_fence(Ordering::SeqCst);
            self.write::<u16>(14, ring_used_idx);
        }
        let mut pending: Vec<(u64, u16)> = (0..self.ring_size)
            .filter(|&h| self.desc_inflight(h))
            .map(|h| (self.desc_counter(h), h))
            .collect();
        pending.sort_unstable();
        // The counters came from the region (frontend-supplied memory): never overflow on them.
        self.counter = pending.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        let inuse = pending.len() as u16;
        Ok(Some(Recovery {
            resubmit: pending.into_iter().map(|(_, h)| h).collect(),
            used_idx: ring_used_idx,
            next_avail: ring_used_idx.wrapping_add(inuse),
        }))
    }

    /// Records `head` as in flight (at pop; counter first, then the flag).
    pub fn mark_popped(&mut self, head: u16) {
        if head >= self.ring_size {
            return;
        }
        let off = HEADER + DESC * usize::from(head);
        self.write::<u64>(off + 8, self.counter);
        self.counter += 1;
        compiler_fence(Ordering::SeqCst);
        self.write::<u8>(off, 1);
    }

    /// Before the used element for `head` is written.
    pub fn before_used(&self, head: u16) {
        self.write::<u16>(12, head);
        compiler_fence(Ordering::SeqCst);
    }

    /// After the used index went from `old` to `new` (one pass's elements, published with one
    /// store): clears the inflight flags of their heads (read back through `used_head(idx)`),
    /// then records `new`. Stores only, ordered by release fences (compiler barriers on x86,
    /// as libvhost-user does), since only a later process reads the region.
    pub fn after_publish(&self, old: u16, new: u16, used_head: impl Fn(u16) -> u16) {
        fence(Ordering::Release);
        let mut i = old;
        while i != new {
            let head = used_head(i);
            if head < self.ring_size {
                self.set_desc_inflight(head, false);
            }
            i = i.wrapping_add(1);
        }
        fence(Ordering::Release);
        self.write::<u16>(14, new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For recoveries where the used ring holds nothing the test cares about.
    fn no_used(_: u16) -> u16 {
        u16::MAX
    }

    fn region(queues: u16, size: u16) -> Arc<InflightRegion> {
        let (r, _file) = InflightRegion::create(queues, size).expect("memfd region");
        Arc::new(r)
    }

    #[test]
    fn sizes_match_libvhost_user() {
        assert_eq!(queue_region_size(128), 2112);
        assert_eq!(queue_region_size(256), 4160);
        assert_eq!(queue_region_size(1), 64);
    }

    #[test]
    fn fresh_region_starts_clean_and_tracks() {
        let r = region(2, 8);
        let mut q = r.queue(1, 8).expect("queue 1");
        assert_eq!(
            q.recover(5, no_used).expect("fresh"),
            None,
            "a fresh region keeps the vring base"
        );
        q.mark_popped(3);
        q.mark_popped(1);
        q.before_used(3);
        q.after_publish(5, 6, |_| 3);
        // A new process mapping the same memory finds head 1 in flight.
        let mut again = r.queue(1, 8).expect("queue 1");
        let rec = again
            .recover(6, no_used)
            .expect("recover")
            .expect("recovery");
        assert_eq!(
            rec,
            Recovery {
                resubmit: vec![1],
                used_idx: 6,
                next_avail: 7
            }
        );
    }

    #[test]
    fn resubmission_follows_submission_order() {
        let r = region(1, 16);
        let mut q = r.queue(0, 16).expect("queue");
        q.recover(0, no_used).expect("fresh");
        for head in [9, 2, 14, 5] {
            q.mark_popped(head);
        }
        let mut again = r.queue(0, 16).expect("queue");
        let rec = again
            .recover(0, no_used)
            .expect("recover")
            .expect("recovery");
        assert_eq!(rec.resubmit, vec![9, 2, 14, 5]);
        assert_eq!(rec.next_avail, 4);
        // New pops continue the counter after the old ones.
        again.mark_popped(0);
        let mut third = r.queue(0, 16).expect("queue");
        assert_eq!(
            third
                .recover(0, no_used)
                .expect("recover")
                .expect("recovery")
                .resubmit,
            vec![9, 2, 14, 5, 0]
        );
    }

    #[test]
    fn crash_after_used_index_before_clearing_is_repaired() {
        let r = region(1, 8);
        let mut q = r.queue(0, 8).expect("queue");
        q.recover(0, no_used).expect("fresh");
        q.mark_popped(4);
        q.mark_popped(6);
        q.before_used(4);
        // ... the used element and used idx (now 1) went out, then the process died.
        let mut again = r.queue(0, 8).expect("queue");
        let rec = again
            .recover(1, no_used)
            .expect("recover")
            .expect("recovery");
        assert_eq!(
            rec,
            Recovery {
                resubmit: vec![6],
                used_idx: 1,
                next_avail: 2
            }
        );
    }

    #[test]
    fn crash_after_publishing_a_batch_clears_every_published_head() {
        let r = region(1, 8);
        let mut q = r.queue(0, 8).expect("queue");
        q.recover(0, no_used).expect("fresh");
        for head in [1, 2, 3, 5] {
            q.mark_popped(head);
        }
        q.before_used(2);
        q.before_used(3);
        // One pass published used entries 0..2 (heads 2 and 3) and died before clearing.
        let used = [2u16, 3];
        let mut again = r.queue(0, 8).expect("queue");
        let rec = again
            .recover(2, |i| used[usize::from(i) % 2])
            .expect("recover")
            .expect("recovery");
        assert_eq!(
            rec,
            Recovery {
                resubmit: vec![1, 5],
                used_idx: 2,
                next_avail: 4
            }
        );
    }

    #[test]
    fn crash_before_used_index_resubmits() {
        let r = region(1, 8);
        let mut q = r.queue(0, 8).expect("queue");
        q.recover(0, no_used).expect("fresh");
        q.mark_popped(4);
        q.before_used(4);
        // The used element may be written, but the index still says 0: request 4 runs again.
        let mut again = r.queue(0, 8).expect("queue");
        let rec = again
            .recover(0, no_used)
            .expect("recover")
            .expect("recovery");
        assert_eq!(
            rec,
            Recovery {
                resubmit: vec![4],
                used_idx: 0,
                next_avail: 1
            }
        );
    }

    #[test]
    fn wrong_sizes_are_rejected() {
        assert!(matches!(
            InflightRegion::create(0, 128),
            Err(InflightError::BadGeometry)
        ));
        assert!(matches!(
            InflightRegion::create(1, 100),
            Err(InflightError::BadGeometry)
        ));
        let (_r, file) = InflightRegion::create(1, 128).expect("region");
        // Claims more queues than the file holds: refused, not a SIGBUS later.
        assert!(matches!(
            InflightRegion::map(&file, 0, 1 << 20, 4, 128),
            Err(InflightError::TooSmall)
        ));
        assert!(matches!(
            InflightRegion::map(&file, 0, 64, 1, 128),
            Err(InflightError::TooSmall)
        ));
        assert!(matches!(
            InflightRegion::map(&file, 4096, 2112, 1, 128),
            Err(InflightError::TooSmall)
        ));
        let r = Arc::new(InflightRegion::map(&file, 0, 2112, 1, 128).expect("exact fit"));
        assert!(
            matches!(r.queue(1, 128), Err(InflightError::Mismatch)),
            "queue index past num_queues"
        );
        assert!(
            matches!(r.queue(0, 256), Err(InflightError::Mismatch)),
            "ring larger than the region"
        );
        // A region whose header says another ring size is refused at recovery.
        let mut q = r.queue(0, 128).expect("queue");
        q.recover(0, no_used).expect("fresh");
        let mut small = r.queue(0, 64).expect("smaller ring fits");
        assert!(matches!(
            small.recover(0, no_used),
            Err(InflightError::Mismatch)
        ));
    }
}
