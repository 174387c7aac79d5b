//! Parsing one virtio-blk request out of a descriptor chain: every guest-supplied address,
//! length, direction and sector is checked here, before anything touches a bdev.

use std::fmt;

use spinblk_bdev::{IoOp, IoVec};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, Le32, Le64,
};

/// virtio-blk sectors are always 512 bytes, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// Data segments a request may carry (`seg_max` in the config space). SPDK uses the same.
pub const SEG_MAX: u32 = 126;
/// Largest single data segment (`size_max` in the config space).
pub const SIZE_MAX: u32 = 1 << 20;
/// Host iovecs one request may need: data segments that straddle guest memory regions split.
pub const MAX_IOVECS: usize = SEG_MAX as usize + 2;
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
    pub status_addr: GuestAddress,
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
        // Reads are bounded by SEG_MAX * u32::MAX; a chain that large is refused while parsing.
        u32::try_from(data + 1).unwrap_or(u32::MAX)
    }
}

/// Why a chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The chain has no descriptors, or only one (no room for a status byte).
    TooShort,
    /// The last descriptor is not device-writable, or is empty, or lies outside guest memory.
    BadStatusDescriptor,
    /// The first descriptor is device-writable or shorter than the 16-byte header.
    BadHeaderDescriptor,
    /// A descriptor's buffer lies (partly) outside guest memory.
    BadAddress,
    /// A data descriptor's direction does not match the request type.
    WrongDirection,
    /// More data segments than `SEG_MAX`.
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
    /// The status byte's address, when the last descriptor is a valid place for it.
    pub status_addr: Option<GuestAddress>,
}

/// A guest buffer with its direction, before translation.
#[derive(Clone, Copy)]
struct Segment {
    addr: u64,
    len: u32,
    writable: bool,
}

impl From<Descriptor> for Segment {
    fn from(d: Descriptor) -> Self {
        Segment {
            addr: d.addr().0,
            len: d.len(),
            writable: d.is_write_only(),
        }
    }
}

