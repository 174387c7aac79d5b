//! spinblk-copyfloor: what one 4 KiB read from a random place in a RAM disk costs on this
//! machine with no protocol around it, the floor under a malloc disk's QD1 reads.
//!
//! Alternating rounds, on one pinned thread, of:
//!
//! * `malloc`: spinblk's malloc bdev through its channel (submit, flush, poll: the copy with
//!   its prefetch, plus the channel's own bookkeeping), one request at a time;
//! * `memcpy`: a plain 4 KiB `memcpy` from an anonymous mapping on transparent huge pages,
//!   as a target without a prefetch copies (SPDK's malloc bdev, through its software accel
//!   module).
//!
//! Both disks are written in full first, so every page is present. Each read is timed alone
//! (a QD1 target's pass ends before the next request comes; back-to-back copies would overlap
//! one read's misses with the next). Prints nanoseconds per read, the best and the median
//! round of each, and their ratio.

mod cpus;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use spinblk_bdev::{Bdev, BdevIo, IoChannel, IoOp, IoStatus, IoVec, MallocBdev};

const BLOCK: usize = 4096;

/// Times random 4 KiB reads from a RAM disk: spinblk's malloc bdev against a plain memcpy.
#[derive(Parser, Debug)]
#[command(name = "spinblk-copyfloor", version)]
struct Args {
    /// Disk size in MiB (both disks).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    size_mib: u64,
    /// CPU to run on (a list of one, as in spinblk-bench's --cpus).
    #[arg(long, value_parser = cpus::parse_cpu_list)]
    cpu: Option<cpus::CpuList>,
    /// Reads per round.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    reads: u64,
    /// Rounds of each kind, alternating.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// Idle spin between reads in nanoseconds (a QD1 target waits for the next request).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    gap_ns: u64,
}

/// A private anonymous mapping on transparent huge pages, written in full.
struct ThpDisk {
    ptr: *mut u8,
    len: usize,
}

