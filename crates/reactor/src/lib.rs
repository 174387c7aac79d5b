//! Pinned busy-poll reactors for spinblk, in SPDK's shape: one thread per core runs its
//! [`Poller`]s in a loop, accounts each pass as busy or idle, and takes work from other threads
//! only as messages (closures run on the reactor between passes). Knows nothing of virtio or
//! block devices.
#![deny(missing_docs)]

mod clock;
mod policy;
mod pool;
mod reactor;

pub use clock::Tick;
pub use policy::{IdleConfig, IdlePolicy, WindowChange};
pub use pool::{parse_cpu_list, CpuListError, ReactorPool, ReactorPoolError};
pub use reactor::{
    PollStatus, Poller, Reactor, ReactorGone, ReactorHandle, ReactorMsg, ReactorStats,
};
