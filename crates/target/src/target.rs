//! The target: the reactor pool, the bdev registry and the controllers, created and deleted at
//! run time. The command line, `--config`, `--json` and the RPC server all go through it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use log::{info, warn};
use spinblk_bdev::IoOp;
use spinblk_protocol::{
    serial_bytes, Coalescing, Controller, ControllerReport, ControllerSpec, DeviceInfo,
    DeviceLimits, QueueStats, SessionInfo, SocketOptions, ID_BYTES,
};
use spinblk_reactor::{
    PollMode, PollerInfo, ReactorConfig, ReactorHandle, ReactorPool, ReactorStats,
};

use crate::bdev::{
    check_name, BdevEntry, BdevEvent, BdevParams, BdevRegistry, ListenerId, QosLimits, Resized,
};
use crate::cpumask::CoreMask;
use crate::error::TargetError;
use crate::qos::QosUpdate;

/// Queues a controller offers when it is not told (lets QEMU's default of one queue per vCPU
/// work for guests of up to 16 vCPUs).
pub const DEFAULT_NUM_QUEUES: u16 = 16;
/// How long deleting a controller waits for its sessions to end before giving up on them.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a reactor may take to answer a statistics message.
pub const REACTOR_TIMEOUT: Duration = Duration::from_secs(2);
/// SPDK's default coalescing IOPS threshold (SPDK_VHOST_VQ_IOPS_COALESCING_THRESHOLD).
pub const DEFAULT_IOPS_THRESHOLD: u32 = 60_000;

/// How the target is set up when it starts.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// The app's cores: one pinned reactor each. Every controller's cpumask is a subset.
    pub cores: Vec<usize>,
    /// Where controllers created without an explicit socket path listen: `<dir>/<name>`.
    pub socket_dir: PathBuf,
    /// Default permissions of controller sockets.
    pub socket: SocketOptions,
    /// How the reactors poll (adaptive: sleep when idle; busy: always spin).
    pub poll_mode: PollMode,
    /// How long a reactor waits after a busy pass while work streams in, for the drivers to
    /// queue a batch ([`spinblk_reactor::ReactorConfig::batch_wait`]; zero: off).
    pub batch_wait: Duration,
}

/// Everything needed to create a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerParams {
    /// Unique name; also the socket's file name under the socket directory.
    pub name: String,
    /// The bdev it serves (name or uuid).
    pub bdev: String,
    /// Cores its queues are spread over, round-robin (default: all the app's cores).
    pub cpumask: Option<CoreMask>,
    /// An explicit queue-to-core map: queue i on `queue_cores[i % len]`.
    pub queue_cores: Option<Vec<usize>>,
    /// Most virtqueues offered.
    pub num_queues: u16,
    /// Offer the disk read-only.
    pub readonly: bool,
    /// GET_ID serial (default: the bdev's name).
    pub serial: Option<String>,
    /// Socket path (default: `<socket dir>/<name>`).
    pub socket: Option<PathBuf>,
    /// Socket permissions (default: the target's).
    pub socket_options: Option<SocketOptions>,
    /// Interrupt coalescing from the start (default: off).
    pub coalescing: Option<Coalescing>,
}

impl ControllerParams {
    /// A controller `name` on bdev `bdev` with every default.
    pub fn new(name: impl Into<String>, bdev: impl Into<String>) -> ControllerParams {
        ControllerParams {
            name: name.into(),
            bdev: bdev.into(),
            cpumask: None,
            queue_cores: None,
            num_queues: DEFAULT_NUM_QUEUES,
            readonly: false,
            serial: None,
            socket: None,
            socket_options: None,
            coalescing: None,
        }
    }
}

/// A running controller and what it was made from.
pub struct ControllerEntry {
    params: ControllerParams,
    cores: CoreMask,
    queue_cores: Vec<usize>,
    socket: PathBuf,
    bdev: Arc<BdevEntry>,
    controller: Arc<Controller>,
    listener: ListenerId,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ControllerEntry {
    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.params.name
    }

    /// The parameters it was created with.
    pub fn params(&self) -> &ControllerParams {
        &self.params
    }

