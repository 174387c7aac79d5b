//! spinblk-rbd: Ceph RBD images as spinblk bdevs, through librbd's asynchronous C API.
//!
//! librados and librbd are loaded with `dlopen` on first use, so a binary built with this crate
//! runs without Ceph's libraries installed; RBD then fails with a one-line [`RbdError::Library`].
//!
//! - [`RbdCluster`]: one connection (rados handle) per cluster, shared by every image opened
//!   through it and reference counted, as SPDK's `bdev_rbd_register_cluster` does. Connecting
//!   blocks (up to the mount timeout): do it on a control thread.
//! - [`RbdBdev`]: an open image as a [`spinblk_bdev::Bdev`]: capacity from the image, 512- or
//!   4096-byte blocks, read/write/flush/discard and write-zeroes (where librbd has it).
//! - [`RbdChannel`]: the per-reactor data plane. Requests go to `rbd_aio_readv`/`writev`/
//!   `flush`/`discard`/`write_zeroes` straight from the request's iovecs (no copy); librbd's
//!   completion callbacks push onto a bounded lock-free queue and write an eventfd
//!   ([`spinblk_bdev::IoChannel::completion_fd`]) that the reactor drains: no lock on its path.
//!
//! Requests stuck because the cluster went away fail with `IoStatus::IoError` after the cluster's
//! op timeout ([`ClusterConfig::op_timeout`], librados' `rados_osd_op_timeout`, 30 s unless the
//! configuration says otherwise).
#![deny(missing_docs)]

mod channel;
mod cluster;
mod error;
mod ffi;
mod image;

pub use channel::RbdChannel;
pub use cluster::{
    librbd_version, probe_libraries, ClusterConfig, RbdCluster, WeakRbdCluster,
    DEFAULT_COMPLETION_THREADS, DEFAULT_MOUNT_TIMEOUT, DEFAULT_OP_TIMEOUT,
};
pub use error::RbdError;
pub use image::{RbdBdev, RbdImageConfig};
