//! The malloc bdev: a RAM disk, SPDK's `bdev_malloc_create`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::memory::{io_in_range, AnonMapping, CompletionRing};
use crate::{Bdev, BdevError, BdevIo, Completion, IoChannel, IoOp, IoStatus};

/// How [`MallocBdev::with_options`] makes its RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MallocOptions {
    /// Back the disk with transparent huge pages (`MADV_HUGEPAGE` on a 2 MiB-aligned mapping):
    /// fewer TLB misses on large disks, no hugetlbfs setup. Needs THP in "always" or "madvise"
    /// mode (`/sys/kernel/mm/transparent_hugepage/enabled`); otherwise a no-op. A write to an
    /// untouched 2 MiB range then makes 2 MiB resident, not 4 KiB.
    pub huge_pages: bool,
    /// Make the whole disk resident when it is created ("filled", as SPDK's malloc bdev is),
    /// so no request pays a page fault: for benchmarks. Off, memory is taken as blocks are first
    /// written (and untouched blocks read as zeroes for free).
    pub prefault: bool,
    /// Address space to reserve for growing ([`Bdev::resize`]); never less than the size.
    /// `None`: four times the size, at least 64 GiB (address space only: nothing is resident or
    /// accounted until written). If the system refuses that much, the bdev reserves just its
    /// size and cannot grow.
    pub max_size: Option<u64>,
}

impl Default for MallocOptions {
    /// Transparent huge pages, not prefaulted, default growth reserve.
    fn default() -> Self {
        MallocOptions {
            huge_pages: true,
            prefault: false,
            max_size: None,
        }
    }
}

/// The reserve when [`MallocOptions::max_size`] is `None`: four times the size, at least this.
const MIN_DEFAULT_RESERVE: u64 = 64 << 30;

/// A RAM-backed bdev. Memory is reserved lazily (untouched blocks cost nothing and read as
/// zeroes, unless [prefaulted](MallocOptions::prefault)) and discarded ranges are given back to
/// the kernel. The mapping is reserved at its maximum size up front, so the disk can grow
/// ([`Bdev::resize`]) without moving memory under requests in flight; channels check requests
/// against the mapping, not against the current size (the protocol layer checks the size).
pub struct MallocBdev {
    name: String,
    block_size: u32,
    num_blocks: AtomicU64,
    mem: Arc<AnonMapping>,
}

impl MallocBdev {
    /// A RAM disk of `size_bytes`, which must be a non-zero multiple of `block_size` (512 or
    /// 4096), with [`MallocOptions::default`].
    pub fn new(name: &str, size_bytes: u64, block_size: u32) -> Result<Self, BdevError> {
        Self::with_options(name, size_bytes, block_size, MallocOptions::default())
    }

    /// A RAM disk of `size_bytes` made as `options` say.
    pub fn with_options(
        name: &str,
        size_bytes: u64,
        block_size: u32,
        options: MallocOptions,
    ) -> Result<Self, BdevError> {
        check_geometry(size_bytes, block_size)?;
        let too_large = |n: u64| BdevError::InvalidGeometry(format!("{n} bytes is too large"));
        let len = usize::try_from(size_bytes).map_err(|_| too_large(size_bytes))?;
        let max = options
            .max_size
            .unwrap_or_else(|| size_bytes.saturating_mul(4).max(MIN_DEFAULT_RESERVE))
            .max(size_bytes);
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(len);
        let mem = match AnonMapping::new(max, options.huge_pages) {
            Ok(m) => m,
            // Not that much address space (RLIMIT_AS, strict overcommit): no room to grow.
            Err(_) if max > len => AnonMapping::new(len, options.huge_pages)?,
            Err(e) => return Err(e),
        };
        if options.prefault {
            mem.populate(len)?;
        }
        Ok(MallocBdev {
            name: name.to_string(),
            block_size,
            num_blocks: AtomicU64::new(size_bytes / u64::from(block_size)),
            mem: Arc::new(mem),
        })
    }

    /// The largest size [`Bdev::resize`] can grow to: the address space reserved.
    pub fn max_size_bytes(&self) -> u64 {
        let bs = u64::from(self.block_size);
        self.mem.len() as u64 / bs * bs
    }

    /// Whether the kernel took the transparent-huge-page advice for the disk's memory.
    pub fn huge_pages(&self) -> bool {
        self.mem.huge()
    }
}

