//! The device-written memory check. A large buffer in guest RAM is refilled over and over by
//! the disk: for each chunk, write a new pass's stamp to the disk region, then read it back
//! into the buffer with O_DIRECT, so the backend (not the guest CPU) writes the buffer's
//! pages. After a migration the buffer must hold, chunk by chunk, the pass last read into it:
//! pages the backend wrote reach the destination only if the backend logged them as dirty.

use crate::block::{check, stamp, Verdict, BLOCK, MAGIC_MEM};
use crate::dev::{AlignedBuf, Dev};
use crate::shared::{say, Bad, OpKind, Shared};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Duration;

/// Requests to the memory thread, handled between two chunks.
pub enum MemCmd {
    /// Compare the whole buffer with what was read into it.
    Check(Sender<MemReport>),
    /// Stop; reply with the pass each chunk of the disk region holds.
    Stop(Sender<Vec<u64>>),
}

/// The result of a buffer check.
#[derive(Debug, Default)]
pub struct MemReport {
    /// Pages compared.
    pub pages: u64,
    /// Pages holding an older pass than the last one read into them.
    pub stale: u64,
    /// Pages with anything else wrong.
    pub other: u64,
    /// The first few bad pages, described.
    pub first: Vec<String>,
    /// Completed passes over the whole buffer.
    pub passes: u64,
}

/// Where the memory thread works.
#[derive(Clone)]
pub struct MemCfg {
    /// Byte offset of its disk region.
    pub offset: u64,
    /// Chunks (buffer size = chunks * chunk).
    pub chunks: usize,
    /// Bytes per chunk (one read and one write each).
    pub chunk: usize,
    /// Run id in every stamp.
    pub run: u64,
    /// Pause after each chunk.
    pub pause: Duration,
}

fn stamp_chunk(buf: &mut [u8], first_page: u64, pass: u64, run: u64) {
    for (i, blk) in buf.chunks_exact_mut(BLOCK).enumerate() {
        stamp(blk, MAGIC_MEM, first_page + i as u64, pass, run);
    }
}

/// Compares chunk data `buf` (pages from `first_page`) with pass `pass`; adds to `rep`.
fn check_chunk(buf: &[u8], first_page: u64, pass: u64, run: u64, rep: &mut MemReport) {
    for (i, blk) in buf.chunks_exact(BLOCK).enumerate() {
        let page = first_page + i as u64;
        rep.pages += 1;
        let v = check(blk, MAGIC_MEM, page, pass, run);
        if v == Verdict::Ok {
            continue;
        }
        match v {
            Verdict::Stale(_) => rep.stale += 1,
            _ => rep.other += 1,
        }
        if rep.first.len() < 5 {
            let found = match v {
                Verdict::Stale(p) => format!("pass {p}"),
                v => v.name().to_string(),
            };
            rep.first
                .push(format!("page {page}: {found}, expected pass {pass}"));
        }
    }
}

