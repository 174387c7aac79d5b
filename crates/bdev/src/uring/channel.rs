//! A reactor's channel to a [`UringBdev`](super::UringBdev): one io_uring, one slot per request
//! in flight.

use std::fs::File;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::bounce::{BouncePool, Chunk, BOUNCE_ALIGN, BOUNCE_SLOTS_MAX, BOUNCE_SLOT_SIZE};
use crate::memory::{io_in_range, CompletionRing, FreeList};
use crate::ring::{
    self, is_transient, register_completion_eventfd, register_fixed_file, ring_depth, RingChannel,
    SqShadow,
};
use crate::{BdevError, BdevIo, Completion, IoChannel, IoOp, IoStatus, IoVec};

/// Most requests one channel holds in flight (io_uring's largest submission queue); larger
/// depths are clamped.
pub(crate) const MAX_DEPTH: usize = 32768;
/// Most iovecs one `readv`/`writev` takes (`UIO_MAXIOV`); longer lists go in several transfers
/// of at most this many.
const IOV_MAX: usize = 1024;
/// The fixed-file index of the channel's descriptor in its ring.
const FD: types::Fixed = types::Fixed(0);

/// What a channel needs to know of its bdev.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChannelConfig {
    /// Logical block size in bytes.
    pub(super) block_size: u64,
    /// Alignment of iovec bases and lengths below which a request is bounced.
    pub(super) mem_align: usize,
    /// Opened with `O_DIRECT`: offsets and lengths must be whole blocks.
    pub(super) direct: bool,
    /// Opened read-only.
    pub(super) read_only: bool,
    /// Whether discard is supported.
    pub(super) discard: bool,
    /// Whether write-zeroes is supported.
    pub(super) write_zeroes: bool,
}

/// One request in the kernel's hands. Slots live in a boxed slice that never moves, so `iov`
/// can be given to the kernel.
struct Slot {
    io: Option<BdevIo>,
    /// The pool buffer and the request's bytes staged in it, for a bounced request.
    bounce: Option<Chunk>,
    /// The single iovec used for bounced transfers and for resuming inside an iovec after a
    /// short transfer.
    iov: IoVec,
    /// Bytes transferred so far (reads and writes).
    done: u64,
    /// `preadv2`/`pwritev2` flags of the transfer (`RWF_DSYNC` for durable writes).
    rw_flags: i32,
}

impl Slot {
    fn empty() -> Self {
        Slot {
            io: None,
            bounce: None,
            iov: IoVec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            done: 0,
            rw_flags: 0,
        }
    }
}

/// Bytes one channel of `depth` requests reserves when it opens, and never more: the ring
/// (`entries` = `depth` rounded up to a power of two; 64-byte SQEs plus a 4-byte index each,
/// twice as many 16-byte CQEs), the request slots, free list and completion ring, and, with
/// direct I/O (`bounce`), [`BOUNCE_SLOTS_MAX`] 1 MiB bounce buffers (fewer below depth 8).
///
/// At depth 1024 (virtio-blk's largest ring): ring 100 KiB, slots and lists 120 KiB, bounce
/// buffers 8 MiB: about 8.2 MiB with direct I/O, 0.2 MiB buffered (`footprint_at_depth_1024`
/// checks these figures). The bounce buffers are touched only as misaligned requests use them,
/// lowest first, so resident memory follows the most misaligned requests ever in flight at once.
pub(crate) fn footprint(depth: usize, bounce: bool) -> usize {
    let (depth, entries) = ring_depth(depth, MAX_DEPTH);
    let entries = entries as usize;
    let ring = entries * (64 + 4) + 2 * entries * 16;
    let slots = depth
        * (std::mem::size_of::<Slot>()
            + std::mem::size_of::<usize>()
            + std::mem::size_of::<Completion>());
    let pool = if bounce {
        depth.min(BOUNCE_SLOTS_MAX) * BOUNCE_SLOT_SIZE
    } else {
        0
    };
    ring + slots + pool
}

/// One io_uring over one file descriptor, owned by one reactor.
pub(super) struct UringChannel {
    ring: IoUring,
    /// Registered as fixed file 0 in `ring`; kept open for as long as the ring may use it.
    _file: File,
    cfg: ChannelConfig,
    slots: Box<[Slot]>,
    free_slots: FreeList,
    pool: BouncePool,
    /// Requests in flight, and those decided in `submit` (refused, empty, no memory to bounce),
    /// reported on the next poll.
    pending: CompletionRing,
    /// An SQE was pushed while reaping (a short transfer's remainder): submit it before
    /// returning.
    resubmitted: bool,
    /// The slot of each SQE pushed, for a ring that breaks.
    shadow: SqShadow,
    /// The errno that broke the ring, if it broke: every request fails from then on.
    broken: Option<i32>,
    /// Requests failed because the ring broke.
    submit_failures: u64,
    /// Registered with `ring`: the kernel signals it on every CQE.
    completion_fd: std::os::fd::OwnedFd,
    /// Errors the next `io_uring_enter`s return instead of entering (tests only).
    #[cfg(test)]
    inject_enter: Vec<i32>,
}

