//! `spinblk`: wires a bdev, a reactor pool and a vhost-user-blk controller together.

mod cli;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use spinblk_bdev::{Bdev, IoOp, MallocBdev, NullBdev};
use spinblk_protocol::{
    serial_bytes, Controller, ControllerSpec, DeviceInfo, DeviceLimits, QueueStats,
};
use spinblk_reactor::ReactorPool;

use cli::Cli;

/// The disk served when no bdev option is given.
const DEFAULT_MALLOC_SIZE: u64 = 1 << 30;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!("spinblk: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_default_env()
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spinblk: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let bdev: Arc<dyn Bdev> = match cli.null {
        Some(size) => {
            let name = cli.name.clone().unwrap_or_else(|| "null0".into());
            Arc::new(NullBdev::new(&name, size, cli.block_size).map_err(|e| e.to_string())?)
        }
        None => {
            let name = cli.name.clone().unwrap_or_else(|| "malloc0".into());
            let size = cli.malloc.unwrap_or(DEFAULT_MALLOC_SIZE);
            Arc::new(MallocBdev::new(&name, size, cli.block_size).map_err(|e| e.to_string())?)
        }
    };
    let serial = cli
        .serial
        .clone()
        .unwrap_or_else(|| bdev.name().to_string());
    let device = Arc::new(DeviceInfo {
        limits: DeviceLimits {
            capacity: bdev.size_bytes(),
            block_size: bdev.block_size(),
            read_only: cli.readonly,
            discard: bdev.supports(IoOp::Discard),
            write_zeroes: bdev.supports(IoOp::WriteZeroes),
        },
        serial: serial_bytes(&serial),
        bdev: Arc::clone(&bdev),
    });

    let cpus = match cli.cpus {
        Some(c) => c.0,
        None => vec![first_allowed_cpu()],
    };
    let pool = ReactorPool::start(&cpus).map_err(|e| e.to_string())?;
    let spec = ControllerSpec {
        name: bdev.name().to_string(),
        num_queues: cli.num_queues,
        device,
        reactors: pool.handles().to_vec(),
    };
    let controller = Controller::start(spec, &cli.socket).map_err(|e| e.to_string())?;

    let terminate = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&terminate)).map_err(|e| e.to_string())?;
    }
    eprintln!(
        "spinblk: serving {} ({} bytes, {}-byte blocks{}, serial '{}') on {} with up to {} queues, reactors on cpus {:?}",
        bdev.name(),
        bdev.size_bytes(),
        bdev.block_size(),
        if cli.readonly { ", read-only" } else { "" },
        serial,
        cli.socket.display(),
        cli.num_queues,
        cpus
    );

    while !terminate.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stop taking requests, let in-flight ones complete, then report and exit.
    controller.shutdown();
    let (total, _) = controller.stats();
    let reactors = pool.shutdown();
    eprintln!("spinblk: {}: {}", controller.name(), summary(&total));
    for r in reactors {
        let all = (r.busy + r.idle).as_secs_f64().max(1e-9);
        eprintln!(
            "spinblk: reactor {} (cpu {:?}): busy {:.1}% of {:.1} s",
            r.id,
            r.core,
            100.0 * r.busy.as_secs_f64() / all,
            all
        );
    }
    Ok(())
}

/// The first core this process may run on (the default reactor core).
fn first_allowed_cpu() -> usize {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.first().map(|c| c.id))
        .unwrap_or(0)
}

fn summary(s: &QueueStats) -> String {
    let lat = &s.latency_ns;
    format!(
        "reads {} ({} B), writes {} ({} B), flushes {}, discards {}, write-zeroes {}, errors {}, unsupported {}; latency p50 {} ns p99 {} ns p99.9 {} ns",
        s.read.ops,
        s.read.bytes,
        s.write.ops,
        s.write.bytes,
        s.flush.ops,
        s.discard.ops,
        s.write_zeroes.ops,
        s.io_errors,
        s.unsupported,
        lat.value_at_quantile(0.5),
        lat.value_at_quantile(0.99),
        lat.value_at_quantile(0.999)
    )
}
