//! The device-written memory check. A buffer in guest RAM is refilled over and over by disk
//! reads with O_DIRECT, so the backend (not the guest CPU) writes its pages. The disk region
//! holds `versions` differently stamped copies of the buffer, written once at the start; pass
//! `p` reads version `p % versions` into each chunk. After a migration every chunk of the
//! buffer must hold the version last read into it: pages the backend wrote reach the
//! destination only if the backend logged them as dirty, else the destination has an older
//! copy (a different version, so it shows).

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
    /// Stop (the reply says it has).
    Stop(Sender<()>),
}

/// The result of a buffer check.
#[derive(Debug, Default)]
pub struct MemReport {
    /// Pages compared.
    pub pages: u64,
    /// Pages holding another version than the one last read into them.
    pub stale: u64,
    /// Pages with anything else wrong.
    pub other: u64,
    /// The first few bad pages, described.
    pub first: Vec<String>,
    /// Chunks refilled so far.
    pub refills: u64,
}

/// Where the memory thread works.
#[derive(Clone)]
pub struct MemCfg {
    /// Byte offset of its disk region.
    pub offset: u64,
    /// Chunks (buffer size = chunks * chunk).
    pub chunks: usize,
    /// Bytes per chunk (one read each).
    pub chunk: usize,
    /// Versions of the buffer on the disk (at least 2).
    pub versions: u64,
    /// Run id in every stamp.
    pub run: u64,
    /// A file naming the QEMU the guest runs on: checked before each chunk.
    pub host_file: Option<std::path::PathBuf>,
    /// Pause after each chunk.
    pub pause: Duration,
}

impl MemCfg {
    fn pages_per_chunk(&self) -> u64 {
        (self.chunk / BLOCK) as u64
    }

    /// Disk offset of chunk `c` of version `v`.
    fn disk_off(&self, v: u64, c: usize) -> u64 {
        self.offset + v * (self.chunks * self.chunk) as u64 + (c * self.chunk) as u64
    }
}

/// Compares chunk data `buf` (pages from `first_page`) with version `v`; adds to `rep`.
fn check_chunk(buf: &[u8], first_page: u64, v: u64, run: u64, rep: &mut MemReport) {
    for (i, blk) in buf.chunks_exact(BLOCK).enumerate() {
        let page = first_page + i as u64;
        rep.pages += 1;
        let verdict = check(blk, MAGIC_MEM, page, v, run);
        let found = match verdict {
            Verdict::Ok => continue,
            // Another version of the right page: an older copy of it.
            Verdict::Stale(f) | Verdict::Future(f) => {
                rep.stale += 1;
                format!("version {f}")
            }
            other => {
                rep.other += 1;
                other.name().to_string()
            }
        };
        if rep.first.len() < 3 {
            rep.first
                .push(format!("page {page} holds {found}, expected version {v}"));
        }
    }
}

