//! Parsing one virtio-blk request out of a descriptor chain: every guest-supplied address,
//! length, direction and sector is checked here, before anything touches a bdev.

use std::fmt;

use spinblk_bdev::{IoOp, IoVec};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{ByteValued, Le32, Le64};

use crate::memory::GuestMemory;
use crate::ring::{Chain, Desc};

/// virtio-blk sectors are always 512 bytes, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// Data segments a request may carry (`seg_max` in the config space). SPDK uses the same.
pub const SEG_MAX: u32 = 126;
/// Largest single data segment (`size_max` in the config space).
pub const SIZE_MAX: u32 = 1 << 20;
/// Host iovecs one request may need: data segments that straddle guest memory regions split.
pub const MAX_IOVECS: usize = SEG_MAX as usize + 2;
/// Largest read or write: what `seg_max` segments of `size_max` bytes add up to (126 MiB). A
/// larger request is refused, so no request can make a bdev stage more than this.
pub const MAX_TRANSFER: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// The request header every chain starts with (`struct virtio_blk_outhdr`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RequestHeader {
    request_type: Le32,
    _ioprio: Le32,
    sector: Le64,
}
// SAFETY: plain little-endian integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// One range of a DISCARD or WRITE_ZEROES request (`struct virtio_blk_discard_write_zeroes`).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct RangeSegment {
    sector: Le64,
    num_sectors: Le32,
    flags: Le32,
}
// SAFETY: plain little-endian integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for RangeSegment {}

/// What the device offers, against which requests are checked.
#[derive(Debug, Clone, Copy)]
pub struct DeviceLimits {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Logical block size in bytes; offsets and lengths must be multiples of it.
    pub block_size: u32,
    /// Writes, discards and write-zeroes fail with IOERR.
    pub read_only: bool,
    /// The bdev implements discard.
    pub discard: bool,
    /// The bdev implements write-zeroes.
    pub write_zeroes: bool,
}

/// The kind of a parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read from the disk into guest buffers (VIRTIO_BLK_T_IN).
    Read,
    /// Write guest buffers to the disk (VIRTIO_BLK_T_OUT).
    Write,
    /// Flush the write cache (VIRTIO_BLK_T_FLUSH).
    Flush,
    /// Return the device serial (VIRTIO_BLK_T_GET_ID).
    GetId,
    /// Deallocate a range (VIRTIO_BLK_T_DISCARD).
    Discard,
    /// Zero a range (VIRTIO_BLK_T_WRITE_ZEROES).
    WriteZeroes,
}

impl RequestKind {
    /// The bdev operation that executes this request; GET_ID is answered by the target itself.
    pub fn bdev_op(self) -> Option<IoOp> {
        match self {
            RequestKind::Read => Some(IoOp::Read),
            RequestKind::Write => Some(IoOp::Write),
            RequestKind::Flush => Some(IoOp::Flush),
            RequestKind::Discard => Some(IoOp::Discard),
            RequestKind::WriteZeroes => Some(IoOp::WriteZeroes),
            RequestKind::GetId => None,
        }
    }
}

/// Where a request's status byte goes: its guest address (for dirty logging) and where that
/// is mapped (resolved once, while parsing, in the memory table the request was parsed with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusByte {
    /// Guest physical address.
    pub gpa: u64,
    /// Host address in the memory table the request was parsed with.
    pub host: *mut u8,
}

/// A request that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkRequest {
    /// What to do.
    pub kind: RequestKind,
    /// Byte offset on the disk (0 for flush and GET_ID).
    pub offset: u64,
    /// Bytes to transfer (reads, writes, GET_ID) or to discard/zero.
    pub len: u64,
    /// How many entries of the caller's iovec array hold the data segments.
    pub iovcnt: usize,
    /// Where the status byte goes.
    pub status: StatusByte,
}

