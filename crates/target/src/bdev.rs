//! The bdev registry: every block device the target serves, by name, with its uuid, how it was
//! made (so the configuration can be saved and rebuilt), which controllers claim it, the
//! statistics of controllers that used it and are gone, its QoS settings, and an event hook
//! through which a bdev tells its users that it changed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use spinblk_bdev::QosLimits;
use spinblk_bdev::{
    Bdev, BdevError, IoOp, MallocBdev, NullBdev, NvmeBdev, NvmeOptions, QosLimiter, UringBdev,
    UringOptions,
};
use spinblk_protocol::QueueStats;

use crate::error::TargetError;
use crate::uuid::Uuid;

/// Which SPDK module name a file bdev was created through. Both are served by spinblk's
/// io_uring file bdev; the name is kept so the saved configuration uses the same method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFlavor {
    /// `bdev_aio_create`.
    Aio,
    /// `bdev_uring_create` (and the CLI's `--file`).
    Uring,
}

/// What a bdev is and the parameters it was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdevKind {
    /// RAM disk.
    Malloc {
        /// Capacity in blocks.
        num_blocks: u64,
        /// Block size in bytes.
        block_size: u32,
    },
    /// Reads zeroes (or leaves read buffers as they were), drops writes.
    Null {
        /// Capacity in blocks.
        num_blocks: u64,
        /// Block size in bytes.
        block_size: u32,
        /// Reads fill the buffer with zeroes; false leaves it untouched (SPDK's null bdev).
        read_zeroes: bool,
    },
    /// A regular file or block device through io_uring.
    File {
        /// The SPDK method it was created with.
        flavor: FileFlavor,
        /// The file or device.
        path: PathBuf,
        /// Block size asked for (`None`: the device's).
        block_size: Option<u32>,
        /// Opened read-only.
        readonly: bool,
        /// Opened through the page cache.
        buffered: bool,
    },
    /// An NVMe namespace's generic char device through io_uring passthrough.
    Nvme {
        /// /dev/ngXnY.
        path: PathBuf,
        /// IOPOLL ring.
        poll: bool,
        /// Opened read-only.
        readonly: bool,
    },
    /// A Ceph RBD image through librbd.
    Rbd(crate::rbd::RbdSpec),
}

impl BdevKind {
    /// The module name, as `bdev_<module>_create` / `_delete` use it.
    pub fn module(&self) -> &'static str {
        match self {
            BdevKind::Malloc { .. } => "malloc",
            BdevKind::Null { .. } => "null",
            BdevKind::File {
                flavor: FileFlavor::Aio,
                ..
            } => "aio",
            BdevKind::File { .. } => "uring",
            BdevKind::Nvme { .. } => "nvme",
            BdevKind::Rbd(_) => "rbd",
        }
    }

    /// SPDK's product name for bdevs of this module.
    pub fn product_name(&self) -> &'static str {
        match self {
            BdevKind::Malloc { .. } => "Malloc disk",
            BdevKind::Null { .. } => "Null disk",
            BdevKind::File {
                flavor: FileFlavor::Aio,
                ..
            } => "AIO disk",
            BdevKind::File { .. } => "URING bdev",
            BdevKind::Nvme { .. } => "NVMe passthrough disk",
            BdevKind::Rbd(_) => "Ceph Rbd Disk",
        }
    }

    /// Whether a bdev of this kind was asked to be read-only.
    pub fn readonly(&self) -> bool {
        match self {
            BdevKind::File { readonly, .. } | BdevKind::Nvme { readonly, .. } => *readonly,
            BdevKind::Rbd(spec) => spec.read_only,
            _ => false,
        }
    }
}

