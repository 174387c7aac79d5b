//! The null bdev: reads return zeroes, writes are dropped (SPDK's `bdev_null_create`). With
//! [`NullBdev::read_zeroes`] off, reads leave the buffer as it was, as SPDK's null bdev does.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::malloc::check_geometry;
use crate::memory::{io_in_range, zero_iovecs, CompletionRing};
use crate::{Bdev, BdevError, BdevIo, Completion, IoChannel, IoOp, IoStatus};

/// A bdev that stores nothing: for measuring the target without a device behind it. It can
/// take any size at any time ([`Bdev::resize`]).
pub struct NullBdev {
    name: String,
    block_size: u32,
    num_blocks: AtomicU64,
    read_zeroes: bool,
}

impl NullBdev {
    /// A null disk that claims `size_bytes` (a non-zero multiple of `block_size`).
    pub fn new(name: &str, size_bytes: u64, block_size: u32) -> Result<Self, BdevError> {
        check_geometry(size_bytes, block_size)?;
        Ok(NullBdev {
            name: name.to_string(),
            block_size,
            num_blocks: AtomicU64::new(size_bytes / u64::from(block_size)),
            read_zeroes: true,
        })
    }

    /// Whether reads fill the guest's buffers with zeroes (the default). Off, a read completes
    /// without touching them, as SPDK's null bdev does: the guest sees what its own buffer
    /// held, nothing of anyone else's, and the target saves writing every byte it "reads".
    pub fn read_zeroes(mut self, on: bool) -> Self {
        self.read_zeroes = on;
        self
    }
}

impl Bdev for NullBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Relaxed)
    }
    fn supports(&self, _op: IoOp) -> bool {
        true
    }
    /// A completion ring of `depth` entries.
    fn channel_memory(&self, depth: usize) -> usize {
        CompletionRing::footprint(depth)
    }
    fn open_channel(&self, depth: usize) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(NullChannel {
            done: CompletionRing::new(depth.max(1)),
            read_zeroes: self.read_zeroes,
        }))
    }

    /// Any non-zero multiple of the block size.
    fn resize(&self, new_size_bytes: u64) -> Result<(), BdevError> {
        check_geometry(new_size_bytes, self.block_size)?;
        self.num_blocks.store(
            new_size_bytes / u64::from(self.block_size),
            Ordering::Relaxed,
        );
        Ok(())
    }
}

/// A reactor's channel to a [`NullBdev`]. It has no memory to protect, so it checks only that a
/// request's range does not overflow and its iovecs add up; the size is the protocol layer's to
/// check (channels never read the shared size).
struct NullChannel {
    done: CompletionRing,
    read_zeroes: bool,
}

impl IoChannel for NullChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        if self.done.is_full() {
            return Err(io);
        }
        let status = if !io_in_range(&io, u64::MAX) {
            IoStatus::IoError
        } else {
            if io.op == IoOp::Read && self.read_zeroes {
                zero_iovecs(&io);
            }
            IoStatus::Success
        };
        self.done.push(io.complete(status));
        Ok(())
    }

    fn poll_completions(&mut self, done: &mut dyn FnMut(Completion)) -> usize {
        self.done.drain(done)
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoVec;

    #[test]
    fn reads_zeroes_and_drops_writes() {
        let bdev = NullBdev::new("n0", 1 << 20, 4096).expect("bdev");
        assert_eq!(bdev.num_blocks(), 256);
        let mut ch = bdev.open_channel(2).expect("channel");
        let mut buf = vec![0x5au8; 4096];
        let v = [IoVec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 4096,
        }];
        // SAFETY: the buffer outlives both requests, which complete synchronously.
        let w = unsafe { BdevIo::with_iovecs(1, IoOp::Write, 0, 4096, v.as_ptr(), 1) };
        ch.submit(w).expect("room");
        // SAFETY: as above.
        let r = unsafe { BdevIo::with_iovecs(2, IoOp::Read, 0, 4096, v.as_ptr(), 1) };
        ch.submit(r).expect("room");
        let mut tags = vec![];
        ch.poll_completions(&mut |c| {
            assert_eq!(c.status, IoStatus::Success);
            tags.push(c.tag)
        });
        assert_eq!(tags, [1, 2]);
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn without_read_zeroes_reads_leave_the_buffer() {
        let bdev = NullBdev::new("n1", 1 << 20, 512)
            .expect("bdev")
            .read_zeroes(false);
        let mut ch = bdev.open_channel(1).expect("channel");
        let mut buf = vec![0x5au8; 4096];
        let v = [IoVec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 4096,
        }];
        // SAFETY: the buffer outlives the request, which completes synchronously.
        let r = unsafe { BdevIo::with_iovecs(7, IoOp::Read, 4096, 4096, v.as_ptr(), 1) };
        ch.submit(r).expect("room");
        let mut done = vec![];
        ch.poll_completions(&mut |c| done.push((c.tag, c.status)));
        assert_eq!(done, [(7, IoStatus::Success)]);
        assert!(buf.iter().all(|&b| b == 0x5a), "the buffer is untouched");
    }

    /// Any size at any time; a channel opened before serves the new range (the protocol layer
    /// checks the size, not the channel).
    #[test]
    fn resize_to_any_size() {
        let bdev = NullBdev::new("n0", 1 << 20, 512).expect("bdev");
        let mut ch = bdev.open_channel(1).expect("channel");
        bdev.resize(1 << 40).expect("grow to 1 TiB");
        assert_eq!(bdev.size_bytes(), 1 << 40);
        bdev.resize(4096).expect("shrink");
        assert_eq!(bdev.num_blocks(), 8);
        assert!(bdev.resize(4097).is_err());
        assert!(bdev.resize(0).is_err());
        assert_eq!(bdev.num_blocks(), 8);
        bdev.resize(1 << 40).expect("grow");
        let mut buf = vec![0x5au8; 512];
        let v = [IoVec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 512,
        }];
        // SAFETY: the buffer outlives the request, which completes synchronously.
        let r = unsafe { BdevIo::with_iovecs(1, IoOp::Read, (1 << 40) - 512, 512, v.as_ptr(), 1) };
        ch.submit(r).expect("room");
        let mut st = None;
        ch.poll_completions(&mut |c| st = Some(c.status));
        assert_eq!(st, Some(IoStatus::Success));
        assert!(buf.iter().all(|&b| b == 0));
        // An overflowing range is still refused.
        ch.submit(BdevIo::without_data(2, IoOp::Discard, u64::MAX - 10, 512))
            .expect("room");
        ch.poll_completions(&mut |c| st = Some(c.status));
        assert_eq!(st, Some(IoStatus::IoError));
    }
}
