//! Linux interfaces the kernel-backed bdevs share: `ioctl` request numbers and sysfs.

use std::path::{Path, PathBuf};

/// Whether this architecture has three `ioctl` direction bits at 29..31 (none = 1, read = 2,
/// write = 4) rather than two at 30..31 (none = 0, write = 1, read = 2).
const THREE_DIR_BITS: bool = cfg!(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
));
/// `_IOC_NONE`, shifted into place.
const DIR_NONE: u32 = if THREE_DIR_BITS { 1 << 29 } else { 0 };
/// `_IOC_READ`, shifted into place.
const DIR_READ: u32 = if THREE_DIR_BITS { 2 << 29 } else { 2 << 30 };
/// `_IOC_READ | _IOC_WRITE`, shifted into place: the same everywhere (6 << 29 = 3 << 30).
const DIR_READ_WRITE: u32 = 3 << 30;

/// Linux `_IOC`: (shifted direction, type, nr, argument size) -> request number.
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    dir | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `_IO(ty, nr)`: no argument.
pub(crate) const fn io(ty: u8, nr: u8) -> u32 {
    ioc(DIR_NONE, ty, nr, 0)
}

/// `_IOR(ty, nr, T)` with `size_of::<T>()` = `size`.
pub(crate) const fn ior(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(DIR_READ, ty, nr, size)
}

/// `_IOWR(ty, nr, T)` with `size_of::<T>()` = `size`.
pub(crate) const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(DIR_READ_WRITE, ty, nr, size)
}

/// The sysfs directory of device number `rdev` of `class` (`"block"` or `"char"`):
/// `/sys/dev/<class>/<major>:<minor>`.
pub(crate) fn sysfs_dev(class: &str, rdev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/dev/{class}/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ))
}

/// A sysfs attribute's value without surrounding white space; `None` if it cannot be read.
pub(crate) fn read_sysfs(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_and_sysfs_paths() {
        #[cfg(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        ))]
        {
            // BLKGETSIZE64 = _IOR(0x12, 114, u64), BLKSSZGET = _IO(0x12, 104).
            assert_eq!(ior(0x12, 114, 8), 0x8008_1272);
            assert_eq!(io(0x12, 104), libc::BLKSSZGET as u32);
            assert_eq!(iowr(b'N', 0x80, 72), 0xc048_4e80);
        }
        // The kernel's dev_t: 12 low major bits at 8..19 and the rest from 44, 8 low minor
        // bits at 0..7 and the rest at 20..43.
        assert_eq!(
            sysfs_dev("block", libc::makedev(259, 3)),
            Path::new("/sys/dev/block/259:3")
        );
        assert_eq!(
            sysfs_dev("char", libc::makedev(4096 + 5, 256 + 7)),
            Path::new("/sys/dev/char/4101:263")
        );
    }
}
