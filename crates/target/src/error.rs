//! Why a control-plane operation failed. Each error carries the errno SPDK would report for the
//! same failure, so the RPC layer can answer with SPDK's error codes.

use std::fmt;

use spinblk_bdev::BdevError;

/// A failed control-plane operation.
#[derive(Debug)]
pub enum TargetError {
    /// An object with this name exists already.
    Exists {
        /// "bdev" or "controller".
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// No object with this name (or not of the kind asked for).
    NotFound {
        /// "bdev" or "controller".
        what: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The bdev is claimed by controllers and cannot be deleted (or claimed again).
    InUse {
        /// The bdev.
        bdev: String,
        /// The controllers that claim it.
        by: Vec<String>,
    },
    /// The object is being created or deleted by another request right now.
    Busy(String),
    /// A parameter the target cannot accept (bad geometry, cpumask, sharing rule...).
    Invalid(String),
    /// A feature spinblk does not have (packed rings, metadata, DIF...).
    Unsupported(String),
    /// The bdev could not be created.
    Bdev {
        /// The bdev's name.
        name: String,
        /// What the bdev layer said.
        error: BdevError,
    },
    /// A system resource failed (a socket, a thread).
    System(String, std::io::Error),
    /// A Ceph cluster or RBD image could not be reached, opened, resized, flushed or closed.
    Rbd {
        /// What it was for ("bdev 'r0'", "rbd cluster 'c1'").
        what: String,
        /// What librados/librbd said.
        error: spinblk_rbd::RbdError,
    },
}

impl TargetError {
    /// The positive errno SPDK would report for this failure (EEXIST, ENODEV, EBUSY, EINVAL,
    /// ENOTSUP, or the operating system's).
    pub fn errno(&self) -> i32 {
        match self {
            TargetError::Exists { .. } => libc::EEXIST,
            TargetError::NotFound { .. } => libc::ENODEV,
            TargetError::InUse { .. } | TargetError::Busy(_) => libc::EBUSY,
            TargetError::Invalid(_) => libc::EINVAL,
            TargetError::Unsupported(_) => libc::ENOTSUP,
            TargetError::Bdev { error, .. } => match error {
                BdevError::Open { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
                BdevError::Os(e) => e.raw_os_error().unwrap_or(libc::EIO),
                BdevError::InvalidGeometry(_) | BdevError::DirectIoUnsupported { .. } => {
                    libc::EINVAL
                }
                BdevError::NotAFileOrBlockDevice(_) => libc::ENODEV,
                BdevError::Nvme { .. } | BdevError::Shrunk { .. } => libc::EINVAL,
                BdevError::Unsupported(_) => libc::ENOTSUP,
            },
            TargetError::System(_, e) => e.raw_os_error().unwrap_or(libc::EIO),
            TargetError::Rbd { error, .. } => match error {
                spinblk_rbd::RbdError::Call { errno, .. } => *errno,
                spinblk_rbd::RbdError::Library(_) => libc::ENOENT,
                spinblk_rbd::RbdError::Invalid(_) => libc::EINVAL,
                spinblk_rbd::RbdError::Busy { .. } => libc::EBUSY,
                spinblk_rbd::RbdError::Closed => libc::ENODEV,
                spinblk_rbd::RbdError::Timeout { .. } => libc::ETIMEDOUT,
                spinblk_rbd::RbdError::Os(e) => e.raw_os_error().unwrap_or(libc::EIO),
            },
        }
    }

    /// Whether the caller passed something unacceptable (as opposed to a state conflict or a
    /// system failure): SPDK answers these with -32602 (invalid params).
    pub fn is_invalid_param(&self) -> bool {
        matches!(
            self,
            TargetError::Invalid(_)
                | TargetError::Unsupported(_)
                | TargetError::Rbd {
                    error: spinblk_rbd::RbdError::Invalid(_),
                    ..
                }
        )
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Exists { what, name } => write!(f, "{what} '{name}' already exists"),
            TargetError::NotFound { what, name } => write!(f, "no {what} named '{name}'"),
            TargetError::InUse { bdev, by } => write!(
                f,
                "bdev '{bdev}' is in use by controller{} {}; delete {} first",
                if by.len() == 1 { "" } else { "s" },
                by.join(", "),
                if by.len() == 1 { "it" } else { "them" }
            ),
            TargetError::Busy(what) => write!(f, "{what}"),
            TargetError::Invalid(why) | TargetError::Unsupported(why) => f.write_str(why),
            TargetError::Bdev { name, error } => write!(f, "bdev '{name}': {error}"),
            TargetError::System(what, e) => write!(f, "{what}: {e}"),
            TargetError::Rbd { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for TargetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TargetError::Bdev { error, .. } => Some(error),
            TargetError::System(_, e) => Some(e),
            TargetError::Rbd { error, .. } => Some(error),
            _ => None,
        }
    }
}
