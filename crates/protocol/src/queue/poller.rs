//! [`VirtqPoller`]: one started virtqueue, owned by one reactor. Each pass: control messages,
//! the backlog, new requests, one doorbell for the channel, completions, and one publish of the
//! used index (with at most one interrupt).

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;

use std::os::fd::{AsRawFd, RawFd};

use crossbeam_channel::Sender;
use spinblk_bdev::{BdevIo, Completion, IoChannel, IoVec, QosClient};
use spinblk_reactor::{PollStatus, Poller, Tick};

use super::notify::Coalescer;
use super::{QueueCtrl, QueueLog, QueueStart, QueueStartError, QueueStopped};
use crate::device::DeviceInfo;
use crate::inflight::InflightQueue;
use crate::memory::GuestMemory;
use crate::request::{DeviceLimits, RequestKind, StatusByte, MAX_IOVECS};
use crate::ring::{RingError, SplitRing};
use crate::stats::QueueStats;

/// Most memory tables a queue keeps mapped for requests still in flight. A frontend that
/// replaces its table faster than requests complete gets its new table refused beyond this.
const MAX_RETIRED_TABLES: usize = 16;

/// Per-request state, indexed by descriptor head (preallocated: no allocation per request).
#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub busy: bool,
    pub kind: RequestKind,
    pub status: StatusByte,
    pub used_len: u32,
    pub len: u64,
    /// Data iovecs (dirty logging marks them at completion).
    pub iovcnt: u16,
    /// When it was submitted.
    pub submitted: Option<Tick>,
    /// Generation of the memory table the request was parsed with.
    pub table: u32,
    /// The pass in which the bdev's completion was finished.
    pub finished_pass: u64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            busy: false,
            kind: RequestKind::Flush,
            status: StatusByte {
                gpa: 0,
                host: std::ptr::null_mut(),
            },
            used_len: 0,
            len: 0,
            iovcnt: 0,
            submitted: None,
            table: 0,
            finished_pass: 0,
        }
    }
}

/// An older memory table, mapped until the last request parsed with it completes.
pub(super) struct Retired {
    pub generation: u32,
    pub users: u32,
    pub mem: Arc<GuestMemory>,
}

/// Polls one virtqueue. Built on a control thread, then moved to (and never out of) its reactor.
pub(crate) struct VirtqPoller {
    /// `<controller>:q<index>` (SPDK's thread_get_pollers lists it).
    name: String,
    // Declared first, so it is dropped first: a kernel-backed channel's Drop waits until the
    // kernel is done with guest buffers, which the memory tables below keep mapped (B9).
    pub(super) channel: Box<dyn IoChannel>,
    pub(super) ring: SplitRing,
    pub(super) mem: Arc<GuestMemory>,
    /// Generation of `mem`, and how many requests in flight were parsed with it.
    pub(super) generation: u32,
    pub(super) users: u32,
    pub(super) retired: Vec<Retired>,
    pub(super) device: Arc<DeviceInfo>,
    /// This queue's copy of the device limits (capacity changes arrive by message).
    pub(super) limits: DeviceLimits,
    pub(super) slots: Box<[Slot]>,
    pub(super) iovecs: Box<[IoVec]>,
    /// When this pass's completions were collected (their latency ends there).
    pub(super) reaped_at: Tick,
    /// Completions of one pass (capacity: the ring size, so collecting never allocates).
    pub(super) done: Vec<Completion>,
    /// A used element was pushed this pass (the used index needs publishing).
    pub(super) used_pending: bool,
    /// Requests waiting for the bdev's I/O limits to admit them (oldest first).
    pub(super) throttled: VecDeque<BdevIo>,
    /// This queue's share of the bdev's I/O limits, when it has any.
    pub(super) qos: Option<QosClient>,
    /// Requests the channel handed back (full); retried before new ones are popped.
    pub(super) backlog: VecDeque<BdevIo>,
    pub(super) in_flight: usize,
    pub(super) call: Option<File>,
    /// The kick eventfd the reactor watches while it sleeps (owned here, so it stays open for
    /// as long as it is watched).
    kick: Option<File>,
    /// Guest notifications are enabled for a sleep (`prepare_sleep` .. `wake`).
    armed: bool,
    pub(super) enabled: bool,
    /// Write-back mode; in write-through mode writes are submitted as durable.
    pub(super) write_cache: bool,
    stop_reply: Option<Sender<QueueStopped>>,
    pub(super) stats: QueueStats,
    pub(super) inflight: Option<InflightQueue>,
    /// Heads a previous backend left in flight, resubmitted before anything new is popped.
    pub(super) resubmit: VecDeque<u16>,
    /// The driver published an avail index more than a ring ahead: no more requests are taken
    /// from this queue until it is reset (in-flight ones still complete).
    pub(super) broken: bool,
    /// Passes in a row (saturating) that took nothing new from the avail ring. After one the
    /// pop prefetches the entry the driver fills next, after `GUESS_AFTER_IDLE_POPS` also the
    /// next head's guessed descriptor (see `pop.rs`).
    pub(super) idle_pops: u8,
    /// Dirty logging while the frontend migrates the VM (one branch per request when off).
    pub(super) log: Option<QueueLog>,
    /// Guest interrupt coalescing.
    pub(super) coalescer: Coalescer,
    /// Passes so far (numbers the requests each pass finished).
    pub(super) pass: u64,
    /// Faults repaired in guest memory (see `sigbus.rs`) already accounted for.
    pub(super) repaired_seen: u64,
}

