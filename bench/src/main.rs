//! spinblk-bench: a fio-like load generator for vhost-user-blk targets,
//! built on libblkio's `virtio-blk-vhost-user` driver.
//!
//! One thread per virtqueue keeps `--iodepth` requests in flight and
//! resubmits each request as soon as it completes. Completion waiting:
//!
//! * interrupt mode (default): regular libblkio queues;
//!   `blkioq_do_io(min_completions = 1)` with a 200 ms timeout. libblkio
//!   enables the queue's completion eventfd (VRING_USED notifications) only
//!   for the duration of that call and blocks in ppoll() on it.
//! * `--poll`: libblkio poll queues (`num-poll-queues`) and a busy loop on
//!   `blkioq_do_io(min_completions = 0)`; the target is never asked for
//!   notifications.
//!
//! Exit status: 0 on success, 1 on setup failure (e.g. the target cannot be
//! reached) or when the run was aborted (target stalled, worker failure),
//! 2 on bad command-line arguments, 3 when some requests completed with an
//! error.
//!
//! Hangs: libblkio's vhost-user control plane waits for backend replies with
//! no timeout, so setup and teardown run under a 15 s watchdog, and a run in
//! which requests never completed (5 s after the end) skips teardown.

mod args;
mod cpus;
mod offsets;
mod stats;
mod target;
mod watchdog;
mod worker;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::args::Args;
use crate::offsets::OffsetGen;
use crate::stats::{CpuTime, DirStats, Report, WorkerStats};
use crate::target::{Target, TargetConfig};
use crate::watchdog::Watchdog;
use crate::worker::{StartGate, Worker};

/// Time allowed for connect + start + memory mapping, and for teardown.
const CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let args = Args::parse();
    let (report, target) = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spinblk-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        report.to_json()
    } else {
        report.to_human()
    };
    let printed = match text {
        Ok(t) => {
            println!("{t}");
            true
        }
        Err(e) => {
            eprintln!("spinblk-bench: {e}");
            false
        }
    };

    if report.timeouts > 0 {
        // Requests are still owned by an unresponsive target: the vhost-user
        // teardown (REM_MEM_REG etc.) would block forever waiting for its
        // replies, and unmapping buffers it may still write is pointless.
        // Leave it all to process exit.
        std::mem::forget(target);
    } else {
        let _wd = Watchdog::arm(
            CONTROL_PLANE_TIMEOUT,
            "timed out tearing down the vhost-user connection".to_string(),
        );
        target.close();
    }

    if !printed || !report.fatal.is_empty() {
        ExitCode::FAILURE
    } else if report.errors > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Wall-clock time in seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sleeps until `t` or until `abort` is set.
fn sleep_until(t: Instant, abort: &AtomicBool) {
    loop {
        let now = Instant::now();
        if now >= t || abort.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep((t - now).min(Duration::from_millis(20)));
    }
}

