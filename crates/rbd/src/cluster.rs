//! One connection (rados handle) to a Ceph cluster, shared by every image opened through it.

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::ffi::{self, RadosT};
use crate::RbdError;

/// The op timeout used when neither the config file nor the options set `rados_osd_op_timeout`
/// (librados' own default, 0, waits forever: requests to a lost cluster would hang).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// The mount timeout used when neither the config file nor the options set
/// `client_mount_timeout` (Ceph's own default is 300 s).
pub const DEFAULT_MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// librados' completion threads (`librados_thread_count`, the `io_context_pool` threads that run
/// librbd's completions) when neither the config file nor the options set it. Ceph's default is
/// 2; one measured 0.77x the target CPU per read and 0.89-0.93x per write at QD32 against a
/// one-node cluster, with the same or more IOPS (docs/benchmarks.md): two threads handing the
/// same stream of completions back and forth cost switches and cache misses. Set the option to
/// raise it for a connection that carries more than one thread's worth of completions.
pub const DEFAULT_COMPLETION_THREADS: u32 = 1;
/// Ceph's own `librados_thread_count`.
const CEPH_COMPLETION_THREADS: &str = "2";

/// How to reach a cluster: SPDK's `bdev_rbd_register_cluster` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Ceph's cluster name (`ceph`): it picks `/etc/ceph/<name>.conf` when `config_file` is
    /// `None`.
    pub cluster_name: String,
    /// The client id without `client.` (`admin`).
    pub user: String,
    /// A ceph.conf to read. `None`: librados' own search (`$CEPH_CONF`,
    /// `/etc/ceph/$cluster.conf`, `~/.ceph/$cluster.conf`, `./$cluster.conf`); finding none is
    /// then an error only when `options` does not name the monitors (`mon_host`).
    pub config_file: Option<PathBuf>,
    /// Configuration key/values set after the file (SPDK's `config_param`), e.g.
    /// `("mon_host", "127.0.0.1:6789")`, `("keyring", "...")`, `("rbd_cache", "false")`.
    pub options: Vec<(String, String)>,
    /// How long one request may wait for the cluster before it fails with an I/O error
    /// (`rados_osd_op_timeout`, also used as `rados_mon_op_timeout`), in whole seconds; zero
    /// waits forever (not recommended: a lost cluster then hangs requests). `None`: the value
    /// the config file or `options` give, else [`DEFAULT_OP_TIMEOUT`]. `Some` overrides both.
    pub op_timeout: Option<Duration>,
    /// How long connecting may take before it fails (`client_mount_timeout`); `None` and
    /// `Some` as for `op_timeout`, with [`DEFAULT_MOUNT_TIMEOUT`].
    pub mount_timeout: Option<Duration>,
    /// CPUs that librados' and librbd's own threads (messenger, completion, cache) run on (SPDK's
    /// `core_mask`): the connection is made from a thread bound to them, and the threads it
    /// starts inherit that. `None`: wherever the calling thread may run.
    pub cpus: Option<Vec<usize>>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_name: "ceph".into(),
            user: "admin".into(),
            config_file: None,
            options: Vec::new(),
            op_timeout: None,
            mount_timeout: None,
            cpus: None,
        }
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, RbdError> {
    CString::new(s).map_err(|_| RbdError::Invalid(format!("{what} contains a NUL byte: {s:?}")))
}

/// Whole seconds for a Ceph duration option, rounded up (0 stays 0).
fn secs(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.to_string()
}

/// A Ceph duration option's value in seconds.
fn parse_secs(v: &str) -> Option<Duration> {
    let s: f64 = v.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s))
}

/// The two option names are the same option to Ceph ("a b" and "a_b").
fn same_option(a: &str, b: &str) -> bool {
    a.replace(' ', "_") == b.replace(' ', "_")
}

/// A connected cluster. Cloning shares the one rados handle (reference counted); the handle is
/// shut down when the last clone and the last image opened through it are gone.
#[derive(Clone)]
pub struct RbdCluster {
    pub(crate) inner: Arc<ClusterInner>,
}