impl UringChannel {
    /// A channel over `file` (which it keeps) that holds up to `depth` requests in flight
    /// (clamped to `1..=MAX_DEPTH`).
    pub(super) fn new(file: File, cfg: ChannelConfig, depth: usize) -> Result<Self, BdevError> {
        let (_, entries) = ring_depth(depth, MAX_DEPTH);
        let ring = IoUring::new(entries).map_err(|e| {
            BdevError::Os(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot create an io_uring of {entries} entries: {e} (io_uring may be \
                     disabled by the kernel.io_uring_disabled sysctl or a seccomp filter)"
                ),
            ))
        })?;
        Self::with_ring(ring, file, cfg, depth)
    }

    /// A channel on `ring`, which has `depth` (clamped and rounded up as in `ring_depth`)
    /// entries.
    fn with_ring(
        ring: IoUring,
        file: File,
        cfg: ChannelConfig,
        depth: usize,
    ) -> Result<Self, BdevError> {
        let (depth, entries) = ring_depth(depth, MAX_DEPTH);
        register_fixed_file(&ring, &file, "the file")?;
        let completion_fd = register_completion_eventfd(&ring)?;
        let pool_slots = if cfg.mem_align > 1 {
            depth.min(BOUNCE_SLOTS_MAX)
        } else {
            0
        };
        debug_assert!(cfg.mem_align <= BOUNCE_ALIGN);
        Ok(UringChannel {
            ring,
            _file: file,
            cfg,
            slots: (0..depth).map(|_| Slot::empty()).collect(),
            free_slots: FreeList::new(depth),
            pool: BouncePool::new(pool_slots, BOUNCE_SLOT_SIZE)?,
            pending: CompletionRing::new(depth),
            resubmitted: false,
            shadow: SqShadow::new(entries as usize),
            broken: None,
            submit_failures: 0,
            completion_fd,
            #[cfg(test)]
            inject_enter: Vec::new(),
        })
    }

    /// A verdict reached without the kernel: a request whose range overflows a file offset or
    /// whose iovecs do not add up, misaligned for direct I/O, refused by a read-only bdev,
    /// unsupported, or empty. The bdev's size is not checked here: it can change under the
    /// channel ([`Bdev::rescan`](crate::Bdev::rescan)), the protocol layer checks requests
    /// against it, and the kernel refuses what lies past the end of a device (reads past the
    /// end of a file come back short and fail).
    fn precheck(&self, io: &BdevIo) -> Option<IoStatus> {
        if !io_in_range(io, i64::MAX as u64) {
            return Some(IoStatus::IoError);
        }
        match io.op {
            IoOp::Read | IoOp::Write => {
                if io.op == IoOp::Write && self.cfg.read_only {
                    return Some(IoStatus::IoError);
                }
                let bs = self.cfg.block_size;
                if self.cfg.direct && (!io.offset.is_multiple_of(bs) || !io.len.is_multiple_of(bs))
                {
                    return Some(IoStatus::IoError);
                }
                if io.len == 0 {
                    return Some(IoStatus::Success);
                }
                None
            }
            IoOp::Flush => None,
            IoOp::Discard if !self.cfg.discard => Some(IoStatus::Unsupported),
            IoOp::WriteZeroes if !self.cfg.write_zeroes => Some(IoStatus::Unsupported),
            IoOp::Discard | IoOp::WriteZeroes if io.len == 0 => Some(IoStatus::Success),
            IoOp::Discard | IoOp::WriteZeroes => None,
        }
    }

    /// Whether a read or write must go through a bounce buffer: an iovec misses the direct-I/O
    /// alignment. (Buffered channels take any alignment; long iovec lists go in several
    /// transfers, not through a buffer.)
    fn needs_bounce(&self, io: &BdevIo) -> bool {
        let align = self.cfg.mem_align;
        align > 1
            && io.iovecs().iter().any(|v| {
                !(v.iov_base as usize).is_multiple_of(align) || !v.iov_len.is_multiple_of(align)
            })
    }

    /// The transfer SQE for what remains of slot `idx`'s read or write: of the request (at most
    /// [`IOV_MAX`] iovecs of it), or of its staged chunk.
    fn rw_entry(&mut self, idx: usize) -> Option<squeue::Entry> {
        let slot = &mut self.slots[idx];
        let io = slot.io.as_ref()?;
        let offset = io.offset + slot.done;
        let (ptr, cnt): (*const IoVec, usize) = match slot.bounce {
            None => {
                // Skip the iovecs already transferred; resume mid-iovec through `slot.iov`.
                let iov = io.iovecs();
                let mut skip = slot.done;
                let mut i = 0;
                while i < iov.len() && skip >= iov[i].iov_len as u64 {
                    skip -= iov[i].iov_len as u64;
                    i += 1;
                }
                if i == iov.len() {
                    return None;
                }
                if skip == 0 {
                    (iov[i..].as_ptr(), (iov.len() - i).min(IOV_MAX))
                } else {
                    // `skip < iov_len`, so this stays inside the request's buffer.
                    slot.iov = IoVec {
                        iov_base: iov[i]
                            .iov_base
                            .cast::<u8>()
                            .wrapping_add(skip as usize)
                            .cast(),
                        iov_len: iov[i].iov_len - skip as usize,
                    };
                    (&slot.iov, 1)
                }
            }
            Some(chunk) => {
                // `start <= done < end` and the buffer holds `end - start` bytes.
                slot.iov = IoVec {
                    iov_base: self
                        .pool
                        .ptr(chunk.buf)
                        .wrapping_add((slot.done - chunk.start) as usize)
                        .cast(),
                    iov_len: (chunk.end - slot.done) as usize,
                };
                (&slot.iov, 1)
            }
        };
        // `cnt` <= IOV_MAX.
        let cnt = cnt as u32;
        let entry = match io.op {
            IoOp::Read => opcode::Readv::new(FD, ptr, cnt).offset(offset).build(),
            _ => opcode::Writev::new(FD, ptr, cnt)
                .offset(offset)
                .rw_flags(slot.rw_flags)
                .build(),
        };
        Some(entry.user_data(idx as u64))
    }

    /// Pushes `entry` to the submission queue; `false` if it is full or the ring broke.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.shadow.record(entry.get_user_data());
        // SAFETY: every buffer the entry names stays valid until its completion is reaped: the
        // request's iovec array and buffers by `BdevIo::with_iovecs`' contract (the request is
        // held in its slot until then), the slot's own iovec because slots never move, and
        // bounce buffers because they are restaged or released only after the transfer's
        // completion and `Drop` waits for every request before freeing them. The file is
        // registered and kept open by `self`.
        unsafe { self.ring.submission().push(entry).is_ok() }
    }

    /// Frees slot `idx` and its bounce buffer; returns its request.
    fn release(&mut self, idx: usize) -> Option<BdevIo> {
        let slot = &mut self.slots[idx];
        let io = slot.io.take()?;
        self.pool.release(&mut slot.bounce);
        slot.done = 0;
        slot.rw_flags = 0;
        self.free_slots.give(idx);
        Some(io)
    }

    /// Handles the CQE of slot `idx`: the request's completion, or `None` if it goes on (the
    /// remainder of a short transfer was resubmitted) or the CQE is stray.
    fn on_cqe(&mut self, idx: usize, res: i32) -> Option<Completion> {
        let op = self.slots.get(idx)?.io.as_ref()?.op;
        let status = match op {
            IoOp::Read | IoOp::Write => self.on_transfer(idx, res)?,
            IoOp::Flush if res < 0 => IoStatus::IoError,
            IoOp::Flush => IoStatus::Success,
            IoOp::Discard | IoOp::WriteZeroes => match -res {
                0 => IoStatus::Success,
                libc::EOPNOTSUPP | libc::EINVAL => IoStatus::Unsupported,
                _ => IoStatus::IoError,
            },
        };
        let io = self.release(idx)?;
        Some(io.complete(status))
    }

    /// A read or write CQE: the final status, or `None` when the transfer goes on (the
    /// remainder of a short or capped transfer, or the next chunk of a bounced request, was
    /// resubmitted).
    fn on_transfer(&mut self, idx: usize, res: i32) -> Option<IoStatus> {
        let slot = &mut self.slots[idx];
        let io = slot.io.as_ref()?;
        if res < 0 {
            return Some(IoStatus::IoError);
        }
        slot.done += res as u64;
        let target = slot.bounce.map_or(io.len, |c| c.end);
        if slot.done > target {
            return Some(IoStatus::IoError);
        }
        if slot.done == target {
            if let Some(chunk) = slot.bounce.as_mut() {
                if io.op == IoOp::Read {
                    // SAFETY: the chunk is the one staged for this request and its buffer
                    // holds the chunk's bytes, which the kernel has just read; the iovecs add up
                    // to `len` (`io_in_range` was checked at submit).
                    unsafe { self.pool.copy_out(chunk, io) };
                }
                if slot.done < io.len {
                    // SAFETY: as above; the kernel is done with the buffer and done < len.
                    unsafe { self.pool.stage(chunk, io, slot.done) };
                }
            }
            if slot.done == io.len {
                return Some(IoStatus::Success);
            }
        } else if res == 0 {
            // No progress (the file shrank under us, or the device is full): fail rather than
            // loop.
            return Some(IoStatus::IoError);
        }
        match self.rw_entry(idx) {
            Some(entry) if self.push(&entry) => {
                self.resubmitted = true;
                None
            }
            _ => Some(IoStatus::IoError),
        }
    }

    /// Hands the queued SQEs to the kernel. A transient failure leaves them queued for the next
    /// pass; any other breaks the ring.
    fn enter(&mut self) {
        #[cfg(test)]
        if let Some(errno) = self.inject_enter.pop() {
            let e = std::io::Error::from_raw_os_error(errno);
            if !is_transient(&e) {
                self.break_ring(&e);
            }
            return;
        }
        if let Err(e) = self.ring.submit() {
            if !is_transient(&e) {
                self.break_ring(&e);
            }
        }
    }

    /// The ring cannot be used: fails the requests whose SQEs the kernel never took (it never
    /// will: the ring is not entered with entries to submit again), and every request from now
    /// on. Requests the kernel took complete as their CQEs arrive.
    fn break_ring(&mut self, e: &std::io::Error) {
        self.broken = Some(e.raw_os_error().unwrap_or(libc::EIO));
        let unconsumed = self.ring.submission().len();
        for i in 0..unconsumed {
            let idx = self.shadow.last(unconsumed, i) as usize;
            if let Some(io) = self.release(idx) {
                self.pending.defer(io.complete(IoStatus::IoError));
                self.submit_failures += 1;
            }
        }
    }

    /// Slots held by requests in the kernel.
    fn busy_slots(&self) -> usize {
        self.free_slots.in_use()
    }
}

