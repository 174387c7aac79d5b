//! The data path: one [`VirtqPoller`] per started virtqueue, owned by one reactor. Each pass it
//! takes control messages, pops new chains (guest notifications suppressed), parses them,
//! submits them to its bdev channel, reaps completions into the used ring and signals the guest
//! at most once.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use log::warn;
use spinblk_bdev::{BdevIo, IoChannel, IoStatus, IoVec};
use spinblk_reactor::{PollStatus, Poller, Tick};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::device::DeviceInfo;
use crate::inflight::{InflightError, InflightQueue};
use crate::request::{BlkRequest, HeadChain, RequestKind, ID_BYTES, MAX_IOVECS};
use crate::stats::QueueStats;

/// Everything a reactor needs to start polling a virtqueue.
pub(crate) struct QueueStart {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    pub next_avail: u16,
    pub event_idx: bool,
    pub enabled: bool,
    pub write_cache: bool,
    pub call: Option<File>,
    pub mem: Arc<GuestMemoryMmap>,
    pub device: Arc<DeviceInfo>,
    pub ctrl: Receiver<QueueCtrl>,
    /// This queue's part of the inflight region, when the frontend set one.
    pub inflight: Option<InflightQueue>,
}

/// Messages from the control plane to a running queue.
pub(crate) enum QueueCtrl {
    /// A new memory table; acknowledged once the queue uses it.
    Memory(Arc<GuestMemoryMmap>, Sender<()>),
    /// A new call eventfd (or none).
    Call(Option<File>),
    /// SET_VRING_ENABLE: whether to take new requests.
    Enable(bool),
    /// The guest switched the write cache (config space `writeback`).
    WriteCache(bool),
    /// Stop taking requests; reply once in-flight ones completed, then the poller ends.
    Stop(Sender<QueueStopped>),
    /// Copy of the statistics.
    Stats(Sender<QueueStats>),
}

/// A stopped queue's final state (for GET_VRING_BASE).
#[derive(Debug)]
pub(crate) struct QueueStopped {
    pub next_avail: u16,
    pub stats: QueueStats,
}

/// Why a queue could not start.
#[derive(Debug)]
pub(crate) enum QueueStartError {
    /// The ring addresses or size do not fit guest memory.
    InvalidRing,
    /// The bdev refused a channel.
    Channel(String),
    /// The inflight region does not fit this ring.
    Inflight(InflightError),
}

impl std::fmt::Display for QueueStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueStartError::InvalidRing => f.write_str("ring does not fit guest memory"),
            QueueStartError::Channel(e) => write!(f, "cannot open bdev channel: {e}"),
            QueueStartError::Inflight(e) => write!(f, "{e}"),
        }
    }
}

/// Per-request state, indexed by descriptor head (preallocated: no allocation per request).
#[derive(Clone, Copy)]
struct Slot {
    busy: bool,
    kind: RequestKind,
    status_addr: GuestAddress,
    used_len: u32,
    len: u64,
    submitted: Option<Tick>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            busy: false,
            kind: RequestKind::Flush,
            status_addr: GuestAddress(0),
            used_len: 0,
            len: 0,
            submitted: None,
        }
    }
}

/// Polls one virtqueue. Not `Send`: built on, and never leaves, its reactor.
pub(crate) struct VirtqPoller {
    queue: Queue,
    mem: Arc<GuestMemoryMmap>,
    /// Older memory tables, kept mapped until the requests that may point into them are done.
    retired: Vec<Arc<GuestMemoryMmap>>,
    channel: Box<dyn IoChannel>,
    device: Arc<DeviceInfo>,
    slots: Box<[Slot]>,
    iovecs: Box<[IoVec]>,
    /// Requests the channel handed back (full); retried before new ones are popped.
    backlog: VecDeque<BdevIo>,
    in_flight: usize,
    ctrl: Receiver<QueueCtrl>,
    call: Option<File>,
    enabled: bool,
    /// Write-back mode; in write-through mode writes are submitted as durable.
    write_cache: bool,
    stop_reply: Option<Sender<QueueStopped>>,
    used_added: bool,
    stats: QueueStats,
    inflight: Option<InflightQueue>,
    /// Heads a previous backend left in flight, resubmitted before anything new is popped.
    resubmit: VecDeque<u16>,
    /// The driver published an avail index more than a ring ahead: no more requests are taken
    /// from this queue until it is reset (in-flight ones still complete).
    broken: bool,
}

