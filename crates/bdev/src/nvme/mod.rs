//! The NVMe passthrough bdev: NVMe I/O commands straight to a namespace through the kernel's
//! NVMe generic char device (`/dev/ngXnY`, Linux 5.13+) with io_uring `IORING_OP_URING_CMD`
//! (Linux 5.19+; polled completion 6.0+). No block layer request merging or splitting, no
//! page cache: SPDK's `bdev_uring` in passthrough mode, or fio's `io_uring_cmd` engine.
//!
//! | request | NVMe command |
//! |---|---|
//! | read / write | Read (0x02) / Write (0x01), split at the per-command limit; FUA for durable writes |
//! | flush | Flush (0x00) |
//! | discard | Dataset Management (0x09), Deallocate, one range per command |
//! | write-zeroes | Write Zeroes (0x08), split at 65536 blocks (and WZSL or MDTS) |
//!
//! A single data segment goes as `NVME_URING_CMD_IO` (`addr`/`data_len`), several as
//! `NVME_URING_CMD_IO_VEC` (an iovec array). Segments whose base and length are multiples of 512
//! reach the device without copies; others are bounced through a per-channel pool of eight 1 MiB
//! aligned buffers (a larger request in 1 MiB chunks through one buffer). A request larger than
//! one command may carry (MDTS, the kernel queue's `max_hw_sectors_kb` and `max_segments`) is
//! split into several commands and completes when all have, failed if any failed; a channel
//! holds at most 16 commands and 128 iovec pieces per request at a time and moves larger
//! requests in rounds, so nothing is allocated per request.

mod channel;
mod cmd;
mod polled;
mod split;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use crate::bounce::AlignedBuf;
use crate::sys::{read_sysfs, sysfs_dev};
use crate::{Bdev, BdevError, IoChannel, IoOp};

use channel::{new_ring, ChannelConfig, NvmeChannel};
use cmd::{
    describe_result, flush_cmd, identify_cmd, pages_limit_bytes, parse_identify_controller,
    parse_identify_namespace, parse_identify_nvm_controller, rw_cmd, NvmeCmd, CNS_CONTROLLER,
    CNS_CSI_CONTROLLER, CNS_NAMESPACE, IDENTIFY_LEN, MAX_NLB, NVME_IOCTL_ADMIN_CMD, NVME_IOCTL_ID,
    NVME_URING_CMD_IO, ONCS_DSM, ONCS_WRITE_ZEROES,
};
use split::Limits;

/// How [`NvmeBdev::open`] opens a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmeOptions {
    /// Polled completions: every channel's reads, writes and discards go through a ring created
    /// with `IORING_SETUP_IOPOLL` that reaps by polling the NVMe driver's poll queues, no
    /// interrupts. Flushes and write-zeroes carry no data, so they cannot be polled. They go
    /// through a second, small ring that completes by interrupt (see `polled.rs`). Needs the
    /// `nvme` module loaded with `poll_queues=N` (N >= 1): refused at open when the namespace's
    /// request queue says it cannot poll (sysfs `queue/io_poll` reads 0). Without poll queues
    /// the kernel would still accept polled commands but complete them by interrupt, so polling
    /// would only burn CPU.
    pub poll: bool,
    /// Open the char device read-only: writes fail with
    /// [`IoStatus::IoError`](crate::IoStatus::IoError); discard and write-zeroes are
    /// unsupported.
    pub read_only: bool,
}

impl Default for NvmeOptions {
    /// Interrupt-driven completions, read-write.
    fn default() -> Self {
        NvmeOptions {
            poll: false,
            read_only: false,
        }
    }
}

