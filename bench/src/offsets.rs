//! Allocation-free offset generation: a xorshift64* PRNG and a per-thread
//! offset generator for sequential or random, block-aligned offsets.

/// xorshift64* (Vigna). Not cryptographic; fast and good enough for picking
/// offsets.
#[derive(Clone, Debug)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// Seeds the generator; the seed is scrambled with splitmix64 so that
    /// nearby seeds (seed + thread index) give unrelated streams.
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The all-zero state is a fixed point of xorshift.
        Self {
            state: if z == 0 { 0x2545_f491_4f6c_dd1d } else { z },
        }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish value in `0..n` (Lemire's multiply-shift reduction; the bias
    /// is below 2^-64 * n, irrelevant here). `n` must be non-zero.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Produces byte offsets for one worker thread. All offsets are multiples of
/// `bs` and every request `[off, off + bs)` lies inside the region the
/// generator was built for.
#[derive(Clone, Debug)]
pub struct OffsetGen {
    rng: XorShift64,
    random: bool,
    bs: u64,
    /// First block (in units of bs) of this generator's range.
    first_block: u64,
    /// Number of blocks in the range (> 0).
    nblocks: u64,
    /// Next block for the sequential pattern, relative to `first_block`.
    cursor: u64,
}

impl OffsetGen {
    /// Generator for worker `idx` of `nworkers` over bytes `[0, region)`.
    ///
    /// Random workloads draw from the whole region. Sequential workloads give
    /// each worker its own contiguous stripe (so that the queues do not all
    /// read the same blocks) and wrap around at its end; if the region has
    /// fewer blocks than workers, every worker walks the whole region.
    ///
    /// Returns `None` when the region cannot hold a single block.
    pub fn new(
        seed: u64,
        random: bool,
        bs: u64,
        region: u64,
        idx: u64,
        nworkers: u64,
    ) -> Option<Self> {
        if bs == 0 || nworkers == 0 || idx >= nworkers {
            return None;
        }
        let total_blocks = region / bs;
        if total_blocks == 0 {
            return None;
        }
        let (first_block, nblocks) = if random || total_blocks < nworkers {
            (0, total_blocks)
        } else {
            let lo = total_blocks * idx / nworkers;
            let hi = total_blocks * (idx + 1) / nworkers;
            (lo, hi - lo)
        };
        Some(Self {
            rng: XorShift64::new(seed.wrapping_add(idx)),
            random,
            bs,
            first_block,
            nblocks,
            cursor: 0,
        })
    }

    /// The next offset in bytes.
    #[inline]
    pub fn next_offset(&mut self) -> u64 {
        let block = if self.random {
            self.rng.below(self.nblocks)
        } else {
            let b = self.cursor;
            self.cursor += 1;
            if self.cursor == self.nblocks {
                self.cursor = 0;
            }
            b
        };
        (self.first_block + block) * self.bs
    }

    /// True with probability `pct`/100; used for the read/write mix.
    #[inline]
    pub fn chance(&mut self, pct: u8) -> bool {
        match pct {
            0 => false,
            100.. => true,
            p => self.rng.below(100) < u64::from(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_offsets_aligned_and_in_range() {
        for &(bs, region) in &[
            (4096u64, 1u64 << 30),
            (512, 512 * 7),
            (65536, (1 << 20) + 4095),
            (4096, 4096),
        ] {
            let Some(mut g) = OffsetGen::new(42, true, bs, region, 1, 4) else {
                panic!("generator refused bs={bs} region={region}");
            };
            let mut seen_nonzero = false;
            for _ in 0..100_000 {
                let off = g.next_offset();
                assert_eq!(off % bs, 0, "unaligned offset {off} for bs {bs}");
                assert!(off + bs <= region, "offset {off} + {bs} beyond {region}");
                seen_nonzero |= off != 0;
            }
            assert!(seen_nonzero || region / bs == 1);
        }
    }

    #[test]
    fn random_offsets_cover_range() {
        let bs = 4096;
        let blocks = 64u64;
        let mut g = OffsetGen::new(7, true, bs, blocks * bs, 0, 1).expect("valid generator");
        let mut hits = vec![0u32; blocks as usize];
        for _ in 0..64_000 {
            hits[(g.next_offset() / bs) as usize] += 1;
        }
        // Expect ~1000 per block; a broken generator would leave holes.
        assert!(hits.iter().all(|&h| h > 700 && h < 1300), "{hits:?}");
    }

    #[test]
    fn sequential_stripes() {
        let bs = 4096;
        let region = 10 * bs;
        let mut seen = Vec::new();
        for idx in 0..3 {
            let mut g = OffsetGen::new(1, false, bs, region, idx, 3).expect("valid generator");
            let first = g.next_offset();
            let mut stripe = vec![first];
            loop {
                let o = g.next_offset();
                assert_eq!(o % bs, 0);
                assert!(o + bs <= region);
                if o == first {
                    break; // wrapped
                }
                assert_eq!(o, stripe[stripe.len() - 1] + bs, "not sequential");
                stripe.push(o);
            }
            seen.extend(stripe);
        }
        seen.sort_unstable();
        let expected: Vec<u64> = (0..10).map(|b| b * bs).collect();
        assert_eq!(seen, expected, "stripes must partition the region");
    }

    #[test]
    fn degenerate_regions() {
        assert!(OffsetGen::new(0, true, 4096, 4095, 0, 1).is_none());
        assert!(OffsetGen::new(0, true, 0, 1 << 20, 0, 1).is_none());
        assert!(OffsetGen::new(0, false, 4096, 1 << 20, 2, 2).is_none());
        // Fewer blocks than workers: everyone walks the whole region.
        let mut g = OffsetGen::new(0, false, 4096, 2 * 4096, 3, 4).expect("valid generator");
        assert_eq!(g.next_offset(), 0);
        assert_eq!(g.next_offset(), 4096);
        assert_eq!(g.next_offset(), 0);
    }

    #[test]
    fn mix() {
        let mut g = OffsetGen::new(3, true, 512, 1 << 20, 0, 1).expect("valid generator");
        assert!((0..1000).all(|_| g.chance(100)));
        assert!((0..1000).all(|_| !g.chance(0)));
        let reads = (0..100_000).filter(|_| g.chance(70)).count();
        assert!((68_000..72_000).contains(&reads), "{reads}");
    }
}
