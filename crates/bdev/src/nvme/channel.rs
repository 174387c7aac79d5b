//! A reactor's channel to an [`NvmeBdev`](super::NvmeBdev): one io_uring with 128-byte SQEs and
//! 32-byte CQEs over the namespace's generic char device, NVMe commands as
//! `IORING_OP_URING_CMD`.
//!
//! A request takes a *slot* (up to `depth`) and is planned into one or more *parts* (NVMe
//! commands). Each part in the kernel holds a *command* entry (as many as the ring has SQEs),
//! whose index is the SQE's `user_data`. Parts are issued in request order as command entries
//! free up; a request completes when its last part does, failed if any part failed.
//!
//! A slot has room for [`CAPS`] parts and iovec pieces, reserved when the channel opens; a
//! request that needs more moves in *rounds*: the next round is planned when every part of the
//! previous one is back. A misaligned request moves through one bounce buffer in buffer-sized
//! chunks (each chunk one or more rounds). Nothing is allocated per request.

use std::collections::VecDeque;
use std::fs::File;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::cmd::{
    dsm_deallocate_cmd, flush_cmd, rw_cmd, status_of, write_zeroes_cmd, DsmRange, NvmeCmd,
    NVME_URING_CMD_IO, NVME_URING_CMD_IO_VEC,
};
use super::split::{plan_blocks, plan_rw, Caps, Limits, Part, Plan};
use crate::bounce::{BouncePool, Chunk, BOUNCE_SLOTS_MAX, BOUNCE_SLOT_SIZE};
use crate::memory::{io_in_range, CompletionRing, FreeList};
use crate::ring::{
    self, is_transient, register_completion_eventfd, register_fixed_file, ring_depth, RingChannel,
    SqShadow,
};
use crate::{BdevError, BdevIo, Completion, IoChannel, IoOp, IoStatus, IoVec};

/// The ring type: `IORING_SETUP_SQE128 | IORING_SETUP_CQE32`, which `URING_CMD` to NVMe needs.
pub(super) type Ring = IoUring<squeue::Entry128, cqueue::Entry32>;

/// Most requests one channel holds in flight; larger depths are clamped.
pub(crate) const MAX_DEPTH: usize = 4096;
/// Iovec bases and lengths that are multiples of this go to the device as they are; others
/// are bounced. The kernel itself only needs 4-byte alignment for NVMe (and copies what misses
/// its rules), but 512 keeps every segment whole sectors, as the block layer would.
pub(crate) const ZERO_COPY_ALIGN: usize = 512;
/// The fixed-file index of the char device in the ring.
const FD: types::Fixed = types::Fixed(0);
/// Parts and pieces one slot holds per round: 16 commands (8 MiB at a 512 KiB MDTS) over up to
/// 128 iovec pieces (virtio-blk's usual `seg_max` is 126), 2.5 KiB per slot.
pub(crate) const CAPS: Caps = Caps {
    parts: 16,
    pieces: 128,
};

/// What a channel needs to know of its bdev.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChannelConfig {
    /// Namespace ID.
    pub(super) nsid: u32,
    /// log2 of the logical block size.
    pub(super) block_shift: u32,
    /// Capacity in bytes.
    pub(super) size: u64,
    /// Per-command limits of reads and writes.
    pub(super) limits: Limits,
    /// Most blocks per Write Zeroes command.
    pub(super) max_write_zeroes_blocks: u64,
    /// Most blocks per Dataset Management range.
    pub(super) max_discard_blocks: u64,
    /// Writes are refused.
    pub(super) read_only: bool,
    /// Dataset Management is supported.
    pub(super) discard: bool,
    /// Write Zeroes is supported.
    pub(super) write_zeroes: bool,
    /// The ring polls (`IORING_SETUP_IOPOLL`).
    pub(super) poll: bool,
}

/// Builds a ring of `entries` SQEs, polled or not.
pub(super) fn new_ring(entries: u32, poll: bool) -> std::io::Result<Ring> {
    let mut b = Ring::builder();
    if poll {
        b.setup_iopoll();
    }
    b.build(entries)
}

/// Which iovec array a slot's parts index.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The request's iovecs (one whole part).
    Request,
    /// The slot's `bounce_iov` (one whole part).
    Bounce,
    /// The slot's `pieces`.
    Pieces,
}

/// One request in progress. Slots live in a boxed slice that never moves, and `pieces` is not
/// touched while parts are in the kernel, so both can be handed to it.
struct Slot {
    io: Option<BdevIo>,
    /// The pool buffer and the request's bytes staged in it, for a bounced request.
    bounce: Option<Chunk>,
    /// One iovec over what remains of the staged chunk.
    bounce_iov: IoVec,
    /// The request's (or bounce buffer's) iovecs cut at command boundaries: at most
    /// `CAPS.pieces`, the capacity reserved at open.
    pieces: Vec<IoVec>,
    /// This round's commands: at most `CAPS.parts`, the capacity reserved at open.
    parts: Vec<Part>,
    source: Source,
    /// The next part of this round to issue.
    next_part: usize,
    /// Parts in the kernel.
    outstanding: usize,
    /// Success until a part fails.
    status: IoStatus,
    /// Writes carry FUA.
    fua: bool,
    /// Request bytes moved by earlier rounds.
    done: u64,
    /// Request bytes this round moves.
    round: u64,
    /// In `waiting`.
    queued: bool,
}

impl Slot {
    fn empty() -> Self {
        Slot {
            io: None,
            bounce: None,
            bounce_iov: IoVec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            pieces: Vec::with_capacity(CAPS.pieces),
            parts: Vec::with_capacity(CAPS.parts),
            source: Source::Request,
            next_part: 0,
            outstanding: 0,
            status: IoStatus::Success,
            fua: false,
            done: 0,
            round: 0,
            queued: false,
        }
    }
}

/// One NVMe command in the kernel's hands: which slot it serves, and the Dataset Management
/// range it points the device to (in a boxed slice that never moves).
struct Cmd {
    slot: usize,
    range: DsmRange,
}

/// Bytes one channel of `depth` requests reserves when it opens, and never more: the ring
/// (`entries` = `depth` rounded up to a power of two; 128-byte SQEs plus a 4-byte index each,
/// twice as many 32-byte CQEs), one command entry per SQE, the request slots with their
/// [`CAPS`] of parts and pieces, the free lists, waiting queue and completion ring, and
/// [`BOUNCE_SLOTS_MAX`] 1 MiB bounce buffers (fewer below depth 8).
///
/// At depth 1024: ring 196 KiB, command entries 24 KiB, slots 2.7 MiB, bounce buffers 8 MiB:
/// about 11 MiB (`footprint_at_depth_1024` checks these figures). Bounce buffers and the parts
/// and pieces of a slot are touched only when requests use them.
pub(crate) fn footprint(depth: usize) -> usize {
    let (depth, _) = ring_depth(depth, MAX_DEPTH);
    footprint_with(depth, depth.min(BOUNCE_SLOTS_MAX))
}

/// [`footprint`] of a channel with `bounce_slots` bounce buffers.
pub(crate) fn footprint_with(depth: usize, bounce_slots: usize) -> usize {
    use std::mem::size_of;
    let (depth, entries) = ring_depth(depth, MAX_DEPTH);
    let entries = entries as usize;
    let ring = entries * (128 + 4) + 2 * entries * 32;
    let cmds = entries * (size_of::<Cmd>() + size_of::<usize>());
    let slots = depth
        * (size_of::<Slot>()
            + CAPS.pieces * size_of::<IoVec>()
            + CAPS.parts * size_of::<Part>()
            + 2 * size_of::<usize>()
            + size_of::<Completion>());
    ring + cmds + slots + bounce_slots * BOUNCE_SLOT_SIZE
}

