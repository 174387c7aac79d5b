//! The vhost-user control plane of one frontend connection: features, memory table, vring
//! setup and config space. Queue start/stop and memory changes reach the reactors as messages
//! and are acknowledged before the frontend gets its reply.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};
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
use crate::device::{lock, ControllerShared, ControllerSpec};
use crate::inflight::{queue_region_size, InflightRegion};
use crate::queue::{QueueCtrl, QueueStart, QueueStopped, VirtqPoller};
use crate::stats::QueueStats;

/// Memory slots offered through CONFIGURE_MEM_SLOTS (QEMU's and libvhost-user's limit).
const MAX_MEM_SLOTS: u64 = 509;
/// Largest ring the target accepts (the split-ring maximum).
const MAX_QUEUE_SIZE: u32 = 32768;
/// How long the control plane waits for a reactor to start a queue or take a memory table.
const REACTOR_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long GET_VRING_BASE waits for in-flight requests to drain.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// One mapped region of guest memory and where the frontend has it.
struct MappedRegion {
    user_addr: u64,
    region: Arc<GuestRegionMmap>,
}

/// A vring as the frontend has described it so far.
#[derive(Default)]
struct Vring {
    size: u16,
    desc_va: u64,
    avail_va: u64,
    used_va: u64,
    addr_set: bool,
    base: u16,
    call: Option<File>,
    enabled: bool,
    running: Option<Sender<QueueCtrl>>,
}

/// The vhost-user-blk backend of one connection.
pub struct BlkBackend {
    spec: Arc<ControllerSpec>,
    acked_features: u64,
    acked_protocol: u64,
    regions: Vec<MappedRegion>,
    mem: Arc<GuestMemoryMmap>,
    vrings: Vec<Vring>,
    writeback: bool,
    /// The inflight region (GET/SET_INFLIGHT_FD), shared by this connection's queues.
    inflight: Option<Arc<InflightRegion>>,
    /// Statistics and the stopping flag, shared with the controller so they outlive the
    /// connection.
    shared: Arc<ControllerShared>,
}

