//! The writer/verifier: each worker owns a contiguous range of blocks, writes them with
//! increasing generations and reads them back, so it knows the exact generation every read
//! must return (one writer per block, synchronous I/O: a completed write is the newest).

use crate::block::{check, stamp, Verdict, BLOCK, MAGIC_STRESS};
use crate::dev::{AlignedBuf, Dev};
use crate::shared::{say, Bad, OpKind, Shared};
use std::io;
use std::sync::atomic::Ordering::Relaxed;

/// A generation that is not known (a failed write may or may not have landed).
pub const UNKNOWN: u64 = u64::MAX;

/// xorshift64*: cheap randomness for offsets and sizes.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A worker's parameters.
pub struct WorkerCfg {
    /// Worker number (its slot).
    pub id: usize,
    /// First block it owns (in blocks from the start of the disk).
    pub lo: u64,
    /// One past its last block.
    pub hi: u64,
    /// Run id in every stamp.
    pub run: u64,
    /// Most blocks per request.
    pub max_blocks: u64,
    /// Share of writes among requests, percent.
    pub write_pct: u64,
    /// A flush after this many writes (0: never).
    pub flush_every: u64,
}

/// Writes generation `gen` of blocks `lo..hi` (the initial fill), `chunk` bytes per request.
pub fn fill(
    dev: &Dev,
    sh: &Shared,
    lo: u64,
    hi: u64,
    gen: u64,
    run: u64,
    chunk: usize,
) -> io::Result<()> {
    let mut buf = AlignedBuf::new(chunk)?;
    let per = (chunk / BLOCK) as u64;
    let mut b = lo;
    while b < hi {
        let n = per.min(hi - b);
        let bytes = n as usize * BLOCK;
        for (i, blk) in buf.as_mut_slice()[..bytes]
            .chunks_exact_mut(BLOCK)
            .enumerate()
        {
            stamp(blk, MAGIC_STRESS, b + i as u64, gen, run);
        }
        let off = b * BLOCK as u64;
        sh.timed(sh.main_slot(), OpKind::Write, off, bytes as u64, || {
            dev.write_at(&buf.as_slice()[..bytes], off)
        })?;
        b += n;
    }
    Ok(())
}

/// Checks `n` blocks from block `b` in `buf` against `gens` (indexed from `lo`); counts and
/// reports failures. Returns the number of bad blocks.
pub fn verify_range(
    sh: &Shared,
    who: &str,
    buf: &[u8],
    b: u64,
    lo: u64,
    gens: &[u64],
    run: u64,
) -> u64 {
    let mut bad = 0;
    for (i, blk) in buf.chunks_exact(BLOCK).enumerate() {
        let idx = b + i as u64;
        let want = gens[(idx - lo) as usize];
        if want == UNKNOWN {
            continue;
        }
        match check(blk, MAGIC_STRESS, idx, want, run) {
            Verdict::Ok => {
                sh.verified.fetch_add(1, Relaxed);
            }
            Verdict::Stale(found) => {
                bad += 1;
                sh.bad(Bad::Stale, &format!("{who} block={idx} generation {found}, expected {want} (last completed write)"));
            }
            v => {
                bad += 1;
                let found = match v {
                    Verdict::Misplaced(i) => format!(" (holds block {i})"),
                    Verdict::Future(g) => format!(" (generation {g} never completed)"),
                    _ => String::new(),
                };
                sh.bad(
                    Bad::Corrupt,
                    &format!(
                        "{who} block={idx} {}{found}, expected generation {want}",
                        v.name()
                    ),
                );
            }
        }
    }
    bad
}