/// A reference to a connection that does not keep it alive ([`RbdCluster::downgrade`]).
#[derive(Clone, Debug, Default)]
pub struct WeakRbdCluster(Weak<ClusterInner>);

impl WeakRbdCluster {
    /// The connection, if something still holds it.
    pub fn upgrade(&self) -> Option<RbdCluster> {
        self.0.upgrade().map(|inner| RbdCluster { inner })
    }
}

pub(crate) struct ClusterInner {
    pub(crate) handle: RadosT,
    config: ClusterConfig,
    op_timeout: Duration,
    mount_timeout: Duration,
    instance_id: u64,
}

impl std::fmt::Debug for ClusterInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterInner")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

// SAFETY: a rados_t is safe to use from any thread (librados is thread-safe); it is shut down
// once, in Drop, when no other reference exists.
unsafe impl Send for ClusterInner {}
// SAFETY: as above.
unsafe impl Sync for ClusterInner {}

impl Drop for ClusterInner {
    fn drop(&mut self) {
        // SAFETY: the handle was created and connected by `connect`; every ioctx made from it has
        // been destroyed (images hold a reference to this cluster until they close).
        unsafe { (ffi::loaded().rados_shutdown)(self.handle) };
    }
}

/// Runs `f` on a new thread bound to `cpus` (so the threads it starts inherit the binding).
fn on_cpus<R: Send>(cpus: &[usize], f: impl FnOnce() -> R + Send) -> Result<R, RbdError> {
    if cpus.is_empty() {
        return Err(RbdError::Invalid(
            "an empty CPU set for the Ceph threads".into(),
        ));
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(RbdError::Invalid(format!("CPU {c} is out of range")));
        }
        // SAFETY: `c` is below CPU_SETSIZE, the set's size.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    std::thread::scope(|s| {
        let t = std::thread::Builder::new()
            .name("rbd-connect".into())
            .spawn_scoped(s, move || {
                // SAFETY: binds the calling thread to a valid set of the right size.
                let r = unsafe {
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
                };
                if r != 0 {
                    return Err(RbdError::Os(std::io::Error::last_os_error()));
                }
                Ok(f())
            })
            .map_err(RbdError::Os)?;
        t.join()
            .unwrap_or_else(|_| Err(RbdError::Invalid("the connecting thread panicked".into())))
    })
}

impl RbdCluster {
    /// Connects to a cluster. This blocks (up to the mount timeout, longer for DNS or a slow
    /// config file): call it on a control thread, never on a reactor.
    pub fn connect(config: &ClusterConfig) -> Result<RbdCluster, RbdError> {
        match &config.cpus {
            Some(cpus) => on_cpus(cpus, || Self::connect_here(config))?,
            None => Self::connect_here(config),
        }
    }

