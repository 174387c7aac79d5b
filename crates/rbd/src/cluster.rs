//! One connection (rados handle) to a Ceph cluster, shared by every image opened through it.

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::ffi::{self, RadosT};
use crate::RbdError;

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
    /// `("mon_host", "127.0.0.1:6789")`, `("keyfile", "...")`, `("rbd_cache", "false")`.
    /// They override `op_timeout` and `mount_timeout`.
    pub options: Vec<(String, String)>,
    /// How long one request may wait for the cluster before it fails with an I/O error
    /// (`rados_osd_op_timeout`, also used as `rados_mon_op_timeout`). Whole seconds; 0 means
    /// wait forever (librados' default, not recommended: a lost cluster then hangs requests).
    pub op_timeout: Duration,
    /// How long connecting may take before it fails (`client_mount_timeout`; Ceph's default
    /// is 300 s).
    pub mount_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_name: "ceph".into(),
            user: "admin".into(),
            config_file: None,
            options: Vec::new(),
            op_timeout: Duration::from_secs(30),
            mount_timeout: Duration::from_secs(30),
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

/// A connected cluster. Cloning shares the one rados handle (reference counted); the handle is
/// shut down when the last clone and the last image opened through it are gone.
#[derive(Clone)]
pub struct RbdCluster {
    pub(crate) inner: Arc<ClusterInner>,
}

pub(crate) struct ClusterInner {
    pub(crate) handle: RadosT,
    config: ClusterConfig,
    op_timeout: Duration,
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

impl RbdCluster {
    /// Connects to a cluster. This blocks (up to `mount_timeout`, longer for DNS or a slow
    /// config file): call it on a control thread, never on a reactor.
    pub fn connect(config: &ClusterConfig) -> Result<RbdCluster, RbdError> {
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
            op_timeout: config.op_timeout,
        };
        let names_mons = config
            .options
            .iter()
            .any(|(k, _)| matches!(k.replace(' ', "_").as_str(), "mon_host" | "mon_addr"));
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
        let timeouts = [
            ("rados_osd_op_timeout", secs(config.op_timeout)),
            ("rados_mon_op_timeout", secs(config.op_timeout)),
            ("client_mount_timeout", secs(config.mount_timeout)),
        ];
        let user_options = config.options.iter().map(|(k, v)| (k.as_str(), v.clone()));
        for (key, value) in timeouts
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .chain(user_options)
        {
            let c_key = cstring("option name", key)?;
            let c_value = cstring("option value", &value)?;
            // SAFETY: valid handle, NUL-terminated strings.
            let r = unsafe { (api.rados_conf_set)(handle, c_key.as_ptr(), c_value.as_ptr()) };
            if r < 0 {
                return Err(RbdError::call(
                    format!("set option {key}={value} for {who}"),
                    r.into(),
                ));
            }
        }
        // The effective op timeout (an option may have overridden it).
        if let Some(v) = conf_get(handle, "rados_osd_op_timeout") {
            if let Ok(s) = v.trim().parse::<f64>() {
                if s.is_finite() && s >= 0.0 {
                    inner.op_timeout = Duration::from_secs_f64(s);
                }
            }
        }
        // SAFETY: valid, configured handle.
        let r = unsafe { (api.rados_connect)(handle) };
        if r < 0 {
            let from = match &config.config_file {
                Some(p) => format!(" (config {})", p.display()),
                None => String::new(),
            };
            return Err(RbdError::call(format!("connect to {who}{from}"), r.into()));
        }
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
    fn names_with_nul_are_refused() {
        assert!(matches!(cstring("user", "a\0b"), Err(RbdError::Invalid(_))));
    }
}