/// One io_uring over one namespace, owned by one reactor.
pub(super) struct NvmeChannel {
    ring: Ring,
    /// Registered as fixed file 0 in `ring`; kept open for as long as the ring may use it.
    _file: File,
    cfg: ChannelConfig,
    slots: Box<[Slot]>,
    free_slots: FreeList,
    cmds: Box<[Cmd]>,
    free_cmds: FreeList,
    pool: BouncePool,
    /// Slots with parts not yet issued, oldest first.
    waiting: VecDeque<usize>,
    /// Requests in flight, and those decided without the device (refused, empty, failed while
    /// issuing), reported on the next poll.
    pending: CompletionRing,
    /// The command entry of each SQE pushed, for a ring that breaks.
    shadow: SqShadow,
    /// The errno that broke the ring, if it broke: every request fails from then on.
    broken: Option<i32>,
    /// Requests failed because the ring broke.
    submit_failures: u64,
    /// Registered with `ring` unless it polls: the kernel signals it on every CQE.
    completion_fd: Option<std::os::fd::OwnedFd>,
    /// Errors the next `io_uring_enter`s return instead of entering (tests only).
    #[cfg(test)]
    inject_enter: Vec<i32>,
}

impl NvmeChannel {
    /// A channel over `file` (which it keeps) that holds up to `depth` requests in flight
    /// (clamped to `1..=MAX_DEPTH`).
    pub(super) fn new(file: File, cfg: ChannelConfig, depth: usize) -> Result<Self, BdevError> {
        let (depth, _) = ring_depth(depth, MAX_DEPTH);
        Self::build(file, cfg, depth, depth.min(BOUNCE_SLOTS_MAX))
    }

    /// A channel for flushes and write-zeroes only (no bounce buffers), over a ring that
    /// completes by interrupt whatever `cfg.poll` says: see [`super::polled`].
    pub(super) fn dataless(
        file: File,
        cfg: ChannelConfig,
        depth: usize,
    ) -> Result<Self, BdevError> {
        let cfg = ChannelConfig { poll: false, ..cfg };
        Self::build(file, cfg, depth, 0)
    }

