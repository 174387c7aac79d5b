//! The data path of one virtqueue, one step per file:
//!
//! | step | file | what |
//! |---|---|---|
//! | loop | `poller.rs` | [`VirtqPoller`]: owns the ring, the bdev channel, the slots; one pass = the steps below |
//! | pop | `pop.rs` | takes new heads from the avail ring (and heads a dead backend left in flight) |
//! | parse | `../request.rs` | `BlkRequest::parse`: every guest value checked |
//! | submit | `submit.rs` | a slot per head, the request to the bdev channel (or the backlog when full); GET_ID |
//! | complete | `complete.rs` | the channel's completions |
//! | finish | `finish.rs` | the one place that writes the status byte, the used element, statistics, inflight and dirty-log records for every outcome |
//! | publish | `finish.rs` + `notify.rs` | once per pass: the used index, the inflight region, the guest's interrupt |

mod complete;
mod finish;
mod notify;
mod poller;
mod pop;
mod submit;

use std::fs::File;
use std::sync::Arc;

use crossbeam_channel::Sender;
use spinblk_bdev::{IoChannel, QosLimiter};

use crate::device::{Coalescing, DeviceInfo};
use crate::inflight::{InflightError, InflightQueue};
use crate::log::DirtyLog;
use crate::memory::GuestMemory;
use crate::ring::{RingAddrs, RingError};
use crate::stats::QueueStats;

pub(crate) use notify::signal_call;
pub(crate) use poller::VirtqPoller;

/// Everything needed to start polling a virtqueue. Built on the control thread, where the bdev
/// channel is opened too (that may be slow); the finished poller then moves to its reactor.
pub(crate) struct QueueStart {
    /// `<controller>:q<index>`, for poller listings.
    pub name: String,
    pub size: u16,
    pub addrs: RingAddrs,
    pub next_avail: u16,
    pub event_idx: bool,
    pub enabled: bool,
    pub write_cache: bool,
    pub call: Option<File>,
    pub mem: Arc<GuestMemory>,
    pub device: Arc<DeviceInfo>,
    pub channel: Box<dyn IoChannel>,
    /// The kick eventfd (an adaptive reactor sleeps on it), if the frontend gave one.
    pub kick: Option<File>,
    /// This queue's part of the inflight region, when the frontend set one.
    pub inflight: Option<InflightQueue>,
    /// Dirty logging, when the frontend is migrating the VM.
    pub log: Option<QueueLog>,
    /// Guest interrupt coalescing settings.
    pub coalescing: Coalescing,
    /// The bdev's I/O limits, when it has any.
    pub qos: Option<Arc<QosLimiter>>,
    /// The capacity served now (bytes; may differ from the device's after a resize).
    pub capacity: u64,
}

/// Dirty logging for one queue: the shared bitmap and the guest address the frontend wants
/// used-ring writes logged at (`log_guest_addr` of SET_VRING_ADDR).
#[derive(Clone)]
pub(crate) struct QueueLog {
    pub log: Arc<DirtyLog>,
    pub used_gpa: u64,
}

/// Messages from the control plane to a running queue (delivered as reactor messages: the
/// closure finds the poller by id and calls [`VirtqPoller::handle`]).
pub(crate) enum QueueCtrl {
    /// A new memory table; acknowledged once the queue uses it (`Err` when the ring no longer
    /// fits it, or too many older tables are still held by requests in flight).
    Memory(Arc<GuestMemory>, Sender<Result<(), RingError>>),
    /// A new call eventfd (or none).
    Call(Option<File>),
    /// SET_VRING_ENABLE: whether to take new requests.
    Enable(bool),
    /// The guest switched the write cache (config space `writeback`).
    WriteCache(bool),
    /// Stop taking requests; reply once in-flight ones completed, then the poller ends.
    Stop(Sender<QueueStopped>),
    /// Copy of the statistics.
    Stats(Sender<QueueStats>),
    /// New interrupt coalescing settings.
    Coalescing(Coalescing),
    /// The bdev's limiter (`None`: no limits).
    Qos(Option<Arc<QosLimiter>>),
    /// Online resize: requests are checked against this capacity (bytes) from now on;
    /// acknowledged.
    Capacity(u64, Sender<()>),
    /// Start, stop or move dirty logging; acknowledged once the queue logs to the new place.
    Log(Option<QueueLog>, Sender<()>),
}

/// A stopped queue's final state (for GET_VRING_BASE).
#[derive(Debug)]
pub(crate) struct QueueStopped {
    pub next_avail: u16,
    pub stats: QueueStats,
}

/// Why a queue could not start.
#[derive(Debug)]
pub(crate) enum QueueStartError {
    /// The ring addresses or size do not fit guest memory.
    Ring(RingError),
    /// The inflight region does not fit this ring.
    Inflight(InflightError),
}

impl std::fmt::Display for QueueStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueStartError::Ring(e) => write!(f, "{e}"),
            QueueStartError::Inflight(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(test)]
mod tests;