/// (page index, version) of a page whose magic and run are right, without the full check.
fn check_header(blk: &[u8], run: u64) -> Option<(u64, u64)> {
    let w = |i: usize| u64::from_le_bytes(blk[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    (w(0) == MAGIC_MEM && w(3) == run).then(|| (w(1), w(2)))
}

/// The one-line report of a check; true if it passed.
pub fn memcheck_line(rep: &MemReport, sh: &Shared, chunks: usize, label: &str) -> (bool, String) {
    let ok = rep.stale == 0 && rep.other == 0 && rep.pages > 0;
    let since = rep.refills.saturating_sub(sh.mark_refills.load(Relaxed));
    let mut line = format!(
        "GIO MEMCHECK {} {label} pages={} stale={} other={} chunks={chunks} refills={} refills_since_mark={since}",
        if ok { "ok" } else { "FAIL" },
        rep.pages,
        rep.stale,
        rep.other,
        rep.refills,
    );
    if !rep.first.is_empty() {
        line.push_str(&format!(" first: {}", rep.first.join("; ")));
    }
    (ok, line)
}

/// The host name in `path`, or `None` when it cannot be read or is empty (a file being
/// rewritten is empty between its truncation and the write).
fn read_host(path: &std::path::Path) -> Option<String> {
    let s = std::fs::read(path).ok()?;
    let name = String::from_utf8_lossy(&s)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string();
    (!name.is_empty()).then_some(name)
}

/// Compares the whole buffer with the versions last read into it.
fn check_all(big: &AlignedBuf, ver: &[u64], cfg: &MemCfg, sh: &Shared) -> MemReport {
    let mut rep = MemReport {
        refills: sh.mem_refills.load(Relaxed),
        ..Default::default()
    };
    for (k, p) in ver.iter().enumerate() {
        let data = &big.as_slice()[k * cfg.chunk..(k + 1) * cfg.chunk];
        check_chunk(
            data,
            k as u64 * cfg.pages_per_chunk(),
            p % cfg.versions,
            cfg.run,
            &mut rep,
        );
    }
    rep
}

/// Writes every version of the disk region, reads version 0 into the buffer, sends the
/// result on `ready`, then refills chunk after chunk until stopped.
pub fn mem_thread(
    dev: Dev,
    sh: &Shared,
    cfg: MemCfg,
    rx: Receiver<MemCmd>,
    ready: Sender<io::Result<()>>,
) {
    let slot = sh.mem_slot();
    let ppc = cfg.pages_per_chunk();
    let (mut big, mut staging) = match AlignedBuf::new(cfg.chunks * cfg.chunk)
        .and_then(|b| Ok((b, AlignedBuf::new(cfg.chunk)?)))
    {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    for v in 0..cfg.versions {
        for c in 0..cfg.chunks {
            for (i, blk) in staging.as_mut_slice().chunks_exact_mut(BLOCK).enumerate() {
                stamp(blk, MAGIC_MEM, c as u64 * ppc + i as u64, v, cfg.run);
            }
            let off = cfg.disk_off(v, c);
            let st = staging.as_slice();
            if let Err(e) = sh.timed(slot, OpKind::Write, off, cfg.chunk as u64, || {
                dev.write_at(st, off)
            }) {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    drop(staging);
    // Refill chunk c with pass `pass` (version pass % versions).
    let refill = |c: usize, pass: u64, big: &mut AlignedBuf| -> io::Result<()> {
        let v = pass % cfg.versions;
        let off = cfg.disk_off(v, c);
        let dst = &mut big.as_mut_slice()[c * cfg.chunk..(c + 1) * cfg.chunk];
        sh.timed(slot, OpKind::Read, off, cfg.chunk as u64, || {
            dev.read_at(dst, off)
        })?;
        // Headers only, at once (the guest CPU reading does not dirty the pages): the device
        // must have put this version there. A completed read that left an intact older
        // version in the buffer delivered stale data (its completion arrived, its data did
        // not); anything else is damage.
        for (i, blk) in dst.chunks_exact(BLOCK).enumerate() {
            let want = c as u64 * ppc + i as u64;
            let header = check_header(blk, cfg.run);
            if header == Some((want, v)) {
                continue;
            }
            let what = match header {
                Some((idx, g)) if idx == want => (Bad::Stale, format!("version {g}")),
                Some((idx, g)) => (Bad::Corrupt, format!("page {idx} version {g}")),
                None => (Bad::Corrupt, "no valid stamp".to_string()),
            };
            sh.bad(
                what.0,
                &format!("mem read of chunk {c} completed but page {want} holds {}, expected version {v}", what.1),
            );
            break;
        }
        sh.mem_refills.fetch_add(1, Relaxed);
        Ok(())
    };
    let mut ver = vec![0u64; cfg.chunks];
    for c in 0..cfg.chunks {
        if let Err(e) = refill(c, 0, &mut big) {
            let _ = ready.send(Err(e));
            return;
        }
    }
    // Before READY, so the host sees it first.
    let mut host = cfg.host_file.as_deref().and_then(read_host);
    if let Some(h) = &host {
        say(&format!("GIO HOST {h}"));
    }
    let _ = ready.send(Ok(()));
    let mut pass = 0u64;
    loop {
        pass += 1;
        for c in 0..cfg.chunks {
            // A new host: the VM was migrated. Check before any refill happens here.
            if let Some(h) = cfg.host_file.as_deref().and_then(read_host) {
                if host.as_deref() != Some(h.as_str()) {
                    let from = host.replace(h.clone()).unwrap_or_default();
                    say(&format!("GIO SWITCH {from}->{h} t={:.1}", sh.secs()));
                    let rep = check_all(&big, &ver, &cfg, sh);
                    let (ok, line) =
                        memcheck_line(&rep, sh, cfg.chunks, &format!("switch:{from}->{h}"));
                    if !ok {
                        sh.memcheck_failures.fetch_add(1, Relaxed);
                    }
                    say(&line);
                }
            }
            match rx.try_recv() {
                Ok(MemCmd::Check(reply)) => {
                    let _ = reply.send(check_all(&big, &ver, &cfg, sh));
                }
                Ok(MemCmd::Stop(reply)) => {
                    let _ = reply.send(());
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
                    // Answer until Stop, so the main thread is not left waiting.
                    while let Ok(cmd) = rx.recv() {
                        match cmd {
                            MemCmd::Check(reply) => {
                                let rep = MemReport {
                                    other: 1,
                                    first: vec!["the memory thread failed".into()],
                                    ..Default::default()
                                };
                                let _ = reply.send(rep);
                            }
                            MemCmd::Stop(reply) => {
                                let _ = reply.send(());
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

/// Checks every version of the disk region; returns (pages, bad).
pub fn verify_disk(dev: &Dev, sh: &Shared, cfg: &MemCfg) -> io::Result<(u64, u64)> {
    let mut buf = AlignedBuf::new(cfg.chunk)?;
    let ppc = cfg.pages_per_chunk();
    let mut rep = MemReport::default();
    for v in 0..cfg.versions {
        for c in 0..cfg.chunks {
            let off = cfg.disk_off(v, c);
            let data = buf.as_mut_slice();
            sh.timed(sh.main_slot(), OpKind::Read, off, cfg.chunk as u64, || {
                dev.read_at(data, off)
            })?;
            check_chunk(buf.as_slice(), c as u64 * ppc, v, cfg.run, &mut rep);
        }
    }
    for f in &rep.first {
        say(&format!(
            "GIO ERROR CORRUPT final verify of the memory region: {f}"
        ));
    }
    Ok((rep.pages, rep.stale + rep.other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_version_is_stale() {
        let mut buf = vec![0u8; 2 * BLOCK];
        for (i, blk) in buf.chunks_exact_mut(BLOCK).enumerate() {
            stamp(blk, MAGIC_MEM, 10 + i as u64, 2, 5);
        }
        let mut rep = MemReport::default();
        check_chunk(&buf, 10, 2, 5, &mut rep);
        assert_eq!((rep.pages, rep.stale, rep.other), (2, 0, 0));
        for want in [1, 3] {
            let mut rep = MemReport::default();
            check_chunk(&buf, 10, want, 5, &mut rep);
            assert_eq!((rep.stale, rep.other), (2, 0), "expected version {want}");
        }
        buf[5000] ^= 1;
        let mut rep = MemReport::default();
        check_chunk(&buf, 10, 2, 5, &mut rep);
        assert_eq!((rep.stale, rep.other), (0, 1));
        assert!(rep.first[0].contains("CORRUPT"), "{:?}", rep.first);
    }

    #[test]
    fn empty_host_name_is_no_name() {
        let path = std::env::temp_dir().join(format!("spinblk-read-host-{}", std::process::id()));
        for (text, want) in [
            (&b"vm00\n"[..], Some("vm00")),
            (b"vm01\0", Some("vm01")),
            (b"", None),
            (b"\n\0", None),
        ] {
            std::fs::write(&path, text).expect("write host file");
            assert_eq!(read_host(&path).as_deref(), want, "{text:?}");
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(read_host(&path), None);
    }
}