/// Everything needed to create a bdev.
#[derive(Debug, Clone)]
pub struct BdevParams {
    /// Unique name.
    pub name: String,
    /// Fixed uuid (a saved configuration passes it back); `None` generates one.
    pub uuid: Option<Uuid>,
    /// What to make.
    pub kind: BdevKind,
    /// Controllers start in write-back mode (the default); `false`: every write is durable
    /// when it completes until the guest turns the cache on.
    pub write_cache: bool,
    /// Several writable controllers may serve it (their guests must coordinate).
    pub shared: bool,
    /// I/O limits from the start (SPDK's rounding already applied: see
    /// [`QosUpdate`](crate::QosUpdate)); the default is none.
    pub qos: QosLimits,
}

impl BdevParams {
    /// Parameters with the defaults: generated uuid, write cache on, not shared, no limits.
    pub fn new(name: impl Into<String>, kind: BdevKind) -> BdevParams {
        BdevParams {
            name: name.into(),
            uuid: None,
            kind,
            write_cache: true,
            shared: false,
            qos: QosLimits::default(),
        }
    }
}

/// Something that happened to a bdev that its users (controllers) must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdevEvent {
    /// The capacity changed; the controllers update their config space and tell the guest.
    Resized {
        /// New capacity in blocks.
        num_blocks: u64,
    },
    /// The QoS limits changed: the controllers hand the bdev's limiter
    /// ([`BdevEntry::qos_limiter`]) to their queues, or take it away when no limit is left.
    QosChanged(QosLimits),
    /// The bdev is going away (only ever sent when no controller claims it).
    Removed,
}

/// Identifies one subscription to a bdev's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerId(u64);

type Listener = Arc<dyn Fn(&BdevEvent) + Send + Sync>;

/// A controller's claim on a bdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The controller's name.
    pub controller: String,
    /// Whether that controller only reads.
    pub readonly: bool,
}

struct BdevState {
    claims: Vec<Claim>,
    write_cache: bool,
    shared: bool,
    qos: QosLimits,
    /// Statistics of the controllers that used this bdev and have been deleted.
    retired: QueueStats,
    listeners: Vec<(ListenerId, Listener)>,
}

/// One registered bdev.
pub struct BdevEntry {
    name: String,
    uuid: Uuid,
    kind: BdevKind,
    bdev: Arc<dyn Bdev>,
    state: Mutex<BdevState>,
    next_listener: AtomicU64,
    /// The one limiter of this bdev, shared by every queue of every controller that serves it
    /// while a limit is set.
    limiter: Arc<QosLimiter>,
    /// Held while a change (resize, rescan, QoS) is applied and its event delivered, and while
    /// a new listener subscribes and learns the current state: listeners see changes in the
    /// order they were made, and a new one misses none.
    changes: Mutex<()>,
}

/// What a resize or rescan did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    /// Capacity before, in blocks.
    pub old_blocks: u64,
    /// Capacity now, in blocks.
    pub num_blocks: u64,
}

impl Resized {
    /// Whether the capacity changed.
    pub fn changed(&self) -> bool {
        self.old_blocks != self.num_blocks
    }
}

