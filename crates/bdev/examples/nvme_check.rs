//! Drives an [`NvmeBdev`] directly (no launcher, no vhost-user): data checks against a real or
//! emulated NVMe namespace, and a small 4 KiB random I/O benchmark against the io_uring block
//! device bdev. Run by scripts/nvme-vm-test.sh inside a guest; needs root.
//!
//! ```text
//! nvme_check --nvme /dev/ng0n1 [--poll] [--dump FILE] [--seed N]
//! nvme_check --nvme /dev/ng0n1 --expect-error TEXT [--poll]
//! nvme_check --nvme /dev/ng0n1 --bench --blockdev /dev/nvme0n1 [--poll] [--secs N]
//! ```
//!
//! Check mode prints `NVME-CHECK <name> ok|FAIL <detail>` per check, `NVME-INFO` lines, and
//! last `NVME-RESULT PASS|FAIL`; it exits non-zero on failure. `--dump FILE` writes the bytes
//! the checks left in their region (offset [`REGION`], [`REGION_LEN`] bytes) so the caller can
//! compare them with what the block device reads; `--seed N` varies the data written, so
//! a second run can be told from the first. `--expect-error TEXT` passes when opening
//! fails with a message that contains TEXT. Bench mode prints `NVME-BENCH` and
//! `NVME-BENCH-RATIO` lines.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use spinblk_bdev::{
    Bdev, BdevIo, Completion, IoChannel, IoOp, IoStatus, IoVec, NvmeBdev, NvmeOptions, UringBdev,
    UringOptions,
};

/// Where the checks write: far from the partition table and the end of the disk.
const REGION: u64 = 16 << 20;
/// How much they cover.
const REGION_LEN: usize = 16 << 20;
/// Where the benchmark does its random I/O, and over how much.
const BENCH_BASE: u64 = 64 << 20;
const BENCH_SPAN: u64 = 64 << 20;
/// Longest wait for any one batch of requests (TCG is slow).
const TIMEOUT: Duration = Duration::from_secs(120);

/// A page-aligned, zeroed buffer.
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
    fn bytes(&self) -> &[u8] {
        // SAFETY: `layout.size()` initialised bytes owned by self; read only between requests.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
    /// An iovec over `[start, start + len)`.
    fn iov(&self, start: usize, len: usize) -> IoVec {
        assert!(start + len <= self.layout.size());
        IoVec {
            iov_base: self.ptr.wrapping_add(start).cast(),
            iov_len: len,
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// Deterministic bytes for `len` bytes at device offset `at` under `seed`.
fn pattern(seed: u64, at: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let mut x = ((at + i) / 8) ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 29;
            (x >> (8 * ((at + i) % 8))) as u8
        })
        .collect()
}

fn rw(tag: u32, op: IoOp, offset: u64, iov: &[IoVec]) -> BdevIo {
    let len = iov.iter().map(|v| v.iov_len as u64).sum();
    // SAFETY: every caller keeps the iovec array and its buffers alive until the request's
    // completion has been reaped (`run` waits for all of them).
    unsafe { BdevIo::with_iovecs(tag, op, offset, len, iov.as_ptr(), iov.len()) }
}

/// Submits every request (retrying those a full channel hands back) and waits for all of
/// them; returns the statuses in tag order (tags are 0..n).
fn run(ch: &mut dyn IoChannel, ios: Vec<BdevIo>) -> Result<Vec<IoStatus>, String> {
    let n = ios.len();
    let mut pending: std::collections::VecDeque<BdevIo> = ios.into();
    let mut status = vec![None; n];
    let mut done = 0;
    let start = Instant::now();
    while done < n {
        while let Some(io) = pending.pop_front() {
            if let Err(io) = ch.submit(io) {
                pending.push_front(io);
                break;
            }
        }
        ch.flush_submissions();
        ch.poll_completions(&mut |c: Completion| {
            if let Some(s) = status.get_mut(c.tag as usize) {
                *s = Some(c.status);
            }
            done += 1;
        });
        if start.elapsed() > TIMEOUT {
            return Err(format!("timed out with {done} of {n} requests done"));
        }
        std::hint::spin_loop();
    }
    status
        .into_iter()
        .map(|s| s.ok_or_else(|| "a request completed twice, another never".to_string()))
        .collect()
}

fn run_one(ch: &mut dyn IoChannel, io: BdevIo) -> IoStatus {
    match run(ch, vec![io]) {
        Ok(s) => s[0],
        Err(e) => {
            println!("NVME-INFO error {e}");
            IoStatus::IoError
        }
    }
}

struct Checks {
    failed: bool,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        println!(
            "NVME-CHECK {name} {} {detail}",
            if ok { "ok" } else { "FAIL" }
        );
        self.failed |= !ok;
    }
}

