//! A vhost-user-blk verify client (libblkio, data from the test kit's `pattern_at`): writes a pattern through a running spinblk,
//! flushes, reads it back with a different request layout and compares, then checks that
//! write-zeroes (and, with `--discard-reads-zeroes`, discard) read back as zeroes. Used by
//! scripts/nvme-vm-test.sh to run data through spinblk's NVMe passthrough bdev; `--dump FILE`
//! writes the bytes the device should now hold in the range, for a comparison with the block
//! device underneath.
//!
//! ```text
//! vhost_verify --socket PATH --offset BYTES --len BYTES [--seed N] [--discard-reads-zeroes]
//!              [--dump FILE]
//! ```
//!
//! Prints `VHOST-CHECK <name> ok|FAIL <detail>` lines and `VHOST-RESULT PASS|FAIL`; exits
//! non-zero on failure.

use std::mem::MaybeUninit;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, ReqFlags};
use spinblk_testkit::{first_difference, pattern_at};

const TIMEOUT: Duration = Duration::from_secs(120);

/// One request for [`run`].
enum Req {
    Readv(u64, Vec<libc::iovec>),
    Writev(u64, Vec<libc::iovec>),
    WriteZeroes(u64, u64),
    Discard(u64, u64),
    Flush,
}

/// Enqueues every request (their iovec arrays stay alive in `reqs` until all complete) and
/// waits for all of them; returns the first failure.
fn run(q: &mut Blkioq, reqs: &[Req]) -> Result<(), String> {
    let f = ReqFlags::empty();
    for (i, r) in reqs.iter().enumerate() {
        match r {
            Req::Readv(off, v) => q.readv(*off, v.as_ptr(), v.len() as u32, i, f),
            Req::Writev(off, v) => q.writev(*off, v.as_ptr(), v.len() as u32, i, f),
            Req::WriteZeroes(off, len) => q.write_zeroes(*off, *len, i, f),
            Req::Discard(off, len) => q.discard(*off, *len, i, f),
            Req::Flush => q.flush(i, f),
        }
    }
    let mut comps: Vec<MaybeUninit<Completion>> = (0..64).map(|_| MaybeUninit::uninit()).collect();
    let mut done = 0;
    let mut first_err = None;
    let start = Instant::now();
    while done < reqs.len() {
        let mut t = Duration::from_secs(1);
        let n = q
            .do_io(&mut comps, 1, Some(&mut t), None)
            .or_else(|e| {
                if e.errno() == blkio::Errno::TIME {
                    Ok(0)
                } else {
                    Err(format!("do_io: {e}"))
                }
            })?
            .min(comps.len());
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first n entries.
            let c = unsafe { c.assume_init_ref() };
            if c.ret != 0 && first_err.is_none() {
                first_err = Some(format!("request {} failed: ret {}", c.user_data, c.ret));
            }
        }
        done += n;
        if start.elapsed() > TIMEOUT {
            return Err(format!("timed out with {done} of {} done", reqs.len()));
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut socket, mut offset, mut len, mut seed) = (None, 0u64, 8usize << 20, 1u64);
    let (mut dump, mut discard_zeroes) = (None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--socket" => socket = Some(value()),
            "--offset" => offset = value().parse().unwrap_or(0),
            "--len" => len = value().parse().unwrap_or(0),
            "--seed" => seed = value().parse().unwrap_or(1),
            "--dump" => dump = Some(value()),
            "--discard-reads-zeroes" => discard_zeroes = true,
            other => {
                eprintln!("vhost_verify: unknown argument '{other}'");
                return ExitCode::from(2);
            }
        }
    }
    let Some(socket) = socket else {
        eprintln!("usage: vhost_verify --socket PATH --offset BYTES --len BYTES [--seed N] [--discard-reads-zeroes] [--dump FILE]");
        return ExitCode::from(2);
    };
    match verify(&socket, offset, len, seed, discard_zeroes, dump.as_deref()) {
        Ok(true) => {
            println!("VHOST-RESULT PASS");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("VHOST-RESULT FAIL");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("VHOST-CHECK setup FAIL {e}");
            println!("VHOST-RESULT FAIL");
            ExitCode::FAILURE
        }
    }
}

