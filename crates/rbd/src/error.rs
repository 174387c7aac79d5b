//! Errors of the RBD control plane.

use std::fmt;

/// Why connecting to a cluster, opening, resizing or closing an image failed.
#[derive(Debug)]
pub enum RbdError {
    /// librados.so.2 or librbd.so.1 could not be loaded (Ceph's client libraries are not
    /// installed): the message from `dlopen`/`dlsym`.
    Library(String),
    /// A librados/librbd call failed.
    Call {
        /// What was being done, with the names involved ("connect to cluster ceph as
        /// client.admin (config /etc/ceph/ceph.conf)").
        what: String,
        /// The positive errno the call returned.
        errno: i32,
    },
    /// A name, size or option that cannot be used (a NUL byte, a bad block size, an empty
    /// image).
    Invalid(String),
    /// The image still has open I/O channels; close them first.
    Busy {
        /// How many channels are open.
        channels: usize,
    },
    /// The image has been closed.
    Closed,
    /// librbd did not finish an operation in time (the cluster is unreachable). What it still
    /// holds (the image handle, the connection) is leaked rather than freed under it.
    Timeout {
        /// What was being done.
        what: String,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// The operating system refused a resource (an eventfd).
    Os(std::io::Error),
}

impl RbdError {
    /// A failed call: `ret` is librados/librbd's negative errno.
    pub(crate) fn call(what: impl Into<String>, ret: i64) -> Self {
        RbdError::Call {
            what: what.into(),
            errno: i32::try_from(-ret).unwrap_or(libc::EIO),
        }
    }

    /// The errno of a failed call, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RbdError::Call { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl fmt::Display for RbdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RbdError::Library(e) => write!(
                f,
                "RBD needs Ceph's client libraries (librbd.so.1, librados.so.2; Debian: \
                 apt-get install librbd1): {e}"
            ),
            // io::Error's Display ends in "(os error N)".
            RbdError::Call { what, errno } => write!(
                f,
                "cannot {what}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            RbdError::Invalid(why) => write!(f, "{why}"),
            RbdError::Busy { channels } => {
                write!(f, "the image still has {channels} open I/O channel(s)")
            }
            RbdError::Closed => write!(f, "the image is closed"),
            RbdError::Timeout { what, after } => {
                write!(
                    f,
                    "cannot {what}: no answer from the cluster after {after:?}"
                )
            }
            RbdError::Os(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RbdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RbdError::Os(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RbdError> for spinblk_bdev::BdevError {
    fn from(e: RbdError) -> Self {
        match e {
            RbdError::Os(e) => spinblk_bdev::BdevError::Os(e),
            RbdError::Invalid(why) => spinblk_bdev::BdevError::InvalidGeometry(why),
            other => spinblk_bdev::BdevError::Os(std::io::Error::other(other.to_string())),
        }
    }
}
