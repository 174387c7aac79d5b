//! `spinblk`: a thin command line over `spinblk-target` and `spinblk-rpc`. Builds the target
//! from the options, `--config` or SPDK's `--json`, serves SPDK's JSON-RPC when asked, tells
//! systemd when it is ready, reports statistics, and shuts down cleanly on SIGINT/SIGTERM.
//!
//! Exit status: 0 after a drained SIGINT/SIGTERM, 1 on a runtime failure, 2 on a bad
//! configuration (options, files, objects that cannot be built from them).

mod cli;
mod notify;
mod report;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use spinblk_protocol::{ControllerReport, QueueStats, SocketOptions};
use spinblk_rpc::{RpcServer, SpdkMethods};
use spinblk_target::config::{BdevConfig, BdevType, ControllerConfig, TargetConfig};
use spinblk_target::{Target, TargetError, TargetOptions};

use cli::Cli;

/// The disk served when no bdev option is given.
const DEFAULT_MALLOC_SIZE: u64 = 1 << 30;

/// A failure and the exit status it maps to.
struct Failure {
    status: u8,
    message: String,
}

fn config_error(message: impl Into<String>) -> Failure {
    Failure {
        status: 2,
        message: message.into(),
    }
}

fn runtime_error(message: impl Into<String>) -> Failure {
    Failure {
        status: 1,
        message: message.into(),
    }
}

/// Building an object from the configuration failed: a socket that cannot be bound or a thread
/// that cannot start is a runtime failure; anything else is the configuration's fault.
fn build_error(e: TargetError) -> Failure {
    match e {
        TargetError::System(..) => runtime_error(e.to_string()),
        _ => config_error(e.to_string()),
    }
}

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
    // The data path no longer goes through virtio-queue's Queue (it logged every failed pop at
    // ERROR level, once per pass); every module's log stays visible. What a guest or frontend
    // can trigger repeatedly is logged once or rate-limited where it happens.
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_default_env()
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("spinblk: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}

/// Whether any option describes disks (as opposed to starting empty for RPC).
fn has_disk_options(cli: &Cli) -> bool {
    cli.config.is_some()
        || !cli.controllers.is_empty()
        || cli.malloc.is_some()
        || cli.null.is_some()
        || cli.file.is_some()
        || cli.nvme.is_some()
        || cli.rbd.is_some()
}

/// The configuration from `--config`, from `--bdev`/`--controller`, or from the single-disk
/// options; empty when spinblk starts for RPC alone. `--cpus`/`-m` and `--stats-interval`
/// apply to all of them.
fn target_config(cli: &Cli) -> Result<TargetConfig, String> {
    let rpc_only = (cli.rpc_socket.is_some() || cli.json.is_some()) && !has_disk_options(cli);
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
                .map(|b| spinblk_target::config::bdev_from_kv(b))
                .collect::<Result<_, _>>()?,
            controllers: cli
                .controllers
                .iter()
                .map(|c| spinblk_target::config::controller_from_kv(c))
                .collect::<Result<_, _>>()?,
            stats_interval: None,
            socket_mode: None,
            socket_group: None,
            poll_mode: None,
            batch_wait_ns: None,
        }
    } else if rpc_only {
        TargetConfig {
            cpus: None,
            bdevs: Vec::new(),
            controllers: Vec::new(),
            stats_interval: None,
            socket_mode: None,
            socket_group: None,
            poll_mode: None,
            batch_wait_ns: None,
        }
    } else {
        let (bdev_type, size, default_name) = match (cli.null, cli.malloc, &cli.file) {
            _ if cli.rbd.is_some() => (BdevType::Rbd, None, "rbd0"),
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
                read_zeroes: cli.null_no_read_zeroes.then_some(false),
                shared: false,
                uuid: None,
                pool: cli.rbd.as_ref().map(|r| r.pool.clone()),
                image: cli.rbd.as_ref().map(|r| r.image.clone()),
                conf: cli.rbd.as_ref().map(|_| cli.rbd_conf.clone()),
                user: cli.rbd_user.clone(),
                op_timeout: cli.rbd_op_timeout,
                ceph_options: (!cli.rbd_option.is_empty())
                    .then(|| cli.rbd_option.iter().cloned().collect()),
                rw_ios_per_sec: None,
                rw_mbytes_per_sec: None,
                r_mbytes_per_sec: None,
                w_mbytes_per_sec: None,
            }],
            controllers: vec![ControllerConfig {
                name: Some("vhost0".into()),
                socket: Some(cli.socket.clone()),
                bdev: name,
                cpus: None,
                queue_cpus: None,
                num_queues: cli.num_queues,
                readonly: cli.readonly,
                serial: cli.serial.clone(),
                socket_mode: None,
                socket_group: None,
                delay_base_us: cli.delay_base_us,
                iops_threshold: cli.iops_threshold,
            }],
            stats_interval: None,
            socket_mode: None,
            socket_group: None,
            poll_mode: None,
            batch_wait_ns: None,
        }
    };
    if let Some(cpus) = cli.cpus.as_ref().or(cli.cpumask.as_ref()) {
        cfg.cpus = Some(cpus.0.clone());
    }
    if cli.stats_interval.is_some() {
        cfg.stats_interval = cli.stats_interval;
    }
    Ok(cfg)
}

