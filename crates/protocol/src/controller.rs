//! A vhost-user-blk controller: its listening socket (created with owner-only permissions unless
//! told otherwise), an accept thread, and one thread per frontend session (up to
//! [`MAX_SESSIONS`] at once: a live-migration destination connects while the source is still
//! attached). Deleting a controller stops its queues (in-flight requests complete), closes every
//! connection, removes the socket and joins its threads, whether or not frontends stay connected.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::backend::BlkBackend;
use crate::device::{lock, Coalescing, ControllerShared, ControllerSpec};
use crate::queue::QueueCtrl;
use crate::session;
use crate::stats::QueueStats;
/// Frontend sessions a controller serves at once (a migration needs two); more are refused.
pub const MAX_SESSIONS: usize = 4;
/// How long a statistics pull waits for a session's control lock before leaving that session's
/// running queues out (its stopped queues are still counted).
const STATS_LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long a statistics pull waits for the reactors' answers.
const STATS_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// Default permissions of a controller socket: owner only.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Global session numbering (SPDK's `vid`), unique in the process.
static NEXT_VID: AtomicU64 = AtomicU64::new(0);

/// Why a controller could not start.
#[derive(Debug)]
pub enum ControllerError {
    /// The socket could not be created, bound or given its permissions.
    Listen(PathBuf, String),
    /// Another process accepts connections on this socket path.
    InUse(PathBuf),
    /// The path exists and is not a socket; it is left alone.
    NotASocket(PathBuf),
    /// The socket permissions asked for are not allowed (world-writable, or not a mode).
    BadMode(u32),
    /// A thread could not be spawned.
    Spawn(io::Error),
}

impl fmt::Display for ControllerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControllerError::Listen(p, e) => write!(f, "cannot listen on {}: {e}", p.display()),
            ControllerError::InUse(p) => write!(
                f,
                "{} is in use: another process accepts connections on it",
                p.display()
            ),
            ControllerError::NotASocket(p) => {
                write!(f, "{} exists and is not a socket", p.display())
            }
            ControllerError::BadMode(m) => write!(
                f,
                "socket mode {m:04o} is not allowed: use permission bits only, never writable by others (e.g. 0600, 0660)"
            ),
            ControllerError::Spawn(e) => write!(f, "cannot start controller thread: {e}"),
        }
    }
}

impl std::error::Error for ControllerError {}

/// Who may connect to a socket: its permission bits and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Permission bits (default 0600). Write permission for others is refused.
    pub mode: u32,
    /// Group to give the socket (e.g. the group QEMU runs in, with mode 0660).
    pub group: Option<u32>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            mode: DEFAULT_SOCKET_MODE,
            group: None,
        }
    }
}

impl SocketOptions {
    /// Checks the mode: permission bits only, and not writable by others.
    pub fn check(&self) -> Result<(), ControllerError> {
        if self.mode & !0o777 != 0 || self.mode & 0o002 != 0 {
            return Err(ControllerError::BadMode(self.mode));
        }
        Ok(())
    }
}

/// Parses an octal mode: `0660`, `660` or `0o660`.
pub fn parse_socket_mode(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("'{text}' is not an octal mode like 0660"))?;
    SocketOptions { mode, group: None }
        .check()
        .map_err(|e| e.to_string())?;
    Ok(mode)
}

/// Resolves a group name (or a number) to a gid.
pub fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name).map_err(|_| format!("bad group name '{name}'"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid value to be overwritten by getgrnam_r.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live local of the right type and `buf` is as long as
    // the length passed.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(format!("no group named '{name}'"));
    }
    Ok(grp.gr_gid)
}

/// A bound, listening unix socket, and the identity of the file bind created (so that only that
/// file is ever removed, not one another process put at the same path later).
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
    ident: (u64, u64),
}