// SAFETY: the raw pointers a channel holds are its own bounce buffers (owned by the channel and
// freed only in its Drop) and the iovecs of requests it was handed, whose validity `BdevIo`'s
// contract ties to the request, not to a thread. A channel is opened on a control thread and moved
// to its reactor once; it is never used from two threads at a time (`&mut self` everywhere).
unsafe impl Send for UringChannel {}

impl IoChannel for UringChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        if self.pending.is_full() {
            return Err(io);
        }
        if let Some(status) = self.precheck(&io) {
            self.pending.push(io.complete(status));
            return Ok(());
        }
        if self.broken.is_some() {
            self.pending.push(io.complete(IoStatus::IoError));
            self.submit_failures += 1;
            return Ok(());
        }
        if self.ring.submission().is_full() {
            return Err(io);
        }
        let Some(idx) = self.free_slots.take() else {
            return Err(io);
        };

        let mut bounce = None;
        if matches!(io.op, IoOp::Read | IoOp::Write) && self.needs_bounce(&io) {
            // SAFETY: `precheck` passed, so the iovec lengths add up to `io.len`
            // (`io_in_range`) and `len > 0`; a free buffer is not in the kernel's hands.
            match unsafe { self.pool.start(&io) } {
                Some(chunk) => bounce = Some(chunk),
                None => {
                    // Every pool buffer is lent to a request in flight: try again later.
                    self.free_slots.give(idx);
                    return Err(io);
                }
            }
        }
        let rw_flags = if io.op == IoOp::Write && io.durable() {
            libc::RWF_DSYNC
        } else {
            0
        };

        let (op, offset, len) = (io.op, io.offset, io.len);
        let slot = &mut self.slots[idx];
        slot.io = Some(io);
        slot.bounce = bounce;
        slot.done = 0;
        slot.rw_flags = rw_flags;
        let entry = match op {
            IoOp::Read | IoOp::Write => self.rw_entry(idx),
            IoOp::Flush => Some(
                opcode::Fsync::new(FD)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(idx as u64),
            ),
            IoOp::Discard | IoOp::WriteZeroes => {
                let mode = if op == IoOp::Discard {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                };
                Some(
                    opcode::Fallocate::new(FD, len)
                        .offset(offset)
                        .mode(mode)
                        .build()
                        .user_data(idx as u64),
                )
            }
        };
        match entry {
            Some(entry) if self.push(&entry) => {
                self.pending.start();
                Ok(())
            }
            // Not reached: the queue had room and the slot was just filled. Hand it back
            // rather than fail it.
            _ => match self.release(idx) {
                Some(io) => Err(io),
                None => Ok(()),
            },
        }
    }

    fn flush_submissions(&mut self) {
        if self.broken.is_none() && !self.ring.submission().is_empty() {
            self.enter();
        }
    }

    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = self.pending.drain(done);
        let reaped = ring::reap(self, done);
        self.pending.finished(reaped);
        n += reaped;
        if self.resubmitted {
            self.resubmitted = false;
            self.flush_submissions();
            // Requests failed because the ring broke just now.
            n += self.pending.drain(done);
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn submit_failures(&self) -> u64 {
        self.submit_failures
    }

    /// An eventfd registered with the ring: readable (a new edge) on every CQE.
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.completion_fd.as_raw_fd())
    }
}

impl RingChannel for UringChannel {
    type Sqe = squeue::Entry;
    type Cqe = cqueue::Entry;

    fn ring(&mut self) -> &mut IoUring {
        &mut self.ring
    }

    fn handle_cqe(&mut self, user_data: u64, res: i32) -> Option<Completion> {
        self.on_cqe(user_data as usize, res)
    }

    fn in_kernel(&self) -> usize {
        self.busy_slots()
    }

    fn retire(&mut self, user_data: u64) {
        let _ = self.release(user_data as usize);
    }

    fn abandon(&mut self) {
        self.pool.leak();
    }

    fn broken(&self) -> bool {
        self.broken.is_some()
    }
}

impl Drop for UringChannel {
    /// Waits for every request the kernel holds: it may still write into guest memory and into
    /// the bounce buffers freed after this. Their completions are dropped, not reported.
    fn drop(&mut self) {
        ring::drain(self);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::super::tests::{disk_dir, filled_file, fs_fallocates};
    use super::super::{UringBdev, UringOptions};
    use super::*;
    use crate::testing::{readable, rw, Buf};
    use crate::Bdev;

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Reaps until `n` completions have arrived (10 s at most).
    fn reap(ch: &mut dyn IoChannel, n: usize) -> Vec<Completion> {
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < n {
            ch.flush_submissions();
            ch.poll_completions(&mut |c| got.push(c));
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {got:?}"
            );
            std::thread::yield_now();
        }
        got
    }

    /// Submits, flushes and waits for one request.
    fn run(ch: &mut dyn IoChannel, io: BdevIo) -> IoStatus {
        let tag = io.tag;
        ch.submit(io).expect("channel has room");
        let c = reap(ch, 1);
        assert_eq!(c[0].tag, tag);
        assert_eq!(ch.in_flight(), 0);
        c[0].status
    }

    fn opts(block_size: u32) -> UringOptions {
        UringOptions {
            block_size: Some(block_size),
            ..UringOptions::default()
        }
    }

    fn file_bytes(path: &Path) -> Vec<u8> {
        std::fs::read(path).expect("read file")
    }

    #[test]
    fn footprint_at_depth_1024() {
        let direct = footprint(1024, true);
        let buffered = footprint(1024, false);
        eprintln!("uring channel at depth 1024: {direct} bytes direct, {buffered} buffered");
        assert!(direct - buffered == 8 << 20, "8 bounce buffers of 1 MiB");
        assert!(buffered < 230 << 10, "ring + slots: {buffered}");
        assert!(direct < (8 << 20) + (230 << 10));
    }

    #[test]
    fn read_after_write_across_offsets_and_sizes() {
        let dir = disk_dir();
        for bs in [512u32, 4096] {
            let size = 4 << 20;
            let path = filled_file(dir.path(), &format!("raw{bs}.img"), size, 0);
            let bdev = UringBdev::open(&path, opts(bs)).expect("open");
            let mut ch = bdev.open_channel(8).expect("channel");
            let mut model = vec![0u8; size];
            let b = bs as usize;
            // (offset in blocks, iovec lengths in blocks)
            let cases: &[(usize, &[usize])] = &[
                (0, &[1]),
                (1, &[3]),
                (7, &[1, 2, 1]),
                (100, &[256]),
                (300, &[8; 20]),
                (size / b - 2, &[2]),
            ];
            for (i, &(blk, segs)) in cases.iter().enumerate() {
                let total: usize = segs.iter().sum::<usize>() * b;
                let data = pattern(i as u64 + u64::from(bs), total);
                let mut src = Buf::new(total, 0);
                src.bytes_mut().copy_from_slice(&data);
                let mut iov = Vec::new();
                let mut at = 0;
                for s in segs {
                    iov.push(src.iov(at, s * b));
                    at += s * b;
                }
                let off = blk * b;
                let st = run(ch.as_mut(), rw(1, IoOp::Write, off as u64, &iov));
                assert_eq!(st, IoStatus::Success, "write case {i} bs {bs}");
                model[off..off + total].copy_from_slice(&data);

                // Read back over a different segmentation.
                let dst = Buf::new(total, 0xee);
                let half = (total / 2).next_multiple_of(b).min(total);
                let mut riov = vec![dst.iov(0, half)];
                if half < total {
                    riov.push(dst.iov(half, total - half));
                }
                let st = run(ch.as_mut(), rw(2, IoOp::Read, off as u64, &riov));
                assert_eq!(st, IoStatus::Success, "read case {i} bs {bs}");
                assert_eq!(dst.bytes(), &data[..], "case {i} bs {bs}");
            }
            drop(ch);
            assert_eq!(file_bytes(&path), model, "file contents, bs {bs}");
        }
    }