    fn build(
        file: File,
        cfg: ChannelConfig,
        depth: usize,
        bounce_slots: usize,
    ) -> Result<Self, BdevError> {
        let (depth, entries) = ring_depth(depth, MAX_DEPTH);
        let ring = new_ring(entries, cfg.poll).map_err(|e| {
            BdevError::Os(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot create an io_uring of {entries} 128-byte entries{}: {e}",
                    if cfg.poll { " with IOPOLL" } else { "" }
                ),
            ))
        })?;
        register_fixed_file(&ring, &file, "the char device")?;
        // A polled ring completes commands only inside io_uring_enter and signals no eventfd.
        let completion_fd = if cfg.poll {
            None
        } else {
            Some(register_completion_eventfd(&ring)?)
        };
        let ncmds = entries as usize;
        Ok(NvmeChannel {
            ring,
            _file: file,
            cfg,
            slots: (0..depth).map(|_| Slot::empty()).collect(),
            free_slots: FreeList::new(depth),
            cmds: (0..ncmds)
                .map(|_| Cmd {
                    slot: 0,
                    range: DsmRange::default(),
                })
                .collect(),
            free_cmds: FreeList::new(ncmds),
            pool: BouncePool::new(bounce_slots, BOUNCE_SLOT_SIZE)?,
            waiting: VecDeque::with_capacity(depth),
            pending: CompletionRing::new(depth),
            shadow: SqShadow::new(ncmds),
            broken: None,
            submit_failures: 0,
            completion_fd,
            #[cfg(test)]
            inject_enter: Vec::new(),
        })
    }

    /// A verdict reached without the device.
    fn precheck(&self, io: &BdevIo) -> Option<IoStatus> {
        if !io_in_range(io, self.cfg.size) {
            return Some(IoStatus::IoError);
        }
        let bs = self.cfg.limits.block_size;
        let whole_blocks = io.offset.is_multiple_of(bs) && io.len.is_multiple_of(bs);
        match io.op {
            IoOp::Write if self.cfg.read_only => Some(IoStatus::IoError),
            IoOp::Discard if !self.cfg.discard => Some(IoStatus::Unsupported),
            IoOp::WriteZeroes if !self.cfg.write_zeroes => Some(IoStatus::Unsupported),
            IoOp::Flush => None,
            _ if !whole_blocks => Some(IoStatus::IoError),
            _ if io.len == 0 => Some(IoStatus::Success),
            _ => None,
        }
    }

    /// Whether a read or write must be staged in a bounce buffer: an iovec's base or length is
    /// not a multiple of [`ZERO_COPY_ALIGN`] (of the block size, on a device whose commands may
    /// touch fewer pages than a block of 512-byte segments can spread over, so that every block
    /// of an unbounced request fits one command).
    fn misaligned(&self, io: &BdevIo) -> bool {
        let bs = self.cfg.limits.block_size as usize;
        let align = if self.cfg.limits.max_pages < bs / ZERO_COPY_ALIGN {
            bs
        } else {
            ZERO_COPY_ALIGN
        };
        io.iovecs().iter().any(|v| {
            !(v.iov_base as usize).is_multiple_of(align) || !v.iov_len.is_multiple_of(align)
        })
    }

    /// Plans slot `idx`'s next round from `slot.done` on: the commands of (part of) what
    /// remains of the request, or of its staged chunk. `false` if nothing could be planned
    /// (a layout no command fits).
    fn plan_round(&mut self, idx: usize) -> bool {
        let cfg = self.cfg;
        let bs = cfg.limits.block_size;
        let slot = &mut self.slots[idx];
        slot.next_part = 0;
        slot.outstanding = 0;
        let Some(io) = slot.io.as_ref() else {
            return false;
        };
        let (rest, at) = (io.len - slot.done, io.offset + slot.done);
        match io.op {
            IoOp::Read | IoOp::Write => {
                let plan = match slot.bounce {
                    None => {
                        let p = plan_rw(
                            io.iovecs(),
                            slot.done,
                            at,
                            cfg.limits,
                            CAPS,
                            &mut slot.pieces,
                            &mut slot.parts,
                        );
                        slot.source = if p == Plan::Whole {
                            Source::Request
                        } else {
                            Source::Pieces
                        };
                        p
                    }
                    Some(chunk) => {
                        // `start <= done < end`: what remains of the chunk, contiguous in its
                        // page-aligned buffer.
                        slot.bounce_iov = IoVec {
                            iov_base: self
                                .pool
                                .ptr(chunk.buf)
                                .wrapping_add((slot.done - chunk.start) as usize)
                                .cast(),
                            iov_len: (chunk.end - slot.done) as usize,
                        };
                        let one = std::slice::from_ref(&slot.bounce_iov);
                        let p = plan_rw(
                            one,
                            0,
                            at,
                            cfg.limits,
                            CAPS,
                            &mut slot.pieces,
                            &mut slot.parts,
                        );
                        slot.source = if p == Plan::Whole {
                            Source::Bounce
                        } else {
                            Source::Pieces
                        };
                        p
                    }
                };
                if plan == Plan::Impossible {
                    slot.parts.clear();
                    return false;
                }
            }
            IoOp::Flush => {
                // One command flushes everything, whatever range the request names.
                plan_blocks(0, bs, bs, 1, 1, &mut slot.parts);
                slot.round = rest;
                return true;
            }
            IoOp::WriteZeroes => {
                let max = cfg.max_write_zeroes_blocks;
                plan_blocks(at, rest, bs, max, CAPS.parts, &mut slot.parts);
            }
            IoOp::Discard => {
                let max = cfg.max_discard_blocks;
                plan_blocks(at, rest, bs, max, CAPS.parts, &mut slot.parts);
            }
        }
        slot.round = slot.parts.iter().map(|p| p.len).sum();
        slot.round > 0
    }

    /// Starts the request now in slot `idx`: stages a misaligned read or write (or one whose
    /// layout no command fits) in a bounce buffer and plans its first round. `Err(())` when
    /// it needs a bounce buffer and none is free: the caller hands the request back. `Ok(false)`
    /// when nothing could be planned: the caller fails it.
    fn prepare(&mut self, idx: usize) -> Result<bool, ()> {
        let slot = &self.slots[idx];
        let Some(io) = slot.io.as_ref() else {
            return Ok(false);
        };
        let rw = matches!(io.op, IoOp::Read | IoOp::Write);
        if rw && self.misaligned(io) {
            self.bounce(idx)?;
        }
        if self.plan_round(idx) {
            return Ok(true);
        }
        if rw && self.slots[idx].bounce.is_none() {
            // Not reached (see `misaligned`): a block spread over more pages than a command may
            // touch. A contiguous buffer always fits.
            self.bounce(idx)?;
            return Ok(self.plan_round(idx));
        }
        Ok(false)
    }

    /// Gives slot `idx`'s request a bounce buffer and stages its first chunk; `Err(())` if
    /// none is free.
    fn bounce(&mut self, idx: usize) -> Result<(), ()> {
        let slot = &mut self.slots[idx];
        let io = slot.io.as_ref().ok_or(())?;
        // SAFETY: the request passed `precheck`, so its iovecs add up to `len` (`io_in_range`)
        // and `len > 0`; a free buffer is not in the kernel's hands.
        slot.bounce = Some(unsafe { self.pool.start(io) }.ok_or(())?);
        Ok(())
    }

    /// Slot `idx`'s round is back without error: moves `done` on, copies a bounced read's
    /// chunk out and stages the next chunk when the chunk is done, and plans the next round.
    /// `true` if the request is complete (or nothing more could be planned: then it failed).
    fn next_round(&mut self, idx: usize) -> bool {
        let slot = &mut self.slots[idx];
        let Some(io) = slot.io.as_ref() else {
            return true;
        };
        slot.done += slot.round;
        slot.round = 0;
        if let Some(chunk) = slot.bounce.as_mut() {
            if slot.done == chunk.end {
                if io.op == IoOp::Read {
                    // SAFETY: the chunk was staged for this request and its buffer holds the
                    // chunk's bytes, which the device has just read (every part of it is back);
                    // the iovecs add up to `len` (`io_in_range`).
                    unsafe { self.pool.copy_out(chunk, io) };
                }
                if slot.done < io.len {
                    // SAFETY: as above; the device is done with the buffer and done < len.
                    unsafe { self.pool.stage(chunk, io, slot.done) };
                }
            }
        }
        if slot.done >= io.len {
            return true;
        }
        if self.plan_round(idx) {
            return false;
        }
        self.slots[idx].status = IoStatus::IoError;
        true
    }

    /// The SQE for part `k` of slot `idx`, through command entry `c`.
    fn part_entry(&mut self, idx: usize, k: usize, c: usize) -> Option<squeue::Entry128> {
        let cfg = self.cfg;
        let slot = &self.slots[idx];
        let io = slot.io.as_ref()?;
        let part = *slot.parts.get(k)?;
        let slba = part.offset >> cfg.block_shift;
        let nlb = u32::try_from(part.len >> cfg.block_shift).ok()?;
        let (cmd_op, cmd): (u32, NvmeCmd) = match io.op {
            IoOp::Read | IoOp::Write => {
                let write = io.op == IoOp::Write;
                let mut cmd = rw_cmd(write, cfg.nsid, slba, nlb, write && slot.fua);
                let base: *const IoVec = match slot.source {
                    Source::Request => io.iovecs().as_ptr(),
                    Source::Bounce => &slot.bounce_iov,
                    Source::Pieces => slot.pieces.as_ptr(),
                };
                // `iov_start + iov_cnt` is within the array the source names (the plan).
                let iov = base.wrapping_add(part.iov_start);
                if part.iov_cnt == 1 {
                    // SAFETY: `iov` points to an initialised iovec of the plan: the request's
                    // (alive by `with_iovecs`' contract), the slot's bounce iovec or a piece.
                    let v = unsafe { *iov };
                    cmd.addr = v.iov_base as u64;
                    cmd.data_len = u32::try_from(v.iov_len).ok()?;
                    (NVME_URING_CMD_IO, cmd)
                } else {
                    cmd.addr = iov as u64;
                    cmd.data_len = u32::try_from(part.iov_cnt).ok()?;
                    (NVME_URING_CMD_IO_VEC, cmd)
                }
            }
            IoOp::Flush => (NVME_URING_CMD_IO, flush_cmd(cfg.nsid)),
            IoOp::WriteZeroes => (NVME_URING_CMD_IO, write_zeroes_cmd(cfg.nsid, slba, nlb)),
            IoOp::Discard => {
                let entry = &mut self.cmds[c];
                entry.range = DsmRange::new(slba, nlb);
                (
                    NVME_URING_CMD_IO,
                    dsm_deallocate_cmd(cfg.nsid, &entry.range),
                )
            }
        };
        Some(
            opcode::UringCmd80::new(FD, cmd_op)
                .cmd(cmd.to_sqe_cmd())
                .build()
                .user_data(c as u64),
        )
    }

    /// Puts slot `idx` at the back of `waiting` (each slot at most once, so it never grows past
    /// its capacity, the depth).
    fn enqueue(&mut self, idx: usize) {
        debug_assert!(!self.slots[idx].queued);
        self.slots[idx].queued = true;
        self.waiting.push_back(idx);
    }

    /// Issues the parts of waiting requests, oldest first, while command entries are free. On a
    /// broken ring, fails them instead.
    fn pump(&mut self) {
        if self.broken.is_some() {
            self.fail_waiting();
            return;
        }
        while let Some(&idx) = self.waiting.front() {
            let slot = &self.slots[idx];
            if slot.next_part >= slot.parts.len() {
                self.waiting.pop_front();
                self.slots[idx].queued = false;
                continue;
            }
            let Some(c) = self.free_cmds.take() else {
                return;
            };
            let k = slot.next_part;
            let pushed = match self.part_entry(idx, k, c) {
                Some(entry) => {
                    // SAFETY: every buffer the command names stays valid until its CQE is
                    // reaped: the request's iovec array and buffers by `with_iovecs`' contract
                    // (the request stays in its slot until its last part completes), the slot's
                    // bounce iovec and pieces because slots never move and are not replanned
                    // while parts are out, bounce buffers because they are restaged or
                    // released only once every part of the round is back, DSM ranges because
                    // command entries are reused only after their CQE, and `Drop` waits for
                    // every command. The file
                    // is registered and kept open by `self`.
                    let ok = unsafe { self.ring.submission().push(&entry).is_ok() };
                    if ok {
                        self.shadow.record(c as u64);
                    }
                    ok
                }
                None => false,
            };
            let slot = &mut self.slots[idx];
            if pushed {
                self.cmds[c].slot = idx;
                slot.next_part += 1;
                slot.outstanding += 1;
            } else {
                self.free_cmds.give(c);
                // Not reached (the SQ has an entry per command entry and plans fit the
                // fields); fail the rest of the request rather than spin.
                slot.status = IoStatus::IoError;
                slot.next_part = slot.parts.len();
                if slot.outstanding == 0 {
                    if let Some(c) = self.finish(idx) {
                        self.pending.defer(c);
                    }
                }
            }
        }
    }

    /// Completes slot `idx`: frees the slot and its buffer, and takes it out of `waiting` (a
    /// request failed with parts not yet issued).
    fn finish(&mut self, idx: usize) -> Option<Completion> {
        if self.slots[idx].queued {
            self.slots[idx].queued = false;
            if let Some(at) = self.waiting.iter().position(|&i| i == idx) {
                self.waiting.remove(at);
            }
        }
        let slot = &mut self.slots[idx];
        let io = slot.io.take()?;
        self.pool.release(&mut slot.bounce);
        let status = slot.status;
        slot.status = IoStatus::Success;
        slot.next_part = 0;
        slot.outstanding = 0;
        slot.done = 0;
        slot.round = 0;
        slot.parts.clear();
        slot.pieces.clear();
        self.free_slots.give(idx);
        Some(io.complete(status))
    }

    /// Handles the CQE of command entry `c`: the request's completion if that was its last
    /// part.
    fn on_cqe(&mut self, c: usize, res: i32) -> Option<Completion> {
        let idx = self.cmds.get(c)?.slot;
        self.free_cmds.give(c);
        let slot = self.slots.get_mut(idx)?;
        slot.io.as_ref()?;
        slot.outstanding = slot.outstanding.saturating_sub(1);
        match status_of(res) {
            IoStatus::Success => {}
            failed => {
                if slot.status != IoStatus::IoError {
                    slot.status = failed;
                }
                // Issue no more parts; finish once those out come back.
                slot.next_part = slot.parts.len();
            }
        }
        if slot.outstanding == 0 && slot.next_part >= slot.parts.len() {
            if slot.status != IoStatus::Success || self.next_round(idx) {
                return self.finish(idx);
            }
            // The next round's parts wait for command entries like any others.
            self.enqueue(idx);
        }
        None
    }

    /// Command entries in use (parts in the SQ or the kernel).
    fn cmds_busy(&self) -> usize {
        self.free_cmds.in_use()
    }

    /// Hands the SQ to the kernel (and, on a polled ring, polls for completions). A transient
    /// failure leaves the entries queued for the next pass; any other breaks the ring.
    fn enter(&mut self) {
        if self.broken.is_some() {
            return;
        }
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

    /// The ring cannot be used: fails the commands the kernel never took (it never will: the
    /// ring is not entered with entries to submit again) and with them their requests (once
    /// their other parts are back), every part not yet issued, and every request from now on.
    /// Commands the kernel took complete as their CQEs arrive; on a polled ring, which only
    /// completes commands inside `io_uring_enter`, they never do, and their requests stay in
    /// flight (the kernel may still move their data, so their buffers cannot be given back).
    fn break_ring(&mut self, e: &std::io::Error) {
        self.broken = Some(e.raw_os_error().unwrap_or(libc::EIO));
        let unconsumed = self.ring.submission().len();
        for i in 0..unconsumed {
            let c = self.shadow.last(unconsumed, i) as usize;
            let Some(idx) = self.cmds.get(c).map(|cmd| cmd.slot) else {
                continue;
            };
            self.free_cmds.give(c);
            let slot = &mut self.slots[idx];
            slot.outstanding = slot.outstanding.saturating_sub(1);
            slot.status = IoStatus::IoError;
            slot.next_part = slot.parts.len();
            if slot.outstanding == 0 {
                if let Some(done) = self.finish(idx) {
                    self.pending.defer(done);
                    self.submit_failures += 1;
                }
            }
        }
        self.fail_waiting();
    }

    /// On a broken ring: fails every waiting request's parts not yet issued, and the request
    /// once its issued parts are back.
    fn fail_waiting(&mut self) {
        while let Some(idx) = self.waiting.pop_front() {
            let slot = &mut self.slots[idx];
            slot.queued = false;
            if slot.io.is_none() {
                continue;
            }
            slot.status = IoStatus::IoError;
            slot.next_part = slot.parts.len();
            if slot.outstanding == 0 {
                if let Some(done) = self.finish(idx) {
                    self.pending.defer(done);
                    self.submit_failures += 1;
                }
            }
        }
    }
}

