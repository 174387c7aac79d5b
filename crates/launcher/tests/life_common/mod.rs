//! Helpers for the disk-lifecycle tests (QoS, resize): a libblkio load generator that keeps a
//! fixed number of requests in flight per queue and counts what completes inside a measured
//! window, and scheduler statistics (time spent runnable but not running) to tell a starved
//! measurement from a wrong one on a loaded machine.
#![allow(dead_code)]

use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spinblk_testkit::blkio::{Completion, ReqFlags};
use spinblk_testkit::{connect_only, ClientConfig};

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    /// Completed requests per second inside the window.
    pub iops: f64,
    /// MiB per second inside the window.
    pub mib_s: f64,
    /// Requests that failed (non-zero `ret`), whole run.
    pub errors: u64,
    /// Largest share of the window one client thread spent runnable but not running.
    pub client_wait: f64,
    /// Largest share of the window one target reactor thread spent runnable but not running.
    pub target_wait: f64,
    /// The window's length.
    pub secs: f64,
}

impl Measured {
    /// Whether the machine took the CPU away from the client or the target for a noticeable
    /// share of the window (then a rate below the limit says nothing about the limiter).
    pub fn starved(&self) -> bool {
        self.client_wait > 0.10 || self.target_wait > 0.10
    }

    /// One line for the test output.
    pub fn line(&self) -> String {
        format!(
            "{:.0} IOPS, {:.1} MiB/s over {:.1} s (errors {}; runnable-but-waiting: client {:.1}%, target reactor {:.1}%; loadavg {})",
            self.iops,
            self.mib_s,
            self.secs,
            self.errors,
            self.client_wait * 100.0,
            self.target_wait * 100.0,
            loadavg()
        )
    }
}

/// How to load the device.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Client queues, one thread each.
    pub queues: usize,
    /// Requests in flight per queue.
    pub depth: usize,
    /// Request size in bytes.
    pub block: usize,
    /// Reads (true) or writes.
    pub read: bool,
    /// Seconds before the window starts.
    pub ramp: f64,
    /// The window.
    pub secs: f64,
    /// Pin the client threads to this core (`None`: let them float).
    pub cpu: Option<usize>,
    /// Offsets are spread over this many bytes of the disk.
    pub span: u64,
}

impl Load {
    /// QD `depth` random reads of `block` bytes on one queue, 1 s ramp, `secs` window.
    pub fn reads(block: usize, depth: usize, secs: f64) -> Load {
        Load {
            queues: 1,
            depth,
            block,
            read: true,
            ramp: 1.0,
            secs,
            cpu: None,
            span: 64 << 20,
        }
    }
}

/// The run-queue wait of a thread so far, in nanoseconds (/proc/.../schedstat, second field).
fn run_delay(stat: &Path) -> Option<u64> {
    std::fs::read_to_string(stat)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The target's reactor threads' schedstat files (threads named `reactor*`).
fn reactor_stats(pid: u32) -> Vec<PathBuf> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .map(|c| c.starts_with("reactor"))
                .unwrap_or(false)
        })
        .map(|t| t.path().join("schedstat"))
        .collect()
}

/// The system's load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu is below CPU_SETSIZE (checked by the caller's use of real core numbers).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 = this thread; the set is initialized.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "pin the client thread to cpu {cpu}");
}

