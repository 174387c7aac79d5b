//! Deterministic test data and comparisons that report the first difference instead of
//! dumping megabytes.

/// The byte read buffers are filled with before a read, so a read that transfers nothing cannot
/// pass for data (or for zeroes).
pub const POISON: u8 = 0xa5;

const SALT: u64 = 0x5350_494e_424c_4b21;
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` deterministic pseudo-random bytes for `seed`: the start of the stream that
/// [`pattern_at`] indexes, so `pattern(s, n) == pattern_at(s, 0, n)`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    pattern_at(seed, 0, len)
}

/// The bytes at positions `at..at + len` of `seed`'s stream (splitmix64 words, little
/// endian). Any sub-range can be regenerated on its own, so a device offset can serve as `at`.
pub fn pattern_at(seed: u64, at: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_pattern_at(&mut out, seed, at);
    out
}

/// Fills `buf` with positions `at..at + buf.len()` of `seed`'s stream (see [`pattern_at`]).
pub fn fill_pattern_at(buf: &mut [u8], seed: u64, at: u64) {
    let base = seed ^ SALT;
    let mut pos = at;
    let mut i = 0;
    while i < buf.len() {
        let word = pos / 8;
        let skip = (pos % 8) as usize;
        let bytes = mix(base.wrapping_add(word.wrapping_add(1).wrapping_mul(GAMMA))).to_le_bytes();
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[skip..skip + n]);
        i += n;
        pos = pos.wrapping_add(n as u64);
    }
}

/// A small deterministic generator (splitmix64) for offsets and sizes.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The index of the first byte where `a` and `b` differ (`None` when equal, including length).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None; // one memcmp; the search below is slow in debug builds
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Asserts that `got` equals `want`, reporting the first differing byte.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = first_difference(got, want) {
        let end = (i + 16).min(got.len());
        panic!(
            "{what}: first difference at byte {i} of {}: got {:02x?}, want {:02x?}",
            got.len(),
            &got[i..end],
            &want[i..end]
        );
    }
}

/// Asserts that every byte of `got` is zero.
#[track_caller]
pub fn assert_zeroes(got: &[u8], what: &str) {
    static ZEROES: [u8; 4096] = [0; 4096];
    if got.chunks(ZEROES.len()).all(|c| c == &ZEROES[..c.len()]) {
        return;
    }
    if let Some(i) = got.iter().position(|&b| b != 0) {
        let end = (i + 16).min(got.len());
        panic!(
            "{what}: expected zeroes, byte {i} of {} is not: {:02x?}",
            got.len(),
            &got[i..end]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_rng_stream_and_any_window_of_it() {
        let mut rng = Rng::new(7 ^ SALT);
        let words: Vec<u8> = (0..5).flat_map(|_| rng.next_u64().to_le_bytes()).collect();
        assert_eq!(pattern(7, 40), words);
        let whole = pattern(7, 4096);
        for (at, len) in [(0, 1), (3, 9), (8, 8), (13, 100), (4000, 96)] {
            assert_eq!(
                pattern_at(7, at, len),
                whole[at as usize..at as usize + len]
            );
        }
        assert_ne!(pattern(7, 64), pattern(8, 64), "seeds differ");
    }

    #[test]
    fn first_difference_finds_the_byte_and_length_mismatches() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
    }
}