fn socket_dir(cli: &Cli) -> PathBuf {
    cli.socket_dir
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Reads and parses an SPDK JSON configuration file.
fn read_json(path: &Path) -> Result<serde_json::Value, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| config_error(format!("{}: {e}", path.display())))
}

/// Builds the bdevs and controllers of `cfg` (already checked by `resolve`).
fn apply_config(
    target: &Target,
    cfg: &TargetConfig,
    resolved: &[spinblk_target::config::ResolvedController],
) -> Result<(), Failure> {
    for (i, b) in cfg.bdevs.iter().enumerate() {
        // A file or namespace served only by read-only controllers is opened read-only.
        let mut users = resolved.iter().filter(|c| c.bdev == i).peekable();
        let readonly = users.peek().is_some() && users.all(|c| c.config.readonly);
        let params = b.params(readonly).map_err(config_error)?;
        target.create_bdev(params).map_err(build_error)?;
    }
    for c in resolved {
        let params = c.params(&cfg.bdevs[c.bdev].name);
        target.create_controller(params).map_err(build_error)?;
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<(), Failure> {
    // Every configuration mistake is a usage error (exit 2); failures after this point exit 1.
    let cfg = target_config(cli).map_err(config_error)?;
    let dir = socket_dir(cli);
    let (cpus, resolved) = cfg
        .resolve(first_allowed_cpu(), &dir)
        .map_err(config_error)?;
    let mut socket = cfg
        .socket_options(SocketOptions::default())
        .map_err(config_error)?;
    if let Some(m) = cli.socket_mode {
        socket.mode = m;
    }
    if let Some(g) = &cli.socket_group {
        socket.group = Some(spinblk_protocol::resolve_group(g).map_err(config_error)?);
    }
    let json = cli.json.as_deref().map(read_json).transpose()?;
    let poll_mode = match cli.poll_mode {
        Some(m) => m,
        None => cfg.poll_mode().map_err(config_error)?.unwrap_or_default(),
    };
    let batch_wait = match cli.batch_wait_ns {
        Some(ns) => Duration::from_nanos(ns),
        None => cfg
            .batch_wait()
            .map_err(config_error)?
            .unwrap_or(spinblk_target::DEFAULT_BATCH_WAIT),
    };

    // Handlers first: a signal that arrives as soon as a socket exists must still drain and
    // report, not kill the process.
    let terminate = Arc::new(AtomicBool::new(false));
    let dump = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&terminate))
            .map_err(|e| runtime_error(e.to_string()))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&dump))
        .map_err(|e| runtime_error(e.to_string()))?;

    let target = Arc::new(
        Target::start(TargetOptions {
            cores: cpus,
            socket_dir: dir,
            socket,
            poll_mode,
            batch_wait,
        })
        .map_err(|e| match e {
            TargetError::Invalid(m) => config_error(m),
            other => runtime_error(other.to_string()),
        })?,
    );
    let methods = Arc::new(SpdkMethods::new(Arc::clone(&target)));
    let built = apply_config(&target, &cfg, &resolved).and_then(|()| match &json {
        Some(doc) => spinblk_rpc::spdk_config::load(&methods, doc).map_err(|m| {
            config_error(format!(
                "{}: {m}",
                cli.json.as_deref().unwrap_or(Path::new("--json")).display()
            ))
        }),
        None => Ok(()),
    });
    if let Err(f) = built {
        target.shutdown();
        return Err(f);
    }
    let rpc_path = cli.rpc_socket.clone().or_else(|| {
        cli.json
            .as_ref()
            .map(|_| PathBuf::from(spinblk_rpc::DEFAULT_RPC_SOCKET))
    });
    let rpc = match &rpc_path {
        Some(path) => {
            let handler: Arc<dyn spinblk_rpc::Handler> = methods.clone();
            match RpcServer::start(path, &SocketOptions::default(), handler) {
                Ok(s) => {
                    eprintln!("spinblk: JSON-RPC on {}", path.display());
                    Some(s)
                }
                Err(e) => {
                    target.shutdown();
                    return Err(runtime_error(e));
                }
            }
        }
        None => None,
    };
    if rpc.is_none() && target.controllers().is_empty() {
        log::warn!("no controllers configured and no RPC socket: nothing to serve");
    }
    notify::ready();

    let interval = cfg.stats_interval.map(Duration::from_secs);
    let mut last_summary = Instant::now();
    let mut previous: HashMap<String, QueueStats> = HashMap::new();
    while !terminate.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if dump.swap(false, Ordering::Relaxed) {
            let reports: Vec<ControllerReport> =
                target.controllers().iter().map(|c| c.report()).collect();
            let reactors: Vec<_> = target.reactors().into_iter().map(|r| r.stats).collect();
            print_table(&reports, &reactors);
        }
        if let Some(every) = interval {
            let elapsed = last_summary.elapsed();
            if elapsed >= every {
                last_summary = Instant::now();
                let mut seen = HashMap::new();
                for c in target.controllers() {
                    let report = c.report();
                    let prev = previous.remove(c.name()).unwrap_or_default();
                    println!("{}", report::summary_line(&report, &prev, elapsed));
                    seen.insert(c.name().to_string(), report.total);
                }
                previous = seen;
                let _ = std::io::stdout().flush();
            }
        }
    }
    // Stop taking requests (RPC first, then every controller's queues, letting in-flight
    // requests complete), report, exit 0.
    notify::stopping();
    if let Some(s) = rpc {
        s.stop();
    }
    let (reports, reactors) = target.shutdown();
    print_table(&reports, &reactors);
    // Every RBD image's write-back cache reaches the cluster before the process exits (each
    // step bounded by the cluster's op timeout).
    let mut unflushed = Vec::new();
    for (name, closed) in target.close_rbd_images() {
        match closed {
            Ok(took) => eprintln!("spinblk: rbd bdev {name}: flushed and closed in {took:?}"),
            Err(e) => unflushed.push(e.to_string()),
        }
    }
    if !unflushed.is_empty() {
        return Err(runtime_error(format!(
            "shut down, but not every rbd image was flushed: {}",
            unflushed.join("; ")
        )));
    }
    eprintln!("spinblk: shut down cleanly");
    Ok(())
}

fn print_table(reports: &[ControllerReport], reactors: &[spinblk_reactor::ReactorStats]) {
    print!("{}", report::table(reports, reactors));
    let _ = std::io::stdout().flush();
}

/// The first core this process may run on (the default reactor core).
fn first_allowed_cpu() -> usize {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.first().map(|c| c.id))
        .unwrap_or(0)
}
