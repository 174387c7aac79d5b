//! Poller-level tests: rings built with virtio-queue's mock in a `GuestMemoryMmap`, served by a
//! real `VirtqPoller` stepped by hand.

use std::sync::Arc;

use spinblk_bdev::{Bdev, BdevError, BdevIo, Completion, IoChannel, IoStatus, IoVec, MallocBdev};
use spinblk_reactor::{PollStatus, Poller};
use std::fs::File;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::device::DeviceInfo;
use crate::inflight::InflightRegion;
use crate::memory::GuestMemory;
use crate::request::{DeviceLimits, ID_BYTES};
use crate::ring::RingAddrs;

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

/// Publishes a one-sector request of `kind` to `sector` as chain `chain` (descriptors
/// 3*chain .. 3*chain+2); writes carry `fill`.
fn add_request(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    chain: u16,
    kind: u32,
    sector: u64,
    fill: u8,
) {
    let base = u64::from(chain) * 0x1000;
    let hdr_at = HDR + u64::from(chain) * 0x40;
    let hdr = [kind.to_le_bytes(), [0; 4]].concat();
    mem.write_slice(&hdr, GuestAddress(hdr_at)).expect("header");
    mem.write_obj(sector.to_le(), GuestAddress(hdr_at + 8))
        .expect("sector");
    mem.write_slice(&[fill; 512], GuestAddress(DATA + base))
        .expect("data");
    mem.write_obj(0xffu8, GuestAddress(STATUS + base))
        .expect("status");
    let next = VRING_DESC_F_NEXT as u16;
    let data_flags = if kind == VIRTIO_BLK_T_IN {
        VRING_DESC_F_WRITE as u16 | next
    } else {
        next
    };
    let first = chain * 3;
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(hdr_at, 16, next, first + 1)),
        RawDescriptor::from(SplitDescriptor::new(
            DATA + base,
            512,
            data_flags,
            first + 2,
        )),
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
    region: Option<&Arc<InflightRegion>>,
) -> (VirtqPoller, ()) {
    let channel = dev.bdev.open_channel(usize::from(RING)).expect("channel");
    let p = VirtqPoller::new(QueueStart {
        name: "test:q0".into(),
        size: RING,
        addrs: RingAddrs {
            desc: vq.desc_table_addr().raw_value(),
            avail: vq.avail_addr().raw_value(),
            used: vq.used_addr().raw_value(),
        },
        next_avail: 0,
        event_idx: false,
        enabled: true,
        write_cache: true,
        call: None,
        mem: GuestMemory::shared(mem.clone()),
        device: dev,
        channel,
        kick: None,
        inflight: region.map(|r| r.queue(0, RING).expect("inflight queue")),
        log: None,
        coalescing: Default::default(),
        qos: None,
        capacity: 1 << 20,
    })
    .unwrap_or_else(|e| panic!("queue start: {e}"));
    (p, ())
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).expect("memory")
}

fn malloc() -> Arc<dyn Bdev> {
    Arc::new(MallocBdev::new("m", 1 << 20, 512).expect("bdev"))
}

#[test]
fn completions_clear_inflight_and_a_restart_resubmits_what_was_left() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (region, _fd) = InflightRegion::create(1, RING).expect("region");
    let region = Arc::new(region);
    let malloc = malloc();

    // A normal completion: used idx 1, and the region shows nothing in flight.
    let (mut p, _tx) = start(&mem, &vq, device(Arc::clone(&malloc)), Some(&region));
    add_request(&mem, &vq, 0, VIRTIO_BLK_T_OUT, 0, 0xaa);
    assert_eq!(p.poll(), PollStatus::Busy);
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).expect("status"), 0);
    let mut check = region.queue(0, RING).expect("queue");
    let rec = check
        .recover(1, |_| u16::MAX)
        .expect("recover")
        .expect("region in use");
    assert_eq!(
        rec.resubmit,
        Vec::<u16>::new(),
        "a completed request must not stay in flight"
    );
    assert_eq!((rec.used_idx, rec.next_avail), (1, 1));
    drop(p);

    // A process that dies with a write in flight...
    let (mut dying, _tx2) = start(&mem, &vq, device(Arc::new(StuckBdev)), Some(&region));
    add_request(&mem, &vq, 1, VIRTIO_BLK_T_OUT, 8, 0xbb);
    dying.poll();
    assert_eq!(vq.used().idx().load(), 1, "nothing completed");
    drop(dying);
    // ... and its successor: the write is resubmitted, completed and its data lands.
    let (mut next, _tx3) = start(&mem, &vq, device(Arc::clone(&malloc)), Some(&region));
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
    let io =
        unsafe { BdevIo::with_iovecs(0, spinblk_bdev::IoOp::Read, 8 * 512, 512, iov.as_ptr(), 1) };
    ch.submit(io).expect("room");
    ch.poll_completions(&mut |c| assert_eq!(c.status, IoStatus::Success));
    assert_eq!(buf, [0xbb; 512], "the resubmitted write reached the disk");
    let mut after = region.queue(0, RING).expect("queue");
    let rec = after
        .recover(2, |_| u16::MAX)
        .expect("recover")
        .expect("region in use");
    assert_eq!(rec.resubmit, Vec::<u16>::new());
}

