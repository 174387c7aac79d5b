//! spinblk-testkit: everything spinblk's integration tests share.
//!
//! * [`Target`] starts the real `spinblk` binary (found by [`spinblk_bin`]) with any arguments
//!   in a private directory, waits for the paths it should create, and kills it on drop
//!   (printing its output if the test failed).
//! * [`Client`] and [`Queue`]: a libblkio `virtio-blk-vhost-user` client issuing synchronous
//!   requests, the well-behaved frontend every test compares against.
//! * [`pattern`], [`pattern_at`], [`Rng`], [`assert_bytes_eq`], [`assert_zeroes`]: data.
//! * [`TempDir`], [`wait_for_path`], [`ProcessFootprint`]: small test utilities.
//! * [`vhost`]: a raw, scriptable vhost-user front-end (the hostile-frontend suite's).
//!
//! Setting `SPINBLK_TEST_TARGET=qemu-storage-daemon` makes [`Target::start`] run
//! qemu-storage-daemon instead, as a reference to tell test bugs from target bugs.
#![deny(missing_docs)]

mod client;
mod data;
mod launch;
mod process;
mod tempdir;
pub mod vhost;

pub use client::{
    connect_only, Client, ClientConfig, ConnectError, Limits, Queue, IO_TIMEOUT, SLOT_LEN,
};
pub use data::{
    assert_bytes_eq, assert_zeroes, fill_pattern_at, first_difference, pattern, pattern_at, Rng,
    POISON,
};
pub use launch::{
    reference_target, size_arg, spinblk_bin, wait_for_path, wait_for_socket, Backend, Launch,
    Target, TargetConfig, STARTUP_TIMEOUT,
};
pub use process::{malloc_arena_lines, maps_diff, ProcessFootprint};
pub use tempdir::TempDir;

/// libblkio itself, for request flags ([`blkio::ReqFlags`]) and errnos ([`blkio::Errno`]).
pub use blkio;

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
