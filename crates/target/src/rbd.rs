//! Ceph RBD bdevs in the object model: the registered clusters (SPDK's
//! `bdev_rbd_register_cluster`), the connections shared by images of one cluster, the open
//! images, and what happens to them around a controller's or a bdev's deletion and at shutdown.
//!
//! * Connecting to a cluster and opening an image can take seconds (up to the mount or op
//!   timeout when the cluster is unreachable). Both happen on the calling control thread (an RPC
//!   client's thread, or the launcher's main thread at start), with the bdev's or the cluster's
//!   name reserved and no lock held, so lookups, other RPC clients and every reactor go on.
//! * One connection (rados handle) per cluster: a registered cluster's images share its
//!   connection; images created with their own connection parameters share one connection per
//!   distinct parameter set (it is shut down when the last of them closes).
//! * Durability: deleting a controller flushes its image; deleting the bdev, and
//!   [`Target::close_rbd_images`] at shutdown, flush and close it. Each librbd step is bounded
//!   by the cluster's op timeout (plus a margin); a timeout is reported as an error naming the
//!   image (its handle is then leaked rather than freed under librbd).
//! * A resize by another client is reported by librbd's header watch: a watcher thread re-reads
//!   the size ([`BdevEntry::rescan`]), whose `Resized` event the controllers pass to their
//!   guests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use spinblk_bdev::Bdev;
use spinblk_rbd::{ClusterConfig, RbdBdev, RbdCluster, RbdError, RbdImageConfig, WeakRbdCluster};

use crate::bdev::{check_name, BdevEntry, BdevKind, BdevParams};
use crate::cpumask::CoreMask;
use crate::error::TargetError;
use crate::target::Target;

/// How an RBD bdev reaches its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RbdClusterRef {
    /// A cluster registered with [`Target::register_rbd_cluster`], by name (SPDK's
    /// `cluster_name`).
    Registered(String),
    /// Its own parameters (SPDK's `user_id` and `config`); bdevs with equal parameters share
    /// one connection.
    Direct(RbdClusterParams),
}

/// How to connect to a cluster: SPDK's `bdev_rbd_register_cluster` parameters, plus the op
/// timeout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RbdClusterParams {
    /// Ceph user without `client.` (`None`: admin).
    pub user_id: Option<String>,
    /// A ceph.conf (`None`: librados' search: $CEPH_CONF, /etc/ceph/ceph.conf, ...).
    pub config_file: Option<PathBuf>,
    /// Ceph options set after the file (SPDK's `config_param` / `config`), in order.
    pub config_param: Vec<(String, String)>,
    /// A keyring file (Ceph's `keyring` option).
    pub key_file: Option<PathBuf>,
    /// CPUs for librados'/librbd's threads, as SPDK's core mask text (`0x3`, `[0,2]`).
    pub core_mask: Option<String>,
    /// `rados_osd_op_timeout` in seconds, overriding the file and `config_param` (`None`: theirs,
    /// else 30 s). Requests stuck on a lost cluster fail with IOERR after this long.
    pub op_timeout: Option<u64>,
}

impl RbdClusterParams {
    /// The connection parameters of the `spinblk-rbd` crate.
    pub fn cluster_config(&self) -> Result<ClusterConfig, TargetError> {
        let mut options = self.config_param.clone();
        if let Some(k) = &self.key_file {
            options.push(("keyring".into(), k.display().to_string()));
        }
        let cpus = match &self.core_mask {
            Some(m) => Some(
                CoreMask::parse(m)
                    .map_err(|e| TargetError::Invalid(format!("core_mask: {e}")))?
                    .cores(),
            ),
            None => None,
        };
        Ok(ClusterConfig {
            user: self.user_id.clone().unwrap_or_else(|| "admin".into()),
            config_file: self.config_file.clone(),
            options,
            op_timeout: self.op_timeout.map(Duration::from_secs),
            cpus,
            ..ClusterConfig::default()
        })
    }

    /// `client.<user>` and where the configuration comes from, for messages.
    fn describe(&self) -> String {
        format!(
            "client.{} ({})",
            self.user_id.as_deref().unwrap_or("admin"),
            match &self.config_file {
                Some(f) => f.display().to_string(),
                None => "default ceph.conf search".into(),
            }
        )
    }
}

/// What an RBD bdev serves and how it reaches it (`BdevKind::Rbd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSpec {
    /// The pool.
    pub pool: String,
    /// The image.
    pub image: String,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Serve it read-only.
    pub read_only: bool,
    /// Its cluster.
    pub cluster: RbdClusterRef,
}

