//! The vhost-user control plane of one frontend connection: features, memory table, vring
//! setup and config space. Queue start/stop and memory changes reach the reactors as messages
//! and are acknowledged before the frontend gets its reply.
//!
//! Everything the frontend sends is checked here before it reaches a reactor: region files
//! against their size (no SIGBUS later), overlapping regions, ring sizes (at most
//! [`MAX_QUEUE_SIZE`]), ring addresses and alignment, vring indices, kick and call fds (must be
//! eventfds; the call fd is made non-blocking, so a reactor can never block on it). Memory table
//! changes are transactional: the new table is built and checked completely, every running queue
//! switches to it, and only then does it replace the old one.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, info, warn};
use spinblk_reactor::{PollerId, ReactorHandle};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend, Error as VhostError, GpuBackend, Result as VhostResult, VhostUserBackendReqHandlerMut,
};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_CONFIG_WCE;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::config::{config_space, device_features, WRITEBACK_OFFSET};
use crate::device::{lock, Coalescing, ControllerShared, ControllerSpec};
use crate::inflight::{queue_region_size, InflightRegion};
use crate::log::DirtyLog;
use crate::memory::GuestMemory;
use crate::queue::{signal_call, QueueCtrl, QueueLog, QueueStart, QueueStopped, VirtqPoller};
use crate::request::DeviceLimits;
use crate::ring::{RingAddrs, SplitRing, MAX_QUEUE_SIZE};
use crate::sigbus::{check_file, Guard};

/// Memory slots offered through CONFIGURE_MEM_SLOTS (QEMU's and libvhost-user's limit).
const MAX_MEM_SLOTS: u64 = 509;
/// How long the control plane waits for a reactor to take a queue, a memory table or a message.
const REACTOR_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long GET_VRING_BASE (and a disconnect) waits for a queue's in-flight requests to drain.
/// Past it the connection is closed: the stopped ring's state cannot be reported truthfully.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One mapped region of guest memory and where the frontend has it.
struct MappedRegion {
    gpa: u64,
    size: u64,
    user_addr: u64,
    region: Arc<GuestRegionMmap>,
    /// SIGBUS protection for a file that could shrink (dropped after `region`).
    guard: Option<Arc<Guard>>,
}

/// A queue running on a reactor: how to reach it.
#[derive(Clone)]
pub(crate) struct RunningQueue {
    reactor: ReactorHandle,
    id: PollerId,
}

impl RunningQueue {
    /// Delivers `msg` to the queue as a reactor message. If the queue has ended meanwhile the
    /// message is dropped (and any reply channel in it disconnects).
    pub(crate) fn send(&self, msg: QueueCtrl) -> bool {
        let id = self.id;
        self.reactor
            .send(move |r| {
                if let Some(p) = r.poller_mut::<VirtqPoller>(id) {
                    p.handle(msg);
                }
            })
            .is_ok()
    }

    /// Hands the queue a new kick fd and moves the reactor's watch to it.
    fn replace_kick(&self, kick: Option<File>) -> bool {
        let id = self.id;
        self.reactor
            .send(move |r| {
                let new_fd = kick.as_ref().map(AsRawFd::as_raw_fd);
                let Some(p) = r.poller_mut::<VirtqPoller>(id) else {
                    return;
                };
                let old = p.replace_kick(kick);
                if let Some(old) = &old {
                    r.unwatch_fd(id, old.as_raw_fd());
                }
                if let Some(fd) = new_fd {
                    if let Err(e) = r.watch_fd(id, fd) {
                        warn!("cannot watch a kick fd: {e}");
                    }
                }
            })
            .is_ok()
    }
}

/// A vring as the frontend has described it so far.
#[derive(Default)]
struct Vring {
    size: u16,
    desc_va: u64,
    avail_va: u64,
    used_va: u64,
    addr_set: bool,
    /// VHOST_VRING_F_LOG: log used-ring writes at `log_addr` (a guest physical address).
    log_flag: bool,
    log_addr: u64,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    running: Option<RunningQueue>,
}