    /// The cores its queues run on.
    pub fn cores(&self) -> &CoreMask {
        &self.cores
    }

    /// The core of each queue's reactor, cycled by queue index.
    pub fn queue_cores(&self) -> &[usize] {
        &self.queue_cores
    }

    /// Whether the controller offers the disk read-only.
    pub fn readonly(&self) -> bool {
        self.params.readonly
    }

    /// Its socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The bdev it serves.
    pub fn bdev(&self) -> &Arc<BdevEntry> {
        &self.bdev
    }

    /// The frontends connected now.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.controller.sessions()
    }

    /// Its statistics (per queue and total; `total.in_flight` is the requests its queues hold
    /// right now). Bounded: waits at most a few seconds for a busy session or reactor.
    pub fn report(&self) -> ControllerReport {
        self.controller.report()
    }

    /// The capacity it serves now, in bytes (follows its bdev's resizes).
    pub fn capacity(&self) -> u64 {
        self.controller.capacity()
    }

    /// The interrupt coalescing settings.
    pub fn coalescing(&self) -> Coalescing {
        self.controller.coalescing()
    }

    /// The GET_ID serial it answers.
    pub fn serial(&self) -> String {
        self.params
            .serial
            .clone()
            .unwrap_or_else(|| self.bdev.name().to_string())
    }
}

enum CtrlSlot {
    Creating,
    /// Being deleted; still counted in its bdev's statistics until its totals are retired.
    Deleting(Arc<ControllerEntry>),
    Ready(Arc<ControllerEntry>),
}

/// One reactor as the framework_get_reactors / thread_get_stats / thread_get_pollers methods
/// report it.
#[derive(Debug, Clone)]
pub struct ReactorInfo {
    /// Busy/idle/sleep accounting from the reactor itself (its thread id included).
    pub stats: ReactorStats,
    /// Its pollers, with their run and busy counts.
    pub pollers: Vec<PollerInfo>,
    /// The core it is pinned to.
    pub core: usize,
    /// The core's NUMA node (-1 if unknown).
    pub numa_id: i32,
    /// User, system and interrupt time (irq + softirq) of the core since the target started,
    /// in clock ticks (USER_HZ), from /proc/stat.
    pub usr: u64,
    /// See `usr`.
    pub sys: u64,
    /// See `usr`.
    pub irq: u64,
}

/// The whole target.
pub struct Target {
    opts: TargetOptions,
    app_mask: CoreMask,
    pool: Mutex<Option<ReactorPool>>,
    reactors: Vec<ReactorHandle>,
    by_core: HashMap<usize, ReactorHandle>,
    bdevs: BdevRegistry,
    controllers: Mutex<BTreeMap<String, CtrlSlot>>,
    started: Instant,
    proc_stat_base: HashMap<usize, (u64, u64, u64)>,
    poll_mode: Mutex<PollMode>,
    /// Held while a bdev's statistics are summed and while a deleted controller's totals move
    /// into its bdev's retired counts, so a sum sees each controller exactly once.
    stats_lock: Mutex<()>,
    /// Ceph clusters, their connections and the open RBD images.
    pub(crate) rbd: crate::rbd::RbdState,
}

impl Target {
    /// Starts one pinned reactor per core in `opts.cores`; no bdevs or controllers yet.
    pub fn start(opts: TargetOptions) -> Result<Target, TargetError> {
        if opts.cores.is_empty() {
            return Err(TargetError::Invalid("no reactor cores".into()));
        }
        opts.socket
            .check()
            .map_err(|e| TargetError::Invalid(e.to_string()))?;
        let pool = ReactorPool::start_with(
            &opts.cores,
            ReactorConfig {
                poll_mode: opts.poll_mode,
                batch_wait: opts.batch_wait,
                ..ReactorConfig::default()
            },
        )
        .map_err(|e| match e {
            spinblk_reactor::ReactorPoolError::NoSuchCore(_) => {
                TargetError::Invalid(format!("cannot start reactors: {e}"))
            }
            other => TargetError::System(
                "cannot start reactors".into(),
                std::io::Error::other(other.to_string()),
            ),
        })?;
        let reactors = pool.handles().to_vec();
        let by_core = reactors
            .iter()
            .filter_map(|h| h.core().map(|c| (c, h.clone())))
            .collect();
        let proc_stat_base = proc_stat();
        Ok(Target {
            app_mask: CoreMask::from_cores(opts.cores.iter().copied()),
            pool: Mutex::new(Some(pool)),
            reactors,
            by_core,
            bdevs: BdevRegistry::default(),
            controllers: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            proc_stat_base,
            poll_mode: Mutex::new(opts.poll_mode),
            stats_lock: Mutex::new(()),
            rbd: crate::rbd::RbdState::default(),
            opts,
        })
    }