/// Fills the disk region and the buffer with pass 0, then refills the buffer until stopped.
/// Sends `()` on `ready` after the first fill (or drops it on failure).
pub fn mem_thread(
    dev: Dev,
    sh: &Shared,
    cfg: MemCfg,
    rx: Receiver<MemCmd>,
    ready: Sender<io::Result<()>>,
) {
    let slot = sh.mem_slot();
    let pages_per_chunk = (cfg.chunk / BLOCK) as u64;
    let alloc =
        AlignedBuf::new(cfg.chunks * cfg.chunk).and_then(|b| Ok((b, AlignedBuf::new(cfg.chunk)?)));
    let (mut big, mut staging) = match alloc {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut ver = vec![0u64; cfg.chunks];
    // One pass of chunk c: a new stamp to the disk, then the disk into the buffer.
    let mut refill = |c: usize, pass: u64, big: &mut AlignedBuf| -> io::Result<()> {
        let off = cfg.offset + (c * cfg.chunk) as u64;
        let first = c as u64 * pages_per_chunk;
        stamp_chunk(staging.as_mut_slice(), first, pass, cfg.run);
        let st = staging.as_slice();
        sh.timed(slot, OpKind::Write, off, cfg.chunk as u64, || {
            dev.write_at(st, off)
        })?;
        let dst = &mut big.as_mut_slice()[c * cfg.chunk..(c + 1) * cfg.chunk];
        sh.timed(slot, OpKind::Read, off, cfg.chunk as u64, || {
            dev.read_at(dst, off)
        })?;
        // Headers only, at once (the guest CPU reading does not dirty the pages): the
        // device must have put this pass there.
        for (i, blk) in dst.chunks_exact(BLOCK).enumerate() {
            let w = u64::from_le_bytes(blk[16..24].try_into().unwrap_or_default());
            let idx = u64::from_le_bytes(blk[8..16].try_into().unwrap_or_default());
            if w != pass || idx != first + i as u64 {
                sh.bad(
                    Bad::Corrupt,
                    &format!("mem read of chunk {c}: page {} holds page {idx} pass {w}, expected pass {pass}", first + i as u64),
                );
                break;
            }
        }
        Ok(())
    };
    for c in 0..cfg.chunks {
        if let Err(e) = refill(c, 0, &mut big) {
            let _ = ready.send(Err(e));
            return;
        }
    }
    let _ = ready.send(Ok(()));
    let mut pass = 0u64;
    loop {
        pass += 1;
        for c in 0..cfg.chunks {
            match rx.try_recv() {
                Ok(MemCmd::Check(reply)) => {
                    let mut rep = MemReport {
                        passes: sh.mem_passes.load(Relaxed),
                        ..Default::default()
                    };
                    for (k, v) in ver.iter().enumerate() {
                        let data = &big.as_slice()[k * cfg.chunk..(k + 1) * cfg.chunk];
                        check_chunk(data, k as u64 * pages_per_chunk, *v, cfg.run, &mut rep);
                    }
                    let _ = reply.send(rep);
                }
                Ok(MemCmd::Stop(reply)) => {
                    let _ = reply.send(ver);
                    return;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return,
            }
            match refill(c, pass, &mut big) {
                Ok(()) => ver[c] = pass,
                Err(e) => {
                    sh.bad(Bad::Io, &format!("mem chunk {c} pass {pass}: {e}"));
                    say("GIO NOTE the memory thread stops after an I/O error");
                    // Wait for Stop so the main thread gets an answer.
                    while let Ok(cmd) = rx.recv() {
                        match cmd {
                            MemCmd::Check(reply) => {
                                let _ = reply.send(MemReport {
                                    other: 1,
                                    first: vec!["the memory thread failed".into()],
                                    ..Default::default()
                                });
                            }
                            MemCmd::Stop(reply) => {
                                let _ = reply.send(vec![u64::MAX; cfg.chunks]);
                                return;
                            }
                        }
                    }
                    return;
                }
            }
            if !cfg.pause.is_zero() {
                std::thread::sleep(cfg.pause);
            }
        }
        sh.mem_passes.fetch_add(1, Relaxed);
    }
}

/// Checks the disk region against `ver` (the pass each chunk holds); returns (pages, bad).
pub fn verify_disk(dev: &Dev, sh: &Shared, cfg: &MemCfg, ver: &[u64]) -> io::Result<(u64, u64)> {
    let mut buf = AlignedBuf::new(cfg.chunk)?;
    let pages_per_chunk = (cfg.chunk / BLOCK) as u64;
    let mut rep = MemReport::default();
    for (c, v) in ver.iter().enumerate() {
        if *v == u64::MAX {
            continue;
        }
        let off = cfg.offset + (c * cfg.chunk) as u64;
        let data = buf.as_mut_slice();
        sh.timed(sh.main_slot(), OpKind::Read, off, cfg.chunk as u64, || {
            dev.read_at(data, off)
        })?;
        check_chunk(
            buf.as_slice(),
            c as u64 * pages_per_chunk,
            *v,
            cfg.run,
            &mut rep,
        );
    }
    for f in &rep.first {
        say(&format!(
            "GIO ERROR CORRUPT final verify of the memory region: {f}"
        ));
    }
    Ok((rep.pages, rep.stale + rep.other))
}
