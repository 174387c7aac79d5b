//! What describes a controller independently of any one connection: the device it serves
//! ([`DeviceInfo`]), its fixed specification ([`ControllerSpec`]) and the state its connections
//! share with it. Both the controller (accept loop) and each connection's backend use these, so
//! they live here rather than in either.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use spinblk_bdev::Bdev;
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
}

/// Locks a control-plane mutex. A panic while holding one leaves plain data behind; keep
/// serving.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a control-plane lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