/// A registered cluster and its connection.
#[derive(Debug)]
pub struct RbdClusterEntry {
    name: String,
    params: RbdClusterParams,
    conn: RbdCluster,
}

impl RbdClusterEntry {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it was registered.
    pub fn params(&self) -> &RbdClusterParams {
        &self.params
    }

    /// The connection its images share.
    pub fn connection(&self) -> &RbdCluster {
        &self.conn
    }
}

enum ClusterSlot {
    /// Being connected or unregistered (slow, outside the lock).
    Busy,
    Ready(Arc<RbdClusterEntry>),
}

/// A connection shared by images with the same direct parameters; the per-parameter-set lock
/// makes concurrent creates wait for one connect instead of making two.
type DirectSlot = Arc<Mutex<WeakRbdCluster>>;

/// An image's header changed (a resize by any client): re-read its size.
struct Changed {
    entry: Weak<BdevEntry>,
    image: Weak<RbdBdev>,
}

/// The RBD part of a [`Target`].
#[derive(Default)]
pub(crate) struct RbdState {
    clusters: Mutex<BTreeMap<String, ClusterSlot>>,
    direct: Mutex<Vec<(RbdClusterParams, DirectSlot)>>,
    /// Open images, by bdev name.
    images: Mutex<BTreeMap<String, Arc<RbdBdev>>>,
    watcher: Mutex<Option<crossbeam_channel::Sender<Changed>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rbd_error(what: impl Into<String>, error: RbdError) -> TargetError {
    TargetError::Rbd {
        what: what.into(),
        error,
    }
}

impl RbdState {
    /// The connection for `cluster`: a registered one, or a shared direct one (connecting if
    /// none is open). Blocks while connecting.
    fn connection(&self, cluster: &RbdClusterRef, bdev: &str) -> Result<RbdCluster, TargetError> {
        match cluster {
            RbdClusterRef::Registered(name) => match lock(&self.clusters).get(name) {
                Some(ClusterSlot::Ready(c)) => Ok(c.conn.clone()),
                Some(ClusterSlot::Busy) => Err(TargetError::Busy(format!(
                    "rbd cluster '{name}' is being registered or unregistered"
                ))),
                None => Err(TargetError::NotFound {
                    what: "rbd cluster",
                    name: name.clone(),
                }),
            },
            RbdClusterRef::Direct(params) => {
                let config = params.cluster_config()?;
                let slot = {
                    let mut direct = lock(&self.direct);
                    // Forget parameter sets whose connection is gone and that nobody waits on.
                    direct.retain(|(_, s)| Arc::strong_count(s) > 1 || lock(s).upgrade().is_some());
                    match direct.iter().find(|(p, _)| p == params) {
                        Some((_, s)) => Arc::clone(s),
                        None => {
                            let s: DirectSlot = Arc::default();
                            direct.push((params.clone(), Arc::clone(&s)));
                            s
                        }
                    }
                };
                let mut weak = lock(&slot);
                if let Some(conn) = weak.upgrade() {
                    return Ok(conn);
                }
                let conn = RbdCluster::connect(&config)
                    .map_err(|e| rbd_error(format!("bdev '{bdev}'"), e))?;
                *weak = conn.downgrade();
                Ok(conn)
            }
        }
    }

