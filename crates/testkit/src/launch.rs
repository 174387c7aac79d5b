//! Starting the real `spinblk` binary (or qemu-storage-daemon as a reference) for a test.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientConfig};
use crate::process::ProcessFootprint;
use crate::tempdir::TempDir;
use crate::{GIB, KIB, MIB};

/// How long a target may take to create the paths it was asked for.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A polled-mode target spins a core; running several test targets at once on a small machine
/// only makes every one of them slow. Each [`Target`] (unless started with
/// [`Launch::concurrent`]) holds this lock for its whole life, so the tests in one binary take
/// turns.
static ONE_TARGET_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The `spinblk` binary the tests run:
/// 1. `$SPINBLK_BIN`, if set;
/// 2. `spinblk` next to the running test executable's profile directory
///    (`target/<profile>/deps/<test>` -> `target/<profile>/spinblk`), which is what Cargo
///    builds for the `spinblk` package's own integration tests (`CARGO_BIN_EXE_spinblk`);
/// 3. `target/debug/spinblk` or `target/release/spinblk` under the workspace root.
///
/// Cargo builds the binary only for the `spinblk` package's tests (and for `cargo test
/// --workspace`); tests of other crates run `cargo build -p spinblk` first or set
/// `SPINBLK_BIN`. Panics, saying so, when no binary is found.
pub fn spinblk_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SPINBLK_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        if dir
            .as_deref()
            .is_some_and(|d| d.file_name().is_some_and(|n| n == "deps"))
        {
            dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
        }
        if let Some(d) = dir {
            candidates.push(d.join("spinblk"));
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    candidates.push(target.join("debug/spinblk"));
    candidates.push(target.join("release/spinblk"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no spinblk binary at any of {candidates:?}: run `cargo build -p spinblk` \
                 (or set SPINBLK_BIN)"
            )
        })
}

/// Waits until `path` exists (any file type), up to `timeout`.
pub fn wait_for_path(path: &Path, timeout: Duration) -> Result<(), String> {
    wait_until(path, timeout, |_| true, &mut || Ok(()))
}

/// Waits until `path` is a unix socket, up to `timeout`.
pub fn wait_for_socket(path: &Path, timeout: Duration) -> Result<(), String> {
    wait_until(path, timeout, |m| m.file_type().is_socket(), &mut || Ok(()))
}

