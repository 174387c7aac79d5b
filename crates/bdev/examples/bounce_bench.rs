//! Throughput of misaligned reads and writes through the io_uring file bdev's bounce buffers:
//! every request's one iovec starts one byte past a page boundary, so `O_DIRECT` cannot take it
//! and the channel stages it in its per-channel bounce pool. Used to size that pool.
//!
//! ```text
//! bounce_bench [--dir DIR | --file PATH] [--secs S] [--rounds N] [--qd N]
//!              [--sizes 4k,64k,1m,4m] [--ops read,write]
//! ```
//!
//! A fresh 256 MiB file lives in DIR (default /dev/shm: tmpfs takes `O_DIRECT` since Linux 6.6,
//! so the device is memory and the copies dominate) and is filled first; `--file` uses an
//! existing file as it is (to alternate several builds quickly on the same data). Prints one line per (round, op, size):
//! `BOUNCE op=read size=4194304 qd=32 MiB/s=... iops=...`, then the best per case.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spinblk_bdev::{Bdev, BdevIo, IoChannel, IoOp, IoStatus, IoVec, UringBdev, UringOptions};

/// A page-aligned, zeroed heap buffer.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(len: usize) -> Buf {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Buf { ptr, layout }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

fn parse_size(s: &str) -> usize {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (&s[..], 1),
    };
    num.parse::<usize>().expect("size") * mul
}

/// Runs `op` requests of `size` bytes at queue depth `qd` for `secs`; returns bytes per second.
fn run(ch: &mut dyn IoChannel, op: IoOp, size: usize, qd: usize, span: u64, secs: f64) -> f64 {
    let bufs: Vec<Buf> = (0..qd).map(|_| Buf::new(size + 4096)).collect();
    let iovs: Vec<[IoVec; 1]> = bufs
        .iter()
        .map(|b| {
            [IoVec {
                iov_base: b.ptr.wrapping_add(1).cast(),
                iov_len: size,
            }]
        })
        .collect();
    let blocks = span / size as u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next_offset = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * size as u64
    };
    let mut free: Vec<usize> = (0..qd).collect();
    let mut backlog: Vec<BdevIo> = Vec::with_capacity(qd);
    let mut done_bytes = 0u64;
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut stopping = false;
    loop {
        if !stopping && start.elapsed() >= limit {
            stopping = true;
        }
        while let Some(io) = backlog.pop() {
            if let Err(io) = ch.submit(io) {
                backlog.push(io);
                break;
            }
        }
        while !stopping && backlog.is_empty() {
            let Some(i) = free.pop() else { break };
            // SAFETY: buffer `i` and its iovec live until the end of this function, and every
            // request is reaped before it returns.
            let io = unsafe {
                BdevIo::with_iovecs(
                    i as u32,
                    op,
                    next_offset(),
                    size as u64,
                    iovs[i].as_ptr(),
                    1,
                )
            };
            if let Err(io) = ch.submit(io) {
                backlog.push(io);
            }
        }
        ch.flush_submissions();
        ch.poll_completions(&mut |c| {
            assert_eq!(c.status, IoStatus::Success, "request {} failed", c.tag);
            done_bytes += size as u64;
            free.push(c.tag as usize);
        });
        if stopping && free.len() == qd && backlog.is_empty() {
            break;
        }
    }
    done_bytes as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut dir = String::from("/dev/shm");
    let mut file: Option<String> = None;
    let mut ops = vec![(IoOp::Read, "read"), (IoOp::Write, "write")];
    let mut secs = 2.0;
    let mut rounds = 3;
    let mut qd = 32;
    let mut sizes = vec![4 << 10, 64 << 10, 1 << 20, 4 << 20];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("missing value");
        match a.as_str() {
            "--dir" => dir = val(),
            "--file" => file = Some(val()),
            "--ops" => {
                ops = val()
                    .split(',')
                    .map(|o| match o {
                        "read" => (IoOp::Read, "read"),
                        "write" => (IoOp::Write, "write"),
                        other => panic!("unknown op {other}"),
                    })
                    .collect()
            }
            "--secs" => secs = val().parse().expect("secs"),
            "--rounds" => rounds = val().parse().expect("rounds"),
            "--qd" => qd = val().parse().expect("qd"),
            "--sizes" => sizes = val().split(',').map(parse_size).collect(),
            other => panic!("unknown argument {other}"),
        }
    }
    let fresh = file.is_none();
    let path = match &file {
        Some(f) => std::path::PathBuf::from(f),
        None => {
            let path =
                std::path::Path::new(&dir).join(format!("bounce-bench-{}.img", std::process::id()));
            let f = std::fs::File::create(&path).expect("create");
            f.set_len(256 << 20).expect("size");
            path
        }
    };
    let span = std::fs::metadata(&path).expect("stat").len();
    let opts = UringOptions {
        block_size: Some(4096),
        ..UringOptions::default()
    };
    let bdev = UringBdev::open(&path, opts).expect("open");
    let mut ch = bdev.open_channel(qd).expect("channel");
    if fresh {
        // Fill the file so reads find data (tmpfs holes read fast).
        run(ch.as_mut(), IoOp::Write, 1 << 20, 8, span, 0.5);
    }
    let mut best: BTreeMap<(usize, &str), f64> = BTreeMap::new();
    for round in 0..rounds {
        for &size in &sizes {
            for &(op, name) in &ops {
                let bps = run(ch.as_mut(), op, size, qd, span, secs);
                println!(
                    "BOUNCE round={round} op={name} size={size} qd={qd} MiB/s={:.0} iops={:.0}",
                    bps / (1 << 20) as f64,
                    bps / size as f64
                );
                let b = best.entry((size, name)).or_insert(0.0);
                *b = b.max(bps);
            }
        }
    }
    for ((size, name), bps) in best {
        println!(
            "BOUNCE-BEST op={name} size={size} qd={qd} MiB/s={:.0}",
            bps / (1 << 20) as f64
        );
    }
    drop(ch);
    if fresh {
        let _ = std::fs::remove_file(&path);
    }
}