impl BlkRequest {
    /// Bytes the device writes into the chain when the request succeeds, status byte included
    /// (the used element's `len`).
    pub fn used_len(&self) -> u32 {
        let data = match self.kind {
            RequestKind::Read => self.len,
            RequestKind::GetId => self.len.min(ID_BYTES as u64),
            _ => 0,
        };
        // Reads are bounded by MAX_TRANSFER; anything larger is refused while parsing.
        u32::try_from(data + 1).unwrap_or(u32::MAX)
    }
}

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The chain has no descriptors, or only one (no room for a status byte).
    TooShort,
    /// The chain itself is malformed (a loop, an index past the table, a bad indirect table).
    BrokenChain,
    /// The last descriptor is not device-writable, or is empty, or lies outside guest memory.
    BadStatusDescriptor,
    /// The 16-byte header is not in device-readable descriptors at the start of the chain.
    BadHeaderDescriptor,
    /// A descriptor's buffer lies (partly) outside guest memory.
    BadAddress,
    /// A data descriptor's direction does not match the request type.
    WrongDirection,
    /// More data segments than `SEG_MAX` (or than the host iovecs they translate into).
    TooManySegments,
    /// Data length is zero, not a multiple of the block size, or larger than the device allows.
    BadLength,
    /// The sector range is not block-aligned or runs past the capacity.
    OutOfRange,
    /// A write-class request on a read-only disk.
    ReadOnly,
    /// A request type or flag the device does not implement.
    Unsupported(u32),
}

impl ParseError {
    /// The virtio-blk status the guest receives for this error.
    pub fn status(self) -> u8 {
        match self {
            ParseError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooShort => f.write_str("descriptor chain too short"),
            ParseError::BrokenChain => f.write_str("malformed descriptor chain"),
            ParseError::BadStatusDescriptor => f.write_str("bad status descriptor"),
            ParseError::BadHeaderDescriptor => f.write_str("bad request header descriptor"),
            ParseError::BadAddress => f.write_str("buffer outside guest memory"),
            ParseError::WrongDirection => f.write_str("data descriptor has the wrong direction"),
            ParseError::TooManySegments => f.write_str("too many data segments"),
            ParseError::BadLength => f.write_str("bad data length"),
            ParseError::OutOfRange => f.write_str("sector range outside the disk"),
            ParseError::ReadOnly => f.write_str("write to a read-only disk"),
            ParseError::Unsupported(t) => write!(f, "unsupported request type or flags {t}"),
        }
    }
}

/// A refused chain: the error, and where to write its status when the chain has a usable
/// status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub error: ParseError,
    /// The status byte, when the last descriptor is a valid place for it.
    pub status: Option<StatusByte>,
}

const HEADER_LEN: usize = std::mem::size_of::<RequestHeader>();
const RANGE_LEN: usize = std::mem::size_of::<RangeSegment>();

impl BlkRequest {
    /// Parses and checks the request in `chain` (the descriptors of one chain, in order),
    /// translating its data segments into host iovecs in `iov` (at most [`MAX_IOVECS`]).
    ///
    /// Any layout is accepted (virtio 1.2, 2.7.4: a device must not assume how the driver lays
    /// out the request): the first 16 device-readable bytes are the header, wherever the
    /// descriptor boundaries fall; the last byte of the chain (in a device-writable descriptor)
    /// is the status; everything between is data. The chain is read in one pass with no
    /// per-request arrays: a descriptor is known to be data as soon as the next one arrives.
    pub fn parse(
        chain: impl IntoIterator<Item = Desc>,
        mem: &GuestMemory,
        limits: &DeviceLimits,
        iov: &mut [IoVec],
    ) -> Result<BlkRequest, Refused> {
        let mut p = Parser::new(mem, limits, iov);
        let mut count = 0usize;
        let mut last: Option<Desc> = None;
        for d in chain {
            count += 1;
            if let Some(prev) = last.replace(d) {
                p.piece(prev.addr, prev.len, prev.writable());
            }
        }
        let Some(tail) = last.filter(|_| count >= 2) else {
            return Err(Refused {
                error: ParseError::TooShort,
                status: None,
            });
        };
        // The status byte is the last byte of the last descriptor.
        let status = (tail.writable() && tail.len > 0)
            .then(|| tail.addr.checked_add(u64::from(tail.len) - 1))
            .flatten()
            .and_then(|gpa| mem.host(gpa, 1).map(|host| StatusByte { gpa, host }));
        let Some(status) = status else {
            return Err(Refused {
                error: ParseError::BadStatusDescriptor,
                status: None,
            });
        };
        if tail.len > 1 {
            p.piece(tail.addr, tail.len - 1, true);
        }
        p.finish(status).map_err(|error| Refused {
            error,
            status: Some(status),
        })
    }

    /// Parses `chain` (see [`parse`](Self::parse)); a chain that ends early because it is
    /// malformed is refused without a status byte, whatever its descriptors said so far.
    pub fn parse_chain(
        mut chain: Chain<'_>,
        mem: &GuestMemory,
        limits: &DeviceLimits,
        iov: &mut [IoVec],
    ) -> Result<BlkRequest, Refused> {
        let parsed = Self::parse(&mut chain, mem, limits, iov);
        match chain.error() {
            Some(_) => Err(Refused {
                error: ParseError::BrokenChain,
                status: None,
            }),
            None => parsed,
        }
    }
}