    /// The options it started with.
    pub fn options(&self) -> &TargetOptions {
        &self.opts
    }

    /// How the reactors poll now.
    pub fn poll_mode(&self) -> PollMode {
        *lock(&self.poll_mode)
    }

    /// Switches every reactor's poll mode (each after its current pass).
    pub fn set_poll_mode(&self, mode: PollMode) -> Result<(), TargetError> {
        let pool = lock(&self.pool);
        let pool = pool
            .as_ref()
            .ok_or_else(|| TargetError::Busy("the target is shutting down".into()))?;
        pool.set_poll_mode(mode).map_err(|e| {
            TargetError::System("reactor".into(), std::io::Error::other(e.to_string()))
        })?;
        *lock(&self.poll_mode) = mode;
        info!("poll mode: {mode}");
        Ok(())
    }

    /// The app's cores.
    pub fn app_mask(&self) -> &CoreMask {
        &self.app_mask
    }

    /// How long ago it started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The bdev registry.
    pub fn bdevs(&self) -> &BdevRegistry {
        &self.bdevs
    }

    /// Creates a bdev.
    pub fn create_bdev(&self, params: BdevParams) -> Result<Arc<BdevEntry>, TargetError> {
        let name = params.name.clone();
        let entry = match &params.kind {
            crate::BdevKind::Rbd(_) => self.create_rbd_bdev(params)?,
            _ => self.bdevs.create(params)?,
        };
        info!(
            "bdev {name}: {} {} bytes, {}-byte blocks, uuid {}",
            entry.kind().module(),
            entry.bdev().size_bytes(),
            entry.bdev().block_size(),
            entry.uuid()
        );
        Ok(entry)
    }

    /// Deletes a bdev no controller claims (of module `module`, when given).
    pub fn delete_bdev(&self, name: &str, module: Option<&str>) -> Result<(), TargetError> {
        self.bdevs.delete(name, module)?;
        info!("bdev {name}: deleted");
        // An RBD image is flushed and closed before the call returns.
        self.release_rbd_bdev(name)
    }

    /// Changes bdev `name`'s capacity to `new_size_bytes` (malloc: within its reserve; null:
    /// any size) and tells every controller serving it, which tell their guests. A shrink is
    /// refused while a controller serves it, unless `force`. Returns when every controller has
    /// updated its sessions.
    pub fn resize_bdev(
        &self,
        name: &str,
        new_size_bytes: u64,
        force: bool,
    ) -> Result<Resized, TargetError> {
        let entry = self.bdev_entry(name)?;
        let r = entry.resize(new_size_bytes, force)?;
        log_resize(&entry, r, "resized");
        Ok(r)
    }

    /// Re-reads the size of bdev `name`'s backing file or device and, if it changed, tells
    /// every controller serving it. A file that shrank is refused while a controller serves it,
    /// unless `force`.
    pub fn rescan_bdev(&self, name: &str, force: bool) -> Result<Resized, TargetError> {
        let entry = self.bdev_entry(name)?;
        let r = entry.rescan(force)?;
        log_resize(&entry, r, "rescanned");
        Ok(r)
    }

