//! spinblk-guest-io: the in-guest workload of spinblk's live-migration test
//! (scripts/migrate-test.sh). It runs on the guest's disk with O_DIRECT:
//!
//! * writers/verifiers: blocks stamped with (block, generation, run, CRC-32C), read back and
//!   judged: corrupt, STALE (an older generation than the last completed write of the block)
//!   and LOST (a request pending longer than `--lost-secs`, found by a watchdog thread);
//! * a device-written memory check: a large buffer in guest RAM refilled by disk reads, whose
//!   contents after a switch-over must be the pass last read (the backend must log them);
//! * a final full verify of everything written.
//!
//! Commands, one per line on stdin (the serial console): `mark NAME`, `memcheck`,
//! `inject stale|corrupt|hang`, `finish`. Output lines start with `GIO ` (see usage()).
//! Exit status: 0 when everything passed, else a bit mask: 1 data error (corrupt or stale),
//! 2 lost request, 4 I/O error, 8 memory check failed, 16 final verify failed, 64 usage or
//! setup error.

mod block;
mod crc32c;
mod dev;
mod mem;
mod shared;
mod stress;

use dev::Dev;
use mem::{memcheck_line, MemCfg, MemCmd};
use shared::{say, Shared};
use std::io::BufRead;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

fn usage() -> &'static str {
    "usage: spinblk-guest-io run [options]
  --dev PATH           disk (default /dev/vda)
  --no-direct          no O_DIRECT (for a file on tmpfs; tests)
  --stress-mib N       writer/verifier region at the start of the disk (default 64)
  --mem-mib N          device-written memory buffer in guest RAM (default 16; 0: no
                       memory check); its disk region (after the stress region) holds
                       --mem-versions copies of it
  --mem-versions N     differently stamped copies on the disk (default 4, at least 2)
  --chunk-kib N        memory check request size (default 256)
  --host-file PATH     names the QEMU the guest runs on (QEMU -fw_cfg opt/spinblk/host);
                       when it changes (a migration switched over), the memory thread
                       checks its buffer at once, before refilling any of it on the new
                       host: GIO MEMCHECK ok|FAIL switch:OLD->NEW ... (default
                       /sys/firmware/qemu_fw_cfg/by_name/opt/spinblk/host/raw, if present)
  --threads N          writer/verifier threads (default 4)
  --max-blocks N       most 4 KiB blocks per request (default 16)
  --write-pct N        share of writes (default 50)
  --flush-every N      a flush after N writes per thread (default 64; 0 never)
  --lost-secs N        a request pending longer is LOST (default 20)
  --progress-secs N    progress line interval (default 2)
  --mem-pause-ms N     pause after each memory chunk (default 0)
  --auto SECS          no commands: run SECS, memcheck, finish
  --auto-inject KIND   with --auto: inject stale|corrupt|hang after 1 s
Output: GIO START / READY / PROGRESS / MARK / MEMCHECK ok|FAIL / ERROR <KIND> / INJECT /
FINAL ok|FAIL / RESULT PASS|FAIL <counts> code=N"
}

struct Opts {
    dev: String,
    direct: bool,
    stress_mib: u64,
    mem_mib: u64,
    mem_versions: u64,
    chunk_kib: u64,
    threads: usize,
    max_blocks: u64,
    write_pct: u64,
    flush_every: u64,
    lost_secs: u64,
    progress_secs: u64,
    mem_pause_ms: u64,
    auto: Option<u64>,
    auto_inject: Option<u32>,
    host_file: String,
}

