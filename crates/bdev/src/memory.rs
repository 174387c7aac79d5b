//! Helpers shared by the bdevs' channels: request bookkeeping that never allocates after the
//! channel opens, range checks, and the malloc bdev's memory.

use std::collections::VecDeque;

use crate::{BdevError, BdevIo, Completion};

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

    /// Bytes a ring of `depth` reserves.
    pub(crate) fn footprint(depth: usize) -> usize {
        depth.max(1) * std::mem::size_of::<Completion>()
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
pub(crate) fn zero_iovecs(io: &BdevIo) {
    for v in io.iovecs() {
        // SAFETY: BdevIo::with_iovecs' contract: each iovec describes a live buffer of iov_len
        // bytes that this request may write.
        unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
    }
}

/// The size of a transparent huge page on x86-64 and most arm64 kernels.
pub(crate) const HUGE_PAGE: usize = 2 << 20;
/// A cache line.
const LINE: usize = 64;

/// The most bytes of one request [`AnonMapping::prefetch`] loads ahead.
const PREFETCH_MAX: usize = 8192;

/// The size the page-by-page fallback of [`AnonMapping::populate`] steps by.
const PAGE: usize = 4096;

/// An anonymous, lazily zero-filled private mapping: the malloc bdev's RAM. It is reserved
/// whole when made (`MAP_NORESERVE`: address space, not memory; nothing is resident until
/// touched) and never moves or shrinks while it lives, so a disk can grow inside it under
/// requests in flight. Its start is aligned to [`HUGE_PAGE`] so that, with `huge`, the kernel
/// can back it with transparent huge pages (`MADV_HUGEPAGE`: fewer TLB misses on a large RAM
/// disk, no hugetlbfs setup).
pub(crate) struct AnonMapping {
    ptr: *mut u8,
    len: usize,
    huge: bool,
}

// SAFETY: the mapping is plain memory owned by this value; concurrent access from several
// channels is by raw copies only, like a disk shared by several queues (see io.rs on copies
// into shared memory).
unsafe impl Send for AnonMapping {}
// SAFETY: as above; no Rust references into the mapping are ever handed out.
unsafe impl Sync for AnonMapping {}

impl AnonMapping {
    /// Reserves `len` bytes (at least one), aligned to [`HUGE_PAGE`], with `MADV_HUGEPAGE` when
    /// `huge` (which the kernel may refuse: then [`huge`](Self::huge) says no).
    pub(crate) fn new(len: usize, huge: bool) -> Result<Self, BdevError> {
        let len = len.max(1);
        let oom = || BdevError::Os(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        let reserve = len.checked_add(HUGE_PAGE).ok_or_else(oom)?;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(BdevError::Os(std::io::Error::last_os_error()));
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let (head, tail) = (aligned - start, start + reserve - (aligned + len));
        // SAFETY: both ranges are the unaligned head and the tail of the mapping just made,
        // outside `[aligned, aligned + len)`, and nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        let ptr = aligned as *mut u8;
        let huge = huge
            // SAFETY: advice on our own fresh mapping; it changes no contents.
            && unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) } == 0;
        Ok(AnonMapping { ptr, len, huge })
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The start of the mapping (tests compare it across a resize).
    #[cfg(test)]
    pub(crate) fn ptr_for_tests(&self) -> usize {
        self.ptr as usize
    }

    /// Bytes of the mapping resident in memory (`mincore`).
    #[cfg(test)]
    pub(crate) fn resident_for_tests(&self) -> usize {
        let pages = self.len.div_ceil(PAGE);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is our own mapping; `vec` has a byte per page.
        let rc = unsafe { libc::mincore(self.ptr.cast(), self.len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 != 0).count() * PAGE
    }

    /// Whether the kernel took the transparent-huge-page advice.
    pub(crate) fn huge(&self) -> bool {
        self.huge
    }

    /// Makes the first `len` bytes resident now (a "filled" RAM disk: no page faults on first
    /// access): `MADV_POPULATE_WRITE` (Linux 5.14+), else a write of zero per page. Contents are
    /// unchanged (zero pages stay zero; written ones keep their data).
    pub(crate) fn populate(&self, len: usize) -> Result<(), BdevError> {
        let len = len.min(self.len);
        // SAFETY: advice on our own mapping; populating changes no contents.
        let rc = unsafe { libc::madvise(self.ptr.cast(), len, libc::MADV_POPULATE_WRITE) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            // ENOMEM, EFAULT, EHWPOISON: the memory is not there to have.
            return Err(BdevError::Os(e));
        }
        // Older kernels: touch every page. An atomic add of zero writes without changing a
        // byte another thread may be writing.
        for at in (0..len).step_by(PAGE) {
            // SAFETY: `at < len <= self.len`, inside the mapping; an AtomicU8 has no
            // alignment requirement and the memory is only ever accessed by raw copies.
            let byte = unsafe { &*(self.ptr.add(at) as *const std::sync::atomic::AtomicU8) };
            byte.fetch_add(0, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Starts loading the first [`PREFETCH_MAX`] bytes of `[offset, offset + len)` into the
    /// L2 cache (PREFETCHT2), for a copy that comes soon; nothing outside the mapping is
    /// touched. Into L2 rather than L1: a profile of PREFETCHT0 had the reactor waiting on the
    /// prefetches themselves, and T2 measured better (docs/benchmarks.md).
    pub(crate) fn prefetch(&self, offset: u64, len: u64) {
        let Some(end) = self.range_end(offset, len) else {
            return;
        };
        let start = offset as usize;
        let end = end.min(start.saturating_add(PREFETCH_MAX));
        let mut at = start & !(LINE - 1);
        while at < end {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT2 only hints the cache; it cannot fault or write, and `at` lies
            // in the mapping (`at < end <= self.len`).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T2 }>(
                    self.ptr.add(at).cast(),
                );
            }
            at += LINE;
        }
    }

    /// Whether `[offset, offset + len)` lies inside the mapping; its end if so.
    fn range_end(&self, offset: u64, len: u64) -> Option<usize> {
        let end = usize::try_from(offset.checked_add(len)?).ok()?;
        (end <= self.len).then_some(end)
    }

    /// Copies the device bytes at `offset` into the request's iovecs. Returns `false`, having
    /// copied at most part of it, if the request reaches past the mapping (`offset + io.len`,
    /// or iovecs that add up to more than `io.len`).
    pub(crate) fn read_into(&self, offset: u64, io: &BdevIo) -> bool {
        let Some(end) = self.range_end(offset, io.len) else {
            return false;
        };
        let mut pos = offset as usize;
        for v in io.iovecs() {
            if v.iov_len > end - pos {
                return false;
            }
            // SAFETY: pos + iov_len <= end <= self.len (checked above), so the source lies in
            // the mapping; the destination is a live request buffer of iov_len bytes per
            // BdevIo's contract; the two never overlap (request buffers are guest memory or the
            // caller's, never this private mapping).
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.add(pos), v.iov_base.cast(), v.iov_len)
            };
            pos += v.iov_len;
        }
        true
    }

    /// Copies the request's iovecs into the device at `offset`; `false` as in
    /// [`read_into`](Self::read_into).
    pub(crate) fn write_from(&self, offset: u64, io: &BdevIo) -> bool {
        let Some(end) = self.range_end(offset, io.len) else {
            return false;
        };
        let mut pos = offset as usize;
        for v in io.iovecs() {
            if v.iov_len > end - pos {
                return false;
            }
            // SAFETY: as in read_into, with the copy reversed.
            unsafe {
                std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), self.ptr.add(pos), v.iov_len)
            };
            pos += v.iov_len;
        }
        true
    }

    /// Makes `[offset, offset + len)` read as zeroes, giving whole pages back to the kernel;
    /// `false` (nothing changed) if the range reaches past the mapping.
    pub(crate) fn zero(&self, offset: u64, len: u64) -> bool {
        let Some(end) = self.range_end(offset, len) else {
            return false;
        };
        let start = offset as usize;
        let page_start = start.next_multiple_of(PAGE);
        let page_end = end / PAGE * PAGE;
        if page_start < page_end {
            // SAFETY: [start, end) lies inside the mapping (`range_end`).
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
        true
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no references into it outlive self.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{rw, Buf};
    use crate::IoOp;

    /// The mapping checks every access against its own length, whatever the caller checked.
    #[test]
    fn mapping_refuses_accesses_past_its_end() {
        let m = AnonMapping::new(8192, false).expect("map");
        let buf = Buf::new(8192, 0x5a);
        let iov = [buf.iov(0, 4096)];
        assert!(m.write_from(4096, &rw(1, IoOp::Write, 4096, &iov)));
        assert!(!m.write_from(4097, &rw(1, IoOp::Write, 4097, &iov)));
        assert!(!m.read_into(u64::MAX - 10, &rw(1, IoOp::Read, 0, &iov)));
        // A request whose iovecs add up to more than its length: the length fits, the iovecs
        // do not; refused before copying past the end.
        let two = [buf.iov(0, 4096), buf.iov(4096, 4096)];
        // SAFETY: the buffer outlives the request.
        let lying = unsafe { BdevIo::with_iovecs(2, IoOp::Read, 4096, 4096, two.as_ptr(), 2) };
        assert!(!m.read_into(4096, &lying));
        assert!(m.zero(0, 8192));
        assert!(!m.zero(4096, 4097));
        // Prefetch hints for ranges past the end, overflowing or empty, do nothing.
        m.prefetch(4096, 4097);
        m.prefetch(u64::MAX - 10, 4096);
        m.prefetch(8192, 0);
        m.prefetch(0, u64::MAX);
        assert!(!m.zero(u64::MAX, 2));
        let out = Buf::new(4096, 1);
        let oiov = [out.iov(0, 4096)];
        assert!(m.read_into(4096, &rw(3, IoOp::Read, 4096, &oiov)));
        assert!(out.bytes().iter().all(|&b| b == 0));
    }
}

#[cfg(test)]
mod thp_tests {
    use super::*;

    /// The AnonHugePages (bytes) of the mapping that starts at `addr`, from /proc/self/smaps.
    pub(crate) fn anon_huge_bytes(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, _)) = range.split_once('-') {
                    if let Ok(lo) = usize::from_str_radix(lo, 16) {
                        inside = lo == addr;
                        continue;
                    }
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    return kb
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .map(|k| k << 10);
                }
            }
        }
        None
    }

    fn thp_mode() -> String {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default()
    }

    /// The mapping starts on a huge-page boundary; with the advice taken and THP not "[never]",
    /// populating it makes huge pages; without the advice in "[madvise]" mode it gets none;
    /// populating changes no data.
    #[test]
    fn huge_pages_when_advised() {
        let len = 8 * HUGE_PAGE;
        let mode = thp_mode();
        eprintln!("transparent_hugepage/enabled: {}", mode.trim());
        let m = AnonMapping::new(len, true).expect("map");
        assert_eq!(m.ptr as usize % HUGE_PAGE, 0);
        assert_eq!(m.len(), len);
        let buf = crate::testing::Buf::new(4096, 0x3c);
        let iov = [buf.iov(0, 4096)];
        assert!(m.write_from(
            5 * 4096,
            &crate::testing::rw(1, crate::IoOp::Write, 20480, &iov)
        ));
        m.populate(len).expect("populate");
        let out = crate::testing::Buf::new(4096, 0);
        let oiov = [out.iov(0, 4096)];
        assert!(m.read_into(
            5 * 4096,
            &crate::testing::rw(2, crate::IoOp::Read, 20480, &oiov)
        ));
        assert!(
            out.bytes().iter().all(|&b| b == 0x3c),
            "populate kept the data"
        );
        let huge = anon_huge_bytes(m.ptr as usize).expect("the mapping in smaps");
        eprintln!("advised: {huge} bytes in huge pages of {len}");
        if mode.contains("[never]") {
            assert_eq!(huge, 0);
        } else {
            assert!(m.huge(), "advice taken");
            // The kernel may fail to find free 2 MiB pages; most of them should be huge.
            assert!(huge >= (len / 2) as u64, "{huge} of {len} in huge pages");
        }
        let plain = AnonMapping::new(len, false).expect("map");
        plain.populate(len).expect("populate");
        let none = anon_huge_bytes(plain.ptr as usize).expect("in smaps");
        eprintln!("not advised: {none} bytes in huge pages");
        if mode.contains("[madvise]") || mode.contains("[never]") {
            assert_eq!(none, 0);
        }
    }
}