/// The first differing offset of two byte slices, for messages.
fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at +{i}: {:#04x} != {:#04x}", a[i], b[i]),
        None if a.len() != b.len() => format!("lengths {} != {}", a.len(), b.len()),
        None => "equal".to_string(),
    }
}

/// Reads `len` bytes at `offset` in requests of `chunk` bytes, each split into `segs` segments.
fn read_back(
    ch: &mut dyn IoChannel,
    offset: u64,
    len: usize,
    chunk: usize,
    segs: usize,
) -> Result<Vec<u8>, String> {
    let buf = Buf::new(len);
    let mut iovs: Vec<Vec<IoVec>> = Vec::new();
    let mut at = 0;
    while at < len {
        let n = chunk.min(len - at);
        let seg = (n / segs).next_multiple_of(512).min(n);
        let mut v = Vec::new();
        let mut s = 0;
        while s < n {
            let l = seg.min(n - s);
            v.push(buf.iov(at + s, l));
            s += l;
        }
        iovs.push(v);
        at += n;
    }
    let ios = iovs
        .iter()
        .enumerate()
        .map(|(i, v)| rw(i as u32, IoOp::Read, offset + (i * chunk) as u64, v))
        .collect();
    let st = run(ch, ios)?;
    if let Some(bad) = st.iter().position(|&s| s != IoStatus::Success) {
        return Err(format!("read {bad} ended {:?}", st[bad]));
    }
    Ok(buf.bytes()[..len].to_vec())
}