fn inject_code(s: &str) -> Option<u32> {
    match s {
        "stale" => Some(1),
        "corrupt" => Some(2),
        "hang" => Some(3),
        _ => None,
    }
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        dev: "/dev/vda".into(),
        direct: true,
        stress_mib: 64,
        mem_mib: 16,
        mem_versions: 4,
        chunk_kib: 256,
        threads: 4,
        max_blocks: 16,
        write_pct: 50,
        flush_every: 64,
        lost_secs: 20,
        progress_secs: 2,
        mem_pause_ms: 0,
        auto: None,
        auto_inject: None,
        host_file: "/sys/firmware/qemu_fw_cfg/by_name/opt/spinblk/host/raw".into(),
    };
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("run") => {}
        Some("-h" | "--help") => return Err(String::new()),
        other => return Err(format!("unknown mode {other:?}")),
    }
    while let Some(a) = it.next() {
        // Options take "--name VALUE" or "--name=VALUE".
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        if name == "--no-direct" {
            o.direct = false;
            continue;
        }
        let val = match inline {
            Some(v) => v,
            None => it.next().ok_or(format!("{name} needs a value"))?.clone(),
        };
        let num = || {
            val.parse::<u64>()
                .map_err(|_| format!("{name}: '{val}' is not a number"))
        };
        match name {
            "--dev" => o.dev = val.clone(),
            "--host-file" => o.host_file = val.clone(),
            "--stress-mib" => o.stress_mib = num()?,
            "--mem-mib" => o.mem_mib = num()?,
            "--mem-versions" => o.mem_versions = num()?,
            "--chunk-kib" => o.chunk_kib = num()?,
            "--threads" => o.threads = num()? as usize,
            "--max-blocks" => o.max_blocks = num()?,
            "--write-pct" => o.write_pct = num()?,
            "--flush-every" => o.flush_every = num()?,
            "--lost-secs" => o.lost_secs = num()?,
            "--progress-secs" => o.progress_secs = num()?,
            "--mem-pause-ms" => o.mem_pause_ms = num()?,
            "--auto" => o.auto = Some(num()?),
            "--auto-inject" => {
                o.auto_inject = Some(inject_code(&val).ok_or(format!("bad --auto-inject '{val}'"))?)
            }
            _ => return Err(format!("unknown option {name}")),
        }
    }
    if o.threads == 0 || o.threads > 64 {
        return Err("--threads must be 1..64".into());
    }
    if o.stress_mib == 0 || (o.stress_mib * MIB / 4096) < (o.threads as u64) * o.max_blocks.max(1) {
        return Err("--stress-mib is too small for the threads and request size".into());
    }
    if o.chunk_kib == 0
        || !o.chunk_kib.is_multiple_of(4)
        || !(o.mem_mib * 1024).is_multiple_of(o.chunk_kib)
    {
        return Err("--chunk-kib must be a multiple of 4 that divides --mem-mib".into());
    }
    if !(2..=64).contains(&o.mem_versions) {
        return Err("--mem-versions must be 2..64".into());
    }
    if o.write_pct > 100 || o.lost_secs == 0 || o.progress_secs == 0 {
        return Err(
            "--write-pct must be 0..100, --lost-secs and --progress-secs at least 1".into(),
        );
    }
    Ok(o)
}

fn run_id() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("spinblk-guest-io: {e}");
            }
            eprintln!("{}", usage());
            std::process::exit(if e.is_empty() { 0 } else { 64 });
        }
    };
    std::process::exit(run(o));
}

fn setup_fail(msg: &str) -> i32 {
    say(&format!("GIO RESULT FAIL setup: {msg} code=64"));
    64
}

fn run(o: Opts) -> i32 {
    let dev = match Dev::open(&o.dev, o.direct) {
        Ok(d) => d,
        Err(e) => return setup_fail(&format!("open {}: {e}", o.dev)),
    };
    let stress_blocks = o.stress_mib * MIB / 4096;
    let mem_off = o.stress_mib * MIB;
    let need = mem_off + o.mem_versions * o.mem_mib * MIB;
    if dev.size < need {
        return setup_fail(&format!(
            "{} has {} bytes, the regions need {need}",
            o.dev, dev.size
        ));
    }
    let run = run_id();
    let sh = Shared::new(o.threads, Duration::from_secs(o.lost_secs));
    say(&format!(
        "GIO START run={run:016x} dev={} size={} direct={} stress=0..{mem_off} mem_buffer={} MiB mem_disk={mem_off}..{need} ({} versions) threads={} lost_secs={}",
        o.dev, dev.size, o.direct, o.mem_mib, o.mem_versions, o.threads, o.lost_secs
    ));
    let chunk = (o.chunk_kib * 1024) as usize;
    let mem_cfg = MemCfg {
        offset: mem_off,
        chunks: if o.mem_mib == 0 {
            0
        } else {
            (o.mem_mib * 1024 / o.chunk_kib) as usize
        },
        chunk,
        versions: o.mem_versions,
        host_file: Some(std::path::PathBuf::from(&o.host_file)).filter(|p| p.exists()),
        run,
        pause: Duration::from_millis(o.mem_pause_ms),
    };
    let mut code = 0;
    std::thread::scope(|s| {
        s.spawn(|| sh.watchdog(Duration::from_secs(o.progress_secs)));
        code = drive(s, &o, &dev, &sh, run, stress_blocks, &mem_cfg);
        // drive() returns only on a setup failure: stop the threads it started.
        sh.stop.store(true, Relaxed);
        sh.quit_watchdog.store(true, Relaxed);
    });
    code
}

