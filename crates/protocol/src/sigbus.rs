//! Guest memory that its owner can take away: a frontend maps its guest RAM from a file it
//! controls and may truncate that file after handing it over. Touching a page past the new end
//! raises SIGBUS, which by default kills the whole target (every controller, every VM).
//!
//! Two defences:
//! - When a region arrives, its fd must be a regular file at least `offset + size` long
//!   (checked before mapping; [`check_file`]). A memfd sealed against shrinking (QEMU's
//!   `memory-backend-memfd` seals by default) can never shrink later.
//! - Every other guest mapping is registered here ([`Guard`]). A process-wide SIGBUS handler
//!   looks the faulting address up in a fixed table of atomics (no lock, no allocation: it runs
//!   in signal context); inside a registered range it maps anonymous zero pages over the
//!   faulting page (`MAP_FIXED`), counts the hit and returns, so the access is retried and
//!   succeeds on memory that only the target sees. The guest gets garbage for the pages its own
//!   frontend destroyed, and the frontend's connection is closed (the backend checks
//!   [`Guard::hits`]). A fault outside every registered range restores the default action and
//!   returns, so the fault repeats and kills the process as before: real bugs still crash.
//!
//! `mmap` is not on POSIX's list of async-signal-safe functions, but on Linux it is a plain
//! system call with no user-space state, which is what this relies on.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Ranges that can be registered at once (regions of all connections, inflight and log areas).
const SLOTS: usize = 4096;

struct Slot {
    /// Start address; 0 = free.
    start: AtomicUsize,
    len: AtomicUsize,
    /// Page size of the mapping (4 KiB, or the huge page size on hugetlbfs).
    page: AtomicUsize,
    hits: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    page: AtomicUsize::new(0),
    hits: AtomicU64::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Serialises registration (control plane only; the handler never takes it).
static REGISTER: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();

/// Why a file cannot back guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCheck {
    /// Not a regular file (memfd, tmpfs, hugetlbfs files are).
    NotRegular,
    /// `offset + size` reaches past the end of the file.
    PastEnd,
    /// fstat failed.
    Stat,
}

impl std::fmt::Display for FileCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileCheck::NotRegular => "not a regular file",
            FileCheck::PastEnd => "region reaches past the end of its file",
            FileCheck::Stat => "cannot stat the file",
        })
    }
}

/// What [`check_file`] learnt about a file that may back guest memory.
#[derive(Debug, Clone, Copy)]
pub struct FileInfo {
    /// The file is sealed against shrinking (memfd F_SEAL_SHRINK): it can never SIGBUS us.
    pub sealed: bool,
    /// The filesystem's page size (huge pages on hugetlbfs).
    pub page_size: usize,
}

/// Checks that `size` bytes at `offset` of `file` exist now.
pub fn check_file(file: &File, offset: u64, size: u64) -> Result<FileInfo, FileCheck> {
    // SAFETY: fstat into a zeroed struct we own, on a descriptor we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
        return Err(FileCheck::Stat);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FileCheck::NotRegular);
    }
    let end = offset.checked_add(size).ok_or(FileCheck::PastEnd)?;
    if end > st.st_size as u64 {
        return Err(FileCheck::PastEnd);
    }
    // SAFETY: fcntl F_GET_SEALS on a descriptor we own; -1 (not a memfd) means no seals.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    let sealed = seals >= 0 && seals & libc::F_SEAL_SHRINK != 0;
    let page_size = usize::try_from(st.st_blksize).unwrap_or(4096).max(4096);
    Ok(FileInfo { sealed, page_size })
}

/// A registered guest mapping; unregistered on drop. Drop it only after the mapping is gone (or
/// will never be touched again).
pub struct Guard {
    slot: usize,
}

impl Guard {
    /// Registers `len` bytes at `addr` (a mapping of `page_size` pages). `None` when the table
    /// is full (the caller refuses the mapping).
    pub fn register(addr: *const u8, len: usize, page_size: usize) -> Option<Guard> {
        install();
        let _g = REGISTER.lock().unwrap_or_else(|p| p.into_inner());
        let slot = TABLE
            .iter()
            .position(|s| s.start.load(Ordering::Relaxed) == 0)?;
        let s = &TABLE[slot];
        s.len.store(len, Ordering::Relaxed);
        s.page.store(page_size.max(4096), Ordering::Relaxed);
        s.hits.store(0, Ordering::Relaxed);
        // Publish the start last: the handler reads start, then len.
        s.start.store(addr as usize, Ordering::Release);
        Some(Guard { slot })
    }

