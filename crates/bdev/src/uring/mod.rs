//! The io_uring bdev: a regular file or a block device, one io_uring per channel (SPDK's
//! `bdev_uring_create`).
//!
//! Reads and writes go straight between the device and the request's iovecs with
//! `IORING_OP_READV`/`WRITEV`; iovecs that miss `O_DIRECT`'s alignment are bounced through
//! aligned buffers from a per-channel pool. Flush is `fsync(DATASYNC)`, discard is
//! `fallocate(PUNCH_HOLE | KEEP_SIZE)` and write-zeroes `fallocate(ZERO_RANGE | KEEP_SIZE)`, all
//! as ring operations.

mod channel;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bounce::AlignedBuf;
use crate::malloc::check_geometry;
use crate::sys::{ior, read_sysfs, sysfs_dev};
use crate::{Bdev, BdevError, IoChannel, IoOp};

use channel::{ChannelConfig, UringChannel};

/// How [`UringBdev::open`] opens its file or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringOptions {
    /// Logical block size to expose: 512 or 4096. `None` takes a block device's logical block
    /// size (`BLKSSZGET`), and for a regular file 512, or the filesystem's direct-I/O offset
    /// alignment (`statx` `STATX_DIOALIGN`) where that is larger. With direct I/O it must be a
    /// multiple of that alignment.
    pub block_size: Option<u32>,
    /// Open without `O_DIRECT`, through the page cache: for filesystems that refuse direct I/O,
    /// and with no alignment rules for iovecs.
    pub buffered: bool,
    /// Open `O_RDONLY`. Writes fail with [`IoStatus::IoError`](crate::IoStatus::IoError);
    /// discard and write-zeroes are unsupported.
    pub read_only: bool,
}

impl Default for UringOptions {
    /// Direct I/O, read-write, block size from the device.
    fn default() -> Self {
        UringOptions {
            block_size: None,
            buffered: false,
            read_only: false,
        }
    }
}

/// A bdev backed by a regular file or a block device through io_uring. Every channel opens its
/// own ring (of `depth` rounded up to a power of two entries) over its own duplicate of the file
/// descriptor, registered as the ring's fixed file 0.
///
/// Requests whose iovecs all start and end on the direct-I/O alignment (the block size; 1 when
/// opened buffered) go to the kernel as they are (more than 1024 iovecs in several transfers).
/// Others are bounced through one of 8 (or `depth`, if smaller) 1 MiB page-aligned buffers
/// allocated per channel when it opens (none when opened buffered); while all are lent out a
/// misaligned request is handed back by `submit` like any other full-channel case. A misaligned
/// request larger than one buffer moves through its buffer in 1 MiB chunks, one after another:
/// nothing is allocated per request. Short reads and writes are resubmitted for the remainder;
/// one that makes no progress fails. See [`Bdev::channel_memory`] for a channel's memory.
pub struct UringBdev {
    name: String,
    path: PathBuf,
    file: File,
    block_size: u32,
    num_blocks: AtomicU64,
    options: UringOptions,
    block_device: bool,
    mem_align: usize,
    discard: bool,
    write_zeroes: bool,
}

