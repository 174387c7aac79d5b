//! The malloc bdev: a RAM disk, SPDK's `bdev_malloc_create`.

use std::sync::Arc;

use crate::memory::{io_in_range, AnonMapping, CompletionRing};
use crate::{Bdev, BdevError, BdevIo, Completion, IoChannel, IoOp, IoStatus};

/// A RAM-backed bdev. Memory is reserved lazily (untouched blocks cost nothing and read as
/// zeroes) and discarded ranges are given back to the kernel.
pub struct MallocBdev {
    name: String,
    block_size: u32,
    num_blocks: u64,
    mem: Arc<AnonMapping>,
}

impl MallocBdev {
    /// A RAM disk of `size_bytes`, which must be a non-zero multiple of `block_size` (512 or
    /// 4096).
    pub fn new(name: &str, size_bytes: u64, block_size: u32) -> Result<Self, BdevError> {
        check_geometry(size_bytes, block_size)?;
        let len = usize::try_from(size_bytes)
            .map_err(|_| BdevError::InvalidGeometry(format!("{size_bytes} bytes is too large")))?;
        Ok(MallocBdev {
            name: name.to_string(),
            block_size,
            num_blocks: size_bytes / u64::from(block_size),
            mem: Arc::new(AnonMapping::new(len)?),
        })
    }
}

/// Rejects block sizes other than 512/4096 and sizes that are zero or not whole blocks.
pub(crate) fn check_geometry(size_bytes: u64, block_size: u32) -> Result<(), BdevError> {
    if block_size != 512 && block_size != 4096 {
        return Err(BdevError::InvalidGeometry(format!(
            "block size {block_size} (must be 512 or 4096)"
        )));
    }
    if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(block_size)) {
        return Err(BdevError::InvalidGeometry(format!(
            "size {size_bytes} is not a non-zero multiple of the block size {block_size}"
        )));
    }
    Ok(())
}

impl Bdev for MallocBdev {
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
        Ok(Box::new(MallocChannel {
            mem: Arc::clone(&self.mem),
            size: self.size_bytes(),
            done: CompletionRing::new(depth.max(1)),
        }))
    }
}

/// A reactor's channel to a [`MallocBdev`]: copies in `submit`, reports on the next poll.
struct MallocChannel {
    mem: Arc<AnonMapping>,
    size: u64,
    done: CompletionRing,
}

