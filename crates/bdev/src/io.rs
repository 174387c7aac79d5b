//! The bdev traits and the request/completion types that cross them.
//!
//! # Copies into shared memory
//!
//! A request's buffers are usually guest memory, which the guest (another process, another
//! CPU) may read or write while a channel copies: the RAM bdevs' copies, the bounce buffers'
//! gather and scatter, and null's zero fill use plain `memcpy`/`memset`
//! (`ptr::copy_nonoverlapping`, `ptr::write_bytes`), not volatile or atomic accesses. In Rust's
//! memory model a concurrent access by the guest is a data race; the code never forms a Rust
//! reference into such memory and never reads back what it copied, so the only effect of a racing
//! guest is torn data in its own buffer — the same practice as vm-memory, which uses `memcpy`
//! for copies above 8 bytes. The malloc bdev's memory is shared the same way by every channel of
//! the bdev (a disk written from several queues at once). This is said here once instead of at
//! every copy.

use std::fmt;
use std::path::PathBuf;

/// One data segment, laid out as the kernel's `struct iovec` so channels backed by io_uring can
/// hand arrays of them to the kernel unchanged.
pub type IoVec = libc::iovec;

/// What a request asks the bdev to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Copy `len` bytes at `offset` from the device into the iovecs.
    Read,
    /// Copy the iovecs into the device at `offset`.
    Write,
    /// Make completed writes durable.
    Flush,
    /// Deallocate `len` bytes at `offset`; later reads return zeroes or old data.
    Discard,
    /// Make `len` bytes at `offset` read back as zeroes.
    WriteZeroes,
}

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    /// Done as asked.
    Success,
    /// The device failed the request (media error, out of space, bad range).
    IoError,
    /// The bdev does not implement this operation.
    Unsupported,
}

/// A finished request: the tag it was submitted with and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The caller's tag from [`BdevIo::tag`].
    pub tag: u32,
    /// How the request ended.
    pub status: IoStatus,
}

/// One request to a bdev. Offsets and lengths are in bytes and have been checked against the
/// bdev's capacity and block size by the caller; a channel checks them again only where a
/// mistake would touch memory outside the device.
#[derive(Debug)]
pub struct BdevIo {
    /// Caller-chosen identifier returned in the [`Completion`] (the virtio descriptor head).
    pub tag: u32,
    /// The operation.
    pub op: IoOp,
    /// Byte offset on the device.
    pub offset: u64,
    /// Byte length; for reads and writes it equals the sum of the iovec lengths.
    pub len: u64,
    iov: *const IoVec,
    iovcnt: usize,
    durable: bool,
}

impl BdevIo {
    /// A read or write over `iovcnt` segments at `iov`.
    ///
    /// # Safety
    /// `iov` must point to `iovcnt` initialised iovecs, and both that array and every buffer it
    /// describes must stay valid (mapped, not freed, not reused for another request) until this
    /// request's [`Completion`] has been returned by [`IoChannel::poll_completions`] or the request
    /// has been handed back by [`IoChannel::submit`]. The buffers may be written concurrently by
    /// another party (guest memory); channels only copy to and from them.
    pub unsafe fn with_iovecs(
        tag: u32,
        op: IoOp,
        offset: u64,
        len: u64,
        iov: *const IoVec,
        iovcnt: usize,
    ) -> Self {
        BdevIo {
            tag,
            op,
            offset,
            len,
            iov,
            iovcnt,
            durable: false,
        }
    }

    /// A request without data buffers (flush, discard, write-zeroes).
    pub fn without_data(tag: u32, op: IoOp, offset: u64, len: u64) -> Self {
        BdevIo {
            tag,
            op,
            offset,
            len,
            iov: std::ptr::null(),
            iovcnt: 0,
            durable: false,
        }
    }

    /// Marks a write as durable (or not): a channel completes a durable write only once its data
    /// would survive a power loss (virtio-blk with the write cache disabled; SCSI's FUA). Kernel-
    /// backed channels write it with `RWF_DSYNC` (NVMe: FUA); RAM-backed ones ignore it. Other
    /// operations ignore the flag. Requests start non-durable.
    ///
    /// The caller (the protocol layer, from virtio-blk's writeback mode) is the only owner of the
    /// write-cache policy: bdevs have no "every write durable" option of their own, so a guest
    /// that turns its write cache on gets non-durable writes plus explicit flushes.
    pub fn with_durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Whether this request must be durable on completion (see [`BdevIo::with_durable`]).
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// The data segments (empty for requests without data).
    pub fn iovecs(&self) -> &[IoVec] {
        if self.iovcnt == 0 {
            return &[];
        }
        // SAFETY: `with_iovecs`' contract keeps `iovcnt` initialised iovecs alive at `iov` for the
        // life of the request; this borrows the descriptors, not the buffers they point to.
        unsafe { std::slice::from_raw_parts(self.iov, self.iovcnt) }
    }