impl UringBdev {
    /// Opens `path`, a regular file or a block device, and works out its geometry and which
    /// operations it supports.
    ///
    /// Refuses, with a message that says why: a path that cannot be opened; a filesystem that
    /// refuses `O_DIRECT` ([`BdevError::DirectIoUnsupported`]; [`UringOptions::buffered`] avoids
    /// it); an empty file; a size that is not a multiple of the block size; a block size other
    /// than 512 or 4096 or below the device's direct-I/O alignment; anything that is neither a
    /// regular file nor a block device.
    pub fn open(path: impl AsRef<Path>, options: UringOptions) -> Result<UringBdev, BdevError> {
        let path = path.as_ref();
        let open_err = |source: io::Error| BdevError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut oo = OpenOptions::new();
        oo.read(true).write(!options.read_only);
        if !options.buffered {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = match oo.open(path) {
            Ok(f) => f,
            Err(e) if !options.buffered && e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(BdevError::DirectIoUnsupported {
                    path: path.to_path_buf(),
                    detail: "open with O_DIRECT failed with EINVAL; tmpfs before Linux 6.6, \
                             procfs and some FUSE filesystems refuse it"
                        .to_string(),
                });
            }
            Err(e) => return Err(open_err(e)),
        };
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        let shown = path.display();

        let (block_size, size, mem_align, discard, write_zeroes) = if ft.is_block_device() {
            let lbs = logical_block_size(&file).map_err(open_err)?;
            let size = device_size(&file).map_err(open_err)?;
            let block_size = options.block_size.unwrap_or(lbs);
            if !options.buffered && (lbs == 0 || !block_size.is_multiple_of(lbs)) {
                return Err(BdevError::InvalidGeometry(format!(
                    "{shown}: block size {block_size} is not a multiple of the device's logical \
                     block size {lbs}, which direct I/O needs (use --buffered or a block size of \
                     {lbs} or a multiple)"
                )));
            }
            let writable = !options.read_only;
            // Punching a hole in a block device is a write-zeroes command without fallback
            // (BLKDEV_ZERO_NOFALLBACK): only devices that report a write-zeroes limit do it.
            // ZERO_RANGE falls back to writing zeroes, so every device can.
            let discard = writable && device_writes_zeroes(meta.rdev()).unwrap_or(true);
            (block_size, size, block_size as usize, discard, writable)
        } else if ft.is_file() {
            let dio = if options.buffered {
                None
            } else {
                dio_alignment(&file)
            };
            let block_size = match (options.block_size, dio) {
                (Some(bs), _) => bs,
                (None, Some((_, off))) if off > 512 && off <= 4096 => off,
                (None, _) => 512,
            };
            if let Some((_, off)) = dio {
                if !block_size.is_multiple_of(off) {
                    return Err(BdevError::InvalidGeometry(format!(
                        "{shown}: block size {block_size} is not a multiple of the filesystem's \
                         direct-I/O alignment {off} (use a block size of {} or --buffered)",
                        off.max(512)
                    )));
                }
            }
            let mem_align = match dio {
                Some((mem, _)) => (block_size as usize).max(mem as usize),
                None => block_size as usize,
            };
            let writable = !options.read_only;
            let discard = writable && file_punches_holes(&file, meta.len(), block_size);
            let write_zeroes = writable && file_zeroes_ranges(&file);
            (block_size, meta.len(), mem_align, discard, write_zeroes)
        } else {
            return Err(BdevError::NotAFileOrBlockDevice(path.to_path_buf()));
        };

        if block_size != 512 && block_size != 4096 {
            return Err(BdevError::InvalidGeometry(format!(
                "{shown}: block size {block_size} (must be 512 or 4096)"
            )));
        }
        if size == 0 {
            return Err(BdevError::InvalidGeometry(if ft.is_file() {
                format!(
                    "{shown} is empty: give it a size that is a multiple of {block_size} bytes \
                     first (e.g. `truncate -s 1G {shown}`)"
                )
            } else {
                format!("{shown} has no capacity (0 bytes)")
            }));
        }
        if !size.is_multiple_of(u64::from(block_size)) {
            return Err(BdevError::InvalidGeometry(format!(
                "{shown}: size {size} bytes is not a multiple of the block size {block_size} \
                 (resize it to {} bytes, or use a block size that divides it)",
                size.next_multiple_of(u64::from(block_size))
            )));
        }
        check_geometry(size, block_size)?;
        if !options.buffered {
            probe_direct_read(&file, block_size).map_err(|e| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    BdevError::DirectIoUnsupported {
                        path: path.to_path_buf(),
                        detail: format!(
                            "an aligned {block_size}-byte O_DIRECT read at offset 0 failed with \
                             EINVAL: the filesystem or device needs a larger alignment than the \
                             block size, or has no direct I/O"
                        ),
                    }
                } else {
                    open_err(e)
                }
            })?;
        }

        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(UringBdev {
            name,
            path: path.to_path_buf(),
            file,
            block_size,
            num_blocks: AtomicU64::new(size / u64::from(block_size)),
            options,
            block_device: ft.is_block_device(),
            mem_align: if options.buffered { 1 } else { mem_align },
            discard,
            write_zeroes,
        })
    }

    /// Renames the bdev (by default the path's last component); the name is the default serial.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> UringOptions {
        self.options
    }

    /// Whether it serves a block device (rather than a regular file).
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// The alignment (bytes) that every iovec's base and length must meet to skip the bounce
    /// buffers: the block size (or the filesystem's larger memory alignment) with direct I/O, 1
    /// when buffered.
    pub fn iovec_alignment(&self) -> usize {
        self.mem_align
    }

    /// The size of the file (`fstat`) or block device (`BLKGETSIZE64`) now, rounded down to
    /// whole blocks; applied if larger than the bdev's, or if `force`.
    fn rescan_with(&self, force: bool) -> Result<u64, BdevError> {
        let err = |source: io::Error| BdevError::Open {
            path: self.path.clone(),
            source,
        };
        let raw = if self.block_device {
            device_size(&self.file).map_err(err)?
        } else {
            self.file.metadata().map_err(err)?.len()
        };
        let bs = u64::from(self.block_size);
        let found = raw / bs * bs;
        if found == 0 {
            return Err(BdevError::InvalidGeometry(format!(
                "{} now holds {raw} bytes, less than one {bs}-byte block",
                self.path.display()
            )));
        }
        let current = self.size_bytes();
        if found < current && !force {
            return Err(BdevError::Shrunk { current, found });
        }
        self.num_blocks.store(found / bs, Ordering::Relaxed);
        Ok(found)
    }

    fn channel_config(&self) -> ChannelConfig {
        ChannelConfig {
            block_size: u64::from(self.block_size),
            mem_align: self.mem_align,
            direct: !self.options.buffered,
            read_only: self.options.read_only,
            discard: self.discard,
            write_zeroes: self.write_zeroes,
        }
    }

    /// A channel over `file` instead of a duplicate of the bdev's own descriptor: lets tests put
    /// a descriptor that fails writes behind a channel.
    #[cfg(test)]
    fn open_channel_with_file(&self, file: File, depth: usize) -> Result<UringChannel, BdevError> {
        UringChannel::new(file, self.channel_config(), depth)
    }
}