/// Rejects block sizes other than 512/4096 and sizes that are zero or not whole blocks.
pub(crate) fn check_geometry(size_bytes: u64, block_size: u32) -> Result<(), BdevError> {
    if block_size != 512 && block_size != 4096 {
        return Err(BdevError::InvalidGeometry(format!(
            "block size {block_size} (must be 512 or 4096)"
        )));
    }
    if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(block_size)) {
        return Err(BdevError::InvalidGeometry(format!(
            "size {size_bytes} is not a non-zero multiple of the block size {block_size}"
        )));
    }
    Ok(())
}

impl Bdev for MallocBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Relaxed)
    }
    fn supports(&self, _op: IoOp) -> bool {
        true
    }
    /// A completion ring and a queue of `depth` entries each.
    fn channel_memory(&self, depth: usize) -> usize {
        CompletionRing::footprint(depth) + depth.max(1) * std::mem::size_of::<BdevIo>()
    }
    fn open_channel(&self, depth: usize) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(MallocChannel {
            mem: Arc::clone(&self.mem),
            done: CompletionRing::new(depth.max(1)),
            queued: VecDeque::with_capacity(depth.max(1)),
        }))
    }

    /// Grows within the reserved address space ([`max_size_bytes`](MallocBdev::max_size_bytes)):
    /// the new range is zeroed first (memory a shrink left behind is given back), then the
    /// size is published. Shrinking only lowers the size: the memory stays mapped and
    /// resident until the range is grown into again (or discarded).
    fn resize(&self, new_size_bytes: u64) -> Result<(), BdevError> {
        check_geometry(new_size_bytes, self.block_size)?;
        let max = self.max_size_bytes();
        if new_size_bytes > max {
            return Err(BdevError::InvalidGeometry(format!(
                "{new_size_bytes} bytes is more than the {max} bytes reserved for this malloc \
                 bdev (MallocOptions::max_size)"
            )));
        }
        let old = self.size_bytes();
        if new_size_bytes > old && !self.mem.zero(old, new_size_bytes - old) {
            return Err(BdevError::InvalidGeometry(
                "outside the mapping".to_string(),
            ));
        }
        self.num_blocks.store(
            new_size_bytes / u64::from(self.block_size),
            Ordering::Relaxed,
        );
        Ok(())
    }
}

/// A reactor's channel to a [`MallocBdev`]: queues in `submit`, copies in `flush_submissions`
/// (or the next poll, whichever comes first), reports on the poll.
/// Requests are checked against the mapping (memory safety), not against the bdev's current
/// size, which only the protocol layer checks: channels never read the shared size.
struct MallocChannel {
    mem: Arc<AnonMapping>,
    done: CompletionRing,
    /// Requests taken by `submit` in this pass, run in order by the next `flush_submissions`
    /// (or poll), so that each copy can start loading the RAM of the request two on first.
    queued: VecDeque<BdevIo>,
}

impl MallocChannel {
    fn run_queued(&mut self) {
        for io in self.queued.iter().take(2) {
            if matches!(io.op, IoOp::Read | IoOp::Write) {
                self.mem.prefetch(io.offset, io.len);
            }
        }
        while let Some(io) = self.queued.pop_front() {
            if let Some(next) = self.queued.get(1) {
                if matches!(next.op, IoOp::Read | IoOp::Write) {
                    self.mem.prefetch(next.offset, next.len);
                }
            }
            let ok = match io.op {
                IoOp::Read => self.mem.read_into(io.offset, &io),
                IoOp::Write => self.mem.write_from(io.offset, &io),
                IoOp::Flush => true,
                IoOp::Discard | IoOp::WriteZeroes => self.mem.zero(io.offset, io.len),
            };
            let status = if ok {
                IoStatus::Success
            } else {
                IoStatus::IoError
            };
            self.done.defer(io.complete(status));
        }
    }
}

