//! A front-end that can behave: the handshake QEMU performs, a memory table, started queues,
//! and virtio-blk requests built descriptor by descriptor (so tests can also misbehave at any
//! step).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use super::conn::{Answer, VhostConn};
use super::consts::{blk, blk_header, feat, mem_table, proto, req, u64_payload, vring_addr};
use super::consts::{vring_state, VRING_NOFD};
use super::memory::{eventfd, GuestMemory};
use super::ring::{Desc, SplitRing};

/// The status byte value written before a request, so an untouched one can be told apart.
pub const STATUS_POISON: u8 = 0xee;

/// What became of a virtio-blk request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device returned the chain.
    Used {
        /// The head it returned.
        id: u32,
        /// The used length.
        len: u32,
        /// The status byte, `None` if the device left it untouched.
        status: Option<u8>,
    },
    /// No used element within the timeout.
    NotUsed,
}

impl Outcome {
    /// The status byte, if the chain was returned with one.
    pub fn status(&self) -> Option<u8> {
        match self {
            Outcome::Used { status, .. } => *status,
            Outcome::NotUsed => None,
        }
    }

    /// Short text for reports.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Used { id, len, status } => {
                let s = match status {
                    Some(blk::S_OK) => "OK".to_string(),
                    Some(blk::S_IOERR) => "IOERR".to_string(),
                    Some(blk::S_UNSUPP) => "UNSUPP".to_string(),
                    Some(other) => format!("status {other}"),
                    None => "no status written".to_string(),
                };
                format!("{s} (head {id}, used len {len})")
            }
            Outcome::NotUsed => "no used element".to_string(),
        }
    }
}

/// A started queue: its ring and the eventfds given for it.
pub struct QueueState {
    /// The ring in guest memory.
    pub ring: SplitRing,
    /// The kick eventfd (never written: the target polls).
    pub kick: OwnedFd,
    /// The call eventfd.
    pub call: OwnedFd,
}

/// A raw vhost-user front-end with guest memory.
pub struct Frontend {
    /// The connection.
    pub conn: VhostConn,
    /// Guest memory (not yet told to the target until [`set_mem_table`](Self::set_mem_table)).
    pub mem: GuestMemory,
    /// Virtio features the target offered.
    pub offered: u64,
    /// Protocol features the target offered.
    pub offered_protocol: u64,
    /// Queues started with [`start_queue`](Self::start_queue), by index.
    pub queues: Vec<Option<QueueState>>,
    /// Next free guest address for [`alloc`](Self::alloc).
    next_free: u64,
    /// How long requests may take.
    pub io_timeout: Duration,
}

impl Frontend {
    /// Connects to `socket` and creates `mem_len` bytes of guest memory; sends nothing.
    pub fn connect(socket: &Path, mem_len: usize) -> Result<Frontend, String> {
        let conn = VhostConn::connect(socket, Duration::from_secs(5))
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        let mem = GuestMemory::new(mem_len).map_err(|e| format!("guest memory: {e}"))?;
        let next_free = mem.gpa();
        Ok(Frontend {
            conn,
            mem,
            offered: 0,
            offered_protocol: 0,
            queues: Vec::new(),
            next_free,
            io_timeout: Duration::from_secs(3),
        })
    }

    /// Connects, negotiates (with REPLY_ACK), sets the memory table and starts each queue of
    /// `queues` (index, size).
    pub fn ready(socket: &Path, mem_len: usize, queues: &[(u16, u16)]) -> Result<Frontend, String> {
        let mut fe = Frontend::connect(socket, mem_len)?;
        fe.negotiate()?;
        match fe.set_mem_table() {
            Answer::Ack => {}
            other => return Err(format!("SET_MEM_TABLE: {}", other.describe())),
        }
        for &(q, size) in queues {
            fe.start_queue(q, size)?;
        }
        Ok(fe)
    }

    /// Reserves `len` bytes of guest memory aligned to `align`; returns its guest address.
    pub fn alloc(&mut self, len: usize, align: u64) -> u64 {
        let at = self.next_free.next_multiple_of(align.max(1));
        let end = at + len as u64;
        assert!(
            self.mem.contains(at, len),
            "guest memory exhausted: {len} bytes at {at:#x} (size {})",
            self.mem.len()
        );
        self.next_free = end;
        at
    }

    /// Sends `request` with NEED_REPLY and reads what comes back ([`VhostConn::call`]).
    pub fn call(&self, request: u32, payload: &[u8], fds: &[RawFd]) -> Answer {
        self.conn.call(request, payload, fds)
    }