impl BlkRequest {
    /// Parses and checks the request in `chain` (a popped `DescriptorChain`, or a
    /// [`HeadChain`] for a resubmitted head), translating its data segments into host
    /// iovecs in `iov` (at most [`MAX_IOVECS`] are used). The chain layout accepted is the one
    /// every driver uses (header, data..., status) plus the two merges VIRTIO_F_ANY_LAYOUT
    /// allows in practice: data after the header in the first descriptor, and data before the
    /// status byte in the last.
    ///
    /// The chain is read in one pass with no per-request arrays: a descriptor is known to be
    /// data as soon as the next one arrives, since only the last one holds the status byte.
    pub fn parse<M: GuestMemoryBackend>(
        chain: impl IntoIterator<Item = Descriptor>,
        mem: &M,
        limits: &DeviceLimits,
        iov: &mut [IoVec],
    ) -> Result<BlkRequest, Refused> {
        let mut descs = chain.into_iter().map(Segment::from);
        let Some(head) = descs.next() else {
            return Err(Refused {
                error: ParseError::TooShort,
                status_addr: None,
            });
        };
        let hdr_len = std::mem::size_of::<RequestHeader>() as u32;
        let header: Result<RequestHeader, ParseError> = if head.writable || head.len < hdr_len {
            Err(ParseError::BadHeaderDescriptor)
        } else {
            mem.read_obj(GuestAddress(head.addr))
                .map_err(|_| ParseError::BadAddress)
        };
        let request_type = header.as_ref().map_or(0, |h| h.request_type.to_native());
        let kind = match request_type {
            VIRTIO_BLK_T_IN => Some(RequestKind::Read),
            VIRTIO_BLK_T_OUT => Some(RequestKind::Write),
            VIRTIO_BLK_T_FLUSH => Some(RequestKind::Flush),
            VIRTIO_BLK_T_GET_ID => Some(RequestKind::GetId),
            VIRTIO_BLK_T_DISCARD if limits.discard => Some(RequestKind::Discard),
            VIRTIO_BLK_T_WRITE_ZEROES if limits.write_zeroes => Some(RequestKind::WriteZeroes),
            _ => None,
        };
        let translate = matches!(
            kind,
            Some(RequestKind::Read | RequestKind::Write | RequestKind::GetId)
        );
        let mut data = DataSegments::new(translate && header.is_ok(), iov);
        if head.len > hdr_len {
            data.push(
                mem,
                Segment {
                    addr: head.addr.wrapping_add(u64::from(hdr_len)),
                    len: head.len - hdr_len,
                    writable: false,
                },
            );
        }
        let mut last = None;
        for seg in descs {
            if let Some(prev) = last.replace(seg) {
                data.push(mem, prev);
            }
        }
        let Some(tail) = last else {
            return Err(Refused {
                error: ParseError::TooShort,
                status_addr: None,
            });
        };

        // The status byte is the last byte of the last descriptor.
        let status_addr = (tail.writable && tail.len > 0)
            .then(|| GuestAddress(tail.addr).checked_add(u64::from(tail.len) - 1))
            .flatten()
            .filter(|&a| mem.check_range(a, 1));
        let Some(status_addr) = status_addr else {
            return Err(Refused {
                error: ParseError::BadStatusDescriptor,
                status_addr: None,
            });
        };
        let refuse = |error| Refused {
            error,
            status_addr: Some(status_addr),
        };
        if tail.len > 1 {
            data.push(
                mem,
                Segment {
                    addr: tail.addr,
                    len: tail.len - 1,
                    writable: true,
                },
            );
        }

        let header = header.map_err(refuse)?;
        if data.count > SEG_MAX as usize {
            return Err(refuse(ParseError::TooManySegments));
        }
        let Some(kind) = kind else {
            return Err(refuse(ParseError::Unsupported(request_type)));
        };
        let sector = header.sector.to_native();
        let (offset, len, iovcnt) = match kind {
            RequestKind::Read | RequestKind::Write => {
                let wrong = if kind == RequestKind::Read {
                    data.readable
                } else {
                    data.writable
                };
                if wrong {
                    return Err(refuse(ParseError::WrongDirection));
                }
                if kind == RequestKind::Write && limits.read_only {
                    return Err(refuse(ParseError::ReadOnly));
                }
                let offset = check_range(sector, data.len, limits).map_err(refuse)?;
                (offset, data.len, data.translated().map_err(refuse)?)
            }
            RequestKind::Flush => (0, 0, 0),
            RequestKind::GetId => {
                if data.readable {
                    return Err(refuse(ParseError::WrongDirection));
                }
                if data.len == 0 {
                    return Err(refuse(ParseError::BadLength));
                }
                (0, data.len, data.translated().map_err(refuse)?)
            }
            RequestKind::Discard | RequestKind::WriteZeroes => {
                if limits.read_only {
                    return Err(refuse(ParseError::ReadOnly));
                }
                // One range per request: the config space says max_*_seg = 1.
                let (1, Some(seg)) = (data.count, data.first) else {
                    return Err(refuse(ParseError::BadLength));
                };
                if seg.writable {
                    return Err(refuse(ParseError::WrongDirection));
                }
                if seg.len as usize != std::mem::size_of::<RangeSegment>() {
                    return Err(refuse(ParseError::BadLength));
                }
                let range: RangeSegment = mem
                    .read_obj(GuestAddress(seg.addr))
                    .map_err(|_| refuse(ParseError::BadAddress))?;
                let flags = range.flags.to_native();
                let allowed = if kind == RequestKind::Discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if flags & !allowed != 0 {
                    return Err(refuse(ParseError::Unsupported(request_type)));
                }
                let bytes = u64::from(range.num_sectors.to_native()) * SECTOR_SIZE;
                let offset =
                    check_range(range.sector.to_native(), bytes, limits).map_err(refuse)?;
                (offset, bytes, 0)
            }
        };
        Ok(BlkRequest {
            kind,
            offset,
            len,
            iovcnt,
            status_addr,
        })
    }
}

