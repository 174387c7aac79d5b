//! QoS limits as SPDK's `bdev_set_qos_limit` sets them: each limit given is changed (0 removes
//! it), each limit left out stays as it was; an IOPS limit is rounded up to a multiple of 1000
//! (SPDK_BDEV_QOS_MIN_IOS_PER_SEC) and a bandwidth limit given in MiB/s is a multiple of SPDK's
//! 1 MiB/s minimum already; a bandwidth limit whose bytes would not fit 64 bits is lowered to
//! the largest that does (SPDK_BDEV_QOS_MAX_MBYTES_PER_SEC).

use log::warn;

use crate::bdev::QosLimits;

/// SPDK's granularity of an IOPS limit (SPDK_BDEV_QOS_MIN_IOS_PER_SEC).
pub const QOS_MIN_IOS_PER_SEC: u64 = 1000;
/// The largest bandwidth limit in MiB/s whose bytes per second fit 64 bits
/// (SPDK_BDEV_QOS_MAX_MBYTES_PER_SEC).
pub const QOS_MAX_MBYTES_PER_SEC: u64 = u64::MAX / (1024 * 1024);

/// A change to a bdev's limits: `None` keeps a limit, `Some(0)` removes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosUpdate {
    /// Read + write I/Os per second.
    pub rw_ios_per_sec: Option<u64>,
    /// Read + write MiB per second.
    pub rw_mbytes_per_sec: Option<u64>,
    /// Read MiB per second.
    pub r_mbytes_per_sec: Option<u64>,
    /// Write MiB per second.
    pub w_mbytes_per_sec: Option<u64>,
}

impl QosUpdate {
    /// An update that sets every limit to `limits`' (0s included).
    pub fn all(limits: QosLimits) -> QosUpdate {
        QosUpdate {
            rw_ios_per_sec: Some(limits.rw_ios_per_sec),
            rw_mbytes_per_sec: Some(limits.rw_mbytes_per_sec),
            r_mbytes_per_sec: Some(limits.r_mbytes_per_sec),
            w_mbytes_per_sec: Some(limits.w_mbytes_per_sec),
        }
    }

    /// Whether it names no limit at all (SPDK refuses that: "No rate limits specified").
    pub fn is_empty(&self) -> bool {
        *self == QosUpdate::default()
    }

    /// The limits after applying this update to `current`, with SPDK's rounding (each
    /// adjustment logged, as SPDK logs it).
    pub fn apply(&self, bdev: &str, current: QosLimits) -> QosLimits {
        let mut out = current;
        if let Some(ios) = self.rw_ios_per_sec {
            out.rw_ios_per_sec = round_ios(bdev, ios);
        }
        for (given, slot, key) in [
            (
                self.rw_mbytes_per_sec,
                &mut out.rw_mbytes_per_sec,
                "rw_mbytes_per_sec",
            ),
            (
                self.r_mbytes_per_sec,
                &mut out.r_mbytes_per_sec,
                "r_mbytes_per_sec",
            ),
            (
                self.w_mbytes_per_sec,
                &mut out.w_mbytes_per_sec,
                "w_mbytes_per_sec",
            ),
        ] {
            if let Some(v) = given {
                *slot = if v > QOS_MAX_MBYTES_PER_SEC {
                    warn!(
                        "bdev {bdev}: {key} {v} would overflow 64 bits of bytes per second; \
                         lowered to {QOS_MAX_MBYTES_PER_SEC}"
                    );
                    QOS_MAX_MBYTES_PER_SEC
                } else {
                    v
                };
            }
        }
        out
    }
}

/// SPDK's rounding of an IOPS limit: up to the next multiple of 1000 (0 stays 0, "no limit").
fn round_ios(bdev: &str, ios: u64) -> u64 {
    let rest = ios % QOS_MIN_IOS_PER_SEC;
    if rest == 0 {
        return ios;
    }
    let up = ios
        .checked_add(QOS_MIN_IOS_PER_SEC - rest)
        .unwrap_or(u64::MAX - u64::MAX % QOS_MIN_IOS_PER_SEC);
    warn!(
        "bdev {bdev}: rw_ios_per_sec {ios} is not a multiple of {QOS_MIN_IOS_PER_SEC}; rounded \
         up to {up} (as SPDK does)"
    );
    up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdk_rounding_and_partial_updates() {
        let start = QosLimits {
            rw_ios_per_sec: 5000,
            w_mbytes_per_sec: 7,
            ..Default::default()
        };
        let u = QosUpdate {
            rw_ios_per_sec: Some(20_001),
            r_mbytes_per_sec: Some(50),
            ..Default::default()
        };
        let got = u.apply("b", start);
        assert_eq!(
            got.rw_ios_per_sec, 21_000,
            "rounded up to a multiple of 1000"
        );
        assert_eq!(got.r_mbytes_per_sec, 50);
        assert_eq!(got.w_mbytes_per_sec, 7, "left out: unchanged");
        assert_eq!(got.rw_mbytes_per_sec, 0);
        let off = QosUpdate {
            rw_ios_per_sec: Some(0),
            w_mbytes_per_sec: Some(0),
            ..Default::default()
        }
        .apply("b", got);
        assert_eq!(off.rw_ios_per_sec, 0, "0 removes a limit");
        assert_eq!(off.r_mbytes_per_sec, 50);
        assert!(off.any());
        assert_eq!(round_ios("b", 999), 1000);
        assert_eq!(round_ios("b", 1000), 1000);
        assert_eq!(round_ios("b", u64::MAX) % 1000, 0);
        let huge = QosUpdate {
            rw_mbytes_per_sec: Some(u64::MAX),
            ..Default::default()
        }
        .apply("b", QosLimits::default());
        assert_eq!(huge.rw_mbytes_per_sec, QOS_MAX_MBYTES_PER_SEC);
        assert!(QosUpdate::default().is_empty());
        assert!(!QosUpdate::all(QosLimits::default()).is_empty());
    }
}