impl IoChannel for MallocChannel {
    fn submit(&mut self, io: BdevIo) -> Result<(), BdevIo> {
        if self.done.is_full() {
            return Err(io);
        }
        let status = if !io_in_range(&io, self.size) {
            IoStatus::IoError
        } else {
            let ok = match io.op {
                IoOp::Read => self.mem.read_into(io.offset, &io),
                IoOp::Write => self.mem.write_from(io.offset, &io),
                IoOp::Flush => true,
                IoOp::Discard | IoOp::WriteZeroes => self.mem.zero(io.offset, io.len),
            };
            if ok {
                IoStatus::Success
            } else {
                IoStatus::IoError
            }
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

    fn iov(buf: &mut [u8]) -> IoVec {
        IoVec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    fn run(ch: &mut dyn IoChannel, io: BdevIo) -> IoStatus {
        ch.submit(io).expect("channel has room");
        let mut got = None;
        assert_eq!(ch.poll_completions(&mut |c| got = Some(c.status)), 1);
        got.expect("one completion")
    }

    #[test]
    fn write_then_read_back_across_segments() {
        let bdev = MallocBdev::new("m0", 1 << 20, 512).expect("bdev");
        let mut ch = bdev.open_channel(4).expect("channel");
        let mut a: Vec<u8> = (0..512).map(|i| i as u8).collect();
        let mut b: Vec<u8> = (0..1024).map(|i| (i * 7) as u8).collect();
        let w = [iov(&mut a), iov(&mut b)];
        // SAFETY: the buffers outlive the request, which completes before `run` returns.
        let io = unsafe { BdevIo::with_iovecs(1, IoOp::Write, 4096, 1536, w.as_ptr(), 2) };
        assert_eq!(run(ch.as_mut(), io), IoStatus::Success);

        let mut out = vec![0u8; 1536];
        let r = [iov(&mut out)];
        // SAFETY: as above.
        let io = unsafe { BdevIo::with_iovecs(2, IoOp::Read, 4096, 1536, r.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), io), IoStatus::Success);
        assert_eq!(&out[..512], &a[..]);
        assert_eq!(&out[512..], &b[..]);
    }

    #[test]
    fn discard_and_write_zeroes_read_back_zeroes() {
        let bdev = MallocBdev::new("m0", 64 << 10, 512).expect("bdev");
        let mut ch = bdev.open_channel(4).expect("channel");
        let mut data = vec![0xabu8; 64 << 10];
        let w = [iov(&mut data)];
        // SAFETY: the buffer outlives the request.
        let io = unsafe { BdevIo::with_iovecs(1, IoOp::Write, 0, 64 << 10, w.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), io), IoStatus::Success);
        // Unaligned head and tail around whole pages exercise both zeroing paths.
        let zeroed = [
            (IoOp::Discard, 512u64, 12800u64),
            (IoOp::WriteZeroes, 40960, 1024),
        ];
        for (op, off, len) in zeroed {
            assert_eq!(
                run(ch.as_mut(), BdevIo::without_data(2, op, off, len)),
                IoStatus::Success
            );
        }
        let mut out = vec![0u8; 64 << 10];
        let r = [iov(&mut out)];
        // SAFETY: the buffer outlives the request.
        let io = unsafe { BdevIo::with_iovecs(3, IoOp::Read, 0, 64 << 10, r.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), io), IoStatus::Success);
        for (i, byte) in out.iter().enumerate() {
            let i = i as u64;
            let zero = zeroed
                .iter()
                .any(|&(_, off, len)| i >= off && i < off + len);
            assert_eq!(*byte, if zero { 0 } else { 0xab }, "byte {i}");
        }
    }

    #[test]
    fn out_of_range_and_mismatched_lengths_fail() {
        let bdev = MallocBdev::new("m0", 8192, 512).expect("bdev");
        let mut ch = bdev.open_channel(4).expect("channel");
        let mut buf = vec![0u8; 1024];
        let v = [iov(&mut buf)];
        // SAFETY: the buffer outlives both requests.
        let past_end = unsafe { BdevIo::with_iovecs(1, IoOp::Read, 7680, 1024, v.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), past_end), IoStatus::IoError);
        // SAFETY: as above.
        let short = unsafe { BdevIo::with_iovecs(2, IoOp::Write, 0, 2048, v.as_ptr(), 1) };
        assert_eq!(run(ch.as_mut(), short), IoStatus::IoError);
        let wrap = BdevIo::without_data(3, IoOp::Discard, u64::MAX - 10, 512);
        assert_eq!(run(ch.as_mut(), wrap), IoStatus::IoError);
    }

    #[test]
    fn full_channel_hands_the_request_back() {
        let bdev = MallocBdev::new("m0", 8192, 512).expect("bdev");
        let mut ch = bdev.open_channel(1).expect("channel");
        ch.submit(BdevIo::without_data(1, IoOp::Flush, 0, 0))
            .expect("room for one");
        let back = ch
            .submit(BdevIo::without_data(2, IoOp::Flush, 0, 0))
            .expect_err("full");
        assert_eq!(back.tag, 2);
        assert_eq!(ch.in_flight(), 1);
        assert_eq!(ch.poll_completions(&mut |c| assert_eq!(c.tag, 1)), 1);
        assert_eq!(ch.in_flight(), 0);
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(MallocBdev::new("m", 1000, 512).is_err());
        assert!(MallocBdev::new("m", 0, 512).is_err());
        assert!(MallocBdev::new("m", 8192, 1024).is_err());
    }
}
