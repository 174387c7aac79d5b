//! Numbers from the vhost-user and virtio specifications, and payload builders for the
//! messages the hostile tests send (little-endian, laid out as QEMU lays them out).

/// vhost-user front-end request codes (`VHOST_USER_*`).
pub mod req {
    #![allow(missing_docs)]
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SEND_RARP: u32 = 19;
    pub const NET_SET_MTU: u32 = 20;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const IOTLB_MSG: u32 = 22;
    pub const SET_VRING_ENDIAN: u32 = 23;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const POSTCOPY_ADVISE: u32 = 28;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const RESET_DEVICE: u32 = 34;
    pub const VRING_KICK: u32 = 35;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    pub const SET_STATUS: u32 = 39;
    pub const GET_STATUS: u32 = 40;
    pub const GET_SHARED_OBJECT: u32 = 41;
    pub const SET_DEVICE_STATE_FD: u32 = 42;
    pub const CHECK_DEVICE_STATE: u32 = 43;

    /// Requests whose reply is a message of their own (not a REPLY_ACK).
    pub const WITH_REPLY: [u32; 9] = [
        GET_FEATURES,
        GET_PROTOCOL_FEATURES,
        GET_VRING_BASE,
        GET_QUEUE_NUM,
        GET_CONFIG,
        GET_INFLIGHT_FD,
        GET_MAX_MEM_SLOTS,
        GET_STATUS,
        CHECK_DEVICE_STATE,
    ];
}

/// Header flags.
pub mod flags {
    /// Protocol version 1 (bits 0-1).
    pub const VERSION: u32 = 0x1;
    /// The message is a reply.
    pub const REPLY: u32 = 0x4;
    /// The sender wants a reply (REPLY_ACK).
    pub const NEED_REPLY: u32 = 0x8;
}

/// vhost-user protocol feature bits (`VHOST_USER_PROTOCOL_F_*`, as masks).
pub mod proto {
    #![allow(missing_docs)]
    pub const MQ: u64 = 1 << 0;
    pub const LOG_SHMFD: u64 = 1 << 1;
    pub const REPLY_ACK: u64 = 1 << 3;
    pub const BACKEND_REQ: u64 = 1 << 5;
    pub const CONFIG: u64 = 1 << 9;
    pub const INFLIGHT_SHMFD: u64 = 1 << 12;
    pub const RESET_DEVICE: u64 = 1 << 13;
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
}

/// virtio and virtio-blk feature bits (as masks).
pub mod feat {
    #![allow(missing_docs)]
    pub const BLK_SIZE_MAX: u64 = 1 << 1;
    pub const BLK_SEG_MAX: u64 = 1 << 2;
    pub const BLK_RO: u64 = 1 << 5;
    pub const BLK_BLK_SIZE: u64 = 1 << 6;
    pub const BLK_FLUSH: u64 = 1 << 9;
    pub const BLK_TOPOLOGY: u64 = 1 << 10;
    pub const BLK_CONFIG_WCE: u64 = 1 << 11;
    pub const BLK_MQ: u64 = 1 << 12;
    pub const BLK_DISCARD: u64 = 1 << 13;
    pub const BLK_WRITE_ZEROES: u64 = 1 << 14;
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    pub const VERSION_1: u64 = 1 << 32;
}

/// virtio-blk request types, status values and flags.
pub mod blk {
    #![allow(missing_docs)]
    pub const T_IN: u32 = 0;
    pub const T_OUT: u32 = 1;
    pub const T_FLUSH: u32 = 4;
    pub const T_GET_ID: u32 = 8;
    pub const T_DISCARD: u32 = 11;
    pub const T_WRITE_ZEROES: u32 = 13;
    pub const S_OK: u8 = 0;
    pub const S_IOERR: u8 = 1;
    pub const S_UNSUPP: u8 = 2;
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`.
    pub const WZ_FLAG_UNMAP: u32 = 1;
    /// Length of the GET_ID answer.
    pub const ID_BYTES: usize = 20;
}

/// Split-ring descriptor flags.
pub mod desc {
    /// The chain continues at `next`.
    pub const NEXT: u16 = 1;
    /// Device-writable buffer.
    pub const WRITE: u16 = 2;
    /// The buffer is a table of descriptors.
    pub const INDIRECT: u16 = 4;
}

/// Payload bit of SET_VRING_KICK/CALL/ERR: no fd is attached.
pub const VRING_NOFD: u64 = 0x100;

/// One memory region as SET_MEM_TABLE, ADD_MEM_REG and REM_MEM_REG describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Front-end virtual address (what ring addresses are given in).
    pub uva: u64,
    /// Offset into the region's fd.
    pub mmap_offset: u64,
}

impl MemRegion {
    /// The 32-byte wire form.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for (i, v) in [self.gpa, self.size, self.uva, self.mmap_offset]
            .iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// A u64 payload.
pub fn u64_payload(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// SET_MEM_TABLE: `nregions` (as given, which may disagree with `regions.len()`), padding, then
/// the regions.
pub fn mem_table(nregions: u32, regions: &[MemRegion]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 32 * regions.len());
    p.extend_from_slice(&nregions.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    for r in regions {
        p.extend_from_slice(&r.to_bytes());
    }
    p
}

/// ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding, then the region.
pub fn single_region(r: &MemRegion) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&r.to_bytes());
    p
}

/// SET_VRING_NUM / SET_VRING_BASE / GET_VRING_BASE / SET_VRING_ENABLE: index and number.
pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    p.extend_from_slice(&num.to_le_bytes());
    p
}

/// SET_VRING_ADDR (front-end virtual addresses).
pub fn vring_addr(index: u32, flags: u32, desc: u64, used: u64, avail: u64, log: u64) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    p.extend_from_slice(&flags.to_le_bytes());
    for v in [desc, used, avail, log] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

/// GET_CONFIG / SET_CONFIG: offset, size, flags, then `data`.
pub fn config(offset: u32, size: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend_from_slice(&size.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(data);
    p
}

/// GET_INFLIGHT_FD / SET_INFLIGHT_FD (the C struct, 24 bytes with its tail padding).
pub fn inflight(mmap_size: u64, mmap_offset: u64, num_queues: u16, queue_size: u16) -> Vec<u8> {
    let mut p = mmap_size.to_le_bytes().to_vec();
    p.extend_from_slice(&mmap_offset.to_le_bytes());
    p.extend_from_slice(&num_queues.to_le_bytes());
    p.extend_from_slice(&queue_size.to_le_bytes());
    p.extend_from_slice(&[0u8; 4]);
    p
}

/// The virtio-blk request header (`struct virtio_blk_outhdr`).
pub fn blk_header(request_type: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&request_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// One discard / write-zeroes range (`struct virtio_blk_discard_write_zeroes`).
pub fn blk_range(sector: u64, num_sectors: u32, flags: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&num_sectors.to_le_bytes());
    r[12..16].copy_from_slice(&flags.to_le_bytes());
    r
}
