//! Step 5, the one place every request ends, whatever happened to it (Firecracker's `finish`):
//! the status byte, the used element, statistics, the slot, the inflight record. Then, once per
//! pass, `publish` makes the pass's used elements visible with one store of the used index,
//! retires their inflight records, and signals the guest at most once.

use spinblk_bdev::IoStatus;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

use super::poller::VirtqPoller;
use crate::request::{BlkRequest, ParseError, Refused, RequestKind, StatusByte, MAX_IOVECS};

/// How a request ended.
pub(super) enum Outcome {
    /// Refused while parsing (with or without a usable status byte).
    Refused(Refused),
    /// Answered by the target itself (GET_ID), `data_written` bytes into the guest's buffers.
    Answered {
        req: BlkRequest,
        data_written: usize,
    },
    /// The bdev finished the request in the head's slot.
    Completed(IoStatus),
}

impl VirtqPoller {
    /// Ends the request at `head`: writes its status byte, pushes its used element (visible at
    /// the next `publish`), counts it, and frees its slot.
    pub(super) fn finish(&mut self, head: u16, outcome: Outcome) {
        // Device-written data iovecs to log (reads and GET_ID), whatever the status.
        let mut data_iovecs = 0usize;
        let (status, place, used_len) = match outcome {
            Outcome::Refused(r) => {
                match r.error {
                    ParseError::Unsupported(_) => self.stats.unsupported += 1,
                    _ => self.stats.io_errors += 1,
                }
                if r.status.is_none() {
                    // Nowhere to put a status: the element goes back with length 0.
                    self.stats.dropped += 1;
                }
                (r.error.status(), r.status, u32::from(r.status.is_some()))
            }
            Outcome::Answered { req, data_written } => {
                data_iovecs = req.iovcnt;
                self.stats.count(req.kind, data_written as u64);
                (
                    VIRTIO_BLK_S_OK as u8,
                    Some(req.status),
                    data_written as u32 + 1,
                )
            }
            Outcome::Completed(io_status) => {
                let Some(slot) = self.slots.get_mut(usize::from(head)).filter(|s| s.busy) else {
                    // A completion for a slot that is not busy: a channel bug; never publish it.
                    return;
                };
                slot.busy = false;
                slot.finished_pass = self.pass;
                let slot = *slot;
                if slot.kind == RequestKind::Read {
                    data_iovecs = usize::from(slot.iovcnt);
                }
                self.in_flight -= 1;
                self.release_table(slot.table);
                if let Some(t) = slot.submitted {
                    self.stats
                        .record_latency(slot.kind, self.reaped_at.ticks_since(t));
                }
                let (status, used_len) = match io_status {
                    IoStatus::Success => {
                        self.stats.count(slot.kind, slot.len);
                        (VIRTIO_BLK_S_OK, slot.used_len)
                    }
                    IoStatus::IoError => {
                        self.stats.count(slot.kind, 0);
                        self.stats.io_errors += 1;
                        (VIRTIO_BLK_S_IOERR, 1)
                    }
                    IoStatus::Unsupported => {
                        self.stats.count(slot.kind, 0);
                        self.stats.unsupported += 1;
                        (VIRTIO_BLK_S_UNSUPP, 1)
                    }
                };
                (status as u8, Some(slot.status), used_len)
            }
        };
        if let Some(StatusByte { host, .. }) = place {
            // SAFETY: parse resolved `host` for one byte of guest memory in the table the
            // request was parsed with, which is still mapped (current or retired until now).
            unsafe { host.write_volatile(status) };
        }
        if let Some(inf) = self.inflight.as_ref() {
            inf.before_used(head);
        }
        if self.log.is_some() {
            self.log_request(head, data_iovecs, place);
        }
        self.ring.push_used(head, used_len);
        self.used_pending = true;
    }

    /// Marks what this request wrote into guest memory: device-written data (its iovecs, turned
    /// back into guest addresses), the status byte, and the used element about to be written.
    fn log_request(&self, head: u16, data_iovecs: usize, place: Option<StatusByte>) {
        let Some(l) = &self.log else { return };
        let h = usize::from(head);
        for v in &self.iovecs[h * MAX_IOVECS..h * MAX_IOVECS + data_iovecs] {
            if let Some(gpa) = self.guest_addr(v.iov_base.cast()) {
                l.log.mark(gpa, v.iov_len as u64);
            }
        }
        if let Some(s) = place {
            l.log.mark(s.gpa, 1);
        }
        let idx = self.ring.next_used();
        l.log.mark(l.used_gpa + self.ring.used_elem_offset(idx), 8);
    }

    /// If the frontend shrank a guest memory file under us since the last pass (a repaired
    /// SIGBUS), every request the bdev finished in this pass may have copied from or into
    /// the zero pages put there instead: they end with IOERR (status and used length are
    /// rewritten before the used index makes them visible), and the queue takes nothing more.
    /// Checked once per pass, and only when there is something to publish.
    fn fail_requests_on_vanished_memory(&mut self) {
        let repaired = self.mem.repaired_faults()
            + self
                .retired
                .iter()
                .map(|r| r.mem.repaired_faults())
                .sum::<u64>();
        if repaired <= self.repaired_seen {
            return;
        }
        self.repaired_seen = repaired;
        self.broken = true;
        let mut i = self.ring.published_used();
        while i != self.ring.next_used() {
            let head = self.ring.used_head(i);
            if let Some(slot) = self.slots.get(usize::from(head)) {
                if slot.finished_pass == self.pass {
                    // SAFETY: the status byte of a request finished in this pass, in a table
                    // that is still mapped (retired tables are released only after this).
                    unsafe { slot.status.host.write_volatile(VIRTIO_BLK_S_IOERR as u8) };
                    self.ring.set_used_len(i, 1);
                    self.stats.io_errors += 1;
                }
            }
            i = i.wrapping_add(1);
        }
    }

    /// The guest address of a host address in the current or a retired memory table.
    fn guest_addr(&self, host: *const u8) -> Option<u64> {
        self.mem
            .guest_addr(host)
            .or_else(|| self.retired.iter().find_map(|r| r.mem.guest_addr(host)))
    }

    /// Publishes the pass's used elements with one store of the used index, clears their
    /// inflight records, and signals the guest if it wants to be; returns whether anything was
    /// published.
    pub(super) fn publish(&mut self) -> bool {
        if !self.used_pending {
            return false;
        }
        self.used_pending = false;
        self.fail_requests_on_vanished_memory();
        let Some(old) = self.ring.publish_used() else {
            return false;
        };
        let new = self.ring.next_used();
        let completed = u64::from(new.wrapping_sub(old));
        if let Some(l) = &self.log {
            l.log.mark(l.used_gpa + 2, 2);
        }
        if let Some(inf) = self.inflight.as_ref() {
            let ring = &self.ring;
            inf.after_publish(old, new, |i| ring.used_head(i));
        }
        self.notify_guest(completed);
        true
    }
}
