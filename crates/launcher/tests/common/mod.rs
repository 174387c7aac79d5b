//! Shared helpers for the spinblk integration tests: start the real target binary on a private
//! unix socket, connect to it with libblkio's `virtio-blk-vhost-user` driver, and issue
//! synchronous requests (submit, wait for the completion, return the virtio-blk `ret`).
//!
//! Setting `SPINBLK_TEST_TARGET=qemu-storage-daemon` runs the same tests against
//! `qemu-storage-daemon` (a file-backed or `null-co` export) as a reference implementation, to tell
//! test bugs from target bugs.
#![allow(dead_code)]

use std::fs::{self, File};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, Errno, MemoryRegion, ReqFlags};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// How long the target may take to create its socket, and a request to complete.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the shared memory region each client queue owns for its buffers.
pub const SLOT_LEN: usize = 4 << 20;

/// A polled-mode target spins a core; running several test targets at once on a small machine
/// only makes every one of them slow. Each [`Target`] holds this lock for its whole life, so the
/// tests in one binary take turns.
static ONE_TARGET_AT_A_TIME: Mutex<()> = Mutex::new(());
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// What the target serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// No backend flag: the documented default (a 1 GiB malloc disk).
    Default,
    /// `--malloc SIZE`.
    Malloc(u64),
    /// `--null SIZE`.
    Null(u64),
}

/// The command line of one target.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub backend: Backend,
    pub block_size: Option<u32>,
    pub readonly: bool,
    pub num_queues: Option<u32>,
    pub serial: Option<String>,
    pub cpus: Option<String>,
}

impl TargetConfig {
    pub fn malloc(size: u64) -> Self {
        Self::new(Backend::Malloc(size))
    }

    pub fn null(size: u64) -> Self {
        Self::new(Backend::Null(size))
    }

    pub fn new(backend: Backend) -> Self {
        TargetConfig {
            backend,
            block_size: None,
            readonly: false,
            num_queues: None,
            serial: None,
            cpus: None,
        }
    }

    pub fn block_size(mut self, bs: u32) -> Self {
        self.block_size = Some(bs);
        self
    }

    pub fn readonly(mut self) -> Self {
        self.readonly = true;
        self
    }

    pub fn num_queues(mut self, n: u32) -> Self {
        self.num_queues = Some(n);
        self
    }

    pub fn serial(mut self, s: &str) -> Self {
        self.serial = Some(s.to_string());
        self
    }

    /// The disk size the target should report.
    pub fn expected_capacity(&self) -> u64 {
        match self.backend {
            Backend::Default => GIB,
            Backend::Malloc(s) | Backend::Null(s) => s,
        }
    }
}

