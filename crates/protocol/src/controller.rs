//! A vhost-user-blk controller: a listening socket and the control-plane thread that serves one
//! frontend at a time, accepting the next one after a disconnect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use log::{info, warn};
use vhost::vhost_user::{BackendReqHandler, Error as VhostError, Listener};

use crate::backend::{BlkBackend, ControllerSpec};
use crate::stats::QueueStats;

/// Consecutive non-fatal message errors after which a connection is dropped anyway.
const MAX_CONSECUTIVE_ERRORS: u32 = 64;

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

/// The backend of the connected frontend, if any.
#[derive(Default)]
struct Current {
    backend: Mutex<Option<Connection>>,
    /// Statistics of connections that have ended.
    finished: Mutex<QueueStats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a control-plane lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running controller.
pub struct Controller {
    spec: Arc<ControllerSpec>,
    socket: PathBuf,
    current: Arc<Current>,
    stopping: Arc<AtomicBool>,
    _thread: JoinHandle<()>,
}

impl Controller {
    /// Listens on `socket` (replacing a stale socket file) and serves frontends on a thread of
    /// its own, so one controller's messages never stall another's or the reactors.
    pub fn start(spec: ControllerSpec, socket: &Path) -> Result<Controller, ControllerError> {
        let listener = Listener::new(socket, true)
            .map_err(|e| ControllerError::Listen(socket.to_path_buf(), e.to_string()))?;
        let spec = Arc::new(spec);
        let current = Arc::new(Current::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (spec, current, stopping) = (
                Arc::clone(&spec),
                Arc::clone(&current),
                Arc::clone(&stopping),
            );
            std::thread::Builder::new()
                .name(format!("ctrl-{}", spec.name))
                .spawn(move || accept_loop(listener, spec, current, stopping))
                .map_err(ControllerError::Spawn)?
        };
        Ok(Controller {
            spec,
            socket: socket.to_path_buf(),
            current,
            stopping,
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

    /// Statistics: totals of ended connections and stopped queues, plus each running queue.
    pub fn stats(&self) -> (QueueStats, Vec<QueueStats>) {
        let mut total = lock(&self.current.finished).clone();
        let backend = lock(&self.current.backend).clone();
        let mut per_queue = Vec::new();
        if let Some(b) = backend {
            let (stopped, running) = lock(&b).stats();
            total.merge(&stopped);
            per_queue = running;
        }
        (total, per_queue)
    }

    /// Stops taking new requests and waits for in-flight ones to complete. The frontend stays
    /// connected but its queues no longer run; new connections are refused.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let backend = lock(&self.current.backend).clone();
        if let Some(b) = backend {
            lock(&b).stop_all();
        }
        // Unblock accept() so the thread sees `stopping`.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn accept_loop(
    listener: Listener,
    spec: Arc<ControllerSpec>,
    current: Arc<Current>,
    stopping: Arc<AtomicBool>,
) {
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
        let backend: Connection = Arc::new(Mutex::new(BlkBackend::new(Arc::clone(&spec))));
        *lock(&current.backend) = Some(Arc::clone(&backend));
        serve(
            &spec.name,
            BackendReqHandler::from_stream(stream, Arc::clone(&backend)),
        );
        *lock(&current.backend) = None;
        let mut b = lock(&backend);
        b.stop_all();
        let (stopped, _) = b.stats();
        lock(&current.finished).merge(&stopped);
        info!("{}: frontend disconnected", spec.name);
    }
}

/// Handles messages until the frontend goes away.
fn serve(name: &str, mut handler: BackendReqHandler<Mutex<BlkBackend>>) {
    let mut errors = 0;
    loop {
        match handler.handle_request() {
            Ok(()) => errors = 0,
            Err(
                VhostError::Disconnected | VhostError::PartialMessage | VhostError::SocketBroken(_),
            ) => return,
            Err(VhostError::SocketError(e)) if e.kind() != std::io::ErrorKind::Interrupted => {
                return
            }
            Err(e) => {
                // The library has already answered (NACK) where the frontend expects a reply.
                warn!("{name}: vhost-user request failed: {e}");
                errors += 1;
                if errors >= MAX_CONSECUTIVE_ERRORS {
                    warn!("{name}: too many errors, dropping the connection");
                    return;
                }
            }
        }
    }
}
