//! spinblk-linkprobe: how long one cache line takes to go from one CPU to another and back.
//!
//! Two threads, pinned to the two CPUs given, pass a counter back and forth through one
//! cache line; the program prints the median nanoseconds per round trip over `--batches`
//! batches of `--round-trips` each. On this project's 2-vCPU machine the figure falls in one
//! of three bands, about 30 ns, 70-120 ns or 300-340 ns, changing from minute to minute: the
//! hypervisor puts the two vCPUs on one physical core, on nearby cores or on distant ones
//! (docs/benchmarks.md, "What the two speeds are"). A vhost-user target and its driver
//! hand every request over through such lines, so the bench scripts run this between points
//! and split their results by it (see `bench/compare.sh --client bdevperf`).
//!
//! Run it only while nothing else polls on those CPUs: a thread that has to share its CPU
//! measures the scheduler, not the line.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;

mod cpus;
use cpus::{parse_cpu_list, pin};

/// Measures the round trip of one cache line between two CPUs.
#[derive(Parser, Debug)]
#[command(name = "spinblk-linkprobe", version)]
struct Args {
    /// The two CPUs, e.g. `0,1`.
    #[arg(long, default_value = "0,1", value_name = "A,B")]
    cpus: String,
    /// Round trips per batch.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    round_trips: u64,
    /// Batches; the median batch is printed.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batches: u64,
}

/// The shared line, alone in its 64 bytes (and its neighbour's, for the adjacent-line
/// prefetcher).
#[repr(align(128))]
struct Line(AtomicU64);

/// Set by the echo thread when it cannot run on its CPU (on a line of its own, read only
/// while waiting).
#[repr(align(128))]
struct Failed(AtomicBool);

/// Checks that the calling thread may run on `cpu` (before anything is pinned: a pinned
/// thread's children inherit its one CPU; and `core_affinity` panics on an id past the
/// kernel's CPU set size).
fn check_allowed(cpu: usize) -> Result<(), String> {
    let allowed = core_affinity::get_core_ids().unwrap_or_default();
    if allowed.iter().any(|c| c.id == cpu) {
        Ok(())
    } else {
        Err(format!("CPU {cpu} is not one this process may run on"))
    }
}

/// The two distinct CPUs of `--cpus`.
fn parse_cpus(s: &str) -> Result<(usize, usize), String> {
    match parse_cpu_list(s)?.0[..] {
        [a, b] if a != b => Ok((a, b)),
        _ => Err(format!("--cpus {s:?}: expected two different CPUs, A,B")),
    }
}

/// Nanoseconds per round trip of each batch, in order.
fn measure(a: usize, b: usize, round_trips: u64, batches: u64) -> Result<Vec<f64>, String> {
    check_allowed(a)?;
    check_allowed(b)?;
    pin(a)?;
    let line = Arc::new(Line(AtomicU64::new(0)));
    let failed = Arc::new(Failed(AtomicBool::new(false)));
    let total = round_trips * batches;
    let echo = {
        let (line, failed) = (Arc::clone(&line), Arc::clone(&failed));
        std::thread::Builder::new()
            .name("linkprobe-echo".into())
            .spawn(move || -> Result<(), String> {
                if let Err(e) = pin(b) {
                    failed.0.store(true, Ordering::Release);
                    return Err(e);
                }
                // Odd values come from the other side; each is answered with the next even one.
                for i in 0..total {
                    while line.0.load(Ordering::Acquire) != 2 * i + 1 {
                        std::hint::spin_loop();
                    }
                    line.0.store(2 * i + 2, Ordering::Release);
                }
                Ok(())
            })
            .map_err(|e| format!("cannot start the second thread: {e}"))?
    };
    let mut out = Vec::with_capacity(batches as usize);
    let mut i = 0;
    'batches: for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..round_trips {
            line.0.store(2 * i + 1, Ordering::Release);
            while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                if failed.0.load(Ordering::Acquire) {
                    break 'batches;
                }
                std::hint::spin_loop();
            }
            i += 1;
        }
        out.push(start.elapsed().as_nanos() as f64 / round_trips as f64);
    }
    echo.join()
        .map_err(|_| "the second thread panicked".to_string())??;
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result =
        parse_cpus(&args.cpus).and_then(|(a, b)| measure(a, b, args.round_trips, args.batches));
    match result {
        Ok(mut ns) => {
            ns.sort_by(f64::total_cmp);
            println!("{:.1}", ns[ns.len() / 2]);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spinblk-linkprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_parse() {
        assert_eq!(parse_cpus("0,1"), Ok((0, 1)));
        assert_eq!(parse_cpus(" 3 , 7"), Ok((3, 7)));
        assert!(parse_cpus("1,1").is_err());
        assert!(parse_cpus("1").is_err());
        assert!(parse_cpus("a,1").is_err());
        assert!(parse_cpus("0,1,2").is_err());
        assert_eq!(parse_cpus("4-5"), Ok((4, 5)));
    }

    #[test]
    fn a_round_trip_takes_some_time() {
        // Two CPUs when the machine has them; one otherwise (then the threads take turns at
        // the scheduler's pace, which still ends: keep it short).
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (b, trips) = if n > 1 { (1, 2000) } else { (0, 5) };
        let ns = measure(0, b, trips, 3).expect("probe");
        assert_eq!(ns.len(), 3);
        assert!(ns.iter().all(|&v| v > 0.0 && v.is_finite()), "{ns:?}");
    }

    #[test]
    fn a_cpu_that_does_not_exist_is_an_error() {
        assert!(measure(0, 1 << 20, 10, 1).is_err());
    }
}
