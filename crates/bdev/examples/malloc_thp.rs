//! Copy throughput of a filled malloc bdev with and without transparent huge pages: random 4 KiB
//! reads (and writes) through one channel, one thread, queue depth 1, over the whole disk. Both
//! disks are made once and prefaulted; the runs alternate (THP, plain, THP, plain, ...) because
//! this machine's speed changes within minutes, and the summary gives the ratio of the best runs
//! and the median of the per-round ratios.
//!
//! ```text
//! malloc_thp [--size 1g] [--secs 2] [--rounds 6] [--op read|write]
//! ```
//!
//! Prints `THP round=R huge=on|off op=... iops=...`, the bytes of each disk in huge pages (from
//! /proc/self/smaps), and `THP-SUMMARY`.

use std::time::{Duration, Instant};

use spinblk_bdev::{Bdev, BdevIo, IoChannel, IoOp, IoStatus, IoVec, MallocBdev, MallocOptions};

/// Requests per second of random `op`s of 4 KiB over `span` bytes for `secs`.
fn run(ch: &mut dyn IoChannel, op: IoOp, span: u64, secs: f64) -> f64 {
    let mut buf = vec![0x5au8; 4096];
    let iov = [IoVec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: 4096,
    }];
    let blocks = span / 4096;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % blocks) * 4096;
            // SAFETY: `buf` outlives the request, which completes before the next poll returns.
            let io = unsafe { BdevIo::with_iovecs(0, op, off, 4096, iov.as_ptr(), 1) };
            if ch.submit(io).is_err() {
                panic!("channel full");
            }
            ch.poll_completions(&mut |c| assert_eq!(c.status, IoStatus::Success));
        }
        n += 1024;
        if start.elapsed() >= limit {
            break;
        }
    }
    std::hint::black_box(&buf);
    n as f64 / start.elapsed().as_secs_f64()
}

/// AnonHugePages (bytes) summed over the mappings of this process that are at least `min` long.
fn huge_bytes_of_large_mappings(min: u64) -> Vec<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut out = Vec::new();
    let mut size = 0u64;
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Size:") {
            size = kb
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                << 10;
        } else if let Some(kb) = line.strip_prefix("AnonHugePages:") {
            if size >= min {
                out.push(
                    kb.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0)
                        << 10,
                );
            }
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let mut size: u64 = 1 << 30;
    let mut secs = 2.0;
    let mut rounds = 6;
    let mut op = IoOp::Read;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("missing value");
        match a.as_str() {
            "--size" => {
                let v = val().to_ascii_lowercase();
                let (num, mul) = match v.strip_suffix('g') {
                    Some(n) => (n.to_string(), 1u64 << 30),
                    None => (v.trim_end_matches('m').to_string(), 1 << 20),
                };
                size = num.parse::<u64>().expect("size") * mul;
            }
            "--secs" => secs = val().parse().expect("secs"),
            "--rounds" => rounds = val().parse().expect("rounds"),
            "--op" => {
                op = match val().as_str() {
                    "read" => IoOp::Read,
                    "write" => IoOp::Write,
                    other => panic!("unknown op {other}"),
                }
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .unwrap_or_else(|_| "unknown".into());
    println!("THP-MODE {}", thp.trim());
    let make = |huge: bool| {
        let opts = MallocOptions {
            huge_pages: huge,
            prefault: true,
            max_size: Some(size),
        };
        let t = Instant::now();
        let b = MallocBdev::with_options(if huge { "thp" } else { "plain" }, size, 4096, opts)
            .expect("malloc");
        println!(
            "THP-MADE huge={} advice_taken={} prefault_secs={:.2}",
            if huge { "on" } else { "off" },
            b.huge_pages(),
            t.elapsed().as_secs_f64()
        );
        b
    };
    let on = make(true);
    let off = make(false);
    println!(
        "THP-HUGE-BYTES (per mapping of at least the disk size) {:?}",
        huge_bytes_of_large_mappings(size)
    );
    let mut ch_on = on.open_channel(1).expect("channel");
    let mut ch_off = off.open_channel(1).expect("channel");
    let name = if op == IoOp::Read { "read" } else { "write" };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always runs right after the other.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for huge in order {
            let ch = if huge {
                ch_on.as_mut()
            } else {
                ch_off.as_mut()
            };
            let iops = run(ch, op, size, secs);
            println!(
                "THP round={round} huge={} op={name} iops={iops:.0}",
                if huge { "on" } else { "off" }
            );
            if huge {
                a.push(iops);
            } else {
                b.push(iops);
            }
        }
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
    println!(
        "THP-SUMMARY op={name} size={size} best_on={:.0} best_off={:.0} best_ratio={:.3} \
         median_pair_ratio={:.3} median_on={:.0} median_off={:.0} rounds={rounds}",
        best(&a),
        best(&b),
        best(&a) / best(&b),
        median(ratios),
        median(a.clone()),
        median(b.clone()),
    );
}