/// The vhost-user-blk backend of one connection.
pub struct BlkBackend {
    spec: Arc<ControllerSpec>,
    acked_features: u64,
    acked_protocol: u64,
    regions: Vec<MappedRegion>,
    mem: Arc<GuestMemory>,
    vrings: Vec<Vring>,
    writeback: bool,
    /// The inflight region (GET/SET_INFLIGHT_FD), shared by this connection's queues.
    inflight: Option<Arc<InflightRegion>>,
    /// The dirty log (SET_LOG_BASE), while the frontend migrates the VM.
    log: Option<Arc<DirtyLog>>,
    /// The backend request channel (SET_BACKEND_REQ_FD): config-change notifications.
    backend_channel: Option<UnixStream>,
    /// Statistics and the stopping flag, shared with the controller so they outlive the
    /// connection.
    shared: Arc<ControllerShared>,
    /// Set when the connection must close after the current message (reason logged once).
    fatal: Option<&'static str>,
}

fn invalid(why: &'static str) -> VhostError {
    VhostError::InvalidOperation(why)
}

/// With `SPINBLK_BENCH_DIRTY_LOG` set: a private log big enough for `mem`, so every queue logs
/// as it would during a migration (a benchmark switch; never set in production).
fn bench_log(mem: &GuestMemory) -> Option<Arc<DirtyLog>> {
    std::env::var_os("SPINBLK_BENCH_DIRTY_LOG")?;
    let pages = mem.end_addr() / crate::log::LOG_PAGE + 1;
    let log = DirtyLog::anonymous(usize::try_from(pages / 8 + 1).ok()?).ok()?;
    info!("SPINBLK_BENCH_DIRTY_LOG: this queue logs into a private bitmap");
    Some(log)
}

/// What `/proc/self/fd/N` says an fd is, e.g. `anon_inode:[eventfd]`.
fn fd_kind(f: &File) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks that a kick or call fd is an eventfd (a pipe or socket could block or fill up).
fn check_eventfd(f: &File) -> VhostResult<()> {
    if fd_kind(f) == "anon_inode:[eventfd]" {
        Ok(())
    } else {
        Err(invalid("kick and call fds must be eventfds"))
    }
}