#[test]
fn a_driver_that_runs_the_avail_index_past_the_ring_is_ignored_not_obeyed() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (mut p, _tx) = start(&mem, &vq, device(malloc()), None);
    add_request(&mem, &vq, 0, VIRTIO_BLK_T_OUT, 0, 0x11);
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

#[test]
fn one_pass_publishes_every_completion_with_one_used_index_store() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (mut p, _tx) = start(&mem, &vq, device(malloc()), None);
    for c in 0..4u16 {
        add_request(&mem, &vq, c, VIRTIO_BLK_T_OUT, u64::from(c), 0x20 + c as u8);
    }
    // Malloc completes on the channel's next poll, in the same pass.
    assert_eq!(p.poll(), PollStatus::Busy);
    assert_eq!(vq.used().idx().load(), 4);
    for c in 0..4u16 {
        add_request(&mem, &vq, c, VIRTIO_BLK_T_IN, u64::from(c), 0);
    }
    p.poll();
    assert_eq!(vq.used().idx().load(), 8);
    for c in 0..4u64 {
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(DATA + c * 0x1000))
            .expect("data");
        assert_eq!(data, [0x20 + c as u8; 512], "read back sector {c}");
        let e = vq
            .used()
            .ring()
            .ref_at(4 + c as usize)
            .expect("elem")
            .load();
        assert_eq!(e.len(), 513, "a read's used length counts data and status");
    }
    assert_eq!(p.stats.read.ops, 4);
    assert_eq!(p.stats.write.ops, 4);
    assert!(p.stats.read.latency_ticks > 0);
}

#[test]
fn a_chain_without_a_status_byte_is_returned_with_length_zero() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (mut p, _tx) = start(&mem, &vq, device(malloc()), None);
    let next = VRING_DESC_F_NEXT as u16;
    // Header, then a device-readable "status" descriptor: nowhere to put a status.
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(HDR, 16, next, 1)),
        RawDescriptor::from(SplitDescriptor::new(STATUS, 1, 0, 0)),
    ];
    mem.write_slice(&[0u8; 16], GuestAddress(HDR)).expect("hdr");
    vq.add_desc_chains(&descs, 0).expect("chain");
    p.poll();
    assert_eq!(vq.used().idx().load(), 1);
    let e = vq.used().ring().ref_at(0).expect("elem").load();
    assert_eq!((e.id(), e.len()), (0, 0));
    assert_eq!(p.stats.dropped, 1);
}

#[test]
fn memory_tables_stay_mapped_until_their_last_request_completes() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (mut p, _tx) = start(&mem, &vq, device(Arc::new(StuckBdev)), None);
    add_request(&mem, &vq, 0, VIRTIO_BLK_T_OUT, 0, 1);
    p.poll();
    assert_eq!((p.in_flight, p.users), (1, 1));
    let (tx, rx) = crossbeam_channel::bounded(1);
    p.handle(QueueCtrl::Memory(GuestMemory::shared(mem.clone()), tx));
    rx.recv().expect("ack").expect("accepted");
    assert_eq!(
        p.retired.len(),
        1,
        "the old table is held for the request in flight"
    );
    // The request completes (by hand, as the stuck channel never does).
    p.finish(0, super::finish::Outcome::Completed(IoStatus::Success));
    p.poll(); // the end of the pass drops tables nobody uses
    assert!(p.retired.is_empty(), "released with its last request");
    // Tables changed with nothing in flight are not kept at all.
    let (tx, rx) = crossbeam_channel::bounded(1);
    p.handle(QueueCtrl::Memory(GuestMemory::shared(mem.clone()), tx));
    rx.recv().expect("ack").expect("accepted");
    assert!(p.retired.is_empty());
}