    /// How many faults were repaired in this range (the frontend shrank the file under us).
    pub fn hits(&self) -> u64 {
        TABLE[self.slot].hits.load(Ordering::Relaxed)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _g = REGISTER.lock().unwrap_or_else(|p| p.into_inner());
        TABLE[self.slot].start.store(0, Ordering::Release);
    }
}

/// A shared mapping of part of a frontend's file (an inflight region, a dirty log), checked
/// against the file's size before mapping and, unless the file is sealed against shrinking,
/// guarded against SIGBUS for as long as it is mapped.
pub struct SharedMapping {
    ptr: *mut u8,
    len: usize,
    /// Unregistered after the unmap (fields drop after `Drop::drop`).
    _guard: Option<Guard>,
}

// SAFETY: the mapping is plain shared memory owned by this value; users access it through raw
// pointers with their own synchronisation (volatile or atomic accesses).
unsafe impl Send for SharedMapping {}
// SAFETY: as above; no Rust references into it are handed out by this type.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes at `offset` of `file`, read-write and shared.
    pub fn map(file: &File, offset: u64, len: usize) -> std::io::Result<Self> {
        let bad =
            |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
        if len == 0 {
            return Err(bad("empty mapping"));
        }
        let info = check_file(file, offset, len as u64).map_err(|e| bad(&e.to_string()))?;
        let off = libc::off_t::try_from(offset).map_err(|_| bad("offset too large"))?;
        // SAFETY: a new shared mapping of `len` bytes of a file at least offset + len long
        // (checked above); the pointer is owned by the returned value and unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let guard = if info.sealed {
            None
        } else {
            match Guard::register(ptr.cast(), len, info.page_size) {
                Some(g) => Some(g),
                None => {
                    // SAFETY: unmapping the mapping made just above, once.
                    unsafe { libc::munmap(ptr, len) };
                    return Err(bad("too many guarded mappings"));
                }
            }
        };
        Ok(SharedMapping {
            ptr: ptr.cast(),
            len,
            _guard: guard,
        })
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: installing a handler with a zeroed, then filled, sigaction; the handler only
        // reads atomics and makes system calls.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in TABLE.iter() {
        let start = s.start.load(Ordering::Acquire);
        if start == 0 || addr < start || addr - start >= s.len.load(Ordering::Relaxed) {
            continue;
        }
        let page = s.page.load(Ordering::Relaxed);
        let base = addr & !(page - 1);
        // SAFETY: replaces the faulting page(s) of a registered guest mapping (which the target
        // owns and which is still mapped, or the access could not fault there) with private
        // anonymous memory of the same size and protection; nothing else lives there.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            s.hits.fetch_add(1, Ordering::Relaxed);
            return;
        }
        break;
    }
    // Not ours (or unrepairable): fall back to the default action; the fault repeats and the
    // process dies with SIGBUS as it would have without us.
    // SAFETY: signal() with SIG_DFL is async-signal-safe.
    unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn memfd(len: u64) -> File {
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned below.
        let fd = unsafe { libc::memfd_create(c"sigbus-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).expect("size");
        f
    }

    #[test]
    fn files_are_checked_before_mapping() {
        let f = memfd(8192);
        assert!(check_file(&f, 0, 8192).is_ok());
        assert_eq!(check_file(&f, 4096, 8192).err(), Some(FileCheck::PastEnd));
        assert_eq!(check_file(&f, u64::MAX, 2).err(), Some(FileCheck::PastEnd));
        let dir = File::open("/").expect("root");
        assert_eq!(check_file(&dir, 0, 1).err(), Some(FileCheck::NotRegular));
    }

    #[test]
    fn a_truncated_guest_mapping_faults_into_zero_pages_not_a_crash() {
        let f = memfd(4 * 4096);
        // SAFETY: a shared mapping of our own 16 KiB memfd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p.cast::<u8>();
        let guard = Guard::register(base, 4 * 4096, 4096).expect("slot");
        // SAFETY: inside the mapping.
        unsafe { base.add(3 * 4096).write_volatile(7) };
        f.set_len(4096).expect("truncate under the mapping");
        // SAFETY: the page is past the file's end now: this faults, and the handler repairs it.
        let v = unsafe { base.add(3 * 4096).read_volatile() };
        assert_eq!(v, 0, "a repaired page reads zeroes");
        // SAFETY: as above, a write to another lost page.
        unsafe { base.add(2 * 4096 + 5).write_volatile(1) };
        assert_eq!(guard.hits(), 2);
        drop(guard);
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p, 4 * 4096) };
    }
}
