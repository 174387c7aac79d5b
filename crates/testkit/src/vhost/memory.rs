//! Guest memory: a memfd mapped into the test process and shared with the target.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, Ordering};

use super::consts::MemRegion;

/// Where the front-end "has" guest memory in its address space, as told to the target. A
/// value unlike any guest physical address, so a target that mixes the two up fails.
pub const UVA_BASE: u64 = 0x7e00_0000_0000;

/// A memfd of guest memory, mapped shared in this process. Guest physical address `gpa()`
/// is byte 0 of the fd.
///
/// The target writes into it concurrently (used rings, read data, status bytes): every access
/// here is volatile, and ring updates are fenced.
pub struct GuestMemory {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
    gpa: u64,
    uva: u64,
}

// SAFETY: the mapping is shared memory accessed only through volatile copies; moving or
// sharing the handle between threads is no different from sharing it with the target.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// `len` bytes at guest physical address 0, front-end address [`UVA_BASE`].
    pub fn new(len: usize) -> io::Result<Self> {
        Self::at(len, 0, UVA_BASE)
    }

    /// `len` bytes at guest physical address `gpa` and front-end address `uva`.
    pub fn at(len: usize, gpa: u64, uva: u64) -> io::Result<Self> {
        // SAFETY: a NUL-terminated name and flags; returns a new fd or -1.
        let raw = unsafe { libc::memfd_create(c"spinblk-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of the whole fd; checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(GuestMemory {
            fd,
            ptr: ptr.cast(),
            len,
            gpa,
            uva,
        })
    }

    /// The memfd.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Bytes of guest memory.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Guest physical address of byte 0.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The region as SET_MEM_TABLE describes it (whole fd, offset 0).
    pub fn region(&self) -> MemRegion {
        MemRegion {
            gpa: self.gpa,
            size: self.len as u64,
            uva: self.uva,
            mmap_offset: 0,
        }
    }

    /// The front-end address of guest address `gpa`.
    pub fn uva_of(&self, gpa: u64) -> u64 {
        gpa.wrapping_sub(self.gpa).wrapping_add(self.uva)
    }

    /// Whether `gpa..gpa + len` lies in this memory.
    pub fn contains(&self, gpa: u64, len: usize) -> bool {
        gpa.checked_sub(self.gpa)
            .and_then(|off| off.checked_add(len as u64))
            .is_some_and(|end| end <= self.len as u64)
    }

    fn at_gpa(&self, gpa: u64, len: usize) -> *mut u8 {
        assert!(
            self.contains(gpa, len),
            "guest access {gpa:#x}+{len} outside {:#x}+{}",
            self.gpa,
            self.len
        );
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.ptr.add((gpa - self.gpa) as usize) }
    }

    /// Copies `data` to guest address `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) {
        let p = self.at_gpa(gpa, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds (checked by at_gpa for the whole range).
            unsafe { p.add(i).write_volatile(*b) };
        }
    }

    /// Fills `len` bytes at `gpa` with `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) {
        let p = self.at_gpa(gpa, len);
        if len >= 4096 {
            // Large fills (data buffers) happen before the target is told about them.
            // SAFETY: in bounds.
            unsafe { std::ptr::write_bytes(p, byte, len) };
            return;
        }
        for i in 0..len {
            // SAFETY: in bounds.
            unsafe { p.add(i).write_volatile(byte) };
        }
    }

    /// Copies `len` bytes out of guest address `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let p = self.at_gpa(gpa, len);
        if len >= 4096 {
            let mut out = vec![0u8; len];
            fence(Ordering::Acquire);
            // SAFETY: in bounds; a bulk copy of data the target finished writing (the used
            // element was seen before this is called).
            unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), len) };
            return out;
        }
        // SAFETY: in bounds.
        (0..len)
            .map(|i| unsafe { p.add(i).read_volatile() })
            .collect()
    }

    /// Writes a little-endian u16 (ring indices).
    pub fn write_u16(&self, gpa: u64, v: u16) {
        self.write(gpa, &v.to_le_bytes());
    }

    /// Reads a little-endian u16.
    pub fn read_u16(&self, gpa: u64) -> u16 {
        let b = self.read(gpa, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, gpa: u64) -> u32 {
        let b = self.read(gpa, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Resizes the memfd (ftruncate). Shrinking it makes the pages past the new end fault
    /// (SIGBUS) for everyone who maps them, this process included: the test must not touch
    /// them afterwards.
    pub fn set_fd_len(&self, len: u64) -> io::Result<()> {
        // SAFETY: ftruncate on our own fd.
        if unsafe { libc::ftruncate(self.fd(), len as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `at`, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A new memfd of `len` bytes that is not mapped here (for regions the test never touches).
pub fn memfd(len: u64) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and flags.
    let raw = unsafe { libc::memfd_create(c"spinblk-extra".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate on our own fd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// An eventfd (counter 0); `nonblocking` as a front-end normally creates it, or blocking.
pub fn eventfd(nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = libc::EFD_CLOEXEC | if nonblocking { libc::EFD_NONBLOCK } else { 0 };
    // SAFETY: plain syscall.
    let raw = unsafe { libc::eventfd(0, flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A pipe (read end, write end), both blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new fds nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