fn invalid(why: &'static str) -> VhostError {
    VhostError::InvalidOperation(why)
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
            mem: Arc::new(GuestMemoryMmap::default()),
            vrings,
            writeback: write_cache,
            inflight: None,
            shared,
        }
    }

    fn offered_features(&self) -> u64 {
        device_features(&self.spec.device.limits)
    }

    fn vring(&mut self, index: u32) -> VhostResult<&mut Vring> {
        self.vrings
            .get_mut(index as usize)
            .ok_or(VhostError::InvalidParam)
    }

    /// Translates a frontend virtual address through the memory table.
    fn va_to_gpa(&self, va: u64) -> Option<GuestAddress> {
        use vm_memory::GuestMemoryRegion;
        self.regions.iter().find_map(|r| {
            let off = va.checked_sub(r.user_addr)?;
            (off < r.region.len()).then(|| GuestAddress(r.region.start_addr().0 + off))
        })
    }

    /// Rebuilds the guest memory view from `self.regions` and hands it to running queues.
    fn publish_memory(&mut self) -> VhostResult<()> {
        use vm_memory::GuestMemoryRegion;
        // vm-memory wants regions in guest-address order; frontends add them in any order.
        self.regions.sort_by_key(|r| r.region.start_addr());
        let regions = self.regions.iter().map(|r| Arc::clone(&r.region)).collect();
        let mem = GuestMemoryMmap::from_arc_regions(regions).map_err(|e| {
            warn!("{}: memory table refused: {e}", self.spec.name);
            VhostError::InvalidParam
        })?;
        self.mem = Arc::new(mem);
        let acks: Vec<Receiver<()>> = self
            .vrings
            .iter()
            .filter_map(|v| v.running.as_ref())
            .filter_map(|ctrl| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                ctrl.send(QueueCtrl::Memory(Arc::clone(&self.mem), tx))
                    .ok()
                    .map(|_| rx)
            })
            .collect();
        for rx in acks {
            rx.recv_timeout(REACTOR_ACK_TIMEOUT)
                .map_err(|_| VhostError::BackendInternalError)?;
        }
        Ok(())
    }

    fn map_region(
        gpa: u64,
        size: u64,
        user_addr: u64,
        mmap_offset: u64,
        file: File,
    ) -> VhostResult<MappedRegion> {
        let len = usize::try_from(size).map_err(|_| VhostError::InvalidParam)?;
        if len == 0 || gpa.checked_add(size).is_none() || user_addr.checked_add(size).is_none() {
            return Err(VhostError::InvalidParam);
        }
        let mapping = MmapRegion::from_file(FileOffset::new(file, mmap_offset), len)
            .map_err(|e| VhostError::ReqHandlerError(std::io::Error::other(e.to_string())))?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(gpa)).ok_or(VhostError::InvalidParam)?;
        Ok(MappedRegion {
            user_addr,
            region: Arc::new(region),
        })
    }

    /// Starts polling vring `index` on its reactor, if it is fully described.
    fn start_queue(&mut self, index: usize) -> VhostResult<()> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(invalid("the target is shutting down"));
        }
        let v = &self.vrings[index];
        if v.running.is_some() || !v.addr_set || v.size == 0 {
            return Ok(());
        }
        let translate = |va| {
            self.va_to_gpa(va)
                .ok_or(invalid("ring address not in guest memory"))
        };
        let (desc, avail, used) = (
            translate(v.desc_va)?,
            translate(v.avail_va)?,
            translate(v.used_va)?,
        );
        let inflight = match &self.inflight {
            Some(region) => Some(region.queue(index as u16, v.size).map_err(|e| {
                warn!("{}: queue {index}: {e}", self.spec.name);
                invalid("inflight region does not fit the ring")
            })?),
            None => None,
        };
        let (ctrl_tx, ctrl_rx) = crossbeam_channel::unbounded();
        let start = QueueStart {
            size: v.size,
            desc,
            avail,
            used,
            next_avail: v.base,
            event_idx,
            enabled: v.enabled,
            write_cache: self.writeback,
            call: v.call.as_ref().and_then(|f| f.try_clone().ok()),
            mem: Arc::clone(&self.mem),
            device: Arc::clone(&self.spec.device),
            ctrl: ctrl_rx,
            inflight,
        };
        let reactor = &self.spec.reactors[index % self.spec.reactors.len()];
        let (tx, rx) = crossbeam_channel::bounded(1);
        reactor
            .send(move |r| {
                let result = VirtqPoller::new(start).map(|p| {
                    r.add_poller(Box::new(p));
                });
                let _ = tx.send(result.map_err(|e| e.to_string()));
            })
            .map_err(|_| VhostError::BackendInternalError)?;
        match rx.recv_timeout(REACTOR_ACK_TIMEOUT) {
            Ok(Ok(())) => {
                debug!(
                    "{}: queue {index} started on reactor {}",
                    self.spec.name,
                    reactor.id()
                );
                self.vrings[index].running = Some(ctrl_tx);
                Ok(())
            }
            Ok(Err(why)) => {
                warn!("{}: queue {index} not started: {why}", self.spec.name);
                Err(invalid("queue could not start"))
            }
            Err(_) => Err(VhostError::BackendInternalError),
        }
    }

    /// Stops vring `index` once its in-flight requests completed; returns its next avail index.
    fn stop_queue(&mut self, index: usize) -> VhostResult<u16> {
        let Some(ctrl) = self.vrings[index].running.take() else {
            return Ok(self.vrings[index].base);
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        ctrl.send(QueueCtrl::Stop(tx))
            .map_err(|_| VhostError::BackendInternalError)?;
        let stopped: QueueStopped = rx
            .recv_timeout(STOP_TIMEOUT)
            .map_err(|_| VhostError::BackendInternalError)?;
        if let Some(q) = lock(&self.shared.finished).get_mut(index) {
            q.merge(&stopped.stats);
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

    /// Adds each running queue's statistics (asked of its reactor by message) into
    /// `per_queue[queue index]`.
    pub(crate) fn add_running_stats(&self, per_queue: &mut [QueueStats]) {
        for (i, v) in self.vrings.iter().enumerate() {
            let Some(ctrl) = &v.running else { continue };
            let (tx, rx) = crossbeam_channel::bounded(1);
            if ctrl.send(QueueCtrl::Stats(tx)).is_ok() {
                if let (Ok(s), Some(q)) =
                    (rx.recv_timeout(REACTOR_ACK_TIMEOUT), per_queue.get_mut(i))
                {
                    q.merge(&s);
                }
            }
        }
    }

    fn protocol_features() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
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
        self.stop_all();
        *self = BlkBackend::new(Arc::clone(&self.spec), Arc::clone(&self.shared));
        Ok(())
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !self.offered_features() != 0 {
            return Err(VhostError::InvalidParam);
        }
        self.acked_features = features;
        // Without protocol features, rings start enabled (vhost-user spec, "Ring states").
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for v in &mut self.vrings {
                v.enabled = true;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<Vec<u64>>> {
        if ctx.len() != files.len() {
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
        self.regions = regions;
        self.publish_memory()?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        if num == 0 || num > MAX_QUEUE_SIZE || !num.is_power_of_two() {
            return Err(VhostError::InvalidParam);
        }
        self.vring(index)?.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostResult<()> {
        let v = self.vring(index)?;
        (v.desc_va, v.used_va, v.avail_va, v.addr_set) = (descriptor, used, available, true);
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
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            self.vrings[index as usize].enabled = false;
        }
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
        // Queues are polled, so the kick eventfd is never read; receiving it is what starts
        // the ring (vhost-user spec: "a ring is started on SET_VRING_KICK").
        self.vring(u32::from(index))?;
        self.start_queue(usize::from(index))
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let v = self.vring(u32::from(index))?;
        if let Some(ctrl) = &v.running {
            let copy = fd.as_ref().and_then(|f| f.try_clone().ok());
            let _ = ctrl.send(QueueCtrl::Call(copy));
        }
        v.call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
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
        if let Some(ctrl) = &v.running {
            let _ = ctrl.send(QueueCtrl::Enable(enable));
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        let config = config_space(
            &self.spec.device.limits,
            self.spec.num_queues,
            self.writeback,
        );
        // Bytes past the structure read as zero; the library bounds offset + size to 4 KiB.
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
                for ctrl in self.vrings.iter().filter_map(|v| v.running.as_ref()) {
                    let _ = ctrl.send(QueueCtrl::WriteCache(self.writeback));
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
        if num_queues > self.spec.num_queues {
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
        self.regions.push(mapped);
        if let Err(e) = self.publish_memory() {
            self.regions.pop();
            return Err(e);
        }
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        use vm_memory::GuestMemoryRegion;
        let pos = self
            .regions
            .iter()
            .position(|r| {
                r.region.start_addr().0 == region.guest_phys_addr
                    && r.region.len() == region.memory_size
            })
            .ok_or(VhostError::InvalidParam)?;
        self.regions.remove(pos);
        self.publish_memory()
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

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostResult<()> {
        Err(invalid("dirty logging is not supported"))
    }
}
