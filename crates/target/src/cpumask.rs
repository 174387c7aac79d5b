//! Core sets in SPDK's two spellings: a hexadecimal mask (`0x3`, `3`, `0xF0`) and a bracketed list
//! (`[0,2-3]`), as `-m/--cpumask` and the `cpumask` RPC parameters take them.

use std::collections::BTreeSet;
use std::fmt;

/// The largest core number accepted (SPDK's default `SPDK_CPUSET_SIZE` is 1024).
pub const MAX_CORES: usize = 1024;

/// A set of cores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreMask(BTreeSet<usize>);

/// A cpumask that cannot be parsed, or an empty one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCpuMask(pub String);

impl fmt::Display for BadCpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid cpumask '{}': use a hexadecimal mask like 0x3 or a list like [0,2-3]",
            self.0
        )
    }
}

impl std::error::Error for BadCpuMask {}

impl CoreMask {
    /// The set of `cores`.
    pub fn from_cores(cores: impl IntoIterator<Item = usize>) -> CoreMask {
        CoreMask(cores.into_iter().collect())
    }

    /// Parses `0x..`/hex or `[list]`. An empty set is an error.
    pub fn parse(text: &str) -> Result<CoreMask, BadCpuMask> {
        let bad = || BadCpuMask(text.to_string());
        let s = text.trim();
        let set = if let Some(list) = s.strip_prefix('[') {
            let list = list.strip_suffix(']').ok_or_else(bad)?;
            spinblk_reactor::parse_cpu_list(list)
                .map_err(|_| bad())?
                .into_iter()
                .collect()
        } else {
            let hex = s
                .strip_prefix("0x")
                .or_else(|| s.strip_prefix("0X"))
                .unwrap_or(s);
            if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            let mut set = BTreeSet::new();
            for (i, c) in hex.chars().rev().enumerate() {
                let nibble = c.to_digit(16).ok_or_else(bad)? as usize;
                for bit in 0..4 {
                    if nibble & (1 << bit) != 0 {
                        set.insert(4 * i + bit);
                    }
                }
            }
            set
        };
        if set.is_empty() || set.iter().any(|&c| c >= MAX_CORES) {
            return Err(bad());
        }
        Ok(CoreMask(set))
    }

    /// The cores, ascending.
    pub fn cores(&self) -> Vec<usize> {
        self.0.iter().copied().collect()
    }

    /// Whether the set has no core.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every core of `self` is in `other`.
    pub fn is_subset(&self, other: &CoreMask) -> bool {
        self.0.is_subset(&other.0)
    }

    /// Lower-case hexadecimal without a prefix, as SPDK's `spdk_cpuset_fmt` writes it.
    pub fn hex(&self) -> String {
        let Some(&top) = self.0.iter().next_back() else {
            return "0".into();
        };
        let nibbles = top / 4 + 1;
        (0..nibbles)
            .rev()
            .map(|n| {
                let v = (0..4).fold(0u32, |acc, bit| {
                    acc | (u32::from(self.0.contains(&(4 * n + bit))) << bit)
                });
                char::from_digit(v, 16).unwrap_or('0')
            })
            .collect()
    }
}

impl fmt::Display for CoreMask {
    /// `0x` and the hexadecimal mask.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_list_forms() {
        assert_eq!(CoreMask::parse("0x3").map(|m| m.cores()), Ok(vec![0, 1]));
        assert_eq!(CoreMask::parse("3").map(|m| m.cores()), Ok(vec![0, 1]));
        assert_eq!(
            CoreMask::parse("0xF0").map(|m| m.cores()),
            Ok(vec![4, 5, 6, 7])
        );
        assert_eq!(
            CoreMask::parse("[0,2-3]").map(|m| m.cores()),
            Ok(vec![0, 2, 3])
        );
        for bad in ["", "0x", "0x0", "zz", "[", "[]", "[3-1]", "0x1g"] {
            assert!(CoreMask::parse(bad).is_err(), "{bad}");
        }
        let m = CoreMask::from_cores([0, 5, 12]);
        assert_eq!(m.hex(), "1021");
        assert_eq!(m.to_string(), "0x1021");
        assert_eq!(CoreMask::parse(&m.to_string()), Ok(m.clone()));
        assert!(CoreMask::from_cores([5]).is_subset(&m));
        assert!(!CoreMask::from_cores([1]).is_subset(&m));
        assert_eq!(CoreMask::from_cores([0]).hex(), "1");
    }
}