fn run(args: &Args) -> Result<(Report, Target), String> {
    let wd = Watchdog::arm(
        CONTROL_PLANE_TIMEOUT,
        format!("timed out setting up the device at {}", args.socket),
    );
    let mut target = target::open(&TargetConfig {
        socket: &args.socket,
        queues: args.queues,
        poll: args.poll,
        iodepth: args.iodepth,
        bs: args.bs,
        queue_size: args.queue_size,
        segment_size: args.segment_size,
        read_only: !args.rw.writes(),
        verbose: args.verbose,
    })?;
    drop(wd);
    let info = target.info.clone();

    let size = match args.size {
        None => info.capacity,
        Some(s) if s > info.capacity => {
            return Err(format!(
                "--size {s} exceeds the device capacity ({} bytes)",
                info.capacity
            ))
        }
        Some(s) => s,
    };
    let size = size - size % args.bs;
    if size == 0 {
        return Err(format!(
            "the region used ({} bytes) is smaller than --bs {}",
            args.size.unwrap_or(info.capacity),
            args.bs
        ));
    }
    let bs = usize::try_from(args.bs).map_err(|_| "--bs too large".to_string())?;
    let iodepth = args.iodepth as usize;
    let seg_len = usize::try_from(info.seg_len).map_err(|_| "segment size too large")?;

    let queues = std::mem::take(&mut target.queues);
    let nq = queues.len();
    let gate = StartGate::default();
    let abort = AtomicBool::new(false);
    let ramp = Duration::from_secs(args.ramp);
    let runtime = Duration::from_secs(args.runtime);

    // Everything fallible happens before any thread exists.
    let mut workers = Vec::with_capacity(nq);
    for idx in 0..nq {
        let offsets = OffsetGen::new(
            args.seed,
            args.rw.is_random(),
            args.bs,
            size,
            idx as u64,
            nq as u64,
        )
        .ok_or_else(|| "cannot build the offset generator".to_string())?;
        workers.push(Worker {
            idx,
            cpu: args.cpus.as_ref().and_then(|c| {
                if c.0.is_empty() {
                    None
                } else {
                    Some(c.0[idx % c.0.len()])
                }
            }),
            poll: args.poll,
            bs,
            iodepth,
            read_pct: args.rw.read_pct(args.rwmixread),
            seg_len,
            buf_base: target.region.addr + idx * iodepth * bs,
            offsets,
            stats: WorkerStats::new()?,
            ramp,
            runtime,
            think: Duration::from_micros(args.think_us),
            think_spin: args.think_spin,
            gate: &gate,
            abort: &abort,
        });
    }

    if args.idle {
        // No worker threads: the queues stay set up (and owned by `queues`)
        // but nothing is submitted.
        let t0 = Instant::now();
        sleep_until(t0 + ramp, &abort);
        let cpu0 = CpuTime::now();
        let wall0 = unix_now();
        sleep_until(t0 + ramp + runtime, &abort);
        let cpu = CpuTime::now().since(cpu0);
        let window = (wall0, unix_now());
        drop(queues);
        let report = Report {
            socket: args.socket.clone(),
            rw: "idle",
            rwmixread: args.rwmixread,
            bs: args.bs,
            iodepth: 0,
            queues: args.queues,
            poll: args.poll,
            queue_size: info.queue_size,
            size,
            capacity: info.capacity,
            device: info,
            ramp_s: args.ramp,
            think_us: 0,
            think_spin: false,
            runtime_s: runtime.as_secs_f64(),
            read: DirStats::new()?,
            write: DirStats::new()?,
            cpu,
            window_unix_s: window,
            errors: 0,
            timeouts: 0,
            first_error: None,
            fatal: Vec::new(),
        };
        return Ok((report, target));
    }

    let (results, cpu, window, spawn_error) = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(nq);
        let mut spawn_error = None;
        for (w, q) in workers.into_iter().zip(queues) {
            let name = format!("bench-q{}", w.idx);
            match std::thread::Builder::new()
                .name(name)
                .spawn_scoped(s, move || w.run(q))
            {
                Ok(h) => handles.push(h),
                Err(e) => {
                    spawn_error = Some(format!("cannot spawn worker thread: {e}"));
                    break;
                }
            }
        }
        let mut cpu = CpuTime::default();
        let mut window = (0.0, 0.0);
        if spawn_error.is_some() {
            gate.abort();
        } else {
            gate.wait_ready(handles.len());
            let t0 = gate.go();
            let measure_from = t0 + ramp;
            sleep_until(measure_from, &abort);
            let cpu0 = CpuTime::now();
            let wall0 = unix_now();
            sleep_until(measure_from + runtime, &abort);
            cpu = CpuTime::now().since(cpu0);
            window = (wall0, unix_now());
        }
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (results, cpu, window, spawn_error)
    });

    let mut read = DirStats::new()?;
    let mut write = DirStats::new()?;
    let (mut errors, mut timeouts) = (0, 0);
    let mut first_error = None;
    let mut fatal: Vec<String> = spawn_error.into_iter().collect();
    for r in results {
        match r {
            Ok(ws) => {
                read.merge(&ws.read)?;
                write.merge(&ws.write)?;
                errors += ws.errors;
                timeouts += ws.timeouts;
                if first_error.is_none() {
                    first_error = ws.first_error;
                }
                fatal.extend(ws.fatal);
            }
            Err(_) => fatal.push("a worker thread panicked".to_string()),
        }
    }

    let report = Report {
        socket: args.socket.clone(),
        rw: args.rw.name(),
        rwmixread: args.rwmixread,
        bs: args.bs,
        iodepth: args.iodepth,
        queues: args.queues,
        poll: args.poll,
        queue_size: info.queue_size,
        size,
        capacity: info.capacity,
        device: info,
        ramp_s: args.ramp,
        think_us: args.think_us,
        think_spin: args.think_spin,
        runtime_s: runtime.as_secs_f64(),
        read,
        write,
        cpu,
        window_unix_s: window,
        errors,
        timeouts,
        first_error,
        fatal,
    };
    Ok((report, target))
}
