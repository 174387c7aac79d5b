//! A minimal RFC 4122 UUID: random (version 4) generation, parsing and the canonical
//! lower-case text form SPDK uses for bdev uuids.

use std::fmt;
use std::str::FromStr;

/// A 128-bit UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid([u8; 16]);

/// Text that is not a UUID of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadUuid(pub String);

impl fmt::Display for BadUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
            self.0
        )
    }
}

impl std::error::Error for BadUuid {}

impl Uuid {
    /// A random (version 4, variant 1) UUID from the kernel's random source.
    pub fn random() -> Uuid {
        let mut b = [0u8; 16];
        let mut filled = 0;
        while filled < b.len() {
            // SAFETY: the pointer and length describe the unfilled tail of `b`, which is ours.
            let n =
                unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
            if n > 0 {
                filled += n as usize;
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // getrandom(2) cannot fail with valid arguments on Linux >= 3.17; fall back to
                // the clock and address entropy rather than aborting.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let addr = &b as *const _ as usize as u128;
                b = (t ^ addr.rotate_left(64)).to_le_bytes();
                break;
            }
        }
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Uuid(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Uuid {
    type Err = BadUuid;

    fn from_str(s: &str) -> Result<Uuid, BadUuid> {
        let bad = || BadUuid(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Uuid(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version() {
        let u = Uuid::random();
        let text = u.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4", "version 4: {text}");
        assert_eq!(text.parse::<Uuid>(), Ok(u));
        assert_ne!(Uuid::random(), u);
        let fixed: Uuid = "0E8A5D5C-7C4E-4B8E-9B3E-0123456789AB"
            .parse()
            .expect("valid");
        assert_eq!(fixed.to_string(), "0e8a5d5c-7c4e-4b8e-9b3e-0123456789ab");
        for bad in [
            "",
            "0e8a5d5c7c4e4b8e9b3e0123456789ab",
            "0e8a5d5c-7c4e-4b8e-9b3e-0123456789ag",
            "x-y",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
    }
}