    /// The bdevs whose image uses the registered cluster `name`.
    fn cluster_users(&self, name: &str) -> Vec<String> {
        let conn = match lock(&self.clusters).get(name) {
            Some(ClusterSlot::Ready(c)) => c.conn.clone(),
            _ => return Vec::new(),
        };
        lock(&self.images)
            .iter()
            .filter(|(_, i)| i.cluster().same_connection(&conn))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Tells the watcher thread (started on first use) that `image`'s header changed.
    fn watch(&self, entry: &Arc<BdevEntry>, image: &Arc<RbdBdev>) {
        let tx = {
            let mut w = lock(&self.watcher);
            match &*w {
                Some(tx) => tx.clone(),
                None => {
                    let (tx, rx) = crossbeam_channel::unbounded::<Changed>();
                    let spawned =
                        std::thread::Builder::new()
                            .name("rbd-watch".into())
                            .spawn(move || {
                                for c in rx {
                                    refresh(&c);
                                }
                            });
                    if let Err(e) = spawned {
                        warn!(
                            "rbd: no watcher thread ({e}): resizes by other clients are not seen"
                        );
                        return;
                    }
                    *w = Some(tx.clone());
                    tx
                }
            }
        };
        let (e, i) = (Arc::downgrade(entry), Arc::downgrade(image));
        image.set_change_notifier(move || {
            let _ = tx.send(Changed {
                entry: e.clone(),
                image: i.clone(),
            });
        });
    }
}

/// The watcher's work: re-read the size of a changed image ([`BdevEntry::rescan`]): a new size
/// goes to the controllers (`Resized`), which tell their guests. A smaller size is not applied
/// while the image is served (requests the guest already sent would fail); it is logged.
fn refresh(c: &Changed) {
    let (Some(entry), Some(image)) = (c.entry.upgrade(), c.image.upgrade()) else {
        return;
    };
    let bs = u64::from(image.block_size());
    match entry.rescan(false) {
        Ok(r) if r.changed() => info!(
            "bdev {}: image {} resized by another client: {} -> {} bytes",
            entry.name(),
            image.spec(),
            r.old_blocks * bs,
            r.num_blocks * bs
        ),
        Ok(_) => {}
        Err(e) => warn!("bdev {}: image {} changed: {e}", entry.name(), image.spec()),
    }
}

impl Target {
    /// Connects to a cluster and registers it as `name` (SPDK's `bdev_rbd_register_cluster`).
    /// Blocks while connecting (up to the mount timeout), with the name reserved.
    pub fn register_rbd_cluster(
        &self,
        name: &str,
        params: RbdClusterParams,
    ) -> Result<Arc<RbdClusterEntry>, TargetError> {
        check_name("rbd cluster", name)?;
        let config = params.cluster_config()?;
        {
            let mut clusters = lock(&self.rbd.clusters);
            if clusters.contains_key(name) {
                return Err(TargetError::Exists {
                    what: "rbd cluster",
                    name: name.to_string(),
                });
            }
            clusters.insert(name.to_string(), ClusterSlot::Busy);
        }
        let t = Instant::now();
        let made = RbdCluster::connect(&config);
        let mut clusters = lock(&self.rbd.clusters);
        match made {
            Ok(conn) => {
                info!(
                    "rbd cluster {name}: connected as {} in {:?} (client.{})",
                    params.describe(),
                    t.elapsed(),
                    conn.instance_id()
                );
                let entry = Arc::new(RbdClusterEntry {
                    name: name.to_string(),
                    params,
                    conn,
                });
                clusters.insert(name.to_string(), ClusterSlot::Ready(Arc::clone(&entry)));
                Ok(entry)
            }
            Err(e) => {
                clusters.remove(name);
                Err(rbd_error(format!("rbd cluster '{name}'"), e))
            }
        }
    }

    /// Unregisters cluster `name` and closes its connection; refused while an image uses it.
    pub fn unregister_rbd_cluster(&self, name: &str) -> Result<(), TargetError> {
        let users = self.rbd.cluster_users(name);
        let mut clusters = lock(&self.rbd.clusters);
        match clusters.get(name) {
            None => Err(TargetError::NotFound {
                what: "rbd cluster",
                name: name.to_string(),
            }),
            Some(ClusterSlot::Busy) => Err(TargetError::Busy(format!(
                "rbd cluster '{name}' is being registered or unregistered"
            ))),
            Some(ClusterSlot::Ready(_)) if !users.is_empty() => Err(TargetError::Busy(format!(
                "rbd cluster '{name}' is used by bdev{} {}; delete {} first",
                if users.len() == 1 { "" } else { "s" },
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" }
            ))),
            Some(ClusterSlot::Ready(_)) => {
                clusters.remove(name);
                info!("rbd cluster {name}: unregistered");
                Ok(())
            }
        }
    }

    /// The registered clusters, by name.
    pub fn rbd_clusters(&self) -> Vec<Arc<RbdClusterEntry>> {
        lock(&self.rbd.clusters)
            .values()
            .filter_map(|s| match s {
                ClusterSlot::Ready(c) => Some(Arc::clone(c)),
                ClusterSlot::Busy => None,
            })
            .collect()
    }

    /// The open image behind RBD bdev `name`.
    pub fn rbd_image(&self, name: &str) -> Option<Arc<RbdBdev>> {
        let name = self.bdevs().get(name).map(|e| e.name().to_string())?;
        lock(&self.rbd.images).get(&name).cloned()
    }