fn wait_until(
    path: &Path,
    timeout: Duration,
    ready: impl Fn(&fs::Metadata) -> bool,
    alive: &mut dyn FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if fs::metadata(path).is_ok_and(|m| ready(&m)) {
            return Ok(());
        }
        alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not appear within {timeout:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What [`Target::start`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// No backend flag: the documented default (a 1 GiB malloc disk).
    Default,
    /// `--malloc SIZE`.
    Malloc(u64),
    /// `--null SIZE`.
    Null(u64),
}

/// The command line of a single-disk target ([`Target::start`]).
#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// The disk.
    pub backend: Backend,
    /// `--block-size`.
    pub block_size: Option<u32>,
    /// `--readonly`.
    pub readonly: bool,
    /// `--num-queues`.
    pub num_queues: Option<u32>,
    /// `--serial`.
    pub serial: Option<String>,
    /// `--cpus`.
    pub cpus: Option<String>,
}

impl TargetConfig {
    /// A malloc disk of `size` bytes.
    pub fn malloc(size: u64) -> Self {
        Self::new(Backend::Malloc(size))
    }

    /// A null disk of `size` bytes.
    pub fn null(size: u64) -> Self {
        Self::new(Backend::Null(size))
    }

    /// `backend` with every other option at its default.
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

    /// Sets `--block-size`.
    pub fn block_size(mut self, bs: u32) -> Self {
        self.block_size = Some(bs);
        self
    }

    /// Sets `--readonly`.
    pub fn readonly(mut self) -> Self {
        self.readonly = true;
        self
    }

    /// Sets `--num-queues`.
    pub fn num_queues(mut self, n: u32) -> Self {
        self.num_queues = Some(n);
        self
    }

    /// Sets `--serial`.
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

    /// spinblk's arguments for this configuration (the socket comes first).
    fn spinblk_args(&self, socket: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--socket".into(), socket.into()];
        let mut push = |k: &str, v: String| {
            args.push(k.into());
            args.push(v.into());
        };
        match self.backend {
            Backend::Default => {}
            Backend::Malloc(size) => push("--malloc", size_arg(size)),
            Backend::Null(size) => push("--null", size_arg(size)),
        }
        if let Some(bs) = self.block_size {
            push("--block-size", bs.to_string());
        }
        if let Some(serial) = &self.serial {
            push("--serial", serial.clone());
        }
        if let Some(cpus) = &self.cpus {
            push("--cpus", cpus.clone());
        }
        if let Some(n) = self.num_queues {
            push("--num-queues", n.to_string());
        }
        if self.readonly {
            args.push("--readonly".into());
        }
        args
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

/// Whether [`Target::start`] runs qemu-storage-daemon instead of spinblk
/// (`SPINBLK_TEST_TARGET=qemu-storage-daemon`).
pub fn reference_target() -> bool {
    std::env::var("SPINBLK_TEST_TARGET").is_ok_and(|v| v == "qemu-storage-daemon")
}

/// A target command line being put together; [`Launch::start`] runs it.
///
/// In every argument, `{dir}` stands for the target's private directory (where its log lives
/// and where sockets usually go).
#[must_use]
pub struct Launch {
    program: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Paths to wait for: (path with `{dir}`, must be a socket).
    wait: Vec<(String, bool)>,
    /// Sparse files to create in the target's directory first: (name, size).
    files: Vec<(String, u64)>,
    timeout: Duration,
    concurrent: bool,
    config: TargetConfig,
}

impl Launch {
    /// The `spinblk` binary ([`spinblk_bin`]) with no arguments yet.
    pub fn spinblk() -> Self {
        Launch {
            program: None,
            args: Vec::new(),
            env: Vec::new(),
            wait: Vec::new(),
            files: Vec::new(),
            timeout: STARTUP_TIMEOUT,
            concurrent: false,
            config: TargetConfig::new(Backend::Default),
        }
    }

    /// Runs `program` instead of spinblk.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the target.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Waits for a unix socket at `path` before [`start`](Self::start) returns. A relative
    /// path is taken in the target's directory; `{dir}` may appear in it. The first socket
    /// waited for is [`Target::socket`].
    pub fn wait_socket(mut self, path: impl AsRef<Path>) -> Self {
        self.wait
            .push((path.as_ref().to_string_lossy().into_owned(), true));
        self
    }

    /// Waits for `path` (any file type: a pid file, an RPC socket, a log) to exist before
    /// [`start`](Self::start) returns; relative paths and `{dir}` as for
    /// [`wait_socket`](Self::wait_socket).
    pub fn wait_path(mut self, path: impl AsRef<Path>) -> Self {
        self.wait
            .push((path.as_ref().to_string_lossy().into_owned(), false));
        self
    }

    /// Creates a sparse file `name` of `size` bytes in the target's directory before starting
    /// it (a disk image the arguments can name as `{dir}/NAME`).
    pub fn sparse_file(mut self, name: &str, size: u64) -> Self {
        self.files.push((name.to_string(), size));
        self
    }

    /// How long to wait for the paths (default [`STARTUP_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Does not take the one-target-at-a-time turn (for tests that run two targets at once;
    /// they must not also start a turn-taking target while holding this one).
    pub fn concurrent(mut self) -> Self {
        self.concurrent = true;
        self
    }

    /// Starts the process (stdout and stderr to `{dir}/target.log`) and waits for every path
    /// asked for; panics, with the target's output, if it exits first or a path does not
    /// appear in time.
    pub fn start(self) -> Target {
        let turn = (!self.concurrent).then(|| {
            ONE_TARGET_AT_A_TIME
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        let dir = TempDir::new("t");
        let d = dir.path().to_string_lossy().into_owned();
        let subst = |s: &OsString| -> OsString {
            match s.to_str() {
                Some(text) if text.contains("{dir}") => text.replace("{dir}", &d).into(),
                _ => s.clone(),
            }
        };
        let resolve = |p: &str| {
            let p = PathBuf::from(p.replace("{dir}", &d));
            if p.is_relative() {
                dir.path().join(p)
            } else {
                p
            }
        };
        let waits: Vec<(PathBuf, bool)> = self.wait.iter().map(|(p, s)| (resolve(p), *s)).collect();
        for (name, size) in &self.files {
            let path = dir.path().join(name);
            File::create(&path)
                .and_then(|f| f.set_len(*size))
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        }
        let log = dir.path().join("target.log");
        let program = self.program.unwrap_or_else(spinblk_bin);
        let mut cmd = Command::new(&program);
        cmd.args(self.args.iter().map(subst));
        for (k, v) in &self.env {
            cmd.env(k, subst(v));
        }
        let out = File::create(&log).expect("create target log");
        let err = out.try_clone().expect("clone target log fd");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .env("RUST_BACKTRACE", "1");
        let cmdline = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {cmdline}: {e}"));
        let socket = waits
            .iter()
            .find(|(_, s)| *s)
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| dir.path().join("vhost.sock"));
        let mut target = Target {
            child,
            socket,
            log,
            cmdline,
            config: self.config,
            dir,
            _turn: turn,
        };
        for (path, socket) in &waits {
            let ready = |m: &fs::Metadata| !socket || m.file_type().is_socket();
            let r = {
                let mut alive = || target.check_alive();
                wait_until(path, self.timeout, ready, &mut alive)
            };
            if let Err(e) = r {
                panic!("{e}\ncommand: {}\n{}", target.cmdline, target.output());
            }
        }
        target
    }
}

/// A running target process. Dropping it kills the process (so a failing test leaves nothing
/// behind) and, if the test is panicking, prints the target's output (so panic messages need not
/// include it).
pub struct Target {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    cmdline: String,
    /// The single-disk configuration it was started with ([`Target::start`]; the default for
    /// targets started from arguments).
    pub config: TargetConfig,
    // Dropped after the child is killed: the socket and log live in here.
    dir: TempDir,
    _turn: Option<MutexGuard<'static, ()>>,
}

impl Target {
    /// A builder for a `spinblk` command line ([`Launch::spinblk`]).
    pub fn launch() -> Launch {
        Launch::spinblk()
    }

    /// Starts a single-disk target (spinblk, or qemu-storage-daemon with
    /// `SPINBLK_TEST_TARGET=qemu-storage-daemon`) on `{dir}/vhost.sock` and waits for the
    /// socket.
    pub fn start(config: TargetConfig) -> Target {
        let socket = Path::new("{dir}/vhost.sock");
        let launch = if reference_target() {
            reference_launch(&config, socket)
        } else {
            Launch::spinblk().args(config.spinblk_args(socket))
        };
        Launch { config, ..launch }.wait_socket(socket).start()
    }

    /// Starts spinblk with `args` (`{dir}` stands for the target's private directory) and
    /// waits for each of `sockets` (paths relative to that directory, or absolute).
    pub fn start_args(args: &[&str], sockets: &[&str]) -> Target {
        sockets
            .iter()
            .fold(Launch::spinblk().args(args), |l, s| l.wait_socket(s))
            .start()
    }

    /// The target's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The target's private directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The first socket the launch waited for (`{dir}/vhost.sock` if none).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The path of `name` in the target's directory.
    pub fn socket_named(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The command line it was started with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Waits for `path` to exist while checking that the target is still running.
    pub fn wait_for_path(&mut self, path: &Path, timeout: Duration) -> Result<(), String> {
        let mut alive = || self.check_alive();
        wait_until(path, timeout, |_| true, &mut alive)
    }

    /// Sends `signal` (e.g. libc::SIGTERM) and waits up to 30 s for the target to exit; returns
    /// its exit code (None when a signal ended it) and everything it printed.
    pub fn stop_with(&mut self, signal: i32) -> (Option<i32>, String) {
        self.signal(signal);
        let status = self
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("target ignored signal {signal}"));
        (status.code(), self.log_text())
    }

    /// Sends `signal` to the target.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits up to `timeout` for the target to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll target process") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGUSR1 and returns the output that appeared within `wait`.
    pub fn dump_stats(&mut self, wait: Duration) -> String {
        let before = self.log_text().len();
        self.signal(libc::SIGUSR1);
        std::thread::sleep(wait);
        self.log_text()
            .get(before..)
            .unwrap_or_default()
            .to_string()
    }

    /// Sends SIGUSR1 and polls the log until a line starting with `marker` appears after the
    /// signal, then returns everything the target printed after the signal; `None` after
    /// `timeout`.
    pub fn dump_stats_until(&mut self, marker: &str, timeout: Duration) -> Option<String> {
        let before = self.log_text().len();
        self.signal(libc::SIGUSR1);
        let deadline = Instant::now() + timeout;
        loop {
            let new = self
                .log_text()
                .get(before..)
                .unwrap_or_default()
                .to_string();
            if new.lines().any(|l| l.starts_with(marker)) {
                // The table is written in one go, but give the rest of it a moment.
                std::thread::sleep(Duration::from_millis(50));
                return Some(
                    self.log_text()
                        .get(before..)
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the target wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// [`log_text`](Self::log_text) between markers, for panic messages.
    pub fn output(&self) -> String {
        format!(
            "--- target output ---\n{}--- end of target output ---",
            self.log_text()
        )
    }

    /// `Err` (with the exit status) if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("target exited: {status}")),
            Err(e) => Err(format!("cannot poll the target: {e}")),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// Panics if the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Err(e) = self.check_alive() {
            panic!("{e} (unexpectedly)");
        }
    }

    /// Open fds, mappings and threads of the target.
    pub fn footprint(&self) -> ProcessFootprint {
        ProcessFootprint::of(self.pid())
    }

    /// The target's resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> Option<u64> {
        ProcessFootprint::rss_kib(self.pid())
    }

    /// Connects a client with one queue to [`socket`](Self::socket) and starts it.
    pub fn connect(&self) -> Client {
        self.connect_with(ClientConfig::default())
    }

    /// Connects and starts a client on [`socket`](Self::socket), panicking on failure.
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
            eprintln!("command: {}\n{}", self.cmdline, self.output());
        }
    }
}

/// The qemu-storage-daemon export equivalent to `config` (reference mode only).
fn reference_launch(config: &TargetConfig, socket: &Path) -> Launch {
    let size = config.expected_capacity();
    let blockdev = match config.backend {
        Backend::Default | Backend::Malloc(_) => {
            "driver=file,node-name=disk,filename={dir}/disk.img,discard=unmap".to_string()
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
    Launch::spinblk()
        .program("qemu-storage-daemon")
        .sparse_file("disk.img", size)
        .args(["--blockdev", &blockdev, "--export", &export])
}