// SAFETY: the raw pointers a channel holds are its own bounce buffers (owned by the channel and
// freed only in its Drop) and the iovecs of requests it was handed, whose validity `BdevIo`'s
// contract ties to the request, not to a thread. A channel is opened on a control thread and moved
// to its reactor once; it is never used from two threads at a time (`&mut self` everywhere).
unsafe impl Send for NvmeChannel {}

impl IoChannel for NvmeChannel {
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
        let Some(idx) = self.free_slots.take() else {
            return Err(io);
        };
        let fua = io.op == IoOp::Write && io.durable();
        let slot = &mut self.slots[idx];
        slot.io = Some(io);
        slot.fua = fua;
        slot.status = IoStatus::Success;
        slot.done = 0;
        match self.prepare(idx) {
            Ok(true) => {}
            outcome => {
                let slot = &mut self.slots[idx];
                slot.parts.clear();
                self.pool.release(&mut slot.bounce);
                let Some(io) = slot.io.take() else {
                    return Ok(());
                };
                self.free_slots.give(idx);
                if outcome.is_err() {
                    // Every bounce buffer is lent to a request in flight: try again later.
                    return Err(io);
                }
                self.pending.push(io.complete(IoStatus::IoError));
                return Ok(());
            }
        }
        self.pending.start();
        self.enqueue(idx);
        self.pump();
        Ok(())
    }

    fn flush_submissions(&mut self) {
        self.pump();
        if self.broken.is_none() && !self.ring.submission().is_empty() {
            self.enter();
        }
    }

    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = self.pending.drain(done);
        if self.cfg.poll && self.cmds_busy() > 0 {
            // A polled ring only completes commands inside io_uring_enter(GETEVENTS).
            self.enter();
        }
        let reaped = ring::reap(self, done);
        self.pending.finished(reaped);
        n += reaped;
        if !self.waiting.is_empty() {
            // Freed command entries: issue the parts that waited for them.
            self.pump();
            self.enter();
        }
        // Requests failed while pumping.
        n += self.pending.drain(done);
        n
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn submit_failures(&self) -> u64 {
        self.submit_failures
    }

    /// An eventfd registered with the ring (a new edge on every CQE), or `None` for a polled
    /// ring (`NvmeOptions::poll`): its completions are found only by `poll_completions`
    /// entering the kernel, so a reactor must keep polling while `in_flight() > 0`.
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.completion_fd.as_ref().map(|fd| fd.as_raw_fd())
    }
}

impl RingChannel for NvmeChannel {
    type Sqe = squeue::Entry128;
    type Cqe = cqueue::Entry32;

    fn ring(&mut self) -> &mut Ring {
        &mut self.ring
    }

    fn handle_cqe(&mut self, user_data: u64, res: i32) -> Option<Completion> {
        self.on_cqe(user_data as usize, res)
    }

    fn in_kernel(&self) -> usize {
        self.cmds_busy()
    }

    fn retire(&mut self, user_data: u64) {
        let c = user_data as usize;
        if c < self.cmds.len() {
            self.free_cmds.give(c);
        }
    }

    fn broken(&self) -> bool {
        self.broken.is_some()
    }

    fn abandon(&mut self) {
        self.pool.leak();
        std::mem::forget(std::mem::take(&mut self.slots));
        std::mem::forget(std::mem::take(&mut self.cmds));
    }
}

impl NvmeChannel {
    /// Waits until the kernel holds none of the channel's commands; parts never issued stay
    /// that way. Completions are dropped.
    fn quiesce(&mut self) {
        self.waiting.clear();
        for slot in self.slots.iter_mut() {
            slot.queued = false;
        }
        ring::drain(self);
    }
}

