//! Fuzz target `parse`: the split-ring reader (`SplitRing`: new, pop_head, chain, push_used,
//! publish_used, needs_notification, confirm_notification, set_notification) and the virtio-blk
//! request parser (`BlkRequest::parse_chain`), on guest memory built from the input.
//!
//! Input: a 24-byte header (see `Setup::decode`) describing up to four guest memory regions,
//! a ring (size, addresses, next avail index, EVENT_IDX), the device limits and the iovec array
//! size; the rest is an image copied into the regions in order (descriptor tables, avail ring,
//! request headers, data). Every region lives in its own slot of an arena with inaccessible
//! guard pages around it, so any access outside a region faults at once.
//!
//! For every avail head (at most one ring's worth, as the queue poller does) the chain is also
//! walked by an independent reference (a plain loop over `vm-memory` reads, same policy as
//! `ring.rs` documents), and the request judged by a plain reference implementation of the
//! virtio-blk rules. Checked: no panic; chains end after at most size + MAX_INDIRECT
//! descriptors and match the reference; every iovec lies inside one region and they map the
//! reference's data bytes exactly, in order (so their total length is the request's length);
//! the request's kind, offset and length match; refused requests carry a status byte exactly
//! when the chain has a usable one, and it is inside guest memory; accepted and refused agree
//! with the reference; the used ring gets exactly the elements pushed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use spinblk_bdev::IoVec;
use spinblk_protocol::{
    BlkRequest, Desc, DeviceLimits, GuestMemory, RequestKind, RingAddrs, RingError, SplitRing,
    MAX_IOVECS, MAX_TRANSFER, SECTOR_SIZE, SEG_MAX,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const PAGE: usize = 4096;
/// Largest region (bytes) and the number of arena slots.
const SLOT: usize = 8 * PAGE;
const SLOTS: usize = 4;
const HEADER: usize = 24;
/// Heads taken per input.
const MAX_HEADS: u16 = 16;
/// Largest indirect table the ring follows (ring.rs MAX_INDIRECT).
const MAX_INDIRECT: u32 = 4096;

/// The arena: SLOTS regions of SLOT bytes, each with a PROT_NONE page before and after.
fn arena() -> usize {
    static ARENA: OnceLock<usize> = OnceLock::new();
    *ARENA.get_or_init(|| {
        let total = PAGE + SLOTS * (SLOT + PAGE);
        // SAFETY: a fresh private anonymous mapping, never unmapped (lives for the process).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "arena");
        for i in 0..SLOTS {
            // SAFETY: makes slot i of our own mapping readable and writable.
            let r = unsafe {
                libc::mprotect(
                    p.cast::<u8>().add(slot_offset(i)).cast(),
                    SLOT,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            assert_eq!(r, 0, "mprotect");
        }
        p as usize
    })
}

fn slot_offset(i: usize) -> usize {
    PAGE + i * (SLOT + PAGE)
}

thread_local! {
    /// How many bytes of each arena slot may be non-zero (written by the image or the device).
    static DIRTY: [std::cell::Cell<usize>; SLOTS] = const { [const { std::cell::Cell::new(SLOT) }; SLOTS] };
}

/// Records that the device may have written `gpa .. gpa + len` (the used ring).
fn mark_dirty(regions: &[Region], gpa: u64, len: u64) {
    if let Some(i) = regions
        .iter()
        .position(|r| gpa >= r.start && gpa - r.start < r.len)
    {
        let end = ((gpa - regions[i].start).saturating_add(len) as usize).min(SLOT);
        DIRTY.with(|d| d[i].set(d[i].get().max(end)));
    }
}

/// One guest region: guest start, length, host address.
#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    len: u64,
    host: usize,
}

struct Setup {
    regions: Vec<Region>,
    event_idx: bool,
    limits: DeviceLimits,
    iov_len: usize,
    ring_size: u16,
    next_avail: u16,
    addrs: RingAddrs,
    notify: bool,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl Setup {
    /// Header layout:
    /// - 0: bits 0-1 regions - 1; 2 EVENT_IDX; 3 read-only; 4 discard; 5 write-zeroes;
    ///   6 block size 4096 (else 512); 7 a short iovec array (length from byte 5)
    /// - 1: ring size, 1 << (b % 11), or b itself when b >= 0xf0 (invalid sizes)
    /// - 2..4: pages of each region, 3 bits each, + 1
    /// - 4: region gaps, 2 bits each: 0 adjacent, 1 one page, 2 1 GiB, 3 near the top of the
    ///   address space; for region 0: its start is gap * 4096
    /// - 5: iovec array length (with the short-array bit), % (MAX_IOVECS + 1)
    /// - 6..8: next avail index
    /// - 8, 12, 16: descriptor table, avail ring, used ring: bits 30-31 region, 0-29 offset
    /// - 20..24: capacity in sectors (bit 31 also turns on guest notifications' re-check)
    fn decode(b: &[u8]) -> Setup {
        let flags = b[0];
        let nregions = usize::from(flags & 3) + 1;
        let pages = u16_at(b, 2);
        let gaps = b[4];
        let mut regions = Vec::with_capacity(nregions);
        let mut next = 0u64;
        for i in 0..nregions {
            let len = ((u64::from(pages >> (3 * i)) & 7) + 1) * PAGE as u64;
            let gap = (gaps >> (2 * i)) & 3;
            let start = match (i, gap) {
                (0, g) => Some(u64::from(g) * PAGE as u64),
                (_, 0) => Some(next),
                (_, 1) => next.checked_add(PAGE as u64),
                (_, 2) => next.checked_add(1 << 30),
                // Close to the top, leaving room for the regions after this one.
                _ => Some(u64::MAX - (((SLOTS - i) * (SLOT + PAGE)) as u64) - PAGE as u64 + 1),
            };
            // Regions must be sorted and end below 2^64; a region that cannot ends the list.
            let Some(start) = start.filter(|&s| s >= next && s.checked_add(len).is_some()) else {
                break;
            };
            regions.push(Region {
                start,
                len,
                host: arena() + slot_offset(i),
            });
            next = start + len;
        }
        let ring_size = match b[1] {
            s if s >= 0xf0 => u16::from(s),
            s => 1u16 << (s % 11),
        };
        let addr = |o: usize| {
            let v = u32_at(b, o);
            let r = regions[(v >> 30) as usize % regions.len()];
            r.start.wrapping_add(u64::from(v & 0x3fff_ffff))
        };
        let block_size = if flags & 0x40 != 0 { 4096 } else { 512 };
        let capacity_raw = u32_at(b, 20);
        Setup {
            event_idx: flags & 4 != 0,
            limits: DeviceLimits {
                capacity: u64::from(capacity_raw & 0x7fff_ffff) * SECTOR_SIZE,
                block_size,
                read_only: flags & 8 != 0,
                discard: flags & 0x10 != 0,
                write_zeroes: flags & 0x20 != 0,
            },
            iov_len: if flags & 0x80 != 0 {
                usize::from(b[5]) % (MAX_IOVECS + 1)
            } else {
                MAX_IOVECS
            },
            ring_size,
            next_avail: u16_at(b, 6),
            addrs: RingAddrs {
                desc: addr(8),
                avail: addr(12),
                used: addr(16),
            },
            notify: capacity_raw & 0x8000_0000 != 0,
            regions,
        }
    }
}

/// Our own view of guest memory, for the reference checks.
struct Mem<'a> {
    regions: &'a [Region],
}

impl Mem<'_> {
    fn region_of(&self, gpa: u64) -> Option<&Region> {
        self.regions
            .iter()
            .find(|r| gpa >= r.start && gpa - r.start < r.len)
    }

    /// Whether `gpa .. gpa + len` lies in one region (len 0 counts as 1).
    fn in_one_region(&self, gpa: u64, len: u64) -> bool {
        self.region_of(gpa)
            .is_some_and(|r| len.max(1) <= r.len - (gpa - r.start))
    }

    fn host(&self, gpa: u64) -> Option<usize> {
        self.region_of(gpa)
            .map(|r| r.host + (gpa - r.start) as usize)
    }

    /// The host runs of guest range `gpa .. gpa + len`, split at region ends; `None` when a
    /// byte is outside guest memory.
    fn host_runs(&self, gpa: u64, len: u64, out: &mut Vec<(usize, usize)>) -> Option<()> {
        let (mut a, mut left) = (gpa, len);
        while left > 0 {
            let r = self.region_of(a)?;
            let n = left.min(r.len - (a - r.start));
            out.push((r.host + (a - r.start) as usize, n as usize));
            left -= n;
            a = a.checked_add(n)?;
        }
        Some(())
    }

    /// Reads guest bytes (across regions adjacent in guest addresses).
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Option<()> {
        let mut runs = Vec::new();
        self.host_runs(gpa, buf.len() as u64, &mut runs)?;
        let mut at = 0;
        for (p, n) in runs {
            // SAFETY: a run inside one region of the arena (readable, `n` bytes).
            let src = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
            buf[at..at + n].copy_from_slice(src);
            at += n;
        }
        Some(())
    }
}

/// Reference chain walk: (descriptors, whether the chain was malformed).
fn reference_chain(m: &Mem<'_>, table: u64, size: u16, head: u16) -> (Vec<Desc>, bool) {
    let mut out = Vec::new();
    let (mut table, mut len, mut ttl, mut indirect, mut idx) =
        (table, u32::from(size), u32::from(size), false, head);
    loop {
        if u32::from(idx) >= len || ttl == 0 {
            return (out, true);
        }
        ttl -= 1;
        let mut raw = [0u8; 16];
        m.read(table + 16 * u64::from(idx), &mut raw)
            .expect("descriptor table was checked to be in memory");
        let d = Desc {
            addr: u64::from_le_bytes(raw[0..8].try_into().expect("8")),
            len: u32_at(&raw, 8),
            flags: u16_at(&raw, 12),
            next: u16_at(&raw, 14),
        };
        let has_next = d.flags & VRING_DESC_F_NEXT as u16 != 0;
        if d.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            let entries = d.len / 16;
            if indirect
                || has_next
                || !d.len.is_multiple_of(16)
                || entries == 0
                || entries > MAX_INDIRECT
                || !m.in_one_region(d.addr, u64::from(d.len))
            {
                return (out, true);
            }
            (table, len, ttl, indirect, idx) = (d.addr, entries, entries, true, 0);
            continue;
        }
        out.push(d);
        if !has_next {
            return (out, false);
        }
        idx = d.next;
    }
}