/// The state of one parse as the chain streams past.
struct Parser<'a> {
    mem: &'a GuestMemory,
    limits: &'a DeviceLimits,
    iov: &'a mut [IoVec],
    header: [u8; HEADER_LEN],
    header_len: usize,
    kind: Option<RequestKind>,
    request_type: u32,
    /// Data pieces seen, their total length and directions.
    segments: usize,
    len: u64,
    readable: bool,
    writable: bool,
    /// The discard / write-zeroes range, gathered from the data bytes.
    range: [u8; RANGE_LEN],
    iovcnt: usize,
    /// A problem with the header, reported before anything else.
    header_error: Option<ParseError>,
    /// The first problem with the data segments, reported after the checks of the request as
    /// a whole (direction, range, length).
    failed: Option<ParseError>,
}

impl<'a> Parser<'a> {
    fn new(mem: &'a GuestMemory, limits: &'a DeviceLimits, iov: &'a mut [IoVec]) -> Self {
        Parser {
            mem,
            limits,
            iov,
            header: [0; HEADER_LEN],
            header_len: 0,
            kind: None,
            request_type: 0,
            segments: 0,
            len: 0,
            readable: false,
            writable: false,
            range: [0; RANGE_LEN],
            iovcnt: 0,
            header_error: None,
            failed: None,
        }
    }

    fn fail(&mut self, e: ParseError) {
        self.failed.get_or_insert(e);
    }

    fn header_fail(&mut self, e: ParseError) {
        self.header_error.get_or_insert(e);
    }

    /// A run of `len` bytes at `addr` that is not the status byte.
    fn piece(&mut self, addr: u64, len: u32, writable: bool) {
        let (mut addr, mut len) = (addr, u64::from(len));
        if self.header_len < HEADER_LEN {
            if writable {
                self.header_fail(ParseError::BadHeaderDescriptor);
                self.header_len = HEADER_LEN; // the rest is data, for the segment count
            } else {
                let take = len.min((HEADER_LEN - self.header_len) as u64) as usize;
                let dst = self.header_len;
                if copy_from_guest(self.mem, addr, &mut self.header[dst..dst + take]).is_err() {
                    self.header_fail(ParseError::BadAddress);
                }
                self.header_len += take;
                addr = addr.wrapping_add(take as u64);
                len -= take as u64;
                if self.header_len == HEADER_LEN {
                    self.decode_header();
                }
            }
        }
        if len > 0 {
            self.data(addr, len, writable);
        }
    }

    fn decode_header(&mut self) {
        let h = &self.header;
        self.request_type = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        self.kind = match self.request_type {
            VIRTIO_BLK_T_IN => Some(RequestKind::Read),
            VIRTIO_BLK_T_OUT => Some(RequestKind::Write),
            VIRTIO_BLK_T_FLUSH => Some(RequestKind::Flush),
            VIRTIO_BLK_T_GET_ID => Some(RequestKind::GetId),
            VIRTIO_BLK_T_DISCARD if self.limits.discard => Some(RequestKind::Discard),
            VIRTIO_BLK_T_WRITE_ZEROES if self.limits.write_zeroes => Some(RequestKind::WriteZeroes),
            _ => None,
        };
    }