/// Why [`NvmeBdev::open`] refused a device (inside [`BdevError::Nvme`]).
#[derive(Debug)]
pub enum NvmeError {
    /// The path is the namespace's block device; passthrough needs its generic char device.
    BlockDevice {
        /// The char device of the same name, where one can be guessed (`nvme0n1` -> `ng0n1`).
        suggestion: Option<PathBuf>,
    },
    /// The path is neither a character device nor an NVMe block device.
    NotCharDevice,
    /// A character device, but not an NVMe generic one (wrong name or major number).
    NotNvmeGeneric(String),
    /// An `ioctl` or admin command at open failed.
    Command {
        /// What was asked (e.g. "identify namespace").
        what: &'static str,
        /// What the kernel or the device answered.
        detail: String,
    },
    /// The namespace's LBA format carries metadata, which this bdev does not transfer.
    Metadata {
        /// Metadata bytes per block.
        ms: u16,
        /// The LBA format index in use.
        lba_format: usize,
    },
    /// The LBA data size is not 512 or 4096 bytes.
    BlockSize {
        /// log2 of the LBA data size.
        lbads: u8,
    },
    /// The namespace has no capacity (inactive, or not formatted).
    Empty,
    /// The kernel cannot send NVMe commands through io_uring (too old, io_uring disabled, or
    /// `URING_CMD` refused by the probe).
    PassthroughUnsupported(String),
    /// Polled mode was asked for but the NVMe driver has no poll queues.
    NoPollQueues(String),
    /// The probe command sent at open did not complete within its time limit.
    ProbeTimeout {
        /// Whether the ring was polled.
        poll: bool,
        /// The limit.
        waited: Duration,
    },
}