    /// Changes bdev `name`'s QoS limits (SPDK's `bdev_set_qos_limit` semantics, see
    /// [`QosUpdate`]) and applies them to every queue serving it; returns the limits now.
    pub fn set_bdev_qos(&self, name: &str, update: &QosUpdate) -> Result<QosLimits, TargetError> {
        let entry = self.bdev_entry(name)?;
        let limits = update.apply(entry.name(), entry.qos());
        entry.set_qos(limits);
        info!(
            "bdev {}: QoS limits rw_ios_per_sec={} rw_mbytes_per_sec={} r_mbytes_per_sec={} \
             w_mbytes_per_sec={}{}",
            entry.name(),
            limits.rw_ios_per_sec,
            limits.rw_mbytes_per_sec,
            limits.r_mbytes_per_sec,
            limits.w_mbytes_per_sec,
            if limits.any() { "" } else { " (none)" }
        );
        Ok(limits)
    }

    fn bdev_entry(&self, name: &str) -> Result<Arc<BdevEntry>, TargetError> {
        self.bdevs.get(name).ok_or_else(|| TargetError::NotFound {
            what: "bdev",
            name: name.to_string(),
        })
    }

    /// I/O statistics of a bdev: what every controller serving it did, plus what the deleted
    /// ones did, summed.
    pub fn bdev_stats(&self, bdev: &BdevEntry) -> QueueStats {
        let _consistent = lock(&self.stats_lock);
        let mut total = bdev.retired_stats();
        let users: Vec<Arc<ControllerEntry>> = lock(&self.controllers)
            .values()
            .filter_map(|s| match s {
                CtrlSlot::Ready(e) | CtrlSlot::Deleting(e) => Some(Arc::clone(e)),
                CtrlSlot::Creating => None,
            })
            .collect();
        for c in users {
            if std::ptr::eq(Arc::as_ptr(c.bdev()), bdev) {
                total.merge(&c.report().total);
            }
        }
        total
    }

    /// Per-queue statistics of every controller serving `bdev` (SPDK's per-channel iostat):
    /// the controller's name and its report.
    pub fn bdev_channel_stats(&self, bdev: &BdevEntry) -> Vec<ControllerReport> {
        self.controllers()
            .into_iter()
            .filter(|c| std::ptr::eq(Arc::as_ptr(c.bdev()), bdev))
            .map(|c| c.report())
            .collect()
    }

    /// Every running controller, by name.
    pub fn controllers(&self) -> Vec<Arc<ControllerEntry>> {
        lock(&self.controllers)
            .values()
            .filter_map(|s| match s {
                CtrlSlot::Ready(e) => Some(Arc::clone(e)),
                _ => None,
            })
            .collect()
    }

    /// The controller named `name`.
    pub fn controller(&self, name: &str) -> Option<Arc<ControllerEntry>> {
        match lock(&self.controllers).get(name) {
            Some(CtrlSlot::Ready(e)) => Some(Arc::clone(e)),
            _ => None,
        }
    }

    /// The socket path a controller named `name` gets by default.
    pub fn default_socket(&self, name: &str) -> PathBuf {
        self.opts.socket_dir.join(name)
    }

    fn resolve_cores(&self, p: &ControllerParams) -> Result<(CoreMask, Vec<usize>), TargetError> {
        let mask = p.cpumask.clone().unwrap_or_else(|| self.app_mask.clone());
        if !mask.is_subset(&self.app_mask) {
            return Err(TargetError::Invalid(format!(
                "cpumask {mask} is not a subset of the app's cores {}",
                self.app_mask
            )));
        }
        let queue_cores = match &p.queue_cores {
            Some(q) if q.is_empty() => {
                return Err(TargetError::Invalid("queue_cpus is empty".into()))
            }
            Some(q) => q.clone(),
            None => mask.cores(),
        };
        if let Some(c) = queue_cores
            .iter()
            .find(|c| !self.app_mask.cores().contains(c))
        {
            return Err(TargetError::Invalid(format!(
                "cpu {c} is not one of the app's cores {}",
                self.app_mask
            )));
        }
        let mask = if p.queue_cores.is_some() {
            CoreMask::from_cores(queue_cores.iter().copied())
        } else {
            mask
        };
        Ok((mask, queue_cores))
    }

