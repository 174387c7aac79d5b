//! Splitting one request into NVMe commands that each fit the controller's and the kernel's
//! limits: at most `max_bytes` (MDTS, the queue's `max_hw_sectors`, 65536 blocks) per Read or
//! Write, buffers touching at most `max_pages` memory pages (the queue's `max_segments`: the
//! kernel maps a passthrough buffer page by page and refuses one with more segments), and every
//! command a whole number of logical blocks.

use crate::IoVec;

/// The memory page size the page budget counts in.
pub(crate) const PAGE: usize = 4096;

/// Per-command limits for reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Logical block size in bytes (a power of two).
    pub(crate) block_size: u64,
    /// Most bytes per command: a non-zero multiple of `block_size`.
    pub(crate) max_bytes: u64,
    /// Most memory pages one command's buffers may touch.
    pub(crate) max_pages: usize,
}

/// One command's share of a request: `len` bytes at device byte offset `offset`, its data in
/// `iov_cnt` iovecs from `iov_start` (of the request's own array for [`Plan::Whole`], of the
/// pieces for [`Plan::Split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    /// Device byte offset.
    pub(crate) offset: u64,
    /// Bytes.
    pub(crate) len: u64,
    /// First iovec.
    pub(crate) iov_start: usize,
    /// Number of iovecs.
    pub(crate) iov_cnt: usize,
}

/// How a read or write goes to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// One command over the request's own iovecs.
    Whole,
    /// Several commands over `pieces` (the request's iovecs cut at command boundaries).
    Split,
    /// No split fits the limits (a block spread over more pages than one command may touch):
    /// bounce the request through a contiguous buffer.
    Impossible,
}

/// Memory pages the `len` bytes at address `base` touch.
pub(crate) fn pages_touched(base: usize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    (base % PAGE + len).div_ceil(PAGE)
}

/// How much one call of [`plan_rw`] or [`plan_blocks`] may plan: a channel gives every request
/// slot storage for this many parts and pieces when it opens, and moves a request that needs
/// more in several rounds (each round's commands in parallel, rounds one after another).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Most commands.
    pub(crate) parts: usize,
    /// Most iovec pieces, all commands together (at least `block_size / 512`, so that a block
    /// of 512-byte-aligned segments always fits).
    pub(crate) pieces: usize,
}

/// Plans (the next round of) a read or write of the bytes `iov` describes, from byte `skip`
/// of them on, at device byte `offset` (where byte `skip` goes). Clears and fills `parts`
/// (and for [`Plan::Split`] `pieces`) with at most `caps` of each, so they never grow past
/// what the channel reserved; the parts may cover less than the rest of the request: the
/// caller plans the remainder in a later round. [`Plan::Whole`] only from `skip` 0, when the
/// whole request fits one command.
pub(crate) fn plan_rw(
    iov: &[IoVec],
    skip: u64,
    offset: u64,
    limits: Limits,
    caps: Caps,
    pieces: &mut Vec<IoVec>,
    parts: &mut Vec<Part>,
) -> Plan {
    pieces.clear();
    parts.clear();
    let total: u64 = iov.iter().map(|v| v.iov_len as u64).sum();
    if skip >= total || caps.parts == 0 {
        return Plan::Impossible;
    }
    if skip == 0 {
        let pages: usize = iov
            .iter()
            .map(|v| pages_touched(v.iov_base as usize, v.iov_len))
            .sum();
        if total <= limits.max_bytes && pages <= limits.max_pages && iov.len() <= limits.max_pages {
            parts.push(Part {
                offset,
                len: total,
                iov_start: 0,
                iov_cnt: iov.len(),
            });
            return Plan::Whole;
        }
    }

    let bs = limits.block_size;
    // Cursor: iovec `i`, `off` bytes into it.
    let (mut i, mut off) = (0usize, 0usize);
    advance(iov, &mut i, &mut off, skip);
    let mut dev = offset;
    let mut remaining = total - skip;
    while remaining > 0 && parts.len() < caps.parts {
        let start = pieces.len();
        let budget = limits.max_bytes.min(remaining);
        let (mut ci, mut coff) = (i, off);
        let mut taken = 0u64;
        let mut used_pages = 0usize;
        while taken < budget
            && ci < iov.len()
            && used_pages < limits.max_pages
            && pieces.len() < caps.pieces
        {
            let v = iov[ci];
            let avail = v.iov_len - coff;
            if avail == 0 {
                ci += 1;
                coff = 0;
                continue;
            }
            let base = (v.iov_base as usize).wrapping_add(coff);
            // The bytes from `base` to the end of the last page still in the budget.
            let fit = (limits.max_pages - used_pages) * PAGE - base % PAGE;
            let take = (avail as u64).min(budget - taken).min(fit as u64) as usize;
            pieces.push(IoVec {
                iov_base: base as *mut libc::c_void,
                iov_len: take,
            });
            used_pages += pages_touched(base, take);
            taken += take as u64;
            coff += take;
            if coff == v.iov_len {
                ci += 1;
                coff = 0;
            }
        }
        // Whole blocks only: give the tail back to the next command.
        let mut excess = taken % bs;
        let len = taken - excess;
        while excess > 0 {
            let Some(last) = pieces.last_mut() else { break };
            if last.iov_len as u64 <= excess {
                excess -= last.iov_len as u64;
                pieces.pop();
            } else {
                last.iov_len -= excess as usize;
                excess = 0;
            }
        }
        if len == 0 {
            pieces.truncate(start);
            if parts.is_empty() {
                // Not even one block fits a command here.
                pieces.clear();
                return Plan::Impossible;
            }
            // The pieces ran out: the rest goes in the next round.
            break;
        }
        parts.push(Part {
            offset: dev,
            len,
            iov_start: start,
            iov_cnt: pieces.len() - start,
        });
        advance(iov, &mut i, &mut off, len);
        dev += len;
        remaining -= len;
    }
    Plan::Split
}