fn check_mode(bdev: &NvmeBdev, dump: Option<&str>, seed: u64) -> bool {
    let mut c = Checks { failed: false };
    let bs = bdev.block_size() as usize;
    println!(
        "NVME-INFO geometry nsid={} block_size={bs} blocks={} mdts_bytes={:?} \
         max_transfer={} max_segments={} discard={} write_zeroes={} discard_reads_zeroes={} \
         vwc={} block_device={:?} poll={}",
        bdev.nsid(),
        bdev.num_blocks(),
        bdev.mdts_bytes(),
        bdev.max_transfer_bytes(),
        bdev.max_segments(),
        bdev.supports(IoOp::Discard),
        bdev.supports(IoOp::WriteZeroes),
        bdev.discard_reads_zeroes(),
        bdev.volatile_write_cache(),
        bdev.block_device(),
        bdev.options().poll,
    );
    let mut ch = match bdev.open_channel(32) {
        Ok(ch) => ch,
        Err(e) => {
            c.check("open-channel", false, e);
            return false;
        }
    };
    let ch = ch.as_mut();
    let mut model = vec![0u8; REGION_LEN];
    // What the region holds now (a previous run, or zeroes): the model starts from it.
    match read_back(ch, REGION, REGION_LEN, 1 << 20, 1) {
        Ok(d) => model.copy_from_slice(&d),
        Err(e) => c.check("initial-read", false, e),
    }

    // 1. 64 KiB writes at queue depth (up to 32 in flight), each in 1-4 segments of assorted
    //    512-byte multiples, in shuffled order; then read back in different pieces.
    let span = 4 << 20;
    let chunk = 64 << 10;
    let src = {
        let mut b = Buf::new(span);
        b.bytes_mut()[..span].copy_from_slice(&pattern(seed + 1, REGION, span));
        b
    };
    let nchunks = span / chunk;
    let mut order: Vec<usize> = (0..nchunks).collect();
    let mut x = 0x1234_5678u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let layouts: [&[usize]; 4] = [
        &[65536],
        &[4096, 61440],
        &[512, 32256, 32768],
        &[8192, 1024, 3072, 53248],
    ];
    let iovs: Vec<Vec<IoVec>> = order
        .iter()
        .map(|&k| {
            let mut at = k * chunk;
            layouts[k % 4]
                .iter()
                .map(|&l| {
                    let v = src.iov(at, l);
                    at += l;
                    v
                })
                .collect()
        })
        .collect();
    let ios = iovs
        .iter()
        .enumerate()
        .map(|(i, v)| rw(i as u32, IoOp::Write, REGION + (order[i] * chunk) as u64, v))
        .collect();
    match run(ch, ios) {
        Ok(st) => {
            let bad = st.iter().filter(|&&s| s != IoStatus::Success).count();
            c.check(
                "qd-writes",
                bad == 0,
                format!("{nchunks} x 64KiB, {bad} failed"),
            );
        }
        Err(e) => c.check("qd-writes", false, e),
    }
    model[..span].copy_from_slice(&src.bytes()[..span]);
    match read_back(ch, REGION, span, 128 << 10, 3) {
        Ok(d) => c.check(
            "qd-read-verify",
            d == model[..span],
            first_diff(&d, &model[..span]),
        ),
        Err(e) => c.check("qd-read-verify", false, e),
    }

    // 2. One request over five separate buffers (NVME_URING_CMD_IO_VEC).
    let off = 4usize << 20;
    let sizes = [4096usize, 512, 3584, 8192, 16384];
    let total: usize = sizes.iter().sum();
    let data = pattern(seed + 2, REGION + off as u64, total);
    let bufs: Vec<Buf> = {
        let mut at = 0;
        sizes
            .iter()
            .map(|&l| {
                let mut b = Buf::new(l + 4096);
                // Each at a different page offset (still 512-aligned).
                let shift = (at / 512 % 8) * 512;
                b.bytes_mut()[shift..shift + l].copy_from_slice(&data[at..at + l]);
                at += l;
                b
            })
            .collect()
    };
    let mut at = 0;
    let v: Vec<IoVec> = sizes
        .iter()
        .zip(&bufs)
        .map(|(&l, b)| {
            let iov = b.iov(at / 512 % 8 * 512, l);
            at += l;
            iov
        })
        .collect();
    let st = run_one(ch, rw(0, IoOp::Write, REGION + off as u64, &v));
    model[off..off + total].copy_from_slice(&data);
    let back = read_back(ch, REGION + off as u64, total, total, 1);
    c.check(
        "multi-segment",
        st == IoStatus::Success && back.as_deref() == Ok(&data[..]),
        format!(
            "write {st:?}, {}",
            back.map(|d| first_diff(&d, &data)).unwrap_or_else(|e| e)
        ),
    );

    // 3. A request larger than the per-command limit (MDTS): split into several commands.
    let off = 8usize << 20;
    let max = bdev.max_transfer_bytes() as usize;
    let big = (2 * max + 2 * bs).min(4 << 20);
    if big <= max {
        println!("NVME-INFO larger-than-mdts skipped: limit {max} bytes");
    } else {
        let data = pattern(seed + 3, REGION + off as u64, big);
        let mut b = Buf::new(big);
        b.bytes_mut()[..big].copy_from_slice(&data);
        let st = run_one(
            ch,
            rw(0, IoOp::Write, REGION + off as u64, &[b.iov(0, big)]),
        );
        model[off..off + big].copy_from_slice(&data);
        // Back in one three-segment request (the cuts fall inside segments) ...
        let back = read_back(ch, REGION + off as u64, big, big, 3);
        c.check(
            "larger-than-mdts",
            st == IoStatus::Success && back.as_deref() == Ok(&data[..]),
            format!(
                "{big} bytes, limit {max}: write {st:?}, {}",
                back.map(|d| first_diff(&d, &data)).unwrap_or_else(|e| e)
            ),
        );
    }

    // 4. Misaligned buffers: bounced (a pool buffer, and a larger-than-pool one that also
    //    splits).
    for (name, off, len, shift) in [
        ("bounce-small", 5usize << 20, 12288usize, 1usize),
        ("bounce-large", 6 << 20, (1 << 20) + 8192, 7),
    ] {
        let data = pattern(seed + 4 + len as u64, REGION + off as u64, len);
        let mut w = Buf::new(len + 4096);
        w.bytes_mut()[shift..shift + len].copy_from_slice(&data);
        let st = run_one(
            ch,
            rw(0, IoOp::Write, REGION + off as u64, &[w.iov(shift, len)]),
        );
        model[off..off + len].copy_from_slice(&data);
        let r = Buf::new(len + 4096);
        let half = len / 2 + 3;
        let riov = [r.iov(3, half), r.iov(3 + half, len - half)];
        let rst = run_one(ch, rw(0, IoOp::Read, REGION + off as u64, &riov));
        let got = &r.bytes()[3..3 + len];
        c.check(
            name,
            st == IoStatus::Success && rst == IoStatus::Success && got == &data[..],
            format!("write {st:?} read {rst:?}, {}", first_diff(got, &data)),
        );
    }

    // 5. Flush.
    let st = run_one(ch, BdevIo::without_data(0, IoOp::Flush, 0, 0));
    c.check("flush", st == IoStatus::Success, format!("{st:?}"));

    // 5b. Flushes among reads, many times: a polled channel must not poll a flush (Linux
    //     before 6.5 crashes in bio_poll when it does; see nvme/polled.rs).
    {
        let rounds = 200;
        let b = Buf::new(16 * 4096);
        let iovs: Vec<IoVec> = (0..16).map(|i| b.iov(i * 4096, 4096)).collect();
        let failed = (0..rounds).try_fold(0, |bad, _| {
            // Tags 0..18: flushes at 4 and 17, reads of the 16 buffers around them.
            let mut next = iovs.iter().enumerate();
            let ios = (0..18u32)
                .filter_map(|tag| {
                    if tag == 4 || tag == 17 {
                        return Some(BdevIo::without_data(tag, IoOp::Flush, 0, 0));
                    }
                    let (i, v) = next.next()?;
                    let at = REGION + (i * 4096) as u64;
                    Some(rw(tag, IoOp::Read, at, std::slice::from_ref(v)))
                })
                .collect();
            let st = run(ch, ios)?;
            Ok::<_, String>(bad + st.iter().filter(|&&s| s != IoStatus::Success).count())
        });
        match failed {
            Ok(bad) => c.check(
                "flushes-among-reads",
                bad == 0,
                format!("{rounds} rounds of 16 reads and 2 flushes, {bad} failed"),
            ),
            Err(e) => c.check("flushes-among-reads", false, e),
        }
    }

    // 6. Write-zeroes and discard over data that is not zero.
    for (name, op, off) in [
        ("write-zeroes", IoOp::WriteZeroes, 12usize << 20),
        ("discard", IoOp::Discard, 13 << 20),
    ] {
        let len = 1usize << 20;
        if !bdev.supports(op) {
            println!("NVME-INFO {name} not supported by the controller");
            continue;
        }
        let data = pattern(seed + 6, REGION + off as u64, len);
        let mut b = Buf::new(len);
        b.bytes_mut()[..len].copy_from_slice(&data);
        let wst = run_one(
            ch,
            rw(0, IoOp::Write, REGION + off as u64, &[b.iov(0, len)]),
        );
        let st = run_one(
            ch,
            BdevIo::without_data(0, op, REGION + off as u64 + 4096, len as u64 - 8192),
        );
        let back = read_back(ch, REGION + off as u64, len, 256 << 10, 2);
        let mut want = data.clone();
        want[4096..len - 4096].fill(0);
        match back {
            Ok(d) => {
                let zeroed = d == want;
                if op == IoOp::Discard && !bdev.discard_reads_zeroes() {
                    // Deallocated blocks may read anything: check the request and the edges.
                    println!("NVME-INFO discard reads zeroes: {zeroed} (DLFEAT says no)");
                    c.check(
                        name,
                        wst == IoStatus::Success
                            && st == IoStatus::Success
                            && d[..4096] == data[..4096]
                            && d[len - 4096..] == data[len - 4096..],
                        format!("{st:?}"),
                    );
                    model[off..off + len].copy_from_slice(&d);
                } else {
                    c.check(
                        name,
                        wst == IoStatus::Success && st == IoStatus::Success && zeroed,
                        format!("{st:?}, reads back zeroes inside, data around: {zeroed}"),
                    );
                    model[off..off + len].copy_from_slice(&want);
                }
            }
            Err(e) => c.check(name, false, e),
        }
    }

    // 7. Out of range: refused, and the channel goes on.
    let b = Buf::new(4096);
    let st = run_one(ch, rw(0, IoOp::Read, bdev.size_bytes(), &[b.iov(0, 4096)]));
    c.check("out-of-range", st == IoStatus::IoError, format!("{st:?}"));

    // 8. Everything in the region, as the device has it now, read through the bdev again.
    match read_back(ch, REGION, REGION_LEN, 512 << 10, 2) {
        Ok(d) => c.check("region-verify", d == model, first_diff(&d, &model)),
        Err(e) => c.check("region-verify", false, e),
    }
    if let Some(path) = dump {
        if let Err(e) = std::fs::write(path, &model) {
            c.check("dump", false, e);
        }
        println!("NVME-INFO dump offset={REGION} len={REGION_LEN} file={path}");
    }
    !c.failed
}