    /// Creates an RBD bdev (called by [`Target::create_bdev`] for [`BdevKind::Rbd`]): connects
    /// (or shares a connection) and opens the image, with the name reserved and no lock held.
    pub(crate) fn create_rbd_bdev(
        &self,
        params: BdevParams,
    ) -> Result<Arc<BdevEntry>, TargetError> {
        let BdevKind::Rbd(spec) = params.kind.clone() else {
            return Err(TargetError::Invalid("not an rbd bdev".into()));
        };
        let name = params.name.clone();
        let t = Instant::now();
        let mut opened = None;
        let entry = self.bdevs().create_with(params, |p| {
            let conn = self.rbd.connection(&spec.cluster, &p.name)?;
            let config = RbdImageConfig {
                name: p.name.clone(),
                pool: spec.pool.clone(),
                image: spec.image.clone(),
                block_size: spec.block_size,
                read_only: spec.read_only,
            };
            let image = RbdBdev::open(&conn, config)
                .map_err(|e| rbd_error(format!("bdev '{}'", p.name), e))?;
            let image = Arc::new(image);
            lock(&self.rbd.images).insert(p.name.clone(), Arc::clone(&image));
            opened = Some(Arc::clone(&image));
            Ok(image as Arc<dyn Bdev>)
        })?;
        if let Some(image) = opened {
            info!(
                "bdev {name}: rbd image {} opened in {:?} through client.{}",
                image.spec(),
                t.elapsed(),
                image.cluster().instance_id()
            );
            self.rbd.watch(&entry, &image);
        }
        Ok(entry)
    }

    /// After bdev `name` left the registry: flushes and closes its image, if it is one. The
    /// channels of the controllers that served it may take a moment to go (their reactors drop
    /// them after the queues stopped): wait for that, up to the close timeout.
    pub(crate) fn release_rbd_bdev(&self, name: &str) -> Result<(), TargetError> {
        let Some(image) = lock(&self.rbd.images).remove(name) else {
            return Ok(());
        };
        close_image(name, &image).map(|_| ())
    }

    /// After controller `name` of bdev `entry` was deleted: flushes the image, so what its
    /// guest wrote is in the cluster although the bdev stays open. A failure is logged.
    pub(crate) fn flush_rbd_after_controller(&self, controller: &str, entry: &BdevEntry) {
        let Some(image) = lock(&self.rbd.images).get(entry.name()).cloned() else {
            return;
        };
        let t = Instant::now();
        match image.flush() {
            Ok(()) => info!(
                "controller {controller}: rbd image {} flushed in {:?}",
                image.spec(),
                t.elapsed()
            ),
            Err(e) => error!("controller {controller}: bdev {}: {e}", entry.name()),
        }
    }

    /// Flushes and closes every RBD image (after [`Target::shutdown`] deleted the controllers):
    /// `(bdev, how long it took or why it failed)` per image. The bdevs stay registered.
    pub fn close_rbd_images(&self) -> Vec<(String, Result<Duration, TargetError>)> {
        let images: Vec<(String, Arc<RbdBdev>)> = lock(&self.rbd.images)
            .iter()
            .map(|(n, i)| (n.clone(), Arc::clone(i)))
            .collect();
        images
            .into_iter()
            .map(|(name, image)| {
                let r = close_image(&name, &image);
                (name, r)
            })
            .collect()
    }

    /// Grows RBD bdev `name` to `new_size` bytes (SPDK's `bdev_rbd_resize`: a smaller size is
    /// refused) and tells its controllers, which tell their guests ([`Target::resize_bdev`]).
    /// Blocks on the cluster.
    pub fn resize_rbd_bdev(&self, name: &str, new_size: u64) -> Result<u64, TargetError> {
        let entry = self
            .bdevs()
            .get(name)
            .ok_or_else(|| TargetError::NotFound {
                what: "bdev",
                name: name.to_string(),
            })?;
        let image = lock(&self.rbd.images)
            .get(entry.name())
            .cloned()
            .ok_or_else(|| TargetError::NotFound {
                what: "rbd bdev",
                name: name.to_string(),
            })?;
        let current = image.size_bytes();
        if new_size < current {
            return Err(TargetError::Invalid(format!(
                "bdev '{name}': the new size ({new_size} bytes) is smaller than the current one \
                 ({current} bytes); an rbd bdev only grows"
            )));
        }
        self.resize_bdev(entry.name(), new_size, false)?;
        Ok(image.size_bytes())
    }
}

/// Flushes and closes `image`, waiting first (up to its close timeout) for channels that are
/// still being dropped; returns how long the close took.
fn close_image(name: &str, image: &RbdBdev) -> Result<Duration, TargetError> {
    let t = Instant::now();
    let wait = image
        .call_timeout()
        .unwrap_or(Duration::from_secs(60))
        .min(Duration::from_secs(60));
    loop {
        match image.close() {
            Ok(()) => {
                let took = t.elapsed();
                info!(
                    "bdev {name}: rbd image {} flushed and closed in {took:?}",
                    image.spec()
                );
                return Ok(took);
            }
            Err(RbdError::Busy { .. }) if t.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                error!("bdev {name}: {e}");
                return Err(rbd_error(format!("bdev '{name}'"), e));
            }
        }
    }
}