    /// Creates a controller: claims its bdev and listens on its socket. The call returns once
    /// the socket accepts connections.
    pub fn create_controller(
        &self,
        params: ControllerParams,
    ) -> Result<Arc<ControllerEntry>, TargetError> {
        check_name("controller", &params.name)?;
        if !(1..=256).contains(&params.num_queues) {
            return Err(TargetError::Invalid("num_queues must be 1 to 256".into()));
        }
        if params.serial.as_ref().is_some_and(|s| s.len() > ID_BYTES) {
            return Err(TargetError::Invalid(format!(
                "serial is longer than {ID_BYTES} bytes"
            )));
        }
        let (cores, queue_cores) = self.resolve_cores(&params)?;
        let socket = params
            .socket
            .clone()
            .unwrap_or_else(|| self.default_socket(&params.name));
        let socket_opts = params.socket_options.unwrap_or(self.opts.socket);
        {
            let mut ctrls = lock(&self.controllers);
            match ctrls.get(&params.name) {
                Some(CtrlSlot::Ready(_)) => {
                    return Err(TargetError::Exists {
                        what: "controller",
                        name: params.name,
                    })
                }
                Some(_) => {
                    return Err(TargetError::Busy(format!(
                        "controller '{}' is being created or deleted",
                        params.name
                    )))
                }
                None => {}
            }
            if ctrls
                .values()
                .any(|s| matches!(s, CtrlSlot::Ready(e) if e.socket == socket))
            {
                return Err(TargetError::Exists {
                    what: "controller socket",
                    name: socket.display().to_string(),
                });
            }
            ctrls.insert(params.name.clone(), CtrlSlot::Creating);
        }
        let made = self.make_controller(&params, cores, queue_cores, socket, &socket_opts);
        let made = made.and_then(|entry| match params.coalescing {
            Some(c) => match check_coalescing(c).and_then(|()| {
                entry
                    .controller
                    .set_coalescing(c.delay_base_us, c.iops_threshold)
                    .map_err(TargetError::Invalid)
            }) {
                Ok(()) => Ok(entry),
                Err(e) => {
                    let report = entry.controller.delete(DELETE_TIMEOUT);
                    entry.bdev.unsubscribe(entry.listener);
                    entry.bdev.release(&entry.params.name, Some(&report.total));
                    Err(e)
                }
            },
            None => Ok(entry),
        });
        let mut ctrls = lock(&self.controllers);
        match made {
            Ok(entry) => {
                ctrls.insert(params.name, CtrlSlot::Ready(Arc::clone(&entry)));
                Ok(entry)
            }
            Err(e) => {
                ctrls.remove(&params.name);
                Err(e)
            }
        }
    }

    fn make_controller(
        &self,
        params: &ControllerParams,
        cores: CoreMask,
        queue_cores: Vec<usize>,
        socket: PathBuf,
        socket_opts: &SocketOptions,
    ) -> Result<Arc<ControllerEntry>, TargetError> {
        let bdev = self
            .bdevs
            .claim(&params.bdev, &params.name, params.readonly)?;
        let release = |e: TargetError| {
            bdev.release(&params.name, None);
            e
        };
        let reactors: Vec<ReactorHandle> = queue_cores
            .iter()
            .filter_map(|c| self.by_core.get(c).cloned())
            .collect();
        if reactors.is_empty() {
            return Err(release(TargetError::Invalid(
                "no reactor for the controller".into(),
            )));
        }
        let b = bdev.bdev();
        let serial = params
            .serial
            .clone()
            .unwrap_or_else(|| bdev.name().to_string());
        let device = Arc::new(DeviceInfo {
            limits: DeviceLimits {
                capacity: b.size_bytes(),
                block_size: b.block_size(),
                read_only: params.readonly,
                discard: b.supports(IoOp::Discard),
                write_zeroes: b.supports(IoOp::WriteZeroes),
            },
            serial: serial_bytes(&serial),
            write_cache: bdev.write_cache(),
            bdev: Arc::clone(b),
        });
        let spec = ControllerSpec {
            name: params.name.clone(),
            num_queues: params.num_queues,
            device,
            reactors,
        };
        let controller = Controller::start(spec, &socket, socket_opts).map_err(|e| {
            release(TargetError::System(
                format!("controller '{}'", params.name),
                std::io::Error::other(e.to_string()),
            ))
        })?;
        let controller = Arc::new(controller);
        // Told the bdev's size and limits now, in the same step as subscribing: a resize or a
        // limit set since the size was read above is not missed.
        let listener = bdev.subscribe_current(bdev_listener(
            &params.name,
            &bdev,
            Arc::downgrade(&controller),
        ));
        info!(
            "controller {}: serving {} ({} bytes, {}-byte blocks{}, serial '{serial}') on {}, up to {} queues on cpus {:?}",
            params.name,
            bdev.name(),
            b.size_bytes(),
            b.block_size(),
            if params.readonly { ", read-only" } else { "" },
            socket.display(),
            params.num_queues,
            queue_cores
        );
        // SPDK's defaults: off, with a 60000 IOPS threshold once a delay is set.
        let _ = controller.set_coalescing(0, DEFAULT_IOPS_THRESHOLD);
        Ok(Arc::new(ControllerEntry {
            params: params.clone(),
            cores,
            queue_cores,
            socket,
            bdev,
            controller,
            listener,
        }))
    }

