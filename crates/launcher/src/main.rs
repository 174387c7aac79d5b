//! `spinblk`: builds the bdevs, starts the reactor pool and one vhost-user-blk controller per
//! configured socket, reports statistics, and shuts down cleanly on SIGINT/SIGTERM.

mod cli;
mod config;
mod report;

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use spinblk_bdev::{
    Bdev, IoOp, MallocBdev, NullBdev, NvmeBdev, NvmeOptions, UringBdev, UringOptions,
};
use spinblk_protocol::{
    serial_bytes, Controller, ControllerSpec, DeviceInfo, DeviceLimits, QueueStats,
};
use spinblk_reactor::ReactorPool;

use cli::Cli;
use config::{BdevConfig, BdevType, ControllerConfig, ResolvedController, TargetConfig};

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
    // virtio-queue logs every failed pop at ERROR level, once per poll pass: a broken or hostile
    // driver would flood the log. The queue poller reports that condition once itself.
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .filter_module("virtio_queue", log::LevelFilter::Off)
        .parse_default_env()
        .init();
    // Every configuration mistake is a usage error (exit 2); failures after this point exit 1.
    let checked = target_config(&cli).and_then(|cfg| {
        let (cpus, controllers) = cfg.resolve(first_allowed_cpu())?;
        Ok((cfg, cpus, controllers))
    });
    let (config, cpus, controllers) = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spinblk: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config, cpus, controllers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spinblk: {e}");
            ExitCode::from(1)
        }
    }
}

/// The configuration from `--config`, from `--bdev`/`--controller`, or from the single-disk
/// options; `--cpus` and `--stats-interval` apply to all three.
fn target_config(cli: &Cli) -> Result<TargetConfig, String> {
    let mut cfg = if let Some(path) = &cli.config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    } else if !cli.controllers.is_empty() {
        TargetConfig {
            cpus: None,
            bdevs: cli
                .bdevs
                .iter()
                .map(|b| config::bdev_from_kv(b))
                .collect::<Result<_, _>>()?,
            controllers: cli
                .controllers
                .iter()
                .map(|c| config::controller_from_kv(c))
                .collect::<Result<_, _>>()?,
            stats_interval: None,
        }
    } else {
        let (bdev_type, size, default_name) = match (cli.null, cli.malloc, &cli.file) {
            _ if cli.nvme.is_some() => (BdevType::Nvme, None, "nvme0"),
            (_, _, Some(_)) => (BdevType::File, None, "file0"),
            (Some(size), _, _) => (BdevType::Null, Some(size), "null0"),
            (None, size, None) => (
                BdevType::Malloc,
                Some(size.unwrap_or(DEFAULT_MALLOC_SIZE)),
                "malloc0",
            ),
        };
        let name = cli.name.clone().unwrap_or_else(|| default_name.to_string());
        TargetConfig {
            cpus: None,
            bdevs: vec![BdevConfig {
                name: name.clone(),
                bdev_type,
                size,
                block_size: cli.block_size,
                path: cli.file.clone().or_else(|| cli.nvme.clone()),
                buffered: cli.buffered,
                poll: cli.nvme_poll,
                write_cache: cli.no_write_cache.then_some(false),
                shared: false,
            }],
            controllers: vec![ControllerConfig {
                name: Some("vhost0".into()),
                socket: cli.socket.clone(),
                bdev: name,
                cpus: None,
                queue_cpus: None,
                num_queues: cli.num_queues,
                readonly: cli.readonly,
                serial: cli.serial.clone(),
            }],
            stats_interval: None,
        }
    };
    if let Some(cpus) = &cli.cpus {
        cfg.cpus = Some(cpus.0.clone());
    }
    if cli.stats_interval.is_some() {
        cfg.stats_interval = cli.stats_interval;
    }
    Ok(cfg)
}

/// Builds bdev `b`; a file bdev served only by read-only controllers is opened read-only.
fn make_bdev(b: &BdevConfig, read_only: bool) -> Result<Arc<dyn Bdev>, String> {
    let block_size = b.block_size.unwrap_or(512);
    let failed = |e: spinblk_bdev::BdevError| format!("bdev '{}': {e}", b.name);
    let bdev: Arc<dyn Bdev> = match b.bdev_type {
        BdevType::Malloc => {
            Arc::new(MallocBdev::new(&b.name, b.required_size()?, block_size).map_err(failed)?)
        }
        BdevType::Null => {
            Arc::new(NullBdev::new(&b.name, b.required_size()?, block_size).map_err(failed)?)
        }
        BdevType::File => {
            let path = b
                .path
                .as_ref()
                .ok_or_else(|| format!("bdev '{}': path is required", b.name))?;
            let options = UringOptions {
                block_size: b.block_size,
                buffered: b.buffered,
                read_only,
            };
            Arc::new(
                UringBdev::open(path, options)
                    .map_err(failed)?
                    .with_name(b.name.clone()),
            )
        }
        BdevType::Nvme => {
            let path = b
                .path
                .as_ref()
                .ok_or_else(|| format!("bdev '{}': path is required", b.name))?;
            let options = NvmeOptions {
                poll: b.poll,
                read_only,
            };
            Arc::new(
                NvmeBdev::open(path, options)
                    .map_err(failed)?
                    .with_name(b.name.clone()),
            )
        }
    };
    Ok(bdev)
}