/// Formats `bytes` with the largest K/M/G suffix that divides it, as the CLI accepts.
pub fn size_arg(bytes: u64) -> String {
    for (suffix, unit) in [("G", GIB), ("M", MIB), ("K", KIB)] {
        if bytes >= unit && bytes / unit * unit == bytes {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Whether the tests run against qemu-storage-daemon instead of spinblk.
pub fn reference_target() -> bool {
    std::env::var("SPINBLK_TEST_TARGET").is_ok_and(|v| v == "qemu-storage-daemon")
}

/// A private directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("spinblk-{tag}-{}-{id}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("create test temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running target process. Dropping it kills the process (so a failing test leaves nothing
/// behind) and, if the test is panicking, prints the target's output (so panic messages need not
/// include it).
pub struct Target {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    pub config: TargetConfig,
    // Dropped after the child is killed: the socket and log live in here.
    dir: TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Target {
    /// Starts a target and waits for its socket to appear.
    pub fn start(config: TargetConfig) -> Target {
        let turn = ONE_TARGET_AT_A_TIME
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dir = TempDir::new("test");
        let socket = dir.path().join("vhost.sock");
        let log = dir.path().join("target.log");
        let mut cmd = if reference_target() {
            reference_command(&config, &socket, dir.path())
        } else {
            spinblk_command(&config, &socket)
        };
        let out = File::create(&log).expect("create target log");
        let err = out.try_clone().expect("clone target log fd");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .env("RUST_BACKTRACE", "1");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {cmd:?}: {e}"));
        let mut target = Target {
            child,
            socket,
            log,
            config,
            dir,
            _turn: turn,
        };
        let socket = target.socket.clone();
        target.wait_for_socket(&socket, &format!("{cmd:?}"));
        target
    }

    /// Starts spinblk with `args`, in which `{dir}` stands for the target's private directory,
    /// and waits for each of `sockets` (file names in that directory) to appear.
    pub fn start_args(args: &[&str], sockets: &[&str]) -> Target {
        let turn = ONE_TARGET_AT_A_TIME
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dir = TempDir::new("test");
        let d = dir.path().display().to_string();
        let log = dir.path().join("target.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spinblk"));
        cmd.args(args.iter().map(|a| a.replace("{dir}", &d)));
        let out = File::create(&log).expect("create target log");
        let err = out.try_clone().expect("clone target log fd");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {cmd:?}: {e}"));
        // With no socket named (they live elsewhere), the caller waits for them itself.
        let socket = dir
            .path()
            .join(sockets.first().copied().unwrap_or("vhost.sock"));
        let mut target = Target {
            child,
            socket,
            log,
            config: TargetConfig::new(Backend::Default),
            dir,
            _turn: turn,
        };
        for name in sockets {
            let path = target.socket_named(name);
            target.wait_for_socket(&path, &format!("{cmd:?}"));
        }
        target
    }

    /// The target's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The path of socket `name` in the target's directory.
    pub fn socket_named(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Sends `signal` (e.g. libc::SIGTERM) and waits up to 30 s for the target to exit; returns
    /// its exit code and everything it printed.
    pub fn stop_with(&mut self, signal: i32) -> (Option<i32>, String) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("poll target process") {
                break status.code();
            }
            assert!(Instant::now() < deadline, "target ignored signal {signal}");
            std::thread::sleep(Duration::from_millis(20));
        };
        (code, fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Sends SIGUSR1 and returns the output that appeared within `wait`.
    pub fn dump_stats(&mut self, wait: Duration) -> String {
        let before = fs::read_to_string(&self.log).unwrap_or_default().len();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        std::thread::sleep(wait);
        let all = fs::read_to_string(&self.log).unwrap_or_default();
        all.get(before..).unwrap_or_default().to_string()
    }

    fn wait_for_socket(&mut self, socket: &Path, cmdline: &str) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(meta) = fs::metadata(socket) {
                if meta.file_type().is_socket() {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().expect("poll target process") {
                panic!(
                    "target exited with {status} before creating its socket\ncommand: {cmdline}"
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "target did not create {} within {STARTUP_TIMEOUT:?}\ncommand: {cmdline}",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Everything the target wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- target output ---\n{text}--- end of target output ---")
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll target process") {
            panic!("target exited unexpectedly with {status}");
        }
    }

    /// Connects a client with one queue and starts it.
    pub fn connect(&self) -> Client {
        self.connect_with(ClientConfig::default())
    }

    /// Connects and starts a client, panicking on failure.
    pub fn connect_with(&self, cfg: ClientConfig) -> Client {
        Client::connect(&self.socket, cfg)
            .unwrap_or_else(|e| panic!("client failed to connect: {e}"))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

fn spinblk_command(config: &TargetConfig, socket: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spinblk"));
    cmd.arg("--socket").arg(socket);
    match config.backend {
        Backend::Default => {}
        Backend::Malloc(size) => {
            cmd.arg("--malloc").arg(size_arg(size));
        }
        Backend::Null(size) => {
            cmd.arg("--null").arg(size_arg(size));
        }
    }
    if let Some(bs) = config.block_size {
        cmd.arg("--block-size").arg(bs.to_string());
    }
    if config.readonly {
        cmd.arg("--readonly");
    }
    if let Some(serial) = &config.serial {
        cmd.arg("--serial").arg(serial);
    }
    if let Some(cpus) = &config.cpus {
        cmd.arg("--cpus").arg(cpus);
    }
    if let Some(n) = config.num_queues {
        cmd.arg("--num-queues").arg(n.to_string());
    }
    cmd
}

/// The equivalent qemu-storage-daemon export (reference mode only).
fn reference_command(config: &TargetConfig, socket: &Path, dir: &Path) -> Command {
    let size = config.expected_capacity();
    let blockdev = match config.backend {
        Backend::Default | Backend::Malloc(_) => {
            let img = dir.join("disk.img");
            File::create(&img)
                .and_then(|f| f.set_len(size))
                .expect("create reference disk image");
            format!(
                "driver=file,node-name=disk,filename={},discard=unmap",
                img.display()
            )
        }
        Backend::Null(_) => format!("driver=null-co,node-name=disk,size={size},read-zeroes=on"),
    };
    let mut export = format!(
        "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={},writable={}",
        socket.display(),
        if config.readonly { "off" } else { "on" }
    );
    if let Some(bs) = config.block_size {
        export.push_str(&format!(",logical-block-size={bs}"));
    }
    if let Some(n) = config.num_queues {
        export.push_str(&format!(",num-queues={n}"));
    }
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(blockdev)
        .arg("--export")
        .arg(export);
    cmd
}

/// How a client is set up before `start`.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    pub num_queues: i32,
    pub queue_size: i32,
    /// libblkio's `read-only` property (must be set when the device reports VIRTIO_BLK_F_RO).
    pub read_only: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            num_queues: 1,
            queue_size: 128,
            read_only: false,
        }
    }
}

/// A failed client setup step.
#[derive(Debug)]
pub struct ConnectError {
    pub step: &'static str,
    pub error: blkio::Error,
}

impl ConnectError {
    pub fn errno(&self) -> Errno {
        self.error.errno()
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (errno {:?})",
            self.step,
            self.error,
            self.error.errno()
        )
    }
}

fn step<T>(step: &'static str, r: blkio::Result<T>) -> Result<T, ConnectError> {
    r.map_err(|error| ConnectError { step, error })
}

/// Creates a libblkio instance for `socket` with `cfg` and connects it (the vhost-user handshake),
/// without starting the queues. Retries briefly while the socket refuses connections (it may
/// exist a moment before the target listens on it).
pub fn connect_only(socket: &Path, cfg: ClientConfig) -> Result<Blkio, ConnectError> {
    let path = socket.to_str().expect("socket path is UTF-8");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut blkio = step("Blkio::new", Blkio::new("virtio-blk-vhost-user"))?;
        step("set path", blkio.set_str("path", path))?;
        step("set read-only", blkio.set_bool("read-only", cfg.read_only))?;
        match blkio.connect() {
            Ok(()) => {}
            Err(e) if e.errno() == Errno::CONNREFUSED && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(error) => {
                return Err(ConnectError {
                    step: "connect",
                    error,
                })
            }
        }
        step(
            "set num-queues",
            blkio.set_i32("num-queues", cfg.num_queues),
        )?;
        step(
            "set queue-size",
            blkio.set_i32("queue-size", cfg.queue_size),
        )?;
        return Ok(blkio);
    }
}

/// Transfer limits the device advertised (0 = none advertised).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub request_alignment: u64,
    pub max_segment_len: usize,
    pub max_segments: usize,
    pub max_discard_len: u64,
    pub max_write_zeroes_len: u64,
}

/// A started libblkio client with `num_queues` queues and one shared-memory buffer slot of
/// [`SLOT_LEN`] bytes per queue.
pub struct Client {
    queues: Vec<Blkioq>,
    blkio: Blkio,
    mem: MemoryRegion,
    pub limits: Limits,
}

impl Client {
    /// Connects, starts and maps a buffer region (allocated with `alloc_mem_region`, mapped with
    /// `map_mem_region` so the target can reach it).
    pub fn connect(socket: &Path, cfg: ClientConfig) -> Result<Client, ConnectError> {
        let mut blkio = connect_only(socket, cfg)?;
        let outcome = step("start", blkio.start())?;
        let queues = outcome.queues;
        assert_eq!(queues.len(), cfg.num_queues as usize, "queues after start");
        let len = SLOT_LEN * queues.len();
        let mem = step("alloc_mem_region", blkio.alloc_mem_region(len))?;
        step("map_mem_region", blkio.map_mem_region(&mem))?;
        let get_i32 = |name| blkio.get_i32(name).map(|v| usize::try_from(v).unwrap_or(0));
        let limits = Limits {
            request_alignment: step("request-alignment", get_i32("request-alignment"))? as u64,
            max_segment_len: step("max-segment-len", get_i32("max-segment-len"))?,
            max_segments: step("max-segments", get_i32("max-segments"))?,
            max_discard_len: step("max-discard-len", blkio.get_u64("max-discard-len"))?,
            max_write_zeroes_len: step(
                "max-write-zeroes-len",
                blkio.get_u64("max-write-zeroes-len"),
            )?,
        };
        Ok(Client {
            queues,
            blkio,
            mem,
            limits,
        })
    }

    pub fn blkio(&self) -> &Blkio {
        &self.blkio
    }

    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").expect("capacity property")
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The handle for queue `i` (and its buffer slot).
    pub fn queue(&mut self, i: usize) -> Queue<'_> {
        let base = self.mem.addr as *mut u8;
        let limits = self.limits;
        let q = &mut self.queues[i];
        // SAFETY: slot i lies inside the mapped region (len = SLOT_LEN * num_queues), which stays
        // mapped while `self` (borrowed mutably for the handle's life) exists.
        let buf = unsafe { base.add(i * SLOT_LEN) };
        Queue::new(i, q, buf, limits)
    }

    /// Handles for every queue at once (each with its own slot), e.g. to drive them from
    /// separate threads.
    pub fn queues(&mut self) -> Vec<Queue<'_>> {
        let base = self.mem.addr as *mut u8;
        let limits = self.limits;
        self.queues
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                // SAFETY: as in `queue`; the slots are disjoint.
                let buf = unsafe { base.add(i * SLOT_LEN) };
                Queue::new(i, q, buf, limits)
            })
            .collect()
    }
}

