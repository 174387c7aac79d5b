//! What describes a controller independently of any one connection: the device it serves
//! ([`DeviceInfo`]), its fixed specification ([`ControllerSpec`]) and the state its connections
//! share with it. Both the controller (accept loop) and each connection's backend use these, so
//! they live here rather than in either.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

use spinblk_bdev::{Bdev, QosLimiter};
use spinblk_reactor::ReactorHandle;

use crate::request::{DeviceLimits, ID_BYTES};
use crate::stats::QueueStats;

/// What every queue of a controller shares: the bdev and the checks requests must pass.
pub struct DeviceInfo {
    /// The block device behind the controller.
    pub bdev: Arc<dyn Bdev>,
    /// Capacity, block size, read-only flag and supported range operations.
    pub limits: DeviceLimits,
    /// The GET_ID answer, NUL-padded.
    pub serial: [u8; ID_BYTES],
    /// Whether the device starts in write-back mode (volatile cache, the guest flushes); in
    /// write-through mode every write is durable when it completes.
    pub write_cache: bool,
}

/// A controller's fixed description, shared by all its connections.
pub struct ControllerSpec {
    /// The controller's name (for logs and stats).
    pub name: String,
    /// Queues offered (VHOST_USER_GET_QUEUE_NUM and `num_queues` in the config space).
    pub num_queues: u16,
    /// The device behind it.
    pub device: Arc<DeviceInfo>,
    /// Reactors its queues are spread over, round-robin by queue index.
    pub reactors: Vec<ReactorHandle>,
}

/// State a controller's connections share with it (control plane only; reactors never touch
/// it).
pub(crate) struct ControllerShared {
    /// Per-queue statistics of queues that have stopped, across connections.
    pub finished: Mutex<Vec<QueueStats>>,
    /// Set by shutdown: no queue may start any more.
    pub stopping: AtomicBool,
    /// Guest interrupt coalescing (vhost_controller_set_coalescing), for queues that start.
    pub coalescing: Mutex<Coalescing>,
    /// The bdev's I/O limiter, for queues that start (`None`: no limits).
    pub qos: Mutex<Option<Arc<QosLimiter>>>,
    /// The capacity the controller serves now, in bytes (online resize changes it; starts at
    /// `DeviceInfo::limits.capacity`).
    pub capacity: AtomicU64,
}

impl ControllerShared {
    /// The shared state of a controller with `num_queues` queues serving `capacity` bytes.
    pub fn new(num_queues: usize, capacity: u64) -> ControllerShared {
        ControllerShared {
            finished: Mutex::new(vec![QueueStats::default(); num_queues]),
            stopping: AtomicBool::new(false),
            coalescing: Mutex::new(Coalescing::default()),
            qos: Mutex::new(None),
            capacity: AtomicU64::new(capacity),
        }
    }
}

/// Guest interrupt coalescing, with SPDK's `vhost_controller_set_coalescing` meaning: every
/// 10 ms each queue compares the requests it completed with `iops_threshold`'s share of that
/// interval; above it, interrupts are held back for `delay_base_us * (count - threshold) /
/// threshold` after each one (so the delay grows with the load); at or below it, interrupts go
/// out at once. `delay_base_us` 0 turns coalescing off (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coalescing {
    /// Base delay in microseconds; 0 = off.
    pub delay_base_us: u32,
    /// IOPS above which interrupts are delayed.
    pub iops_threshold: u32,
}

/// How often a queue re-evaluates its coalescing delay.
pub const COALESCING_INTERVAL_MS: u32 = 10;

impl Coalescing {
    /// Checks the values as SPDK does: the threshold must leave at least one request per
    /// 10 ms interval when coalescing is on.
    pub fn checked(delay_base_us: u32, iops_threshold: u32) -> Result<Self, String> {
        if delay_base_us > 0 && iops_threshold / (1000 / COALESCING_INTERVAL_MS) == 0 {
            return Err(format!(
                "IOPS rate of {iops_threshold} is too low; the minimum is {}",
                1000 / COALESCING_INTERVAL_MS
            ));
        }
        Ok(Coalescing {
            delay_base_us,
            iops_threshold,
        })
    }
}

/// Locks a control-plane mutex. A panic while holding one leaves plain data behind; keep
/// serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a control-plane lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