impl fmt::Display for NvmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NvmeError::BlockDevice { suggestion } => {
                write!(
                    f,
                    "is an NVMe block device; passthrough needs the namespace's generic char \
                     device"
                )?;
                match suggestion {
                    Some(p) => write!(f, " ({})", p.display()),
                    None => write!(f, " (/dev/ngXnY)"),
                }?;
                write!(f, ", or serve the block device with --file")
            }
            NvmeError::NotCharDevice => write!(
                f,
                "not a character device: give an NVMe generic char device such as /dev/ng0n1"
            ),
            NvmeError::NotNvmeGeneric(why) => write!(
                f,
                "not an NVMe generic char device ({why}); give one such as /dev/ng0n1"
            ),
            NvmeError::Command { what, detail } => write!(f, "{what} failed: {detail}"),
            NvmeError::Metadata { ms, lba_format } => write!(
                f,
                "the namespace is formatted with {ms} bytes of metadata per block (LBA format \
                 {lba_format}); only formats without metadata are supported: reformat it, e.g. \
                 `nvme format --lbaf=N` with a format whose ms is 0"
            ),
            NvmeError::BlockSize { lbads } => write!(
                f,
                "the namespace's block size is 2^{lbads} bytes; only 512 and 4096 are supported"
            ),
            NvmeError::Empty => write!(f, "the namespace has no capacity (inactive?)"),
            NvmeError::PassthroughUnsupported(why) => write!(
                f,
                "io_uring NVMe passthrough is not available: {why} (needs Linux 5.19 or later \
                 with io_uring enabled)"
            ),
            NvmeError::NoPollQueues(why) => write!(
                f,
                "nvme driver has no poll queues: load nvme with poll_queues=N (e.g. `modprobe \
                 nvme poll_queues=4`, or nvme.poll_queues=4 on the kernel command line), or \
                 run without polling ({why})"
            ),
            NvmeError::ProbeTimeout { poll, waited } => {
                write!(
                    f,
                    "a Flush sent through io_uring passthrough did not complete within {} s",
                    waited.as_secs()
                )?;
                if *poll {
                    write!(
                        f,
                        "; with polling this usually means the nvme driver has no poll queues: \
                         load nvme with poll_queues=N"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for NvmeError {}

/// A bdev that sends NVMe commands to one namespace through its generic char device.
///
/// Every channel opens its own ring (128-byte SQEs, 32-byte CQEs, `depth` rounded up to a power
/// of two entries, polled with [`NvmeOptions::poll`]) over a duplicate of the descriptor,
/// registered as the ring's fixed file 0; a polled channel also opens a second, interrupt-driven
/// ring for flushes and write-zeroes.
pub struct NvmeBdev {
    name: String,
    path: PathBuf,
    file: File,
    options: NvmeOptions,
    nsid: u32,
    block_shift: u32,
    num_blocks: u64,
    mdts_bytes: Option<u64>,
    limits: Limits,
    max_write_zeroes_blocks: u64,
    max_discard_blocks: u64,
    discard: bool,
    write_zeroes: bool,
    discard_reads_zeroes: bool,
    volatile_write_cache: bool,
    block_device: Option<PathBuf>,
}

/// How long the open-time probe command may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-command bytes when the kernel's queue limit cannot be read from sysfs (also MDTS 7 at
/// 4 KiB pages, QEMU's default).
const FALLBACK_MAX_HW_BYTES: u64 = 512 << 10;
/// Segments per command when sysfs does not say (Linux's `NVME_MAX_SEGS` for PCIe).
const FALLBACK_MAX_SEGMENTS: usize = 127;

impl NvmeBdev {
    /// Opens `path`, an NVMe generic char device (`/dev/ngXnY`), identifies its namespace and
    /// controller, and sends a Flush through io_uring to prove passthrough works (and, with
    /// [`NvmeOptions::poll`], a polled Read of block 0).
    ///
    /// Refuses, with a message that says why ([`BdevError::Nvme`]): a block device (naming the
    /// char device to use instead), anything that is not a char device named `ngXnY` with the
    /// `nvme-generic` major from `/proc/devices`; a namespace formatted with metadata or a
    /// block size other than 512 or 4096; a kernel without io_uring passthrough; polling
    /// without poll queues. Opening the char device and the admin commands need root
    /// (`CAP_SYS_ADMIN`) on kernels before 6.2.
    ///
    /// The per-command transfer limit is the smallest of MDTS (in units of 4 KiB: the generic
    /// char device cannot read the controller's CAP.MPSMIN, and Linux uses 4 KiB pages), the
    /// kernel queue's `max_hw_sectors_kb`, and 65536 blocks; buffers of one command touch at
    /// most the queue's `max_segments` pages.
    pub fn open(path: impl AsRef<Path>, options: NvmeOptions) -> Result<NvmeBdev, BdevError> {
        let path = path.as_ref();
        let nvme_err = |error: NvmeError| BdevError::Nvme {
            path: path.to_path_buf(),
            error,
        };
        let open_err = |source: io::Error| BdevError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let ft = meta.file_type();
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let file_name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let name = file_name(&canonical);
        if ft.is_block_device() {
            let suggestion = ng_name_for_block(&name).map(|ng| PathBuf::from("/dev").join(ng));
            return Err(nvme_err(NvmeError::BlockDevice { suggestion }));
        }
        if !ft.is_char_device() {
            return Err(nvme_err(NvmeError::NotCharDevice));
        }
        let rdev = meta.rdev();
        let major = libc::major(rdev);
        let devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
        match char_major(&devices, "nvme-generic") {
            None => {
                return Err(nvme_err(NvmeError::NotNvmeGeneric(
                    "/proc/devices lists no nvme-generic char driver: the kernel is older than \
                     5.13 or nvme-core is not loaded"
                        .to_string(),
                )))
            }
            Some(m) if m != major => {
                return Err(nvme_err(NvmeError::NotNvmeGeneric(format!(
                    "major {major}, but nvme-generic is {m}"
                ))))
            }
            Some(_) => {}
        }
        if !is_ng_name(&name) && !is_ng_name(&file_name(path)) {
            return Err(nvme_err(NvmeError::NotNvmeGeneric(format!(
                "the name '{name}' is not of the form ngXnY"
            ))));
        }

        let file = OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(path)
            .map_err(open_err)?;
        let nsid = namespace_id(&file).map_err(|e| {
            nvme_err(NvmeError::Command {
                what: "NVME_IOCTL_ID",
                detail: e.to_string(),
            })
        })?;

        let id = identify(&file, CNS_NAMESPACE, 0, nsid).map_err(|detail| {
            nvme_err(NvmeError::Command {
                what: "identify namespace",
                detail,
            })
        })?;
        let ns = parse_identify_namespace(&id).ok_or_else(|| {
            nvme_err(NvmeError::Command {
                what: "identify namespace",
                detail: "the data names an LBA format that does not exist".to_string(),
            })
        })?;
        if ns.ms != 0 {
            return Err(nvme_err(NvmeError::Metadata {
                ms: ns.ms,
                lba_format: ns.lba_format,
            }));
        }
        if ns.lbads != 9 && ns.lbads != 12 {
            return Err(nvme_err(NvmeError::BlockSize { lbads: ns.lbads }));
        }
        if ns.nsze == 0 {
            return Err(nvme_err(NvmeError::Empty));
        }
        let id = identify(&file, CNS_CONTROLLER, 0, 0).map_err(|detail| {
            nvme_err(NvmeError::Command {
                what: "identify controller",
                detail,
            })
        })?;
        let ctrl = parse_identify_controller(&id).ok_or_else(|| {
            nvme_err(NvmeError::Command {
                what: "identify controller",
                detail: "short data".to_string(),
            })
        })?;
        // Optional (NVMe 1.4+): Write Zeroes and Dataset Management limits.
        let nvm = identify(&file, CNS_CSI_CONTROLLER, 0, 0)
            .ok()
            .and_then(|id| parse_identify_nvm_controller(&id))
            .unwrap_or_default();

        let queue = queue_limits(rdev, nsid);
        if options.poll && queue.io_poll == Some(false) {
            return Err(nvme_err(NvmeError::NoPollQueues(format!(
                "{} reads 0",
                queue
                    .queue_dir
                    .as_ref()
                    .map(|d| d.join("io_poll").display().to_string())
                    .unwrap_or_default()
            ))));
        }
        let block_shift = u32::from(ns.lbads);
        let bs = 1u64 << block_shift;
        probe(&file, nsid, bs as usize, false).map_err(nvme_err)?;
        if options.poll {
            probe(&file, nsid, bs as usize, true).map_err(nvme_err)?;
        }

        let mdts_bytes = pages_limit_bytes(ctrl.mdts);
        let mut max_bytes = u64::from(MAX_NLB) * bs;
        if let Some(m) = mdts_bytes {
            max_bytes = max_bytes.min(m);
        }
        max_bytes = max_bytes.min(queue.max_hw_bytes.unwrap_or(FALLBACK_MAX_HW_BYTES));
        let max_bytes = (max_bytes / bs * bs).max(bs);
        let max_pages = queue
            .max_segments
            .unwrap_or(FALLBACK_MAX_SEGMENTS)
            .clamp(1, 1024);
        // Write Zeroes moves no data, but Linux bounds it by WZSL or else by the transfer limit
        // (max_hw_sectors), and some controllers enforce MDTS on it: do the same.
        let wz_bytes = pages_limit_bytes(nvm.wzsl).unwrap_or(max_bytes);
        let max_write_zeroes_blocks = (wz_bytes / bs).clamp(1, u64::from(MAX_NLB));
        let max_discard_blocks = if nvm.dmrsl == 0 {
            u64::from(u32::MAX)
        } else {
            u64::from(nvm.dmrsl)
        };

        let writable = !options.read_only;
        Ok(NvmeBdev {
            name,
            path: path.to_path_buf(),
            file,
            options,
            nsid,
            block_shift,
            num_blocks: ns.nsze,
            mdts_bytes,
            limits: Limits {
                block_size: bs,
                max_bytes,
                max_pages,
            },
            max_write_zeroes_blocks,
            max_discard_blocks,
            discard: writable && ctrl.oncs & ONCS_DSM != 0,
            write_zeroes: writable && ctrl.oncs & ONCS_WRITE_ZEROES != 0,
            discard_reads_zeroes: ns.dealloc_reads_zeroes,
            volatile_write_cache: ctrl.volatile_write_cache,
            block_device: queue.block_device,
        })
    }

    /// Renames the bdev (by default the char device's name, e.g. `ng0n1`); the name is the
    /// default serial.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> NvmeOptions {
        self.options
    }

    /// The namespace ID.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// The controller's MDTS in bytes (assuming 4 KiB minimum pages); `None` for no limit.
    pub fn mdts_bytes(&self) -> Option<u64> {
        self.mdts_bytes
    }

    /// Most bytes one Read or Write command carries; larger requests are split.
    pub fn max_transfer_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// Most memory pages (segments) one command's buffers may touch.
    pub fn max_segments(&self) -> usize {
        self.limits.max_pages
    }

    /// Whether deallocated (discarded) blocks read back as zeroes (Identify Namespace DLFEAT).
    pub fn discard_reads_zeroes(&self) -> bool {
        self.discard_reads_zeroes
    }

    /// Whether the controller has a volatile write cache (Identify Controller VWC).
    pub fn volatile_write_cache(&self) -> bool {
        self.volatile_write_cache
    }

    /// The block device of the same namespace (`/dev/nvme0n1`), where sysfs names one.
    pub fn block_device(&self) -> Option<&Path> {
        self.block_device.as_deref()
    }

    fn channel_config(&self) -> ChannelConfig {
        ChannelConfig {
            nsid: self.nsid,
            block_shift: self.block_shift,
            size: self.size_bytes(),
            limits: self.limits,
            max_write_zeroes_blocks: self.max_write_zeroes_blocks,
            max_discard_blocks: self.max_discard_blocks,
            read_only: self.options.read_only,
            discard: self.discard,
            write_zeroes: self.write_zeroes,
            poll: self.options.poll,
        }
    }
}

impl Bdev for NvmeBdev {
    fn name(&self) -> &str {
        &self.name
    }

    fn block_size(&self) -> u32 {
        1 << self.block_shift
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// Reads and flushes always; writes unless read-only; discard where the controller
    /// reports Dataset Management and write-zeroes where it reports Write Zeroes (ONCS).
    fn supports(&self, op: IoOp) -> bool {
        match op {
            IoOp::Read | IoOp::Flush => true,
            IoOp::Write => !self.options.read_only,
            IoOp::Discard => self.discard,
            IoOp::WriteZeroes => self.write_zeroes,
        }
    }

    /// The ring, command entries, slots and bounce pool (`channel::footprint`): about 11 MiB at
    /// depth 1024, 8 MiB of it bounce buffers; polled, plus the small interrupt-driven ring for
    /// flushes and write-zeroes (no bounce buffers).
    fn channel_memory(&self, depth: usize) -> usize {
        let dataless = if self.options.poll {
            channel::footprint_with(polled::DATALESS_DEPTH, 0)
        } else {
            0
        };
        channel::footprint(depth) + dataless
    }

    /// Polled: a [`polled::PolledChannel`], which keeps flushes and write-zeroes off the
    /// polled ring.
    fn open_channel(&self, depth: usize) -> Result<Box<dyn IoChannel>, BdevError> {
        let dup = || self.file.try_clone().map_err(BdevError::Os);
        let cfg = self.channel_config();
        let main = Box::new(NvmeChannel::new(dup()?, cfg, depth)?);
        if !self.options.poll {
            return Ok(main);
        }
        let dataless = NvmeChannel::dataless(dup()?, cfg, polled::DATALESS_DEPTH)?;
        Ok(Box::new(polled::PolledChannel::new(
            main,
            Box::new(dataless),
        )))
    }
}

/// Whether `name` looks like an NVMe generic char device: `ng<ctrl>n<ns>`.
fn is_ng_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("ng") else {
        return false;
    };
    let Some((ctrl, ns)) = rest.split_once('n') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(ctrl) && digits(ns)
}

/// The generic char device for an NVMe block device name: `nvme0n1` -> `ng0n1`. Partitions
/// and per-path devices (`nvme0c1n1`) have none of their own.
fn ng_name_for_block(name: &str) -> Option<String> {
    let ng = format!("ng{}", name.strip_prefix("nvme")?);
    is_ng_name(&ng).then_some(ng)
}

/// The major number `driver` has in the "Character devices:" section of `/proc/devices`.
fn char_major(proc_devices: &str, driver: &str) -> Option<u32> {
    let mut in_char = false;
    for line in proc_devices.lines() {
        let line = line.trim();
        if line.ends_with(':') {
            in_char = line == "Character devices:";
            continue;
        }
        if !in_char {
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some(major), Some(name)) = (words.next(), words.next()) {
            if name == driver {
                return major.parse().ok();
            }
        }
    }
    None
}

/// The namespace ID of an NVMe char device (`NVME_IOCTL_ID`).
fn namespace_id(file: &File) -> io::Result<u32> {
    // SAFETY: NVME_IOCTL_ID takes no argument; it returns the namespace ID or -1 with errno.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), NVME_IOCTL_ID as _) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(rc)
        .ok()
        .filter(|&n| n != 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "namespace ID 0"))
}

/// Runs an admin Identify (`cns`, `csi`, `nsid`) through `NVME_IOCTL_ADMIN_CMD`; the error says
/// what the kernel or the device answered. Returns the 4096 bytes of Identify data.
fn identify(file: &File, cns: u32, csi: u8, nsid: u32) -> Result<Vec<u8>, String> {
    let buf = AlignedBuf::new(IDENTIFY_LEN).ok_or_else(|| "out of memory".to_string())?;
    let mut cmd: NvmeCmd = identify_cmd(cns, csi, nsid, buf.as_ptr());
    // SAFETY: the argument is a live `struct nvme_passthru_cmd` (NvmeCmd has its layout, and
    // the request number encodes its size); the kernel writes at most `data_len` = 4096 bytes
    // to `addr`, which is `buf`, alive and unaliased until the call returns.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), NVME_IOCTL_ADMIN_CMD as _, &mut cmd) };
    match rc {
        // SAFETY: the ioctl has returned, so the device is done writing into `buf`.
        0 => Ok(unsafe { buf.bytes() }.to_vec()),
        rc if rc < 0 => {
            let e = io::Error::last_os_error();
            Err(match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => {
                    format!("{e}: admin passthrough needs root (CAP_SYS_ADMIN)")
                }
                _ => e.to_string(),
            })
        }
        status => Err(describe_result(status)),
    }
}

