//! spinblk's runtime object model, in one place: the bdev registry ([`BdevRegistry`]: create,
//! look up, delete, claims by controllers, per-bdev statistics, QoS settings and an event hook),
//! the controllers created and deleted at run time on subsets of the app's cores, the reactor
//! pool, and assembly from spinblk's own configuration ([`config`]). The command line, the
//! `--config` file, SPDK `--json` files and the JSON-RPC server all build the same objects
//! through a [`Target`].
//!
//! ```text
//! Target
//!  ├─ ReactorPool          one pinned reactor per app core (poll mode switchable at run time)
//!  ├─ BdevRegistry         name -> BdevEntry { uuid, kind + creation parameters, Arc<dyn Bdev>,
//!  │                         claims, write-cache/shared options, QoS limits, retired statistics,
//!  │                         event listeners }
//!  └─ controllers          name -> ControllerEntry { parameters, cores, socket, claimed bdev,
//!                            protocol Controller (socket, sessions, queues on reactors) }
//! ```
//!
//! Rules the model enforces, whoever asks: names and uuids are unique; a controller claims its
//! bdev for its whole life and a claimed bdev cannot be deleted; a second controller on a bdev
//! needs every user read-only or the bdev marked shared; a controller's cores are a subset of
//! the app's. Slow work (opening a file, stopping a controller's queues) runs outside the
//! registry locks, with the name reserved meanwhile, so lookups and other requests go on.
//!
//! Statistics: a bdev's I/O counts are asked of the reactors when requested (every controller
//! that serves it, each queue once) plus the final counts of controllers that served it and were
//! deleted (kept in the entry), so they never go backwards.
//!
//! Events: [`BdevEntry::subscribe`] registers a listener that [`BdevEntry::notify`] calls with a
//! [`BdevEvent`] outside the entry's lock. Each controller subscribes to its bdev at creation
//! ([`BdevEntry::subscribe_current`]: in the same step it is told the bdev's size and limits
//! now, so it misses no change made since it read them) and unsubscribes at deletion. Changes
//! and their events are serialized per bdev, so listeners see them in order.
//! * Resize ([`Target::resize_bdev`]: `bdev_null_resize`, `spinblk_bdev_resize`; and
//!   [`Target::rescan_bdev`]: `bdev_aio_rescan`, `bdev_uring_rescan`): the entry asks the bdev
//!   to change ([`BdevEntry::resize`], [`BdevEntry::rescan`]), refuses a shrink while a
//!   controller claims the bdev unless forced, then notifies `Resized { num_blocks }`; each
//!   controller's listener calls `Controller::resize`, which updates every session (config
//!   space capacity, the queues' limits, VHOST_USER_BACKEND_CONFIG_CHANGE_MSG to the frontend)
//!   and the capacity later sessions start with. The configuration saved afterwards carries the
//!   new size (malloc and null bdevs are saved with their size now).
//! * QoS ([`Target::set_bdev_qos`]: `bdev_set_qos_limit`, the `--bdev`/`--config` keys): the
//!   limits, with SPDK's rounding ([`QosUpdate`]), are stored (reported by bdev_get_bdevs,
//!   written by save_config) and applied to the bdev's one `QosLimiter`
//!   ([`BdevEntry::qos_limiter`]), and `QosChanged` is notified; each controller hands that
//!   limiter to its queues (`Controller::set_qos`), or `None` once no limit is left, so a bdev
//!   without limits costs its queues one branch per request. The limiter splits the budget
//!   over every queue and reactor serving the bdev.
#![deny(missing_docs)]

mod bdev;
pub mod config;
mod cpumask;
mod error;
mod qos;
mod rbd;
mod target;
mod uuid;

pub use bdev::{
    BdevEntry, BdevEvent, BdevKind, BdevParams, BdevRegistry, Claim, FileFlavor, ListenerId,
    QosLimits, Resized,
};
pub use cpumask::{BadCpuMask, CoreMask, MAX_CORES};
pub use error::TargetError;
pub use qos::{QosUpdate, QOS_MAX_MBYTES_PER_SEC, QOS_MIN_IOS_PER_SEC};
pub use rbd::{RbdClusterEntry, RbdClusterParams, RbdClusterRef, RbdSpec};
pub use spinblk_protocol::Coalescing;
pub use spinblk_reactor::{PollMode, DEFAULT_BATCH_WAIT, MAX_BATCH_WAIT};
pub use target::{
    ControllerEntry, ControllerParams, ReactorInfo, Target, TargetOptions, DEFAULT_IOPS_THRESHOLD,
    DEFAULT_NUM_QUEUES, DELETE_TIMEOUT, REACTOR_TIMEOUT,
};
pub use uuid::{BadUuid, Uuid};