impl VirtqPoller {
    /// Builds the poller on the reactor that will own it.
    pub(crate) fn new(s: QueueStart) -> Result<Self, QueueStartError> {
        let mut queue = Queue::new(s.size).map_err(|_| QueueStartError::InvalidRing)?;
        queue.set_size(s.size);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(s.desc);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(s.avail);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(s.used);
        queue.set_used_ring_address(lo, hi);
        queue.set_event_idx(s.event_idx);
        queue.set_next_avail(s.next_avail);
        queue.set_next_used(s.next_avail);
        queue.set_ready(true);
        if !queue.is_valid(s.mem.as_ref()) {
            return Err(QueueStartError::InvalidRing);
        }
        let mut inflight = s.inflight;
        let mut resubmit = VecDeque::new();
        if let Some(inf) = inflight.as_mut() {
            // After a restart the used ring, not the frontend's base, says where we are: the
            // frontend never learned the avail index of requests the old backend popped.
            let used = queue
                .used_idx(s.mem.as_ref(), Ordering::Acquire)
                .map_err(|_| QueueStartError::InvalidRing)?;
            if let Some(rec) = inf.recover(used.0).map_err(QueueStartError::Inflight)? {
                queue.set_next_avail(rec.next_avail);
                queue.set_next_used(rec.used_idx);
                resubmit.extend(rec.resubmit);
            }
        }
        // Suppress guest kicks while we poll (a no-op with EVENT_IDX: there the guest kicks only
        // when avail idx crosses avail_event, which we never advance).
        queue
            .disable_notification(s.mem.as_ref())
            .map_err(|_| QueueStartError::InvalidRing)?;
        let size = usize::from(s.size);
        let channel = s
            .device
            .bdev
            .open_channel(size)
            .map_err(|e| QueueStartError::Channel(e.to_string()))?;
        let empty = IoVec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Ok(VirtqPoller {
            queue,
            mem: s.mem,
            retired: Vec::new(),
            channel,
            device: s.device,
            slots: vec![Slot::default(); size].into_boxed_slice(),
            iovecs: vec![empty; size * MAX_IOVECS].into_boxed_slice(),
            backlog: VecDeque::with_capacity(size),
            in_flight: 0,
            ctrl: s.ctrl,
            call: s.call,
            enabled: s.enabled,
            write_cache: s.write_cache,
            stop_reply: None,
            used_added: false,
            stats: QueueStats::default(),
            inflight,
            resubmit,
            broken: false,
        })
    }

    fn handle_ctrl(&mut self) -> bool {
        let mut any = false;
        while let Ok(msg) = self.ctrl.try_recv() {
            any = true;
            match msg {
                QueueCtrl::Memory(mem, ack) => {
                    let old = std::mem::replace(&mut self.mem, mem);
                    if self.in_flight > 0 {
                        self.retired.push(old);
                    }
                    let _ = ack.send(());
                }
                QueueCtrl::Call(call) => self.call = call,
                QueueCtrl::Enable(on) => self.enabled = on,
                QueueCtrl::WriteCache(on) => self.write_cache = on,
                QueueCtrl::Stop(reply) => self.stop_reply = Some(reply),
                QueueCtrl::Stats(reply) => {
                    let _ = reply.send(self.stats.clone());
                }
            }
        }
        any
    }

    /// Writes `status` and publishes the used element for `head`.
    fn complete(
        &mut self,
        head: u16,
        status: u8,
        used_len: u32,
        status_addr: Option<GuestAddress>,
    ) {
        publish_used(
            &mut self.queue,
            &self.mem,
            self.inflight.as_ref(),
            head,
            status,
            status_addr,
            used_len,
        );
        self.used_added = true;
    }