/// The data segments of a chain as they stream past: counted, summed, checked for direction,
/// and (for requests that carry data) translated into host iovecs on the spot.
struct DataSegments<'a> {
    iov: &'a mut [IoVec],
    translate: bool,
    count: usize,
    len: u64,
    readable: bool,
    writable: bool,
    first: Option<Segment>,
    iovcnt: usize,
    /// The first translation failure, reported only if nothing more basic is wrong.
    failed: Option<ParseError>,
}

impl<'a> DataSegments<'a> {
    fn new(translate: bool, iov: &'a mut [IoVec]) -> Self {
        DataSegments {
            iov,
            translate,
            count: 0,
            len: 0,
            readable: false,
            writable: false,
            first: None,
            iovcnt: 0,
            failed: None,
        }
    }

    fn push<M: GuestMemoryBackend>(&mut self, mem: &M, seg: Segment) {
        self.count += 1;
        self.len += u64::from(seg.len);
        self.readable |= !seg.writable;
        self.writable |= seg.writable;
        self.first.get_or_insert(seg);
        if self.translate && self.failed.is_none() {
            match translate(mem, seg, &mut self.iov[self.iovcnt..]) {
                Ok(n) => self.iovcnt += n,
                Err(e) => self.failed = Some(e),
            }
        }
    }

    fn translated(&self) -> Result<usize, ParseError> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(self.iovcnt),
        }
    }
}

/// The descriptors of the chain starting at `head`, read straight from the descriptor table:
/// used to resubmit requests a previous backend left in flight, whose heads are known but no
/// longer in the avail window. Follows one level of indirection and stops after as many
/// descriptors as the table holds, so a looping chain ends.
pub struct HeadChain<'a, M> {
    mem: &'a M,
    table: GuestAddress,
    table_len: u16,
    next: Option<u16>,
    ttl: u16,
    indirect: bool,
}

impl<'a, M: GuestMemoryBackend> HeadChain<'a, M> {
    /// The chain at `head` in the descriptor table at `desc_table` of a ring of `queue_size`.
    pub fn new(mem: &'a M, desc_table: GuestAddress, queue_size: u16, head: u16) -> Self {
        HeadChain {
            mem,
            table: desc_table,
            table_len: queue_size,
            next: Some(head),
            ttl: queue_size,
            indirect: false,
        }
    }
}

