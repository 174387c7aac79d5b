//! What a process holds, from /proc: open fds, mappings, threads and resident memory.

/// A snapshot of a process's resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessFootprint {
    /// Open file descriptors.
    pub fds: usize,
    /// Lines of /proc/PID/maps.
    pub mappings: usize,
    /// Threads.
    pub threads: usize,
}

impl ProcessFootprint {
    /// Reads the footprint of `pid` (zeroes for what cannot be read, e.g. after it exited).
    pub fn of(pid: u32) -> Self {
        let count = |dir: &str| {
            std::fs::read_dir(format!("/proc/{pid}/{dir}"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        let mappings = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|m| m.lines().count())
            .unwrap_or(0);
        ProcessFootprint {
            fds: count("fd"),
            mappings,
            threads: count("task"),
        }
    }

    /// A `key:` field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`, `VmSize`...), if present.
    pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// Resident memory of `pid` in KiB (VmRSS), if readable.
    pub fn rss_kib(pid: u32) -> Option<u64> {
        Self::status_kib(pid, "VmRSS")
    }
}