    /// Retries requests a full channel handed back earlier.
    fn submit_backlog(&mut self) -> bool {
        let mut any = false;
        while let Some(io) = self.backlog.pop_front() {
            match self.channel.submit(io) {
                Ok(()) => any = true,
                Err(io) => {
                    self.backlog.push_front(io);
                    break;
                }
            }
        }
        any
    }

    /// Pops and starts new requests, at most one ring's worth per pass; requests left in
    /// flight by a previous backend go first, in their original order.
    fn pop_requests(&mut self) -> bool {
        let mut popped = 0;
        let size = self.slots.len();
        // One clock read per pass, and none on idle passes.
        let mut now = None;
        if self.driver_is_broken() {
            return false;
        }
        // A new memory table only arrives in handle_ctrl, before this: one clone serves the pass.
        let mem = Arc::clone(&self.mem);
        let mem = mem.as_ref();
        while popped < size && self.backlog.is_empty() {
            if let Some(head) = self.resubmit.pop_front() {
                let table = GuestAddress(self.queue.desc_table());
                self.start_request(
                    head,
                    HeadChain::new(mem, table, self.queue.size(), head),
                    mem,
                    &mut now,
                );
            } else {
                let Some(chain) = self.queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                if let (Some(inf), true) = (self.inflight.as_mut(), usize::from(head) < size) {
                    inf.mark_popped(head);
                }
                self.start_request(head, chain, mem, &mut now);
            }
            popped += 1;
        }
        popped > 0
    }

    /// Checks the avail index once per pass: a driver more than a ring ahead of us is broken
    /// (virtio 1.2, 2.7.13). Reported once; the queue then takes nothing more from it.
    fn driver_is_broken(&mut self) -> bool {
        if !self.broken && self.resubmit.is_empty() {
            let avail = self.queue.avail_idx(self.mem.as_ref(), Ordering::Acquire);
            let ahead = avail.map(|a| a.0.wrapping_sub(self.queue.next_avail()));
            if ahead.map_or(true, |n| usize::from(n) > self.slots.len()) {
                warn!("virtqueue: the driver's avail index is invalid; ignoring this queue until it is reset");
                self.stats.dropped += 1;
                self.broken = true;
            }
        }
        self.broken
    }

    /// Parses one chain and submits it (or answers it at once).
    fn start_request(
        &mut self,
        head: u16,
        chain: impl IntoIterator<Item = Descriptor>,
        mem: &GuestMemoryMmap,
        now: &mut Option<Tick>,
    ) {
        let size = self.slots.len();
        let h = usize::from(head);
        if h >= size || self.slots[h].busy {
            // A head outside the ring, or one already in flight: a broken driver. There is no
            // safe used element to return, so drop it and count it.
            self.stats.dropped += 1;
            return;
        }
        let iov = &mut self.iovecs[h * MAX_IOVECS..(h + 1) * MAX_IOVECS];
        let req = match BlkRequest::parse(chain, mem, &self.device.limits, iov) {
            Ok(req) => req,
            Err(refused) => {
                match refused.error.status() as u32 {
                    VIRTIO_BLK_S_UNSUPP => self.stats.unsupported += 1,
                    _ => self.stats.io_errors += 1,
                }
                if refused.status_addr.is_none() {
                    self.stats.dropped += 1;
                }
                self.complete(head, refused.error.status(), 1, refused.status_addr);
                return;
            }
        };
        let Some(op) = req.kind.bdev_op() else {
            self.answer_get_id(head, &req);
            return;
        };
        self.slots[h] = Slot {
            busy: true,
            kind: req.kind,
            status_addr: req.status_addr,
            used_len: req.used_len(),
            len: req.len,
            submitted: Some(*now.get_or_insert_with(Tick::now)),
        };
        self.in_flight += 1;
        let io = if req.iovcnt > 0 {
            // SAFETY: the iovecs were just filled by parse from guest memory that `self.mem`
            // (or, after a table change, `self.retired`) keeps mapped until this request
            // completes; slot `h`'s iovec range is not reused while the slot is busy.
            unsafe {
                BdevIo::with_iovecs(
                    u32::from(head),
                    op,
                    req.offset,
                    req.len,
                    self.iovecs[h * MAX_IOVECS..].as_ptr(),
                    req.iovcnt,
                )
            }
        } else {
            BdevIo::without_data(u32::from(head), op, req.offset, req.len)
        };
        let io = io.with_durable(req.kind == RequestKind::Write && !self.write_cache);
        if let Err(io) = self.channel.submit(io) {
            self.backlog.push_back(io);
        }
    }