/// The number of cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `load` against the device at `socket` (served by the target process `target_pid`) and
/// measures it. Panics if the client cannot connect or a request does not complete in 10 s.
pub fn run(socket: &Path, target_pid: u32, load: Load) -> Measured {
    let cfg = ClientConfig {
        num_queues: load.queues as i32,
        queue_size: (4 * load.depth).next_power_of_two().max(64) as i32,
        read_only: false,
    };
    let mut blkio =
        connect_only(socket, cfg).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let outcome = blkio.start().expect("start");
    let mut queues = outcome.queues;
    assert_eq!(queues.len(), load.queues);
    let slot = load.depth * load.block;
    let region = blkio
        .alloc_mem_region(slot * load.queues)
        .expect("alloc_mem_region");
    blkio.map_mem_region(&region).expect("map_mem_region");
    let base = region.addr as usize;
    let reactors = reactor_stats(target_pid);
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(load.ramp);
    let window_end = window_start + Duration::from_secs_f64(load.secs);
    let mut target_before = Vec::new();
    let results: Vec<(u64, u64, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .iter_mut()
            .enumerate()
            .map(|(qi, q)| {
                let buf = base + qi * slot;
                s.spawn(move || {
                    if let Some(c) = load.cpu {
                        pin(c);
                    }
                    let me = PathBuf::from("/proc/thread-self/schedstat");
                    let blocks = (load.span / load.block as u64).max(1);
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (qi as u64 + 1);
                    let next = |rng: &mut u64| {
                        *rng ^= *rng << 13;
                        *rng ^= *rng >> 7;
                        *rng ^= *rng << 17;
                        (*rng % blocks) * load.block as u64
                    };
                    let submit = |q: &mut spinblk_testkit::blkio::Blkioq, i: usize, off: u64| {
                        let p = (buf + i * load.block) as *mut u8;
                        if load.read {
                            q.read(off, p, load.block, i, ReqFlags::empty());
                        } else {
                            q.write(off, p.cast_const(), load.block, i, ReqFlags::empty());
                        }
                    };
                    for i in 0..load.depth {
                        let off = next(&mut rng);
                        submit(q, i, off);
                    }
                    let mut done: Vec<MaybeUninit<Completion>> = Vec::with_capacity(load.depth);
                    done.resize_with(load.depth, MaybeUninit::uninit);
                    let (mut in_window, mut errors) = (0u64, 0u64);
                    let mut wait_before = None;
                    let mut wait = 0.0;
                    let mut last = Instant::now();
                    loop {
                        let now = Instant::now();
                        if wait_before.is_none() && now >= window_start {
                            wait_before = run_delay(&me);
                        }
                        if now >= window_end {
                            if let (Some(b), Some(a)) = (wait_before, run_delay(&me)) {
                                wait = a.saturating_sub(b) as f64 / 1e9 / load.secs;
                            }
                            break;
                        }
                        let mut timeout = Duration::from_millis(200);
                        let n = q
                            .do_io(&mut done, 1, Some(&mut timeout), None)
                            .expect("do_io");
                        if n == 0 {
                            assert!(
                                last.elapsed() < Duration::from_secs(10),
                                "queue {qi}: no completion for 10 s"
                            );
                            continue;
                        }
                        last = Instant::now();
                        let counted = last > window_start && last <= window_end;
                        for c in &done[..n] {
                            // SAFETY: do_io initialised the first n entries.
                            let c = unsafe { c.assume_init_read() };
                            if c.ret != 0 {
                                errors += 1;
                            } else if counted {
                                in_window += 1;
                            }
                            let off = next(&mut rng);
                            submit(q, c.user_data, off);
                        }
                    }
                    // Drain what is still in flight before the client goes.
                    let mut left = load.depth;
                    let drain_deadline = Instant::now() + Duration::from_secs(10);
                    while left > 0 && Instant::now() < drain_deadline {
                        let mut timeout = Duration::from_millis(200);
                        let n = q
                            .do_io(&mut done, 1, Some(&mut timeout), None)
                            .expect("do_io");
                        left = left.saturating_sub(n);
                    }
                    assert_eq!(left, 0, "queue {qi}: requests never completed");
                    (in_window, errors, wait)
                })
            })
            .collect();
        // The target's reactors, sampled over the same window.
        let now = Instant::now();
        if window_start > now {
            std::thread::sleep(window_start - now);
        }
        target_before = reactors.iter().map(|p| run_delay(p)).collect();
        let now = Instant::now();
        if window_end > now {
            std::thread::sleep(window_end - now);
        }
        let target_after: Vec<Option<u64>> = reactors.iter().map(|p| run_delay(p)).collect();
        target_before = target_before
            .iter()
            .zip(&target_after)
            .map(|(b, a)| match (b, a) {
                (Some(b), Some(a)) => Some(a.saturating_sub(*b)),
                _ => None,
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let ops: u64 = results.iter().map(|r| r.0).sum();
    let errors: u64 = results.iter().map(|r| r.1).sum();
    let client_wait = results.iter().map(|r| r.2).fold(0.0, f64::max);
    let target_wait = target_before
        .iter()
        .flatten()
        .map(|d| *d as f64 / 1e9 / load.secs)
        .fold(0.0, f64::max);
    blkio.unmap_mem_region(&region);
    blkio.free_mem_region(&region);
    let iops = ops as f64 / load.secs;
    Measured {
        iops,
        mib_s: iops * load.block as f64 / (1 << 20) as f64,
        errors,
        client_wait,
        target_wait,
        secs: load.secs,
    }
}

/// Measures `load`; when the rate is outside `ok` and the machine was clearly starved (see
/// [`Measured::starved`]), measures once more. Prints every attempt under `label`.
pub fn measure_checked(
    label: &str,
    socket: &Path,
    target_pid: u32,
    load: Load,
    ok: impl Fn(&Measured) -> bool,
) -> Measured {
    let m = run(socket, target_pid, load);
    println!("{label}: {}", m.line());
    if ok(&m) || !m.starved() {
        return m;
    }
    println!("{label}: the machine starved the measurement; measuring once more");
    let m2 = run(socket, target_pid, load);
    println!("{label} (retry): {}", m2.line());
    m2
}

/// Appends `line` to target/figures/<file> in the workspace (figures for the closing note;
/// cargo test hides the output of passing tests).
pub fn record(file: &str, line: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/figures");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file))
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "{line}")
        });
}