    #[test]
    fn many_requests_in_flight_complete_once_each() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "qd.img", 1 << 20, 0);
        let bdev = UringBdev::open(&path, opts(4096)).expect("open");
        let mut ch = bdev.open_channel(64).expect("channel");
        let bufs: Vec<Buf> = (0..64).map(|i| Buf::new(4096, i as u8)).collect();
        let iovs: Vec<[IoVec; 1]> = bufs.iter().map(|b| [b.iov(0, 4096)]).collect();
        for (i, iov) in iovs.iter().enumerate() {
            ch.submit(rw(i as u32, IoOp::Write, i as u64 * 4096, iov))
                .expect("room");
        }
        assert_eq!(ch.in_flight(), 64);
        let mut tags: Vec<u32> = reap(ch.as_mut(), 64)
            .iter()
            .map(|c| {
                assert_eq!(c.status, IoStatus::Success);
                c.tag
            })
            .collect();
        tags.sort();
        assert_eq!(tags, (0..64).collect::<Vec<_>>());
        assert_eq!(ch.in_flight(), 0);
        let file = file_bytes(&path);
        for i in 0..64 {
            assert!(file[i * 4096..(i + 1) * 4096].iter().all(|&x| x == i as u8));
        }
    }

    #[test]
    fn misaligned_iovecs_are_bounced_both_ways() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "bounce.img", 4 << 20, 0);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let mut ch = bdev.open_channel(4).expect("channel");
        let data = pattern(7, 4096);
        // Misaligned base (offset 1) and lengths that are not multiples of 512.
        let mut src = Buf::new(8192, 0);
        src.bytes_mut()[1..1 + 4096].copy_from_slice(&data);
        let wiov = [src.iov(1, 100), src.iov(101, 3000), src.iov(3101, 996)];
        assert_eq!(
            run(ch.as_mut(), rw(1, IoOp::Write, 8192, &wiov)),
            IoStatus::Success
        );
        assert_eq!(&file_bytes(&path)[8192..8192 + 4096], &data[..]);

        let dst = Buf::new(8192, 0xee);
        let riov = [dst.iov(3, 1), dst.iov(4, 4095)];
        assert_eq!(
            run(ch.as_mut(), rw(2, IoOp::Read, 8192, &riov)),
            IoStatus::Success
        );
        assert_eq!(&dst.bytes()[3..3 + 4096], &data[..]);
        assert_eq!(dst.bytes()[2], 0xee);
        assert_eq!(dst.bytes()[3 + 4096], 0xee);

        // Larger than a pool buffer: moved through it in chunks.
        let big = BOUNCE_SLOT_SIZE + 4096;
        let data = pattern(8, big);
        let mut src = Buf::new(big + 64, 0);
        src.bytes_mut()[64..].copy_from_slice(&data);
        let wiov = [src.iov(64, big)];
        assert_eq!(
            run(ch.as_mut(), rw(3, IoOp::Write, 1 << 20, &wiov)),
            IoStatus::Success
        );
        let dst = Buf::new(big + 8, 0);
        let riov = [dst.iov(8, big)];
        assert_eq!(
            run(ch.as_mut(), rw(4, IoOp::Read, 1 << 20, &riov)),
            IoStatus::Success
        );
        assert!(dst.bytes()[8..] == data[..]);
        assert!(file_bytes(&path)[1 << 20..(1 << 20) + big] == data[..]);
    }

    /// Submits `io` and spins the channel until it completes, allocating nothing itself (the
    /// test's allocation counter sees only the channel).
    fn run_quiet(ch: &mut dyn IoChannel, io: BdevIo) -> IoStatus {
        let mut status = None;
        if ch.submit(io).is_err() {
            panic!("channel full");
        }
        let start = Instant::now();
        while status.is_none() {
            ch.flush_submissions();
            ch.poll_completions(&mut |c| status = Some(c.status));
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
        }
        status.unwrap_or(IoStatus::IoError)
    }

    /// A misaligned request several bounce buffers long moves through one pool buffer, chunk
    /// by chunk (B1: never a buffer of its own); with every buffer lent out the next one is
    /// handed back; once the channel has run, such requests allocate nothing.
    #[test]
    fn large_misaligned_requests_move_in_chunks_without_allocating() {
        use crate::testing::allocations;
        let counted = allocations();
        drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
        assert!(allocations() > counted, "the counter counts");
        let dir = disk_dir();
        let size = 16 << 20;
        let path = filled_file(dir.path(), "chunks.img", size, 0);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let depth = 8;
        let mut ch = bdev.open_channel(depth).expect("channel");
        let len = 3 * BOUNCE_SLOT_SIZE + 1536;
        let data = pattern(21, len);
        let mut src = Buf::new(len + 4096, 0);
        src.bytes_mut()[3..3 + len].copy_from_slice(&data);
        // Iovec boundaries inside and across chunks, all misaligned.
        let cut = BOUNCE_SLOT_SIZE + 77;
        let wiov = [src.iov(3, cut), src.iov(3 + cut, len - cut)];
        let at = 4 << 20;
        let dst = Buf::new(len + 4096, 0xee);
        let riov = [dst.iov(1, 100), dst.iov(101, len - 100)];
        for round in 0..2 {
            let before = allocations();
            let w = run_quiet(ch.as_mut(), rw(1, IoOp::Write, at, &wiov));
            let r = run_quiet(ch.as_mut(), rw(2, IoOp::Read, at, &riov));
            let allocated = allocations() - before;
            assert_eq!((w, r), (IoStatus::Success, IoStatus::Success));
            assert!(dst.bytes()[1..1 + len] == data[..], "round {round}");
            assert_eq!(allocated, 0, "allocations in round {round}");
        }
        assert!(file_bytes(&path)[at as usize..at as usize + len] == data[..]);
        assert_eq!(dst.bytes()[0], 0xee);
        assert_eq!(dst.bytes()[1 + len], 0xee);

        // Every pool buffer lent to a large misaligned read: the next is handed back, an
        // aligned one still goes in, and the handed-back one succeeds later.
        let slabs = depth.min(BOUNCE_SLOTS_MAX);
        let big = Buf::new(slabs * (len + 4096), 0);
        let iovs: Vec<[IoVec; 1]> = (0..=slabs)
            .map(|i| [big.iov((i * (len + 4096) + 1) % (slabs * (len + 4096)), len)])
            .collect();
        for (i, iov) in iovs.iter().take(slabs).enumerate() {
            ch.submit(rw(i as u32, IoOp::Read, at, iov))
                .expect("a free buffer");
        }
        let back = ch
            .submit(rw(99, IoOp::Read, at, &iovs[slabs]))
            .expect_err("all buffers lent");
        assert_eq!(back.tag, 99);
        let mut done = reap(ch.as_mut(), slabs);
        done.sort_by_key(|c| c.tag);
        assert!(done.iter().all(|c| c.status == IoStatus::Success));
        assert_eq!(run(ch.as_mut(), back), IoStatus::Success);
    }

    /// More iovecs than one readv/writev takes (IOV_MAX) go in several transfers, in direct
    /// and buffered mode, with no bounce buffer.
    #[test]
    fn more_iovecs_than_iov_max_go_in_several_transfers() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "iovmax.img", 4 << 20, 0);
        for buffered in [false, true] {
            let o = UringOptions {
                buffered,
                block_size: Some(512),
                ..UringOptions::default()
            };
            let bdev = UringBdev::open(&path, o).expect("open");
            let seg = bdev.iovec_alignment().max(512);
            let n = IOV_MAX + IOV_MAX / 2 + 3;
            let data = pattern(31 + u64::from(buffered), n * seg);
            let mut src = Buf::new(n * seg, 0);
            src.bytes_mut().copy_from_slice(&data);
            let wiov: Vec<IoVec> = (0..n).map(|i| src.iov(i * seg, seg)).collect();
            let mut ch = bdev
                .open_channel_with_file(bdev.file.try_clone().expect("dup"), 4)
                .expect("channel");
            ch.submit(rw(1, IoOp::Write, 8192, &wiov)).expect("room");
            assert!(ch.slots.iter().all(|s| s.bounce.is_none()), "not bounced");
            assert_eq!(reap(&mut ch, 1)[0].status, IoStatus::Success);
            assert!(file_bytes(&path)[8192..8192 + n * seg] == data[..]);
            // Read back into the segments in reverse order.
            let dst = Buf::new(n * seg, 0);
            let riov: Vec<IoVec> = (0..n).rev().map(|i| dst.iov(i * seg, seg)).collect();
            assert_eq!(
                run(&mut ch, rw(2, IoOp::Read, 8192, &riov)),
                IoStatus::Success
            );
            for i in 0..n {
                let want = &data[(n - 1 - i) * seg..(n - i) * seg];
                assert_eq!(&dst.bytes()[i * seg..(i + 1) * seg], want, "segment {i}");
            }
        }
    }

    #[test]
    fn buffered_mode_takes_any_alignment_without_bouncing() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "buf.img", 64 << 10, 0);
        let o = UringOptions {
            buffered: true,
            ..UringOptions::default()
        };
        let bdev = UringBdev::open(&path, o).expect("open");
        let mut ch = bdev
            .open_channel_with_file(bdev.file.try_clone().expect("dup"), 4)
            .expect("channel");
        let mut src = Buf::new(2048, 0);
        src.bytes_mut().copy_from_slice(&pattern(3, 2048));
        let wiov = [src.iov(1, 511), src.iov(512, 1)];
        ch.submit(rw(1, IoOp::Write, 1024, &wiov)).expect("room");
        assert!(matches!(
            ch.slots.iter().find(|s| s.io.is_some()).map(|s| &s.bounce),
            Some(None)
        ));
        assert_eq!(reap(&mut ch, 1)[0].status, IoStatus::Success);
        assert_eq!(&file_bytes(&path)[1024..1536], &src.bytes()[1..513]);
    }

    #[test]
    fn bounce_pool_exhaustion_hands_requests_back() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "pool.img", 1 << 20, 0x5a);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let mut ch = bdev.open_channel(32).expect("channel");
        let dst = Buf::new(BOUNCE_SLOTS_MAX * 1024 + 4096, 0);
        let iovs: Vec<[IoVec; 1]> = (0..=BOUNCE_SLOTS_MAX)
            .map(|i| [dst.iov(i * 1024 + 1, 512)])
            .collect();
        for (i, iov) in iovs.iter().take(BOUNCE_SLOTS_MAX).enumerate() {
            ch.submit(rw(i as u32, IoOp::Read, 0, iov))
                .expect("pool has room");
        }
        let back = ch
            .submit(rw(99, IoOp::Read, 0, &iovs[BOUNCE_SLOTS_MAX]))
            .expect_err("pool exhausted");
        assert_eq!(back.tag, 99);
        // An aligned request needs no bounce buffer and still goes in.
        let aligned = Buf::new(4096, 0);
        let aiov = [aligned.iov(0, 4096)];
        ch.submit(rw(100, IoOp::Read, 0, &aiov)).expect("aligned");
        assert_eq!(ch.in_flight(), BOUNCE_SLOTS_MAX + 1);
        let done = reap(ch.as_mut(), BOUNCE_SLOTS_MAX + 1);
        assert!(done.iter().all(|c| c.status == IoStatus::Success));
        assert_eq!(run(ch.as_mut(), back), IoStatus::Success);
        for i in 0..=BOUNCE_SLOTS_MAX {
            assert!(dst.bytes()[i * 1024 + 1..i * 1024 + 513]
                .iter()
                .all(|&b| b == 0x5a));
        }
    }

    #[test]
    fn backpressure_at_depth() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "bp.img", 64 << 10, 0);
        let bdev = UringBdev::open(&path, UringOptions::default()).expect("open");
        let mut ch = bdev.open_channel(2).expect("channel");
        let buf = Buf::new(3 * 4096, 0);
        let iovs = [
            [buf.iov(0, 4096)],
            [buf.iov(4096, 4096)],
            [buf.iov(8192, 4096)],
        ];
        ch.submit(rw(1, IoOp::Read, 0, &iovs[0])).expect("first");
        ch.submit(rw(2, IoOp::Read, 4096, &iovs[1]))
            .expect("second");
        let back = ch
            .submit(rw(3, IoOp::Read, 8192, &iovs[2]))
            .expect_err("third is handed back");
        assert_eq!((back.tag, back.offset), (3, 8192));
        assert_eq!(ch.in_flight(), 2);
        // Refusals decided without the kernel count against the depth too.
        let refused = ch
            .submit(BdevIo::without_data(4, IoOp::Read, 1 << 30, 512))
            .expect_err("still full");
        assert_eq!(refused.tag, 4);
        let mut tags: Vec<u32> = reap(ch.as_mut(), 2).iter().map(|c| c.tag).collect();
        tags.sort();
        assert_eq!(tags, [1, 2]);
        assert_eq!(run(ch.as_mut(), back), IoStatus::Success);
    }

    /// The write-cache policy belongs to the caller: a request marked durable is written with
    /// `RWF_DSYNC`, one not marked without, whatever the bdev was opened with.
    #[test]
    fn flush_and_durable_writes() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "fl.img", 64 << 10, 0);
        let bdev = UringBdev::open(&path, UringOptions::default()).expect("open");
        let mut ch = bdev
            .open_channel_with_file(bdev.file.try_clone().expect("dup"), 4)
            .expect("channel");
        for (i, durable) in [false, true, false].into_iter().enumerate() {
            let fill = 0x42 + i as u8;
            let src = Buf::new(4096, fill);
            let iov = [src.iov(0, 4096)];
            ch.submit(rw(1, IoOp::Write, 4096, &iov).with_durable(durable))
                .expect("room");
            let slot = ch.slots.iter().find(|s| s.io.is_some()).expect("slot");
            let want = if durable { libc::RWF_DSYNC } else { 0 };
            assert_eq!(slot.rw_flags, want, "durable {durable}");
            assert_eq!(reap(&mut ch, 1)[0].status, IoStatus::Success);
            assert!(file_bytes(&path)[4096..8192].iter().all(|&b| b == fill));
        }
        assert_eq!(
            run(&mut ch, BdevIo::without_data(2, IoOp::Flush, 0, 0)),
            IoStatus::Success
        );
    }

    fn allocated_bytes(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("stat").blocks() * 512
    }

    /// Discard punches a hole where the filesystem can (and the bdev must then say so); where
    /// it cannot, the bdev must say so and refuse the request as unsupported.
    #[test]
    fn discard_punches_a_hole_and_leaves_neighbours() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "dis.img", 256 << 10, 0xab);
        let bdev = UringBdev::open(&path, UringOptions::default()).expect("open");
        let mut ch = bdev.open_channel(4).expect("channel");
        let can = fs_fallocates(dir.path(), libc::FALLOC_FL_PUNCH_HOLE);
        assert_eq!(bdev.supports(IoOp::Discard), can);
        if !can {
            eprintln!("NOTE: the filesystem cannot punch holes: checking the refusal instead");
            let d = BdevIo::without_data(1, IoOp::Discard, 0, 4096);
            assert_eq!(run(ch.as_mut(), d), IoStatus::Unsupported);
            assert!(file_bytes(&path).iter().all(|&b| b == 0xab));
            return;
        }
        let before = allocated_bytes(&path);
        let (off, len) = (64u64 << 10, 64u64 << 10);
        assert_eq!(
            run(
                ch.as_mut(),
                BdevIo::without_data(1, IoOp::Discard, off, len)
            ),
            IoStatus::Success
        );
        let dst = Buf::new(256 << 10, 0xee);
        let iov = [dst.iov(0, 256 << 10)];
        assert_eq!(
            run(ch.as_mut(), rw(2, IoOp::Read, 0, &iov)),
            IoStatus::Success
        );
        for (i, &b) in dst.bytes().iter().enumerate() {
            let hole = (off..off + len).contains(&(i as u64));
            assert_eq!(b, if hole { 0 } else { 0xab }, "byte {i}");
        }
        assert!(allocated_bytes(&path) < before, "the range was deallocated");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 256 << 10);
    }

    /// Write-zeroes zeroes the range where the bdev offers it (and the filesystem must then do
    /// ZERO_RANGE); where it does not, the request is refused as unsupported.
    #[test]
    fn write_zeroes_zeroes_the_range() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "wz.img", 64 << 10, 0xcd);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let mut ch = bdev.open_channel(4).expect("channel");
        if !bdev.supports(IoOp::WriteZeroes) {
            eprintln!("NOTE: no write-zeroes on this filesystem: checking the refusal instead");
            let wz = BdevIo::without_data(1, IoOp::WriteZeroes, 0, 4096);
            assert_eq!(run(ch.as_mut(), wz), IoStatus::Unsupported);
            assert!(file_bytes(&path).iter().all(|&b| b == 0xcd));
            return;
        }
        assert!(fs_fallocates(dir.path(), libc::FALLOC_FL_ZERO_RANGE));
        let (off, len) = (1536u64, 5120u64);
        assert_eq!(
            run(
                ch.as_mut(),
                BdevIo::without_data(1, IoOp::WriteZeroes, off, len)
            ),
            IoStatus::Success
        );
        let file = file_bytes(&path);
        assert_eq!(file.len(), 64 << 10);
        for (i, &b) in file.iter().enumerate() {
            let zero = (off..off + len).contains(&(i as u64));
            assert_eq!(b, if zero { 0 } else { 0xcd }, "byte {i}");
        }
    }

    #[test]
    fn refusals_without_the_kernel() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "ref.img", 64 << 10, 0);
        let bdev = UringBdev::open(&path, opts(4096)).expect("open");
        let mut ch = bdev.open_channel(4).expect("channel");
        let buf = Buf::new(8192, 0);
        let iov = [buf.iov(0, 4096)];
        // Past the end (the kernel reads nothing: no progress, an error); a range past any
        // file offset; not a whole block for direct I/O; iovecs that do not add up.
        assert_eq!(
            run(ch.as_mut(), rw(1, IoOp::Read, 64 << 10, &iov)),
            IoStatus::IoError
        );
        assert_eq!(
            run(ch.as_mut(), rw(1, IoOp::Read, i64::MAX as u64 - 4095, &iov)),
            IoStatus::IoError
        );
        assert_eq!(
            run(ch.as_mut(), rw(2, IoOp::Read, 512, &iov)),
            IoStatus::IoError
        );
        // SAFETY: the buffer outlives the request.
        let short = unsafe { BdevIo::with_iovecs(3, IoOp::Write, 0, 8192, iov.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), short), IoStatus::IoError);

        let ro = UringOptions {
            read_only: true,
            ..opts(4096)
        };
        let bdev = UringBdev::open(&path, ro).expect("open ro");
        let mut ch = bdev.open_channel(4).expect("channel");
        assert_eq!(
            run(ch.as_mut(), rw(4, IoOp::Write, 0, &iov)),
            IoStatus::IoError
        );
        for op in [IoOp::Discard, IoOp::WriteZeroes] {
            assert_eq!(
                run(ch.as_mut(), BdevIo::without_data(5, op, 0, 4096)),
                IoStatus::Unsupported
            );
        }
        assert_eq!(
            run(ch.as_mut(), rw(6, IoOp::Read, 0, &iov)),
            IoStatus::Success
        );
    }

    /// A descriptor opened read-only behind a writable bdev's channel makes the kernel fail
    /// every write (EBADF), standing in for a media error; reads keep working.
    #[test]
    fn injected_write_errors_fail_only_those_requests() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "err.img", 64 << 10, 0x77);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let ro_fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("open O_RDONLY");
        let mut ch = bdev.open_channel_with_file(ro_fd, 8).expect("channel");
        let src = Buf::new(8192, 0x11);
        let dst = Buf::new(8192, 0);
        let misaligned = Buf::new(8192, 0x22);
        let w = [src.iov(0, 4096)];
        let wb = [misaligned.iov(1, 512)];
        let r = [dst.iov(0, 4096)];
        ch.submit(rw(1, IoOp::Write, 0, &w)).expect("room");
        ch.submit(rw(2, IoOp::Read, 4096, &r)).expect("room");
        ch.submit(rw(3, IoOp::Write, 8192, &wb)).expect("room");
        ch.submit(BdevIo::without_data(4, IoOp::WriteZeroes, 0, 4096))
            .expect("room");
        assert_eq!(ch.in_flight(), 4);
        let mut done = reap(&mut ch, 4);
        done.sort_by_key(|c| c.tag);
        let statuses: Vec<IoStatus> = done.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses[..3],
            [IoStatus::IoError, IoStatus::Success, IoStatus::IoError]
        );
        // fallocate on a read-only descriptor: EBADF, an I/O error (not "unsupported"); or
        // refused without the kernel where the filesystem has no write-zeroes.
        let want = if bdev.supports(IoOp::WriteZeroes) {
            IoStatus::IoError
        } else {
            IoStatus::Unsupported
        };
        assert_eq!(statuses[3], want);
        assert_eq!(ch.in_flight(), 0);
        assert!(dst.bytes()[..4096].iter().all(|&b| b == 0x77));
        // The channel keeps serving.
        assert_eq!(run(&mut ch, rw(5, IoOp::Read, 0, &r)), IoStatus::Success);
        assert!(file_bytes(&path).iter().all(|&b| b == 0x77));
    }

    /// Drives a request whose first transfer the test reports as short: the channel must
    /// resubmit the remainder (mid-iovec and from an iovec boundary) and succeed only once all
    /// of it has moved; a transfer that makes no progress fails.
    #[test]
    fn short_transfers_are_resumed_or_failed() {
        let dir = disk_dir();
        let data = pattern(11, 64 << 10);
        let path = dir.path().join("short.img");
        std::fs::write(&path, &data).expect("write");
        for (buffered, short) in [(true, 700i32), (false, 1024), (false, 512), (true, 0)] {
            let o = UringOptions {
                buffered,
                block_size: Some(512),
                ..UringOptions::default()
            };
            let bdev = UringBdev::open(&path, o).expect("open");
            let mut ch = bdev
                .open_channel_with_file(bdev.file.try_clone().expect("dup"), 4)
                .expect("channel");
            let dst = Buf::new(8192, 0);
            let iov = [dst.iov(0, 512), dst.iov(512, 1024), dst.iov(1536, 512)];
            ch.submit(rw(9, IoOp::Read, 4096, &iov)).expect("room");
            let idx = ch.slots.iter().position(|s| s.io.is_some()).expect("slot");
            // Let the real read finish, then claim it moved only `short` bytes.
            ch.ring.submit_and_wait(1).expect("enter");
            let cqe = ch.ring.completion().next().expect("cqe");
            assert_eq!(cqe.result(), 2048);
            let verdict = ch.on_cqe(idx, short);
            if short == 0 {
                // No progress: failed at once, its slot freed.
                assert_eq!(verdict.map(|c| c.status), Some(IoStatus::IoError));
                assert!(ch.slots[idx].io.is_none());
                continue;
            }
            assert!(verdict.is_none(), "the remainder was resubmitted");
            assert_eq!(ch.in_flight(), 1);
            let c = reap(&mut ch, 1);
            assert_eq!(
                c[0].status,
                IoStatus::Success,
                "buffered {buffered} short {short}"
            );
            assert_eq!(dst.bytes()[..2048], data[4096..6144]);
        }

        // A real short read: the file shrinks under the bdev, the read reaches past the new
        // end, and the remainder makes no progress: an error, never success.
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let mut ch = bdev.open_channel(4).expect("channel");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(32 << 10)
            .expect("truncate");
        let dst = Buf::new(8192, 0);
        let iov = [dst.iov(0, 8192)];
        assert_eq!(
            run(ch.as_mut(), rw(1, IoOp::Read, (32 << 10) - 4096, &iov)),
            IoStatus::IoError
        );
    }

    /// Empties an eventfd.
    fn drain_eventfd(fd: std::os::fd::RawFd) {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a live u64; the eventfd is non-blocking.
        unsafe { libc::read(fd, (&mut n as *mut u64).cast(), 8) };
    }

    /// The completion eventfd wakes a thread blocked in poll(2) when a CQE arrives: a read from
    /// an empty pipe stays in the kernel until another thread writes, the sleeper wakes, and
    /// the completion is there.
    #[test]
    fn completion_fd_wakes_a_sleeper() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors into a live array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors owned by nobody else.
        let (r, mut w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let cfg = ChannelConfig {
            block_size: 512,
            mem_align: 1,
            direct: false,
            read_only: false,
            discard: false,
            write_zeroes: false,
        };
        let mut ch = UringChannel::new(r, cfg, 4).expect("channel");
        let fd = ch.completion_fd().expect("an eventfd");
        assert!(!readable(fd, 0), "nothing completed yet");
        let dst = Buf::new(512, 0);
        let iov = [dst.iov(0, 512)];
        ch.submit(rw(1, IoOp::Read, 0, &iov)).expect("room");
        ch.flush_submissions();
        let mut none = 0;
        ch.poll_completions(&mut |_| none += 1);
        assert_eq!((none, ch.in_flight()), (0, 1), "the read waits for data");
        assert!(!readable(fd, 50), "no completion, no wake-up");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            std::io::Write::write_all(&mut w, &[0x7e; 512]).expect("write");
            w
        });
        let start = Instant::now();
        assert!(readable(fd, 5000), "woken by the completion");
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "slept until then"
        );
        let mut got = Vec::new();
        ch.poll_completions(&mut |c| got.push(c));
        assert_eq!(
            got,
            [Completion {
                tag: 1,
                status: IoStatus::Success
            }]
        );
        assert!(dst.bytes().iter().all(|&b| b == 0x7e));
        drop(writer.join().expect("writer"));
    }

    /// Edge-triggered epoll on the completion fd (how the reactor watches it) reports every
    /// completion as a new edge although nobody reads the eventfd.
    #[test]
    fn completion_fd_gives_an_edge_per_completion() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "edge.img", 64 << 10, 0x21);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let mut ch = bdev.open_channel(4).expect("channel");
        let fd = ch.completion_fd().expect("an eventfd");
        // SAFETY: epoll_create1 makes a new descriptor.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);
        // SAFETY: a fresh descriptor owned by nobody else.
        let _ep_owner = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 7,
        };
        // SAFETY: valid descriptors and a live event.
        let rc = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        assert_eq!(rc, 0);
        // EINTR is a wake-up too: the kernel posts a CQE of a request this thread submitted
        // by running task work on this thread, which interrupts the wait first (a reactor
        // treats EINTR as "look for work"); the eventfd is signalled as the CQE is posted.
        let wait = |ms: i32| -> i32 {
            let mut out = [libc::epoll_event { events: 0, u64: 0 }];
            loop {
                // SAFETY: one live output event.
                let rc = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 1, ms) };
                let e = std::io::Error::last_os_error();
                if rc < 0 && e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                assert!(rc >= 0, "epoll_wait: {e}");
                return rc;
            }
        };
        assert_eq!(wait(0), 0);
        let dst = Buf::new(4096, 0);
        let iov = [dst.iov(0, 4096)];
        for round in 0..3 {
            ch.submit(rw(round, IoOp::Read, 0, &iov)).expect("room");
            ch.flush_submissions();
            assert_eq!(wait(5000), 1, "an edge for completion {round}");
            assert_eq!(wait(0), 0, "one edge only");
            assert_eq!(reap(ch.as_mut(), 1)[0].status, IoStatus::Success);
        }
        drain_eventfd(fd);
    }

    /// A transient `io_uring_enter` failure (EAGAIN) leaves the SQEs queued and the next pass
    /// submits them; nothing fails.
    #[test]
    fn transient_submit_errors_retry_on_the_next_pass() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "eagain.img", 64 << 10, 0x61);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let mut ch = bdev
            .open_channel_with_file(bdev.file.try_clone().expect("dup"), 4)
            .expect("channel");
        let dst = Buf::new(4096, 0);
        let iov = [dst.iov(0, 4096)];
        ch.inject_enter = vec![libc::EINTR, libc::EAGAIN];
        ch.submit(rw(1, IoOp::Read, 0, &iov)).expect("room");
        ch.flush_submissions();
        ch.flush_submissions();
        assert_eq!(
            ch.ring.submission().len(),
            1,
            "still queued after two failures"
        );
        assert!(ch.broken.is_none());
        assert_eq!(reap(&mut ch, 1)[0].status, IoStatus::Success);
        assert!(dst.bytes().iter().all(|&b| b == 0x61));
        assert_eq!(ch.submit_failures(), 0);
    }

    /// A ring that cannot be entered (created disabled: `io_uring_enter` fails with EBADFD, a
    /// real non-transient error) fails the requests whose SQEs it never took, counts them,
    /// fails every later request at once, and drops without waiting for anything.
    #[test]
    fn a_broken_ring_fails_its_queued_requests() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "broken.img", 64 << 10, 0);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(8)
            .expect("disabled ring");
        let file = bdev.file.try_clone().expect("dup");
        let mut ch =
            UringChannel::with_ring(ring, file, bdev.channel_config(), 8).expect("channel");
        let dst = Buf::new(8192, 0);
        let (a, b) = ([dst.iov(0, 4096)], [dst.iov(4096, 4096)]);
        ch.submit(rw(1, IoOp::Read, 0, &a)).expect("room");
        ch.submit(rw(2, IoOp::Write, 4096, &b)).expect("room");
        ch.flush_submissions();
        assert_eq!(ch.broken, Some(libc::EBADFD));
        let mut got = reap(&mut ch, 2);
        got.sort_by_key(|c| c.tag);
        assert_eq!(
            got,
            [
                Completion {
                    tag: 1,
                    status: IoStatus::IoError
                },
                Completion {
                    tag: 2,
                    status: IoStatus::IoError
                }
            ]
        );
        assert_eq!(
            (ch.in_flight(), ch.busy_slots(), ch.submit_failures()),
            (0, 0, 2)
        );
        assert_eq!(run(&mut ch, rw(3, IoOp::Read, 0, &a)), IoStatus::IoError);
        assert_eq!(ch.submit_failures(), 3);
        // Prechecks still answer first (not whole blocks for direct I/O: not counted).
        assert_eq!(run(&mut ch, rw(4, IoOp::Read, 100, &a)), IoStatus::IoError);
        assert_eq!(ch.submit_failures(), 3);
        let start = Instant::now();
        drop(ch);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "drop did not wait"
        );
    }

    /// A non-transient failure after the kernel took some requests: those complete normally,
    /// the ones it never took fail, short-transfer continuations fail too.
    #[test]
    fn a_ring_that_breaks_later_keeps_what_the_kernel_took() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "later.img", 64 << 10, 0x33);
        let bdev = UringBdev::open(&path, opts(512)).expect("open");
        let mut ch = bdev
            .open_channel_with_file(bdev.file.try_clone().expect("dup"), 8)
            .expect("channel");
        let dst = Buf::new(3 * 4096, 0);
        let (a, b, c) = (
            [dst.iov(0, 4096)],
            [dst.iov(4096, 4096)],
            [dst.iov(8192, 4096)],
        );
        ch.submit(rw(1, IoOp::Read, 0, &a)).expect("room");
        ch.flush_submissions(); // taken by the kernel
        ch.submit(rw(2, IoOp::Read, 4096, &b)).expect("room");
        ch.submit(rw(3, IoOp::Read, 8192, &c)).expect("room");
        ch.inject_enter = vec![libc::EFAULT];
        ch.flush_submissions();
        assert_eq!(ch.broken, Some(libc::EFAULT));
        let mut got = reap(&mut ch, 3);
        got.sort_by_key(|c| c.tag);
        let st: Vec<IoStatus> = got.iter().map(|c| c.status).collect();
        assert_eq!(
            st,
            [IoStatus::Success, IoStatus::IoError, IoStatus::IoError]
        );
        assert!(dst.bytes()[..4096].iter().all(|&x| x == 0x33));
        assert!(dst.bytes()[4096..].iter().all(|&x| x == 0), "never read");
        assert_eq!(ch.submit_failures(), 2);
        // The SQEs left in the queue are never submitted, even when the channel drops.
        assert_eq!(ch.ring.submission().len(), 2);
        drop(ch);
        assert!(dst.bytes()[4096..].iter().all(|&x| x == 0));
    }

    #[test]
    fn drop_waits_for_requests_in_flight() {
        let dir = disk_dir();
        let len = 4 << 20;
        let data = pattern(5, len);
        let path = dir.path().join("drop.img");
        std::fs::write(&path, &data).expect("write");
        let bdev = UringBdev::open(&path, opts(4096)).expect("open");
        let mut ch = bdev.open_channel(8).expect("channel");
        let dst = Buf::new(len, 0);
        let chunk = len / 8;
        let iovs: Vec<[IoVec; 1]> = (0..8).map(|i| [dst.iov(i * chunk, chunk)]).collect();
        // Misaligned ones too, so bounce buffers are in the kernel's hands at drop.
        let odd = Buf::new(4 * 4096 + 1, 0);
        let oiov = [odd.iov(1, 4 * 4096)];
        for (i, iov) in iovs.iter().take(7).enumerate() {
            ch.submit(rw(i as u32, IoOp::Read, (i * chunk) as u64, iov))
                .expect("room");
        }
        ch.submit(rw(7, IoOp::Read, 0, &oiov)).expect("room");
        ch.flush_submissions();
        drop(ch);
        // Every transfer finished before drop returned.
        assert_eq!(dst.bytes()[..7 * chunk], data[..7 * chunk]);
        // A channel dropped with requests never submitted (still in the SQ) also drains.
        let mut ch = bdev.open_channel(8).expect("channel");
        ch.submit(rw(8, IoOp::Read, 0, &iovs[7])).expect("room");
        drop(ch);
        assert_eq!(dst.bytes()[7 * chunk..], data[..chunk]);
    }

    /// A loop device with 4096-byte sectors exercises the block-device path (BLKSSZGET,
    /// BLKGETSIZE64, fallocate on a block device). Needs root and `losetup`, so it is ignored by
    /// default (counted as such); run it with `cargo test -p spinblk-bdev -- --ignored`, where a
    /// missing losetup fails it.
    #[test]
    #[ignore = "needs root and losetup: cargo test -p spinblk-bdev -- --ignored"]
    fn loop_device_geometry_and_io() {
        struct Loop(String);
        impl Drop for Loop {
            fn drop(&mut self) {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.0])
                    .status();
            }
        }
        let dir = disk_dir();
        let backing = filled_file(dir.path(), "loop.img", 8 << 20, 0x3c);
        let out = std::process::Command::new("losetup")
            .args(["--sector-size", "4096", "--direct-io=on", "-f", "--show"])
            .arg(&backing)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Ok(o) => panic!(
                "losetup failed (root is needed): {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run losetup: {e}"),
        };
        let lo = Loop(dev);
        let bdev = UringBdev::open(PathBuf::from(&lo.0), UringOptions::default()).expect("open");
        assert!(bdev.is_block_device());
        assert_eq!((bdev.block_size(), bdev.num_blocks()), (4096, 2048));
        assert!(bdev.supports(IoOp::WriteZeroes));
        let o512 = UringOptions {
            block_size: Some(512),
            ..UringOptions::default()
        };
        let err = UringBdev::open(PathBuf::from(&lo.0), o512)
            .err()
            .expect("512 on a 4096 device");
        assert!(err.to_string().contains("logical block size 4096"), "{err}");

        let mut ch = bdev.open_channel(4).expect("channel");
        let src = Buf::new(16384, 0x99);
        let iov = [src.iov(0, 16384)];
        assert_eq!(
            run(ch.as_mut(), rw(1, IoOp::Write, 8192, &iov)),
            IoStatus::Success
        );
        assert_eq!(
            run(
                ch.as_mut(),
                BdevIo::without_data(2, IoOp::WriteZeroes, 12288, 4096)
            ),
            IoStatus::Success
        );
        let discard = run(
            ch.as_mut(),
            BdevIo::without_data(3, IoOp::Discard, 16384, 4096),
        );
        let dst = Buf::new(16384, 0);
        let riov = [dst.iov(0, 16384)];
        assert_eq!(
            run(ch.as_mut(), rw(4, IoOp::Read, 8192, &riov)),
            IoStatus::Success
        );
        assert!(dst.bytes()[..4096].iter().all(|&b| b == 0x99));
        assert!(dst.bytes()[4096..8192].iter().all(|&b| b == 0));
        if bdev.supports(IoOp::Discard) {
            assert_eq!(discard, IoStatus::Success);
            assert!(dst.bytes()[8192..12288].iter().all(|&b| b == 0));
        }
        assert!(dst.bytes()[12288..].iter().all(|&b| b == 0x99));
        assert_eq!(
            run(ch.as_mut(), BdevIo::without_data(5, IoOp::Flush, 0, 0)),
            IoStatus::Success
        );

        // The backing file grows and the loop device is told (losetup -c): a rescan reads the
        // new BLKGETSIZE64.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&backing)
            .expect("open backing")
            .set_len(12 << 20)
            .expect("grow backing");
        let st = std::process::Command::new("losetup")
            .args(["-c", &lo.0])
            .status()
            .expect("losetup -c");
        assert!(st.success());
        assert_eq!(bdev.rescan().expect("rescan"), 12 << 20);
        assert_eq!(bdev.num_blocks(), 3072);
    }
}