// SAFETY: the raw pointers a poller holds (ring parts, iovecs and status bytes) point into guest
// memory kept mapped by the `GuestMemory` snapshots it owns, and its channel is `Send`. It is
// built on a control thread and moved to its reactor once, before it has taken any request; from
// then on only that reactor touches it.
unsafe impl Send for VirtqPoller {}

impl VirtqPoller {
    /// Builds the poller on the control thread (inflight recovery included); the caller then
    /// hands it to its reactor.
    pub(crate) fn new(s: QueueStart) -> Result<Self, QueueStartError> {
        let mut ring = SplitRing::new(s.size, s.addrs, s.event_idx, s.next_avail, &s.mem)
            .map_err(QueueStartError::Ring)?;
        let mut inflight = s.inflight;
        let mut resubmit = VecDeque::with_capacity(usize::from(s.size));
        if let Some(inf) = inflight.as_mut() {
            // After a restart the used ring, not the frontend's base, says where we are: the
            // frontend never learned the avail index of requests the old backend popped.
            let used = ring.used_idx();
            if let Some(rec) = inf
                .recover(used, |i| ring.used_head(i))
                .map_err(QueueStartError::Inflight)?
            {
                ring.set_indices(rec.next_avail, rec.used_idx);
                resubmit.extend(rec.resubmit);
            }
        }
        // Suppress guest kicks while we poll.
        ring.set_notification(false);
        if let Some(l) = &s.log {
            l.log.mark(l.used_gpa, ring.used_len());
        }
        let size = usize::from(s.size);
        let empty = IoVec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Ok(VirtqPoller {
            name: s.name,
            channel: s.channel,
            ring,
            mem: s.mem,
            generation: 0,
            users: 0,
            retired: Vec::with_capacity(MAX_RETIRED_TABLES),
            limits: DeviceLimits {
                capacity: s.capacity,
                ..s.device.limits
            },
            device: s.device,
            slots: vec![Slot::default(); size].into_boxed_slice(),
            iovecs: vec![empty; size * MAX_IOVECS].into_boxed_slice(),
            reaped_at: Tick::now(),
            done: Vec::with_capacity(size),
            used_pending: false,
            throttled: VecDeque::with_capacity(size),
            qos: s.qos.map(QosClient::new),
            backlog: VecDeque::with_capacity(size),
            in_flight: 0,
            call: s.call,
            kick: s.kick,
            armed: false,
            enabled: s.enabled,
            write_cache: s.write_cache,
            stop_reply: None,
            stats: QueueStats::default(),
            inflight,
            resubmit,
            broken: false,
            idle_pops: u8::MAX,
            log: s.log,
            coalescer: {
                let mut c = Coalescer::default();
                c.configure(s.coalescing);
                c
            },
            pass: 1,
            repaired_seen: 0,
        })
    }

    /// The fds an adaptive reactor should sleep on for this queue: the kick eventfd and the
    /// channel's completion eventfd.
    pub(crate) fn wake_fds(&self) -> Vec<RawFd> {
        self.kick
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(self.channel.completion_fd())
            .collect()
    }

    /// Takes a new kick fd, returning the old one (the caller unwatches it before dropping).
    pub(crate) fn replace_kick(&mut self, kick: Option<File>) -> Option<File> {
        std::mem::replace(&mut self.kick, kick)
    }

    /// Guest notifications on (`true`) or off, with the used-ring write logged if logging.
    fn set_guest_notification(&mut self, on: bool) {
        self.ring.set_notification(on);
        if let Some(l) = &self.log {
            l.log.mark(l.used_gpa, self.ring.used_len());
        }
    }