/// What sysfs says of the kernel's request queue for the namespace.
#[derive(Debug, Default)]
struct QueueLimits {
    queue_dir: Option<PathBuf>,
    max_hw_bytes: Option<u64>,
    max_segments: Option<usize>,
    io_poll: Option<bool>,
    block_device: Option<PathBuf>,
}

/// Finds the namespace's block device next to its char device in sysfs (both are children of
/// the controller: `/sys/dev/char/M:m` -> `.../nvme/nvme0/ng0n1`, with `.../nvme0/nvme0n1` or,
/// with native multipath, the per-path `.../nvme0/nvme0c0n1`) and reads its queue limits.
fn queue_limits(rdev: u64, nsid: u32) -> QueueLimits {
    let Some(ctrl_dir) = std::fs::canonicalize(sysfs_dev("char", rdev))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    else {
        return QueueLimits::default();
    };
    let Ok(entries) = std::fs::read_dir(&ctrl_dir) else {
        return QueueLimits::default();
    };
    let mut candidates: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            (name.starts_with("nvme")
                && read_sysfs(&dir.join("nsid")).and_then(|s| s.parse::<u32>().ok()) == Some(nsid)
                && dir.join("queue").is_dir())
            .then_some((name, dir))
        })
        .collect();
    // Prefer the visible disk (nvme0n1) over a hidden per-path one (nvme0c0n1).
    candidates.sort_by_key(|(name, _)| name.contains('c'));
    let Some((name, dir)) = candidates.into_iter().next() else {
        return QueueLimits::default();
    };
    let q = dir.join("queue");
    let dev = PathBuf::from("/dev").join(&name);
    QueueLimits {
        max_hw_bytes: read_sysfs(&q.join("max_hw_sectors_kb"))
            .and_then(|s| s.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .filter(|&b| b > 0),
        max_segments: read_sysfs(&q.join("max_segments"))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0),
        io_poll: read_sysfs(&q.join("io_poll")).map(|s| s != "0"),
        block_device: dev.exists().then_some(dev),
        queue_dir: Some(q),
    }
}