impl BoundSocket {
    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one this socket created.
    pub fn remove_file(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn os_err(path: &Path, what: &str) -> ControllerError {
    ControllerError::Listen(
        path.to_path_buf(),
        format!("{what}: {}", io::Error::last_os_error()),
    )
}

/// Creates a listening unix socket at `path` with `opts`' permissions. A stale socket file (no
/// process accepts on it) is replaced; a live one, or a file that is not a socket, is refused.
/// The socket is never more permissive than `opts.mode`, not even briefly: its inode is made
/// 0600 before `bind` creates the file, and widened (after the group is set) only then.
pub fn bind_unix_socket(path: &Path, opts: &SocketOptions) -> Result<BoundSocket, ControllerError> {
    opts.check()?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControllerError::NotASocket(path.to_path_buf()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(ControllerError::InUse(path.to_path_buf())),
            Err(_) => {
                debug!("replacing stale socket {}", path.display());
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid (unnamed) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ControllerError::Listen(
            path.to_path_buf(),
            format!(
                "socket paths must be 1 to {} bytes",
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err(path, "socket"));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Linux gives the file bind(2) creates the socket inode's mode (less the umask): make that
    // owner-only first, so the path is never reachable by others before its final mode is set.
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) } != 0 {
        return Err(os_err(path, "fchmod"));
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` covers its family and NUL-terminated path.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    } != 0
    {
        return Err(os_err(path, "bind"));
    }
    let bound = BoundSocket {
        ident: std::fs::symlink_metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| ControllerError::Listen(path.to_path_buf(), e.to_string()))?,
        path: path.to_path_buf(),
        // SAFETY: `fd` is a bound unix stream socket; the listener takes it over.
        listener: UnixListener::from(fd),
    };
    let cpath = std::ffi::CString::new(bytes)
        .map_err(|_| ControllerError::Listen(path.to_path_buf(), "NUL in path".into()))?;
    if let Some(gid) = opts.group {
        // SAFETY: chown on a NUL-terminated path; -1 keeps the owner.
        if unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) } != 0 {
            let e = os_err(path, "chown to the socket group");
            bound.remove_file();
            return Err(e);
        }
    }
    // SAFETY: chmod on a NUL-terminated path.
    if unsafe { libc::chmod(cpath.as_ptr(), opts.mode as libc::mode_t) } != 0 {
        let e = os_err(path, "chmod");
        bound.remove_file();
        return Err(e);
    }
    // SAFETY: listen(2) on the bound socket we own.
    if unsafe { libc::listen(bound.listener.as_raw_fd(), 128) } != 0 {
        let e = os_err(path, "listen");
        bound.remove_file();
        return Err(e);
    }
    Ok(bound)
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
    /// False when a session's running queues could not be asked in time (their counts since
    /// they started are then missing; stopped queues are always counted).
    pub complete: bool,
}

/// One frontend connection as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Process-wide session number (SPDK's `vid`).
    pub vid: u64,
    /// The session's number within its controller, from 0.
    pub id: u64,
    /// `<controller>s<vid>`, as SPDK names sessions.
    pub name: String,
    /// How long ago the frontend connected.
    pub connected_for: Duration,
    /// Queues running now (`None` when the session was busy with a message and not asked).
    pub running_queues: Option<usize>,
}

struct Session {
    vid: u64,
    id: u64,
    since: Instant,
    backend: Arc<Mutex<BlkBackend>>,
    /// A second handle on the connection, to shut it down from another thread.
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    fn finished(&self) -> bool {
        match &self.thread {
            Some(t) => t.is_finished(),
            None => true,
        }
    }
}

/// What the accept thread, the session threads and the controller handle share.
struct Inner {
    spec: Arc<ControllerSpec>,
    shared: Arc<ControllerShared>,
    sessions: Mutex<Vec<Session>>,
    next_session: AtomicU64,
    /// Wakes the accept thread to leave.
    stop: EventFd,
}

/// A running controller.
pub struct Controller {
    inner: Arc<Inner>,
    socket: BoundSocket,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
    deleted: AtomicBool,
}

impl Controller {
    /// Listens on `socket` with `opts`' permissions (replacing a stale socket file) and serves
    /// frontends, each connection on a thread of its own, so one controller's messages never
    /// stall another's or the reactors.
    pub fn start(
        spec: ControllerSpec,
        socket: &Path,
        opts: &SocketOptions,
    ) -> Result<Controller, ControllerError> {
        let bound = bind_unix_socket(socket, opts)?;
        Self::serve_on(spec, bound)
    }

    /// Serves frontends on an already bound socket.
    pub fn serve_on(
        spec: ControllerSpec,
        bound: BoundSocket,
    ) -> Result<Controller, ControllerError> {
        let num_queues = usize::from(spec.num_queues);
        let capacity = spec.device.limits.capacity;
        let inner = Arc::new(Inner {
            spec: Arc::new(spec),
            shared: Arc::new(ControllerShared::new(num_queues, capacity)),
            sessions: Mutex::new(Vec::new()),
            next_session: AtomicU64::new(0),
            stop: EventFd::new(EFD_NONBLOCK).map_err(ControllerError::Spawn)?,
        });
        let listener = bound.listener.try_clone().map_err(ControllerError::Spawn)?;
        let thread = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name(format!("ctrl-{}", inner.spec.name))
                .spawn(move || accept_loop(&listener, &inner))
                .map_err(|e| {
                    bound.remove_file();
                    ControllerError::Spawn(e)
                })?
        };
        Ok(Controller {
            inner,
            socket: bound,
            accept_thread: Mutex::new(Some(thread)),
            deleted: AtomicBool::new(false),
        })
    }

    /// The controller's name.
    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        self.socket.path()
    }

    /// The controller's fixed description.
    pub fn spec(&self) -> &ControllerSpec {
        &self.inner.spec
    }

    /// Whether a frontend is connected now.
    pub fn connected(&self) -> bool {
        lock(&self.inner.sessions).iter().any(|s| !s.finished())
    }

    /// The frontends connected now.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let name = &self.inner.spec.name;
        let live: Vec<(u64, u64, Instant, Arc<Mutex<BlkBackend>>)> = lock(&self.inner.sessions)
            .iter()
            .filter(|s| !s.finished())
            .map(|s| (s.vid, s.id, s.since, Arc::clone(&s.backend)))
            .collect();
        live.into_iter()
            .map(|(vid, id, since, backend)| SessionInfo {
                vid,
                id,
                name: format!("{name}s{vid}"),
                connected_for: since.elapsed(),
                running_queues: try_lock_for(&backend, Duration::from_millis(100))
                    .map(|b| b.running_queues().len()),
            })
            .collect()
    }

    /// Statistics of every queue since the controller started: stopped queues from memory,
    /// running ones asked of their reactors. Never waits more than a few seconds for a
    /// session's control lock (a session busy with a slow vhost-user message is left out and
    /// the report marked incomplete).
    pub fn report(&self) -> ControllerReport {
        // Every listed session, ended or not: an ended one has no running queue left to ask.
        let (backends, connected) = {
            let sessions = lock(&self.inner.sessions);
            let backends: Vec<Arc<Mutex<BlkBackend>>> =
                sessions.iter().map(|s| Arc::clone(&s.backend)).collect();
            (backends, sessions.iter().any(|s| !s.finished()))
        };
        // A queue stops only under its session's lock, by a reactor message behind any stats
        // request already in that reactor's inbox. So: under every session's lock, ask each running queue for
        // its statistics and copy the stopped queues' totals; then let go and wait for the
        // answers. A queue that stops meanwhile answers first (its counts up to then) and adds
        // its final counts to the stopped totals after the copy: each queue counts once.
        let mut guards = Vec::with_capacity(backends.len());
        let mut complete = true;
        for b in &backends {
            match try_lock_for(b, STATS_LOCK_WAIT) {
                Some(g) => guards.push(g),
                None => {
                    warn!(
                        "{}: a session is busy; its running queues are left out of this report",
                        self.inner.spec.name
                    );
                    complete = false;
                }
            }
        }
        let mut asked = Vec::new();
        for g in &guards {
            for (i, q) in g.running_queues() {
                let (tx, rx) = crossbeam_channel::bounded(1);
                if q.send(QueueCtrl::Stats(tx)) {
                    asked.push((i, rx));
                }
            }
        }
        let mut per_queue = lock(&self.inner.shared.finished).clone();
        drop(guards);
        let deadline = Instant::now() + STATS_ANSWER_WAIT;
        for (i, rx) in asked {
            match (rx.recv_deadline(deadline), per_queue.get_mut(i)) {
                (Ok(s), Some(q)) => q.merge(&s),
                (Err(crossbeam_channel::RecvTimeoutError::Timeout), _) => complete = false,
                _ => {}
            }
        }
        let mut total = QueueStats::default();
        let reactors = &self.inner.spec.reactors;
        let queues = per_queue
            .into_iter()
            .enumerate()
            .filter(|(_, s)| s.total_ops() > 0 || s.in_flight > 0)
            .map(|(i, stats)| {
                total.merge(&stats);
                let reactor = i % reactors.len().max(1);
                QueueReport {
                    index: i as u16,
                    reactor,
                    core: reactors.get(reactor).and_then(|r| r.core()),
                    stats,
                }
            })
            .collect();
        ControllerReport {
            name: self.inner.spec.name.clone(),
            connected,
            queues,
            total,
            complete,
        }
    }

    /// Guest interrupt coalescing for this controller's queues, now (every session) and for
    /// queues that start later (SPDK's `vhost_controller_set_coalescing`; `delay_base_us` 0
    /// turns it off).
    pub fn set_coalescing(&self, delay_base_us: u32, iops_threshold: u32) -> Result<(), String> {
        let c = Coalescing::checked(delay_base_us, iops_threshold)?;
        *lock(&self.inner.shared.coalescing) = c;
        for b in self.backends() {
            lock(&b).set_coalescing(c);
        }
        Ok(())
    }

    /// The current interrupt coalescing settings.
    pub fn coalescing(&self) -> Coalescing {
        *lock(&self.inner.shared.coalescing)
    }

    /// Every session's backend, for a control operation on all of them.
    fn backends(&self) -> Vec<Arc<Mutex<BlkBackend>>> {
        lock(&self.inner.sessions)
            .iter()
            .map(|s| Arc::clone(&s.backend))
            .collect()
    }

    /// Enforces the bdev's I/O limits (`None`: none) on this controller's queues, in every
    /// session now and for queues that start later. Every controller of a bdev gets the same
    /// limiter, so the limits hold for the bdev as a whole.
    pub fn set_qos(&self, limiter: Option<Arc<spinblk_bdev::QosLimiter>>) {
        *lock(&self.inner.shared.qos) = limiter.clone();
        for b in self.backends() {
            lock(&b).set_qos(limiter.clone());
        }
    }

    /// Online resize: the controller serves `capacity` bytes from now on, in every session.
    /// Running queues accept requests up to the new end once they have acknowledged it, and then
    /// each frontend is told (VHOST_USER_BACKEND_CONFIG_CHANGE_MSG), so the guest re-reads the
    /// config space. Whether a shrink is allowed is the caller's decision. Sessions that start
    /// later get the new capacity. Every session is updated even if one fails; the first
    /// failure is returned.
    pub fn resize(&self, capacity: u64) -> Result<(), String> {
        self.inner.shared.capacity.store(capacity, Ordering::SeqCst);
        let mut first_error = Ok(());
        for b in self.backends() {
            if let Err(e) = lock(&b).resize(capacity) {
                if first_error.is_ok() {
                    first_error = Err(e.to_string());
                }
            }
        }
        first_error
    }

    /// The capacity served now, in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.shared.capacity.load(Ordering::SeqCst)
    }

    /// Stops the controller for good: no new connections or queues, every queue stopped once
    /// its in-flight requests completed, every connection closed (even if the frontend stays),
    /// the socket file removed, every thread joined. Returns within `timeout` plus the time the
    /// queues take to drain; a session thread still busy after that is left to finish on its own
    /// (and logged). Returns the final statistics. Calling it again only reports.
    pub fn delete(&self, timeout: Duration) -> ControllerReport {
        if self.deleted.swap(true, Ordering::SeqCst) {
            return self.report();
        }
        let name = &self.inner.spec.name;
        let deadline = Instant::now() + timeout;
        self.inner.shared.stopping.store(true, Ordering::SeqCst);
        // The accept thread first, so no session starts after we looked.
        let _ = self.inner.stop.write(1);
        if let Some(t) = lock(&self.accept_thread).take() {
            join_until(t, deadline, name, "accept thread");
        }
        self.socket.remove_file();
        // Closing the connection makes a session thread blocked in recvmsg see a disconnect;
        // it then stops its queues (waiting for in-flight requests) and exits. The sessions
        // stay listed until then, so a statistics pull meanwhile still counts their queues.
        let threads: Vec<(u64, JoinHandle<()>)> = lock(&self.inner.sessions)
            .iter_mut()
            .filter_map(|s| {
                let _ = s.stream.shutdown(std::net::Shutdown::Both);
                s.thread.take().map(|t| (s.vid, t))
            })
            .collect();
        for (vid, t) in threads {
            join_until(t, deadline, name, &format!("session {vid}"));
        }
        let sessions: Vec<Session> = std::mem::take(&mut *lock(&self.inner.sessions));
        for s in sessions {
            // Normally the session thread stopped them; this covers one that never ran.
            if let Some(mut b) = try_lock_for(&s.backend, Duration::ZERO) {
                b.stop_all();
            }
        }
        info!("{name}: deleted");
        self.report()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if !self.deleted.load(Ordering::SeqCst) {
            self.delete(Duration::from_secs(10));
        }
    }
}

/// Joins `t`, giving up (and leaving it detached) at `deadline`.
fn join_until(t: JoinHandle<()>, deadline: Instant, name: &str, what: &str) {
    while !t.is_finished() {
        if Instant::now() >= deadline {
            warn!("{name}: {what} did not finish in time; leaving it to exit on its own");
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = t.join();
}

/// Locks `m`, trying until `wait` has passed; `None` if it stayed taken.
fn try_lock_for<T>(m: &Mutex<T>, wait: Duration) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + wait;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

fn accept_loop(listener: &UnixListener, inner: &Arc<Inner>) {
    let name = inner.spec.name.clone();
    let mut refusal_logged = false;
    info!("{name}: listening");
    while spinblk_reactor::wait_readable_or_stop(listener.as_raw_fd(), inner.stop.as_raw_fd()) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("{name}: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if inner.shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let mut sessions = lock(&inner.sessions);
        // Reap sessions whose frontend left.
        sessions.retain_mut(|s| {
            if s.finished() {
                if let Some(t) = s.thread.take() {
                    let _ = t.join();
                }
                false
            } else {
                true
            }
        });
        if sessions.len() >= MAX_SESSIONS {
            if !refusal_logged {
                warn!("{name}: refusing a frontend: {MAX_SESSIONS} sessions are connected already");
                refusal_logged = true;
            }
            drop(stream);
            continue;
        }
        refusal_logged = false;
        match start_session(inner, stream) {
            Ok(s) => sessions.push(s),
            Err(e) => warn!("{name}: cannot serve a frontend: {e}"),
        }
    }
    debug!("{name}: accept thread exits");
}

fn start_session(inner: &Arc<Inner>, stream: UnixStream) -> io::Result<Session> {
    let vid = NEXT_VID.fetch_add(1, Ordering::Relaxed);
    let id = inner.next_session.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}s{vid}", inner.spec.name);
    let backend = Arc::new(Mutex::new(BlkBackend::new(
        Arc::clone(&inner.spec),
        Arc::clone(&inner.shared),
    )));
    let handle = stream.try_clone()?;
    let thread = {
        let backend = Arc::clone(&backend);
        let name = name.clone();
        let inner = Arc::clone(inner);
        std::thread::Builder::new()
            .name(format!("vhost-{vid}"))
            .spawn(move || {
                info!("{name}: frontend connected");
                let end = session::serve(&name, stream, &backend);
                lock(&backend).stop_all();
                // Leave the list: its connection handle and its memory mappings go with it.
                // Its queues have stopped, so their counts are in the controller's already.
                lock(&inner.sessions).retain(|s| s.vid != vid);
                drop(backend);
                info!("{name}: frontend {end}");
            })?
    };
    Ok(Session {
        vid,
        id,
        since: Instant::now(),
        backend,
        stream: handle,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("spinblk-ctl-{tag}-{}.sock", std::process::id()))
    }

    #[test]
    fn modes_parse_and_world_writable_is_refused() {
        assert_eq!(parse_socket_mode("0660"), Ok(0o660));
        assert_eq!(parse_socket_mode("600"), Ok(0o600));
        assert_eq!(parse_socket_mode("0o640"), Ok(0o640));
        assert!(parse_socket_mode("0666").is_err());
        assert!(parse_socket_mode("0777").is_err());
        assert!(parse_socket_mode("4600").is_err());
        assert!(parse_socket_mode("rw").is_err());
        assert_eq!(resolve_group("0"), Ok(0));
        assert!(resolve_group("no-such-group-spinblk").is_err());
    }

    #[test]
    fn socket_gets_its_mode_and_stale_files_are_replaced() {
        let path = temp_path("mode");
        let _ = std::fs::remove_file(&path);
        let opts = SocketOptions::default();
        let s = bind_unix_socket(&path, &opts).expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused.
        assert!(matches!(
            bind_unix_socket(&path, &opts),
            Err(ControllerError::InUse(_))
        ));
        drop(s);
        // Stale (nobody listens): replaced, with the new mode.
        let s = bind_unix_socket(
            &path,
            &SocketOptions {
                mode: 0o660,
                group: None,
            },
        )
        .expect("rebind over a stale socket");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        s.remove_file();
        assert!(!path.exists());
        // Not a socket: left alone.
        std::fs::write(&path, b"x").expect("file");
        assert!(matches!(
            bind_unix_socket(&path, &opts),
            Err(ControllerError::NotASocket(_))
        ));
        std::fs::remove_file(&path).expect("cleanup");
    }
}