#[test]
fn dirty_logging_marks_device_writes_and_moves_to_a_new_log() {
    use crate::log::{DirtyLog, LOG_PAGE};
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (mut p, _tx) = start(&mem, &vq, device(malloc()), None);
    let used = vq.used_addr().raw_value();
    let log = DirtyLog::anonymous(64).expect("log");
    let (tx, rx) = crossbeam_channel::bounded(1);
    p.handle(QueueCtrl::Log(
        Some(QueueLog {
            log: Arc::clone(&log),
            used_gpa: used,
        }),
        tx,
    ));
    rx.recv().expect("ack");
    // A write: the device writes only the status byte and the used ring.
    add_request(&mem, &vq, 0, VIRTIO_BLK_T_OUT, 0, 7);
    p.poll();
    let page = |a: u64| a / LOG_PAGE;
    assert!(log.is_marked(page(STATUS)), "status byte");
    assert!(log.is_marked(page(used)), "used element and index");
    assert!(
        !log.is_marked(page(DATA)),
        "a write's data is read, not written"
    );
    // A read writes its data too, and those pages are marked (data of chain 1 is one page up).
    add_request(&mem, &vq, 1, VIRTIO_BLK_T_IN, 0, 0);
    p.poll();
    assert!(log.is_marked(page(DATA + 0x1000)), "read data");
    assert!(!log.is_marked(page(DATA)));
    // A bigger log replaces it while the queue runs: later writes go to the new one only.
    let bigger = DirtyLog::anonymous(128).expect("log");
    let (tx, rx) = crossbeam_channel::bounded(1);
    p.handle(QueueCtrl::Log(
        Some(QueueLog {
            log: Arc::clone(&bigger),
            used_gpa: used,
        }),
        tx,
    ));
    rx.recv().expect("ack");
    add_request(&mem, &vq, 2, VIRTIO_BLK_T_IN, 0, 0);
    p.poll();
    assert!(bigger.is_marked(page(DATA + 0x2000)));
    assert!(
        !log.is_marked(page(DATA + 0x2000)),
        "the old log is left alone"
    );
    assert_eq!(
        Arc::strong_count(&log),
        1,
        "the queue let go of the old log"
    );
    // Logging off: nothing is marked.
    let (tx, rx) = crossbeam_channel::bounded(1);
    p.handle(QueueCtrl::Log(None, tx));
    rx.recv().expect("ack");
    add_request(&mem, &vq, 3, VIRTIO_BLK_T_IN, 0, 0);
    p.poll();
    assert!(!bigger.is_marked(page(DATA + 0x3000)));
    assert_eq!(vq.used().idx().load(), 4);
}

#[test]
fn sleeping_enables_kicks_and_a_request_that_raced_it_keeps_the_reactor_awake() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (mut p, _tx) = start(&mem, &vq, device(malloc()), None);
    let kick = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
    // SAFETY: a fresh duplicate of the eventfd, owned by the File from here on.
    let dup: File = unsafe {
        std::os::fd::FromRawFd::from_raw_fd(libc::dup(std::os::fd::AsRawFd::as_raw_fd(&kick)))
    };
    p.replace_kick(Some(dup));
    let used_flags = || mem.read_obj::<u16>(vq.used_addr()).expect("flags");
    let no_notify = virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY as u16;
    assert_eq!(used_flags(), no_notify, "kicks suppressed while polling");
    // Idle: arming enables kicks and says it is safe to sleep.
    assert!(p.prepare_sleep());
    assert_eq!(used_flags(), 0);
    p.wake();
    assert_eq!(used_flags(), no_notify, "suppressed again after the sleep");
    // A request published before arming is noticed by the re-check: no sleep.
    add_request(&mem, &vq, 0, VIRTIO_BLK_T_OUT, 0, 1);
    assert!(!p.prepare_sleep());
    p.wake();
    assert_eq!(p.poll(), PollStatus::Busy);
    assert_eq!(vq.used().idx().load(), 1);
    // Without a kick fd nothing could wake the reactor: never sleep.
    p.replace_kick(None);
    assert!(!p.prepare_sleep());
    p.wake();
}