/// Moves the cursor (`i`, `off`) `n` bytes on through `iov`.
fn advance(iov: &[IoVec], i: &mut usize, off: &mut usize, mut n: u64) {
    while n > 0 && *i < iov.len() {
        let avail = (iov[*i].iov_len - *off) as u64;
        if n < avail {
            *off += n as usize;
            return;
        }
        n -= avail;
        *i += 1;
        *off = 0;
    }
    // Skip empty iovecs so the cursor rests on data.
    while *i < iov.len() && iov[*i].iov_len == *off {
        *i += 1;
        *off = 0;
    }
}

/// Plans (the next round of) a command without data (write-zeroes, discard) over `len` bytes
/// at `offset` in commands of at most `max_blocks` blocks each, at most `max_parts` of them.
/// Clears and fills `parts`; returns the bytes planned (all of `len` unless `max_parts` cut it).
pub(crate) fn plan_blocks(
    offset: u64,
    len: u64,
    block_size: u64,
    max_blocks: u64,
    max_parts: usize,
    parts: &mut Vec<Part>,
) -> u64 {
    parts.clear();
    let step = max_blocks.max(1) * block_size;
    let mut at = 0;
    while at < len && parts.len() < max_parts {
        let n = step.min(len - at);
        parts.push(Part {
            offset: offset + at,
            len: n,
            iov_start: 0,
            iov_cnt: 0,
        });
        at += n;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(base: usize, len: usize) -> IoVec {
        IoVec {
            iov_base: base as *mut libc::c_void,
            iov_len: len,
        }
    }

    const MDTS_512K: Limits = Limits {
        block_size: 512,
        max_bytes: 512 << 10,
        max_pages: 127,
    };

    /// Checks the invariants of a plan: parts are contiguous on the device, whole blocks, within
    /// the limits, and their pieces concatenated are exactly the request's bytes in order.
    fn check(iovs: &[IoVec], offset: u64, l: Limits, pieces: &[IoVec], parts: &[Part], p: Plan) {
        let total: u64 = iovs.iter().map(|v| v.iov_len as u64).sum();
        let mut dev = offset;
        let mut flat = Vec::new();
        for part in parts {
            assert_eq!(part.offset, dev);
            assert!(part.len > 0 && part.len % l.block_size == 0, "{part:?}");
            assert!(part.len <= l.max_bytes || p == Plan::Whole && parts.len() == 1);
            let src = if p == Plan::Whole { iovs } else { pieces };
            let segs = &src[part.iov_start..part.iov_start + part.iov_cnt];
            assert_eq!(segs.iter().map(|v| v.iov_len as u64).sum::<u64>(), part.len);
            let pages: usize = segs
                .iter()
                .map(|v| pages_touched(v.iov_base as usize, v.iov_len))
                .sum();
            assert!(pages <= l.max_pages, "{pages} pages in {part:?}");
            for v in segs {
                flat.push((v.iov_base as usize, v.iov_len));
            }
            dev += part.len;
        }
        assert_eq!(dev - offset, total);
        // Byte-by-byte coverage, in order.
        let bytes = |list: &[(usize, usize)]| -> Vec<usize> {
            list.iter().flat_map(|&(b, n)| b..b + n).collect()
        };
        let want: Vec<(usize, usize)> = iovs
            .iter()
            .map(|v| (v.iov_base as usize, v.iov_len))
            .collect();
        assert_eq!(bytes(&flat), bytes(&want));
    }

    const NO_CAPS: Caps = Caps {
        parts: usize::MAX,
        pieces: usize::MAX,
    };

    fn plan(iovs: &[IoVec], offset: u64, l: Limits) -> (Plan, Vec<IoVec>, Vec<Part>) {
        let (mut pieces, mut parts) = (Vec::new(), Vec::new());
        let p = plan_rw(iovs, 0, offset, l, NO_CAPS, &mut pieces, &mut parts);
        if p != Plan::Impossible {
            check(iovs, offset, l, &pieces, &parts, p);
        }
        (p, pieces, parts)
    }

    #[test]
    fn pages_touched_counts_partial_pages() {
        assert_eq!(pages_touched(0, 0), 0);
        assert_eq!(pages_touched(0, 1), 1);
        assert_eq!(pages_touched(0, 4096), 1);
        assert_eq!(pages_touched(0, 4097), 2);
        assert_eq!(pages_touched(4095, 2), 2);
        assert_eq!(pages_touched(512, 4096), 2);
        assert_eq!(pages_touched(8192, 8192), 2);
    }

    #[test]
    fn requests_up_to_mdts_go_whole() {
        let base = 0x10_0000;
        let roomy = Limits {
            max_pages: 256,
            ..MDTS_512K
        };
        for len in [512, 4096, (512 << 10) - 512, 512 << 10] {
            let (p, _, parts) = plan(&[iov(base, len)], 4096, roomy);
            assert_eq!(p, Plan::Whole, "{len}");
            assert_eq!(parts.len(), 1);
            assert_eq!((parts[0].offset, parts[0].len), (4096, len as u64));
        }
        // Several segments, under every limit.
        let v = [
            iov(base, 4096),
            iov(base + 3 * 4096, 8192),
            iov(base + 9 * 4096, 512),
        ];
        let (p, _, parts) = plan(&v, 0, MDTS_512K);
        assert_eq!((p, parts[0].iov_cnt), (Plan::Whole, 3));
        // Exactly the segment limit: whole; one page more: split.
        let (p, _, _) = plan(&[iov(base, 127 * 4096)], 0, MDTS_512K);
        assert_eq!(p, Plan::Whole);
        let (p, _, parts) = plan(&[iov(base + 512, 127 * 4096)], 0, MDTS_512K);
        assert_eq!(p, Plan::Split, "a misaligned start touches 128 pages");
        assert_eq!(parts[0].len, 127 * 4096 - 512);
    }

    #[test]
    fn mdts_boundaries() {
        let base = 0x100_0000;
        let m = 512usize << 10;
        // One block over: a full command and a one-block command.
        let (p, pieces, parts) = plan(&[iov(base, m + 512)], 0, MDTS_512K);
        assert_eq!(p, Plan::Split);
        // 512 KiB of page-aligned memory is 128 pages: more than 127 segments, so the first
        // command stops at 127 pages.
        assert_eq!(parts[0].len, 127 * 4096);
        assert_eq!(parts.iter().map(|p| p.len).sum::<u64>(), (m + 512) as u64);
        assert_eq!(pieces.len(), 2);

        // With pages to spare, the cut is exactly at MDTS.
        let roomy = Limits {
            max_pages: 256,
            ..MDTS_512K
        };
        let (_, _, parts) = plan(&[iov(base, m + 512)], 0, roomy);
        assert_eq!(
            parts.iter().map(|p| p.len).collect::<Vec<_>>(),
            [m as u64, 512]
        );
        assert_eq!(parts[1].offset, m as u64);
        let (p, _, parts) = plan(&[iov(base, m)], 0, roomy);
        assert_eq!((p, parts.len()), (Plan::Whole, 1));
        let (_, _, parts) = plan(&[iov(base, 2 * m)], 0, roomy);
        assert_eq!(
            parts.iter().map(|p| p.len).collect::<Vec<_>>(),
            [m as u64; 2]
        );
        let (_, _, parts) = plan(&[iov(base, 2 * m + 4096)], 8192, roomy);
        assert_eq!(
            parts.iter().map(|p| p.len).collect::<Vec<_>>(),
            [m as u64, m as u64, 4096]
        );
        assert_eq!(parts[2].offset, 8192 + 2 * m as u64);
    }

    #[test]
    fn cuts_fall_mid_segment_and_on_block_boundaries() {
        let l = Limits {
            block_size: 4096,
            max_bytes: 16384,
            max_pages: 64,
        };
        // Segments of 12 KiB: the 16 KiB commands cut the second one in the middle.
        let v = [
            iov(0x10000, 12288),
            iov(0x40000, 12288),
            iov(0x80000, 12288),
        ];
        let (p, pieces, parts) = plan(&v, 0, l);
        assert_eq!(p, Plan::Split);
        assert_eq!(
            parts.iter().map(|p| p.len).collect::<Vec<_>>(),
            [16384, 16384, 4096]
        );
        assert_eq!(
            pieces
                .iter()
                .map(|v| (v.iov_base as usize, v.iov_len))
                .collect::<Vec<_>>(),
            [
                (0x10000, 12288),
                (0x40000, 4096),
                (0x41000, 8192),
                (0x80000, 8192),
                (0x82000, 4096)
            ]
        );
    }

    #[test]
    fn page_budget_cuts_are_trimmed_to_whole_blocks() {
        // 4096-byte blocks in 512-byte-aligned, page-straddling segments: every segment of
        // 1024 bytes touches two pages, so 5 pages hold at most 2 whole segments plus part of a
        // third; the command is trimmed back to the 4096-byte boundary.
        let l = Limits {
            block_size: 4096,
            max_bytes: 1 << 20,
            max_pages: 9,
        };
        let v: Vec<IoVec> = (0..16)
            .map(|k| iov(0x10_0000 + k * 0x2000 + 3584, 1024))
            .collect();
        let (p, _, parts) = plan(&v, 0, l);
        assert_eq!(p, Plan::Split);
        assert!(parts.iter().all(|p| p.len == 4096), "{parts:?}");
        assert_eq!(parts.len(), 4);

        // A block that cannot fit in the page budget at all: bounce.
        let tight = Limits { max_pages: 3, ..l };
        let (p, _, _) = plan(&v, 0, tight);
        assert_eq!(p, Plan::Impossible);
    }

    #[test]
    fn many_small_segments_respect_the_segment_limit() {
        // 300 separate 512-byte segments (more iovecs than segments per command).
        let v: Vec<IoVec> = (0..300).map(|k| iov(0x20_0000 + k * 0x1000, 512)).collect();
        let (p, _, parts) = plan(&v, 1 << 20, MDTS_512K);
        assert_eq!(p, Plan::Split);
        assert_eq!(
            parts.iter().map(|p| p.iov_cnt).collect::<Vec<_>>(),
            [127, 127, 46]
        );
    }

    #[test]
    fn empty_segments_are_skipped() {
        let l = Limits {
            block_size: 512,
            max_bytes: 1024,
            max_pages: 16,
        };
        let v = [
            iov(0x1000, 0),
            iov(0x2000, 1024),
            iov(0x9000, 0),
            iov(0x3000, 1024),
        ];
        let (p, pieces, parts) = plan(&v, 0, l);
        assert_eq!(p, Plan::Split);
        assert_eq!(parts.len(), 2);
        assert!(pieces.iter().all(|v| v.iov_len > 0));
    }

    #[test]
    fn storage_is_reused() {
        let (mut pieces, mut parts) = (Vec::new(), Vec::new());
        let big = [iov(0x100_0000, 4 << 20)];
        plan_rw(&big, 0, 0, MDTS_512K, NO_CAPS, &mut pieces, &mut parts);
        let (cp, cq) = (pieces.capacity(), parts.capacity());
        let small = [iov(0x100_0000, 4096)];
        assert_eq!(
            plan_rw(&small, 0, 0, MDTS_512K, NO_CAPS, &mut pieces, &mut parts),
            Plan::Whole
        );
        assert_eq!(parts.len(), 1);
        assert!(pieces.is_empty());
        assert_eq!((pieces.capacity(), parts.capacity()), (cp, cq));
    }

    /// Plans `iovs` round by round under `caps`, as a channel does; checks each round stays in
    /// the caps and the rounds together cover the request exactly, in order. Returns the
    /// number of rounds and the parts of all of them.
    fn rounds(iovs: &[IoVec], offset: u64, l: Limits, caps: Caps) -> (usize, Vec<Part>) {
        let total: u64 = iovs.iter().map(|v| v.iov_len as u64).sum();
        let mut pieces = Vec::with_capacity(caps.pieces);
        let mut parts = Vec::with_capacity(caps.parts);
        let (cp, cq) = (pieces.capacity(), parts.capacity());
        let mut flat: Vec<(usize, usize)> = Vec::new();
        let mut all = Vec::new();
        let mut done = 0u64;
        let mut n = 0;
        while done < total {
            let p = plan_rw(iovs, done, offset + done, l, caps, &mut pieces, &mut parts);
            assert_ne!(p, Plan::Impossible, "round {n} at {done}");
            assert!(parts.len() <= caps.parts && pieces.len() <= caps.pieces);
            assert_eq!((pieces.capacity(), parts.capacity()), (cp, cq), "no growth");
            let src = if p == Plan::Whole { iovs } else { &pieces[..] };
            for part in &parts {
                assert_eq!(part.offset, offset + done);
                assert!(part.len > 0 && part.len % l.block_size == 0);
                assert!(part.len <= l.max_bytes || p == Plan::Whole);
                let segs = &src[part.iov_start..part.iov_start + part.iov_cnt];
                assert_eq!(segs.iter().map(|v| v.iov_len as u64).sum::<u64>(), part.len);
                flat.extend(segs.iter().map(|v| (v.iov_base as usize, v.iov_len)));
                done += part.len;
                all.push(*part);
            }
            n += 1;
        }
        assert_eq!(done, total);
        let bytes = |list: &[(usize, usize)]| -> Vec<usize> {
            list.iter().flat_map(|&(b, n)| b..b + n).collect()
        };
        let want: Vec<(usize, usize)> = iovs
            .iter()
            .map(|v| (v.iov_base as usize, v.iov_len))
            .collect();
        assert_eq!(bytes(&flat), bytes(&want));
        (n, all)
    }

    #[test]
    fn rounds_respect_the_caps_and_cover_the_request() {
        // 4 MiB in one segment, 512 KiB per command, 3 parts per round: 8 parts in 3 rounds.
        let roomy = Limits {
            max_pages: 256,
            ..MDTS_512K
        };
        let caps = Caps {
            parts: 3,
            pieces: 16,
        };
        let (n, parts) = rounds(&[iov(0x100_0000, 4 << 20)], 4096, roomy, caps);
        assert_eq!((n, parts.len()), (3, 8));
        // 300 scattered 512-byte segments and 16 pieces per round: cut by pieces, not parts.
        let v: Vec<IoVec> = (0..300).map(|k| iov(0x20_0000 + k * 0x1000, 512)).collect();
        let (n, parts) = rounds(&v, 0, MDTS_512K, caps);
        assert_eq!(n, 300usize.div_ceil(16));
        assert!(parts.iter().all(|p| p.iov_cnt <= 16));
        // 4096-byte blocks of 512-byte segments: a round never ends mid-block.
        let l4k = Limits {
            block_size: 4096,
            ..MDTS_512K
        };
        let caps = Caps {
            parts: 4,
            pieces: 12,
        };
        let (_, parts) = rounds(&v[..296], 0, l4k, caps);
        assert!(
            parts.iter().all(|p| p.len == 4096 && p.iov_cnt == 8),
            "{parts:?}"
        );
        // Mixed segment sizes with iovec boundaries inside rounds.
        let v = [
            iov(0x10000, 12288),
            iov(0x40000, 3 * 4096 + 512),
            iov(0x80000, 512),
            iov(0xa0000, 64 << 10),
        ];
        let l = Limits {
            block_size: 512,
            max_bytes: 8192,
            max_pages: 3,
        };
        let caps = Caps {
            parts: 2,
            pieces: 3,
        };
        rounds(&v, 1 << 20, l, caps);
    }

    #[test]
    fn block_commands() {
        let mut parts = Vec::new();
        let len = 3 * 65536 * 512 + 1024;
        assert_eq!(plan_blocks(4096, len, 512, 65536, 16, &mut parts), len);
        assert_eq!(
            parts.iter().map(|p| p.len).collect::<Vec<_>>(),
            [65536 * 512, 65536 * 512, 65536 * 512, 1024]
        );
        assert_eq!(parts[1].offset, 4096 + 65536 * 512);
        plan_blocks(0, 65536 * 4096, 4096, 65536, 16, &mut parts);
        assert_eq!(parts.len(), 1, "exactly the limit is one command");
        assert_eq!(plan_blocks(0, 0, 512, 8, 16, &mut parts), 0);
        assert!(parts.is_empty());
        // At most `max_parts`: the rest is for the next round.
        assert_eq!(
            plan_blocks(0, len, 512, 65536, 2, &mut parts),
            2 * 65536 * 512
        );
        assert_eq!(parts.len(), 2);
    }
}
