//! The JSON-RPC listener: a unix stream socket (owner-only by default, guarded by a lock file
//! like SPDK's `<socket>.lock`), an accept thread, and a thread per client, so a slow method or
//! a client that sends half a request never holds up another client or a reactor.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};
use serde_json::Value;
use spinblk_protocol::{bind_unix_socket, BoundSocket, SocketOptions};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::framing::Framer;
use crate::jsonrpc::{handle_frame, Handler, Outcome, RpcError, PARSE_ERROR};

/// Largest request (one top-level JSON value, a batch included) a client may send.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Clients served at once (SPDK's SPDK_JSONRPC_MAX_CONNS); more are refused.
pub const MAX_CLIENTS: usize = 64;
/// SPDK's default RPC socket.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/spdk.sock";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct ClientConn {
    id: u64,
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    handler: Arc<dyn Handler>,
    stop: EventFd,
    clients: Mutex<Vec<ClientConn>>,
    next_client: std::sync::atomic::AtomicU64,
}

/// A running JSON-RPC server.
pub struct RpcServer {
    inner: Arc<Inner>,
    socket: BoundSocket,
    lock_path: PathBuf,
    _lock_file: File,
    accept: Option<JoinHandle<()>>,
}

impl RpcServer {
    /// Listens on `path` with `opts`' permissions and serves `handler`. Refused when another
    /// process holds `<path>.lock` or accepts on `path`.
    pub fn start(
        path: &Path,
        opts: &SocketOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<RpcServer, String> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // Never through a symlink someone put in a shared directory such as /var/tmp.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "RPC socket {} is in use by another process (it holds {})",
                path.display(),
                lock_path.display()
            ));
        }
        let socket = bind_unix_socket(path, opts).map_err(|e| e.to_string())?;
        let inner = Arc::new(Inner {
            handler,
            stop: EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?,
            clients: Mutex::new(Vec::new()),
            next_client: std::sync::atomic::AtomicU64::new(0),
        });
        let listener = socket.listener().try_clone().map_err(|e| e.to_string())?;
        let accept = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("rpc-accept".into())
                .spawn(move || accept_loop(&listener, &inner))
                .map_err(|e| {
                    socket.remove_file();
                    format!("cannot start the RPC thread: {e}")
                })?
        };
        info!("RPC server listening on {}", path.display());
        Ok(RpcServer {
            inner,
            socket,
            lock_path,
            _lock_file: lock_file,
            accept: Some(accept),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Stops accepting, closes every client connection (a method running now finishes first),
    /// joins the threads and removes the socket and lock files.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.inner.stop.write(1);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let clients = std::mem::take(&mut *lock(&self.inner.clients));
        for c in &clients {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        for mut c in clients {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
        self.socket.remove_file();
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop(listener: &std::os::unix::net::UnixListener, inner: &Arc<Inner>) {
    let mut refusal_logged = false;
    while spinblk_reactor::wait_readable_or_stop(listener.as_raw_fd(), inner.stop.as_raw_fd()) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("RPC: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut clients = lock(&inner.clients);
        clients.retain_mut(|c| match &c.thread {
            Some(t) if !t.is_finished() => true,
            _ => {
                if let Some(t) = c.thread.take() {
                    let _ = t.join();
                }
                false
            }
        });
        if clients.len() >= MAX_CLIENTS {
            if !refusal_logged {
                warn!("RPC: refusing a client: {MAX_CLIENTS} clients are connected");
                refusal_logged = true;
            }
            continue;
        }
        refusal_logged = false;
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let id = inner
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let worker = {
            let inner = Arc::clone(inner);
            std::thread::Builder::new()
                .name("rpc-client".into())
                .spawn(move || {
                    serve_client(&stream, &inner);
                    // Close for good (the accept thread holds a second handle), and leave the
                    // list so the connection's descriptor goes now.
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    lock(&inner.clients).retain(|c| c.id != id);
                })
        };
        match worker {
            Ok(t) => clients.push(ClientConn {
                id,
                stream: handle,
                thread: Some(t),
            }),
            Err(e) => warn!("RPC: cannot start a client thread: {e}"),
        }
    }
}

fn serve_client(mut stream: &UnixStream, inner: &Inner) {
    let mut framer = Framer::new(MAX_REQUEST_BYTES);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !spinblk_reactor::wait_readable_or_stop(stream.as_raw_fd(), inner.stop.as_raw_fd()) {
            return;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                if !framer.is_idle() {
                    debug!("RPC: client closed the connection in the middle of a request");
                }
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        framer.feed(&buf[..n]);
        loop {
            let frame = match framer.next_value() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    warn!("RPC: closing a client connection: {e}");
                    let err = RpcError::new(PARSE_ERROR, format!("Parse error: {e}"));
                    let answer = serde_json::json!({
                        "jsonrpc": "2.0", "id": Value::Null,
                        "error": {"code": err.code, "message": err.message},
                    });
                    let mut bytes = serde_json::to_vec(&answer).unwrap_or_default();
                    bytes.push(b'\n');
                    let _ = stream.write_all(&bytes);
                    return;
                }
            };
            match handle_frame(&frame, inner.handler.as_ref()) {
                Outcome::Reply(bytes) => {
                    if stream.write_all(&bytes).is_err() {
                        return;
                    }
                }
                Outcome::Nothing => {}
                Outcome::ReplyAndClose(bytes) => {
                    let _ = stream.write_all(&bytes);
                    return;
                }
            }
        }
    }
}