/// The interrupt check after a publish runs without the full fence; a "no" is re-checked with
/// it in the next pass that publishes nothing and before the reactor sleeps. Here the driver
/// re-enables interrupts right after the unfenced check (what a stale read of its flags looks
/// like): the signal follows one pass later.
#[test]
fn a_signal_the_unfenced_check_held_back_follows_in_the_next_idle_pass() {
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (mut p, _tx) = start(&mem, &vq, device(malloc()), None);
    let call = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    // SAFETY: a fresh duplicate of the eventfd, owned by the File from here on.
    p.call = Some(unsafe {
        std::os::fd::FromRawFd::from_raw_fd(libc::dup(std::os::fd::AsRawFd::as_raw_fd(&call)))
    });
    let no_interrupt = virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;
    let set_flags = |f: u16| mem.write_obj(f, vq.avail_addr()).expect("avail flags");
    let signals = || call.read().unwrap_or(0);

    // Interrupts wanted: the signal goes out in the publishing pass, nothing waits.
    add_request(&mem, &vq, 0, VIRTIO_BLK_T_OUT, 0, 1);
    assert_eq!(p.poll(), PollStatus::Busy);
    assert_eq!(signals(), 1);
    assert!(!p.ring.notification_unconfirmed());

    // Suppressed when published; the driver then re-enables interrupts.
    set_flags(no_interrupt);
    add_request(&mem, &vq, 1, VIRTIO_BLK_T_OUT, 1, 2);
    assert_eq!(p.poll(), PollStatus::Busy);
    assert_eq!(vq.used().idx().load(), 2);
    assert_eq!(signals(), 0);
    assert!(p.ring.notification_unconfirmed());
    set_flags(0);
    assert_eq!(p.poll(), PollStatus::Idle);
    assert_eq!(signals(), 1, "the fenced re-check in the idle pass signals");
    assert!(!p.ring.notification_unconfirmed());
    p.poll();
    assert_eq!(signals(), 0, "once");

    // The same before a sleep.
    set_flags(no_interrupt);
    add_request(&mem, &vq, 2, VIRTIO_BLK_T_OUT, 2, 3);
    assert_eq!(p.poll(), PollStatus::Busy);
    assert_eq!(signals(), 0);
    set_flags(0);
    p.prepare_sleep();
    assert_eq!(signals(), 1, "re-checked before sleeping");
    p.wake();

    // A driver that keeps interrupts off gets none, and the re-check is not repeated.
    set_flags(no_interrupt);
    add_request(&mem, &vq, 3, VIRTIO_BLK_T_OUT, 3, 4);
    assert_eq!(p.poll(), PollStatus::Busy);
    assert_eq!(p.poll(), PollStatus::Idle);
    assert!(!p.ring.notification_unconfirmed());
    assert_eq!(signals(), 0);
}

#[test]
fn requests_over_the_limit_wait_and_are_never_failed() {
    use spinblk_bdev::{QosLimiter, QosLimits};
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, RING);
    let (mut p, _tx) = start(&mem, &vq, device(malloc()), None);
    // 50 IOPS: the burst admits one request, the rest wait.
    let limiter = Arc::new(QosLimiter::new(QosLimits {
        rw_ios_per_sec: 50,
        ..Default::default()
    }));
    p.handle(QueueCtrl::Qos(Some(Arc::clone(&limiter))));
    for c in 0..4u16 {
        add_request(&mem, &vq, c, VIRTIO_BLK_T_OUT, u64::from(c), 3);
    }
    p.poll();
    p.poll();
    let done = vq.used().idx().load();
    assert!(done < 4, "throttled: only {done} of 4 done at once");
    assert_eq!(
        p.throttled.len() as u16 + done,
        4,
        "the rest wait, none failed"
    );
    assert!(
        !p.prepare_sleep(),
        "a queue with throttled requests stays awake"
    );
    p.wake();
    // Lifting the limit lets them through.
    p.handle(QueueCtrl::Qos(None));
    p.poll();
    assert_eq!(vq.used().idx().load(), 4);
    assert_eq!(p.stats.io_errors, 0);
    for c in 0..4u64 {
        let s: u8 = mem
            .read_obj(GuestAddress(STATUS + c * 0x1000))
            .expect("status");
        assert_eq!(s, 0);
    }
}