    fn expect_ack(
        &self,
        what: &str,
        request: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(), String> {
        match self.call(request, payload, fds) {
            Answer::Ack => Ok(()),
            other => Err(format!("{what}: {}", other.describe())),
        }
    }

    fn expect_u64(&self, what: &str, request: u32) -> Result<u64, String> {
        match self.conn.call_flags(request, 0, &[], &[]) {
            Answer::Reply(r) => r
                .u64()
                .ok_or_else(|| format!("{what}: reply of {} bytes", r.payload.len())),
            other => Err(format!("{what}: {}", other.describe())),
        }
    }

    /// The handshake: GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES (REPLY_ACK
    /// and what else is offered of MQ, CONFIG, INFLIGHT_SHMFD, CONFIGURE_MEM_SLOTS),
    /// SET_OWNER, SET_FEATURES (everything offered but EVENT_IDX). Every set is acked.
    pub fn negotiate(&mut self) -> Result<(), String> {
        self.negotiate_protocol()?;
        self.expect_ack("SET_OWNER", req::SET_OWNER, &[], &[])?;
        let acked = self.offered & !feat::RING_EVENT_IDX;
        self.expect_ack("SET_FEATURES", req::SET_FEATURES, &u64_payload(acked), &[])
    }

    /// The first half of [`negotiate`](Self::negotiate): features read, protocol features
    /// (with REPLY_ACK) acked, no SET_OWNER, no SET_FEATURES.
    pub fn negotiate_protocol(&mut self) -> Result<(), String> {
        self.offered = self.expect_u64("GET_FEATURES", req::GET_FEATURES)?;
        if self.offered & feat::PROTOCOL_FEATURES == 0 {
            return Err("target does not offer VHOST_USER_F_PROTOCOL_FEATURES".into());
        }
        self.offered_protocol =
            self.expect_u64("GET_PROTOCOL_FEATURES", req::GET_PROTOCOL_FEATURES)?;
        if self.offered_protocol & proto::REPLY_ACK == 0 {
            return Err("target does not offer REPLY_ACK".into());
        }
        let want = proto::REPLY_ACK
            | proto::MQ
            | proto::CONFIG
            | proto::INFLIGHT_SHMFD
            | proto::CONFIGURE_MEM_SLOTS;
        let acked = self.offered_protocol & want;
        // Not acked itself: REPLY_ACK is only in force once this message is processed.
        self.conn
            .send(req::SET_PROTOCOL_FEATURES, 0, &u64_payload(acked), &[])
            .map_err(|e| format!("SET_PROTOCOL_FEATURES: {e}"))?;
        Ok(())
    }

    /// SET_MEM_TABLE with the one region of [`mem`](Self::mem).
    pub fn set_mem_table(&self) -> Answer {
        self.call(
            req::SET_MEM_TABLE,
            &mem_table(1, &[self.mem.region()]),
            &[self.mem.fd()],
        )
    }

    /// Lays out a ring of `size` for queue `q` in guest memory and starts it the way QEMU
    /// does: SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL,
    /// SET_VRING_ENABLE 1, each acked.
    pub fn start_queue(&mut self, q: u16, size: u16) -> Result<(), String> {
        let base = self.alloc(SplitRing::bytes(size) as usize, 4096);
        let ring = SplitRing::at(&self.mem, size, base);
        self.start_queue_with(q, ring)
    }

    /// [`start_queue`](Self::start_queue) with a ring laid out by the caller.
    pub fn start_queue_with(&mut self, q: u16, ring: SplitRing) -> Result<(), String> {
        let i = u32::from(q);
        let at = |s: &str| format!("queue {q}: {s}");
        self.expect_ack(
            &at("SET_VRING_NUM"),
            req::SET_VRING_NUM,
            &vring_state(i, u32::from(ring.size)),
            &[],
        )?;
        self.expect_ack(
            &at("SET_VRING_BASE"),
            req::SET_VRING_BASE,
            &vring_state(i, 0),
            &[],
        )?;
        let m = &self.mem;
        self.expect_ack(
            &at("SET_VRING_ADDR"),
            req::SET_VRING_ADDR,
            &vring_addr(
                i,
                0,
                m.uva_of(ring.desc),
                m.uva_of(ring.used),
                m.uva_of(ring.avail),
                0,
            ),
            &[],
        )?;
        let kick = eventfd(true).map_err(|e| format!("eventfd: {e}"))?;
        let call = eventfd(true).map_err(|e| format!("eventfd: {e}"))?;
        self.expect_ack(
            &at("SET_VRING_KICK"),
            req::SET_VRING_KICK,
            &u64_payload(u64::from(q)),
            &[kick.as_raw_fd()],
        )?;
        self.expect_ack(
            &at("SET_VRING_CALL"),
            req::SET_VRING_CALL,
            &u64_payload(u64::from(q)),
            &[call.as_raw_fd()],
        )?;
        self.expect_ack(
            &at("SET_VRING_ENABLE"),
            req::SET_VRING_ENABLE,
            &vring_state(i, 1),
            &[],
        )?;
        let idx = usize::from(q);
        if self.queues.len() <= idx {
            self.queues.resize_with(idx + 1, || None);
        }
        self.queues[idx] = Some(QueueState { ring, kick, call });
        Ok(())
    }

    /// The state of started queue `q` (panics if it was not started).
    pub fn queue(&mut self, q: u16) -> &mut QueueState {
        self.queues
            .get_mut(usize::from(q))
            .and_then(Option::as_mut)
            .unwrap_or_else(|| panic!("queue {q} was not started"))
    }

    /// A kick/call/err payload: the index, plus [`VRING_NOFD`] when `nofd`.
    pub fn vring_fd_payload(q: u64, nofd: bool) -> Vec<u8> {
        u64_payload(q | if nofd { VRING_NOFD } else { 0 })
    }

    // --- virtio-blk -------------------------------------------------------------------------

    /// A request header in guest memory; returns its address.
    pub fn header(&mut self, request_type: u32, sector: u64) -> u64 {
        let at = self.alloc(16, 16);
        self.mem.write(at, &blk_header(request_type, sector));
        at
    }

    /// A poisoned status byte in guest memory; returns its address.
    pub fn status_byte(&mut self) -> u64 {
        let at = self.alloc(1, 1);
        self.mem.fill(at, 1, STATUS_POISON);
        at
    }

    /// A data buffer of `len` bytes (page aligned) filled with `byte`; returns its address.
    pub fn buffer(&mut self, len: usize, byte: u8) -> u64 {
        let at = self.alloc(len, 4096);
        self.mem.fill(at, len, byte);
        at
    }

    /// Submits `descs` as one chain on queue `q` and waits for its used element; the status
    /// is read at `status` (if given and in guest memory).
    pub fn request(&mut self, q: u16, descs: &[Desc], status: Option<u64>) -> Outcome {
        let (mem, ring) = self.parts(q);
        ring.submit(mem, descs);
        let timeout = self.io_timeout;
        let (mem, ring) = self.parts(q);
        Self::collect(mem, ring, status, timeout)
    }

    /// Waits for the next used element of queue `q` and reads the status byte at `status`.
    pub fn wait(&mut self, q: u16, status: Option<u64>) -> Outcome {
        let timeout = self.io_timeout;
        let (mem, ring) = self.parts(q);
        Self::collect(mem, ring, status, timeout)
    }

    /// Guest memory and queue `q`'s ring, borrowed together.
    pub fn parts(&mut self, q: u16) -> (&GuestMemory, &mut SplitRing) {
        let ring = self
            .queues
            .get_mut(usize::from(q))
            .and_then(Option::as_mut)
            .map(|s| &mut s.ring)
            .unwrap_or_else(|| panic!("queue {q} was not started"));
        (&self.mem, ring)
    }

    fn collect(
        mem: &GuestMemory,
        ring: &mut SplitRing,
        status: Option<u64>,
        timeout: Duration,
    ) -> Outcome {
        match ring.wait_used(mem, timeout) {
            Some(e) => Outcome::Used {
                id: e.id,
                len: e.len,
                status: status
                    .filter(|&s| mem.contains(s, 1))
                    .map(|s| mem.read(s, 1)[0])
                    .filter(|&b| b != STATUS_POISON),
            },
            None => Outcome::NotUsed,
        }
    }

    /// A well-formed write of `data` at `sector` (header, one data descriptor, status).
    pub fn write(&mut self, q: u16, sector: u64, data: &[u8]) -> Outcome {
        let hdr = self.header(blk::T_OUT, sector);
        let buf = self.alloc(data.len(), 4096);
        self.mem.write(buf, data);
        let st = self.status_byte();
        self.request(
            q,
            &[
                Desc::readable(hdr, 16),
                Desc::readable(buf, data.len() as u32),
                Desc::writable(st, 1),
            ],
            Some(st),
        )
    }

    /// A well-formed read of `len` bytes at `sector` into a poisoned buffer; returns the
    /// outcome and the buffer.
    pub fn read(&mut self, q: u16, sector: u64, len: usize) -> (Outcome, Vec<u8>) {
        let hdr = self.header(blk::T_IN, sector);
        let buf = self.buffer(len, 0x5a);
        let st = self.status_byte();
        let out = self.request(
            q,
            &[
                Desc::readable(hdr, 16),
                Desc::writable(buf, len as u32),
                Desc::writable(st, 1),
            ],
            Some(st),
        );
        (out, self.mem.read(buf, len))
    }
}
