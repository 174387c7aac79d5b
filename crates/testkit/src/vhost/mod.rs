//! A raw vhost-user front-end for hostile tests: it speaks the protocol over the unix socket
//! by hand ([`VhostConn`]: any header, payload and fds, replies read with deadlines), shares a
//! memfd as guest memory ([`GuestMemory`]), builds split rings and descriptor chains in it
//! ([`SplitRing`], [`Desc`]), and can also behave ([`Frontend::ready`]) so data-level cases
//! start from a working queue.

mod conn;
pub mod consts;
mod frontend;
mod memory;
mod ring;

pub use conn::{Answer, RecvError, Reply, VhostConn};
pub use consts::MemRegion;
pub use frontend::{Frontend, Outcome, QueueState, STATUS_POISON};
pub use memory::{eventfd, memfd, pipe, GuestMemory, UVA_BASE};
pub use ring::{write_table, Desc, SplitRing, UsedElem};