/// Sends one command through a fresh ring of a kind the channels will use, to refuse at open
/// (not on the first guest request) a kernel or driver that cannot do io_uring passthrough:
/// a Flush through an interrupt-driven ring, or with `poll` a Read of block 0 (`block_size`
/// bytes) through a polled one. Never a Flush through a polled ring: a command without data
/// cannot be polled, and Linux before 6.5 can crash trying (see `polled.rs`).
fn probe(file: &File, nsid: u32, block_size: usize, poll: bool) -> Result<(), NvmeError> {
    // Before the ring, so dropped after it.
    let buf = AlignedBuf::new(block_size).ok_or_else(|| {
        NvmeError::PassthroughUnsupported("no memory for the probe's buffer".to_string())
    })?;
    let mut ring = new_ring(2, poll).map_err(|e| {
        NvmeError::PassthroughUnsupported(format!(
            "cannot create an io_uring with 128-byte SQEs and 32-byte CQEs{}: {e}{}",
            if poll { " and IOPOLL" } else { "" },
            match e.raw_os_error() {
                Some(libc::EINVAL) => " (Linux 5.19+ is needed for big SQEs/CQEs)",
                Some(libc::EPERM) => " (io_uring disabled by the kernel.io_uring_disabled sysctl?)",
                Some(libc::ENOSYS) => " (io_uring is not compiled in or blocked by seccomp)",
                _ => "",
            }
        ))
    })?;
    let cmd = if poll {
        let mut read = rw_cmd(false, nsid, 0, 1, false);
        read.addr = buf.as_ptr() as u64;
        read.data_len = block_size as u32;
        read
    } else {
        flush_cmd(nsid)
    };
    let entry = opcode::UringCmd80::new(types::Fd(file.as_raw_fd()), NVME_URING_CMD_IO)
        .cmd(cmd.to_sqe_cmd())
        .build()
        .user_data(1);
    // SAFETY: a Flush names no memory; a Read names `buf`, `block_size` bytes that outlive the
    // ring (declared before it is dropped, below) and so every use the kernel makes of them;
    // the descriptor outlives the ring (kept by the caller).
    if unsafe { ring.submission().push(&entry) }.is_err() {
        return Err(NvmeError::PassthroughUnsupported(
            "the probe ring has no room".to_string(),
        ));
    }
    let start = Instant::now();
    let res = loop {
        // On a polled ring this also polls for the completion.
        if let Err(e) = ring.submit() {
            if !matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            ) {
                return Err(NvmeError::PassthroughUnsupported(format!(
                    "io_uring_enter failed: {e}"
                )));
            }
        }
        if let Some(cqe) = ring.completion().next() {
            break cqe.result();
        }
        if start.elapsed() > PROBE_TIMEOUT {
            // The Read may still land after the ring is closed: its buffer is never freed.
            std::mem::forget(buf);
            return Err(NvmeError::ProbeTimeout {
                poll,
                waited: PROBE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    match res {
        // A positive value is an NVMe status: the command reached the device, so passthrough
        // works (a controller may reject Flush without a volatile write cache).
        r if r >= 0 => Ok(()),
        r if r == -libc::EOPNOTSUPP && poll => Err(NvmeError::NoPollQueues(format!(
            "a polled URING_CMD failed with {}; polled passthrough needs Linux 6.0+",
            describe_result(r)
        ))),
        r if r == -libc::EOPNOTSUPP || r == -libc::EINVAL || r == -libc::ENOTTY => {
            Err(NvmeError::PassthroughUnsupported(format!(
                "a URING_CMD Flush failed with {}",
                describe_result(r)
            )))
        }
        r if r == -libc::EACCES || r == -libc::EPERM => Err(NvmeError::Command {
            what: "passthrough Flush",
            detail: format!("{}: needs root (CAP_SYS_ADMIN)", describe_result(r)),
        }),
        r => Err(NvmeError::Command {
            what: "passthrough Flush",
            detail: describe_result(r),
        }),
    }
}

#[cfg(test)]
mod tests;
