//! spinblk's runtime object model, in one place: the bdev registry ([`BdevRegistry`]: create,
//! look up, delete, claims by controllers, per-bdev statistics, QoS settings and an event hook),
//! the controllers created and deleted at run time on subsets of the app's cores, the reactor
//! pool, and assembly from spinblk's own configuration ([`config`]). The command line, the
//! `--config` file, SPDK `--json` files and the JSON-RPC server all build the same objects
//! through a [`Target`].
#![deny(missing_docs)]

mod bdev;
pub mod config;
mod cpumask;
mod error;
mod target;
mod uuid;

pub use bdev::{
    BdevEntry, BdevEvent, BdevKind, BdevParams, BdevRegistry, Claim, FileFlavor, ListenerId,
    QosLimits,
};
pub use cpumask::{BadCpuMask, CoreMask, MAX_CORES};
pub use error::TargetError;
pub use spinblk_protocol::Coalescing;
pub use spinblk_reactor::PollMode;
pub use target::{
    ControllerEntry, ControllerParams, ReactorInfo, Target, TargetOptions, DEFAULT_IOPS_THRESHOLD,
    DEFAULT_NUM_QUEUES, DELETE_TIMEOUT, REACTOR_TIMEOUT,
};
pub use uuid::{BadUuid, Uuid};