    fn connect_here(config: &ClusterConfig) -> Result<RbdCluster, RbdError> {
        let api = ffi::api()?;
        let entity = format!("client.{}", config.user);
        let who = format!("cluster {} as {entity}", config.cluster_name);
        let c_cluster = cstring("cluster name", &config.cluster_name)?;
        let c_entity = cstring("user", &entity)?;
        let mut handle = RadosT::null();
        // SAFETY: valid out-pointer and NUL-terminated strings that outlive the call.
        let r =
            unsafe { (api.rados_create2)(&mut handle, c_cluster.as_ptr(), c_entity.as_ptr(), 0) };
        if r < 0 {
            return Err(RbdError::call(
                format!("create a handle for {who}"),
                r.into(),
            ));
        }
        // From here on, Drop shuts the handle down on every error path.
        let mut inner = ClusterInner {
            handle,
            config: config.clone(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            mount_timeout: DEFAULT_MOUNT_TIMEOUT,
            instance_id: 0,
        };
        let names_mons = config
            .options
            .iter()
            .any(|(k, _)| same_option(k, "mon_host") || same_option(k, "mon_addr"));
        let path = match &config.config_file {
            Some(p) => Some(cstring("config file", &p.to_string_lossy())?),
            None => None,
        };
        // SAFETY: the handle is valid; the path is NUL-terminated or null (default search).
        let r = unsafe {
            (api.rados_conf_read_file)(
                handle,
                path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            )
        };
        if r < 0 && (config.config_file.is_some() || !names_mons) {
            let what = match &config.config_file {
                Some(p) => format!("read config file {} for {who}", p.display()),
                None => format!(
                    "find a ceph.conf for {who} ($CEPH_CONF, /etc/ceph/{}.conf; or set mon_host)",
                    config.cluster_name
                ),
            };
            return Err(RbdError::call(what, r.into()));
        }
        let set = |key: &str, value: &str| -> Result<(), RbdError> {
            let c_key = cstring("option name", key)?;
            let c_value = cstring("option value", value)?;
            // SAFETY: valid handle, NUL-terminated strings.
            let r = unsafe { (api.rados_conf_set)(handle, c_key.as_ptr(), c_value.as_ptr()) };
            if r < 0 {
                return Err(RbdError::call(
                    format!("set option {key}={value} for {who}"),
                    r.into(),
                ));
            }
            Ok(())
        };
        for (key, value) in &config.options {
            set(key, value)?;
        }
        // The timeouts: an explicit value wins; else what the file or the options set; else
        // spinblk's defaults (Ceph's own, "wait forever" and 300 s, would hang a lost cluster's
        // requests). Whether the file set one is seen from its value differing from Ceph's
        // default.
        let in_options = |key: &str| config.options.iter().any(|(k, _)| same_option(k, key));
        let current = |key: &str| conf_get(handle, key).as_deref().and_then(parse_secs);
        let resolve = |key: &str, ceph_default: Duration, ours: Duration, explicit| match explicit {
            Some(d) => Some(d),
            None if in_options(key) => None,
            None => match current(key) {
                Some(v) if v != ceph_default => None,
                _ => Some(ours),
            },
        };
        if let Some(op) = resolve(
            "rados_osd_op_timeout",
            Duration::ZERO,
            DEFAULT_OP_TIMEOUT,
            config.op_timeout,
        ) {
            set("rados_osd_op_timeout", &secs(op))?;
        }
        if let Some(mount) = resolve(
            "client_mount_timeout",
            Duration::from_secs(300),
            DEFAULT_MOUNT_TIMEOUT,
            config.mount_timeout,
        ) {
            set("client_mount_timeout", &secs(mount))?;
        }
        // Monitor requests (pool lookups, image watches) get the same bound unless set apart.
        let op = current("rados_osd_op_timeout").unwrap_or(DEFAULT_OP_TIMEOUT);
        if config.op_timeout.is_some() || !in_options("rados_mon_op_timeout") {
            set("rados_mon_op_timeout", &secs(op))?;
        }
        // librados' completion threads: what the file or the options set, else ours. The
        // file's value is seen from its differing from Ceph's default.
        if !in_options("librados_thread_count")
            && conf_get(handle, "librados_thread_count").as_deref() == Some(CEPH_COMPLETION_THREADS)
        {
            set(
                "librados_thread_count",
                &DEFAULT_COMPLETION_THREADS.to_string(),
            )?;
        }
        // The effective values.
        inner.op_timeout = current("rados_osd_op_timeout").unwrap_or(DEFAULT_OP_TIMEOUT);
        inner.mount_timeout = current("client_mount_timeout").unwrap_or(DEFAULT_MOUNT_TIMEOUT);
        // SAFETY: valid, configured handle.
        let r = unsafe { (api.rados_connect)(handle) };
        if r < 0 {
            let from = match &config.config_file {
                Some(p) => format!(" (config {})", p.display()),
                None => String::new(),
            };
            return Err(RbdError::call(format!("connect to {who}{from}"), r.into()));
        }
        // SAFETY: connected handle.
        inner.instance_id = unsafe { (api.rados_get_instance_id)(handle) };
        log::info!(
            "rbd: connected to {who}: one connection, global id client.{} (op timeout {:?}, \
             mount timeout {:?}, {} completion thread(s){})",
            inner.instance_id,
            inner.op_timeout,
            inner.mount_timeout,
            conf_get(handle, "librados_thread_count").unwrap_or_default(),
            match &config.cpus {
                Some(c) => format!(", Ceph threads on cpus {c:?}"),
                None => String::new(),
            }
        );
        Ok(RbdCluster {
            inner: Arc::new(inner),
        })
    }

    /// The configuration this cluster was connected with.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The effective `rados_osd_op_timeout` (zero: none).
    pub fn op_timeout(&self) -> Duration {
        self.inner.op_timeout
    }

    /// The effective `client_mount_timeout`.
    pub fn mount_timeout(&self) -> Duration {
        self.inner.mount_timeout
    }

    /// The global id the cluster gave this connection (`client.<id>` in the cluster's session
    /// lists): one per connection, shared by every image opened through it.
    pub fn instance_id(&self) -> u64 {
        self.inner.instance_id
    }

    /// A reference that does not keep the connection alive.
    pub fn downgrade(&self) -> WeakRbdCluster {
        WeakRbdCluster(Arc::downgrade(&self.inner))
    }

    /// The current value of a configuration option, as librados reports it.
    pub fn conf_get(&self, option: &str) -> Option<String> {
        conf_get(self.inner.handle, option)
    }

    /// How many holders share this connection (clones plus open images).
    pub fn ref_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Whether two values share one rados handle.
    pub fn same_connection(&self, other: &RbdCluster) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl std::fmt::Debug for RbdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdCluster")
            .field("config", &self.inner.config)
            .field("op_timeout", &self.inner.op_timeout)
            .field("instance_id", &self.inner.instance_id)
            .finish()
    }
}