/// Makes `f` non-blocking (a reactor must never block writing a call fd).
fn set_nonblocking(f: &File) -> VhostResult<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(VhostError::ReqHandlerError(std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(VhostError::ReqHandlerError(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl BlkBackend {
    /// A backend for a new connection to the controller `spec`; stopped queues add their
    /// statistics to the controller's.
    pub(crate) fn new(spec: Arc<ControllerSpec>, shared: Arc<ControllerShared>) -> Self {
        let write_cache = spec.device.write_cache;
        let vrings = (0..spec.num_queues).map(|_| Vring::default()).collect();
        BlkBackend {
            spec,
            acked_features: 0,
            acked_protocol: 0,
            regions: Vec::new(),
            mem: Arc::new(GuestMemory::default()),
            vrings,
            writeback: write_cache,
            inflight: None,
            log: None,
            backend_channel: None,
            shared,
            fatal: None,
        }
    }

    fn offered_features(&self) -> u64 {
        device_features(&self.spec.device.limits) | VhostUserVirtioFeatures::LOG_ALL.bits()
    }

    fn protocol_features() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    /// Dirty logging for vring `v`: on while the frontend acked LOG_ALL, set a log and asked
    /// for this ring's writes to be logged. `SPINBLK_BENCH_DIRTY_LOG` turns it on for every
    /// queue with a private log (to measure what logging costs without a migrating frontend).
    fn queue_log(&self, v: &Vring) -> Option<QueueLog> {
        if let Some(bench) = bench_log(&self.mem) {
            let used = self.va_to_gpa(v.used_va)?;
            return Some(QueueLog {
                log: bench,
                used_gpa: used,
            });
        }
        let on = self.acked_features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0 && v.log_flag;
        match (&self.log, on) {
            (Some(log), true) => Some(QueueLog {
                log: Arc::clone(log),
                used_gpa: v.log_addr,
            }),
            _ => None,
        }
    }

    /// Sends every running queue its current logging state and waits until each logs there
    /// (so an old log can be unmapped, and the frontend's reply means "logging now").
    fn update_logging(&mut self) -> VhostResult<()> {
        let acks: Vec<Receiver<()>> = self
            .vrings
            .iter()
            .filter_map(|v| v.running.as_ref().map(|q| (q, self.queue_log(v))))
            .filter_map(|(q, log)| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                q.send(QueueCtrl::Log(log, tx)).then_some(rx)
            })
            .collect();
        for rx in acks {
            if rx.recv_timeout(REACTOR_ACK_TIMEOUT).is_err() {
                self.fatal = Some("a queue did not take the new dirty log");
                return Err(VhostError::BackendInternalError);
            }
        }
        Ok(())
    }

    /// Whether the frontend acked protocol feature `f`.
    pub(crate) fn protocol_acked(&self, f: VhostUserProtocolFeatures) -> bool {
        self.acked_protocol & f.bits() != 0
    }

    /// Whether NEED_REPLY is honoured (REPLY_ACK negotiated).
    pub(crate) fn reply_ack_negotiated(&self) -> bool {
        self.protocol_acked(VhostUserProtocolFeatures::REPLY_ACK)
    }

    /// Whether VHOST_USER_F_PROTOCOL_FEATURES was acked (rings start disabled then).
    pub(crate) fn features_acked_protocol(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// The reason the connection must close now, if any (taken once).
    pub(crate) fn take_fatal(&mut self) -> Option<&'static str> {
        if self.fatal.is_none()
            && self
                .regions
                .iter()
                .any(|r| r.guard.as_ref().is_some_and(|g| g.hits() > 0))
        {
            self.fatal = Some("the frontend shrank a guest memory file under its mapping");
        }
        self.fatal.take()
    }

    fn vring(&mut self, index: u32) -> VhostResult<&mut Vring> {
        self.vrings
            .get_mut(index as usize)
            .ok_or(VhostError::InvalidParam)
    }

    /// Translates a frontend virtual address through the memory table.
    fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = va.checked_sub(r.user_addr)?;
            (off < r.size).then(|| r.gpa + off)
        })
    }

    /// The ring addresses of a running or startable vring, in guest physical addresses.
    fn ring_addrs(&self, v: &Vring) -> Option<RingAddrs> {
        Some(RingAddrs {
            desc: self.va_to_gpa(v.desc_va)?,
            avail: self.va_to_gpa(v.avail_va)?,
            used: self.va_to_gpa(v.used_va)?,
        })
    }

    /// Replaces the memory table with `regions` if it is valid and every running queue can use
    /// it; otherwise nothing changes (and the regions are handed back to be dropped).
    fn publish_memory(&mut self, mut regions: Vec<MappedRegion>) -> VhostResult<()> {
        regions.sort_by_key(|r| r.gpa);
        // Overlaps in guest or frontend addresses make translation ambiguous: refused.
        let mut by_va: Vec<(u64, u64)> = regions.iter().map(|r| (r.user_addr, r.size)).collect();
        by_va.sort_unstable();
        if by_va.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(invalid("memory regions overlap"));
        }
        let mmap = GuestMemoryMmap::from_arc_regions(
            regions.iter().map(|r| Arc::clone(&r.region)).collect(),
        )
        .map_err(|_| invalid("memory regions overlap"))?;
        let mem = Arc::new(GuestMemory::with_guards(
            mmap,
            regions.iter().filter_map(|r| r.guard.clone()).collect(),
        ));
        // Every running ring must still be inside the new table (checked here, so no queue
        // refuses it below and the switch is all or nothing).
        let old_regions = std::mem::replace(&mut self.regions, regions);
        let ok = self.vrings.iter().filter(|v| v.running.is_some()).all(|v| {
            self.ring_addrs(v)
                .is_some_and(|a| SplitRing::new(v.size, a, false, 0, &mem).is_ok())
        });
        if !ok {
            self.regions = old_regions;
            return Err(invalid("the new memory table does not hold a running ring"));
        }
        let acks: Vec<Receiver<_>> = self
            .vrings
            .iter()
            .filter_map(|v| v.running.as_ref())
            .filter_map(|q| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                q.send(QueueCtrl::Memory(Arc::clone(&mem), tx))
                    .then_some(rx)
            })
            .collect();
        for rx in acks {
            if !matches!(rx.recv_timeout(REACTOR_ACK_TIMEOUT), Ok(Ok(()))) {
                // Some queues may use the new table and others not: no way back.
                self.fatal = Some("a queue could not switch to the new memory table");
                return Err(VhostError::BackendInternalError);
            }
        }
        self.mem = mem;
        Ok(())
    }

    /// Maps one region after checking it against its file.
    fn map_region(
        gpa: u64,
        size: u64,
        user_addr: u64,
        mmap_offset: u64,
        file: File,
    ) -> VhostResult<MappedRegion> {
        let len = usize::try_from(size).map_err(|_| VhostError::InvalidParam)?;
        if len == 0
            || gpa.checked_add(size).is_none()
            || user_addr.checked_add(size).is_none()
            || mmap_offset.checked_add(size).is_none()
        {
            return Err(VhostError::InvalidParam);
        }
        let info = check_file(&file, mmap_offset, size).map_err(|e| {
            warn!("memory region refused: {e}");
            VhostError::InvalidParam
        })?;
        let mapping = MmapRegion::from_file(FileOffset::new(file, mmap_offset), len)
            .map_err(|e| VhostError::ReqHandlerError(std::io::Error::other(e.to_string())))?;
        let guard = if info.sealed {
            None
        } else {
            let g = Guard::register(mapping.as_ptr(), len, info.page_size)
                .ok_or(invalid("too many guest memory mappings"))?;
            Some(Arc::new(g))
        };
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(gpa)).ok_or(VhostError::InvalidParam)?;
        Ok(MappedRegion {
            gpa,
            size,
            user_addr,
            region: Arc::new(region),
            guard,
        })
    }

    fn same_regions(&self) -> Vec<MappedRegion> {
        self.regions
            .iter()
            .map(|r| MappedRegion {
                gpa: r.gpa,
                size: r.size,
                user_addr: r.user_addr,
                region: Arc::clone(&r.region),
                guard: r.guard.clone(),
            })
            .collect()
    }

    /// Starts polling vring `index` on its reactor, if it is fully described. The poller (and
    /// its bdev channel, whose opening may be slow) is built here on the control thread; the
    /// reactor only adds it. If the reactor does not take it in time the start is cancelled:
    /// it then never runs (no orphaned poller), and a later SET_VRING_KICK starts afresh.
    fn start_queue(&mut self, index: usize) -> VhostResult<()> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(invalid("the target is shutting down"));
        }
        let v = &self.vrings[index];
        if v.running.is_some() {
            return Ok(());
        }
        if !v.addr_set || v.size == 0 {
            // Every frontend describes a ring (SET_VRING_NUM, SET_VRING_ADDR) before kicking
            // it; a kick for a ring whose description was refused cannot start anything.
            return Err(invalid("ring size or addresses not set"));
        }
        let addrs = self
            .ring_addrs(v)
            .ok_or(invalid("ring address not in guest memory"))?;
        let inflight = match &self.inflight {
            Some(region) => Some(region.queue(index as u16, v.size).map_err(|e| {
                warn!("{}: queue {index}: {e}", self.spec.name);
                invalid("inflight region does not fit the ring")
            })?),
            None => None,
        };
        let channel = self
            .spec
            .device
            .bdev
            .open_channel(usize::from(v.size))
            .map_err(|e| {
                warn!(
                    "{}: queue {index}: cannot open a bdev channel: {e}",
                    self.spec.name
                );
                invalid("bdev channel could not be opened")
            })?;
        let call = match &v.call {
            Some(f) => Some(f.try_clone().map_err(|e| {
                warn!(
                    "{}: queue {index}: cannot duplicate the call fd: {e}",
                    self.spec.name
                );
                VhostError::ReqHandlerError(e)
            })?),
            None => None,
        };
        let kick = match &v.kick {
            Some(f) => Some(f.try_clone().map_err(VhostError::ReqHandlerError)?),
            None => None,
        };
        let poller = VirtqPoller::new(QueueStart {
            name: format!("{}:q{index}", self.spec.name),
            size: v.size,
            addrs,
            next_avail: v.base,
            event_idx: self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
            enabled: v.enabled,
            write_cache: self.writeback,
            call,
            mem: Arc::clone(&self.mem),
            device: Arc::clone(&self.spec.device),
            channel,
            kick,
            inflight,
            log: self.queue_log(v),
            coalescing: *lock(&self.shared.coalescing),
            qos: lock(&self.shared.qos).clone(),
            capacity: self.shared.capacity.load(Ordering::SeqCst),
        })
        .map_err(|e| {
            warn!("{}: queue {index} not started: {e}", self.spec.name);
            invalid("queue could not start")
        })?;
        let reactor = &self.spec.reactors[index % self.spec.reactors.len()];
        // PENDING -> STARTED (by the reactor) or CANCELLED (by us, on timeout): whoever moves
        // the state first decides, so the poller runs exactly when we report success.
        const PENDING: u8 = 0;
        const STARTED: u8 = 1;
        const CANCELLED: u8 = 2;
        let state = Arc::new(AtomicU8::new(PENDING));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let reactor_state = Arc::clone(&state);
        let name = self.spec.name.clone();
        reactor
            .send(move |r| {
                if reactor_state
                    .compare_exchange(PENDING, STARTED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    let fds = poller.wake_fds();
                    let id = r.add_poller(Box::new(poller));
                    for fd in fds {
                        if let Err(e) = r.watch_fd(id, fd) {
                            // The queue still works; this reactor just cannot sleep on it.
                            warn!("{name}: queue {index}: cannot watch fd {fd}: {e}");
                        }
                    }
                    let _ = tx.send(id);
                }
            })
            .map_err(|_| VhostError::BackendInternalError)?;
        let id = match rx.recv_timeout(REACTOR_ACK_TIMEOUT) {
            Ok(id) => id,
            Err(_) => {
                if state
                    .compare_exchange(PENDING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    warn!(
                        "{}: queue {index}: reactor did not answer; start cancelled",
                        self.spec.name
                    );
                    return Err(VhostError::BackendInternalError);
                }
                // The reactor took it just now: its id is on the way.
                rx.recv().map_err(|_| VhostError::BackendInternalError)?
            }
        };
        debug!(
            "{}: queue {index} started on reactor {}",
            self.spec.name,
            reactor.id()
        );
        self.vrings[index].running = Some(RunningQueue {
            reactor: reactor.clone(),
            id,
        });
        Ok(())
    }

    /// Stops vring `index` once its in-flight requests completed (bounded by
    /// [`STOP_TIMEOUT`]); returns its next avail index.
    fn stop_queue(&mut self, index: usize) -> VhostResult<u16> {
        let Some(q) = self.vrings[index].running.take() else {
            return Ok(self.vrings[index].base);
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !q.send(QueueCtrl::Stop(tx)) {
            return Err(VhostError::BackendInternalError);
        }
        let t0 = Instant::now();
        let stopped: QueueStopped = rx.recv_timeout(STOP_TIMEOUT).map_err(|_| {
            warn!(
                "{}: queue {index}: in-flight requests did not drain within {:?}",
                self.spec.name, STOP_TIMEOUT
            );
            self.fatal = Some("a queue did not drain in time");
            VhostError::BackendInternalError
        })?;
        info!(
            "{}: queue {index} stopped after {:?} draining",
            self.spec.name,
            t0.elapsed()
        );
        if let Some(s) = lock(&self.shared.finished).get_mut(index) {
            s.merge(&stopped.stats);
        }
        self.vrings[index].base = stopped.next_avail;
        Ok(stopped.next_avail)
    }

    /// Stops every running queue (disconnect, reset, shutdown).
    pub fn stop_all(&mut self) {
        for i in 0..self.vrings.len() {
            if let Err(e) = self.stop_queue(i) {
                warn!("{}: queue {i} did not stop cleanly: {e}", self.spec.name);
            }
        }
    }

    /// Applies new interrupt coalescing settings to the running queues (queues started later
    /// read them from the controller).
    pub(crate) fn set_coalescing(&self, c: Coalescing) {
        for q in self.vrings.iter().filter_map(|v| v.running.as_ref()) {
            q.send(QueueCtrl::Coalescing(c));
        }
    }

    /// Online resize: every running queue takes the new capacity (acknowledged), then the
    /// frontend is told the config space changed, over the backend request channel (no ack is
    /// awaited: the frontend's answer is a GET_CONFIG on this very session).
    pub(crate) fn resize(&mut self, capacity: u64) -> VhostResult<()> {
        let acks: Vec<Receiver<()>> = self
            .vrings
            .iter()
            .filter_map(|v| v.running.as_ref())
            .filter_map(|q| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                q.send(QueueCtrl::Capacity(capacity, tx)).then_some(rx)
            })
            .collect();
        for rx in acks {
            // A queue that has ended meanwhile has nothing to check any more.
            let _ = rx.recv_timeout(REACTOR_ACK_TIMEOUT);
        }
        self.notify_config_change()
    }

    /// Sends VHOST_USER_BACKEND_CONFIG_CHANGE_MSG on the backend request channel (the `vhost`
    /// crate's `Backend` cannot send it). Without NEED_REPLY, as SPDK does: QEMU answers it by
    /// reading the config space (GET_CONFIG) on the main channel, which this session serves only
    /// after the caller lets go of the backend, so waiting here for an ack would stall both.
    fn notify_config_change(&mut self) -> VhostResult<()> {
        use std::io::Write;
        const CONFIG_CHANGE_MSG: u32 = 2;
        const VERSION_1: u32 = 0x1;
        let Some(chan) = self.backend_channel.as_mut() else {
            info!(
                "{}: capacity changed; the frontend gave no backend channel to tell it",
                self.spec.name
            );
            return Ok(());
        };
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        let _ = chan.set_write_timeout(Some(REACTOR_ACK_TIMEOUT));
        chan.write_all(&msg).map_err(VhostError::ReqHandlerError)?;
        info!(
            "{}: told the frontend the config space changed",
            self.spec.name
        );
        Ok(())
    }

    /// Gives the running queues the bdev's limiter (`None`: no limits).
    pub(crate) fn set_qos(&self, limiter: Option<Arc<spinblk_bdev::QosLimiter>>) {
        for q in self.vrings.iter().filter_map(|v| v.running.as_ref()) {
            q.send(QueueCtrl::Qos(limiter.clone()));
        }
    }

    /// How to reach each running queue, by queue index (copied out, so statistics can be
    /// gathered without holding this backend's lock while reactors answer; see
    /// `Controller::report`).
    pub(crate) fn running_queues(&self) -> Vec<(usize, RunningQueue)> {
        self.vrings
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.running.clone().map(|q| (i, q)))
            .collect()
    }
}