/// What the reference decides for a well-formed chain.
#[derive(Debug)]
struct Expected {
    ok: Option<(RequestKind, u64, u64)>,
    /// Status byte gpa, when the chain has a usable one.
    status: Option<u64>,
    /// Data runs (gpa, len), in order, for requests that carry data.
    data: Vec<(u64, u64, bool)>,
}

fn reference_parse(m: &Mem<'_>, descs: &[Desc], limits: &DeviceLimits, iov_len: usize) -> Expected {
    let mut e = Expected {
        ok: None,
        status: None,
        data: Vec::new(),
    };
    let Some(tail) = descs.last().filter(|_| descs.len() >= 2) else {
        return e;
    };
    let writable = |d: &Desc| d.flags & VRING_DESC_F_WRITE as u16 != 0;
    let status = (writable(tail) && tail.len > 0)
        .then(|| tail.addr.checked_add(u64::from(tail.len) - 1))
        .flatten()
        .filter(|&gpa| m.region_of(gpa).is_some());
    let Some(status) = status else {
        return e;
    };
    e.status = Some(status);
    // Every byte but the status byte, as runs.
    let mut runs: Vec<(u64, u64, bool)> = descs[..descs.len() - 1]
        .iter()
        .map(|d| (d.addr, u64::from(d.len), writable(d)))
        .collect();
    runs.push((tail.addr, u64::from(tail.len) - 1, true));
    // Header: the first 16 bytes, all device-readable, none after a writable descriptor.
    let mut header = [0u8; 16];
    let mut got = 0usize;
    let mut data = Vec::new();
    let mut header_ok = true;
    for &(addr, len, w) in &runs {
        if got < 16 {
            if w {
                header_ok = false;
                break;
            }
            let take = len.min(16 - got as u64) as usize;
            if m.read(addr, &mut header[got..got + take]).is_none() {
                header_ok = false;
                break;
            }
            got += take;
            if len > take as u64 {
                data.push((addr.wrapping_add(take as u64), len - take as u64, w));
            }
        } else if len > 0 {
            data.push((addr, len, w));
        }
    }
    if !header_ok || got < 16 || data.len() > SEG_MAX as usize {
        return e;
    }
    let rtype = u32_at(&header, 0);
    let sector = u64::from_le_bytes(header[8..16].try_into().expect("8"));
    let total: u64 = data.iter().fold(0u64, |a, d| a.saturating_add(d.1));
    let any_w = data.iter().any(|d| d.2);
    let any_r = data.iter().any(|d| !d.2);
    let range = |sector: u64, len: u64| -> Option<u64> {
        let bs = u64::from(limits.block_size);
        let off = sector.checked_mul(SECTOR_SIZE)?;
        let end = off.checked_add(len)?;
        (len > 0 && len.is_multiple_of(bs) && off.is_multiple_of(bs) && end <= limits.capacity)
            .then_some(off)
    };
    // Host iovecs the data needs (split at region ends), or None if outside memory.
    let iovecs = |data: &[(u64, u64, bool)]| -> Option<usize> {
        let mut v = Vec::new();
        for &(a, l, _) in data {
            m.host_runs(a, l, &mut v)?;
        }
        Some(v.len())
    };
    e.ok = match rtype {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let read = rtype == VIRTIO_BLK_T_IN;
            let dir_ok = if read { !any_r } else { !any_w };
            let kind = if read {
                RequestKind::Read
            } else {
                RequestKind::Write
            };
            (dir_ok && (read || !limits.read_only) && total <= MAX_TRANSFER)
                .then(|| range(sector, total))
                .flatten()
                .filter(|_| iovecs(&data).is_some_and(|n| n <= iov_len))
                .map(|off| (kind, off, total))
        }
        VIRTIO_BLK_T_FLUSH => Some((RequestKind::Flush, 0, 0)),
        VIRTIO_BLK_T_GET_ID => (!any_r && total > 0 && iovecs(&data).is_some_and(|n| n <= iov_len))
            .then_some((RequestKind::GetId, 0, total)),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = rtype == VIRTIO_BLK_T_DISCARD;
            let supported = if discard {
                limits.discard
            } else {
                limits.write_zeroes
            };
            let mut seg = [0u8; 16];
            let mut at = 0usize;
            let mut readable = true;
            for &(a, l, _) in &data {
                if at < 16 {
                    let take = l.min(16 - at as u64) as usize;
                    readable &= m.read(a, &mut seg[at..at + take]).is_some();
                    at += take;
                }
            }
            let flags = u32_at(&seg, 12);
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            let kind = if discard {
                RequestKind::Discard
            } else {
                RequestKind::WriteZeroes
            };
            (supported
                && !limits.read_only
                && !any_w
                && total == 16
                && readable
                && flags & !allowed == 0)
                .then(|| {
                    let bytes = u64::from(u32_at(&seg, 8)) * SECTOR_SIZE;
                    let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8"));
                    range(sector, bytes).map(|off| (kind, off, bytes))
                })
                .flatten()
        }
        _ => None,
    };
    e.data = data;
    e
}