fn conf_get(handle: RadosT, option: &str) -> Option<String> {
    let key = CString::new(option).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid handle, NUL-terminated key, and a buffer of the given length.
    let r = unsafe {
        (ffi::loaded().rados_conf_get)(handle, key.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    if r < 0 {
        return None;
    }
    let s = CStr::from_bytes_until_nul(&buf).ok()?;
    Some(s.to_string_lossy().into_owned())
}

/// librbd's version as (major, minor, extra): 1.16.0 for Ceph 16.
pub fn librbd_version() -> Result<(i32, i32, i32), RbdError> {
    let api = ffi::api()?;
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    unsafe { (api.rbd_version)(&mut a, &mut b, &mut c) };
    Ok((a, b, c))
}

/// Whether librados/librbd can be loaded here (`Err`: the one-line reason).
pub fn probe_libraries() -> Result<(), RbdError> {
    ffi::api().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(secs(Duration::from_secs(30)), "30");
        assert_eq!(secs(Duration::from_millis(1500)), "2");
        assert_eq!(secs(Duration::ZERO), "0");
    }

    #[test]
    fn option_names_and_values() {
        assert!(same_option("rados osd op timeout", "rados_osd_op_timeout"));
        assert!(!same_option("mon_host", "mon_addr"));
        assert_eq!(parse_secs("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_secs("300.000000"), Some(Duration::from_secs(300)));
        assert_eq!(parse_secs("-1"), None);
        assert_eq!(parse_secs("x"), None);
    }

    #[test]
    fn an_empty_cpu_set_is_refused() {
        assert!(matches!(on_cpus(&[], || ()), Err(RbdError::Invalid(_))));
        assert!(matches!(
            on_cpus(&[1 << 20], || ()),
            Err(RbdError::Invalid(_))
        ));
        // SAFETY: no arguments; returns the CPU this thread runs on (one it may run on).
        let here = unsafe { libc::sched_getcpu() };
        let here = usize::try_from(here).expect("sched_getcpu");
        assert_eq!(on_cpus(&[here], || 7).expect("the current cpu"), 7);
    }

    #[test]
    fn names_with_nul_are_refused() {
        assert!(matches!(cstring("user", "a\0b"), Err(RbdError::Invalid(_))));
    }
}