impl Bdev for UringBdev {
    fn name(&self) -> &str {
        &self.name
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Relaxed)
    }

    /// Reads and flushes always; writes unless read-only; discard and write-zeroes as probed at
    /// open. For a regular file, discard is a `fallocate(PUNCH_HOLE | KEEP_SIZE)` probe past the
    /// end of the file (touches no data), write-zeroes a known filesystem (ext4 for extent-mapped
    /// files, xfs, btrfs, f2fs, bcachefs: tmpfs and NFS have no `ZERO_RANGE`). For a block
    /// device, write-zeroes always (the kernel falls back to writing zeroes), discard where the
    /// device reports a non-zero `queue/write_zeroes_max_bytes` (or sysfs cannot say).
    fn supports(&self, op: IoOp) -> bool {
        match op {
            IoOp::Read | IoOp::Flush => true,
            IoOp::Write => !self.options.read_only,
            IoOp::Discard => self.discard,
            IoOp::WriteZeroes => self.write_zeroes,
        }
    }

    /// The ring, slots and bounce pool (`channel::footprint`): about 8.2 MiB at depth 1024 with direct I/O (eight 1 MiB
    /// bounce buffers), 0.2 MiB buffered.
    fn channel_memory(&self, depth: usize) -> usize {
        channel::footprint(depth, self.mem_align > 1)
    }

    /// Re-reads the size of the file (`fstat`) or block device (`BLKGETSIZE64`), SPDK's
    /// `bdev_aio_rescan`: a larger size (rounded down to whole blocks) is applied and returned;
    /// a smaller one is reported as [`BdevError::Shrunk`] and not applied. Channels need no
    /// news of it: they do not check the size.
    fn rescan(&self) -> Result<u64, BdevError> {
        self.rescan_with(false)
    }

    /// Like [`rescan`](Bdev::rescan), applying a smaller size too.
    fn rescan_forced(&self) -> Result<u64, BdevError> {
        self.rescan_with(true)
    }

    fn open_channel(&self, depth: usize) -> Result<Box<dyn IoChannel>, BdevError> {
        let file = self.file.try_clone().map_err(BdevError::Os)?;
        Ok(Box::new(UringChannel::new(
            file,
            self.channel_config(),
            depth,
        )?))
    }
}