    fn sector(&self) -> u64 {
        let h = &self.header;
        u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]])
    }

    /// A data segment.
    fn data(&mut self, addr: u64, len: u64, writable: bool) {
        let offset = self.len;
        self.segments += 1;
        self.len = self.len.saturating_add(len);
        self.readable |= !writable;
        self.writable |= writable;
        if self.failed.is_some() || self.header_error.is_some() {
            return;
        }
        match self.kind {
            Some(RequestKind::Read | RequestKind::Write | RequestKind::GetId) => {
                match translate(self.mem, addr, len, &mut self.iov[self.iovcnt..]) {
                    Ok(n) => self.iovcnt += n,
                    Err(e) => self.fail(e),
                }
            }
            Some(RequestKind::Discard | RequestKind::WriteZeroes) if offset < RANGE_LEN as u64 => {
                let take = len.min(RANGE_LEN as u64 - offset) as usize;
                let at = offset as usize;
                if copy_from_guest(self.mem, addr, &mut self.range[at..at + take]).is_err() {
                    self.fail(ParseError::BadAddress);
                }
            }
            _ => {}
        }
    }

    /// Checks what the whole chain said, once the status byte is known.
    fn finish(self, status: StatusByte) -> Result<BlkRequest, ParseError> {
        if self.header_len < HEADER_LEN {
            return Err(ParseError::BadHeaderDescriptor);
        }
        if let Some(e) = self.header_error {
            return Err(e);
        }
        if self.segments > SEG_MAX as usize {
            return Err(ParseError::TooManySegments);
        }
        let Some(kind) = self.kind else {
            return Err(ParseError::Unsupported(self.request_type));
        };
        let limits = self.limits;
        let (offset, len, iovcnt) = match kind {
            RequestKind::Read | RequestKind::Write => {
                let wrong = if kind == RequestKind::Read {
                    self.readable
                } else {
                    self.writable
                };
                if wrong {
                    return Err(ParseError::WrongDirection);
                }
                if kind == RequestKind::Write && limits.read_only {
                    return Err(ParseError::ReadOnly);
                }
                let offset = check_range(self.sector(), self.len, limits)?;
                if self.len > MAX_TRANSFER {
                    return Err(ParseError::BadLength);
                }
                (offset, self.len, self.translated()?)
            }
            RequestKind::Flush => (0, 0, 0),
            RequestKind::GetId => {
                if self.readable {
                    return Err(ParseError::WrongDirection);
                }
                if self.len == 0 {
                    return Err(ParseError::BadLength);
                }
                (0, self.len, self.translated()?)
            }
            RequestKind::Discard | RequestKind::WriteZeroes => {
                if limits.read_only {
                    return Err(ParseError::ReadOnly);
                }
                if self.writable {
                    return Err(ParseError::WrongDirection);
                }
                // One range per request: the config space says max_*_seg = 1.
                if self.len != RANGE_LEN as u64 {
                    return Err(ParseError::BadLength);
                }
                if let Some(e) = self.failed {
                    return Err(e);
                }
                let r = &self.range;
                let sector = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
                let sectors = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
                let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
                let allowed = if kind == RequestKind::Discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if flags & !allowed != 0 {
                    return Err(ParseError::Unsupported(self.request_type));
                }
                let bytes = u64::from(sectors) * SECTOR_SIZE;
                (check_range(sector, bytes, limits)?, bytes, 0)
            }
        };
        Ok(BlkRequest {
            kind,
            offset,
            len,
            iovcnt,
            status,
        })
    }

    fn translated(&self) -> Result<usize, ParseError> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(self.iovcnt),
        }
    }
}

/// Copies `dst.len()` bytes at guest address `addr` into `dst`, across regions if need be.
fn copy_from_guest(mem: &GuestMemory, addr: u64, dst: &mut [u8]) -> Result<(), ParseError> {
    let mut done = 0;
    while done < dst.len() {
        let gpa = addr
            .checked_add(done as u64)
            .ok_or(ParseError::BadAddress)?;
        let (host, run) = mem.host_run(gpa).ok_or(ParseError::BadAddress)?;
        let n = (dst.len() - done).min(usize::try_from(run).unwrap_or(usize::MAX));
        // SAFETY: `host` is mapped for `run >= n` bytes; `dst[done..done + n]` is ours. Guest
        // memory may change while we copy; only the copy is looked at afterwards.
        unsafe { std::ptr::copy_nonoverlapping(host, dst[done..].as_mut_ptr(), n) };
        done += n;
    }
    Ok(())
}

/// Checks that `len` is a non-zero number of whole blocks and that the range at `sector` is
/// block-aligned and inside the disk; returns the byte offset.
fn check_range(sector: u64, len: u64, limits: &DeviceLimits) -> Result<u64, ParseError> {
    if len == 0 || !len.is_multiple_of(u64::from(limits.block_size)) {
        return Err(ParseError::BadLength);
    }
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(ParseError::OutOfRange)?;
    let end = offset.checked_add(len).ok_or(ParseError::OutOfRange)?;
    if end > limits.capacity || !offset.is_multiple_of(u64::from(limits.block_size)) {
        return Err(ParseError::OutOfRange);
    }
    Ok(offset)
}

