//! Step 1: take requests from the avail ring. Heads a previous backend left in flight (inflight
//! tracking) go first, in their original order; then new heads, at most one ring's worth per
//! pass, and none while the channel's backlog is non-empty.

use log::warn;
use spinblk_reactor::Tick;

use super::finish::Outcome;
use super::poller::VirtqPoller;
use crate::request::{BlkRequest, MAX_IOVECS};

/// How many pending avail entries' first descriptors a pass starts loading up front.
const PREFETCH_DESCS: u16 = 32;

/// Passes in a row that took nothing after which a pass also prefetches the next head's
/// guessed descriptor (`SplitRing::prefetch_guessed_desc`): a driver that submits one request
/// at a time leaves many such passes between requests, one that keeps the ring busy a pass or
/// two, and there the guess only pulls lines the driver is writing away from its core.
const GUESS_AFTER_IDLE_POPS: u8 = 4;

impl VirtqPoller {
    /// Pops and starts new requests; returns whether any was taken.
    pub(super) fn pop_requests(&mut self) -> bool {
        // After a pass that took some, the driver is likely still filling the entry's line:
        // the hint would only pull it away from the driver's core.
        if self.idle_pops > 0 {
            self.ring.prefetch_next_avail_entry();
            if self.idle_pops >= GUESS_AFTER_IDLE_POPS {
                self.ring.prefetch_guessed_desc();
            }
        }
        if self.driver_is_broken() {
            return false;
        }
        let size = self.ring.size();
        let avail = self.ring.avail_idx();
        // Overlap the cache misses of a batch (lines the driver just wrote): the first
        // descriptors of up to PREFETCH_DESCS pending entries now, and before each chain is
        // parsed, the next chain's header.
        let new = self.ring.pending(avail);
        for ahead in 0..new.min(PREFETCH_DESCS) {
            self.ring.prefetch_desc(ahead);
        }
        let mut popped = 0u16;
        // One clock read per pass, and none on idle passes.
        let mut now: Option<Tick> = None;
        while popped < size && self.backlog.is_empty() {
            let head = if let Some(head) = self.resubmit.pop_front() {
                head
            } else if let left @ 1.. = self.ring.pending(avail) {
                if left > 1 {
                    self.ring.prefetch_first_buffer(&self.mem, 1);
                }
                let head = self.ring.pop_head();
                if head >= size || self.slots[usize::from(head)].busy {
                    // A head outside the ring, or one already in flight: a broken driver. There
                    // is no chain we may answer; count it and go on.
                    self.stats.dropped += 1;
                    popped += 1;
                    continue;
                }
                if let Some(inf) = self.inflight.as_mut() {
                    inf.mark_popped(head);
                }
                head
            } else {
                break;
            };
            let now = *now.get_or_insert_with(Tick::now);
            self.start_request(head, now);
            popped += 1;
        }
        self.idle_pops = if popped == 0 {
            self.idle_pops.saturating_add(1)
        } else {
            0
        };
        popped > 0
    }

    /// Checks the avail index once per pass: a driver more than a ring ahead of us is broken
    /// (virtio 1.2, 2.7.13). Reported once; the queue then takes nothing more from it.
    fn driver_is_broken(&mut self) -> bool {
        if !self.broken && self.resubmit.is_empty() {
            let ahead = self.ring.pending(self.ring.avail_idx());
            if ahead > self.ring.size() {
                warn!("virtqueue: the driver's avail index is invalid; ignoring this queue until it is reset");
                self.stats.dropped += 1;
                self.broken = true;
            }
        }
        self.broken
    }

    /// Parses the chain at `head` and submits it, or finishes it at once (refusals, GET_ID).
    fn start_request(&mut self, head: u16, now: Tick) {
        let h = usize::from(head);
        let iov = &mut self.iovecs[h * MAX_IOVECS..(h + 1) * MAX_IOVECS];
        let chain = self.ring.chain(&self.mem, head);
        match BlkRequest::parse_chain(chain, &self.mem, &self.limits, iov) {
            Ok(req) => self.submit(head, req, now),
            Err(refused) => self.finish(head, Outcome::Refused(refused)),
        }
    }
}