impl Drop for BlkBackend {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl VhostUserBackendReqHandlerMut for BlkBackend {
    fn set_owner(&mut self) -> VhostResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.reset_device()
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        // Rings and the virtio state go back to their initial state; what was negotiated for
        // the connection itself stays (QEMU sends RESET_OWNER when the guest resets the device
        // and goes on using REPLY_ACK and the memory table it set up).
        self.stop_all();
        let fresh = BlkBackend::new(Arc::clone(&self.spec), Arc::clone(&self.shared));
        self.acked_features = fresh.acked_features;
        self.writeback = fresh.writeback;
        self.vrings = (0..self.spec.num_queues)
            .map(|_| Vring::default())
            .collect();
        Ok(())
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !self.offered_features() != 0 {
            return Err(VhostError::InvalidParam);
        }
        let log_changed =
            (self.acked_features ^ features) & VhostUserVirtioFeatures::LOG_ALL.bits() != 0;
        self.acked_features = features;
        // Without protocol features, rings start enabled (vhost-user spec, "Ring states").
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for v in &mut self.vrings {
                v.enabled = true;
            }
        }
        if log_changed {
            info!(
                "{}: dirty logging {}",
                self.spec.name,
                if features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0 {
                    "on"
                } else {
                    "off"
                }
            );
            self.update_logging()?;
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<Vec<u64>>> {
        if ctx.is_empty() || ctx.len() != files.len() {
            return Err(VhostError::InvalidParam);
        }
        let mut regions = Vec::with_capacity(ctx.len());
        for (r, file) in ctx.iter().zip(files) {
            regions.push(Self::map_region(
                r.guest_phys_addr,
                r.memory_size,
                r.user_addr,
                r.mmap_offset,
                file,
            )?);
        }
        self.publish_memory(regions)?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
            return Err(VhostError::InvalidParam);
        }
        let v = self.vring(index)?;
        if v.running.is_some() {
            return Err(invalid("SET_VRING_NUM on a running ring"));
        }
        v.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> VhostResult<()> {
        if !descriptor.is_multiple_of(16) || !available.is_multiple_of(2) || !used.is_multiple_of(4)
        {
            return Err(invalid("misaligned ring address"));
        }
        let log_flag = flags.contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG);
        let v = self.vring(index)?;
        if v.running.is_some() {
            // A running ring may only switch its logging (QEMU does that when migration starts
            // and ends); moving it needs a stop first.
            if (v.desc_va, v.used_va, v.avail_va) != (descriptor, used, available) {
                return Err(invalid("SET_VRING_ADDR moves a running ring"));
            }
            (v.log_flag, v.log_addr) = (log_flag, log);
            return self.update_logging();
        }
        (v.desc_va, v.used_va, v.avail_va, v.addr_set) = (descriptor, used, available, true);
        (v.log_flag, v.log_addr) = (log_flag, log);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        let v = self.vring(index)?;
        if v.running.is_some() {
            return Err(invalid("SET_VRING_BASE on a running ring"));
        }
        v.base = u16::try_from(base).map_err(|_| VhostError::InvalidParam)?;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        self.vring(index)?;
        let next_avail = self.stop_queue(index as usize)?;
        // A stopped ring is disabled until the frontend enables it again.
        if self.features_acked_protocol() {
            self.vrings[index as usize].enabled = false;
        }
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        self.vring(u32::from(index))?;
        if let Some(f) = &fd {
            check_eventfd(f)?;
        }
        // Receiving the kick fd is what starts the ring (vhost-user spec, "Ring states"); a
        // running ring just moves to the new fd.
        let v = &mut self.vrings[usize::from(index)];
        if let Some(q) = &v.running {
            let copy = match &fd {
                Some(f) => Some(f.try_clone().map_err(VhostError::ReqHandlerError)?),
                None => None,
            };
            q.replace_kick(copy);
            v.kick = fd;
            return Ok(());
        }
        v.kick = fd;
        self.start_queue(usize::from(index))
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        self.vring(u32::from(index))?;
        if let Some(f) = &fd {
            check_eventfd(f)?;
            set_nonblocking(f)?;
        }
        let copy = match &fd {
            Some(f) => Some(f.try_clone().map_err(VhostError::ReqHandlerError)?),
            None => None,
        };
        // One interrupt on every new call fd, as libvhost-user does ("in case of I/O hang after
        // reconnecting"): a target that stopped (SIGTERM, crash) may have completed requests
        // whose interrupt the frontend lost while it tore the old connection down; the guest
        // then waits on them forever, since it submits nothing new. A spurious interrupt only
        // makes the driver look at its used ring.
        // (It is a checked, non-blocking eventfd: a failed write has nothing to report.)
        if let Some(f) = &fd {
            let _ = signal_call(f);
        }
        let v = &mut self.vrings[usize::from(index)];
        if let Some(q) = &v.running {
            q.send(QueueCtrl::Call(copy));
        }
        v.call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        if let Some(f) = &fd {
            check_eventfd(f)?;
        }
        self.vring(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        Ok(Self::protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !Self::protocol_features().bits() != 0 {
            return Err(VhostError::InvalidParam);
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(u64::from(self.spec.num_queues))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        let v = self.vring(index)?;
        v.enabled = enable;
        if let Some(q) = &v.running {
            q.send(QueueCtrl::Enable(enable));
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        let limits = DeviceLimits {
            capacity: self.shared.capacity.load(Ordering::SeqCst),
            ..self.spec.device.limits
        };
        let config = config_space(&limits, self.spec.num_queues, self.writeback);
        // Bytes past the structure read as zero; the caller bounds offset + size to 4 KiB.
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(config.len());
        let end = (offset as usize + size as usize).min(config.len());
        out[..end - start].copy_from_slice(&config[start..end]);
        Ok(out)
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<()> {
        let wce_acked = self.acked_features & (1 << VIRTIO_BLK_F_CONFIG_WCE) != 0;
        match (offset, buf) {
            (WRITEBACK_OFFSET, [wb]) if wce_acked => {
                self.writeback = *wb != 0;
                for q in self.vrings.iter().filter_map(|v| v.running.as_ref()) {
                    q.send(QueueCtrl::WriteCache(self.writeback));
                }
                info!(
                    "{}: write cache {}",
                    self.spec.name,
                    if self.writeback { "on" } else { "off" }
                );
                Ok(())
            }
            _ => Err(VhostError::InvalidParam),
        }
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostResult<()> {
        Err(invalid("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostResult<File> {
        Err(invalid("shared objects are not supported"))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VhostResult<(VhostUserInflight, File)> {
        let (num_queues, queue_size) = (inflight.num_queues, inflight.queue_size);
        if num_queues > self.spec.num_queues || queue_size > MAX_QUEUE_SIZE {
            return Err(VhostError::InvalidParam);
        }
        let (region, file) = InflightRegion::create(num_queues, queue_size).map_err(|e| {
            warn!("{}: GET_INFLIGHT_FD: {e}", self.spec.name);
            VhostError::InvalidParam
        })?;
        self.inflight = Some(Arc::new(region));
        let mmap_size = queue_region_size(queue_size) * u64::from(num_queues);
        Ok((
            VhostUserInflight {
                mmap_size,
                mmap_offset: 0,
                num_queues,
                queue_size,
            },
            file,
        ))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostResult<()> {
        if self.vrings.iter().any(|v| v.running.is_some()) {
            return Err(invalid("SET_INFLIGHT_FD while queues run"));
        }
        let (size, offset, queues, qsize) = (
            inflight.mmap_size,
            inflight.mmap_offset,
            inflight.num_queues,
            inflight.queue_size,
        );
        if queues > self.spec.num_queues || qsize > MAX_QUEUE_SIZE {
            return Err(VhostError::InvalidParam);
        }
        let region = InflightRegion::map(&file, offset, size, queues, qsize).map_err(|e| {
            warn!("{}: SET_INFLIGHT_FD refused: {e}", self.spec.name);
            VhostError::InvalidParam
        })?;
        debug!(
            "{}: inflight region: {queues} queues of {qsize}",
            self.spec.name
        );
        self.inflight = Some(Arc::new(region));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<u64>> {
        if self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(invalid("no free memory slot"));
        }
        // Copies: the message struct is packed.
        let (gpa, size, uaddr, offset) = (
            region.guest_phys_addr,
            region.memory_size,
            region.user_addr,
            region.mmap_offset,
        );
        debug!(
            "{}: ADD_MEM_REG gpa {gpa:#x} size {size:#x} uaddr {uaddr:#x} offset {offset:#x}",
            self.spec.name
        );
        let mapped = Self::map_region(gpa, size, uaddr, offset, fd)?;
        let mut regions = self.same_regions();
        regions.push(mapped);
        self.publish_memory(regions)?;
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        let (gpa, size) = (region.guest_phys_addr, region.memory_size);
        let pos = self
            .regions
            .iter()
            .position(|r| r.gpa == gpa && r.size == size)
            .ok_or(VhostError::InvalidParam)?;
        let mut regions = self.same_regions();
        regions.remove(pos);
        self.publish_memory(regions)
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostResult<Option<File>> {
        Err(invalid("device state transfer is not supported"))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(invalid("device state transfer is not supported"))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(invalid("no shared memory regions"))
    }

    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VhostResult<()> {
        let (size, offset) = (log.mmap_size, log.mmap_offset);
        let mapped = DirtyLog::map(&file, offset, size).map_err(|e| {
            warn!("{}: SET_LOG_BASE refused: {e}", self.spec.name);
            VhostError::InvalidParam
        })?;
        info!("{}: dirty log of {size} bytes", self.spec.name);
        // Every running queue moves to the new log before the old one can go (it is unmapped
        // when the last queue lets go of it).
        self.log = Some(mapped);
        self.update_logging()
    }
}

impl BlkBackend {
    /// SET_BACKEND_REQ_FD: the channel for backend-initiated messages (config changes).
    pub(crate) fn set_backend_channel(&mut self, file: File) -> VhostResult<()> {
        if !fd_kind(&file).starts_with("socket:") {
            return Err(invalid("the backend request fd must be a socket"));
        }
        let fd = std::os::fd::OwnedFd::from(file);
        let stream = UnixStream::from(fd);
        self.backend_channel = Some(stream);
        Ok(())
    }
}