    /// Deletes a controller: stops its queues (in-flight requests complete), closes its
    /// connections, removes its socket and releases its bdev. Returns its final statistics.
    pub fn delete_controller(&self, name: &str) -> Result<ControllerReport, TargetError> {
        let entry = {
            let mut ctrls = lock(&self.controllers);
            let entry = match ctrls.get(name) {
                Some(CtrlSlot::Ready(e)) => Arc::clone(e),
                Some(_) => {
                    return Err(TargetError::Busy(format!(
                        "controller '{name}' is being created or deleted"
                    )))
                }
                None => {
                    return Err(TargetError::NotFound {
                        what: "controller",
                        name: name.to_string(),
                    })
                }
            };
            ctrls.insert(name.to_string(), CtrlSlot::Deleting(Arc::clone(&entry)));
            entry
        };
        let report = entry.controller.delete(DELETE_TIMEOUT);
        entry.bdev.unsubscribe(entry.listener);
        {
            let _consistent = lock(&self.stats_lock);
            entry.bdev.release(name, Some(&report.total));
        }
        // What the guest wrote reaches the cluster before the call returns.
        self.flush_rbd_after_controller(name, &entry.bdev);
        lock(&self.controllers).remove(name);
        Ok(report)
    }

    /// Sets a controller's interrupt coalescing, applied to its running queues at once (SPDK's
    /// rules: an iops_threshold that leaves one request per 10 ms interval, a delay below one
    /// second).
    pub fn set_coalescing(&self, name: &str, c: Coalescing) -> Result<(), TargetError> {
        let entry = self.controller(name).ok_or_else(|| TargetError::NotFound {
            what: "controller",
            name: name.to_string(),
        })?;
        check_coalescing(c)?;
        entry
            .controller
            .set_coalescing(c.delay_base_us, c.iops_threshold)
            .map_err(TargetError::Invalid)
    }

    /// Handles of the reactors, in core-list order.
    pub fn reactor_handles(&self) -> &[ReactorHandle] {
        &self.reactors
    }

    /// Every reactor's accounting, thread id and core times, each asked of the reactor with
    /// a timeout (a reactor that does not answer in time is left out and logged).
    pub fn reactors(&self) -> Vec<ReactorInfo> {
        let asked: Vec<_> = self
            .reactors
            .iter()
            .map(|h| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let sent = h
                    .send(move |r| {
                        let _ = tx.send((r.stats(), r.poller_info()));
                    })
                    .is_ok();
                (h, sent.then_some(rx))
            })
            .collect();
        let now = proc_stat();
        let deadline = Instant::now() + REACTOR_TIMEOUT;
        let mut out = Vec::new();
        for (h, rx) in asked {
            let Some(rx) = rx else { continue };
            let Ok((stats, pollers)) = rx.recv_deadline(deadline) else {
                warn!(
                    "reactor {} did not answer a statistics request in time",
                    h.id()
                );
                continue;
            };
            let core = h.core().unwrap_or(0);
            let base = self.proc_stat_base.get(&core).copied().unwrap_or_default();
            let cur = now.get(&core).copied().unwrap_or(base);
            out.push(ReactorInfo {
                stats,
                pollers,
                core,
                numa_id: numa_node(core),
                usr: cur.0.saturating_sub(base.0),
                sys: cur.1.saturating_sub(base.1),
                irq: cur.2.saturating_sub(base.2),
            });
        }
        out
    }

    /// Deletes every controller, then stops the reactors; returns their final accounting and
    /// the controllers' final statistics.
    pub fn shutdown(&self) -> (Vec<ControllerReport>, Vec<ReactorStats>) {
        let names: Vec<String> = self
            .controllers()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let reports = names
            .iter()
            .filter_map(|n| self.delete_controller(n).ok())
            .collect();
        let reactors = lock(&self.pool)
            .take()
            .map(ReactorPool::shutdown)
            .unwrap_or_default();
        (reports, reactors)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if lock(&self.pool).is_some() {
            self.shutdown();
        }
    }
}