/// `_IOR(0x12, 114, u64)`: the size of a block device in bytes (not in `libc`).
const BLKGETSIZE64: u32 = ior(0x12, 114, std::mem::size_of::<u64>());

/// A block device's logical block size.
fn logical_block_size(file: &File) -> io::Result<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut lbs) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(lbs).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// A block device's capacity in bytes.
fn device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Whether the block device `rdev` accepts write-zeroes commands (sysfs
/// `queue/write_zeroes_max_bytes`; a partition's queue is its disk's). `None` if sysfs cannot
/// say.
fn device_writes_zeroes(rdev: u64) -> Option<bool> {
    let dev = sysfs_dev("block", rdev);
    [
        dev.join("queue/write_zeroes_max_bytes"),
        dev.join("../queue/write_zeroes_max_bytes"),
    ]
    .iter()
    .find_map(|p| read_sysfs(p))
    .and_then(|s| s.parse::<u64>().ok())
    .map(|max| max > 0)
}

/// A regular file's direct-I/O alignments `(memory, offset)` from `statx(STATX_DIOALIGN)`
/// (Linux 6.1+), or `None` where the kernel or filesystem does not report them.
fn dio_alignment(file: &File) -> Option<(u32, u32)> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: an empty path with AT_EMPTY_PATH stats the descriptor itself; the kernel writes at
    // most one `struct statx` into `stx`, which is large enough and live.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised and then filled in by a successful statx; every field is an
    // integer, so any bit pattern is valid.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// Whether the file's filesystem punches holes: `fallocate(PUNCH_HOLE | KEEP_SIZE)` on one
/// block just past the end of the file, where there is no data to lose and the size stays.
fn file_punches_holes(file: &File, size: u64, block_size: u32) -> bool {
    let Ok(offset) = libc::off_t::try_from(size) else {
        return false;
    };
    // SAFETY: fallocate on our own descriptor; the range lies past the end of the file, so at
    // most preallocated blocks beyond EOF are freed and no data or size changes.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            libc::off_t::from(block_size),
        )
    };
    rc == 0
}

const EXT4_MAGIC: u32 = 0xef53;
const XFS_MAGIC: u32 = 0x5846_5342;
const BTRFS_MAGIC: u32 = 0x9123_683e;
const F2FS_MAGIC: u32 = 0xf2f5_2010;
const BCACHEFS_MAGIC: u32 = 0xca45_1a4e;
/// `FS_EXTENT_FL`: the inode is extent-mapped (ext4 supports `ZERO_RANGE` only for those).
const FS_EXTENT_FL: libc::c_long = 0x0008_0000;

/// Whether the file's filesystem implements `fallocate(ZERO_RANGE)`: decided by filesystem type
/// (`fstatfs`), since a real probe would have to allocate blocks.
fn file_zeroes_ranges(file: &File) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes one `struct statfs` into `st`, which is live and large enough.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: zero-initialised and filled by a successful fstatfs; all fields are integers.
    let st = unsafe { st.assume_init() };
    // f_type is a signed word whose low 32 bits are the magic.
    match st.f_type as u32 {
        XFS_MAGIC | BTRFS_MAGIC | F2FS_MAGIC | BCACHEFS_MAGIC => true,
        EXT4_MAGIC => {
            let mut flags: libc::c_long = 0;
            // SAFETY: FS_IOC_GETFLAGS writes one flags word through the pointer to a live local
            // (the kernel writes an int; a long has room for it).
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
            rc == 0 && flags & FS_EXTENT_FL != 0
        }
        _ => false,
    }
}

