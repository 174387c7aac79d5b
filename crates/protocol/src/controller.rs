//! A vhost-user-blk controller: a listening socket and the control-plane thread that serves one
//! frontend at a time, accepting the next one after a disconnect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::{info, warn};
use vhost::vhost_user::Listener;

use crate::backend::BlkBackend;
use crate::device::{lock, Coalescing, ControllerShared, ControllerSpec};
use crate::session;
use crate::stats::QueueStats;

/// Why a controller could not start.
#[derive(Debug)]
pub enum ControllerError {
    /// The socket could not be created.
    Listen(PathBuf, String),
    /// The control thread could not be spawned.
    Spawn(std::io::Error),
}

impl fmt::Display for ControllerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControllerError::Listen(p, e) => write!(f, "cannot listen on {}: {e}", p.display()),
            ControllerError::Spawn(e) => write!(f, "cannot start controller thread: {e}"),
        }
    }
}

impl std::error::Error for ControllerError {}

type Connection = Arc<Mutex<BlkBackend>>;

/// The backend of the connected frontend, if any, and per-queue statistics of queues that have
/// stopped (across connections).
struct Current {
    backend: Mutex<Option<Connection>>,
    shared: Arc<ControllerShared>,
}

/// Statistics of one virtqueue of a controller.
#[derive(Debug, Clone)]
pub struct QueueReport {
    /// Virtqueue index.
    pub index: u16,
    /// Index (in the controller's reactor list order) of the reactor that polls it.
    pub reactor: usize,
    /// The core that reactor is pinned to.
    pub core: Option<usize>,
    /// Counters and latency since the controller started, across connections.
    pub stats: QueueStats,
}

/// Statistics of a controller: every queue that has carried I/O, and their sum.
#[derive(Debug, Clone)]
pub struct ControllerReport {
    /// The controller's name.
    pub name: String,
    /// Whether a frontend is connected now.
    pub connected: bool,
    /// Queues with at least one completed request.
    pub queues: Vec<QueueReport>,
    /// Sum over all queues.
    pub total: QueueStats,
}

/// A running controller.
pub struct Controller {
    spec: Arc<ControllerSpec>,
    socket: PathBuf,
    current: Arc<Current>,
    _thread: JoinHandle<()>,
}

