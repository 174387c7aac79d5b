//! In-process entry points for the fuzz targets in `fuzz/` (not a stable API; hidden from the
//! docs). The vhost-user message loop and the backend are crate-private, so a fuzz target
//! reaches them through [`Session`]: one controller's spec and shared state, and a way to serve
//! one frontend connection on a stream the target made (one end of a socketpair), exactly as
//! the controller's accept loop does.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crate::backend::BlkBackend;
use crate::device::{lock, ControllerShared, ControllerSpec};
use crate::session::{self, SessionEnd};
use crate::stats::QueueStats;

/// A controller without a listening socket: connections are handed in by the caller.
pub struct Session {
    spec: Arc<ControllerSpec>,
    shared: Arc<ControllerShared>,
}

impl Session {
    /// A controller for `spec` (its reactors must be running).
    pub fn new(spec: ControllerSpec) -> Session {
        let shared = Arc::new(ControllerShared::new(
            usize::from(spec.num_queues),
            spec.device.limits.capacity,
        ));
        Session {
            spec: Arc::new(spec),
            shared,
        }
    }

    /// Requests completed by this controller's queues that have stopped, over all connections
    /// served so far (a harness's evidence that its inputs reach the data path).
    pub fn completed_requests(&self) -> u64 {
        lock(&self.shared.finished)
            .iter()
            .map(QueueStats::total_ops)
            .sum()
    }

    /// Serves one frontend on `stream` until it disconnects or is closed by the target, then
    /// stops its queues and drops its backend, as the controller's accept loop does. Returns
    /// whether the target closed the connection on purpose (`Some(reason)`) or the frontend
    /// went away (`None`).
    pub fn serve(&self, stream: UnixStream) -> Option<&'static str> {
        let backend = Mutex::new(BlkBackend::new(
            Arc::clone(&self.spec),
            Arc::clone(&self.shared),
        ));
        let end = session::serve(&self.spec.name, stream, &backend);
        lock(&backend).stop_all();
        drop(backend);
        match end {
            SessionEnd::Disconnected => None,
            SessionEnd::Closed(why) => Some(why),
        }
    }
}