/// One client queue plus its private buffer slot in the mapped region. All request helpers are
/// synchronous: they submit, wait (up to [`IO_TIMEOUT`]) and return the completion's `ret`
/// (0 = success, negative errno otherwise).
pub struct Queue<'a> {
    pub index: usize,
    q: &'a mut Blkioq,
    buf: *mut u8,
    limits: Limits,
    next_tag: usize,
    _slot: PhantomData<&'a mut [u8]>,
}

// SAFETY: the handle owns its slot of the region exclusively for 'a (slots are disjoint and the
// client is mutably borrowed), and `Blkioq` is itself `Send`; moving the handle to another thread
// moves that exclusive access with it.
unsafe impl Send for Queue<'_> {}

/// A request's data layout in the slot: iovecs and the slot offsets they cover.
struct Layout {
    iov: Vec<blkio::iovec>,
}

impl<'a> Queue<'a> {
    fn new(index: usize, q: &'a mut Blkioq, buf: *mut u8, limits: Limits) -> Self {
        Queue {
            index,
            q,
            buf,
            limits,
            next_tag: index << 32,
            _slot: PhantomData,
        }
    }

    fn check_bounds(at: usize, len: usize) {
        assert!(
            at.checked_add(len).is_some_and(|end| end <= SLOT_LEN),
            "buffer {at}+{len} exceeds the {SLOT_LEN}-byte slot"
        );
    }

