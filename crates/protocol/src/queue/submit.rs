//! Step 3: a parsed request takes the slot of its head and goes to the bdev channel; a full
//! channel hands it back and it waits in the backlog (retried before anything new is popped,
//! like SPDK's NOMEM queue). GET_ID is answered here, from the serial.

use spinblk_bdev::{BdevIo, IoOp, QosKind};
use spinblk_reactor::Tick;

use super::finish::Outcome;
use super::poller::{Slot, VirtqPoller};
use crate::request::{BlkRequest, RequestKind, ID_BYTES, MAX_IOVECS};

impl VirtqPoller {
    /// Submits `req`, parsed from the chain at `head`.
    pub(super) fn submit(&mut self, head: u16, req: BlkRequest, now: Tick) {
        let Some(op) = req.kind.bdev_op() else {
            self.answer_get_id(head, &req);
            return;
        };
        let h = usize::from(head);
        self.slots[h] = Slot {
            busy: true,
            kind: req.kind,
            status: req.status,
            used_len: req.used_len(),
            len: req.len,
            iovcnt: req.iovcnt as u16,
            submitted: Some(now),
            table: self.generation,
            finished_pass: 0,
        };
        self.in_flight += 1;
        self.users += 1;
        let io = if req.iovcnt > 0 {
            // SAFETY: the iovecs were just filled by parse from guest memory that `self.mem`
            // (or, after a table change, `self.retired`) keeps mapped until this request
            // completes; slot `h`'s iovec range is not reused while the slot is busy.
            unsafe {
                BdevIo::with_iovecs(
                    u32::from(head),
                    op,
                    req.offset,
                    req.len,
                    self.iovecs[h * MAX_IOVECS..].as_ptr(),
                    req.iovcnt,
                )
            }
        } else {
            BdevIo::without_data(u32::from(head), op, req.offset, req.len)
        };
        let io = io.with_durable(req.kind == RequestKind::Write && !self.write_cache);
        if !self.throttled.is_empty() || !self.admitted(&io) {
            self.throttled.push_back(io);
            return;
        }
        if let Err(io) = self.channel.submit(io) {
            self.backlog.push_back(io);
        }
    }

    /// Whether the bdev's I/O limits let `io` go now (charging it if so).
    fn admitted(&mut self, io: &BdevIo) -> bool {
        let Some(qos) = self.qos.as_mut() else {
            return true;
        };
        let kind = match io.op {
            IoOp::Read => QosKind::Read,
            IoOp::Write => QosKind::Write,
            _ => QosKind::Other,
        };
        let bytes = if kind == QosKind::Other { 0 } else { io.len };
        qos.try_admit(kind, bytes)
    }

    /// Submits throttled requests the limits now admit, oldest first; returns whether any went.
    pub(super) fn admit_throttled(&mut self) -> bool {
        let mut any = false;
        while self.backlog.is_empty() {
            let Some(io) = self.throttled.pop_front() else {
                break;
            };
            if !self.admitted(&io) {
                self.throttled.push_front(io);
                break;
            }
            any = true;
            if let Err(io) = self.channel.submit(io) {
                self.backlog.push_back(io);
            }
        }
        any
    }

    /// Retries requests a full channel handed back earlier; returns whether any went through.
    pub(super) fn submit_backlog(&mut self) -> bool {
        let mut any = false;
        while let Some(io) = self.backlog.pop_front() {
            match self.channel.submit(io) {
                Ok(()) => any = true,
                Err(io) => {
                    self.backlog.push_front(io);
                    break;
                }
            }
        }
        any
    }

    /// GET_ID: copy the serial into the guest buffers and finish at once.
    fn answer_get_id(&mut self, head: u16, req: &BlkRequest) {
        let h = usize::from(head);
        let mut left = &self.device.serial[..];
        for v in &self.iovecs[h * MAX_IOVECS..h * MAX_IOVECS + req.iovcnt] {
            let n = left.len().min(v.iov_len);
            // SAFETY: parse translated this iovec from guest memory mapped by self.mem, device-
            // writable and at least iov_len bytes long; the serial is our own array.
            unsafe { std::ptr::copy_nonoverlapping(left.as_ptr(), v.iov_base.cast::<u8>(), n) };
            left = &left[n..];
        }
        let written = ID_BYTES - left.len();
        self.finish(
            head,
            Outcome::Answered {
                req: *req,
                data_written: written,
            },
        );
    }
}
