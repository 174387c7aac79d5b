//! Drives one RbdChannel directly (no vhost-user, no guest) the way a reactor would, to see what
//! librbd and this crate's data path cost on their own:
//!
//!     rbd_bench CEPH_CONF POOL/IMAGE [randread|randwrite] [QD] [SECONDS]
//!
//! Prints IOPS, latency percentiles and this process's CPU time per I/O (librbd's threads
//! included).

use std::time::{Duration, Instant};

use spinblk_bdev::{Bdev, BdevIo, IoOp, IoStatus, IoVec};
use spinblk_rbd::{ClusterConfig, RbdBdev, RbdCluster, RbdImageConfig};

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: rbd_bench CEPH_CONF POOL/IMAGE [randread|randwrite] [QD] [SECONDS]");
        std::process::exit(2);
    }
    let (pool, image) = args[2].split_once('/').expect("POOL/IMAGE");
    let op = match args.get(3).map(String::as_str).unwrap_or("randread") {
        "randwrite" => IoOp::Write,
        _ => IoOp::Read,
    };
    let qd: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(32);
    let secs: u64 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(10);
    let conn = RbdCluster::connect(&ClusterConfig {
        config_file: Some(args[1].clone().into()),
        ..Default::default()
    })
    .unwrap_or_else(|e| {
        eprintln!("rbd_bench: {e}");
        std::process::exit(2)
    });
    let bdev =
        RbdBdev::open(&conn, RbdImageConfig::new("bench", pool, image)).unwrap_or_else(|e| {
            eprintln!("rbd_bench: {e}");
            std::process::exit(2)
        });
    let blocks = bdev.size_bytes() / 4096;
    let mut ch = bdev.open_channel(qd).expect("channel");
    let fd = ch.completion_fd().expect("fd");
    let mut bufs: Vec<Vec<u8>> = (0..qd).map(|i| vec![i as u8; 4096]).collect();
    let iovs: Vec<IoVec> = bufs
        .iter_mut()
        .map(|b| IoVec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 4096,
        })
        .collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_off = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % blocks) * 4096
    };
    let mut started = vec![Instant::now(); qd];
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 20);
    let submit = |ch: &mut Box<dyn spinblk_bdev::IoChannel>, i: usize, off: u64| {
        // SAFETY: the buffers and iovecs live until the end of main, after every completion.
        let io = unsafe { BdevIo::with_iovecs(i as u32, op, off, 4096, &iovs[i], 1) };
        ch.submit(io).map_err(|_| ()).expect("room");
    };
    let (t0, c0) = (Instant::now(), cpu_time());
    for (i, s) in started.iter_mut().enumerate() {
        *s = Instant::now();
        submit(&mut ch, i, next_off());
    }
    let end = t0 + Duration::from_secs(secs);
    let mut errors = 0u64;
    while ch.in_flight() > 0 {
        let mut done = vec![];
        ch.poll_completions(&mut |c| done.push(c));
        if done.is_empty() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            continue;
        }
        let now = Instant::now();
        for c in done {
            let i = c.tag as usize;
            if c.status != IoStatus::Success {
                errors += 1;
            }
            lat.push((now - started[i]).as_micros().min(u32::MAX as u128) as u32);
            if now < end {
                started[i] = Instant::now();
                submit(&mut ch, i, next_off());
            }
        }
    }
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let n = lat.len() as f64;
    println!(
        "{} QD{qd}: {:.0} IOPS, p50 {} us, p99 {} us, CPU {:.1} us/IO ({:.0}% of a core), {errors} errors",
        if op == IoOp::Read { "randread" } else { "randwrite" },
        n / wall.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        cpu.as_secs_f64() * 1e6 / n,
        cpu.as_secs_f64() * 100.0 / wall.as_secs_f64()
    );
}