fn drive<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    o: &'s Opts,
    dev: &'s Dev,
    sh: &'s Shared,
    run: u64,
    stress_blocks: u64,
    mem_cfg: &'s MemCfg,
) -> i32 {
    let t = Instant::now();
    if let Err(e) = stress::fill(dev, sh, 0, stress_blocks, 1, run, MIB as usize) {
        return setup_fail(&format!("filling the stress region: {e}"));
    }
    // The memory thread fills its own region and buffer.
    let (mem_tx, mem_rx) = mpsc::channel::<MemCmd>();
    let mem_on = mem_cfg.chunks > 0;
    if mem_on {
        let (rtx, rrx) = mpsc::channel();
        let d = match dev.try_clone() {
            Ok(d) => d,
            Err(e) => return setup_fail(&format!("dup: {e}")),
        };
        s.spawn(move || mem::mem_thread(d, sh, mem_cfg.clone(), mem_rx, rtx));
        match rrx.recv_timeout(sh.lost_after * 4) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return setup_fail(&format!("filling the memory region: {e}")),
            Err(_) => return setup_fail("the memory region fill did not finish"),
        }
    }
    // Workers: contiguous ranges, one each.
    let (done_tx, done_rx) = mpsc::channel::<(usize, u64, Vec<u64>)>();
    let per = stress_blocks / o.threads as u64;
    for id in 0..o.threads {
        let lo = id as u64 * per;
        let hi = if id + 1 == o.threads {
            stress_blocks
        } else {
            lo + per
        };
        let d = match dev.try_clone() {
            Ok(d) => d,
            Err(e) => return setup_fail(&format!("dup: {e}")),
        };
        let cfg = stress::WorkerCfg {
            id,
            lo,
            hi,
            run,
            max_blocks: o.max_blocks,
            write_pct: o.write_pct,
            flush_every: o.flush_every,
        };
        let tx = done_tx.clone();
        s.spawn(move || {
            let gens = stress::worker(d, sh, cfg);
            let _ = tx.send((id, lo, gens));
        });
    }
    drop(done_tx);
    say(&format!("GIO READY fill_ms={}", t.elapsed().as_millis()));

    let mut memcheck_failed = false;
    let memcheck = |label: &str| -> bool {
        if !mem_on {
            say("GIO MEMCHECK FAIL the memory check is off (--mem-mib 0)");
            return false;
        }
        let (tx, rx) = mpsc::channel();
        if mem_tx.send(MemCmd::Check(tx)).is_err() {
            say("GIO MEMCHECK FAIL the memory thread is gone");
            return false;
        }
        match rx.recv_timeout(sh.lost_after + Duration::from_secs(10)) {
            Ok(rep) => {
                let (ok, line) = memcheck_line(&rep, sh, mem_cfg.chunks, label);
                say(&line);
                ok
            }
            Err(_) => {
                say(&format!(
                    "GIO MEMCHECK FAIL {label} the memory thread did not answer (a lost request?)"
                ));
                false
            }
        }
    };

    // Commands: from stdin, or the --auto script.
    let mut lines: Box<dyn Iterator<Item = String>> = match o.auto {
        Some(secs) => {
            let inj = o.auto_inject;
            let mut script: Vec<String> = vec![];
            if let Some(k) = inj {
                script.push("sleep 1".into());
                script.push(format!(
                    "inject {}",
                    ["", "stale", "corrupt", "hang"][k as usize]
                ));
            }
            script.push("mark auto".into());
            script.push(format!("sleep {secs}"));
            script.push("memcheck".into());
            script.push("finish".into());
            Box::new(script.into_iter())
        }
        None => Box::new(std::io::stdin().lock().lines().map_while(Result::ok)),
    };
    for line in &mut lines {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("finish"), _) => break,
            (Some("mark"), name) => {
                sh.mark_refills.store(sh.mem_refills.load(Relaxed), Relaxed);
                say(&format!(
                    "GIO MARK {} {}",
                    name.unwrap_or("-"),
                    sh.progress()
                ));
            }
            (Some("memcheck"), label) => {
                if !memcheck(label.unwrap_or("-")) {
                    memcheck_failed = true;
                }
            }
            (Some("inject"), Some(k)) => match inject_code(k) {
                Some(c) => sh.inject.store(c, Relaxed),
                None => say(&format!("GIO NOTE unknown inject '{k}'")),
            },
            (Some("sleep"), Some(n)) => {
                std::thread::sleep(Duration::from_secs(n.parse().unwrap_or(1)))
            }
            (Some("ping"), _) => say(&format!("GIO PONG {}", sh.progress())),
            (None, _) => {}
            (Some(w), _) => say(&format!("GIO NOTE unknown command '{w}'")),
        }
    }

    // Finish: stop everyone (bounded), then verify everything from the disk.
    say(&format!("GIO FINISH {}", sh.progress()));
    sh.stop.store(true, Relaxed);
    let mem_reply = mem_on.then(|| {
        let (tx, rx) = mpsc::channel();
        let _ = mem_tx.send(MemCmd::Stop(tx));
        rx
    });
    let deadline = Instant::now() + sh.lost_after + Duration::from_secs(5);
    let mut gens: Vec<Option<(u64, Vec<u64>)>> = (0..o.threads).map(|_| None).collect();
    while gens.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok((id, lo, g)) => gens[id] = Some((lo, g)),
            Err(_) => break,
        }
    }
    let mut final_bad = 0u64;
    let mut final_blocks = 0u64;
    let mut final_ok = true;
    for (id, g) in gens.iter().enumerate() {
        if g.is_none() {
            say(&format!(
                "GIO ERROR LOST worker{id} did not stop: its request never completed"
            ));
            final_ok = false;
        }
    }
    let mem_stopped = match mem_reply {
        Some(rx) => {
            let v = rx
                .recv_timeout(
                    deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1),
                )
                .is_ok();
            if !v {
                say("GIO ERROR LOST the memory thread did not stop: its request never completed");
                final_ok = false;
            }
            v
        }
        None => false,
    };
    let tv = Instant::now();
    let mut buf = match dev::AlignedBuf::new(MIB as usize) {
        Ok(b) => b,
        Err(e) => return setup_fail(&format!("alloc: {e}")),
    };
    for (lo, g) in gens.iter().flatten() {
        let hi = lo + g.len() as u64;
        let mut b = *lo;
        while b < hi {
            let n = (MIB / 4096).min(hi - b);
            let bytes = n as usize * 4096;
            let off = b * 4096;
            let data = &mut buf.as_mut_slice()[..bytes];
            match sh.timed(
                sh.main_slot(),
                shared::OpKind::Read,
                off,
                bytes as u64,
                || dev.read_at(data, off),
            ) {
                Ok(()) => {
                    final_blocks += n;
                    final_bad += stress::verify_range(sh, "final", data, b, *lo, g, run);
                }
                Err(e) => {
                    sh.bad(shared::Bad::Io, &format!("final read offset={off}: {e}"));
                    final_ok = false;
                }
            }
            b += n;
        }
    }
    let mut mem_pages = 0;
    if mem_stopped {
        match mem::verify_disk(dev, sh, mem_cfg) {
            Ok((p, bad)) => {
                mem_pages = p;
                final_bad += bad;
            }
            Err(e) => {
                sh.bad(
                    shared::Bad::Io,
                    &format!("final read of the memory region: {e}"),
                );
                final_ok = false;
            }
        }
    }
    final_ok &= final_bad == 0;
    say(&format!(
        "GIO FINAL {} blocks={final_blocks} mem_pages={mem_pages} bad={final_bad} ms={}",
        if final_ok { "ok" } else { "FAIL" },
        tv.elapsed().as_millis()
    ));
    let (corrupt, stale, ioerr, lost) = (
        sh.corrupt.load(Relaxed),
        sh.stale.load(Relaxed),
        sh.io_errors.load(Relaxed),
        sh.lost.load(Relaxed),
    );
    let mut code = 0;
    if corrupt + stale > 0 {
        code |= 1;
    }
    if lost > 0 {
        code |= 2;
    }
    if ioerr > 0 {
        code |= 4;
    }
    let memcheck_failed = memcheck_failed || sh.memcheck_failures.load(Relaxed) > 0;
    if memcheck_failed {
        code |= 8;
    }
    if !final_ok {
        code |= 16;
    }
    say(&format!(
        "GIO RESULT {} corrupt={corrupt} stale={stale} lost={lost} ioerr={ioerr} memcheck={} final={} writes={} reads={} flushes={} verified={} mem_passes={} lat_max_ms={} code={code}",
        if code == 0 { "PASS" } else { "FAIL" },
        if memcheck_failed { "FAIL" } else { "ok" },
        if final_ok { "ok" } else { "FAIL" },
        sh.writes.load(Relaxed),
        sh.reads.load(Relaxed),
        sh.flushes.load(Relaxed),
        sh.verified.load(Relaxed),
        sh.mem_passes.load(Relaxed),
        sh.max_lat_total_us.load(Relaxed) / 1000,
    ));
    // Exit at once: a thread stuck in a lost request would block the scope's join forever.
    std::process::exit(code)
}