/// 4 KiB random reads or writes at `qd` for `dur`: (IOPS, mean latency in µs).
fn bench_one(ch: &mut dyn IoChannel, write: bool, qd: usize, dur: Duration) -> (f64, f64) {
    let bufs: Vec<Buf> = (0..qd)
        .map(|i| {
            let mut b = Buf::new(4096);
            b.bytes_mut().fill(i as u8 | 1);
            b
        })
        .collect();
    let iovs: Vec<IoVec> = bufs.iter().map(|b| b.iov(0, 4096)).collect();
    let mut started = vec![None::<Instant>; qd];
    let mut free: Vec<usize> = (0..qd).collect();
    let mut x = 0x9e37_79b9u64 | qd as u64;
    let (mut ops, mut lat_ns) = (0u64, 0u128);
    let start = Instant::now();
    let op = if write { IoOp::Write } else { IoOp::Read };
    loop {
        let running = start.elapsed() < dur;
        if running {
            while let Some(i) = free.pop() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = BENCH_BASE + (x % (BENCH_SPAN / 4096)) * 4096;
                let io = rw(i as u32, op, off, std::slice::from_ref(&iovs[i]));
                match ch.submit(io) {
                    Ok(()) => started[i] = Some(Instant::now()),
                    Err(_) => {
                        free.push(i);
                        break;
                    }
                }
            }
            ch.flush_submissions();
        } else if free.len() == qd {
            break;
        }
        ch.poll_completions(&mut |c: Completion| {
            let i = c.tag as usize;
            if let Some(t) = started[i].take() {
                if running {
                    ops += 1;
                    lat_ns += t.elapsed().as_nanos();
                }
            }
            free.push(i);
        });
        if start.elapsed() > dur + TIMEOUT {
            println!("NVME-INFO bench drain timed out");
            break;
        }
    }
    let secs = dur.as_secs_f64();
    (
        ops as f64 / secs,
        if ops > 0 {
            lat_ns as f64 / ops as f64 / 1000.0
        } else {
            0.0
        },
    )
}