/// Merges adjacent host runs, for comparing two splits of the same bytes.
fn merged(runs: impl IntoIterator<Item = (usize, usize)>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (p, l) in runs {
        if l == 0 {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.0 + last.1 == p => last.1 += l,
            _ => out.push((p, l)),
        }
    }
    out
}

fn check_ring_geometry(m: &Mem<'_>, s: &Setup, r: &Result<SplitRing, RingError>) {
    let n = u64::from(s.ring_size);
    let a = s.addrs;
    let size_ok = s.ring_size != 0 && s.ring_size <= 1024 && s.ring_size.is_power_of_two();
    let aligned =
        a.desc.is_multiple_of(16) && a.avail.is_multiple_of(2) && a.used.is_multiple_of(4);
    let inside = m.in_one_region(a.desc, 16 * n)
        && m.in_one_region(a.avail, 6 + 2 * n)
        && m.in_one_region(a.used, 6 + 8 * n);
    let expected = if !size_ok {
        Err(RingError::BadSize)
    } else if !aligned {
        Err(RingError::Misaligned)
    } else if !inside {
        Err(RingError::OutsideMemory)
    } else {
        Ok(())
    };
    assert_eq!(
        r.as_ref().map(|_| ()).map_err(|e| *e),
        expected,
        "ring geometry {s:?}",
        s = (s.ring_size, a)
    );
}