impl ThpDisk {
    fn new(len: usize) -> Result<Self, String> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mmap {len} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the range is the mapping just made; MADV_HUGEPAGE only changes how it is
        // backed. Only a hint: without huge pages the figures are just slower.
        unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        // SAFETY: the mapping is `len` bytes, readable and writable.
        unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0x5a, len) };
        Ok(ThpDisk {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for ThpDisk {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// xorshift64: block numbers spread over the disk, the same sequence for both kinds.
struct Blocks {
    state: u64,
    count: u64,
}

impl Blocks {
    fn next_offset(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.count) * BLOCK as u64
    }
}

fn spin(ns: u64) {
    if ns == 0 {
        return;
    }
    let start = Instant::now();
    while start.elapsed().as_nanos() < u128::from(ns) {
        std::hint::spin_loop();
    }
}

/// Runs `read` `args.reads` times, each timed alone (the clock reads between them wait for
/// the read's loads, as a QD1 target's pass ends before the next request comes), with
/// `args.gap_ns` of idle spin after each; nanoseconds per read, gaps left out.
fn timed(args: &Args, mut read: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    let mut busy = Duration::ZERO;
    for _ in 0..args.reads {
        let start = Instant::now();
        read()?;
        busy += start.elapsed();
        spin(args.gap_ns);
    }
    Ok(busy.as_nanos() as f64 / args.reads as f64)
}

/// One round through the malloc channel; nanoseconds per read.
fn round_malloc(
    ch: &mut dyn IoChannel,
    buf: &mut [u8],
    blocks: &mut Blocks,
    args: &Args,
) -> Result<f64, String> {
    let iov = [IoVec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    timed(args, || {
        let offset = blocks.next_offset();
        // SAFETY: `buf` outlives the request, which completes within this call.
        let io =
            unsafe { BdevIo::with_iovecs(0, IoOp::Read, offset, BLOCK as u64, iov.as_ptr(), 1) };
        ch.submit(io)
            .map_err(|_| "the channel is full".to_string())?;
        ch.flush_submissions();
        let mut status = None;
        ch.poll_completions(&mut |c| status = Some(c.status));
        match status {
            Some(IoStatus::Success) => Ok(()),
            _ => Err(format!("read at {offset}: {status:?}")),
        }
    })
}

/// One round of plain copies; nanoseconds per read.
fn round_memcpy(disk: &ThpDisk, buf: &mut [u8], blocks: &mut Blocks, args: &Args) -> f64 {
    let read = || {
        let offset = blocks.next_offset() as usize;
        // SAFETY: offset + BLOCK <= disk.len (offsets are whole blocks below the block count);
        // `buf` is BLOCK bytes and not part of the mapping.
        unsafe { std::ptr::copy_nonoverlapping(disk.ptr.add(offset), buf.as_mut_ptr(), BLOCK) };
        std::hint::black_box(&buf);
        Ok(())
    };
    timed(args, read).unwrap_or(f64::NAN)
}

fn summary(name: &str, mut ns: Vec<f64>) -> (f64, f64) {
    ns.sort_by(f64::total_cmp);
    let (best, median) = (ns[0], ns[ns.len() / 2]);
    println!(
        "{name:<7} best {best:7.1} ns/read  median {median:7.1} ns/read  ({} rounds)",
        ns.len()
    );
    (best, median)
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(list) = &args.cpu {
        match list.0[..] {
            [cpu] => cpus::pin(cpu)?,
            _ => return Err("--cpu takes one CPU".into()),
        }
    }
    let bytes = args.size_mib << 20;
    let len = usize::try_from(bytes).map_err(|_| "--size-mib too large".to_string())?;
    let bdev = MallocBdev::new("copyfloor", bytes, 512).map_err(|e| e.to_string())?;
    let mut ch = bdev.open_channel(4).map_err(|e| e.to_string())?;
    let mut buf = vec![0x5au8; 1 << 20];
    for at in (0..bytes).step_by(buf.len()) {
        let iov = [IoVec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: `buf` outlives the request, which completes before the next one is built.
        let io =
            unsafe { BdevIo::with_iovecs(0, IoOp::Write, at, buf.len() as u64, iov.as_ptr(), 1) };
        ch.submit(io)
            .map_err(|_| "the channel is full".to_string())?;
        ch.flush_submissions();
        ch.poll_completions(&mut |_| {});
    }
    let disk = ThpDisk::new(len)?;
    let mut out = vec![0u8; BLOCK];
    let count = bytes / BLOCK as u64;
    let (mut malloc, mut memcpy) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ (round + 1);
        let m = round_malloc(
            ch.as_mut(),
            &mut out,
            &mut Blocks { state: seed, count },
            args,
        )?;
        let c = round_memcpy(&disk, &mut out, &mut Blocks { state: seed, count }, args);
        println!(
            "round {:>3}: malloc {m:7.1} ns/read  memcpy {c:7.1} ns/read",
            round + 1
        );
        malloc.push(m);
        memcpy.push(c);
    }
    let (mb, mm) = summary("malloc", malloc);
    let (cb, cm) = summary("memcpy", memcpy);
    println!("memcpy/malloc: best {:.2}  median {:.2}", cb / mb, cm / mm);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spinblk-copyfloor: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets are whole blocks inside the disk, spread over it.
    #[test]
    fn offsets_are_blocks_inside_the_disk() {
        let count = 1000;
        let mut blocks = Blocks { state: 7, count };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let offset = blocks.next_offset();
            assert_eq!(offset % BLOCK as u64, 0);
            assert!(offset < count * BLOCK as u64);
            seen.insert(offset);
        }
        assert!(seen.len() > 900, "only {} distinct blocks", seen.len());
    }

    /// A small run of both kinds goes through: every malloc read succeeds.
    #[test]
    fn small_run_completes() {
        let args = Args::try_parse_from([
            "spinblk-copyfloor",
            "--size-mib",
            "8",
            "--reads",
            "2000",
            "--rounds",
            "2",
        ])
        .expect("arguments");
        assert_eq!(run(&args), Ok(()));
    }
}