impl Controller {
    /// Listens on `socket` (replacing a stale socket file) and serves frontends on a thread of
    /// its own, so one controller's messages never stall another's or the reactors.
    pub fn start(spec: ControllerSpec, socket: &Path) -> Result<Controller, ControllerError> {
        let listener = Listener::new(socket, true)
            .map_err(|e| ControllerError::Listen(socket.to_path_buf(), e.to_string()))?;
        let spec = Arc::new(spec);
        let shared = Arc::new(ControllerShared {
            finished: Mutex::new(vec![QueueStats::default(); usize::from(spec.num_queues)]),
            stopping: AtomicBool::new(false),
            coalescing: Mutex::new(Coalescing::default()),
            qos: Mutex::new(None),
            capacity: AtomicU64::new(spec.device.limits.capacity),
        });
        let current = Arc::new(Current {
            backend: Mutex::new(None),
            shared,
        });
        let thread = {
            let (spec, current) = (Arc::clone(&spec), Arc::clone(&current));
            std::thread::Builder::new()
                .name(format!("ctrl-{}", spec.name))
                .spawn(move || accept_loop(listener, spec, current))
                .map_err(ControllerError::Spawn)?
        };
        Ok(Controller {
            spec,
            socket: socket.to_path_buf(),
            current,
            _thread: thread,
        })
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether a frontend is connected now.
    pub fn connected(&self) -> bool {
        lock(&self.current.backend).is_some()
    }

    /// Statistics of every queue since the controller started: stopped queues from memory,
    /// running ones asked of their reactors.
    pub fn report(&self) -> ControllerReport {
        let mut per_queue = lock(&self.current.shared.finished).clone();
        let backend = lock(&self.current.backend).clone();
        let connected = backend.is_some();
        if let Some(b) = backend {
            lock(&b).add_running_stats(&mut per_queue);
        }
        let mut total = QueueStats::default();
        let reactors = &self.spec.reactors;
        let queues = per_queue
            .into_iter()
            .enumerate()
            .filter(|(_, s)| s.total_ops() > 0)
            .map(|(i, stats)| {
                total.merge(&stats);
                let reactor = i % reactors.len();
                QueueReport {
                    index: i as u16,
                    reactor,
                    core: reactors[reactor].core(),
                    stats,
                }
            })
            .collect();
        ControllerReport {
            name: self.spec.name.clone(),
            connected,
            queues,
            total,
        }
    }

    /// Guest interrupt coalescing for this controller's queues, now and for queues that start
    /// later (SPDK's `vhost_controller_set_coalescing`; `delay_base_us` 0 turns it off).
    pub fn set_coalescing(&self, delay_base_us: u32, iops_threshold: u32) -> Result<(), String> {
        let c = Coalescing::checked(delay_base_us, iops_threshold)?;
        *lock(&self.current.shared.coalescing) = c;
        let backend = lock(&self.current.backend).clone();
        if let Some(b) = backend {
            lock(&b).set_coalescing(c);
        }
        Ok(())
    }

    /// Enforces the bdev's I/O limits (`None`: none) on this controller's queues, now and for
    /// queues that start later. Every controller of a bdev gets the same limiter, so the limits
    /// hold for the bdev as a whole.
    pub fn set_qos(&self, limiter: Option<Arc<spinblk_bdev::QosLimiter>>) {
        *lock(&self.current.shared.qos) = limiter.clone();
        let backend = lock(&self.current.backend).clone();
        if let Some(b) = backend {
            lock(&b).set_qos(limiter);
        }
    }

    /// Online resize: the controller serves `capacity` bytes from now on. Running queues accept
    /// requests up to the new end once they have acknowledged it, and then the frontend is told
    /// (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG), so the guest re-reads the config space. Whether
    /// a shrink is allowed is the caller's decision.
    pub fn resize(&self, capacity: u64) -> Result<(), String> {
        self.current
            .shared
            .capacity
            .store(capacity, Ordering::SeqCst);
        let backend = lock(&self.current.backend).clone();
        match backend {
            Some(b) => lock(&b).resize(capacity).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// The capacity served now, in bytes.
    pub fn capacity(&self) -> u64 {
        self.current.shared.capacity.load(Ordering::SeqCst)
    }

    /// The current interrupt coalescing settings.
    pub fn coalescing(&self) -> Coalescing {
        *lock(&self.current.shared.coalescing)
    }

    /// Stops taking new requests and waits for in-flight ones to complete. The frontend stays
    /// connected but its queues no longer run; new connections are refused.
    pub fn shutdown(&self) {
        self.current.shared.stopping.store(true, Ordering::SeqCst);
        // A connection that is ending still holds its backend here until its queues stopped,
        // so this waits for them too.
        let backend = lock(&self.current.backend).clone();
        if let Some(b) = backend {
            lock(&b).stop_all();
        }
        // Unblock accept() so the thread sees `stopping`.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn accept_loop(listener: Listener, spec: Arc<ControllerSpec>, current: Arc<Current>) {
    let stopping = &current.shared.stopping;
    info!("{}: listening", spec.name);
    while !stopping.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                warn!("{}: accept failed: {e}", spec.name);
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        info!("{}: frontend connected", spec.name);
        let backend = BlkBackend::new(Arc::clone(&spec), Arc::clone(&current.shared));
        let backend: Connection = Arc::new(Mutex::new(backend));
        *lock(&current.backend) = Some(Arc::clone(&backend));
        let end = session::serve(&spec.name, stream, &backend);
        // Stop the queues before forgetting the backend, so a concurrent shutdown waits for it.
        lock(&backend).stop_all();
        *lock(&current.backend) = None;
        info!("{}: frontend disconnected ({})", spec.name, end);
    }
}