    /// Copies `data` into the slot at `at`.
    fn put(&mut self, at: usize, data: &[u8]) {
        Self::check_bounds(at, data.len());
        // SAFETY: in bounds of this queue's slot (checked above), which only this handle uses,
        // and no request is in flight while helpers copy.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.add(at), data.len()) };
    }

    /// Fills the slot at `at` with `byte` (poisons read buffers so a read that transfers nothing
    /// cannot pass for zeroes).
    fn fill(&mut self, at: usize, len: usize, byte: u8) {
        Self::check_bounds(at, len);
        // SAFETY: as in `put`.
        unsafe { std::ptr::write_bytes(self.buf.add(at), byte, len) };
    }

    /// Copies `len` bytes out of the slot at `at`.
    fn get(&self, at: usize, len: usize) -> Vec<u8> {
        Self::check_bounds(at, len);
        let mut out = vec![0u8; len];
        // SAFETY: as in `put`.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.add(at), out.as_mut_ptr(), len) };
        out
    }

    fn iovec(&self, at: usize, len: usize) -> blkio::iovec {
        Self::check_bounds(at, len);
        blkio::iovec {
            // SAFETY: in bounds of the slot (checked above).
            iov_base: unsafe { self.buf.add(at) }.cast(),
            iov_len: len,
        }
    }