    /// Applies one control message.
    pub(crate) fn handle(&mut self, msg: QueueCtrl) {
        match msg {
            QueueCtrl::Memory(mem, ack) => {
                let _ = ack.send(self.set_memory(mem));
            }
            QueueCtrl::Call(call) => self.call = call,
            QueueCtrl::Enable(on) => self.enabled = on,
            QueueCtrl::WriteCache(on) => self.write_cache = on,
            QueueCtrl::Stop(reply) => self.stop_reply = Some(reply),
            QueueCtrl::Stats(reply) => {
                let mut snapshot = self.stats.clone();
                snapshot.in_flight = self.in_flight as u64;
                let _ = reply.send(snapshot);
            }
            QueueCtrl::Coalescing(c) => self.coalescer.configure(c),
            QueueCtrl::Qos(limiter) => self.qos = limiter.map(QosClient::new),
            QueueCtrl::Capacity(bytes, ack) => {
                self.limits.capacity = bytes;
                let _ = ack.send(());
            }
            QueueCtrl::Log(log, ack) => {
                self.log = log;
                let _ = ack.send(());
            }
        }
    }

    /// Switches to a new memory table; the old one stays mapped while requests parsed with it
    /// are in flight.
    fn set_memory(&mut self, mem: Arc<GuestMemory>) -> Result<(), RingError> {
        if self.users > 0 && self.retired.len() >= MAX_RETIRED_TABLES {
            return Err(RingError::OutsideMemory);
        }
        self.ring.remap(&mem)?;
        let old = std::mem::replace(&mut self.mem, mem);
        if self.users > 0 {
            self.retired.push(Retired {
                generation: self.generation,
                users: self.users,
                mem: old,
            });
        }
        self.generation = self.generation.wrapping_add(1);
        self.users = 0;
        Ok(())
    }

    /// A request parsed with table `generation` is done with it. A retired table nobody uses
    /// any more is dropped at the end of the pass (`drop_unused_tables`), after everything
    /// this pass wrote through it.
    pub(super) fn release_table(&mut self, generation: u32) {
        if generation == self.generation {
            self.users -= 1;
        } else if let Some(r) = self.retired.iter_mut().find(|r| r.generation == generation) {
            r.users -= 1;
        }
    }

    fn drop_unused_tables(&mut self) {
        if !self.retired.is_empty() {
            self.retired.retain(|r| r.users > 0);
        }
    }
}

impl Poller for VirtqPoller {
    fn poll(&mut self) -> PollStatus {
        self.pass += 1;
        // The backlog holds requests already taken from the ring: always push them on, even
        // while disabled or stopping, or a stop would wait for them forever.
        let mut busy = self.submit_backlog();
        if !self.throttled.is_empty() {
            busy |= self.admit_throttled();
        }
        // Requests are taken from the ring even while older ones wait for the limits (they
        // queue behind them, in order): what the guest submitted counts as in flight, as in
        // SPDK, and the throttled queue is bounded by the ring size (one slot per head).
        if self.enabled && self.stop_reply.is_none() {
            busy |= self.pop_requests();
        }
        self.channel.flush_submissions();
        busy |= self.reap() > 0;
        if !self.publish() {
            self.confirm_signal();
        }
        self.drop_unused_tables();
        if self.coalescer.pending {
            self.flush_coalesced();
        }
        if self.in_flight == 0 {
            if let Some(reply) = self.stop_reply.take() {
                self.confirm_signal();
                let _ = reply.send(QueueStopped {
                    next_avail: self.ring.next_avail(),
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

    fn name(&self) -> &str {
        &self.name
    }

    /// The reactor wants to sleep: say whether this queue can be woken by an fd, enable guest
    /// kicks and re-check the ring (a driver that added a request just before kicks were
    /// enabled would otherwise wait for a kick that never comes: virtio 1.2, 2.7.10).
    fn prepare_sleep(&mut self) -> bool {
        self.confirm_signal();
        let quiet = self.kick.is_some()
            && self.backlog.is_empty()
            && self.throttled.is_empty()
            && self.resubmit.is_empty()
            && !self.used_pending
            && !self.coalescer.pending
            && self.stop_reply.is_none()
            && (self.in_flight == 0 || self.channel.completion_fd().is_some());
        if !quiet {
            return false;
        }
        self.set_guest_notification(true);
        self.armed = true;
        !(self.enabled && !self.broken && self.ring.has_work_after_enabling())
    }

    fn wake(&mut self) {
        if self.armed {
            self.armed = false;
            self.set_guest_notification(false);
        }
    }

    /// A queue waiting for its guest is (the next request often follows a completion within
    /// microseconds); one with requests in flight is as its channel says: not on an RBD image,
    /// whose completions come from librbd's threads, which may share the reactor's core.
    fn worth_spinning_for(&self) -> bool {
        self.in_flight == 0 || self.channel.worth_spinning_for()
    }
}