    /// GET_ID: copy the serial into the guest buffers and complete at once.
    fn answer_get_id(&mut self, head: u16, req: &BlkRequest) {
        let h = usize::from(head);
        let mut left = &self.device.serial[..];
        for v in &self.iovecs[h * MAX_IOVECS..h * MAX_IOVECS + req.iovcnt] {
            let n = left.len().min(v.iov_len);
            // SAFETY: parse translated this iovec from guest memory mapped by self.mem, device-
            // writable and at least iov_len bytes long; the serial is our own array.
            unsafe { std::ptr::copy_nonoverlapping(left.as_ptr(), v.iov_base.cast::<u8>(), n) };
            left = &left[n..];
        }
        self.stats
            .count(RequestKind::GetId, req.len.min(ID_BYTES as u64));
        self.complete(
            head,
            VIRTIO_BLK_S_OK as u8,
            req.used_len(),
            Some(req.status_addr),
        );
    }

    /// Moves finished bdev requests to the used ring.
    fn reap(&mut self) -> usize {
        if self.in_flight == 0 {
            return 0;
        }
        let now = Tick::now();
        let VirtqPoller {
            channel,
            slots,
            queue,
            mem,
            stats,
            in_flight,
            used_added,
            inflight,
            ..
        } = self;
        let mem = mem.as_ref();
        channel.poll_completions(&mut |c| {
            let Some(slot) = slots.get_mut(c.tag as usize) else {
                return;
            };
            slot.busy = false;
            *in_flight -= 1;
            if let Some(t) = slot.submitted {
                stats.record_latency(Tick::to_nanos(now.ticks_since(t)));
            }
            let (status, used_len) = match c.status {
                IoStatus::Success => {
                    stats.count(slot.kind, slot.len);
                    (VIRTIO_BLK_S_OK, slot.used_len)
                }
                IoStatus::IoError => {
                    stats.count(slot.kind, 0);
                    stats.io_errors += 1;
                    (VIRTIO_BLK_S_IOERR, 1)
                }
                IoStatus::Unsupported => {
                    stats.count(slot.kind, 0);
                    stats.unsupported += 1;
                    (VIRTIO_BLK_S_UNSUPP, 1)
                }
            };
            let head = c.tag as u16;
            let status_addr = Some(slot.status_addr);
            publish_used(
                queue,
                mem,
                inflight.as_ref(),
                head,
                status as u8,
                status_addr,
                used_len,
            );
            *used_added = true;
        })
    }