fn verify(
    socket: &str,
    offset: u64,
    len: usize,
    seed: u64,
    discard_zeroes: bool,
    dump: Option<&str>,
) -> Result<bool, String> {
    let mut b = Blkio::new("virtio-blk-vhost-user").map_err(|e| e.to_string())?;
    b.set_str("path", socket).map_err(|e| e.to_string())?;
    b.connect().map_err(|e| format!("connect {socket}: {e}"))?;
    let capacity = b.get_u64("capacity").map_err(|e| e.to_string())?;
    let max_seg = b.get_i32("max-segment-len").map_err(|e| e.to_string())?;
    let align = b
        .get_u64("mem-region-alignment")
        .map_err(|e| e.to_string())? as usize;
    println!("VHOST-INFO capacity={capacity} max-segment-len={max_seg}");
    if offset + len as u64 > capacity || len < (4 << 20) || len % (1 << 20) != 0 {
        return Err(format!(
            "range {offset}+{len} must fit the capacity {capacity}, be whole MiB, >= 4 MiB"
        ));
    }
    b.set_i32("num-queues", 1).map_err(|e| e.to_string())?;
    b.set_i32("queue-size", 256).map_err(|e| e.to_string())?;
    let mut out = b.start().map_err(|e| format!("start: {e}"))?;
    let mut q = out.queues.pop().ok_or("no queue")?;
    let region = b
        .alloc_mem_region((2 * len).next_multiple_of(align.max(4096)))
        .map_err(|e| e.to_string())?;
    b.map_mem_region(&region).map_err(|e| e.to_string())?;
    let wbuf = region.addr as *mut u8;
    let rbuf = (region.addr + len) as *mut u8;
    // SAFETY: the region holds 2 * len bytes, mapped and owned by this process; the target
    // reads and writes them only while a request is in flight, and `run` waits for all.
    let (w, r) = unsafe {
        (
            std::slice::from_raw_parts_mut(wbuf, len),
            std::slice::from_raw_parts_mut(rbuf, len),
        )
    };
    let mut ok = true;
    let mut check = |name: &str, good: bool, detail: String| {
        println!(
            "VHOST-CHECK {name} {} {detail}",
            if good { "ok" } else { "FAIL" }
        );
        ok &= good;
    };
    let iov = |p: *mut u8, at: usize, l: usize| libc::iovec {
        iov_base: p.wrapping_add(at).cast(),
        iov_len: l,
    };

    // Writes of assorted sizes (4 KiB .. 1 MiB), each in up to three segments.
    let mut model = pattern_at(seed, offset, len);
    w.copy_from_slice(&model);
    let sizes = [4096usize, 65536, 131072, 12288, 1 << 20, 8192, 524288];
    let mut reqs = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < len {
        let n = sizes[k % sizes.len()].min(len - at);
        let cut1 = (n / 3).next_multiple_of(4096).min(n);
        let mut v = vec![iov(wbuf, at, cut1)];
        if cut1 < n {
            let cut2 = (n - cut1) / 2 / 512 * 512;
            if cut2 > 0 {
                v.push(iov(wbuf, at + cut1, cut2));
            }
            v.push(iov(wbuf, at + cut1 + cut2, n - cut1 - cut2));
        }
        reqs.push(Req::Writev(offset + at as u64, v));
        at += n;
        k += 1;
    }
    let nw = reqs.len();
    let res = run(&mut q, &reqs);
    check("writes", res.is_ok(), format!("{nw} requests: {res:?}"));
    let res = run(&mut q, &[Req::Flush]);
    check("flush", res.is_ok(), format!("{res:?}"));

    let read_all = |q: &mut Blkioq, r: &mut [u8]| -> Result<(), String> {
        r.fill(0xee);
        let chunk = 256 << 10;
        let reqs: Vec<Req> = (0..len / chunk)
            .map(|i| {
                Req::Readv(
                    offset + (i * chunk) as u64,
                    vec![iov(rbuf, i * chunk, chunk)],
                )
            })
            .collect();
        run(q, &reqs)
    };
    let diff = |a: &[u8], b: &[u8]| match first_difference(a, b) {
        Some(i) => format!("first difference at +{i}"),
        None => "equal".to_string(),
    };
    let res = read_all(&mut q, r);
    check(
        "read-verify",
        res.is_ok() && r[..] == model[..],
        format!("{res:?}, {}", diff(r, &model)),
    );

    // Write-zeroes and discard of 512 KiB each, inside the range.
    let zoff = len / 4;
    let doff = len / 2;
    let zl = 512usize << 10;
    let res = run(
        &mut q,
        &[
            Req::WriteZeroes(offset + zoff as u64, zl as u64),
            Req::Discard(offset + doff as u64, zl as u64),
        ],
    );
    check("write-zeroes-discard", res.is_ok(), format!("{res:?}"));
    model[zoff..zoff + zl].fill(0);
    let res = read_all(&mut q, r);
    let zeroed = r[doff..doff + zl].iter().all(|&x| x == 0);
    if discard_zeroes {
        model[doff..doff + zl].fill(0);
    } else {
        println!("VHOST-INFO discarded range reads zeroes: {zeroed}");
        let (m, g) = (&mut model[doff..doff + zl], &r[doff..doff + zl]);
        m.copy_from_slice(g);
    }
    check(
        "read-after-zeroing",
        res.is_ok() && r[..] == model[..],
        format!("{res:?}, {}", diff(r, &model)),
    );

    if let Some(path) = dump {
        if let Err(e) = std::fs::write(path, &model) {
            check("dump", false, e.to_string());
        }
    }
    b.unmap_mem_region(&region);
    b.free_mem_region(&region);
    Ok(ok)
}
