//! What a process holds, from /proc: open fds, mappings, threads and resident memory.

/// A snapshot of a process's resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessFootprint {
    /// Open file descriptors.
    pub fds: usize,
    /// Lines of /proc/PID/maps, less glibc's per-thread malloc arenas ([`malloc_arena_lines`]):
    /// glibc creates one when threads contend for the allocator and never unmaps it (at most 8
    /// per core), so whether a run adds one is up to timing, not to a leak.
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
            .map(|m| m.lines().count() - malloc_arena_lines(&m))
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

    /// The text of /proc/PID/maps (empty if unreadable), to show what changed when a
    /// footprint differs: see [`maps_diff`].
    pub fn maps(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default()
    }
}

/// The lines only in `before` (prefixed `-`) and only in `after` (prefixed `+`) of two
/// /proc/PID/maps texts, one per line.
pub fn maps_diff(before: &str, after: &str) -> String {
    let only = |a: &str, b: &str, sign: char| {
        a.lines()
            .filter(|l| !b.lines().any(|m| m == *l))
            .map(|l| format!("{sign}{l}\n"))
            .collect::<String>()
    };
    only(before, after, '-') + &only(after, before, '+')
}

/// glibc's heap size for a non-main malloc arena on 64-bit (`HEAP_MAX_SIZE`): each arena is one
/// anonymous mapping of this size at an address aligned to it, its used part read-write and
/// the rest `PROT_NONE`.
const ARENA_HEAP: u64 = 64 << 20;

/// How many lines of a /proc/PID/maps text are glibc malloc arena heaps: an anonymous `rw-p`
/// mapping at a 64 MiB-aligned address that, alone or with the anonymous `---p` mapping right
/// after it, spans exactly 64 MiB.
pub fn malloc_arena_lines(maps: &str) -> usize {
    struct Line<'a> {
        start: u64,
        end: u64,
        perms: &'a str,
        anon: bool,
    }
    let lines: Vec<Line> = maps
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (start, end) = f.first()?.split_once('-')?;
            Some(Line {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                perms: f.get(1)?,
                anon: f.get(4) == Some(&"0") && f.len() == 5,
            })
        })
        .collect();
    let mut n = 0;
    let mut i = 0;
    while i < lines.len() {
        let l = &lines[i];
        if l.anon && l.perms == "rw-p" && l.start % ARENA_HEAP == 0 {
            if l.end - l.start == ARENA_HEAP {
                n += 1;
            } else if let Some(next) = lines.get(i + 1) {
                if next.anon
                    && next.perms == "---p"
                    && next.start == l.end
                    && next.end == l.start + ARENA_HEAP
                {
                    n += 2;
                    i += 1;
                }
            }
        }
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::malloc_arena_lines;

    #[test]
    fn malloc_arenas_are_recognised_and_nothing_else() {
        let maps = "\
7f2c00000000-7f2c00021000 rw-p 00000000 00:00 0 
7f2c00021000-7f2c04000000 ---p 00000000 00:00 0 
7f2c08000000-7f2c0c000000 rw-p 00000000 00:00 0 
7f2c10000000-7f2c10021000 rw-p 00000000 00:00 0 
7f2c10021000-7f2c12000000 ---p 00000000 00:00 0 
7f2c14000000-7f2c14021000 rw-p 00000000 00:00 0 /memfd:guest (deleted)
7f2c14021000-7f2c18000000 ---p 00000000 00:00 0 
7f2c1c001000-7f2c1c022000 rw-p 00000000 00:00 0 
7f2c1c022000-7f2c20001000 ---p 00000000 00:00 0 
";
        // Two arenas (one split, one fully used); a split mapping shorter than 64 MiB, a file
        // mapping and a misaligned pair are not arenas.
        assert_eq!(malloc_arena_lines(maps), 3);
    }
}
