//! The null bdev: reads return zeroes, writes are dropped (SPDK's `bdev_null_create`).

use crate::malloc::check_geometry;
use crate::memory::{io_in_range, zero_iovecs, CompletionRing};
use crate::{Bdev, BdevError, BdevIo, Completion, IoChannel, IoOp, IoStatus};

/// A bdev that stores nothing: for measuring the target without a device behind it.
pub struct NullBdev {
    name: String,
    block_size: u32,
    num_blocks: u64,
}

impl NullBdev {
    /// A null disk that claims `size_bytes` (a non-zero multiple of `block_size`).
    pub fn new(name: &str, size_bytes: u64, block_size: u32) -> Result<Self, BdevError> {
        check_geometry(size_bytes, block_size)?;
        Ok(NullBdev {
            name: name.to_string(),
            block_size,
            num_blocks: size_bytes / u64::from(block_size),
        })
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
        self.num_blocks
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
            size: self.size_bytes(),
            done: CompletionRing::new(depth.max(1)),
        }))
    }
}

struct NullChannel {
    size: u64,
    done: CompletionRing,
}

impl IoChannel for NullChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        if self.done.is_full() {
            return Err(io);
        }
        let status = if !io_in_range(&io, self.size) {
            IoStatus::IoError
        } else {
            if io.op == IoOp::Read {
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
}
