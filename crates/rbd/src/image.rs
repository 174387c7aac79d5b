//! An open RBD image as a [`Bdev`].

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use spinblk_bdev::{Bdev, BdevError, IoChannel, IoOp};

use crate::channel::RbdChannel;
use crate::ffi::{self, RadosIoctxT, RbdCompletionT, RbdImageT};
use crate::{RbdCluster, RbdError};

/// Which image to open and how to present it: SPDK's `bdev_rbd_create` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdImageConfig {
    /// The bdev's name.
    pub name: String,
    /// The pool holding the image.
    pub pool: String,
    /// The image.
    pub image: String,
    /// Logical block size presented to the guest: 512 or 4096.
    pub block_size: u32,
    /// Serve it read-only (SPDK's `read_only`): writes, discards and write-zeroes are not
    /// offered.
    pub read_only: bool,
}

impl RbdImageConfig {
    /// `pool/image` with 512-byte blocks, named `name`.
    pub fn new(name: &str, pool: &str, image: &str) -> Self {
        RbdImageConfig {
            name: name.into(),
            pool: pool.into(),
            image: image.into(),
            block_size: 512,
            read_only: false,
        }
    }
}

/// The librbd handle of one image, shared by the bdev and its channels.
pub(crate) struct ImageHandle {
    pub(crate) image: RbdImageT,
    ioctx: RadosIoctxT,
    /// Whether the image has been closed. Held across every control-plane librbd call so that
    /// none races `close`; the data path never takes it (a channel holds a reference, and
    /// `close` refuses while one exists).
    closed: Mutex<bool>,
    /// Keeps the rados handle alive (shut down after this image's ioctx is destroyed).
    pub(crate) cluster: RbdCluster,
    /// `pool/image`, for messages.
    pub(crate) spec: String,
    /// What librbd's header-update callback sets (kept alive as long as the handle).
    watch: Arc<HeaderWatch>,
    /// The update-watch registration, if librbd accepted it.
    watch_handle: Option<u64>,
}

/// Shared with librbd's header-update callback.
#[derive(Default)]
struct HeaderWatch {
    /// Set when librbd reports a header change (a resize by any client, a snapshot, ...);
    /// cleared by `refresh_size`.
    changed: AtomicBool,
    /// Called after `changed` is set.
    notify: Mutex<Option<ChangeNotifier>>,
}

/// See [`RbdBdev::set_change_notifier`].
type ChangeNotifier = Arc<dyn Fn() + Send + Sync>;

/// librbd's header-update callback (a librbd thread).
unsafe extern "C" fn on_header_update(arg: *mut c_void) {
    // SAFETY: `arg` is the `HeaderWatch` the image handle keeps alive until it has unregistered
    // this callback.
    let watch = unsafe { &*(arg as *const HeaderWatch) };
    watch.changed.store(true, Ordering::Release);
    let notify = watch
        .notify
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(f) = notify {
        f();
    }
}

// SAFETY: librbd's image handle is thread-safe (its own locks serialise state); the raw handles
// are only released once, in `close_locked`, under `closed`, when no channel holds this struct.
unsafe impl Send for ImageHandle {}
// SAFETY: as above.
unsafe impl Sync for ImageHandle {}

impl ImageHandle {
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.closed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the open image (under the close lock).
    fn with_open<R>(
        &self,
        f: impl FnOnce(RbdImageT) -> Result<R, RbdError>,
    ) -> Result<R, RbdError> {
        let closed = self.lock();
        if *closed {
            return Err(RbdError::Closed);
        }
        f(self.image)
    }

    /// How long a control-plane librbd call may take before the image is given up: the op
    /// timeout plus half of it (at least 2 s, at most 10 s) for what librbd chains after a
    /// failed request (`None`: no op timeout, wait forever).
    fn call_timeout(&self) -> Option<Duration> {
        let t = self.cluster.op_timeout();
        let margin = (t / 2).clamp(Duration::from_secs(2), Duration::from_secs(10));
        (!t.is_zero()).then(|| t + margin)
    }

