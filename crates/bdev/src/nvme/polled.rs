//! The channel of a polled NVMe bdev ([`NvmeOptions::poll`](super::NvmeOptions::poll)): reads,
//! writes and discards on an `IORING_SETUP_IOPOLL` ring; flushes and write-zeroes, the
//! commands without a data buffer, on a second ring of the same namespace that completes by
//! interrupt.
//!
//! Why two rings. A passthrough command without a data buffer has no bio, and the kernel
//! cannot poll it: it queues the command on an interrupt-driven hardware queue. On Linux before
//! 6.5 the io_uring still polls that command, through the command's `cookie`, a field that
//! shares its storage with the task-work callback the interrupt sets. Between the interrupt and
//! the task work, `nvme_ns_chr_uring_cmd_iopoll` hands the callback's address to `bio_poll` as if
//! it were a bio, and the kernel takes a general protection fault in `bio_poll`. So a guest that
//! flushes a polled disk could crash such a host. `scripts/nvme-vm-test.sh` caught it on
//! Debian's 6.1: the fault's "bio" was an address inside `nvme_core`. Linux 6.5 (commit
//! 9408d8a37e6c, "nvme: improved uring polling") polls the request instead. Those commands
//! complete by interrupt in any case, so keeping them off the polled ring costs nothing on any
//! kernel.
//!
//! The Flush still covers every write completed before it: an NVMe Flush applies to all
//! commands of the namespace that completed before it was submitted, whatever queue they used.

use crate::{BdevIo, Completion, IoChannel, IoOp};

/// Most flushes and write-zeroes one polled channel holds in flight; more wait in the caller
/// (`submit` hands them back) until some complete.
pub(super) const DATALESS_DEPTH: usize = 32;

/// Whether `op` carries no data buffer, so must not be polled.
fn dataless(op: IoOp) -> bool {
    matches!(op, IoOp::Flush | IoOp::WriteZeroes)
}

/// A polled channel: `polled` for commands with data, `interrupt` for the others.
pub(super) struct PolledChannel {
    polled: Box<dyn IoChannel>,
    interrupt: Box<dyn IoChannel>,
}

impl PolledChannel {
    /// Routes commands with data to `polled`, flushes and write-zeroes to `interrupt`.
    pub(super) fn new(polled: Box<dyn IoChannel>, interrupt: Box<dyn IoChannel>) -> Self {
        PolledChannel { polled, interrupt }
    }
}

impl IoChannel for PolledChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        if dataless(io.op) {
            self.interrupt.submit(io)
        } else {
            self.polled.submit(io)
        }
    }

    fn flush_submissions(&mut self) {
        self.polled.flush_submissions();
        if self.interrupt.in_flight() > 0 {
            self.interrupt.flush_submissions();
        }
    }

    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        let mut n = self.polled.poll_completions(done);
        if self.interrupt.in_flight() > 0 {
            n += self.interrupt.poll_completions(done);
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.polled.in_flight() + self.interrupt.in_flight()
    }

    fn submit_failures(&self) -> u64 {
        self.polled.submit_failures() + self.interrupt.submit_failures()
    }

    /// `None`: the polled ring's completions are found only by polling, so a reactor keeps
    /// polling while any request is in flight (the interrupt ring's CQEs are read then too).
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoStatus;
    use std::sync::{Arc, Mutex};

    /// Records what it is given and completes it on the next poll; full at `room`.
    struct Recorder {
        log: Arc<Mutex<Vec<IoOp>>>,
        held: Vec<Completion>,
        room: usize,
        failures: u64,
        flushed: Arc<Mutex<usize>>,
    }

    impl IoChannel for Recorder {
        fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
            if self.held.len() == self.room {
                return Err(io);
            }
            self.log.lock().expect("test lock").push(io.op);
            self.held.push(io.complete(IoStatus::Success));
            Ok(())
        }
        fn flush_submissions(&mut self) {
            *self.flushed.lock().expect("test lock") += 1;
        }
        fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
            let n = self.held.len();
            self.held.drain(..).for_each(done);
            n
        }
        fn in_flight(&self) -> usize {
            self.held.len()
        }
        fn submit_failures(&self) -> u64 {
            self.failures
        }
    }

    type Log = Arc<Mutex<Vec<IoOp>>>;

    fn recorder(room: usize, failures: u64) -> (Box<dyn IoChannel>, Log, Arc<Mutex<usize>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let flushed = Arc::new(Mutex::new(0));
        let r = Recorder {
            log: log.clone(),
            held: Vec::new(),
            room,
            failures,
            flushed: flushed.clone(),
        };
        (Box::new(r), log, flushed)
    }

    #[test]
    fn commands_without_data_never_reach_the_polled_ring() {
        let (polled, polled_log, polled_flushes) = recorder(8, 1);
        let (interrupt, interrupt_log, interrupt_flushes) = recorder(2, 2);
        let mut ch = PolledChannel::new(polled, interrupt);
        assert_eq!(ch.completion_fd(), None);
        let ops = [
            IoOp::Read,
            IoOp::Flush,
            IoOp::Write,
            IoOp::WriteZeroes,
            IoOp::Discard,
        ];
        for (tag, op) in ops.into_iter().enumerate() {
            assert!(ch
                .submit(BdevIo::without_data(tag as u32, op, 0, 0))
                .is_ok());
        }
        // The interrupt ring is full: the next flush is handed back, not sent to the other.
        let back = ch.submit(BdevIo::without_data(9, IoOp::Flush, 0, 0));
        assert_eq!(back.map_err(|io| io.tag), Err(9));
        assert_eq!(
            *polled_log.lock().expect("test lock"),
            vec![IoOp::Read, IoOp::Write, IoOp::Discard]
        );
        assert_eq!(
            *interrupt_log.lock().expect("test lock"),
            vec![IoOp::Flush, IoOp::WriteZeroes]
        );
        assert_eq!((ch.in_flight(), ch.submit_failures()), (5, 3));
        ch.flush_submissions();
        assert_eq!(
            (
                *polled_flushes.lock().expect("test lock"),
                *interrupt_flushes.lock().expect("test lock")
            ),
            (1, 1)
        );
        let mut tags = Vec::new();
        assert_eq!(ch.poll_completions(&mut |c| tags.push(c.tag)), 5);
        tags.sort_unstable();
        assert_eq!(tags, vec![0, 1, 2, 3, 4]);
        assert_eq!(ch.in_flight(), 0);
        // Nothing in flight on the interrupt ring: it is not entered.
        ch.flush_submissions();
        assert_eq!(
            (
                *polled_flushes.lock().expect("test lock"),
                *interrupt_flushes.lock().expect("test lock")
            ),
            (2, 1)
        );
    }

    #[test]
    fn the_dataless_ring_costs_little_memory() {
        let bytes = super::super::channel::footprint_with(DATALESS_DEPTH, 0);
        println!("dataless channel: {bytes} bytes");
        assert!(bytes < 128 << 10, "{bytes} bytes");
    }
}