    /// A contiguous buffer of `len` bytes at slot offset `at`, split into several segments only
    /// where the device's advertised max segment size demands it (as a guest driver would).
    fn contiguous(&self, at: usize, len: usize) -> Layout {
        let seg = match self.limits.max_segment_len {
            0 => len.max(1),
            n => n,
        };
        if len == 0 {
            return Layout {
                iov: vec![self.iovec(at, 0)],
            };
        }
        let iov = (0..len)
            .step_by(seg)
            .map(|s| self.iovec(at + s, seg.min(len - s)))
            .collect();
        Layout { iov }
    }

    fn tag(&mut self) -> usize {
        self.next_tag += 1;
        self.next_tag
    }

    fn submit_read(&mut self, off: u64, layout: &Layout) -> usize {
        let tag = self.tag();
        if let [one] = layout.iov.as_slice() {
            self.q.read(
                off,
                one.iov_base.cast(),
                one.iov_len,
                tag,
                ReqFlags::empty(),
            );
        } else {
            self.q.readv(
                off,
                layout.iov.as_ptr(),
                layout.iov.len() as u32,
                tag,
                ReqFlags::empty(),
            );
        }
        tag
    }

    fn submit_write(&mut self, off: u64, layout: &Layout, flags: ReqFlags) -> usize {
        let tag = self.tag();
        if let [one] = layout.iov.as_slice() {
            self.q.write(
                off,
                one.iov_base.cast_const().cast(),
                one.iov_len,
                tag,
                flags,
            );
        } else {
            self.q.writev(
                off,
                layout.iov.as_ptr(),
                layout.iov.len() as u32,
                tag,
                flags,
            );
        }
        tag
    }

    /// Waits for the completions of `tags` (in any order) and returns their `ret`s in `tags`
    /// order.
    fn wait(&mut self, tags: &[usize]) -> Vec<i32> {
        let mut rets: Vec<Option<i32>> = vec![None; tags.len()];
        let mut got = 0;
        let mut completions: Vec<MaybeUninit<Completion>> = Vec::with_capacity(tags.len());
        completions.resize_with(tags.len(), MaybeUninit::uninit);
        let deadline = Instant::now() + IO_TIMEOUT;
        while got < tags.len() {
            let mut timeout = deadline.saturating_duration_since(Instant::now());
            let want = tags.len() - got;
            let n = self
                .q
                .do_io(&mut completions[..want], want, Some(&mut timeout), None)
                .unwrap_or_else(|e| {
                    panic!(
                        "queue {}: waiting for {want} of {} completions failed after {:?}: {e} \
                         (errno {:?}); is the target answering?",
                        self.index,
                        tags.len(),
                        IO_TIMEOUT,
                        e.errno()
                    )
                });
            for c in &completions[..n] {
                // SAFETY: do_io initialised the first `n` entries.
                let c = unsafe { c.assume_init_read() };
                let i = tags
                    .iter()
                    .position(|&t| t == c.user_data)
                    .unwrap_or_else(|| panic!("completion for unknown tag {}", c.user_data));
                assert!(rets[i].is_none(), "two completions for tag {}", c.user_data);
                rets[i] = Some(c.ret);
                got += 1;
            }
        }
        rets.into_iter()
            .map(|r| r.expect("every tag completed"))
            .collect()
    }

