//! The per-queue I/O loop.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use blkio::{Blkioq, Completion, Errno, ReqFlags};

use crate::offsets::OffsetGen;
use crate::stats::{DirStats, WorkerStats};

/// How long to wait for in-flight requests after the run ends (or for any
/// completion at all while running) before declaring the target stuck.
const STALL_LIMIT: Duration = Duration::from_secs(5);
/// Timeout of one blocking `do_io` call in interrupt mode, so that the thread
/// can notice the end of the run and stalls.
const WAIT_SLICE: Duration = Duration::from_millis(200);
/// In poll mode, look at the clock once per this many empty polls.
const EMPTY_POLLS_PER_CLOCK_CHECK: u32 = 256;

/// Start line shared by the main thread and the workers: workers check in
/// once their buffers are ready, then wait until the main thread either sets
/// the common start time and opens the gate, or aborts (e.g. because a thread
/// could not be spawned).
#[derive(Default)]
pub struct StartGate {
    ready: AtomicUsize,
    state: AtomicU8,
    start: OnceLock<Instant>,
}

// State 0 (the Default) means "waiting".
const GATE_GO: u8 = 1;
const GATE_ABORT: u8 = 2;

impl StartGate {
    /// Worker side: check in and wait; returns the start time, or None if
    /// the run was aborted before it began.
    fn check_in_and_wait(&self) -> Option<Instant> {
        self.ready.fetch_add(1, Ordering::AcqRel);
        loop {
            match self.state.load(Ordering::Acquire) {
                GATE_GO => return self.start.get().copied(),
                GATE_ABORT => return None,
                _ => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    }

    /// Main side: wait until `n` workers have checked in.
    pub fn wait_ready(&self, n: usize) {
        while self.ready.load(Ordering::Acquire) < n {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Main side: set the start time and release the workers.
    pub fn go(&self) -> Instant {
        let t = *self.start.get_or_init(Instant::now);
        self.state.store(GATE_GO, Ordering::Release);
        t
    }

    /// Main side: release the workers without running.
    pub fn abort(&self) {
        self.state.store(GATE_ABORT, Ordering::Release);
    }
}

/// Everything one worker thread needs; built (fallibly) on the main thread.
pub struct Worker<'a> {
    pub idx: usize,
    pub cpu: Option<usize>,
    pub poll: bool,
    pub bs: usize,
    pub iodepth: usize,
    pub read_pct: u8,
    /// Max bytes per data segment; requests larger than this use readv/writev.
    pub seg_len: usize,
    /// Start address of this worker's `iodepth * bs` bytes inside the mapped
    /// memory region.
    pub buf_base: usize,
    pub offsets: OffsetGen,
    pub stats: WorkerStats,
    pub ramp: Duration,
    pub runtime: Duration,
    /// Pause between a completion and the resubmission of its slot (zero:
    /// resubmit at once).
    pub think: Duration,
    /// Busy-wait through `think` instead of sleeping (always so with `poll`).
    pub think_spin: bool,
    pub gate: &'a StartGate,
    pub abort: &'a AtomicBool,
}

/// Per-slot (request) bookkeeping; slot index is the request's user_data.
#[derive(Clone, Copy)]
struct Slot {
    submitted: Instant,
    write: bool,
}

impl Worker<'_> {
    /// Runs the workload on `q`; always checks in at the start gate.
    pub fn run(mut self, mut q: Blkioq) -> WorkerStats {
        if let Some(cpu) = self.cpu {
            if let Err(e) = crate::cpus::pin(cpu) {
                eprintln!("spinblk-bench: warning: queue {}: {e}", self.idx);
            }
        }

        // Touch (and fill with a non-zero pattern) this worker's buffers so
        // page faults don't land in the measurement and writes carry data.
        // SAFETY: [buf_base, buf_base + iodepth * bs) lies inside the memory
        // region mapped by target::open(), which stays mapped until the Blkio
        // instance is dropped after all workers have finished; no other
        // thread touches this worker's slice of the region.
        unsafe {
            std::ptr::write_bytes(self.buf_base as *mut u8, 0xa5, self.iodepth * self.bs);
        }

        // Scatter lists for requests bigger than the device's max segment.
        // Built here (not on the main thread) because iovec is not Send; they
        // live until the end of run(), i.e. beyond every request using them.
        let nseg = self.bs.div_ceil(self.seg_len.max(1)).max(1);
        let iovecs: Vec<libc::iovec> = if nseg > 1 {
            (0..self.iodepth)
                .flat_map(|slot| {
                    let base = self.buf_base + slot * self.bs;
                    let (bs, seg) = (self.bs, self.seg_len);
                    (0..nseg).map(move |i| libc::iovec {
                        iov_base: (base + i * seg) as *mut libc::c_void,
                        iov_len: seg.min(bs - i * seg),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };

        if !self.think.is_zero() && !self.poll && !self.think_spin {
            // The default timer slack (50 us) would stretch every sleep.
            // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only
            // changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
            }
        }

        let mut completions: Vec<MaybeUninit<Completion>> =
            (0..self.iodepth).map(|_| MaybeUninit::uninit()).collect();

        let Some(start) = self.gate.check_in_and_wait() else {
            return self.stats;
        };
        let measure_from = start + self.ramp;
        let end = measure_from + self.runtime;

        let mut slots = vec![
            Slot {
                submitted: start,
                write: false,
            };
            self.iodepth
        ];

        // Slots waiting out their --think-us pause, with the time they are
        // due again. The pause is the same for all, so due times are in
        // completion order: a FIFO; it never holds more than iodepth entries.
        let mut thinking: VecDeque<(usize, Instant)> = VecDeque::with_capacity(self.iodepth);
        let think = !self.think.is_zero();

        for slot in 0..self.iodepth {
            self.submit(&mut q, &mut slots, &iovecs, nseg, slot, start);
        }
        // Requests submitted to the target and not completed yet.
        let mut inflight = self.iodepth;
        let mut stopping = false;
        let mut stop_time = start;
        let mut last_progress = start;
        let mut empty_polls = 0u32;

        while inflight > 0 || !thinking.is_empty() {
            if !thinking.is_empty() {
                let now = Instant::now();
                if !stopping && (now >= end || self.abort.load(Ordering::Relaxed)) {
                    stopping = true;
                    stop_time = now;
                }
                if stopping {
                    thinking.clear();
                    continue;
                }
                while let Some(&(slot, due)) = thinking.front() {
                    if due > now {
                        break;
                    }
                    thinking.pop_front();
                    self.submit(&mut q, &mut slots, &iovecs, nseg, slot, now);
                    inflight += 1;
                    last_progress = now;
                }
                if inflight == 0 {
                    // Nothing at the target: wait out the first pause.
                    if let Some(&(_, due)) = thinking.front() {
                        if self.poll || self.think_spin {
                            while Instant::now() < due {
                                std::hint::spin_loop();
                            }
                        } else {
                            std::thread::sleep(due.saturating_duration_since(now));
                        }
                    }
                    continue;
                }
            }
            let res = if self.poll {
                q.do_io(&mut completions, 0, None, None)
            } else {
                let mut timeout = WAIT_SLICE;
                if let Some(&(_, due)) = thinking.front() {
                    timeout = timeout.min(due.saturating_duration_since(Instant::now()));
                }
                q.do_io(&mut completions, 1, Some(&mut timeout), None)
            };
            let n = match res {
                Ok(n) => n.min(completions.len()),
                Err(e) if e.errno() == Errno::TIME => 0,
                Err(e) => {
                    self.fatal(format!("queue {}: blkioq_do_io failed: {e}", self.idx));
                    break;
                }
            };

            if n == 0 {
                if self.poll {
                    empty_polls += 1;
                    if empty_polls < EMPTY_POLLS_PER_CLOCK_CHECK {
                        std::hint::spin_loop();
                        continue;
                    }
                    empty_polls = 0;
                }
                let now = Instant::now();
                if !stopping && (now >= end || self.abort.load(Ordering::Relaxed)) {
                    stopping = true;
                    stop_time = now;
                }
                let since = if stopping {
                    stop_time.max(last_progress)
                } else {
                    last_progress
                };
                if now.duration_since(since) >= STALL_LIMIT {
                    self.stats.timeouts += inflight as u64;
                    self.fatal(format!(
                        "queue {}: {inflight} request(s) not completed after {}s; target stalled?",
                        self.idx,
                        STALL_LIMIT.as_secs()
                    ));
                    break;
                }
                continue;
            }

            let now = Instant::now();
            last_progress = now;
            if !stopping && (now >= end || self.abort.load(Ordering::Relaxed)) {
                stopping = true;
                stop_time = now;
            }
            let measured = now >= measure_from && now < end;

            for c in &completions[..n] {
                // SAFETY: do_io() initialised the first n entries (n was
                // clamped to the slice length above).
                let c = unsafe { c.assume_init_ref() };
                let Some(slot) = slots.get(c.user_data).copied() else {
                    self.fatal(format!(
                        "queue {}: completion with unknown user_data {}",
                        self.idx, c.user_data
                    ));
                    return self.stats;
                };
                if c.ret != 0 {
                    self.stats.errors += 1;
                    if self.stats.first_error.is_none() {
                        self.stats.first_error = Some(describe_error(c));
                    }
                } else if measured {
                    let lat = now.duration_since(slot.submitted).as_nanos();
                    let dir: &mut DirStats = if slot.write {
                        &mut self.stats.write
                    } else {
                        &mut self.stats.read
                    };
                    dir.record(self.bs as u64, u64::try_from(lat).unwrap_or(u64::MAX));
                }
                if stopping {
                    inflight -= 1;
                } else if think {
                    inflight -= 1;
                    thinking.push_back((c.user_data, now + self.think));
                } else {
                    self.submit(&mut q, &mut slots, &iovecs, nseg, c.user_data, now);
                }
            }
        }
        self.stats
    }

    #[inline]
    fn submit(
        &mut self,
        q: &mut Blkioq,
        slots: &mut [Slot],
        iovecs: &[libc::iovec],
        nseg: usize,
        slot: usize,
        now: Instant,
    ) {
        let write = !self.offsets.chance(self.read_pct);
        let offset = self.offsets.next_offset();
        slots[slot] = Slot {
            submitted: now,
            write,
        };
        let flags = ReqFlags::empty();
        if nseg > 1 {
            let iov = iovecs[slot * nseg..].as_ptr();
            // nseg <= max-segments (an i32), checked in target::open().
            let cnt = nseg as u32;
            if write {
                q.writev(offset, iov, cnt, slot, flags);
            } else {
                q.readv(offset, iov, cnt, slot, flags);
            }
        } else {
            let buf = (self.buf_base + slot * self.bs) as *mut u8;
            if write {
                q.write(offset, buf, self.bs, slot, flags);
            } else {
                q.read(offset, buf, self.bs, slot, flags);
            }
        }
    }

    fn fatal(&mut self, msg: String) {
        self.abort.store(true, Ordering::Relaxed);
        if self.stats.fatal.is_none() {
            self.stats.fatal = Some(msg);
        }
    }
}

fn describe_error(c: &Completion) -> String {
    let errno = Errno::from_raw_os_error(c.ret.wrapping_neg());
    if c.error_msg.is_null() {
        format!("{errno} (ret {})", c.ret)
    } else {
        // SAFETY: a non-null error_msg points to a NUL-terminated static
        // string set by libblkio (Completion::for_failed_req).
        let msg = unsafe { std::ffi::CStr::from_ptr(c.error_msg) };
        format!("{} (ret {})", msg.to_string_lossy(), c.ret)
    }
}