/// Translates one guest segment into host iovecs, split at guest memory region boundaries;
/// returns how many entries of `iov` it filled.
fn translate(
    mem: &GuestMemory,
    addr: u64,
    len: u64,
    iov: &mut [IoVec],
) -> Result<usize, ParseError> {
    let mut n = 0;
    let mut addr = addr;
    let mut left = len;
    while left > 0 {
        let (host, run) = mem.host_run(addr).ok_or(ParseError::BadAddress)?;
        let chunk = left.min(run);
        let slot = iov.get_mut(n).ok_or(ParseError::TooManySegments)?;
        *slot = IoVec {
            iov_base: host.cast(),
            iov_len: usize::try_from(chunk).map_err(|_| ParseError::BadLength)?,
        };
        n += 1;
        left -= chunk;
        addr = addr.checked_add(chunk).ok_or(ParseError::BadAddress)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{RingAddrs, SplitRing};
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    const MEM_SIZE: u64 = 0x10_0000;
    const HDR: u64 = 0x8000;
    const DATA: u64 = 0x9000;
    const STATUS: u64 = 0x20000;
    const R: u16 = 0;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn limits() -> DeviceLimits {
        DeviceLimits {
            capacity: 1 << 20,
            block_size: 512,
            read_only: false,
            discard: true,
            write_zeroes: true,
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
    }

    fn write_header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
        let h = RequestHeader {
            request_type: request_type.into(),
            _ioprio: 0.into(),
            sector: sector.into(),
        };
        mem.write_obj(h, GuestAddress(HDR)).expect("header");
    }

    /// Builds a chain from (addr, len, flags) triples, NEXT flags added, and parses it.
    fn parse_chain(
        mem: &GuestMemoryMmap,
        descs: &[(u64, u32, u16)],
        limits: &DeviceLimits,
    ) -> Result<BlkRequest, Refused> {
        parse_chain_in_ring(mem, 16, descs, limits)
    }

    /// As `parse_chain`, on a ring of `ring_len` descriptors.
    fn parse_chain_in_ring(
        mem: &GuestMemoryMmap,
        ring_len: u16,
        descs: &[(u64, u32, u16)],
        limits: &DeviceLimits,
    ) -> Result<BlkRequest, Refused> {
        let vq = MockSplitQueue::new(mem, ring_len);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() {
                    VRING_DESC_F_NEXT as u16
                } else {
                    0
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags | next, i as u16 + 1))
            })
            .collect();
        vq.build_desc_chain(&raw).expect("chain");
        pop_and_parse(mem, &vq, limits).0
    }

    /// Pops the next chain of `vq` with our ring and parses it; also returns the iovecs.
    fn pop_and_parse(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        limits: &DeviceLimits,
    ) -> (Result<BlkRequest, Refused>, Vec<IoVec>) {
        let g = GuestMemory::new(mem.clone());
        let addrs = RingAddrs {
            desc: vq.desc_table_addr().raw_value(),
            avail: vq.avail_addr().raw_value(),
            used: vq.used_addr().raw_value(),
        };
        let size = (vq.desc_table().total_size() / 16) as u16;
        let mut ring = SplitRing::new(size, addrs, false, 0, &g).expect("ring");
        assert!(ring.pending(ring.avail_idx()) > 0, "a chain was published");
        let head = ring.pop_head();
        let mut iov = vec![
            IoVec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            MAX_IOVECS
        ];
        let r = BlkRequest::parse_chain(ring.chain(&g, head), &g, limits, &mut iov);
        (r, iov)
    }

    fn status_gpa(r: &Refused) -> Option<u64> {
        r.status.map(|s| s.gpa)
    }

    fn refused(r: Result<BlkRequest, Refused>) -> ParseError {
        let e = r.expect_err("must be refused");
        assert_eq!(status_gpa(&e), Some(STATUS), "status byte still reported");
        e.error
    }

    #[test]
    fn read_with_two_segments() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 8);
        let req = parse_chain(
            &m,
            &[
                (HDR, 16, R),
                (DATA, 512, W),
                (DATA + 0x1000, 1024, W),
                (STATUS, 1, W),
            ],
            &limits(),
        )
        .expect("valid read");
        assert_eq!(req.kind, RequestKind::Read);
        assert_eq!((req.offset, req.len, req.iovcnt), (4096, 1536, 2));
        assert_eq!(req.status.gpa, STATUS);
        assert_eq!(req.used_len(), 1537);
    }

    #[test]
    fn write_flush_and_get_id() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_OUT, 0);
        let w = parse_chain(
            &m,
            &[(HDR, 16, R), (DATA, 4096, R), (STATUS, 1, W)],
            &limits(),
        )
        .expect("write");
        assert_eq!((w.kind, w.len, w.used_len()), (RequestKind::Write, 4096, 1));
        write_header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let f = parse_chain(&m, &[(HDR, 16, R), (STATUS, 1, W)], &limits()).expect("flush");
        assert_eq!((f.kind, f.iovcnt), (RequestKind::Flush, 0));
        write_header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let g = parse_chain(
            &m,
            &[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)],
            &limits(),
        )
        .expect("get id");
        assert_eq!((g.kind, g.used_len()), (RequestKind::GetId, 21));
    }

    #[test]
    fn merged_layouts_are_accepted() {
        let m = mem();
        // Header and write data in one descriptor.
        write_header(&m, VIRTIO_BLK_T_OUT, 0);
        let w = parse_chain(&m, &[(HDR, 16 + 512, R), (STATUS, 1, W)], &limits())
            .expect("merged write");
        assert_eq!((w.len, w.iovcnt), (512, 1));
        // Read data and status in one descriptor: status is its last byte.
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        let r = parse_chain(&m, &[(HDR, 16, R), (STATUS - 512, 513, W)], &limits())
            .expect("merged read");
        assert_eq!((r.len, r.status.gpa), (512, STATUS));
    }

    #[test]
    fn discard_and_write_zeroes_ranges() {
        let m = mem();
        let seg = |sector: u64, n: u32, flags: u32| {
            let s = RangeSegment {
                sector: sector.into(),
                num_sectors: n.into(),
                flags: flags.into(),
            };
            m.write_obj(s, GuestAddress(DATA)).expect("segment");
        };
        write_header(&m, VIRTIO_BLK_T_DISCARD, 0);
        seg(16, 8, 0);
        let d = parse_chain(
            &m,
            &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)],
            &limits(),
        )
        .expect("discard");
        assert_eq!(
            (d.kind, d.offset, d.len),
            (RequestKind::Discard, 8192, 4096)
        );
        seg(16, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::Unsupported(VIRTIO_BLK_T_DISCARD)
        );
        write_header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let z = parse_chain(
            &m,
            &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)],
            &limits(),
        )
        .expect("write zeroes");
        assert_eq!(z.kind, RequestKind::WriteZeroes);
        seg(2047, 2, 0);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::OutOfRange
        );
        seg(0, 0, 0);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::BadLength
        );
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 32, R), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::BadLength
        );
        let no_discard = DeviceLimits {
            discard: false,
            write_zeroes: false,
            ..limits()
        };
        let e = parse_chain(
            &m,
            &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)],
            &no_discard,
        )
        .expect_err("unsupported");
        assert_eq!(e.error, ParseError::Unsupported(VIRTIO_BLK_T_WRITE_ZEROES));
        assert_eq!(e.error.status(), VIRTIO_BLK_S_UNSUPP as u8);
    }

    #[test]
    fn sector_beyond_capacity_or_unaligned() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 2047);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::OutOfRange
        );
        write_header(&m, VIRTIO_BLK_T_IN, u64::MAX / 256);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::OutOfRange
        );
        let four_k = DeviceLimits {
            block_size: 4096,
            ..limits()
        };
        write_header(&m, VIRTIO_BLK_T_IN, 1);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 4096, W), (STATUS, 1, W)],
                &four_k
            )),
            ParseError::OutOfRange
        );
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                &four_k
            )),
            ParseError::BadLength
        );
    }

    #[test]
    fn wrong_directions() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::WrongDirection
        );
        write_header(&m, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::WrongDirection
        );
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, W), (DATA, 512, R), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::BadHeaderDescriptor
        );
        // A read-only status descriptor leaves nowhere to report the error.
        let e = parse_chain(
            &m,
            &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, R)],
            &limits(),
        )
        .expect_err("refused");
        assert_eq!((e.error, e.status), (ParseError::BadStatusDescriptor, None));
    }

    #[test]
    fn malformed_chains() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        // A lone descriptor: no status byte.
        let e = parse_chain(&m, &[(HDR, 16, R)], &limits()).expect_err("too short");
        assert_eq!((e.error, e.status), (ParseError::TooShort, None));
        // Short header.
        assert_eq!(
            refused(parse_chain(&m, &[(HDR, 8, R), (STATUS, 1, W)], &limits())),
            ParseError::BadHeaderDescriptor
        );
        // Zero-length data.
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 0, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::BadLength
        );
        // Not a multiple of the sector size.
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 100, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::BadLength
        );
        // Data outside guest memory, and data that runs off its end.
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (MEM_SIZE + 0x1000, 512, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::BadAddress
        );
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (MEM_SIZE - 512, 1024, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::BadAddress
        );
        // Huge lengths: a 4 GiB-ish descriptor is refused by the capacity check, not allocated.
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 0xffff_fe00, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::OutOfRange
        );
        // Header outside guest memory.
        let e = parse_chain(&m, &[(MEM_SIZE + 0x1000, 16, R), (STATUS, 1, W)], &limits())
            .expect_err("refused");
        assert_eq!(e.error, ParseError::BadAddress);
        // A header whose last bytes run off the end of guest memory.
        let e = parse_chain(&m, &[(MEM_SIZE - 8, 16, R), (STATUS, 1, W)], &limits())
            .expect_err("refused");
        assert_eq!(e.error, ParseError::BadAddress);
        // Status byte outside guest memory: nowhere to write it.
        let e = parse_chain(&m, &[(HDR, 16, R), (u64::MAX, 1, W)], &limits()).expect_err("refused");
        assert_eq!((e.error, e.status), (ParseError::BadStatusDescriptor, None));
        // Unknown request type.
        write_header(&m, 0xdead, 0);
        assert_eq!(
            refused(parse_chain(&m, &[(HDR, 16, R), (STATUS, 1, W)], &limits())),
            ParseError::Unsupported(0xdead)
        );
    }

    #[test]
    fn read_only_disk_refuses_writes_but_reads() {
        let m = mem();
        let ro = DeviceLimits {
            read_only: true,
            ..limits()
        };
        write_header(&m, VIRTIO_BLK_T_OUT, 0);
        let e = refused(parse_chain(
            &m,
            &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)],
            &ro,
        ));
        assert_eq!(
            (e, e.status()),
            (ParseError::ReadOnly, VIRTIO_BLK_S_IOERR as u8)
        );
        write_header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)],
                &ro
            )),
            ParseError::ReadOnly
        );
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        assert!(parse_chain(&m, &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)], &ro).is_ok());
    }

    #[test]
    fn too_many_segments() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        let mut descs = vec![(HDR, 16, R)];
        descs.extend((0..SEG_MAX as u64 + 1).map(|i| (DATA + i * 512, 512, W)));
        descs.push((STATUS, 1, W));
        let e = parse_chain_in_ring(&m, 256, &descs, &limits()).expect_err("refused");
        assert_eq!(e.error, ParseError::TooManySegments);
    }

    #[test]
    fn indirect_chain() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 4);
        // Indirect table at 0x30000 with header, two data segments and status.
        let table = GuestAddress(0x30000);
        let entries = [
            (HDR, 16, R),
            (DATA, 512, W),
            (DATA + 0x2000, 512, W),
            (STATUS, 1, W),
        ];
        for (i, &(addr, len, flags)) in entries.iter().enumerate() {
            let next = if i + 1 < entries.len() {
                VRING_DESC_F_NEXT as u16
            } else {
                0
            };
            let d =
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags | next, i as u16 + 1));
            m.write_obj(d, table.unchecked_add(16 * i as u64))
                .expect("indirect entry");
        }
        let vq = MockSplitQueue::new(&m, 16);
        let head = RawDescriptor::from(SplitDescriptor::new(
            table.0,
            64,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ));
        vq.build_desc_chain(&[head]).expect("chain");
        let req = pop_and_parse(&m, &vq, &limits()).0.expect("indirect read");
        assert_eq!((req.offset, req.len, req.iovcnt), (2048, 1024, 2));
    }

    #[test]
    fn any_layout_header_split_across_descriptors() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 8);
        for split in [8u32, 1, 15] {
            let r = parse_chain(
                &m,
                &[
                    (HDR, split, R),
                    (HDR + u64::from(split), 16 - split, R),
                    (DATA, 512, W),
                    (STATUS, 1, W),
                ],
                &limits(),
            )
            .unwrap_or_else(|e| panic!("header split {split}: {e:?}"));
            assert_eq!(
                (r.kind, r.offset, r.len, r.iovcnt),
                (RequestKind::Read, 4096, 512, 1)
            );
        }
        // Header, write data and more header-descriptor data in any mix.
        write_header(&m, VIRTIO_BLK_T_OUT, 0);
        let w = parse_chain(
            &m,
            &[
                (HDR, 4, R),
                (HDR + 4, 12 + 512, R),
                (DATA, 512, R),
                (STATUS, 1, W),
            ],
            &limits(),
        )
        .expect("write");
        assert_eq!((w.len, w.iovcnt), (1024, 2));
        // A discard range split over two descriptors.
        write_header(&m, VIRTIO_BLK_T_DISCARD, 0);
        m.write_obj(
            RangeSegment {
                sector: 16u64.into(),
                num_sectors: 8u32.into(),
                flags: 0u32.into(),
            },
            GuestAddress(DATA),
        )
        .expect("segment");
        let d = parse_chain(
            &m,
            &[
                (HDR, 16, R),
                (DATA, 5, R),
                (DATA + 5, 11, R),
                (STATUS, 1, W),
            ],
            &limits(),
        )
        .expect("discard");
        assert_eq!(
            (d.kind, d.offset, d.len),
            (RequestKind::Discard, 8192, 4096)
        );
        // A header in a device-writable descriptor is still refused.
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            refused(parse_chain(
                &m,
                &[(HDR, 8, R), (HDR + 8, 8, W), (STATUS, 1, W)],
                &limits()
            )),
            ParseError::BadHeaderDescriptor
        );
    }

    #[test]
    fn broken_chains_get_no_status_and_long_chains_are_bounded() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        let vq = MockSplitQueue::new(&m, 16);
        // 0 -> 1 -> 0: a loop.
        let next = VRING_DESC_F_NEXT as u16;
        vq.build_desc_chain(&[
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W | next, 0)),
        ])
        .expect("chain");
        // build_desc_chain rewrites `next`; point descriptor 1 back at 0 by hand.
        m.write_obj(
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W | next, 0)),
            vq.desc_table_addr().unchecked_add(16),
        )
        .expect("loop");
        let e = pop_and_parse(&m, &vq, &limits()).0.expect_err("loop");
        assert_eq!((e.error, e.status), (ParseError::BrokenChain, None));
        // A 1000-descriptor chain in a 1024 ring: bounded, refused, status reported.
        let mut descs = vec![(HDR, 16, R)];
        descs.extend((0..998u64).map(|i| (DATA + (i % 64) * 512, 512, W)));
        descs.push((STATUS, 1, W));
        let e = parse_chain_in_ring(&m, 1024, &descs, &limits()).expect_err("refused");
        assert_eq!(e.error, ParseError::TooManySegments);
        assert_eq!(status_gpa(&e), Some(STATUS));
    }

    #[test]
    fn transfers_are_capped_and_get_id_fits_any_buffer() {
        let m = mem();
        let huge = DeviceLimits {
            capacity: 1 << 40,
            ..limits()
        };
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        // Two 80 MiB descriptors (aliasing guest memory is allowed; the total is too large).
        let e = parse_chain(
            &m,
            &[
                (HDR, 16, R),
                (0, 80 << 20, W),
                (0, 80 << 20, W),
                (STATUS, 1, W),
            ],
            &huge,
        )
        .expect_err("refused");
        assert!(matches!(
            e.error,
            ParseError::BadLength | ParseError::BadAddress
        ));
        write_header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let g = parse_chain(&m, &[(HDR, 16, R), (DATA, 1, W), (STATUS, 1, W)], &limits())
            .expect("get id into one byte");
        assert_eq!((g.len, g.used_len()), (1, 2));
    }

    #[test]
    fn segments_split_across_regions() {
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x40000),
            (GuestAddress(0x40000), 0x40000),
        ])
        .expect("two regions");
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        let req = parse_chain(
            &m,
            &[(HDR, 16, R), (0x40000 - 512, 1024, W), (STATUS, 1, W)],
            &limits(),
        )
        .expect("spanning read");
        assert_eq!((req.len, req.iovcnt), (1024, 2));
        // A header in one descriptor whose bytes lie in both regions.
        let split = RequestHeader {
            request_type: VIRTIO_BLK_T_OUT.into(),
            _ioprio: 0.into(),
            sector: 0x0001_0203_0405_0607u64.into(),
        };
        m.write_obj(split, GuestAddress(0x40000 - 8))
            .expect("header over the boundary");
        let limits_huge = DeviceLimits {
            capacity: 1 << 60,
            ..limits()
        };
        let req = parse_chain(
            &m,
            &[(0x40000 - 8, 16, R), (DATA, 512, R), (STATUS, 1, W)],
            &limits_huge,
        )
        .expect("header across regions");
        assert_eq!(
            (req.kind, req.offset),
            (RequestKind::Write, 0x0001_0203_0405_0607 * 512)
        );
        let huge = DeviceLimits {
            capacity: 1 << 40,
            ..limits()
        };
        // 126 MiB + 512 of aliased data in one region of a big disk: over MAX_TRANSFER.
        let big = parse_chain(&m, &[(HDR, 16, R), (0, 0x40000, W), (STATUS, 1, W)], &huge)
            .expect("256 KiB is fine");
        assert_eq!(big.len, 0x40000);
    }
}