fn run(data: &[u8]) {
    if data.len() < HEADER {
        return;
    }
    let s = Setup::decode(&data[..HEADER]);
    // Lay the image into the regions (the rest of each region is zero: only what earlier runs
    // wrote is cleared).
    let mut image = &data[HEADER..];
    for (i, r) in s.regions.iter().enumerate() {
        let len = r.len as usize;
        // SAFETY: the region is `len` bytes of our arena, readable and writable.
        let dst = unsafe { std::slice::from_raw_parts_mut(r.host as *mut u8, len) };
        let n = image.len().min(len);
        dst[..n].copy_from_slice(&image[..n]);
        let dirty = DIRTY.with(|d| d[i].replace(n));
        if dirty > n {
            dst[n..dirty.min(len)].fill(0);
        }
        image = &image[n..];
    }
    let mmap = GuestMemoryMmap::from_regions(
        s.regions
            .iter()
            .map(|r| {
                // SAFETY: `host .. host + len` is a readable and writable part of the arena,
                // which is never unmapped; the region does not own (or unmap) it.
                let m = unsafe {
                    MmapRegion::build_raw(
                        r.host as *mut u8,
                        r.len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    )
                }
                .expect("raw region");
                GuestRegionMmap::new(m, GuestAddress(r.start)).expect("region")
            })
            .collect(),
    )
    .expect("memory");
    let m = Mem {
        regions: &s.regions,
    };
    let mem = GuestMemory::new(mmap.clone());
    assert_eq!(mem.num_regions(), s.regions.len());

    let ring = SplitRing::new(s.ring_size, s.addrs, s.event_idx, s.next_avail, &mem);
    check_ring_geometry(&m, &s, &ring);
    let Ok(mut ring) = ring else {
        return;
    };
    mark_dirty(&s.regions, s.addrs.used, ring.used_len());
    let size = ring.size();
    let avail = ring.avail_idx();
    // At most one ring's worth (as the queue poller takes per pass), and at most MAX_HEADS:
    // every head gets the same checks, so more per input only slows the fuzzer down.
    let pending = ring.pending(avail).min(size).min(MAX_HEADS);
    let mut iov = vec![
        IoVec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        s.iov_len
    ];
    let mut pushed = Vec::new();
    for _ in 0..pending {
        let head = ring.pop_head();
        let (descs, broken) = reference_chain(&m, s.addrs.desc, size, head);
        // The ring's own walk, compared with the reference.
        let mut chain = ring.chain(&mem, head);
        let ours: Vec<Desc> = chain.by_ref().take(usize::from(size) + 4097).collect();
        assert!(
            ours.len() <= usize::from(size) + MAX_INDIRECT as usize,
            "chain too long: {}",
            ours.len()
        );
        assert_eq!(chain.next(), None, "an ended chain stays ended");
        assert_eq!(ours, descs, "chain at head {head}");
        assert_eq!(
            chain.error().is_some(),
            broken,
            "chain error at head {head}"
        );
        if head >= size {
            assert!(broken);
            continue; // the queue drops such heads without an answer
        }

        let parsed = BlkRequest::parse_chain(ring.chain(&mem, head), &mem, &s.limits, &mut iov);
        let used_len = match parsed {
            Ok(req) => {
                assert!(!broken, "a broken chain was accepted");
                let e = reference_parse(&m, &descs, &s.limits, s.iov_len);
                assert_eq!(
                    Some((req.kind, req.offset, req.len)),
                    e.ok,
                    "accepted at head {head}: {descs:?} expected {e:?}"
                );
                assert_eq!(Some(req.status.gpa), e.status);
                assert_eq!(Some(req.status.host as usize), m.host(req.status.gpa));
                assert!(req.iovcnt <= iov.len());
                let iovs = &iov[..req.iovcnt];
                for v in iovs {
                    let p = v.iov_base as usize;
                    assert!(
                        s.regions
                            .iter()
                            .any(|r| p >= r.host && p + v.iov_len <= r.host + r.len as usize),
                        "iovec {p:#x}+{} outside guest memory",
                        v.iov_len
                    );
                }
                match req.kind {
                    RequestKind::Read | RequestKind::Write | RequestKind::GetId => {
                        let total: usize = iovs.iter().map(|v| v.iov_len).sum();
                        assert_eq!(total as u64, req.len, "iovec total");
                        let mut want = Vec::new();
                        for &(a, l, _) in &e.data {
                            m.host_runs(a, l, &mut want)
                                .expect("reference data in memory");
                        }
                        assert_eq!(
                            merged(iovs.iter().map(|v| (v.iov_base as usize, v.iov_len))),
                            merged(want),
                            "iovecs map the data bytes"
                        );
                        // Touch every byte: an iovec outside the arena's slots faults here.
                        let mut sum = 0u8;
                        for v in iovs {
                            // SAFETY: checked above to lie inside a region of the arena.
                            let b = unsafe {
                                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                            };
                            sum = b.iter().fold(sum, |a, &x| a.wrapping_add(x));
                        }
                        std::hint::black_box(sum);
                        if req.kind != RequestKind::GetId {
                            assert!(req.len <= MAX_TRANSFER);
                            assert!(req.offset + req.len <= s.limits.capacity);
                        }
                    }
                    RequestKind::Flush | RequestKind::Discard | RequestKind::WriteZeroes => {
                        assert_eq!(req.iovcnt, 0)
                    }
                }
                req.used_len()
            }
            Err(refused) => {
                if broken {
                    assert_eq!(refused.status, None, "a broken chain got a status byte");
                } else {
                    let e = reference_parse(&m, &descs, &s.limits, s.iov_len);
                    assert_eq!(
                        e.ok, None,
                        "refused ({:?}) at head {head} but valid: {descs:?}",
                        refused.error
                    );
                    assert_eq!(
                        refused.status.map(|st| st.gpa),
                        e.status,
                        "status of a refused request ({:?}): {descs:?}",
                        refused.error
                    );
                }
                if let Some(st) = refused.status {
                    assert_eq!(
                        Some(st.host as usize),
                        m.host(st.gpa),
                        "status inside memory"
                    );
                    1
                } else {
                    0
                }
            }
        };
        ring.push_used(head, used_len);
        pushed.push((head, used_len));
    }
    let before = ring.published_used();
    let published = ring.publish_used();
    assert_eq!(published.is_some(), !pushed.is_empty());
    if published.is_some() {
        assert_eq!(ring.used_idx(), before.wrapping_add(pushed.len() as u16));
    }
    for (i, &(head, len)) in pushed.iter().enumerate() {
        let idx = before.wrapping_add(i as u16);
        let at = s.addrs.used + ring.used_elem_offset(idx);
        let id: u32 = mmap.read_obj(GuestAddress(at)).expect("used id");
        let l: u32 = mmap.read_obj(GuestAddress(at + 4)).expect("used len");
        assert_eq!((id, l), (u32::from(head), len), "used element {idx}");
        assert_eq!(ring.used_head(idx), head);
    }
    if ring.needs_notification() {
        assert!(
            !ring.notification_unconfirmed(),
            "a yes leaves nothing to confirm"
        );
    }
    let _ = ring.confirm_notification();
    assert!(!ring.notification_unconfirmed());
    ring.set_notification(s.notify);
    let _ = ring.has_work_after_enabling();
    assert_eq!(ring.remap(&mem), Ok(()));
}

fuzz_target!(|data: &[u8]| run(data));