    /// A completion for this request with `status`.
    pub fn complete(&self, status: IoStatus) -> Completion {
        Completion {
            tag: self.tag,
            status,
        }
    }
}

// SAFETY: a `BdevIo` only carries addresses of buffers (and of the iovec array) that its creator
// promised, in `with_iovecs`' contract, to keep valid until completion; that promise does not
// depend on which thread holds the request. Channels are opened on a control thread and moved
// to the reactor that owns them, requests in them included.
unsafe impl Send for BdevIo {}

/// Errors from the bdev control plane.
#[derive(Debug)]
pub enum BdevError {
    /// A size or block size that the bdev cannot serve.
    InvalidGeometry(String),
    /// The operating system refused a resource (memory, a file, a ring).
    Os(std::io::Error),
    /// A backing file or block device could not be opened or inspected.
    Open {
        /// The path as given.
        path: PathBuf,
        /// What the system call said.
        source: std::io::Error,
    },
    /// The backing file's filesystem (or the device) refuses direct I/O: `open` with `O_DIRECT`
    /// or an aligned probe read failed with `EINVAL`. Opening it buffered (`--buffered`, i.e.
    /// [`UringOptions::buffered`](crate::UringOptions::buffered)) avoids `O_DIRECT`.
    DirectIoUnsupported {
        /// The path as given.
        path: PathBuf,
        /// Which step failed and why.
        detail: String,
    },
    /// The path names something other than a regular file or a block device.
    NotAFileOrBlockDevice(PathBuf),
    /// The bdev does not implement this control operation (named).
    Unsupported(&'static str),
    /// A rescan found the backing file or device smaller than the bdev's size; the new size is
    /// not applied (requests already accepted up to the old end would fail) unless forced.
    Shrunk {
        /// The bdev's size in bytes.
        current: u64,
        /// The size found, rounded down to whole blocks.
        found: u64,
    },
    /// The NVMe passthrough bdev refused the device: see [`NvmeError`](crate::NvmeError).
    Nvme {
        /// The path as given.
        path: PathBuf,
        /// Why.
        error: crate::NvmeError,
    },
}

impl fmt::Display for BdevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BdevError::InvalidGeometry(why) => write!(f, "invalid geometry: {why}"),
            BdevError::Os(e) => write!(f, "{e}"),
            BdevError::Open { path, source } => {
                write!(f, "cannot open {}: {source}", path.display())
            }
            BdevError::DirectIoUnsupported { path, detail } => write!(
                f,
                "{}: direct I/O (O_DIRECT) is not supported here ({detail}); \
                 use --buffered to open it through the page cache instead",
                path.display()
            ),
            BdevError::NotAFileOrBlockDevice(path) => write!(
                f,
                "{}: not a regular file or a block device",
                path.display()
            ),
            BdevError::Unsupported(what) => write!(f, "this bdev does not support {what}"),
            BdevError::Shrunk { current, found } => write!(
                f,
                "the backing store shrank from {current} to {found} bytes; not applied (a \
                 forced rescan applies it)"
            ),
            BdevError::Nvme { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for BdevError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BdevError::Os(e) | BdevError::Open { source: e, .. } => Some(e),
            BdevError::Nvme { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A block device: the control-plane half, shared by every reactor that serves it.
pub trait Bdev: Send + Sync {
    /// The bdev's name (used as the default serial).
    fn name(&self) -> &str;
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;
    /// Capacity in logical blocks, now: it changes with [`resize`](Bdev::resize) and
    /// [`rescan`](Bdev::rescan). A control-plane read (an atomic load); the data plane keeps its
    /// own copy per queue, updated by message, and channels never read it per request.
    fn num_blocks(&self) -> u64;
    /// Whether the bdev implements `op`.
    fn supports(&self, op: IoOp) -> bool;
    /// Opens a data-plane channel that can hold `depth` requests in flight. Called on a control
    /// thread, never on a reactor (opening may be slow: a ring, a bounce pool, a network
    /// session); the channel is then moved to the reactor that owns it.
    fn open_channel(&self, depth: usize) -> Result<Box<dyn IoChannel>, BdevError>;

    /// Bytes of memory a channel opened with `depth` reserves, at most (ring, request slots,
    /// bounce buffers; guest memory excluded): for the per-connection memory budget. Every bdev
    /// in this crate reports it; the default, 0, means "not reported".
    fn channel_memory(&self, depth: usize) -> usize {
        let _ = depth;
        0
    }

    /// Capacity in bytes, now.
    fn size_bytes(&self) -> u64 {
        self.num_blocks() * u64::from(self.block_size())
    }

    /// Changes the capacity to `new_size_bytes` (a non-zero multiple of the block size). Growing
    /// never moves memory that requests in flight use, and the new blocks read as zeroes;
    /// shrinking only lowers the capacity (requests already accepted beyond the new end still
    /// complete safely). Whether shrinking a bdev in use is allowed is the caller's decision.
    /// Default: [`BdevError::Unsupported`].
    fn resize(&self, new_size_bytes: u64) -> Result<(), BdevError> {
        let _ = new_size_bytes;
        Err(BdevError::Unsupported("resize"))
    }

    /// Re-reads the size of the backing file or device and applies it if it grew (rounded down
    /// to whole blocks); returns the size in bytes now. A size below the current one is reported
    /// ([`BdevError::Shrunk`]) and not applied; [`rescan_forced`](Bdev::rescan_forced) applies
    /// it. Default: [`BdevError::Unsupported`].
    fn rescan(&self) -> Result<u64, BdevError> {
        Err(BdevError::Unsupported("rescan"))
    }

    /// Like [`rescan`](Bdev::rescan), but applies a smaller size too.
    fn rescan_forced(&self) -> Result<u64, BdevError> {
        Err(BdevError::Unsupported("rescan"))
    }
}

/// The data-plane half of a bdev, owned by one reactor and never shared. It is `Send` only so
/// that it can be opened off the reactor and moved there once.
pub trait IoChannel: Send {
    /// Starts `io`. A full channel hands the request back (`Err`) so the caller can retry it on a
    /// later pass; it is never failed for lack of room.
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo>;
    /// Pushes requests queued by `submit` in this pass to the device (one system call per pass
    /// for kernel-backed channels).
    fn flush_submissions(&mut self) {}
    /// Calls `done` for each finished request; returns how many finished.
    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize;
    /// Requests submitted and not yet returned by `poll_completions`.
    fn in_flight(&self) -> usize;
    /// An fd that becomes readable (an eventfd written by the kernel or by the bdev's own
    /// threads) whenever a completion is ready, so an idle reactor can sleep on it while
    /// requests are in flight. The channel never reads it (that would be a system call per
    /// pass): watch it edge-triggered (`EPOLLET`: every completion is a new edge, whether or not
    /// it was read), or read it to reset it before a level-triggered wait. `None`: nothing
    /// signals completions (malloc and null decide them in `submit` and report them on the next
    /// `poll_completions`; a polled NVMe ring finds them only while polled), so a reactor must
    /// not sleep while `in_flight() > 0`.
    ///
    /// io_uring posts the CQE of a request submitted by the reactor's thread by running task
    /// work on that thread, which interrupts a blocking wait first: `epoll_wait` then returns
    /// `EINTR`, which a reactor must treat as a wake-up (look for work), not an error.
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Whether an idle reactor gains by spinning for this channel's completions. `false` when
    /// they are made by the bdev's own threads in this process and always signalled through
    /// [`IoChannel::completion_fd`] (librbd's callback threads): spinning would only save the
    /// reactor a wake-up, and it takes the CPU those threads need whenever they share the
    /// reactor's core, so each request waits longer. `true` (the default) for completions that
    /// polling finds sooner: decided in `submit` (malloc, null), or posted by the kernel
    /// (io_uring, NVMe).
    fn worth_spinning_for(&self) -> bool {
        true
    }
    /// Requests failed, since the channel opened, because the device's queue itself broke (a
    /// non-transient `io_uring_enter` failure: the ring cannot be used any more). From then on
    /// every request fails with [`IoStatus::IoError`] and counts here; requests the kernel had
    /// already taken still complete as the kernel reports them. Always 0 for channels without
    /// such a queue.
    fn submit_failures(&self) -> u64 {
        0
    }
}