impl<M: GuestMemoryBackend> Iterator for HeadChain<'_, M> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        let idx = self.next.take()?;
        if idx >= self.table_len || self.ttl == 0 {
            return None;
        }
        self.ttl -= 1;
        let addr = self.table.checked_add(u64::from(idx) * 16)?;
        let desc: Descriptor = self.mem.read_obj(addr).ok()?;
        if desc.refers_to_indirect_table() {
            let entries = desc.len() / 16;
            if self.indirect
                || !desc.len().is_multiple_of(16)
                || entries == 0
                || entries > u32::from(u16::MAX)
            {
                return None;
            }
            (self.table, self.table_len, self.ttl) = (desc.addr(), entries as u16, entries as u16);
            self.indirect = true;
            self.next = Some(0);
            return self.next();
        }
        if desc.has_next() {
            self.next = Some(desc.next());
        }
        Some(desc)
    }
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
fn translate<M: GuestMemoryBackend>(
    mem: &M,
    seg: Segment,
    iov: &mut [IoVec],
) -> Result<usize, ParseError> {
    let mut n = 0;
    let mut addr = GuestAddress(seg.addr);
    let mut left = seg.len as usize;
    while left > 0 {
        let (region, region_addr) = mem.to_region_addr(addr).ok_or(ParseError::BadAddress)?;
        let in_region = (region.len() - region_addr.raw_value()) as usize;
        let chunk = left.min(in_region);
        let host = region
            .get_host_address(region_addr)
            .map_err(|_| ParseError::BadAddress)?;
        let slot = iov.get_mut(n).ok_or(ParseError::TooManySegments)?;
        *slot = IoVec {
            iov_base: host.cast(),
            iov_len: chunk,
        };
        n += 1;
        left -= chunk;
        addr = addr
            .checked_add(chunk as u64)
            .ok_or(ParseError::BadAddress)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestMemoryMmap;

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
        let mut q: Queue = vq.create_queue().expect("queue");
        let chain = q.iter(mem).expect("iter").next().expect("one chain");
        let mut iov = [IoVec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOVECS];
        BlkRequest::parse(chain, mem, limits, &mut iov)
    }

    fn refused(r: Result<BlkRequest, Refused>) -> ParseError {
        let e = r.expect_err("must be refused");
        assert_eq!(
            e.status_addr,
            Some(GuestAddress(STATUS)),
            "status byte still reported"
        );
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
        assert_eq!(req.status_addr, GuestAddress(STATUS));
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
        assert_eq!((r.len, r.status_addr), (512, GuestAddress(STATUS)));
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
        assert_eq!(
            e,
            Refused {
                error: ParseError::BadStatusDescriptor,
                status_addr: None
            }
        );
    }

    #[test]
    fn malformed_chains() {
        let m = mem();
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        // A lone descriptor: no status byte.
        let e = parse_chain(&m, &[(HDR, 16, R)], &limits()).expect_err("too short");
        assert_eq!(
            e,
            Refused {
                error: ParseError::TooShort,
                status_addr: None
            }
        );
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
        // Status byte outside guest memory: nowhere to write it.
        let e = parse_chain(&m, &[(HDR, 16, R), (u64::MAX, 1, W)], &limits()).expect_err("refused");
        assert_eq!(
            e,
            Refused {
                error: ParseError::BadStatusDescriptor,
                status_addr: None
            }
        );
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
        let mut q: Queue = vq.create_queue().expect("queue");
        let chain = q.iter(&m).expect("iter").next().expect("chain");
        let mut iov = [IoVec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOVECS];
        let req = BlkRequest::parse(chain, &m, &limits(), &mut iov).expect("indirect read");
        assert_eq!((req.offset, req.len, req.iovcnt), (2048, 1024, 2));
    }

    #[test]
    fn head_chain_walks_direct_indirect_and_looping_tables() {
        let m = mem();
        let table = GuestAddress(0x40000);
        let put = |at: GuestAddress, i: u64, d: SplitDescriptor| {
            m.write_obj(RawDescriptor::from(d), at.unchecked_add(16 * i))
                .expect("descriptor")
        };
        let next = VRING_DESC_F_NEXT as u16;
        // Head 2 -> 5 -> 1: header, data, status.
        put(table, 2, SplitDescriptor::new(HDR, 16, next, 5));
        put(table, 5, SplitDescriptor::new(DATA, 512, W | next, 1));
        put(table, 1, SplitDescriptor::new(STATUS, 1, W, 0));
        write_header(&m, VIRTIO_BLK_T_IN, 0);
        let mut iov = [IoVec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOVECS];
        let req = BlkRequest::parse(HeadChain::new(&m, table, 8, 2), &m, &limits(), &mut iov)
            .expect("direct");
        assert_eq!((req.len, req.status_addr), (512, GuestAddress(STATUS)));
        // Head 3 is indirect to a 3-entry table.
        let ind = GuestAddress(0x50000);
        put(ind, 0, SplitDescriptor::new(HDR, 16, next, 1));
        put(ind, 1, SplitDescriptor::new(DATA, 1024, W | next, 2));
        put(ind, 2, SplitDescriptor::new(STATUS, 1, W, 0));
        put(
            table,
            3,
            SplitDescriptor::new(ind.0, 48, VRING_DESC_F_INDIRECT as u16, 0),
        );
        let req = BlkRequest::parse(HeadChain::new(&m, table, 8, 3), &m, &limits(), &mut iov)
            .expect("indirect");
        assert_eq!(req.len, 1024);
        // A loop (6 -> 7 -> 6 ...) ends after the table's size.
        put(table, 6, SplitDescriptor::new(HDR, 16, next, 7));
        put(table, 7, SplitDescriptor::new(DATA, 512, W | next, 6));
        assert_eq!(HeadChain::new(&m, table, 8, 6).count(), 8);
        // A head outside the table yields nothing.
        assert_eq!(HeadChain::new(&m, table, 8, 8).count(), 0);
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
    }
}