impl Drop for NvmeChannel {
    /// Waits for every command the kernel holds: it may still move data into guest memory, the
    /// bounce buffers and the iovec pieces freed after this. Completions are dropped.
    fn drop(&mut self) {
        self.quiesce();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::cmd::{OPC_DSM, OPC_FLUSH, OPC_READ, OPC_WRITE, OPC_WRITE_ZEROES};
    use crate::testing::{rw, Buf};

    fn cfg() -> ChannelConfig {
        ChannelConfig {
            nsid: 1,
            block_shift: 9,
            size: 64 << 20,
            limits: Limits {
                block_size: 512,
                max_bytes: 64 << 10,
                max_pages: 32,
            },
            max_write_zeroes_blocks: 128,
            max_discard_blocks: 1024,
            read_only: false,
            discard: true,
            write_zeroes: true,
            poll: false,
        }
    }

    /// A channel over a regular file: the kernel fails every NVMe command on it with an errno,
    /// which is all the real round trips below need; the others complete commands by hand.
    fn channel(cfg: ChannelConfig, depth: usize) -> (tempfile::TempDir, NvmeChannel) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("not-nvme");
        std::fs::write(&path, [0u8; 4096]).expect("write");
        let file = File::open(&path).expect("open");
        (dir, NvmeChannel::new(file, cfg, depth).expect("channel"))
    }

    /// The fields of a 128-byte URING_CMD SQE.
    struct Sqe {
        opcode: u8,
        flags: u8,
        fd: i32,
        cmd_op: u32,
        user_data: u64,
        cmd: NvmeCmd,
    }

    fn decode(e: squeue::Entry128) -> Sqe {
        // SAFETY: Entry128 is repr(C): a zero-initialised 64-byte `io_uring_sqe` and 64 more
        // bytes, all initialised, 128 in all.
        let b: [u8; 128] = unsafe { std::mem::transmute(e) };
        let u32_at = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        let c = 48;
        Sqe {
            opcode: b[0],
            flags: b[1],
            fd: u32_at(4) as i32,
            cmd_op: u32_at(8),
            user_data: u64_at(32),
            cmd: NvmeCmd {
                opcode: b[c],
                flags: b[c + 1],
                rsvd1: u16::from_ne_bytes([b[c + 2], b[c + 3]]),
                nsid: u32_at(c + 4),
                cdw2: u32_at(c + 8),
                cdw3: u32_at(c + 12),
                metadata: u64_at(c + 16),
                addr: u64_at(c + 24),
                metadata_len: u32_at(c + 32),
                data_len: u32_at(c + 36),
                cdw10: u32_at(c + 40),
                cdw11: u32_at(c + 44),
                cdw12: u32_at(c + 48),
                cdw13: u32_at(c + 52),
                cdw14: u32_at(c + 56),
                cdw15: u32_at(c + 60),
                timeout_ms: u32_at(c + 64),
                result: u32_at(c + 68),
            },
        }
    }

    /// Puts `io` in a fresh slot and plans it the way `submit` does, without issuing it.
    fn planned(ch: &mut NvmeChannel, io: BdevIo) -> usize {
        let idx = ch.free_slots.take().expect("slot");
        ch.slots[idx].fua = io.op == IoOp::Write && io.durable();
        ch.slots[idx].io = Some(io);
        assert_eq!(ch.prepare(idx), Ok(true));
        idx
    }

    fn entries(ch: &mut NvmeChannel, idx: usize) -> Vec<Sqe> {
        (0..ch.slots[idx].parts.len())
            .map(|k| decode(ch.part_entry(idx, k, 7).expect("entry")))
            .collect()
    }

    #[test]
    fn footprint_at_depth_1024() {
        let bytes = footprint(1024);
        eprintln!("nvme channel at depth 1024: {bytes} bytes");
        let without_pool = bytes - (8 << 20);
        assert!(
            without_pool < 3 << 20,
            "ring, commands and slots: {without_pool}"
        );
        assert!(without_pool > 2 << 20);
    }