impl std::fmt::Debug for BdevEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevEntry")
            .field("name", &self.name)
            .field("uuid", &self.uuid)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BdevEntry {
    /// The bdev's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its uuid.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// How it was made.
    pub fn kind(&self) -> &BdevKind {
        &self.kind
    }

    /// The block device itself.
    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }

    /// Whether the device takes writes (a read-only file or namespace does not).
    pub fn writable(&self) -> bool {
        self.bdev.supports(IoOp::Write)
    }

    /// The controllers that claim it now.
    pub fn claims(&self) -> Vec<Claim> {
        lock(&self.state).claims.clone()
    }

    /// Whether controllers start in write-back mode.
    pub fn write_cache(&self) -> bool {
        lock(&self.state).write_cache
    }

    /// Whether several writable controllers may serve it.
    pub fn shared(&self) -> bool {
        lock(&self.state).shared
    }

    /// Changes the write-cache mode and the sharing flag; they apply to controllers created
    /// from now on.
    pub fn set_options(&self, write_cache: Option<bool>, shared: Option<bool>) {
        let mut st = lock(&self.state);
        if let Some(w) = write_cache {
            st.write_cache = w;
        }
        if let Some(s) = shared {
            st.shared = s;
        }
    }

    /// Its QoS limits.
    pub fn qos(&self) -> QosLimits {
        lock(&self.state).qos
    }

    /// Stores new QoS limits, applies them to the bdev's limiter at once (every queue that
    /// holds it follows within a time slice) and tells the users, which hand the limiter to
    /// their queues or take it away.
    pub fn set_qos(&self, limits: QosLimits) {
        let _order = lock(&self.changes);
        lock(&self.state).qos = limits;
        self.limiter.set_limits(limits);
        self.notify(&BdevEvent::QosChanged(limits));
    }

    /// The limiter the data path must use: `None` while no limit is set (a queue without a
    /// limiter pays one branch per request).
    pub fn qos_limiter(&self) -> Option<Arc<QosLimiter>> {
        lock(&self.state)
            .qos
            .any()
            .then(|| Arc::clone(&self.limiter))
    }

    /// Claimed by at least one controller: the names.
    fn claimed_by(st: &BdevState) -> Option<String> {
        (!st.claims.is_empty()).then(|| {
            st.claims
                .iter()
                .map(|c| c.controller.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    fn bdev_error(&self, error: BdevError) -> TargetError {
        TargetError::Bdev {
            name: self.name.clone(),
            error,
        }
    }

    /// Changes the capacity to `new_size_bytes` ([`Bdev::resize`]: malloc grows within its
    /// reserve, null takes any size) and tells the controllers (`Resized`), which update their
    /// guests. A shrink is refused while a controller serves the bdev, unless `force` (requests
    /// the guest already sent beyond the new end then fail).
    pub fn resize(&self, new_size_bytes: u64, force: bool) -> Result<Resized, TargetError> {
        let _order = lock(&self.changes);
        let old_blocks = self.bdev.num_blocks();
        let old = self.bdev.size_bytes();
        if new_size_bytes < old {
            // Under the state lock, so no controller claims it between the check and the
            // shrink.
            let st = lock(&self.state);
            if let (Some(by), false) = (Self::claimed_by(&st), force) {
                return Err(TargetError::Busy(format!(
                    "bdev '{}' is served by {by}: shrinking it from {old} to {new_size_bytes} \
                     bytes is refused (force to shrink anyway)",
                    self.name
                )));
            }
            self.bdev
                .resize(new_size_bytes)
                .map_err(|e| self.bdev_error(e))?;
        } else if new_size_bytes > old {
            self.bdev
                .resize(new_size_bytes)
                .map_err(|e| self.bdev_error(e))?;
        }
        self.resized(old_blocks)
    }

    /// Re-reads the size of the backing file or device ([`Bdev::rescan`]; SPDK's
    /// `bdev_aio_rescan`) and tells the controllers if it changed. A file that shrank is
    /// refused while a controller serves the bdev, unless `force`.
    pub fn rescan(&self, force: bool) -> Result<Resized, TargetError> {
        let _order = lock(&self.changes);
        let old_blocks = self.bdev.num_blocks();
        match self.bdev.rescan() {
            Ok(_) => {}
            Err(BdevError::Shrunk { current, found }) => {
                let st = lock(&self.state);
                if let (Some(by), false) = (Self::claimed_by(&st), force) {
                    return Err(TargetError::Busy(format!(
                        "bdev '{}' is served by {by}: its backing store shrank from {current} \
                         to {found} bytes; not applied (force to apply)",
                        self.name
                    )));
                }
                self.bdev.rescan_forced().map_err(|e| self.bdev_error(e))?;
            }
            Err(e) => return Err(self.bdev_error(e)),
        }
        self.resized(old_blocks)
    }

    /// After a size change (under `changes`): the event, if the size did change.
    fn resized(&self, old_blocks: u64) -> Result<Resized, TargetError> {
        let num_blocks = self.bdev.num_blocks();
        let r = Resized {
            old_blocks,
            num_blocks,
        };
        if r.changed() {
            self.notify(&BdevEvent::Resized { num_blocks });
        }
        Ok(r)
    }

    /// Statistics of deleted controllers that used this bdev.
    pub fn retired_stats(&self) -> QueueStats {
        lock(&self.state).retired.clone()
    }

    /// Calls `f` for every event from now on, until [`BdevEntry::unsubscribe`].
    pub fn subscribe(&self, f: impl Fn(&BdevEvent) + Send + Sync + 'static) -> ListenerId {
        let id = ListenerId(self.next_listener.fetch_add(1, Ordering::Relaxed));
        lock(&self.state).listeners.push((id, Arc::new(f)));
        id
    }

    /// Like [`subscribe`](BdevEntry::subscribe), and in the same step (no change can come in
    /// between) calls `f` with the bdev's current state: `Resized` with its capacity now and
    /// `QosChanged` with its limits now. A new controller catches up this way with whatever
    /// changed since it read the bdev's size.
    pub fn subscribe_current(&self, f: impl Fn(&BdevEvent) + Send + Sync + 'static) -> ListenerId {
        let _order = lock(&self.changes);
        f(&BdevEvent::Resized {
            num_blocks: self.bdev.num_blocks(),
        });
        f(&BdevEvent::QosChanged(self.qos()));
        self.subscribe(f)
    }

    /// Stops calling the listener `id`.
    pub fn unsubscribe(&self, id: ListenerId) {
        lock(&self.state).listeners.retain(|(l, _)| *l != id);
    }

    /// Delivers `event` to every listener (outside the bdev's lock, so a listener may call
    /// back into the entry).
    pub fn notify(&self, event: &BdevEvent) {
        let listeners: Vec<Listener> = lock(&self.state)
            .listeners
            .iter()
            .map(|(_, l)| Arc::clone(l))
            .collect();
        for l in listeners {
            l(event);
        }
    }

    /// Claims the bdev for `controller`. Refused when a writable controller would share a
    /// bdev that is not marked shared with another controller (unless all of them only read),
    /// or when a writable controller asks for a read-only device.
    pub(crate) fn claim(&self, controller: &str, readonly: bool) -> Result<(), TargetError> {
        if !readonly && !self.writable() {
            return Err(TargetError::Invalid(format!(
                "bdev '{}' is read-only; create the controller with readonly",
                self.name
            )));
        }
        let mut st = lock(&self.state);
        let writers = st.claims.iter().filter(|c| !c.readonly).count() + usize::from(!readonly);
        if !st.shared && !st.claims.is_empty() && writers > 0 {
            let by: Vec<String> = st.claims.iter().map(|c| c.controller.clone()).collect();
            return Err(TargetError::Invalid(format!(
                "bdev '{}' is already served by {}; a second controller needs all of them readonly, or the bdev marked shared",
                self.name,
                by.join(", ")
            )));
        }
        st.claims.push(Claim {
            controller: controller.to_string(),
            readonly,
        });
        Ok(())
    }

    /// Releases `controller`'s claim and keeps its final statistics.
    pub(crate) fn release(&self, controller: &str, final_stats: Option<&QueueStats>) {
        let mut st = lock(&self.state);
        st.claims.retain(|c| c.controller != controller);
        if let Some(s) = final_stats {
            st.retired.merge(s);
        }
    }
}

enum Slot {
    /// Being created (slow opens happen outside the registry lock).
    Creating,
    /// Being deleted.
    Deleting,
    Ready(Arc<BdevEntry>),
}

/// All bdevs, by name.
#[derive(Default)]
pub struct BdevRegistry {
    map: Mutex<BTreeMap<String, Slot>>,
}

/// Checks a bdev or controller name: 1 to 255 bytes of printable ASCII without `/`.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), TargetError> {
    if name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || !name.chars().all(|c| c.is_ascii_graphic() && c != '/')
    {
        return Err(TargetError::Invalid(format!(
            "invalid {what} name '{name}': use 1 to 255 printable characters, no '/' or spaces"
        )));
    }
    Ok(())
}

fn make_bdev(p: &BdevParams) -> Result<Arc<dyn Bdev>, spinblk_bdev::BdevError> {
    Ok(match &p.kind {
        BdevKind::Malloc {
            num_blocks,
            block_size,
        } => Arc::new(MallocBdev::new(
            &p.name,
            num_blocks.saturating_mul(u64::from(*block_size)),
            *block_size,
        )?),
        BdevKind::Null {
            num_blocks,
            block_size,
            read_zeroes,
        } => Arc::new(
            NullBdev::new(
                &p.name,
                num_blocks.saturating_mul(u64::from(*block_size)),
                *block_size,
            )?
            .read_zeroes(*read_zeroes),
        ),
        BdevKind::File {
            path,
            block_size,
            readonly,
            buffered,
            ..
        } => Arc::new(
            UringBdev::open(
                path,
                UringOptions {
                    block_size: *block_size,
                    buffered: *buffered,
                    read_only: *readonly,
                },
            )?
            .with_name(p.name.clone()),
        ),
        BdevKind::Nvme {
            path,
            poll,
            readonly,
        } => Arc::new(
            NvmeBdev::open(
                path,
                NvmeOptions {
                    poll: *poll,
                    read_only: *readonly,
                },
            )?
            .with_name(p.name.clone()),
        ),
        // Needs the target's cluster connections: Target::create_bdev opens it.
        BdevKind::Rbd(_) => {
            return Err(spinblk_bdev::BdevError::Unsupported(
                "rbd bdevs outside a target (create them through Target::create_bdev)",
            ))
        }
    })
}

impl BdevRegistry {
    /// Creates and registers a bdev. The name and uuid must be unused. Opening happens outside
    /// the registry lock, so a slow open does not hold up lookups.
    pub fn create(&self, params: BdevParams) -> Result<Arc<BdevEntry>, TargetError> {
        self.create_with(params, |p| {
            make_bdev(p).map_err(|error| TargetError::Bdev {
                name: p.name.clone(),
                error,
            })
        })
    }

    /// [`BdevRegistry::create`] with the device made by `make`, called with the name reserved
    /// and no lock held.
    pub(crate) fn create_with(
        &self,
        params: BdevParams,
        make: impl FnOnce(&BdevParams) -> Result<Arc<dyn Bdev>, TargetError>,
    ) -> Result<Arc<BdevEntry>, TargetError> {
        check_name("bdev", &params.name)?;
        let uuid = params.uuid.unwrap_or_else(Uuid::random);
        {
            let mut map = lock(&self.map);
            if map.contains_key(&params.name)
                || map
                    .values()
                    .any(|s| matches!(s, Slot::Ready(e) if e.uuid.to_string() == params.name))
            {
                return Err(TargetError::Exists {
                    what: "bdev",
                    name: params.name,
                });
            }
            if map
                .values()
                .any(|s| matches!(s, Slot::Ready(e) if e.uuid == uuid))
            {
                return Err(TargetError::Exists {
                    what: "bdev with uuid",
                    name: uuid.to_string(),
                });
            }
            map.insert(params.name.clone(), Slot::Creating);
        }
        let made = make(&params);
        let mut map = lock(&self.map);
        match made {
            Ok(bdev) => {
                let entry = Arc::new(BdevEntry {
                    name: params.name.clone(),
                    uuid,
                    kind: params.kind,
                    bdev,
                    state: Mutex::new(BdevState {
                        claims: Vec::new(),
                        write_cache: params.write_cache,
                        shared: params.shared,
                        qos: params.qos,
                        retired: QueueStats::default(),
                        listeners: Vec::new(),
                    }),
                    next_listener: AtomicU64::new(0),
                    limiter: Arc::new(QosLimiter::new(params.qos)),
                    changes: Mutex::new(()),
                });
                map.insert(params.name, Slot::Ready(Arc::clone(&entry)));
                Ok(entry)
            }
            Err(error) => {
                map.remove(&params.name);
                Err(error)
            }
        }
    }

    /// The bdev with this name (or uuid, as SPDK allows).
    pub fn get(&self, name: &str) -> Option<Arc<BdevEntry>> {
        let map = lock(&self.map);
        if let Some(Slot::Ready(e)) = map.get(name) {
            return Some(Arc::clone(e));
        }
        map.values().find_map(|s| match s {
            Slot::Ready(e) if e.uuid.to_string() == name => Some(Arc::clone(e)),
            _ => None,
        })
    }

    /// Every registered bdev, by name.
    pub fn list(&self) -> Vec<Arc<BdevEntry>> {
        lock(&self.map)
            .values()
            .filter_map(|s| match s {
                Slot::Ready(e) => Some(Arc::clone(e)),
                _ => None,
            })
            .collect()
    }

    /// Deletes bdev `name`, which must be of module `module` when given (`bdev_null_delete`
    /// on a malloc bdev finds no such null bdev, as in SPDK). Refused while claimed. The bdev
    /// is released (and its memory or file closed) once the last channel is gone.
    pub fn delete(&self, name: &str, module: Option<&str>) -> Result<(), TargetError> {
        let entry = {
            let mut map = lock(&self.map);
            let entry = match map.get(name) {
                Some(Slot::Ready(e)) => Arc::clone(e),
                Some(Slot::Creating | Slot::Deleting) => {
                    return Err(TargetError::Busy(format!(
                        "bdev '{name}' is being created or deleted"
                    )))
                }
                None => {
                    return Err(TargetError::NotFound {
                        what: "bdev",
                        name: name.to_string(),
                    })
                }
            };
            if module.is_some_and(|m| m != entry.kind.module()) {
                return Err(TargetError::NotFound {
                    what: match module {
                        Some("malloc") => "malloc bdev",
                        Some("null") => "null bdev",
                        Some("aio") => "aio bdev",
                        Some("uring") => "uring bdev",
                        Some("rbd") => "rbd bdev",
                        _ => "bdev of that kind",
                    },
                    name: name.to_string(),
                });
            }
            // Claims are taken under the entry lock; checking them under the registry lock as
            // well means no controller can claim it between this check and the removal.
            let claims = entry.claims();
            if !claims.is_empty() {
                return Err(TargetError::InUse {
                    bdev: name.to_string(),
                    by: claims.into_iter().map(|c| c.controller).collect(),
                });
            }
            map.insert(name.to_string(), Slot::Deleting);
            entry
        };
        entry.notify(&BdevEvent::Removed);
        lock(&self.map).remove(name);
        Ok(())
    }

    /// Looks up `name` and claims it for `controller` in one step, so the bdev cannot be
    /// deleted in between.
    pub(crate) fn claim(
        &self,
        name: &str,
        controller: &str,
        readonly: bool,
    ) -> Result<Arc<BdevEntry>, TargetError> {
        let map = lock(&self.map);
        let entry = match map.get(name) {
            Some(Slot::Ready(e)) => Arc::clone(e),
            Some(_) => {
                return Err(TargetError::Busy(format!(
                    "bdev '{name}' is being created or deleted"
                )))
            }
            None => map
                .values()
                .find_map(|s| match s {
                    Slot::Ready(e) if e.uuid.to_string() == name => Some(Arc::clone(e)),
                    _ => None,
                })
                .ok_or_else(|| TargetError::NotFound {
                    what: "bdev",
                    name: name.to_string(),
                })?,
        };
        entry.claim(controller, readonly)?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn null(name: &str) -> BdevParams {
        BdevParams::new(
            name,
            BdevKind::Null {
                num_blocks: 2048,
                block_size: 512,
                read_zeroes: true,
            },
        )
    }

    #[test]
    fn create_lookup_delete() {
        let reg = BdevRegistry::default();
        let a = reg.create(null("a")).expect("create");
        assert!(matches!(
            reg.create(null("a")),
            Err(TargetError::Exists { .. })
        ));
        let mut same_uuid = null("b");
        same_uuid.uuid = Some(a.uuid());
        assert!(matches!(
            reg.create(same_uuid),
            Err(TargetError::Exists { .. })
        ));
        assert!(reg.get("a").is_some());
        assert!(reg.get(&a.uuid().to_string()).is_some(), "lookup by uuid");
        assert!(matches!(
            reg.delete("a", Some("malloc")),
            Err(TargetError::NotFound { .. })
        ));
        assert!(matches!(
            reg.delete("zz", None),
            Err(TargetError::NotFound { .. })
        ));
        assert!(reg.create(null("bad/name")).is_err());
        assert!(reg.create(null("")).is_err());
        reg.delete("a", Some("null")).expect("delete");
        assert!(reg.get("a").is_none());
        assert!(reg.list().is_empty());
    }

    #[test]
    fn claims_block_delete_and_enforce_sharing() {
        let reg = BdevRegistry::default();
        reg.create(null("d")).expect("create");
        reg.claim("d", "c0", false).expect("first writer");
        let e = reg
            .claim("d", "c1", true)
            .expect_err("second user of a writable claim");
        assert_eq!(e.errno(), libc::EINVAL);
        match reg.delete("d", None) {
            Err(TargetError::InUse { by, .. }) => assert_eq!(by, vec!["c0".to_string()]),
            other => panic!("expected InUse, got {other:?}"),
        }
        let d = reg.get("d").expect("still there");
        let mut s = QueueStats::default();
        s.read.ops = 3;
        d.release("c0", Some(&s));
        assert_eq!(d.retired_stats().read.ops, 3);
        // Readers share; a shared bdev takes several writers.
        reg.claim("d", "r0", true).expect("reader");
        reg.claim("d", "r1", true).expect("reader");
        assert!(reg.claim("d", "w", false).is_err());
        d.set_options(None, Some(true));
        reg.claim("d", "w", false).expect("shared");
        for c in ["r0", "r1", "w"] {
            d.release(c, None);
        }
        reg.delete("d", None).expect("released");
    }

    #[test]
    fn events_reach_subscribers() {
        let reg = BdevRegistry::default();
        let e = reg.create(null("ev")).expect("create");
        let seen = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&seen);
        let id = e.subscribe(move |ev| {
            if matches!(ev, BdevEvent::Resized { num_blocks: 4096 }) {
                s.fetch_add(1, Ordering::SeqCst);
            }
        });
        e.notify(&BdevEvent::Resized { num_blocks: 4096 });
        e.unsubscribe(id);
        e.notify(&BdevEvent::Resized { num_blocks: 4096 });
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn resize_refuses_a_claimed_shrink_unless_forced_and_tells_listeners() {
        let reg = BdevRegistry::default();
        let e = reg.create(null("rs")).expect("create");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let id = e.subscribe_current(move |ev| lock(&s).push(ev.clone()));
        assert_eq!(
            lock(&seen).as_slice(),
            [
                BdevEvent::Resized { num_blocks: 2048 },
                BdevEvent::QosChanged(QosLimits::default())
            ],
            "a new listener learns the state now"
        );
        lock(&seen).clear();
        let r = e.resize(2 << 20, false).expect("grow");
        assert_eq!((r.old_blocks, r.num_blocks), (2048, 4096));
        assert_eq!(
            e.resize(2 << 20, false).map(|r| r.changed()).ok(),
            Some(false)
        );
        reg.claim("rs", "c0", false).expect("claim");
        let err = e.resize(1 << 20, false).expect_err("claimed shrink");
        assert_eq!(err.errno(), libc::EBUSY, "{err}");
        assert_eq!(e.bdev().num_blocks(), 4096, "not applied");
        e.resize(1 << 20, true).expect("forced shrink");
        e.release("c0", None);
        e.resize(512 << 10, false).expect("unclaimed shrink");
        assert!(e.resize(1000, false).is_err(), "not whole blocks");
        assert_eq!(
            lock(&seen).as_slice(),
            [
                BdevEvent::Resized { num_blocks: 4096 },
                BdevEvent::Resized { num_blocks: 2048 },
                BdevEvent::Resized { num_blocks: 1024 },
            ],
            "one event per change, none when unchanged or refused"
        );
        e.unsubscribe(id);
        // A file bdev cannot be resized, only rescanned; a null one has no file to rescan.
        assert!(e.rescan(false).is_err());
    }

    #[test]
    fn rescan_follows_the_file_and_refuses_a_claimed_shrink() {
        let dir =
            std::env::temp_dir().join(format!("spinblk-target-rescan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("disk.img");
        let f = std::fs::File::create(&path).expect("file");
        f.set_len(1 << 20).expect("size");
        let reg = BdevRegistry::default();
        let p = BdevParams::new(
            "f0",
            BdevKind::File {
                flavor: FileFlavor::Aio,
                path: path.clone(),
                block_size: Some(512),
                readonly: false,
                // Buffered: works on any filesystem the test directory is on.
                buffered: true,
            },
        );
        let e = reg.create(p).expect("create");
        let seen = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&seen);
        e.subscribe(move |ev| {
            if let BdevEvent::Resized { num_blocks } = ev {
                s.store(*num_blocks as usize, Ordering::SeqCst);
            }
        });
        f.set_len(3 << 20).expect("grow");
        let r = e.rescan(false).expect("rescan");
        assert_eq!(r.num_blocks, 6144);
        assert_eq!(seen.load(Ordering::SeqCst), 6144);
        reg.claim("f0", "c0", false).expect("claim");
        f.set_len(2 << 20).expect("shrink");
        let err = e.rescan(false).expect_err("claimed shrink");
        assert_eq!(err.errno(), libc::EBUSY, "{err}");
        assert_eq!(e.bdev().num_blocks(), 6144);
        assert_eq!(e.rescan(true).expect("forced").num_blocks, 4096);
        assert_eq!(seen.load(Ordering::SeqCst), 4096);
        e.release("c0", None);
        drop(f);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn qos_limiter_only_while_a_limit_is_set() {
        let reg = BdevRegistry::default();
        let mut p = null("q");
        p.qos.rw_ios_per_sec = 5000;
        let e = reg.create(p).expect("create");
        let first = e.qos_limiter().expect("limited from the start");
        assert_eq!(first.limits().rw_ios_per_sec, 5000);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        e.subscribe(move |ev| lock(&s).push(ev.clone()));
        let new = QosLimits {
            w_mbytes_per_sec: 10,
            ..Default::default()
        };
        e.set_qos(new);
        let again = e.qos_limiter().expect("still limited");
        assert!(Arc::ptr_eq(&first, &again), "one limiter per bdev");
        assert_eq!(again.limits(), new, "applied to the limiter at once");
        e.set_qos(QosLimits::default());
        assert!(
            e.qos_limiter().is_none(),
            "no limit: no limiter on the data path"
        );
        assert_eq!(
            lock(&seen).as_slice(),
            [
                BdevEvent::QosChanged(new),
                BdevEvent::QosChanged(QosLimits::default())
            ]
        );
    }
}