    /// Flushes librbd's cache and closes the image, once; the caller holds the lock. Each step
    /// is bounded by [`Self::call_timeout`]: librbd's close waits for its header watch to be
    /// removed, which no op timeout bounds, so with the cluster gone it would block forever.
    /// On a timeout the image handle, its ioctx and the connection are leaked (librbd still
    /// uses them) and the error says so.
    fn close_locked(&self, closed: &mut bool) -> Result<(), RbdError> {
        if std::mem::replace(closed, true) {
            return Ok(());
        }
        let api = ffi::loaded();
        if let Some(h) = self.watch_handle {
            // SAFETY: the registration made in `open`; after this librbd no longer calls back.
            let r = unsafe { (api.rbd_update_unwatch)(self.image, h) };
            if r < 0 {
                log::warn!("rbd {}: update unwatch: errno {}", self.spec, -r);
            }
        }
        let timeout = self.call_timeout();
        let give_up = |what: String, after: Duration| {
            std::mem::forget(self.cluster.clone());
            RbdError::Timeout { what, after }
        };
        // SAFETY: the image is open and no request is in flight on it (no channel exists, and a
        // channel's Drop waits for its requests).
        let flushed = aio_wait(timeout, |c| unsafe { (api.rbd_aio_flush)(self.image, c) })?;
        let flushed = match flushed {
            Some(r) => r,
            None => {
                return Err(give_up(
                    format!("flush {}", self.spec),
                    timeout.unwrap_or_default(),
                ))
            }
        };
        // SAFETY: as above; the image is not used after this.
        let r = aio_wait(timeout, |c| unsafe { (api.rbd_aio_close)(self.image, c) })?;
        let Some(r) = r else {
            return Err(give_up(
                format!("close {}", self.spec),
                timeout.unwrap_or_default(),
            ));
        };
        // SAFETY: the image made from this ioctx is closed.
        unsafe { (api.rados_ioctx_destroy)(self.ioctx) };
        if flushed < 0 {
            return Err(RbdError::call(format!("flush {}", self.spec), flushed));
        }
        if r < 0 {
            return Err(RbdError::call(format!("close {}", self.spec), r));
        }
        Ok(())
    }

    pub(crate) fn size(&self) -> Result<u64, RbdError> {
        self.with_open(|image| {
            let mut size = 0u64;
            // SAFETY: open image (under the close lock), valid out-pointer.
            let r = unsafe { (ffi::loaded().rbd_get_size)(image, &mut size) };
            if r < 0 {
                return Err(RbdError::call(
                    format!("get the size of {}", self.spec),
                    r.into(),
                ));
            }
            Ok(size)
        })
    }
}

impl ImageHandle {
    /// Flushes librbd's write-back cache to the cluster, bounded by [`Self::call_timeout`].
    fn flush(&self) -> Result<(), RbdError> {
        self.with_open(|image| {
            let timeout = self.call_timeout();
            // SAFETY: open image (under the close lock); the completion outlives the call.
            let r = aio_wait(timeout, |c| unsafe {
                (ffi::loaded().rbd_aio_flush)(image, c)
            })?;
            match r {
                Some(r) if r < 0 => Err(RbdError::call(format!("flush {}", self.spec), r)),
                Some(_) => Ok(()),
                None => Err(RbdError::Timeout {
                    what: format!("flush {}", self.spec),
                    after: timeout.unwrap_or_default(),
                }),
            }
        })
    }
}

/// Where a control-plane aio call's result lands.
struct Waiter {
    result: Mutex<Option<i64>>,
    cv: Condvar,
}

/// Completion callback for [`aio_wait`] (a librbd thread).
unsafe extern "C" fn on_wait_complete(c: RbdCompletionT, arg: *mut c_void) {
    let api = ffi::loaded();
    // SAFETY: librbd is finishing `c`; read, then release it (nothing else refers to it).
    let ret = unsafe { (api.rbd_aio_get_return_value)(c) } as i64;
    // SAFETY: as above.
    unsafe { (api.rbd_aio_release)(c) };
    // SAFETY: `arg` is the reference `aio_wait` gave away with `Arc::into_raw`; taken back once.
    let waiter = unsafe { Arc::from_raw(arg as *const Waiter) };
    *waiter.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(ret);
    waiter.cv.notify_all();
}