    #[test]
    fn sqes_carry_the_nvme_commands() {
        let (_d, mut ch) = channel(cfg(), 8);
        let src = Buf::new(16384, 0);

        // One segment: NVME_URING_CMD_IO with the buffer itself.
        let one = [src.iov(0, 4096)];
        let idx = planned(&mut ch, rw(1, IoOp::Write, 8192, &one).with_durable(true));
        let e = entries(&mut ch, idx);
        assert_eq!(e.len(), 1);
        let s = &e[0];
        assert_eq!(s.opcode, opcode::UringCmd80::CODE);
        assert_eq!(s.flags & 1, 1, "IOSQE_FIXED_FILE");
        assert_eq!((s.fd, s.user_data), (0, 7));
        assert_eq!(s.cmd_op, 0xc048_4e80);
        assert_eq!((s.cmd.opcode, s.cmd.nsid), (OPC_WRITE, 1));
        assert_eq!((s.cmd.cdw10, s.cmd.cdw11), (16, 0), "SLBA 8192 / 512");
        assert_eq!(s.cmd.cdw12, 7 | (1 << 30), "NLB 8 (0-based 7), FUA");
        assert_eq!((s.cmd.addr, s.cmd.data_len), (one[0].iov_base as u64, 4096));

        // Several segments: NVME_URING_CMD_IO_VEC with the request's own iovec array.
        let two = [src.iov(0, 4096), src.iov(8192, 4096)];
        let idx = planned(&mut ch, rw(2, IoOp::Read, 512, &two));
        let e = entries(&mut ch, idx);
        assert_eq!(e[0].cmd_op, 0xc048_4e81);
        assert_eq!(e[0].cmd.opcode, OPC_READ);
        assert_eq!((e[0].cmd.addr, e[0].cmd.data_len), (two.as_ptr() as u64, 2));
        assert_eq!((e[0].cmd.cdw10, e[0].cmd.cdw12), (1, 15));

        // Flush, write-zeroes split at 128 blocks, discard through the entry's range.
        let idx = planned(&mut ch, BdevIo::without_data(3, IoOp::Flush, 0, 0));
        let e = entries(&mut ch, idx);
        assert_eq!(
            (e.len(), e[0].cmd.opcode, e[0].cmd.data_len),
            (1, OPC_FLUSH, 0)
        );
        let idx = planned(
            &mut ch,
            BdevIo::without_data(4, IoOp::WriteZeroes, 1 << 20, 200 * 512),
        );
        let e = entries(&mut ch, idx);
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|s| s.cmd.opcode == OPC_WRITE_ZEROES));
        assert_eq!((e[0].cmd.cdw10, e[0].cmd.cdw12), (2048, 127));
        assert_eq!((e[1].cmd.cdw10, e[1].cmd.cdw12), (2048 + 128, 71));
        let idx = planned(
            &mut ch,
            BdevIo::without_data(5, IoOp::Discard, 4 << 20, 64 << 10),
        );
        let e = entries(&mut ch, idx);
        assert_eq!(e.len(), 1);
        let s = &e[0];
        assert_eq!(
            (s.cmd.opcode, s.cmd.cdw10, s.cmd.cdw11),
            (OPC_DSM, 0, 1 << 2)
        );
        assert_eq!(s.cmd.addr, &ch.cmds[7].range as *const DsmRange as u64);
        assert_eq!(s.cmd.data_len, 16);
        assert_eq!(ch.cmds[7].range, DsmRange::new(8192, 128));
    }

    /// FUA follows each request's durable flag (the caller owns the write-cache policy); the
    /// channel has no "every write durable" mode of its own.
    #[test]
    fn fua_follows_the_request() {
        let (_d, mut ch) = channel(cfg(), 8);
        let src = Buf::new(4096, 0);
        let one = [src.iov(0, 4096)];
        for durable in [false, true, false] {
            ch.submit(rw(1, IoOp::Write, 0, &one).with_durable(durable))
                .expect("room");
            let idx = ch.slots.iter().position(|s| s.io.is_some()).expect("slot");
            let e = entries(&mut ch, idx);
            assert_eq!(
                e[0].cmd.cdw12 & (1 << 30) != 0,
                durable,
                "durable {durable}"
            );
            let got = device_round(&mut ch, |_| 0);
            assert_eq!(got[0].status, IoStatus::Success);
        }
        // Reads never carry FUA, even if marked.
        ch.submit(rw(2, IoOp::Read, 0, &one).with_durable(true))
            .expect("room");
        let idx = ch.slots.iter().position(|s| s.io.is_some()).expect("slot");
        assert_eq!(entries(&mut ch, idx)[0].cmd.cdw12 & (1 << 30), 0);
        device_round(&mut ch, |_| 0);
    }

    #[test]
    fn large_requests_split_and_misaligned_ones_bounce() {
        let (_d, mut ch) = channel(cfg(), 8);
        // 160 KiB in one segment, 64 KiB per command: 64 + 64 + 32.
        let src = Buf::new(160 << 10, 0);
        let big = [src.iov(0, 160 << 10)];
        let idx = planned(&mut ch, rw(1, IoOp::Write, 0, &big));
        let e = entries(&mut ch, idx);
        let lens: Vec<u32> = e.iter().map(|s| s.cmd.data_len).collect();
        assert_eq!(lens, [64 << 10, 64 << 10, 32 << 10]);
        let slbas: Vec<u32> = e.iter().map(|s| s.cmd.cdw10).collect();
        assert_eq!(slbas, [0, 128, 256]);
        assert_eq!(e[2].cmd.addr, big[0].iov_base as u64 + (128 << 10));

        // Misaligned: staged in a pool buffer, the gathered data there.
        let odd = Buf::new(8192, 0x5a);
        let oiov = [odd.iov(100, 4096)];
        let idx = planned(&mut ch, rw(2, IoOp::Write, 0, &oiov));
        assert!(ch.slots[idx].bounce.is_some());
        let e = entries(&mut ch, idx);
        assert_eq!(e[0].cmd_op, 0xc048_4e80);
        assert_eq!(e[0].cmd.addr % 4096, 0, "page-aligned bounce buffer");
        assert_ne!(e[0].cmd.addr, oiov[0].iov_base as u64);
        // SAFETY: the pool buffer holds the 4096 gathered bytes.
        let staged = unsafe { std::slice::from_raw_parts(e[0].cmd.addr as *const u8, 4096) };
        assert!(staged.iter().all(|&b| b == 0x5a));
    }

    /// Plays the device: sends the queued commands through the kernel (which fails them: the
    /// file is no NVMe device), waits for all of them, and hands each CQE to the channel with
    /// the result `res(k)` of our choosing instead (k counts the CQEs of this round).
    fn device_round(ch: &mut NvmeChannel, res: impl Fn(usize) -> i32) -> Vec<Completion> {
        let busy = ch.cmds_busy();
        ch.ring.submit_and_wait(busy).expect("enter");
        let cqes: Vec<u64> = ch.ring.completion().map(|c| c.user_data()).collect();
        assert_eq!(cqes.len(), busy);
        let mut got = Vec::new();
        for (k, c) in cqes.into_iter().enumerate() {
            if let Some(done) = ch.on_cqe(c as usize, res(k)) {
                ch.pending.finished(1);
                got.push(done);
            }
        }
        got
    }

    /// Plays a RAM device for the one request in flight: carries out every part of its current
    /// round on `disk` (the SQEs as the kernel would get them), sends the commands through the
    /// kernel and completes them with success, and issues what comes next. Allocates nothing.
    /// Returns the completion once the request is done.
    fn ram_round(ch: &mut NvmeChannel, disk: &mut [u8]) -> Option<Completion> {
        let idx = ch
            .slots
            .iter()
            .position(|s| s.io.is_some())
            .expect("a request");
        let slot = &ch.slots[idx];
        assert_eq!(
            slot.next_part,
            slot.parts.len(),
            "the whole round is issued"
        );
        let bs = ch.cfg.limits.block_size as usize;
        for k in 0..slot.parts.len() {
            let e = decode(ch.part_entry(idx, k, 0).expect("entry"));
            let write = e.cmd.opcode == OPC_WRITE;
            assert!(write || e.cmd.opcode == OPC_READ);
            let mut at = e.cmd.cdw10 as usize * bs;
            let blocks = (e.cmd.cdw12 & 0xffff) as usize + 1;
            let one = IoVec {
                iov_base: e.cmd.addr as *mut libc::c_void,
                iov_len: e.cmd.data_len as usize,
            };
            let segs: &[IoVec] = if e.cmd_op == NVME_URING_CMD_IO {
                std::slice::from_ref(&one)
            } else {
                // SAFETY: IO_VEC commands carry the address and count of a live iovec array.
                unsafe {
                    std::slice::from_raw_parts(e.cmd.addr as *const IoVec, e.cmd.data_len as usize)
                }
            };
            assert_eq!(segs.iter().map(|v| v.iov_len).sum::<usize>(), blocks * bs);
            for v in segs {
                let mem = v.iov_base.cast::<u8>();
                // SAFETY: the command's buffers are live test or bounce memory of iov_len
                // bytes, not part of `disk`.
                unsafe {
                    if write {
                        std::ptr::copy_nonoverlapping(mem, disk[at..].as_mut_ptr(), v.iov_len);
                    } else {
                        std::ptr::copy_nonoverlapping(disk[at..].as_ptr(), mem, v.iov_len);
                    }
                }
                at += v.iov_len;
            }
        }
        let busy = ch.cmds_busy();
        ch.ring.submit_and_wait(busy).expect("enter");
        let mut cqes = [0u64; 64];
        let mut n = 0;
        for c in ch.ring.completion() {
            cqes[n] = c.user_data();
            n += 1;
        }
        assert_eq!(n, busy);
        let mut got = None;
        for &c in &cqes[..n] {
            if let Some(done) = ch.on_cqe(c as usize, 0) {
                ch.pending.finished(1);
                got = Some(done);
            }
        }
        ch.pump();
        got
    }

    /// Runs `io` on the RAM device; returns its status and how many rounds it took.
    fn ram_run(ch: &mut NvmeChannel, disk: &mut [u8], io: BdevIo) -> (IoStatus, usize) {
        let tag = io.tag;
        if ch.submit(io).is_err() {
            panic!("channel full");
        }
        for n in 1..1000 {
            if let Some(c) = ram_round(ch, disk) {
                assert_eq!(c.tag, tag);
                return (c.status, n);
            }
        }
        panic!("no completion after 1000 rounds");
    }

    /// Requests larger than a round (CAPS) move in several rounds, misaligned ones larger than a
    /// bounce buffer through one buffer in chunks (B1), the data landing where it belongs both
    /// ways; once warm, none of it allocates.
    #[test]
    fn large_requests_move_in_rounds_and_chunks_without_allocating() {
        use crate::testing::allocations;
        // 64 KiB and 32 pages per command; 32 command entries, so a round (16 parts) goes at
        // once.
        let (_d, mut ch) = channel(cfg(), 32);
        let mut disk = vec![0u8; 64 << 20];
        let mut model = vec![0u8; 64 << 20];
        let pat = |seed: usize, len: usize| -> Vec<u8> {
            (0..len)
                .map(|i| (i * 31 + seed * 7 + i / 4093) as u8)
                .collect()
        };

        // Misaligned: 2.5 MiB + 512 bytes through one 1 MiB buffer, iovecs cut mid-chunk.
        let len = (5 << 19) + 512;
        let data = pat(1, len);
        let mut src = Buf::new(len + 4096, 0);
        src.bytes_mut()[5..5 + len].copy_from_slice(&data);
        let cut = (1 << 20) + 999;
        let wiov = [src.iov(5, cut), src.iov(5 + cut, len - cut)];
        let at = 3 << 20;
        // Aligned but scattered: 768 page-sized segments two pages apart (3 MiB): 32 pieces per
        // command, 128 pieces per round, so four commands a round and six rounds.
        let segs = 768;
        let big = Buf::new(2 * segs * 4096, 0);
        let adata = pat(2, segs * 4096);
        let aiov: Vec<IoVec> = (0..segs).map(|i| big.iov(2 * i * 4096, 4096)).collect();
        for (i, v) in aiov.iter().enumerate() {
            // SAFETY: each iovec covers 4096 bytes of `big`, which no request uses yet.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    adata[i * 4096..].as_ptr(),
                    v.iov_base.cast::<u8>(),
                    4096,
                )
            };
        }
        let aat = 20 << 20;
        let dst = Buf::new(len + 4096, 0xee);
        let riov = [dst.iov(1, 4097), dst.iov(4098, len - 4097)];
        let adst = Buf::new(segs * 4096, 0);
        let ariov: Vec<IoVec> = (0..segs).map(|i| adst.iov(i * 4096, 4096)).collect();

        for round in 0..2 {
            let before = allocations();
            let st = [
                ram_run(&mut ch, &mut disk, rw(1, IoOp::Write, at, &wiov)),
                ram_run(&mut ch, &mut disk, rw(2, IoOp::Write, aat, &aiov)),
                ram_run(&mut ch, &mut disk, rw(3, IoOp::Read, at, &riov)),
                ram_run(&mut ch, &mut disk, rw(4, IoOp::Read, aat, &ariov)),
            ];
            let allocated = allocations() - before;
            let ok = IoStatus::Success;
            // Three chunks of one round each (16 x 64 KiB); six rounds of 128 pieces.
            assert_eq!(st, [(ok, 3), (ok, 6), (ok, 3), (ok, 6)], "round {round}");
            assert_eq!(allocated, 0, "allocations in round {round}");
        }
        model[at as usize..at as usize + len].copy_from_slice(&data);
        model[aat as usize..aat as usize + segs * 4096].copy_from_slice(&adata);
        assert!(disk == model, "device contents");
        assert!(dst.bytes()[1..1 + len] == data[..]);
        assert_eq!((dst.bytes()[0], dst.bytes()[1 + len]), (0xee, 0xee));
        assert!(adst.bytes() == &adata[..]);
        assert!(ch
            .slots
            .iter()
            .all(|s| s.pieces.capacity() == CAPS.pieces && s.parts.capacity() == CAPS.parts));
        assert_eq!(
            (ch.in_flight(), ch.cmds_busy(), ch.waiting.len()),
            (0, 0, 0)
        );
        assert!(ch.pool.take().is_some(), "the bounce buffer is back");
    }

    /// A discard or write-zeroes of more commands than a round holds goes in several rounds
    /// and completes once.
    #[test]
    fn long_block_commands_go_in_rounds() {
        let (_d, mut ch) = channel(cfg(), 32);
        // 128 blocks per write-zeroes command: 40 commands, three rounds of at most 16.
        ch.submit(BdevIo::without_data(
            7,
            IoOp::WriteZeroes,
            1 << 20,
            40 * 128 * 512,
        ))
        .expect("room");
        let mut rounds = 0;
        let mut got = Vec::new();
        while got.is_empty() {
            let idx = ch.slots.iter().position(|s| s.io.is_some()).expect("slot");
            let parts = &ch.slots[idx].parts;
            assert!(parts.len() <= CAPS.parts);
            assert_eq!(parts[0].offset, (1 << 20) + rounds as u64 * 16 * 128 * 512);
            got = device_round(&mut ch, |_| 0);
            ch.pump();
            rounds += 1;
        }
        assert_eq!(rounds, 3);
        assert_eq!(
            got,
            [Completion {
                tag: 7,
                status: IoStatus::Success
            }]
        );
        // A flush is one command, whatever range it names.
        ch.submit(BdevIo::without_data(9, IoOp::Flush, 0, 1 << 20))
            .expect("room");
        assert_eq!(ch.cmds_busy(), 1);
        let got = device_round(&mut ch, |_| 0);
        assert_eq!(got[0].tag, 9);
        assert_eq!((ch.in_flight(), ch.cmds_busy()), (0, 0));
        // A failed command fails the request without further rounds.
        ch.submit(BdevIo::without_data(
            8,
            IoOp::WriteZeroes,
            0,
            40 * 128 * 512,
        ))
        .expect("room");
        let got = device_round(&mut ch, |k| if k == 3 { 0x281 } else { 0 });
        assert_eq!(got[0].status, IoStatus::IoError);
        ch.pump();
        assert_eq!(
            (ch.in_flight(), ch.cmds_busy(), ch.waiting.len()),
            (0, 0, 0)
        );
    }

    /// A ring without polling has a completion eventfd, signalled when a command's CQE
    /// arrives; a polled ring has none (its completions are only found by polling).
    #[test]
    fn completion_fd_only_without_polling() {
        let (_d, mut ch) = channel(cfg(), 4);
        use crate::testing::readable;
        let fd = ch.completion_fd().expect("an eventfd");
        assert!(!readable(fd, 0), "nothing yet");
        let buf = Buf::new(4096, 0);
        let iov = [buf.iov(0, 4096)];
        ch.submit(rw(1, IoOp::Read, 0, &iov)).expect("room");
        ch.flush_submissions();
        assert!(readable(fd, 5000), "the CQE signalled it");
        let mut got = Vec::new();
        ch.poll_completions(&mut |c| got.push(c));
        assert_eq!(got.len(), 1, "and the completion is there");

        let mut c = cfg();
        c.poll = true;
        let (_d2, polled) = channel(c, 4);
        assert_eq!(polled.completion_fd(), None);
    }

    /// A transient enter failure leaves the commands queued; the next pass submits them.
    #[test]
    fn transient_submit_errors_retry_on_the_next_pass() {
        let (_d, mut ch) = channel(cfg(), 4);
        let src = Buf::new(8192, 1);
        let iov = [src.iov(0, 8192)];
        ch.inject_enter = vec![libc::EAGAIN, libc::EBUSY];
        ch.submit(rw(1, IoOp::Write, 0, &iov)).expect("room");
        ch.flush_submissions();
        ch.flush_submissions();
        assert_eq!(ch.ring.submission().len(), 1);
        assert!(ch.broken.is_none());
        let got = device_round(&mut ch, |_| 0);
        assert_eq!(got[0].status, IoStatus::Success);
        assert_eq!(ch.submit_failures(), 0);
    }

    /// A non-transient enter failure breaks the ring: a request whose commands the kernel never
    /// took fails once (its unissued parts too), a request the kernel took completes as its
    /// CQEs say, later requests fail at once, all counted; nothing is left waiting.
    #[test]
    fn a_broken_ring_fails_what_the_kernel_never_took() {
        // Two command entries: the five-part request has two parts queued, three waiting.
        let (_d, mut ch) = channel(cfg(), 4);
        let src = Buf::new(320 << 10, 1);
        let small = [src.iov(0, 4096)];
        let big = [src.iov(0, 320 << 10)];
        ch.submit(rw(1, IoOp::Read, 0, &small)).expect("room");
        ch.flush_submissions(); // the kernel took it
        ch.submit(rw(2, IoOp::Write, 0, &big)).expect("room");
        assert_eq!((ch.cmds_busy(), ch.waiting.len()), (4, 1));
        ch.inject_enter = vec![libc::EINVAL];
        ch.flush_submissions();
        assert_eq!(ch.broken, Some(libc::EINVAL));
        assert_eq!(ch.cmds_busy(), 1, "only the command the kernel took");
        assert!(ch.waiting.is_empty());
        // The first request's CQE (an errno from the kernel: not an NVMe device) arrives on
        // its own; the second failed without the kernel.
        let mut got = Vec::new();
        let start = std::time::Instant::now();
        while got.len() < 2 {
            ch.poll_completions(&mut |c| got.push(c));
            assert!(start.elapsed().as_secs() < 10, "{got:?}");
        }
        got.sort_by_key(|c| c.tag);
        assert_eq!(
            got.iter().map(|c| (c.tag, c.status)).collect::<Vec<_>>(),
            [(1, IoStatus::IoError), (2, IoStatus::IoError)]
        );
        assert_eq!(ch.submit_failures(), 1);
        assert_eq!((ch.in_flight(), ch.cmds_busy()), (0, 0));
        ch.submit(rw(3, IoOp::Read, 0, &small)).expect("room");
        let mut got = Vec::new();
        ch.poll_completions(&mut |c| got.push(c));
        assert_eq!(
            got,
            [Completion {
                tag: 3,
                status: IoStatus::IoError
            }]
        );
        assert_eq!(ch.submit_failures(), 2);
        // The queued SQEs are never submitted, even at drop.
        assert_eq!(ch.ring.submission().len(), 3);
    }

    #[test]
    fn a_request_completes_once_after_all_its_parts() {
        // Depth 2: two command entries, so a five-part request issues in three rounds.
        let (_d, mut ch) = channel(cfg(), 2);
        let src = Buf::new(320 << 10, 1);
        let big = [src.iov(0, 320 << 10)];
        ch.submit(rw(9, IoOp::Write, 0, &big)).expect("room");
        let mut got = Vec::new();
        for round in 0..3 {
            assert!(got.is_empty(), "completed early, round {round}");
            assert_eq!(ch.cmds_busy(), if round < 2 { 2 } else { 1 });
            got = device_round(&mut ch, |_| 0);
            ch.pump();
        }
        assert_eq!(
            got,
            [Completion {
                tag: 9,
                status: IoStatus::Success
            }]
        );
        assert_eq!(
            (ch.cmds_busy(), ch.in_flight(), ch.waiting.len()),
            (0, 0, 0)
        );
        assert_eq!(ch.free_slots.in_use(), 0, "both slots free");
    }

    #[test]
    fn a_failed_part_fails_the_request_and_stops_the_rest() {
        let (_d, mut ch) = channel(cfg(), 2);
        let src = Buf::new(320 << 10, 1);
        let big = [src.iov(0, 320 << 10)];
        ch.submit(rw(3, IoOp::Read, 0, &big)).expect("room");
        // One part fails with an NVMe media error, the other succeeds: the request fails once
        // both are back, and its three remaining parts are never issued.
        assert_eq!(ch.cmds_busy(), 2);
        let got = device_round(&mut ch, |k| if k == 0 { 0x281 } else { 0 });
        assert_eq!(
            got,
            [Completion {
                tag: 3,
                status: IoStatus::IoError
            }]
        );
        ch.pump();
        assert_eq!(
            (ch.cmds_busy(), ch.in_flight(), ch.waiting.len()),
            (0, 0, 0)
        );
        // Invalid Field on a write-zeroes: unsupported.
        ch.submit(BdevIo::without_data(4, IoOp::WriteZeroes, 0, 512))
            .expect("room");
        let got = device_round(&mut ch, |_| 0x2);
        assert_eq!(
            got,
            [Completion {
                tag: 4,
                status: IoStatus::Unsupported
            }]
        );
    }

    #[test]
    fn bounced_reads_are_copied_out_on_completion() {
        let (_d, mut ch) = channel(cfg(), 4);
        let dst = Buf::new(8192, 0);
        let iov = [dst.iov(1, 1024), dst.iov(2048, 512)];
        ch.submit(rw(5, IoOp::Read, 0, &iov)).expect("room");
        let idx = ch.slots.iter().position(|s| s.io.is_some()).expect("slot");
        let Some(Chunk { buf: b, .. }) = ch.slots[idx].bounce else {
            panic!("not bounced");
        };
        // The "device" fills the bounce buffer.
        // SAFETY: the pool buffer has 1 MiB; nothing else uses it.
        unsafe { std::ptr::write_bytes(ch.pool.ptr(b), 0xc3, 1536) };
        let got = device_round(&mut ch, |_| 0);
        assert_eq!(got[0].status, IoStatus::Success);
        assert!(dst.bytes()[1..1025].iter().all(|&x| x == 0xc3));
        assert!(dst.bytes()[2048..2560].iter().all(|&x| x == 0xc3));
        assert_eq!(dst.bytes()[0], 0);
        assert_eq!(dst.bytes()[1025], 0);
        assert_eq!(ch.pool.take(), Some(b), "buffer back in the pool");
    }

    /// Real round trips through the kernel: requests decided without the device, and NVMe
    /// commands the kernel refuses on a file that is not an NVMe char device (an errno, so an
    /// I/O error), each reported once; drop waits for commands in flight.
    #[test]
    fn kernel_round_trip_and_prechecks() {
        for poll in [false, true] {
            kernel_round_trip(poll);
        }
    }

    fn kernel_round_trip(poll: bool) {
        let mut c = cfg();
        c.discard = false;
        c.poll = poll;
        let (_d, mut ch) = channel(c, 8);
        let buf = Buf::new(1 << 20, 0);
        let ok = [buf.iov(0, 4096)];
        let big = [buf.iov(0, 1 << 20)];
        let odd = [buf.iov(0, 1000)];
        ch.submit(rw(1, IoOp::Read, 0, &ok)).expect("room");
        ch.submit(rw(2, IoOp::Write, 1 << 20, &big)).expect("room");
        ch.submit(rw(3, IoOp::Read, 64 << 20, &ok)).expect("room"); // past the end
        ch.submit(rw(4, IoOp::Read, 100, &ok)).expect("room"); // not block-aligned
        ch.submit(rw(5, IoOp::Write, 0, &odd)).expect("room"); // not whole blocks
        ch.submit(BdevIo::without_data(6, IoOp::Discard, 0, 4096))
            .expect("room");
        ch.submit(BdevIo::without_data(7, IoOp::WriteZeroes, 0, 0))
            .expect("room");
        ch.submit(BdevIo::without_data(8, IoOp::Flush, 0, 0))
            .expect("room");
        assert_eq!(ch.in_flight(), 8);
        assert!(
            ch.submit(rw(9, IoOp::Read, 0, &ok)).is_err(),
            "full at depth 8"
        );
        let mut got = Vec::new();
        let start = std::time::Instant::now();
        while got.len() < 8 {
            ch.flush_submissions();
            ch.poll_completions(&mut |c| got.push(c));
            assert!(
                start.elapsed().as_secs() < 10,
                "timed out (poll {poll}): {got:?}"
            );
            std::thread::yield_now();
        }
        got.sort_by_key(|c| c.tag);
        let st: Vec<IoStatus> = got.iter().map(|c| c.status).collect();
        use IoStatus::*;
        assert_eq!(
            st,
            [
                IoError,
                IoError,
                IoError,
                IoError,
                IoError,
                Unsupported,
                Success,
                IoError
            ]
        );
        assert_eq!((ch.in_flight(), ch.cmds_busy()), (0, 0));

        // Read-only: writes refused without the kernel.
        let mut c = cfg();
        c.read_only = true;
        let (_d2, mut ro) = channel(c, 2);
        ro.submit(rw(1, IoOp::Write, 0, &ok)).expect("room");
        let mut got = Vec::new();
        ro.poll_completions(&mut |c| got.push(c));
        assert_eq!(
            got,
            [Completion {
                tag: 1,
                status: IoError
            }]
        );

        // Dropped with commands in the kernel (and parts still waiting): what drop does (the
        // same function) leaves no command in the kernel's hands, and nothing is issued after.
        ch.submit(rw(10, IoOp::Write, 0, &big)).expect("room");
        ch.submit(rw(11, IoOp::Write, 1 << 20, &big)).expect("room");
        ch.flush_submissions();
        assert_eq!(ch.cmds_busy(), 8, "every command entry in use");
        assert!(!ch.waiting.is_empty(), "parts waiting");
        ch.quiesce();
        assert_eq!((ch.cmds_busy(), ch.in_kernel()), (0, 0));
        assert!(ch.waiting.is_empty());
        assert!(ch.ring.submission().is_empty());
        drop(ch);
    }
}