/// One aligned `O_DIRECT` read of the first block, to find out at open (not on the first guest
/// request) whether direct I/O works at this block size.
fn probe_direct_read(file: &File, block_size: u32) -> io::Result<()> {
    let len = block_size as usize;
    let buf = AlignedBuf::new(len).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
    // SAFETY: `buf` is a live allocation of `len` bytes that nothing else references.
    let rc = unsafe { libc::pread(file.as_raw_fd(), buf.as_ptr().cast(), len, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A temporary directory on a disk filesystem: /tmp can be tmpfs, which may lack O_DIRECT
    /// or hole punching; `target/` is where the build runs, so it is a real filesystem here.
    pub(crate) fn disk_dir() -> tempfile::TempDir {
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/uring-tests");
        std::fs::create_dir_all(&base).expect("create test dir");
        tempfile::tempdir_in(&base).expect("tempdir")
    }

    /// A file of `len` bytes filled with `byte`.
    pub(crate) fn filled_file(dir: &Path, name: &str, len: usize, byte: u8) -> PathBuf {
        let path = dir.join(name);
        let mut f = File::create(&path).expect("create");
        f.write_all(&vec![byte; len]).expect("fill");
        f.sync_all().expect("sync");
        path
    }

    /// Whether the filesystem of `dir` does `fallocate(mode | KEEP_SIZE)` inside a file: tried
    /// on a scratch file there, independently of the bdev's own probe.
    pub(crate) fn fs_fallocates(dir: &Path, mode: libc::c_int) -> bool {
        let path = filled_file(dir, ".fallocate-probe", 64 << 10, 0x5a);
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        // SAFETY: fallocate on our own scratch file.
        let rc =
            unsafe { libc::fallocate(f.as_raw_fd(), mode | libc::FALLOC_FL_KEEP_SIZE, 4096, 4096) };
        drop(f);
        std::fs::remove_file(&path).expect("remove probe");
        rc == 0
    }

    /// A name for a memfd (a file on the kernel's internal tmpfs, whatever is mounted where)
    /// that `open` can take: /proc/self/fd/N.
    fn memfd(len: u64) -> (File, PathBuf) {
        // SAFETY: memfd_create makes a new descriptor; the name is a valid C string.
        let fd = unsafe { libc::memfd_create(c"spinblk-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor owned by nobody else.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(len).expect("size");
        let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        (f, path)
    }

    #[test]
    fn geometry_of_a_regular_file() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "disk.img", 1 << 20, 0);
        let bdev = UringBdev::open(&path, UringOptions::default()).expect("open");
        assert!(bdev.block_size() == 512 || bdev.block_size() == 4096);
        assert_eq!(bdev.size_bytes(), 1 << 20);
        assert_eq!(bdev.name(), "disk.img");
        assert!(!bdev.is_block_device());
        assert!(bdev.supports(IoOp::Read) && bdev.supports(IoOp::Write));
        assert!(bdev.supports(IoOp::Flush));

        let opts = UringOptions {
            block_size: Some(4096),
            ..UringOptions::default()
        };
        let bdev = UringBdev::open(&path, opts).expect("open 4k");
        assert_eq!((bdev.block_size(), bdev.num_blocks()), (4096, 256));
        assert_eq!(bdev.iovec_alignment() % 4096, 0);

        let ro = UringOptions {
            read_only: true,
            ..UringOptions::default()
        };
        let bdev = UringBdev::open(&path, ro).expect("open ro");
        assert!(!bdev.supports(IoOp::Write));
        assert!(!bdev.supports(IoOp::Discard) && !bdev.supports(IoOp::WriteZeroes));

        let buffered = UringOptions {
            buffered: true,
            ..UringOptions::default()
        };
        let bdev = UringBdev::open(&path, buffered).expect("open buffered");
        assert_eq!((bdev.block_size(), bdev.iovec_alignment()), (512, 1));
    }

    #[test]
    fn refuses_sizes_that_are_not_whole_blocks() {
        let dir = disk_dir();
        let odd = filled_file(dir.path(), "odd.img", 4096 + 100, 0);
        let err = UringBdev::open(&odd, UringOptions::default())
            .err()
            .expect("odd size refused");
        assert!(matches!(err, BdevError::InvalidGeometry(_)), "{err}");
        assert!(
            err.to_string().contains("not a multiple of the block size"),
            "{err}"
        );

        // 512-aligned but not 4096-aligned: fine at 512, refused at 4096.
        let half = filled_file(dir.path(), "half.img", 4096 + 512, 0);
        let buffered = UringOptions {
            buffered: true,
            ..UringOptions::default()
        };
        assert!(UringBdev::open(&half, buffered).is_ok());
        let opts = UringOptions {
            block_size: Some(4096),
            ..UringOptions::default()
        };
        let err = UringBdev::open(&half, opts).err().expect("refused at 4k");
        eprintln!("{err}");
        assert!(err.to_string().contains("4608 bytes"), "{err}");

        let empty = filled_file(dir.path(), "empty.img", 0, 0);
        let err = UringBdev::open(&empty, UringOptions::default())
            .err()
            .expect("empty refused");
        eprintln!("{err}");
        assert!(err.to_string().contains("is empty"), "{err}");

        let opts = UringOptions {
            block_size: Some(1024),
            buffered: true,
            ..UringOptions::default()
        };
        let err = UringBdev::open(&half, opts).err().expect("1k refused");
        assert!(err.to_string().contains("must be 512 or 4096"), "{err}");
    }

    #[test]
    fn refuses_missing_paths_and_directories() {
        let dir = disk_dir();
        let err = UringBdev::open(dir.path().join("nope"), UringOptions::default())
            .err()
            .expect("missing");
        assert!(matches!(err, BdevError::Open { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot open"), "{err}");
        let ro = UringOptions {
            read_only: true,
            ..UringOptions::default()
        };
        let err = UringBdev::open(dir.path(), ro).err().expect("directory");
        assert!(
            matches!(
                err,
                BdevError::NotAFileOrBlockDevice(_) | BdevError::DirectIoUnsupported { .. }
            ),
            "{err}"
        );
    }

    /// A filesystem without O_DIRECT gives a message that names the problem and `--buffered`.
    /// tmpfs has accepted O_DIRECT since Linux 6.6, so procfs stands in where it does.
    #[test]
    fn no_direct_io_filesystem_points_to_buffered() {
        let ro = UringOptions {
            read_only: true,
            ..UringOptions::default()
        };
        let err = UringBdev::open("/proc/self/stat", ro)
            .err()
            .expect("procfs has no O_DIRECT");
        assert!(
            matches!(err, BdevError::DirectIoUnsupported { .. }),
            "{err}"
        );
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(
            msg.contains("O_DIRECT") && msg.contains("--buffered"),
            "{msg}"
        );
        assert!(msg.starts_with("/proc/self/stat"), "{msg}");

        // tmpfs (a memfd: always there): either refused with the same clear error (before
        // Linux 6.6) or served.
        let (_memfd, path) = memfd(64 << 10);
        match UringBdev::open(&path, UringOptions::default()) {
            Err(err @ BdevError::DirectIoUnsupported { .. }) => {
                assert!(err.to_string().contains("--buffered"), "{err}")
            }
            Err(err) => panic!("unexpected error on tmpfs: {err}"),
            Ok(bdev) => {
                // tmpfs punches holes but has no ZERO_RANGE.
                assert!(bdev.supports(IoOp::Discard));
                assert!(!bdev.supports(IoOp::WriteZeroes));
            }
        }
        let buffered = UringOptions {
            buffered: true,
            ..UringOptions::default()
        };
        assert!(UringBdev::open(&path, buffered).is_ok());
    }

    /// A file that grows is seen by a rescan, and a channel opened before serves the new
    /// blocks; one that shrinks is reported and not applied unless forced; a size that is not
    /// whole blocks is rounded down.
    #[test]
    fn rescan_follows_the_file() {
        use crate::testing::{rw, Buf};
        let dir = disk_dir();
        let path = filled_file(dir.path(), "grow.img", 64 << 10, 0x44);
        let bdev = UringBdev::open(&path, UringOptions::default()).expect("open");
        let bs = u64::from(bdev.block_size());
        let mut ch = bdev.open_channel(2).expect("channel");
        assert_eq!(bdev.rescan().expect("same size"), 64 << 10);
        let file = OpenOptions::new().write(true).open(&path).expect("open rw");
        file.set_len((256 << 10) + 100).expect("grow");
        assert_eq!(bdev.rescan().expect("grown"), 256 << 10);
        assert_eq!(bdev.size_bytes(), 256 << 10);
        assert_eq!(bdev.num_blocks(), (256 << 10) / bs);
        let src = Buf::new(4096, 0x55);
        let iov = [src.iov(0, 4096)];
        let mut run = |io| {
            ch.submit(io).expect("room");
            let mut st = None;
            let start = std::time::Instant::now();
            while st.is_none() {
                ch.flush_submissions();
                ch.poll_completions(&mut |c| st = Some(c.status));
                assert!(start.elapsed().as_secs() < 10);
            }
            st
        };
        assert_eq!(
            run(rw(1, IoOp::Write, 200 << 10, &iov)),
            Some(crate::IoStatus::Success)
        );
        assert!(
            std::fs::read(&path).expect("read")[200 << 10..(200 << 10) + 4096]
                .iter()
                .all(|&b| b == 0x55)
        );

        file.set_len(128 << 10).expect("shrink");
        match bdev.rescan() {
            Err(BdevError::Shrunk { current, found }) => {
                assert_eq!((current, found), (256 << 10, 128 << 10))
            }
            other => panic!("shrink not reported: {other:?}"),
        }
        assert_eq!(bdev.size_bytes(), 256 << 10, "not applied");
        assert_eq!(bdev.rescan_forced().expect("forced"), 128 << 10);
        assert_eq!(bdev.size_bytes(), 128 << 10);
        file.set_len(10).expect("tiny");
        assert!(bdev.rescan_forced().is_err(), "less than a block");
        assert_eq!(bdev.size_bytes(), 128 << 10);
        drop(ch);
    }

    /// What the bdev advertises for discard and write-zeroes agrees with what the test
    /// directory's filesystem does when asked (on a scratch file): discard exactly (the bdev
    /// probes with a real hole punch), write-zeroes never advertised where it fails (the bdev
    /// decides by filesystem type). The probe past the end touches no data.
    #[test]
    fn discard_and_write_zeroes_match_the_filesystem() {
        let dir = disk_dir();
        let path = filled_file(dir.path(), "d.img", 64 << 10, 0x11);
        let bdev = UringBdev::open(&path, UringOptions::default()).expect("open");
        let punch = fs_fallocates(dir.path(), libc::FALLOC_FL_PUNCH_HOLE);
        let zero = fs_fallocates(dir.path(), libc::FALLOC_FL_ZERO_RANGE);
        eprintln!("test filesystem: punch hole {punch}, zero range {zero}");
        assert_eq!(bdev.supports(IoOp::Discard), punch);
        if bdev.supports(IoOp::WriteZeroes) {
            assert!(zero, "write-zeroes advertised but ZERO_RANGE fails");
        } else if zero {
            eprintln!("NOTE: this filesystem does ZERO_RANGE but the bdev does not know it");
        }
        // On ext4, xfs and btrfs both hold.
        let f = File::open(dir.path()).expect("dir");
        let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: as in file_zeroes_ranges.
        assert_eq!(unsafe { libc::fstatfs(f.as_raw_fd(), st.as_mut_ptr()) }, 0);
        // SAFETY: filled by a successful fstatfs.
        let magic = unsafe { st.assume_init() }.f_type as u32;
        if [EXT4_MAGIC, XFS_MAGIC, BTRFS_MAGIC].contains(&magic) {
            assert!(
                punch && zero,
                "a disk filesystem punches holes and zeroes ranges"
            );
            assert!(bdev.supports(IoOp::Discard) && bdev.supports(IoOp::WriteZeroes));
        }
        // The probe past the end left size and contents alone.
        let data = std::fs::read(&path).expect("read back");
        assert_eq!(data.len(), 64 << 10);
        assert!(data.iter().all(|&b| b == 0x11));
    }
}