    /// Signals the call eventfd once for everything this pass published, if the guest asked.
    fn notify_guest(&mut self) {
        self.used_added = false;
        let mem = self.mem.as_ref();
        let wanted = if self.queue.event_idx_enabled() {
            self.queue.needs_notification(mem).unwrap_or(true)
        } else {
            // The used idx store must be visible before we read the guest's flag.
            fence(Ordering::SeqCst);
            let flags: u16 = mem
                .load(GuestAddress(self.queue.avail_ring()), Ordering::Acquire)
                .unwrap_or(0);
            flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
        };
        if let (true, Some(call)) = (wanted, &self.call) {
            let one = 1u64;
            // SAFETY: writing 8 bytes from a live u64 to an eventfd we own; a failure (counter
            // full) only means the guest already has a pending interrupt.
            unsafe { libc::write(call.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// Writes the status byte and publishes the used element for `head`, bracketed by the inflight
/// region updates the vhost-user spec orders around it.
fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    inflight: Option<&InflightQueue>,
    head: u16,
    status: u8,
    status_addr: Option<GuestAddress>,
    used_len: u32,
) {
    let mut len = used_len;
    if let Some(addr) = status_addr {
        if mem.write_obj(status, addr).is_err() {
            len = 0;
        }
    }
    if let Some(inf) = inflight {
        inf.before_used(head);
    }
    // add_used only fails for a head outside the ring, which is never passed here.
    let _ = queue.add_used(mem, head, len);
    if let Some(inf) = inflight {
        inf.after_used(head, queue.next_used());
    }
}

impl Poller for VirtqPoller {
    fn poll(&mut self) -> PollStatus {
        let mut busy = self.handle_ctrl();
        // The backlog holds requests already taken from the ring: always push them on, even
        // while disabled or stopping, or a stop would wait for them forever.
        busy |= self.submit_backlog();
        if self.enabled && self.stop_reply.is_none() {
            busy |= self.pop_requests();
        }
        self.channel.flush_submissions();
        busy |= self.reap() > 0;
        if self.used_added {
            self.notify_guest();
        }
        if self.in_flight == 0 {
            self.retired.clear();
            if let Some(reply) = self.stop_reply.take() {
                let _ = reply.send(QueueStopped {
                    next_avail: self.queue.next_avail(),
                    stats: std::mem::take(&mut self.stats),
                });
                return PollStatus::Done;
            }
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inflight::InflightRegion;
    use crate::request::DeviceLimits;
    use spinblk_bdev::{Bdev, BdevError, Completion, MallocBdev};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_OUT;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const RING: u16 = 16;
    const HDR: u64 = 0x10000;
    const DATA: u64 = 0x11000;
    const STATUS: u64 = 0x20000;

    /// A bdev whose channel takes requests and never finishes them (a process about to die).
    struct StuckBdev;
    struct StuckChannel(usize);
    impl Bdev for StuckBdev {
        fn name(&self) -> &str {
            "stuck"
        }
        fn block_size(&self) -> u32 {
            512
        }
        fn num_blocks(&self) -> u64 {
            2048
        }
        fn supports(&self, _op: spinblk_bdev::IoOp) -> bool {
            true
        }
        fn open_channel(&self, _depth: usize) -> Result<Box<dyn IoChannel>, BdevError> {
            Ok(Box::new(StuckChannel(0)))
        }
    }
    impl IoChannel for StuckChannel {
        fn submit(&mut self, _io: BdevIo) -> Result<(), BdevIo> {
            self.0 += 1;
            Ok(())
        }
        fn poll_completions(&mut self, _done: &mut dyn FnMut(Completion)) -> usize {
            0
        }
        fn in_flight(&self) -> usize {
            self.0
        }
    }

    fn device(bdev: Arc<dyn Bdev>) -> Arc<DeviceInfo> {
        Arc::new(DeviceInfo {
            limits: DeviceLimits {
                capacity: 1 << 20,
                block_size: 512,
                read_only: false,
                discard: true,
                write_zeroes: true,
            },
            serial: [0; ID_BYTES],
            write_cache: true,
            bdev,
        })
    }

    /// Publishes a one-sector write of `fill` to `sector` as chain `chain` (descriptors
    /// 3*chain .. 3*chain+2).
    fn add_write(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        chain: u16,
        sector: u64,
        fill: u8,
    ) {
        let base = u64::from(chain) * 0x1000;
        let hdr = [VIRTIO_BLK_T_OUT.to_le_bytes(), [0; 4]].concat();
        mem.write_slice(&hdr, GuestAddress(HDR + base))
            .expect("header");
        mem.write_obj(sector.to_le(), GuestAddress(HDR + base + 8))
            .expect("sector");
        mem.write_slice(&[fill; 512], GuestAddress(DATA + base))
            .expect("data");
        let next = VRING_DESC_F_NEXT as u16;
        let first = chain * 3;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR + base, 16, next, first + 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA + base, 512, next, first + 2)),
            RawDescriptor::from(SplitDescriptor::new(
                STATUS + base,
                1,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&descs, first).expect("chain");
    }

    fn start(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        dev: Arc<DeviceInfo>,
        region: &Arc<InflightRegion>,
    ) -> VirtqPoller {
        let (_tx, ctrl) = crossbeam_channel::unbounded();
        std::mem::forget(_tx);
        VirtqPoller::new(QueueStart {
            size: RING,
            desc: vq.desc_table_addr(),
            avail: vq.avail_addr(),
            used: vq.used_addr(),
            next_avail: 0,
            event_idx: false,
            enabled: true,
            write_cache: true,
            call: None,
            mem: Arc::new(mem.clone()),
            device: dev,
            ctrl,
            inflight: Some(region.queue(0, RING).expect("inflight queue")),
        })
        .unwrap_or_else(|e| panic!("queue start: {e}"))
    }

    #[test]
    fn completions_clear_inflight_and_a_restart_resubmits_what_was_left() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).expect("memory");
        let vq = MockSplitQueue::new(&mem, RING);
        let (region, _fd) = InflightRegion::create(1, RING).expect("region");
        let region = Arc::new(region);
        let malloc: Arc<dyn Bdev> = Arc::new(MallocBdev::new("m", 1 << 20, 512).expect("bdev"));

        // A normal completion: used idx 1, and the region shows nothing in flight.
        let mut p = start(&mem, &vq, device(Arc::clone(&malloc)), &region);
        add_write(&mem, &vq, 0, 0, 0xaa);
        assert_eq!(p.poll(), PollStatus::Busy);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).expect("status"), 0);
        let mut check = region.queue(0, RING).expect("queue");
        let rec = check.recover(1).expect("recover").expect("region in use");
        assert_eq!(
            rec.resubmit,
            Vec::<u16>::new(),
            "a completed request must not stay in flight"
        );
        assert_eq!((rec.used_idx, rec.next_avail), (1, 1));
        drop(p);

        // A process that dies with a write in flight...
        let mut dying = start(&mem, &vq, device(Arc::new(StuckBdev)), &region);
        add_write(&mem, &vq, 1, 8, 0xbb);
        dying.poll();
        assert_eq!(vq.used().idx().load(), 1, "nothing completed");
        drop(dying);
        // ... and its successor: the write is resubmitted, completed and its data lands.
        let mut next = start(&mem, &vq, device(Arc::clone(&malloc)), &region);
        next.poll();
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS + 0x1000))
                .expect("status"),
            0
        );
        let mut ch = malloc.open_channel(1).expect("channel");
        let mut buf = [0u8; 512];
        let iov = [IoVec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 512,
        }];
        // SAFETY: `buf` outlives the request, which the malloc channel completes at once.
        let io = unsafe {
            BdevIo::with_iovecs(0, spinblk_bdev::IoOp::Read, 8 * 512, 512, iov.as_ptr(), 1)
        };
        ch.submit(io).expect("room");
        ch.poll_completions(&mut |c| assert_eq!(c.status, IoStatus::Success));
        assert_eq!(buf, [0xbb; 512], "the resubmitted write reached the disk");
        let mut after = region.queue(0, RING).expect("queue");
        let rec = after.recover(2).expect("recover").expect("region in use");
        assert_eq!(rec.resubmit, Vec::<u16>::new());
    }

    #[test]
    fn a_driver_that_runs_the_avail_index_past_the_ring_is_ignored_not_obeyed() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).expect("memory");
        let vq = MockSplitQueue::new(&mem, RING);
        let (region, _fd) = InflightRegion::create(1, RING).expect("region");
        let malloc: Arc<dyn Bdev> = Arc::new(MallocBdev::new("m", 1 << 20, 512).expect("bdev"));
        let mut p = start(&mem, &vq, device(malloc), &Arc::new(region));
        add_write(&mem, &vq, 0, 0, 0x11);
        vq.avail().idx().store(100);
        for _ in 0..3 {
            assert_eq!(p.poll(), PollStatus::Idle);
        }
        assert_eq!(
            vq.used().idx().load(),
            0,
            "nothing taken from a broken ring"
        );
        assert_eq!(p.stats.dropped, 1, "reported once");
    }
}
