//! Dirty-page logging for live migration (vhost-user VHOST_F_LOG_ALL + LOG_SHMFD): a bitmap
//! shared with the frontend, one bit per 4 KiB guest page, set (atomic OR) for every page the
//! target writes into guest memory while the frontend migrates the VM. The frontend reads and
//! clears it between migration rounds, and sends the pages it names again.

use std::fs::File;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::sigbus::SharedMapping;

/// Guest page size the log counts in (vhost-user: VHOST_LOG_PAGE).
pub const LOG_PAGE: u64 = 4096;

/// Why a log region was refused.
#[derive(Debug)]
pub enum LogError {
    /// Zero size, or offset + size overflows or is past the end of the file.
    BadSize,
    /// mmap failed.
    Os(std::io::Error),
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::BadSize => f.write_str("bad dirty log size"),
            LogError::Os(e) => write!(f, "cannot map the dirty log: {e}"),
        }
    }
}

impl std::error::Error for LogError {}

/// A mapped dirty bitmap.
pub struct DirtyLog {
    ptr: *mut u8,
    len: usize,
    /// Test-only negative control (SPINBLK_TEST_DISABLE_DIRTY_LOG): marks nothing.
    disabled: bool,
    /// The frontend's log (checked and SIGBUS-guarded), or `None` for a private one.
    _shared: Option<SharedMapping>,
}

// SAFETY: the bitmap is shared memory owned by this value and only ever updated with atomic
// byte operations; any thread may mark it.
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    /// Maps `size` bytes at `offset` of `file` (SET_LOG_BASE).
    pub fn map(file: &File, offset: u64, size: u64) -> Result<Arc<Self>, LogError> {
        let len = usize::try_from(size).map_err(|_| LogError::BadSize)?;
        let mapping = SharedMapping::map(file, offset, len).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => LogError::BadSize,
            _ => LogError::Os(e),
        })?;
        Ok(Arc::new(DirtyLog {
            ptr: mapping.as_ptr(),
            len,
            disabled: std::env::var_os("SPINBLK_TEST_DISABLE_DIRTY_LOG").is_some(),
            _shared: Some(mapping),
        }))
    }

    /// A private log (anonymous memory) of `len` bytes: for measuring the cost of logging
    /// without a migrating frontend (SPINBLK_BENCH_DIRTY_LOG) and for tests.
    pub fn anonymous(len: usize) -> Result<Arc<Self>, LogError> {
        // SAFETY: a new private anonymous mapping owned by the returned value.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(LogError::Os(std::io::Error::last_os_error()));
        }
        Ok(Arc::new(DirtyLog {
            ptr: ptr.cast(),
            len: len.max(1),
            disabled: false,
            _shared: None,
        }))
    }

    /// Marks every page of guest range `gpa .. gpa + len` dirty. Pages past the end of the
    /// log are ignored (the frontend sized it for its memory; anything beyond is not guest RAM
    /// it migrates).
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 || self.disabled {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let mut page = first;
        while page <= last {
            let byte = page / 8;
            if byte >= self.len as u64 {
                return;
            }
            // All the pages of this byte up to `last`, in one OR.
            let lo = page % 8;
            let hi = if last / 8 == byte { last % 8 } else { 7 };
            let mask = ((0xffu16 << lo) & (0xffu16 >> (7 - hi))) as u8;
            // SAFETY: `byte < len`, inside the mapping; the frontend updates the same bytes
            // with atomic operations too.
            let cell = unsafe { &*self.ptr.add(byte as usize).cast::<AtomicU8>() };
            cell.fetch_or(mask, Ordering::Relaxed);
            page = (byte + 1) * 8;
        }
    }

    /// Whether page `page` is marked (tests and diagnostics).
    pub fn is_marked(&self, page: u64) -> bool {
        let byte = page / 8;
        if byte >= self.len as u64 {
            return false;
        }
        // SAFETY: inside the mapping, read atomically.
        let cell = unsafe { &*self.ptr.add(byte as usize).cast::<AtomicU8>() };
        cell.load(Ordering::Relaxed) & (1 << (page % 8)) != 0
    }

    /// Log size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the log has no bytes (never: a log is at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        if self._shared.is_none() {
            // SAFETY: unmapping the private mapping this value owns, once (a shared one is
            // unmapped by its `SharedMapping`).
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(log: &DirtyLog, pages: u64) -> Vec<u64> {
        (0..pages).filter(|&p| log.is_marked(p)).collect()
    }

    #[test]
    fn pages_are_marked_at_their_boundaries() {
        let log = DirtyLog::anonymous(16).expect("log");
        log.mark(0, 1);
        assert_eq!(marked(&log, 128), vec![0]);
        log.mark(4095, 2); // straddles pages 0 and 1
        assert_eq!(marked(&log, 128), vec![0, 1]);
        log.mark(5 * 4096 + 100, 8 * 4096); // pages 5..=13, across a byte boundary
        assert_eq!(marked(&log, 128), vec![0, 1, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        log.mark(40 * 4096, 0);
        assert!(!log.is_marked(40), "an empty range marks nothing");
        log.mark(127 * 4096, 4096 * 10); // runs past the log: the tail is ignored
        assert!(log.is_marked(127));
        log.mark(u64::MAX - 10, 100); // overflowing ranges do not wrap
        assert_eq!(marked(&log, 128).len(), 12);
    }

    #[test]
    fn a_log_past_the_end_of_its_file_is_refused() {
        let f = tempfile_of(4096);
        assert!(DirtyLog::map(&f, 0, 4096).is_ok());
        assert!(matches!(DirtyLog::map(&f, 4096, 1), Err(LogError::BadSize)));
        assert!(matches!(DirtyLog::map(&f, 0, 0), Err(LogError::BadSize)));
    }

    fn tempfile_of(len: u64) -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned below.
        let fd = unsafe { libc::memfd_create(c"log-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).expect("size");
        f
    }
}