/// Starts one librbd aio call with `start(completion)` and waits for it, up to `timeout`.
/// `Ok(Some(ret))`: librbd's return value (or `start`'s refusal); `Ok(None)`: it timed out (the
/// callback may still run later; its state stays alive until then).
fn aio_wait(
    timeout: Option<Duration>,
    start: impl FnOnce(RbdCompletionT) -> c_int,
) -> Result<Option<i64>, RbdError> {
    let api = ffi::loaded();
    let waiter = Arc::new(Waiter {
        result: Mutex::new(None),
        cv: Condvar::new(),
    });
    let arg = Arc::into_raw(Arc::clone(&waiter))
        .cast_mut()
        .cast::<c_void>();
    let mut c = RbdCompletionT::null();
    // SAFETY: `arg` stays valid until the callback takes it back; valid out-pointer.
    let r = unsafe { (api.rbd_aio_create_completion)(arg, Some(on_wait_complete), &mut c) };
    if r < 0 {
        // SAFETY: the callback will never run: take back the reference it would have owned.
        drop(unsafe { Arc::from_raw(arg as *const Waiter) });
        return Err(RbdError::call("create an rbd completion", r.into()));
    }
    let r = start(c);
    if r < 0 {
        // SAFETY: librbd refused the call, so the completion and the reference are still ours.
        unsafe { (api.rbd_aio_release)(c) };
        // SAFETY: as above.
        drop(unsafe { Arc::from_raw(arg as *const Waiter) });
        return Ok(Some(r.into()));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut result = waiter.result.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(r) = *result {
            return Ok(Some(r));
        }
        result = match deadline {
            None => waiter.cv.wait(result).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                waiter
                    .cv
                    .wait_timeout(result, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
}

impl Drop for ImageHandle {
    fn drop(&mut self) {
        let closed = self.closed.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut c = *closed;
        let result = self.close_locked(&mut c);
        if let Err(e) = result {
            log::error!("rbd: {e}");
        }
    }
}

/// A Ceph RBD image served as a bdev. Reads, writes, flushes, discards and (where librbd has
/// `rbd_aio_write_zeroes`) write-zeroes go to librbd's asynchronous API straight from the
/// request's iovecs; completions come back through each channel's lock-free queue and eventfd.
pub struct RbdBdev {
    config: RbdImageConfig,
    handle: Arc<ImageHandle>,
    /// The image size in bytes as last read from librbd.
    size: AtomicU64,
    write_zeroes: bool,
}

impl RbdBdev {
    /// Opens `config.pool/config.image` through `cluster`. Blocks on the network (up to the
    /// cluster's op timeout): call it on a control thread, never on a reactor.
    pub fn open(cluster: &RbdCluster, config: RbdImageConfig) -> Result<RbdBdev, RbdError> {
        let api = ffi::api()?;
        if config.block_size != 512 && config.block_size != 4096 {
            return Err(RbdError::Invalid(format!(
                "block size {} (must be 512 or 4096)",
                config.block_size
            )));
        }
        let spec = format!("{}/{}", config.pool, config.image);
        let c_pool = CString::new(config.pool.as_str())
            .map_err(|_| RbdError::Invalid(format!("pool name with a NUL byte: {spec:?}")))?;
        let c_image = CString::new(config.image.as_str())
            .map_err(|_| RbdError::Invalid(format!("image name with a NUL byte: {spec:?}")))?;
        let mut ioctx = RadosIoctxT::null();
        // SAFETY: connected handle, NUL-terminated pool name, valid out-pointer.
        let r =
            unsafe { (api.rados_ioctx_create)(cluster.inner.handle, c_pool.as_ptr(), &mut ioctx) };
        if r < 0 {
            return Err(RbdError::call(
                format!("open pool {}", config.pool),
                r.into(),
            ));
        }
        let mut image = RbdImageT::null();
        // SAFETY: valid ioctx, NUL-terminated image name, valid out-pointer; no snapshot.
        let r = unsafe { (api.rbd_open)(ioctx, c_image.as_ptr(), &mut image, std::ptr::null()) };
        if r < 0 {
            // SAFETY: the ioctx made above; nothing else uses it.
            unsafe { (api.rados_ioctx_destroy)(ioctx) };
            return Err(RbdError::call(format!("open image {spec}"), r.into()));
        }
        // Header changes (a resize by another client) are reported by librbd: register for them
        // before the first size read so none is missed.
        let watch = Arc::new(HeaderWatch::default());
        let mut h = 0u64;
        // SAFETY: open image; the callback argument stays alive in the handle until close
        // unregisters it.
        let r = unsafe {
            (api.rbd_update_watch)(
                image,
                &mut h,
                Some(on_header_update),
                Arc::as_ptr(&watch).cast_mut().cast(),
            )
        };
        if r < 0 {
            log::warn!("rbd {spec}: no header-update watch (errno {}): resizes by other clients are seen only on refresh", -r);
        }
        let handle = Arc::new(ImageHandle {
            image,
            ioctx,
            closed: Mutex::new(false),
            cluster: cluster.clone(),
            spec,
            watch,
            watch_handle: (r >= 0).then_some(h),
        });
        let size = handle.size()?;
        if size < u64::from(config.block_size) {
            return Err(RbdError::Invalid(format!(
                "image {} is {size} bytes, smaller than one {}-byte block",
                handle.spec, config.block_size
            )));
        }
        Ok(RbdBdev {
            write_zeroes: api.rbd_aio_write_zeroes.is_some(),
            config,
            handle,
            size: AtomicU64::new(size),
        })
    }

    /// The configuration this bdev was opened with.
    pub fn config(&self) -> &RbdImageConfig {
        &self.config
    }

    /// The cluster connection this image uses.
    pub fn cluster(&self) -> &RbdCluster {
        &self.handle.cluster
    }

    /// Re-reads the image size from librbd and returns it in bytes; [`Bdev::num_blocks`] then
    /// reports it. librbd re-reads the image header first when it has been told of a change,
    /// which goes to the cluster: call this on a control thread (the object model's rescan).
    pub fn refresh_size(&self) -> Result<u64, RbdError> {
        self.handle.watch.changed.store(false, Ordering::Release);
        let size = self.handle.size()?;
        self.size.store(size, Ordering::Release);
        Ok(size)
    }

    /// Resizes the image to `new_size` bytes (a multiple of the block size; growing or
    /// shrinking). Blocks on the cluster: control thread only.
    pub fn resize(&self, new_size: u64) -> Result<(), RbdError> {
        let bs = u64::from(self.config.block_size);
        // Block sizes are powers of two.
        if new_size < bs || new_size & (bs - 1) != 0 {
            return Err(RbdError::Invalid(format!(
                "new size {new_size} is not a non-zero multiple of the block size {bs}"
            )));
        }
        self.handle.with_open(|image| {
            // SAFETY: open image (under the close lock).
            let r = unsafe { (ffi::loaded().rbd_resize)(image, new_size) };
            if r < 0 {
                return Err(RbdError::call(
                    format!("resize {} to {new_size} bytes", self.handle.spec),
                    r.into(),
                ));
            }
            Ok(())
        })?;
        self.refresh_size().map(|_| ())
    }

    /// Re-reads the size (see [`RbdBdev::refresh_size`]); a smaller size than served now is
    /// applied only when `force`, else reported as [`BdevError::Shrunk`].
    fn rescan_with(&self, force: bool) -> Result<u64, BdevError> {
        let current = self.size.load(Ordering::Acquire);
        self.handle.watch.changed.store(false, Ordering::Release);
        let found = self.handle.size()?;
        if found < current && !force {
            return Err(BdevError::Shrunk { current, found });
        }
        if found < u64::from(self.config.block_size) {
            return Err(BdevError::InvalidGeometry(format!(
                "image {} is {found} bytes, smaller than one block",
                self.handle.spec
            )));
        }
        self.size.store(found, Ordering::Release);
        Ok(found)
    }

    /// Writes librbd's write-back cache to the cluster and waits for it (up to the op timeout
    /// plus a margin: a lost cluster gives [`RbdError::Timeout`]). Blocks: control thread only.
    pub fn flush(&self) -> Result<(), RbdError> {
        self.handle.flush()
    }

    /// How long [`RbdBdev::flush`] and [`RbdBdev::close`] wait for each step at most (`None`:
    /// no op timeout, forever).
    pub fn call_timeout(&self) -> Option<Duration> {
        self.handle.call_timeout()
    }

    /// Whether the image has been closed.
    pub fn is_closed(&self) -> bool {
        *self.handle.lock()
    }

    /// How many I/O channels are open on the image.
    pub fn channels(&self) -> usize {
        Arc::strong_count(&self.handle) - 1
    }

    /// `pool/image`.
    pub fn spec(&self) -> &str {
        &self.handle.spec
    }

    /// Whether librbd reported a change of the image header (a resize by any client, a
    /// snapshot) since the last [`RbdBdev::refresh_size`].
    pub fn header_changed(&self) -> bool {
        self.handle.watch.changed.load(Ordering::Acquire)
    }

    /// Sets the function librbd's header-update callback calls (on a librbd thread) after
    /// [`RbdBdev::header_changed`] becomes true: it must be quick and must not call into this
    /// bdev; send a message to a control thread that then calls [`RbdBdev::refresh_size`] (and
    /// tells the guest of a new capacity).
    pub fn set_change_notifier(&self, notify: impl Fn() + Send + Sync + 'static) {
        *self
            .handle
            .watch
            .notify
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(notify));
    }

    /// Flushes librbd's write-back cache and closes the image, reporting any error. Fails with
    /// [`RbdError::Busy`] while I/O channels are open (drop them first: a channel waits for its
    /// requests when dropped). Idempotent; dropping the bdev does the same and logs errors.
    pub fn close(&self) -> Result<(), RbdError> {
        let mut closed = self.handle.lock();
        let channels = Arc::strong_count(&self.handle) - 1;
        if channels > 0 && !*closed {
            return Err(RbdError::Busy { channels });
        }
        self.handle.close_locked(&mut closed)
    }

    /// Opens a channel (the concrete type; [`Bdev::open_channel`] boxes it).
    pub fn open_rbd_channel(&self, depth: usize) -> Result<RbdChannel, RbdError> {
        let closed = self.handle.lock();
        if *closed {
            return Err(RbdError::Closed);
        }
        let handle = Arc::clone(&self.handle);
        drop(closed);
        RbdChannel::new(handle, depth.max(1))
    }
}

impl Bdev for RbdBdev {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn block_size(&self) -> u32 {
        self.config.block_size
    }

    /// The size last read from librbd (at open, [`RbdBdev::resize`] or
    /// [`RbdBdev::refresh_size`]). It never calls librbd: `rbd_get_size` may re-read the image
    /// header from the cluster, which must not happen wherever this is called from.
    fn num_blocks(&self) -> u64 {
        self.size.load(Ordering::Acquire) / u64::from(self.config.block_size)
    }

    fn supports(&self, op: IoOp) -> bool {
        match op {
            IoOp::Read | IoOp::Flush => true,
            IoOp::Write | IoOp::Discard => !self.config.read_only,
            IoOp::WriteZeroes => self.write_zeroes && !self.config.read_only,
        }
    }

    fn open_channel(&self, depth: usize) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(self.open_rbd_channel(depth)?))
    }

    fn channel_memory(&self, depth: usize) -> usize {
        RbdChannel::memory(depth)
    }

    /// Resizes the image in the cluster ([`RbdBdev::resize`]): it blocks on the cluster.
    fn resize(&self, new_size_bytes: u64) -> Result<(), BdevError> {
        if self.config.read_only {
            return Err(BdevError::Unsupported("resize of a read-only image"));
        }
        RbdBdev::resize(self, new_size_bytes).map_err(BdevError::from)
    }

    /// Re-reads the image size from the cluster (another client may have resized it); a
    /// smaller size is reported, not applied.
    fn rescan(&self) -> Result<u64, BdevError> {
        self.rescan_with(false)
    }

    fn rescan_forced(&self) -> Result<u64, BdevError> {
        self.rescan_with(true)
    }
}

impl std::fmt::Debug for RbdBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdBdev")
            .field("config", &self.config)
            .field("size", &self.size.load(Ordering::Relaxed))
            .finish()
    }
}