fn bench_mode(nvme: &NvmeBdev, blockdev: &str, secs: u64) -> bool {
    let uring = match UringBdev::open(blockdev, UringOptions::default()) {
        Ok(b) => b,
        Err(e) => {
            println!("NVME-INFO bench cannot open {blockdev}: {e}");
            return false;
        }
    };
    let dur = Duration::from_secs(secs);
    for (rwname, write) in [("randread", false), ("randwrite", true)] {
        for qd in [1usize, 32] {
            let mut row = Vec::new();
            for (name, bdev) in [
                ("nvme-passthru", nvme as &dyn Bdev),
                ("uring-blockdev", &uring as &dyn Bdev),
            ] {
                let mut ch = match bdev.open_channel(qd) {
                    Ok(ch) => ch,
                    Err(e) => {
                        println!("NVME-INFO bench {name}: {e}");
                        return false;
                    }
                };
                let (iops, lat) = bench_one(ch.as_mut(), write, qd, dur);
                println!(
                    "NVME-BENCH bdev={name} rw={rwname} bs=4k qd={qd} iops={iops:.0} \
                     lat_us={lat:.1} secs={secs}"
                );
                row.push(iops);
            }
            let ratio = if row[1] > 0.0 { row[0] / row[1] } else { 0.0 };
            println!("NVME-BENCH-RATIO rw={rwname} qd={qd} passthru/uring={ratio:.2}");
        }
    }
    true
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut path = None;
    let mut blockdev = None;
    let mut dump = None;
    let mut expect_error = None;
    let mut bench = false;
    let mut secs = 3u64;
    let mut seed = 0u64;
    let mut options = NvmeOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next().cloned().unwrap_or_else(|| {
                eprintln!("nvme_check: {name} needs a value");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--nvme" => path = Some(value("--nvme")),
            "--blockdev" => blockdev = Some(value("--blockdev")),
            "--dump" => dump = Some(value("--dump")),
            "--expect-error" => expect_error = Some(value("--expect-error")),
            "--secs" => secs = value("--secs").parse().unwrap_or(3),
            "--seed" => {
                seed = value("--seed")
                    .parse::<u64>()
                    .unwrap_or(0)
                    .wrapping_mul(1000)
            }
            "--poll" => options.poll = true,
            "--bench" => bench = true,
            other => {
                eprintln!("nvme_check: unknown argument '{other}'");
                return ExitCode::from(2);
            }
        }
    }
    let Some(path) = path else {
        eprintln!("usage: nvme_check --nvme /dev/ngXnY [--poll] [--dump FILE | --bench --blockdev DEV | --expect-error TEXT]");
        return ExitCode::from(2);
    };
    let opened = NvmeBdev::open(&path, options);
    if let Some(want) = expect_error {
        return match opened {
            Ok(_) => {
                println!("NVME-CHECK expect-error FAIL opened, expected an error with '{want}'");
                ExitCode::FAILURE
            }
            Err(e) => {
                let ok = e.to_string().contains(&want);
                println!(
                    "NVME-CHECK expect-error {} {e}",
                    if ok { "ok" } else { "FAIL" }
                );
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
        };
    }
    let bdev = match opened {
        Ok(b) => b,
        Err(e) => {
            println!("NVME-CHECK open FAIL {e}");
            println!("NVME-RESULT FAIL");
            return ExitCode::FAILURE;
        }
    };
    let ok = if bench {
        match blockdev.or_else(|| bdev.block_device().map(|p| p.display().to_string())) {
            Some(dev) => bench_mode(&bdev, &dev, secs),
            None => {
                println!("NVME-INFO bench needs --blockdev");
                false
            }
        }
    } else {
        check_mode(&bdev, dump.as_deref(), seed)
    };
    println!("NVME-RESULT {}", if ok { "PASS" } else { "FAIL" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
