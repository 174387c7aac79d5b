//! Block devices ("bdevs") for spinblk, in SPDK's split: a [`Bdev`] is the shared, read-mostly
//! control-plane object; an [`IoChannel`] is its per-reactor data plane (non-blocking submit,
//! polled completions). This crate knows nothing of virtio: requests arrive as [`BdevIo`]s that
//! carry host iovecs and a caller-chosen tag.
#![deny(missing_docs)]

mod bounce;
mod io;
mod malloc;
mod memory;
mod null;
mod nvme;
mod qos;
mod ring;
mod sys;
#[cfg(test)]
mod testing;
mod uring;

pub use io::{Bdev, BdevError, BdevIo, Completion, IoChannel, IoOp, IoStatus, IoVec};
pub use malloc::{MallocBdev, MallocOptions};
pub use null::NullBdev;
pub use nvme::{NvmeBdev, NvmeError, NvmeOptions};
pub use qos::{QosClient, QosKind, QosLimiter, QosLimits, BURST as QOS_BURST, SLICE as QOS_SLICE};
pub use uring::{UringBdev, UringOptions};