    fn wait_one(&mut self, tag: usize) -> i32 {
        self.wait(&[tag])[0]
    }

    /// Reads `len` bytes at `off` into a poisoned buffer; returns the `ret` and the buffer.
    pub fn read(&mut self, off: u64, len: usize) -> (i32, Vec<u8>) {
        self.fill(0, len, POISON);
        let layout = self.contiguous(0, len);
        let tag = self.submit_read(off, &layout);
        let ret = self.wait_one(tag);
        (ret, self.get(0, len))
    }

    /// Like [`read`](Self::read) but panics unless the read succeeds.
    pub fn read_ok(&mut self, off: u64, len: usize) -> Vec<u8> {
        let (ret, data) = self.read(off, len);
        assert_eq!(
            ret, 0,
            "queue {}: read of {len} bytes at {off} failed",
            self.index
        );
        data
    }

    pub fn write(&mut self, off: u64, data: &[u8]) -> i32 {
        self.write_flags(off, data, ReqFlags::empty())
    }

    /// Writes with libblkio request flags (e.g. `ReqFlags::FUA`).
    pub fn write_flags(&mut self, off: u64, data: &[u8], flags: ReqFlags) -> i32 {
        self.put(0, data);
        let layout = self.contiguous(0, data.len());
        let tag = self.submit_write(off, &layout, flags);
        self.wait_one(tag)
    }

    /// Like [`write`](Self::write) but panics unless the write succeeds.
    pub fn write_ok(&mut self, off: u64, data: &[u8]) {
        let ret = self.write(off, data);
        assert_eq!(
            ret,
            0,
            "queue {}: write of {} bytes at {off} failed",
            self.index,
            data.len()
        );
    }

    /// Slot offsets for scattered segments: each starts `SEG_GAP` bytes past the previous one's
    /// end, so segments are neither adjacent nor page aligned.
    fn scattered(&self, lens: &[usize]) -> (Layout, Vec<usize>) {
        let mut at = SEG_GAP;
        let mut iov = Vec::new();
        let mut starts = Vec::new();
        for &len in lens {
            iov.push(self.iovec(at, len));
            starts.push(at);
            at += len + SEG_GAP;
        }
        (Layout { iov }, starts)
    }

    /// One write request whose data is `segments`, each in its own iovec.
    pub fn writev(&mut self, off: u64, segments: &[&[u8]]) -> i32 {
        let lens: Vec<usize> = segments.iter().map(|s| s.len()).collect();
        let (layout, starts) = self.scattered(&lens);
        for (seg, at) in segments.iter().zip(starts) {
            self.put(at, seg);
        }
        let tag = self.submit_write(off, &layout, ReqFlags::empty());
        self.wait_one(tag)
    }

    /// One read request into `lens.len()` poisoned iovecs; returns the `ret` and the data of all
    /// segments concatenated.
    pub fn readv(&mut self, off: u64, lens: &[usize]) -> (i32, Vec<u8>) {
        let (layout, starts) = self.scattered(lens);
        for (&len, &at) in lens.iter().zip(&starts) {
            self.fill(at, len, POISON);
        }
        let tag = self.submit_read(off, &layout);
        let ret = self.wait_one(tag);
        let mut out = Vec::new();
        for (&len, &at) in lens.iter().zip(&starts) {
            out.extend(self.get(at, len));
        }
        (ret, out)
    }

    pub fn flush(&mut self) -> i32 {
        let tag = self.tag();
        self.q.flush(tag, ReqFlags::empty());
        self.wait_one(tag)
    }

    pub fn discard(&mut self, off: u64, len: u64) -> i32 {
        let tag = self.tag();
        self.q.discard(off, len, tag, ReqFlags::empty());
        self.wait_one(tag)
    }