/// The listener a controller registers on its bdev: a resize goes to the controller's sessions
/// (config space, queues, and the config-change message to each frontend), new limits hand the
/// bdev's limiter to its queues (or take it away). Holds the controller weakly: the bdev entry
/// must not keep a deleted controller alive.
fn bdev_listener(
    name: &str,
    bdev: &Arc<BdevEntry>,
    controller: Weak<Controller>,
) -> impl Fn(&BdevEvent) + Send + Sync + 'static {
    let name = name.to_string();
    let block_size = u64::from(bdev.bdev().block_size());
    let entry = Arc::downgrade(bdev);
    move |ev| {
        let Some(c) = controller.upgrade() else {
            return;
        };
        match ev {
            BdevEvent::Resized { num_blocks } => {
                let capacity = num_blocks.saturating_mul(block_size);
                if c.capacity() == capacity {
                    return;
                }
                let started = Instant::now();
                match c.resize(capacity) {
                    Ok(()) => info!(
                        "{name}: capacity {capacity} bytes; every session updated in {:.1} ms",
                        started.elapsed().as_secs_f64() * 1e3
                    ),
                    Err(e) => {
                        warn!("{name}: capacity {capacity} bytes; a session could not be told: {e}")
                    }
                }
            }
            BdevEvent::QosChanged(_) => {
                if let Some(e) = entry.upgrade() {
                    c.set_qos(e.qos_limiter());
                }
            }
            BdevEvent::Removed => {}
        }
    }
}

fn log_resize(entry: &BdevEntry, r: Resized, what: &str) {
    let bs = u64::from(entry.bdev().block_size());
    if r.changed() {
        info!(
            "bdev {}: {what} from {} to {} bytes",
            entry.name(),
            r.old_blocks * bs,
            r.num_blocks * bs
        );
    } else {
        info!(
            "bdev {}: {what}; size unchanged ({} bytes)",
            entry.name(),
            r.num_blocks * bs
        );
    }
}

/// The limits the target adds to the protocol's own check: a delay below one second (SPDK: its
/// tick count must fit 32 bits) and a threshold above 0.
fn check_coalescing(c: Coalescing) -> Result<(), TargetError> {
    if c.delay_base_us >= 1_000_000 {
        return Err(TargetError::Invalid(format!(
            "delay_base_us {} is too big (below 1000000)",
            c.delay_base_us
        )));
    }
    if c.iops_threshold == 0 {
        return Err(TargetError::Invalid("iops_threshold must be > 0".into()));
    }
    Ok(())
}

/// Per-core (user, system, irq + softirq) clock ticks from /proc/stat.
fn proc_stat() -> HashMap<usize, (u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let core: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.take(7).filter_map(|x| x.parse().ok()).collect();
            (v.len() == 7).then(|| (core, (v[0], v[2], v[5] + v[6])))
        })
        .collect()
}

/// The NUMA node of `core`, or -1.
fn numa_node(core: usize) -> i32 {
    std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{core}"))
        .ok()
        .and_then(|dir| {
            dir.filter_map(Result::ok).find_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("node"))
                    .and_then(|n| n.parse().ok())
            })
        })
        .unwrap_or(-1)
}