fn run(
    cfg: TargetConfig,
    cpus: Vec<usize>,
    resolved: Vec<ResolvedController>,
) -> Result<(), String> {
    let bdevs = cfg
        .bdevs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let users = resolved.iter().filter(|c| c.bdev == i);
            make_bdev(
                b,
                users.clone().count() > 0 && users.clone().all(|c| c.config.readonly),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pool = ReactorPool::start(&cpus).map_err(|e| e.to_string())?;
    let by_core: HashMap<usize, _> = pool
        .handles()
        .iter()
        .map(|h| (h.core().unwrap_or(usize::MAX), h.clone()))
        .collect();

    // Handlers first: a signal that arrives as soon as a socket exists must still drain and
    // report, not kill the process.
    let terminate = Arc::new(AtomicBool::new(false));
    let dump = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&terminate)).map_err(|e| e.to_string())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&dump))
        .map_err(|e| e.to_string())?;

    let mut controllers = Vec::new();
    for c in &resolved {
        let bdev = &bdevs[c.bdev];
        let serial = c
            .config
            .serial
            .clone()
            .unwrap_or_else(|| bdev.name().to_string());
        let device = Arc::new(DeviceInfo {
            limits: DeviceLimits {
                capacity: bdev.size_bytes(),
                block_size: bdev.block_size(),
                read_only: c.config.readonly,
                discard: bdev.supports(IoOp::Discard),
                write_zeroes: bdev.supports(IoOp::WriteZeroes),
            },
            serial: serial_bytes(&serial),
            write_cache: cfg.bdevs[c.bdev].write_cache.unwrap_or(true),
            bdev: Arc::clone(bdev),
        });
        let reactors = c
            .queue_cores
            .iter()
            .filter_map(|core| by_core.get(core).cloned())
            .collect();
        let spec = ControllerSpec {
            name: c.name.clone(),
            num_queues: c.config.num_queues,
            device,
            reactors,
        };
        let controller = Controller::start(spec, &c.config.socket).map_err(|e| e.to_string())?;
        eprintln!(
            "spinblk: {}: serving {} ({} bytes, {}-byte blocks{}, serial '{}') on {}, up to {} queues on cpus {:?}",
            c.name,
            bdev.name(),
            bdev.size_bytes(),
            bdev.block_size(),
            if c.config.readonly { ", read-only" } else { "" },
            serial,
            c.config.socket.display(),
            c.config.num_queues,
            c.queue_cores
        );
        controllers.push(controller);
    }

    let interval = cfg.stats_interval.map(Duration::from_secs);
    let mut last_summary = Instant::now();
    let mut previous: Vec<QueueStats> = vec![QueueStats::default(); controllers.len()];
    while !terminate.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if dump.swap(false, Ordering::Relaxed) {
            print_table(&controllers, &pool.stats());
        }
        if let Some(every) = interval {
            let elapsed = last_summary.elapsed();
            if elapsed >= every {
                last_summary = Instant::now();
                for (c, prev) in controllers.iter().zip(previous.iter_mut()) {
                    let report = c.report();
                    println!("{}", report::summary_line(&report, prev, elapsed));
                    *prev = report.total;
                }
                let _ = std::io::stdout().flush();
            }
        }
    }
    // Stop taking requests, let in-flight ones complete, report, exit 0.
    for c in &controllers {
        c.shutdown();
    }
    let reactors = pool.shutdown();
    print_table(&controllers, &reactors);
    eprintln!("spinblk: shut down cleanly");
    Ok(())
}

fn print_table(controllers: &[Controller], reactors: &[spinblk_reactor::ReactorStats]) {
    let reports: Vec<_> = controllers.iter().map(Controller::report).collect();
    print!("{}", report::table(&reports, reactors));
    let _ = std::io::stdout().flush();
}

/// The first core this process may run on (the default reactor core).
fn first_allowed_cpu() -> usize {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.first().map(|c| c.id))
        .unwrap_or(0)
}
