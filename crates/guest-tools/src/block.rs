//! The 4 KiB block stamp: what every block this tool writes holds, and how a read is judged.
//!
//! Layout (little-endian u64 words): `[0]` magic (which region), `[1]` index (the block's
//! number within its region), `[2]` generation (stress region) or pass (memory region),
//! `[3]` run id (random per start), `[4..511]` a fill derived from all of those, `[511]` the
//! CRC-32C of bytes 0..4088.

use crate::crc32c::crc32c;

/// Block size: the unit of stamping and checking.
pub const BLOCK: usize = 4096;
const WORDS: usize = BLOCK / 8;
/// Magic of the stress (writer/verifier) region.
pub const MAGIC_STRESS: u64 = u64::from_le_bytes(*b"SPBGIO-S");
/// Magic of the device-written-memory region.
pub const MAGIC_MEM: u64 = u64::from_le_bytes(*b"SPBGIO-M");

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fill_seed(magic: u64, index: u64, gen: u64, run: u64) -> u64 {
    mix(magic ^ mix(index ^ mix(gen ^ mix(run))))
}

fn word(buf: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[i * 8..i * 8 + 8]);
    u64::from_le_bytes(a)
}

fn put(buf: &mut [u8], i: usize, v: u64) {
    buf[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes the stamp of (`magic`, `index`, `gen`, `run`) into `buf` (one block).
pub fn stamp(buf: &mut [u8], magic: u64, index: u64, gen: u64, run: u64) {
    debug_assert_eq!(buf.len(), BLOCK);
    put(buf, 0, magic);
    put(buf, 1, index);
    put(buf, 2, gen);
    put(buf, 3, run);
    let seed = fill_seed(magic, index, gen, run);
    for i in 4..WORDS - 1 {
        put(
            buf,
            i,
            seed.wrapping_add((i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)),
        );
    }
    let crc = crc32c(&buf[..BLOCK - 8]);
    put(buf, WORDS - 1, crc as u64);
}

/// What a block read back holds, compared with what it should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The expected stamp, byte for byte.
    Ok,
    /// All zeroes: never written, or the write was lost.
    Zero,
    /// Checksum or fill mismatch: the bytes are damaged.
    Corrupt,
    /// An intact stamp of another block (index found): misdirected I/O.
    Misplaced(u64),
    /// An intact stamp from another run or region.
    Foreign,
    /// An intact stamp of this block but an OLDER generation (found): stale data.
    Stale(u64),
    /// An intact stamp of this block but a NEWER generation than any completed write.
    Future(u64),
}

impl Verdict {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Zero => "ZERO",
            Verdict::Corrupt => "CORRUPT",
            Verdict::Misplaced(_) => "MISPLACED",
            Verdict::Foreign => "FOREIGN",
            Verdict::Stale(_) => "STALE",
            Verdict::Future(_) => "FUTURE",
        }
    }
}

/// Judges one block against the stamp (`magic`, `index`, `gen`, `run`).
pub fn check(buf: &[u8], magic: u64, index: u64, gen: u64, run: u64) -> Verdict {
    debug_assert_eq!(buf.len(), BLOCK);
    if buf.iter().all(|&b| b == 0) {
        return Verdict::Zero;
    }
    if word(buf, WORDS - 1) != crc32c(&buf[..BLOCK - 8]) as u64 {
        return Verdict::Corrupt;
    }
    let (m, i, g, r) = (word(buf, 0), word(buf, 1), word(buf, 2), word(buf, 3));
    if m != magic || r != run {
        return Verdict::Foreign;
    }
    if i != index {
        return Verdict::Misplaced(i);
    }
    // The fill must match the stamp's own header (a CRC collision would hide damage otherwise).
    let seed = fill_seed(m, i, g, r);
    for k in 4..WORDS - 1 {
        if word(buf, k) != seed.wrapping_add((k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)) {
            return Verdict::Corrupt;
        }
    }
    match g.cmp(&gen) {
        std::cmp::Ordering::Equal => Verdict::Ok,
        std::cmp::Ordering::Less => Verdict::Stale(g),
        std::cmp::Ordering::Greater => Verdict::Future(g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(index: u64, gen: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        stamp(&mut b, MAGIC_STRESS, index, gen, 77);
        b
    }

    #[test]
    fn roundtrip() {
        let b = stamped(5, 9);
        assert_eq!(check(&b, MAGIC_STRESS, 5, 9, 77), Verdict::Ok);
    }

    #[test]
    fn classifies_every_failure() {
        let b = stamped(5, 9);
        assert_eq!(check(&b, MAGIC_STRESS, 5, 10, 77), Verdict::Stale(9));
        assert_eq!(check(&b, MAGIC_STRESS, 5, 8, 77), Verdict::Future(9));
        assert_eq!(check(&b, MAGIC_STRESS, 6, 9, 77), Verdict::Misplaced(5));
        assert_eq!(check(&b, MAGIC_STRESS, 5, 9, 78), Verdict::Foreign);
        assert_eq!(check(&b, MAGIC_MEM, 5, 9, 77), Verdict::Foreign);
        assert_eq!(check(&[0u8; BLOCK], MAGIC_STRESS, 5, 9, 77), Verdict::Zero);
        for pos in [0, 17, 100, 2048, 4087, 4088, 4095] {
            let mut c = b.clone();
            c[pos] ^= 0x10;
            assert_eq!(
                check(&c, MAGIC_STRESS, 5, 9, 77),
                Verdict::Corrupt,
                "flip at {pos}"
            );
        }
        // A torn block: the first half of generation 10, the rest of generation 9.
        let mut t = stamped(5, 10);
        t[2048..].copy_from_slice(&b[2048..]);
        assert_eq!(check(&t, MAGIC_STRESS, 5, 10, 77), Verdict::Corrupt);
    }

    #[test]
    fn generations_differ_everywhere() {
        let a = stamped(1, 1);
        let b = stamped(1, 2);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 64, "{same} equal bytes");
    }
}