/// Runs until `sh.stop`; returns the generation of each block `lo..hi` at the end.
pub fn worker(dev: Dev, sh: &Shared, cfg: WorkerCfg) -> Vec<u64> {
    let who = format!("worker{}", cfg.id);
    let span = cfg.hi - cfg.lo;
    let mut gens = vec![1u64; span as usize];
    let max_blocks = cfg.max_blocks.clamp(1, span);
    let mut buf = match AlignedBuf::new(max_blocks as usize * BLOCK) {
        Ok(b) => b,
        Err(e) => {
            sh.bad(Bad::Io, &format!("{who} cannot allocate its buffer: {e}"));
            return vec![UNKNOWN; span as usize];
        }
    };
    let mut rng = Rng::new(cfg.run ^ ((cfg.id as u64 + 1) << 32));
    let mut writes_since_flush = 0;
    let slot = cfg.id;
    while !sh.stop.load(Relaxed) {
        let n = 1 + rng.below(max_blocks);
        let b = cfg.lo + rng.below(span - n + 1);
        let g0 = (b - cfg.lo) as usize;
        let bytes = n as usize * BLOCK;
        let off = b * BLOCK as u64;
        if rng.below(100) < cfg.write_pct {
            let inject = if cfg.id == 0 {
                sh.inject.swap(0, Relaxed)
            } else {
                0
            };
            if inject == 3 {
                say(&format!(
                    "GIO INJECT hang: {who} holds a request for {} ms",
                    sh.lost_after.as_millis() + 3000
                ));
                sh.timed(slot, OpKind::Write, off, bytes as u64, || {
                    std::thread::sleep(sh.lost_after + std::time::Duration::from_secs(3))
                });
            }
            let data = &mut buf.as_mut_slice()[..bytes];
            for (i, blk) in data.chunks_exact_mut(BLOCK).enumerate() {
                let g = gens[g0 + i];
                let next = if g == UNKNOWN { 1_000_000 } else { g + 1 };
                stamp(blk, MAGIC_STRESS, b + i as u64, next, cfg.run);
            }
            if inject == 2 {
                say(&format!(
                    "GIO INJECT corrupt: {who} flips a byte of block {b}"
                ));
                data[100] ^= 0x40;
            }
            match sh.timed(slot, OpKind::Write, off, bytes as u64, || {
                dev.write_at(data, off)
            }) {
                Ok(()) => {
                    for i in 0..n as usize {
                        let g = gens[g0 + i];
                        gens[g0 + i] = if g == UNKNOWN { 1_000_000 } else { g + 1 };
                    }
                }
                Err(e) => {
                    gens[g0..g0 + n as usize].fill(UNKNOWN);
                    sh.bad(
                        Bad::Io,
                        &format!("{who} write offset={off} len={bytes}: {e}"),
                    );
                    continue;
                }
            }
            if inject == 1 {
                // Put the previous generation of block b back behind the bookkeeping's back.
                let g = gens[g0];
                let blk = &mut buf.as_mut_slice()[..BLOCK];
                stamp(blk, MAGIC_STRESS, b, g - 1, cfg.run);
                say(&format!(
                    "GIO INJECT stale: {who} rewrites block {b} with generation {}",
                    g - 1
                ));
                if let Err(e) = dev.write_at(blk, off) {
                    sh.bad(Bad::Io, &format!("{who} inject write: {e}"));
                }
            }
            writes_since_flush += 1;
            if cfg.flush_every > 0 && writes_since_flush >= cfg.flush_every {
                writes_since_flush = 0;
                if let Err(e) = sh.timed(slot, OpKind::Flush, 0, 0, || dev.flush()) {
                    sh.bad(Bad::Io, &format!("{who} flush: {e}"));
                }
            }
            // Half the writes are read back at once (a completed write must be visible);
            // the other half are found by later reads.
            if rng.below(2) == 0 && inject == 0 {
                continue;
            }
        }
        let data = &mut buf.as_mut_slice()[..bytes];
        match sh.timed(slot, OpKind::Read, off, bytes as u64, || {
            dev.read_at(data, off)
        }) {
            Ok(()) => {
                verify_range(sh, &who, data, b, cfg.lo, &gens, cfg.run);
            }
            Err(e) => sh.bad(
                Bad::Io,
                &format!("{who} read offset={off} len={bytes}: {e}"),
            ),
        }
    }
    gens
}
