//! The virtio side of spinblk: a vhost-user-blk backend (on `vhost`'s
//! `VhostUserBackendReqHandlerMut`) whose virtqueues are polled by spinblk reactors, and the
//! virtio-blk request parsing that checks every guest-supplied value before a bdev sees it.
#![deny(missing_docs)]

mod backend;
mod config;
mod controller;
mod device;
#[doc(hidden)]
pub mod fuzzing;
mod inflight;
mod log;
mod memory;
mod queue;
mod request;
mod ring;
mod session;
mod sigbus;
mod stats;

pub use backend::BlkBackend;
pub use config::{config_space, device_features, CONFIG_LEN};
pub use controller::{
    bind_unix_socket, parse_socket_mode, resolve_group, BoundSocket, Controller, ControllerError,
    ControllerReport, QueueReport, SessionInfo, SocketOptions, DEFAULT_SOCKET_MODE, MAX_SESSIONS,
};
pub use device::{Coalescing, ControllerSpec, DeviceInfo};
pub use inflight::{queue_region_size, InflightError, InflightQueue, InflightRegion, Recovery};
pub use log::{DirtyLog, LogError, LOG_PAGE};
pub use memory::GuestMemory;
pub use request::{
    BlkRequest, DeviceLimits, ParseError, Refused, RequestKind, StatusByte, ID_BYTES, MAX_IOVECS,
    MAX_TRANSFER, SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
pub use ring::{Chain, ChainError, Desc, RingAddrs, RingError, SplitRing, MAX_QUEUE_SIZE};
pub use stats::{OpCounters, QueueStats};

/// Builds the NUL-padded 20-byte GET_ID answer from a serial string (longer ones are cut).
pub fn serial_bytes(serial: &str) -> [u8; ID_BYTES] {
    let mut out = [0u8; ID_BYTES];
    let n = serial.len().min(ID_BYTES);
    out[..n].copy_from_slice(&serial.as_bytes()[..n]);
    out
}