impl IoChannel for MallocChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        if self.done.is_full() {
            return Err(io);
        }
        if !io_in_range(&io, self.mem.len() as u64) {
            self.done.push(io.complete(IoStatus::IoError));
            return Ok(());
        }
        self.done.start();
        self.queued.push_back(io);
        Ok(())
    }

    fn flush_submissions(&mut self) {
        self.run_queued();
    }

    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        self.run_queued();
        self.done.drain(done)
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoVec;

    fn iov(buf: &mut [u8]) -> IoVec {
        IoVec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    fn run(ch: &mut dyn IoChannel, io: BdevIo) -> IoStatus {
        ch.submit(io).expect("channel has room");
        let mut got = None;
        assert_eq!(ch.poll_completions(&mut |c| got = Some(c.status)), 1);
        got.expect("one completion")
    }

    #[test]
    fn write_then_read_back_across_segments() {
        let bdev = MallocBdev::new("m0", 1 << 20, 512).expect("bdev");
        let mut ch = bdev.open_channel(4).expect("channel");
        let mut a: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let mut b: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
        let w = [iov(&mut a), iov(&mut b)];
        // SAFETY: the buffers outlive the request, which completes before `run` returns.
        let io = unsafe { BdevIo::with_iovecs(1, IoOp::Write, 4096, 1536, w.as_ptr(), 2) };
        assert_eq!(run(ch.as_mut(), io), IoStatus::Success);

        let mut out = vec![0u8; 1536];
        let r = [iov(&mut out)];
        // SAFETY: as above.
        let io = unsafe { BdevIo::with_iovecs(2, IoOp::Read, 4096, 1536, r.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), io), IoStatus::Success);
        assert_eq!(&out[..512], &a[..]);
        assert_eq!(&out[512..], &b[..]);
    }

    #[test]
    fn discard_and_write_zeroes_read_back_zeroes() {
        let bdev = MallocBdev::new("m0", 64 << 10, 512).expect("bdev");
        let mut ch = bdev.open_channel(4).expect("channel");
        let mut data = vec![0xabu8; 64 << 10];
        let w = [iov(&mut data)];
        // SAFETY: the buffer outlives the request.
        let io = unsafe { BdevIo::with_iovecs(1, IoOp::Write, 0, 64 << 10, w.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), io), IoStatus::Success);
        // Unaligned head and tail around whole pages exercise both zeroing paths.
        let zeroed = [
            (IoOp::Discard, 512u64, 12800u64),
            (IoOp::WriteZeroes, 40960, 1024),
        ];
        for (op, off, len) in zeroed {
            assert_eq!(
                run(ch.as_mut(), BdevIo::without_data(2, op, off, len)),
                IoStatus::Success
            );
        }
        let mut out = vec![0u8; 64 << 10];
        let r = [iov(&mut out)];
        // SAFETY: the buffer outlives the request.
        let io = unsafe { BdevIo::with_iovecs(3, IoOp::Read, 0, 64 << 10, r.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), io), IoStatus::Success);
        for (i, byte) in out.iter().enumerate() {
            let i = i as u64;
            let zero = zeroed
                .iter()
                .any(|&(_, off, len)| i >= off && i < off + len);
            assert_eq!(*byte, if zero { 0 } else { 0xab }, "byte {i}");
        }
    }

    /// Requests past the mapping, with iovecs that do not add up, or whose range overflows
    /// fail (here the mapping is exactly the disk: no room reserved to grow).
    #[test]
    fn out_of_range_and_mismatched_lengths_fail() {
        let exact = MallocOptions {
            max_size: Some(8192),
            ..MallocOptions::default()
        };
        let bdev = MallocBdev::with_options("m0", 8192, 512, exact).expect("bdev");
        assert_eq!(bdev.max_size_bytes(), 8192);
        let mut ch = bdev.open_channel(4).expect("channel");
        let mut buf = vec![0u8; 1024];
        let v = [iov(&mut buf)];
        // SAFETY: the buffer outlives both requests.
        let past_end = unsafe { BdevIo::with_iovecs(1, IoOp::Read, 7680, 1024, v.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), past_end), IoStatus::IoError);
        // SAFETY: as above.
        let short = unsafe { BdevIo::with_iovecs(2, IoOp::Write, 0, 2048, v.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), short), IoStatus::IoError);
        let wrap = BdevIo::without_data(3, IoOp::Discard, u64::MAX - 10, 512);
        assert_eq!(run(ch.as_mut(), wrap), IoStatus::IoError);
    }

    #[test]
    fn full_channel_hands_the_request_back() {
        let bdev = MallocBdev::new("m0", 8192, 512).expect("bdev");
        let mut ch = bdev.open_channel(1).expect("channel");
        ch.submit(BdevIo::without_data(1, IoOp::Flush, 0, 0))
            .expect("room for one");
        let back = ch
            .submit(BdevIo::without_data(2, IoOp::Flush, 0, 0))
            .expect_err("full");
        assert_eq!(back.tag, 2);
        assert_eq!(ch.in_flight(), 1);
        assert_eq!(ch.poll_completions(&mut |c| assert_eq!(c.tag, 1)), 1);
        assert_eq!(ch.in_flight(), 0);
    }

    /// Requests submitted in one pass run in submission order when the pass flushes (each
    /// copy first loads the RAM of the request two on): a read after a write of the same
    /// blocks sees the write, one past the mapping fails alone, and one that ends at the disk's
    /// last byte is served.
    #[test]
    fn a_pass_runs_its_requests_in_order() {
        let size = 64 << 10;
        let bdev = MallocBdev::new("m0", size, 512).expect("bdev");
        // Channels check the mapping, which reaches past the disk to its largest size.
        let past = bdev.max_size_bytes();
        let mut ch = bdev.open_channel(8).expect("channel");
        let mut w = vec![0x3cu8; 8192];
        let mut r1 = vec![0u8; 8192];
        let mut r2 = vec![0u8; 4096];
        let mut tail = vec![0xc3u8; 4096];
        let (wv, r1v, r2v, tv) = (
            [iov(&mut w)],
            [iov(&mut r1)],
            [iov(&mut r2)],
            [iov(&mut tail)],
        );
        // SAFETY: every buffer outlives the requests, which complete before the test ends.
        let ios = unsafe {
            [
                BdevIo::with_iovecs(1, IoOp::Write, 8192, 8192, wv.as_ptr(), 1),
                BdevIo::with_iovecs(2, IoOp::Read, 8192, 8192, r1v.as_ptr(), 1),
                BdevIo::with_iovecs(3, IoOp::Read, past, 4096, r2v.as_ptr(), 1),
                BdevIo::with_iovecs(4, IoOp::Write, size - 4096, 4096, tv.as_ptr(), 1),
                BdevIo::without_data(5, IoOp::WriteZeroes, 12288, 4096),
                BdevIo::with_iovecs(6, IoOp::Read, size - 8192, 4096, r2v.as_ptr(), 1),
            ]
        };
        for io in ios {
            ch.submit(io).expect("room");
        }
        assert_eq!(ch.in_flight(), 6);
        ch.flush_submissions();
        let mut got = Vec::new();
        assert_eq!(ch.poll_completions(&mut |c| got.push((c.tag, c.status))), 6);
        got.sort_unstable_by_key(|&(tag, _)| tag);
        let failed: Vec<u32> = got
            .iter()
            .filter(|&&(_, s)| s != IoStatus::Success)
            .map(|&(tag, _)| tag)
            .collect();
        assert_eq!(failed, [3]);
        assert_eq!(ch.in_flight(), 0);
        assert!(r1.iter().all(|&b| b == 0x3c));
        assert!(
            r2.iter().all(|&b| b == 0),
            "read before anything was written there"
        );
        assert!(read_at(ch.as_mut(), 8192, 4096)
            .1
            .iter()
            .all(|&b| b == 0x3c));
        assert!(read_at(ch.as_mut(), 12288, 4096).1.iter().all(|&b| b == 0));
        assert!(read_at(ch.as_mut(), size - 4096, 4096)
            .1
            .iter()
            .all(|&b| b == 0xc3));
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(MallocBdev::new("m", 1000, 512).is_err());
        assert!(MallocBdev::new("m", 0, 512).is_err());
        assert!(MallocBdev::new("m", 8192, 1024).is_err());
    }

    fn write_at(ch: &mut dyn IoChannel, off: u64, fill: u8, len: usize) -> IoStatus {
        let mut data = vec![fill; len];
        let v = [iov(&mut data)];
        // SAFETY: the buffer outlives the request, which completes before `run` returns.
        let io = unsafe { BdevIo::with_iovecs(1, IoOp::Write, off, len as u64, v.as_ptr(), 1) };
        run(ch, io)
    }

    fn read_at(ch: &mut dyn IoChannel, off: u64, len: usize) -> (IoStatus, Vec<u8>) {
        let mut out = vec![0x99u8; len];
        let v = [iov(&mut out)];
        // SAFETY: as above.
        let io = unsafe { BdevIo::with_iovecs(2, IoOp::Read, off, len as u64, v.as_ptr(), 1) };
        let st = run(ch, io);
        (st, out)
    }

    /// Growing keeps the data and the mapping (a channel opened before the resize, with a
    /// request's worth of state, serves the new blocks at once), new blocks read as zeroes even
    /// after a shrink left data there; shrinking only lowers the size; growing past the
    /// reserve and bad sizes are refused.
    #[test]
    fn resize_grows_in_place_and_shrinks_logically() {
        let opts = MallocOptions {
            max_size: Some(1 << 20),
            huge_pages: false,
            ..MallocOptions::default()
        };
        let bdev = MallocBdev::with_options("m", 64 << 10, 512, opts).expect("bdev");
        assert_eq!(bdev.max_size_bytes(), 1 << 20);
        let mut ch = bdev.open_channel(4).expect("channel");
        assert_eq!(write_at(ch.as_mut(), 0, 0x11, 4096), IoStatus::Success);
        let base = bdev.mem.ptr_for_tests();

        bdev.resize(512 << 10).expect("grow");
        assert_eq!((bdev.size_bytes(), bdev.num_blocks()), (512 << 10, 1024));
        assert_eq!(bdev.mem.ptr_for_tests(), base, "the memory did not move");
        assert_eq!(
            write_at(ch.as_mut(), 400 << 10, 0x22, 4096),
            IoStatus::Success
        );
        assert!(read_at(ch.as_mut(), 0, 4096).1.iter().all(|&b| b == 0x11));
        assert!(read_at(ch.as_mut(), 400 << 10, 4096)
            .1
            .iter()
            .all(|&b| b == 0x22));

        // Shrink: the size drops, the memory stays (a request in flight there stays safe).
        bdev.resize(128 << 10).expect("shrink");
        assert_eq!(bdev.size_bytes(), 128 << 10);
        assert_eq!(read_at(ch.as_mut(), 400 << 10, 4096).0, IoStatus::Success);
        // Growing again: the grown range reads zeroes, the kept range its data.
        bdev.resize(1 << 20).expect("grow to the reserve");
        assert!(read_at(ch.as_mut(), 400 << 10, 4096)
            .1
            .iter()
            .all(|&b| b == 0));
        assert!(read_at(ch.as_mut(), 0, 4096).1.iter().all(|&b| b == 0x11));

        let err = bdev.resize((1 << 20) + 512).expect_err("past the reserve");
        assert!(err.to_string().contains("reserved"), "{err}");
        assert!(bdev.resize(1000).is_err(), "not whole blocks");
        assert!(bdev.resize(0).is_err());
        assert_eq!(bdev.size_bytes(), 1 << 20, "failed resizes change nothing");
        // Past the mapping: refused by the channel whatever the size says.
        assert_eq!(
            read_at(ch.as_mut(), (1 << 20) - 512, 1024).0,
            IoStatus::IoError
        );
    }

    /// The default reserve lets a disk grow to four times its size (at least 64 GiB) without
    /// making anything resident.
    #[test]
    fn default_reserve_and_options() {
        let bdev = MallocBdev::new("m", 1 << 20, 4096).expect("bdev");
        if bdev.max_size_bytes() == 1 << 20 {
            // The fallback: the system refused 64 GiB of address space (RLIMIT_AS, strict
            // overcommit). The disk works and cannot grow.
            eprintln!("NOTE: no 64 GiB reserve here; checking the fallback instead");
            assert!(bdev.resize(2 << 20).is_err());
        } else {
            assert_eq!(bdev.max_size_bytes(), 64 << 30);
            bdev.resize(32 << 30).expect("grow to 32 GiB");
            assert_eq!(bdev.num_blocks(), (32u64 << 30) / 4096);
            assert!(
                bdev.mem.resident_for_tests() < 8 << 20,
                "nothing made resident"
            );
        }
        let filled = MallocOptions {
            prefault: true,
            huge_pages: false,
            max_size: Some(4 << 20),
        };
        let bdev = MallocBdev::with_options("f", 4 << 20, 512, filled).expect("filled");
        assert_eq!(bdev.max_size_bytes(), 4 << 20);
        let resident = bdev.mem.resident_for_tests();
        assert_eq!(resident, 4 << 20, "prefaulted: every page resident");
        let mut ch = bdev.open_channel(1).expect("channel");
        assert!(read_at(ch.as_mut(), 0, 4096).1.iter().all(|&b| b == 0));
    }

    /// Malloc and null channels allocate nothing per request.
    #[test]
    fn no_allocation_per_request() {
        use crate::testing::allocations;
        let bdev = MallocBdev::new("m", 1 << 20, 512).expect("bdev");
        let null = crate::NullBdev::new("n", 1 << 20, 512).expect("null");
        let mut data = vec![7u8; 4096];
        let v = [iov(&mut data)];
        for b in [&bdev as &dyn Bdev, &null] {
            let mut ch = b.open_channel(4).expect("channel");
            let before = allocations();
            for op in [IoOp::Write, IoOp::Read, IoOp::Flush, IoOp::Discard] {
                // SAFETY: the buffer outlives the request.
                let io = unsafe { BdevIo::with_iovecs(1, op, 4096, 4096, v.as_ptr(), 1) };
                let io = if op == IoOp::Read || op == IoOp::Write {
                    io
                } else {
                    BdevIo::without_data(1, op, 4096, 4096)
                };
                assert!(ch.submit(io).is_ok());
                let mut n = 0;
                ch.poll_completions(&mut |c| {
                    assert_eq!(c.status, IoStatus::Success);
                    n += 1
                });
                assert_eq!(n, 1);
            }
            assert_eq!(allocations() - before, 0, "{}", b.name());
        }
    }
}