    /// Write-zeroes; `flags` may hold `ReqFlags::NO_UNMAP` (without it the device may unmap).
    pub fn write_zeroes(&mut self, off: u64, len: u64, flags: ReqFlags) -> i32 {
        let tag = self.tag();
        self.q.write_zeroes(off, len, tag, flags);
        self.wait_one(tag)
    }

    /// Submits all `writes` before waiting for any (their buffers lie side by side in the slot),
    /// then returns each one's `ret`.
    pub fn write_many(&mut self, writes: &[(u64, &[u8])]) -> Vec<i32> {
        let mut layouts = Vec::with_capacity(writes.len());
        let mut at = 0;
        for (_, data) in writes {
            self.put(at, data);
            layouts.push(self.contiguous(at, data.len()));
            at += data.len();
        }
        let tags: Vec<usize> = writes
            .iter()
            .zip(&layouts)
            .map(|((off, _), layout)| self.submit_write(*off, layout, ReqFlags::empty()))
            .collect();
        self.wait(&tags)
    }

    /// Submits `writes` and kicks the target, then returns without waiting: the requests are
    /// left in flight (e.g. to drop the client under them).
    pub fn write_many_no_wait(&mut self, writes: &[(u64, &[u8])]) {
        let mut at = 0;
        for (off, data) in writes {
            self.put(at, data);
            // A single-buffer write: libblkio keeps its own copy of the iovec, so nothing here
            // has to outlive this function.
            let iov = self.iovec(at, data.len());
            let tag = self.tag();
            self.q.write(
                *off,
                iov.iov_base.cast_const().cast(),
                iov.iov_len,
                tag,
                ReqFlags::empty(),
            );
            at += data.len();
        }
        // do_io notifies the device of new requests; min_completions 0 returns at once.
        self.q
            .do_io(&mut [], 0, None, None)
            .expect("kick the target");
    }

    /// Submits all `reads` (offset, length) before waiting for any; returns each one's `ret` and
    /// data.
    pub fn read_many(&mut self, reads: &[(u64, usize)]) -> Vec<(i32, Vec<u8>)> {
        let mut layouts = Vec::with_capacity(reads.len());
        let mut starts = Vec::with_capacity(reads.len());
        let mut at = 0;
        for &(_, len) in reads {
            self.fill(at, len, POISON);
            layouts.push(self.contiguous(at, len));
            starts.push(at);
            at += len;
        }
        let tags: Vec<usize> = reads
            .iter()
            .zip(&layouts)
            .map(|((off, _), layout)| self.submit_read(*off, layout))
            .collect();
        let rets = self.wait(&tags);
        rets.into_iter()
            .zip(reads.iter().zip(starts))
            .map(|(ret, (&(_, len), at))| (ret, self.get(at, len)))
            .collect()
    }
}

/// The byte read buffers are filled with before a read.
pub const POISON: u8 = 0xa5;
/// Bytes between scattered segments in a slot.
const SEG_GAP: usize = 320;

/// `len` deterministic pseudo-random bytes for `seed` (splitmix64).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0x5350_494e_424c_4b21);
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        let word = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

/// A small deterministic generator for offsets and sizes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Asserts that `got` equals `want`, reporting the first differing byte rather than dumping
/// megabytes.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if got == want {
        return; // one memcmp; the byte-by-byte search below is slow in debug builds
    }
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        let end = (i + 16).min(got.len());
        panic!(
            "{what}: first difference at byte {i} of {}: got {:02x?}, want {:02x?}",
            got.len(),
            &got[i..end],
            &want[i..end]
        );
    }
}

/// Asserts that every byte of `got` is zero.
#[track_caller]
pub fn assert_zeroes(got: &[u8], what: &str) {
    static ZEROES: [u8; 4096] = [0; 4096];
    if got.chunks(ZEROES.len()).all(|c| c == &ZEROES[..c.len()]) {
        return;
    }
    if let Some(i) = got.iter().position(|&b| b != 0) {
        let end = (i + 16).min(got.len());
        panic!(
            "{what}: expected zeroes, byte {i} of {} is not: {:02x?}",
            got.len(),
            &got[i..end]
        );
    }
}
