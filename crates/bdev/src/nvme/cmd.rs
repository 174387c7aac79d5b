//! NVMe command encoding for the kernel's passthrough interfaces: the `nvme_uring_cmd` payload
//! of `IORING_OP_URING_CMD`, the admin `ioctl`, the NVM command set opcodes and dwords, the
//! Dataset Management range, the fields we read from Identify data, and completion statuses.
//!
//! Pure data: nothing here touches a device, so all of it is unit-tested.

use crate::sys::{io, iowr};
use crate::IoStatus;

/// NVM command set opcode: Flush.
pub(crate) const OPC_FLUSH: u8 = 0x00;
/// NVM command set opcode: Write.
pub(crate) const OPC_WRITE: u8 = 0x01;
/// NVM command set opcode: Read.
pub(crate) const OPC_READ: u8 = 0x02;
/// NVM command set opcode: Write Zeroes.
pub(crate) const OPC_WRITE_ZEROES: u8 = 0x08;
/// NVM command set opcode: Dataset Management.
pub(crate) const OPC_DSM: u8 = 0x09;
/// Admin opcode: Identify.
pub(crate) const ADMIN_IDENTIFY: u8 = 0x06;

/// Identify CNS: the namespace data structure for `nsid`.
pub(crate) const CNS_NAMESPACE: u32 = 0x00;
/// Identify CNS: the controller data structure.
pub(crate) const CNS_CONTROLLER: u32 = 0x01;
/// Identify CNS: the I/O command set specific controller data structure (CSI in CDW11).
pub(crate) const CNS_CSI_CONTROLLER: u32 = 0x06;
/// Bytes in every Identify data structure.
pub(crate) const IDENTIFY_LEN: usize = 4096;

/// Read/Write/Write Zeroes CDW12: Force Unit Access.
pub(crate) const CDW12_FUA: u32 = 1 << 30;
/// Dataset Management CDW11: Attribute – Deallocate.
pub(crate) const DSM_AD: u32 = 1 << 2;
/// Identify Controller ONCS: Dataset Management supported.
pub(crate) const ONCS_DSM: u16 = 1 << 2;
/// Identify Controller ONCS: Write Zeroes supported.
pub(crate) const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// Most logical blocks one Read/Write/Write Zeroes command moves (NLB is a 0-based 16-bit
/// field).
pub(crate) const MAX_NLB: u32 = 1 << 16;
/// The memory page size MDTS and WZSL are counted in. It is really `2^(12 + CAP.MPSMIN)`, but
/// the generic char device cannot read the controller's CAP register; Linux programs
/// `CC.MPS` = 4 KiB and virtually every controller has MPSMIN = 0 (4 KiB), so we assume it.
pub(crate) const MIN_PAGE_SIZE: u64 = 4096;

/// `struct nvme_uring_cmd` (include/uapi/linux/nvme_ioctl.h): the 72-byte payload of an
/// `IORING_OP_URING_CMD` to an NVMe generic char device. `struct nvme_passthru_cmd` (the admin
/// `ioctl`'s argument) has the same layout with `result` in place of `rsvd2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NvmeCmd {
    pub(crate) opcode: u8,
    pub(crate) flags: u8,
    pub(crate) rsvd1: u16,
    pub(crate) nsid: u32,
    pub(crate) cdw2: u32,
    pub(crate) cdw3: u32,
    pub(crate) metadata: u64,
    pub(crate) addr: u64,
    pub(crate) metadata_len: u32,
    pub(crate) data_len: u32,
    pub(crate) cdw10: u32,
    pub(crate) cdw11: u32,
    pub(crate) cdw12: u32,
    pub(crate) cdw13: u32,
    pub(crate) cdw14: u32,
    pub(crate) cdw15: u32,
    pub(crate) timeout_ms: u32,
    /// `rsvd2` in `nvme_uring_cmd`; `result` (completion dword 0) in `nvme_passthru_cmd`.
    pub(crate) result: u32,
}

/// Size of [`NvmeCmd`], as the ioctl numbers encode it.
pub(crate) const NVME_CMD_SIZE: usize = 72;
const _: () = assert!(std::mem::size_of::<NvmeCmd>() == NVME_CMD_SIZE);

impl NvmeCmd {
    /// The 80-byte command area of a 128-byte SQE: the struct in native byte order, then zeroes.
    pub(crate) fn to_sqe_cmd(self) -> [u8; 80] {
        let mut out = [0u8; 80];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&[self.opcode, self.flags]);
        put(&self.rsvd1.to_ne_bytes());
        put(&self.nsid.to_ne_bytes());
        put(&self.cdw2.to_ne_bytes());
        put(&self.cdw3.to_ne_bytes());
        put(&self.metadata.to_ne_bytes());
        put(&self.addr.to_ne_bytes());
        put(&self.metadata_len.to_ne_bytes());
        put(&self.data_len.to_ne_bytes());
        for dw in [
            self.cdw10,
            self.cdw11,
            self.cdw12,
            self.cdw13,
            self.cdw14,
            self.cdw15,
            self.timeout_ms,
            self.result,
        ] {
            put(&dw.to_ne_bytes());
        }
        out
    }
}

/// `NVME_IOCTL_ID` = `_IO('N', 0x40)`: returns the namespace ID of the descriptor.
pub(crate) const NVME_IOCTL_ID: u32 = io(b'N', 0x40);
/// `NVME_IOCTL_ADMIN_CMD` = `_IOWR('N', 0x41, struct nvme_admin_cmd)`.
pub(crate) const NVME_IOCTL_ADMIN_CMD: u32 = iowr(b'N', 0x41, NVME_CMD_SIZE);
/// `NVME_URING_CMD_IO` = `_IOWR('N', 0x80, struct nvme_uring_cmd)`: `addr`/`data_len` are one
/// buffer.
pub(crate) const NVME_URING_CMD_IO: u32 = iowr(b'N', 0x80, NVME_CMD_SIZE);
/// `NVME_URING_CMD_IO_VEC` = `_IOWR('N', 0x81, struct nvme_uring_cmd)`: `addr` is an iovec
/// array and `data_len` its length.
pub(crate) const NVME_URING_CMD_IO_VEC: u32 = iowr(b'N', 0x81, NVME_CMD_SIZE);

/// One Dataset Management range (`struct nvme_dsm_range`), little-endian on the wire.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DsmRange {
    /// Context attributes (0: none).
    pub(crate) cattr: u32,
    /// Length in logical blocks (not 0-based).
    pub(crate) nlb: u32,
    /// Starting LBA.
    pub(crate) slba: u64,
}
const _: () = assert!(std::mem::size_of::<DsmRange>() == 16);

impl DsmRange {
    /// The range `[slba, slba + nlb)` in the device's (little-endian) byte order.
    pub(crate) fn new(slba: u64, nlb: u32) -> Self {
        DsmRange {
            cattr: 0,
            nlb: nlb.to_le(),
            slba: slba.to_le(),
        }
    }
}

/// A Read or Write of `nlb` (>= 1, <= [`MAX_NLB`]) blocks at `slba`; the caller fills in the
/// data pointer and length. `fua` forces the data to media before completion.
pub(crate) fn rw_cmd(write: bool, nsid: u32, slba: u64, nlb: u32, fua: bool) -> NvmeCmd {
    debug_assert!((1..=MAX_NLB).contains(&nlb));
    NvmeCmd {
        opcode: if write { OPC_WRITE } else { OPC_READ },
        nsid,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: ((nlb - 1) & 0xffff) | if fua { CDW12_FUA } else { 0 },
        ..NvmeCmd::default()
    }
}

/// A Flush of the namespace's volatile write cache.
pub(crate) fn flush_cmd(nsid: u32) -> NvmeCmd {
    NvmeCmd {
        opcode: OPC_FLUSH,
        nsid,
        ..NvmeCmd::default()
    }
}

/// A Write Zeroes of `nlb` (>= 1, <= [`MAX_NLB`]) blocks at `slba`.
pub(crate) fn write_zeroes_cmd(nsid: u32, slba: u64, nlb: u32) -> NvmeCmd {
    debug_assert!((1..=MAX_NLB).contains(&nlb));
    NvmeCmd {
        opcode: OPC_WRITE_ZEROES,
        nsid,
        cdw10: slba as u32,
        cdw11: (slba >> 32) as u32,
        cdw12: (nlb - 1) & 0xffff,
        ..NvmeCmd::default()
    }
}

/// A Dataset Management Deallocate of the one [`DsmRange`] at `range` (16 bytes).
pub(crate) fn dsm_deallocate_cmd(nsid: u32, range: *const DsmRange) -> NvmeCmd {
    NvmeCmd {
        opcode: OPC_DSM,
        nsid,
        addr: range as u64,
        data_len: std::mem::size_of::<DsmRange>() as u32,
        cdw10: 0, // NR: number of ranges, 0-based
        cdw11: DSM_AD,
        ..NvmeCmd::default()
    }
}

/// An admin Identify with `cns` (and `csi`) for `nsid` into the 4096-byte buffer at `buf`.
pub(crate) fn identify_cmd(cns: u32, csi: u8, nsid: u32, buf: *mut u8) -> NvmeCmd {
    NvmeCmd {
        opcode: ADMIN_IDENTIFY,
        nsid,
        addr: buf as u64,
        data_len: IDENTIFY_LEN as u32,
        cdw10: cns,
        cdw11: u32::from(csi) << 24,
        ..NvmeCmd::default()
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// What we use of an Identify Namespace data structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NamespaceInfo {
    /// NSZE: capacity in logical blocks.
    pub(crate) nsze: u64,
    /// NSFEAT.
    pub(crate) nsfeat: u8,
    /// DLFEAT bits 2:0 = 001b: deallocated blocks read back as zeroes.
    pub(crate) dealloc_reads_zeroes: bool,
    /// The LBA format in use: index into LBAF.
    pub(crate) lba_format: usize,
    /// LBADS of that format: log2 of the logical block size.
    pub(crate) lbads: u8,
    /// MS of that format: metadata bytes per block.
    pub(crate) ms: u16,
}

/// Parses an Identify Namespace (CNS 0) data structure; `None` if it is short or names an LBA
/// format that does not exist.
pub(crate) fn parse_identify_namespace(d: &[u8]) -> Option<NamespaceInfo> {
    if d.len() < IDENTIFY_LEN {
        return None;
    }
    let nlbaf = usize::from(d[25]) + 1; // 0-based count
    let flbas = d[26];
    // FLBAS bits 3:0 are the low bits of the format index; bits 6:5 the high ones where more
    // than 16 formats exist (NVMe 2.0; Linux's nvme_lbaf_index).
    let lba_format = if nlbaf > 16 {
        usize::from(flbas & 0x0f) | (usize::from(flbas & 0x60) >> 1)
    } else {
        usize::from(flbas & 0x0f)
    };
    if lba_format >= nlbaf.min(64) {
        return None;
    }
    let lbaf = le32(d, 128 + 4 * lba_format);
    Some(NamespaceInfo {
        nsze: le64(d, 0),
        nsfeat: d[24],
        dealloc_reads_zeroes: d[33] & 0x7 == 0x1,
        lba_format,
        lbads: (lbaf >> 16) as u8,
        ms: lbaf as u16,
    })
}

/// What we use of an Identify Controller data structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ControllerInfo {
    /// MDTS: the largest transfer is `2^mdts` minimum pages; 0 means no limit.
    pub(crate) mdts: u8,
    /// ONCS: optional NVM commands supported.
    pub(crate) oncs: u16,
    /// VWC bit 0: a volatile write cache is present.
    pub(crate) volatile_write_cache: bool,
}

/// Parses an Identify Controller (CNS 1) data structure.
pub(crate) fn parse_identify_controller(d: &[u8]) -> Option<ControllerInfo> {
    if d.len() < IDENTIFY_LEN {
        return None;
    }
    Some(ControllerInfo {
        mdts: d[77],
        oncs: le16(d, 520),
        volatile_write_cache: d[525] & 1 != 0,
    })
}

/// What we use of the NVM command set's I/O Command Set specific Identify Controller data
/// structure (CNS 6, CSI 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NvmControllerInfo {
    /// WZSL: Write Zeroes size limit, `2^wzsl` minimum pages; 0 means none reported.
    pub(crate) wzsl: u8,
    /// DMRSL: most logical blocks in one Dataset Management range; 0 means no limit.
    pub(crate) dmrsl: u32,
}

/// Parses an NVM command set Identify Controller (CNS 6, CSI 0) data structure.
pub(crate) fn parse_identify_nvm_controller(d: &[u8]) -> Option<NvmControllerInfo> {
    if d.len() < IDENTIFY_LEN {
        return None;
    }
    Some(NvmControllerInfo {
        wzsl: d[1],
        dmrsl: le32(d, 4),
    })
}

/// `2^exp` minimum pages in bytes, `None` for 0 ("no limit") or one too large to matter.
pub(crate) fn pages_limit_bytes(exp: u8) -> Option<u64> {
    // 4096 << 51 = 2^63 is the largest that fits in a u64.
    if exp == 0 || exp > 51 {
        return None;
    }
    Some(MIN_PAGE_SIZE << exp)
}

/// Generic command status (SCT 0): Invalid Command Opcode.
pub(crate) const SC_INVALID_OPCODE: i32 = 0x01;
/// Generic command status (SCT 0): Invalid Field in Command.
pub(crate) const SC_INVALID_FIELD: i32 = 0x02;

/// The result of a passthrough command (the CQE's `res`: 0, a negative errno, or the positive
/// NVMe status field: SC in bits 7:0, SCT in bits 10:8, then CRD/More/DNR) as a request status.
pub(crate) fn status_of(res: i32) -> IoStatus {
    if res == 0 {
        return IoStatus::Success;
    }
    if res > 0 {
        let sct = (res >> 8) & 0x7;
        let sc = res & 0xff;
        if sct == 0 && (sc == SC_INVALID_OPCODE || sc == SC_INVALID_FIELD) {
            return IoStatus::Unsupported;
        }
    }
    IoStatus::IoError
}

/// A readable name for a passthrough result, for error messages.
pub(crate) fn describe_result(res: i32) -> String {
    if res < 0 {
        format!(
            "{} (errno {})",
            std::io::Error::from_raw_os_error(-res),
            -res
        )
    } else {
        format!(
            "NVMe status 0x{res:x} (status code type {}, status code 0x{:02x})",
            (res >> 8) & 0x7,
            res & 0xff
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `_IOWR` from first principles on x86-64/arm64: dir (3) << 30 | size << 16 | type << 8 | nr.
    #[test]
    fn ioctl_numbers_match_the_kernel() {
        let iowr = |nr: u32| (3u32 << 30) | (72 << 16) | (u32::from(b'N') << 8) | nr;
        assert_eq!(iowr(0x80), 0xc048_4e80);
        #[cfg(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        ))]
        {
            assert_eq!(NVME_URING_CMD_IO, 0xc048_4e80);
            assert_eq!(NVME_URING_CMD_IO_VEC, 0xc048_4e81);
            assert_eq!(NVME_IOCTL_ID, 0x4e40);
            assert_eq!(NVME_IOCTL_ADMIN_CMD, 0xc048_4e41);
            assert_eq!(NVME_URING_CMD_IO, iowr(0x80));
            assert_eq!(NVME_IOCTL_ADMIN_CMD, iowr(0x41));
        }
        assert_eq!(std::mem::size_of::<NvmeCmd>(), 72);
    }

    #[test]
    fn struct_layout_matches_nvme_uring_cmd() {
        let c = NvmeCmd {
            opcode: 0x11,
            flags: 0x22,
            rsvd1: 0x3333,
            nsid: 0x4444_4444,
            cdw2: 0x5555_5555,
            cdw3: 0x6666_6666,
            metadata: 0x7777_7777_7777_7777,
            addr: 0x8888_8888_8888_8888,
            metadata_len: 0x9999_9999,
            data_len: 0xaaaa_aaaa,
            cdw10: 0x0a0a_0a0a,
            cdw11: 0x0b0b_0b0b,
            cdw12: 0x0c0c_0c0c,
            cdw13: 0x0d0d_0d0d,
            cdw14: 0x0e0e_0e0e,
            cdw15: 0x0f0f_0f0f,
            timeout_ms: 0x1010_1010,
            result: 0x2020_2020,
        };
        let b = c.to_sqe_cmd();
        // Offsets from include/uapi/linux/nvme_ioctl.h.
        let at = |off: usize, len: usize| &b[off..off + len];
        assert_eq!(at(0, 1), [0x11]);
        assert_eq!(at(1, 1), [0x22]);
        assert_eq!(at(2, 2), 0x3333u16.to_ne_bytes());
        assert_eq!(at(4, 4), 0x4444_4444u32.to_ne_bytes());
        assert_eq!(at(8, 4), 0x5555_5555u32.to_ne_bytes());
        assert_eq!(at(12, 4), 0x6666_6666u32.to_ne_bytes());
        assert_eq!(at(16, 8), 0x7777_7777_7777_7777u64.to_ne_bytes());
        assert_eq!(at(24, 8), 0x8888_8888_8888_8888u64.to_ne_bytes());
        assert_eq!(at(32, 4), 0x9999_9999u32.to_ne_bytes());
        assert_eq!(at(36, 4), 0xaaaa_aaaau32.to_ne_bytes());
        assert_eq!(at(40, 4), 0x0a0a_0a0au32.to_ne_bytes());
        assert_eq!(at(60, 4), 0x0f0f_0f0fu32.to_ne_bytes());
        assert_eq!(at(64, 4), 0x1010_1010u32.to_ne_bytes());
        assert_eq!(at(68, 4), 0x2020_2020u32.to_ne_bytes());
        assert!(b[72..].iter().all(|&x| x == 0));
        // The in-memory struct (what the admin ioctl passes) agrees with the encoding.
        // SAFETY: NvmeCmd is repr(C), 72 bytes of plain integers without padding.
        let raw: [u8; 72] = unsafe { std::mem::transmute(c) };
        assert_eq!(raw[..], b[..72]);
    }

    #[test]
    fn read_write_fields() {
        let r = rw_cmd(false, 1, 0x1_2345_6789, 8, false);
        assert_eq!(r.opcode, 0x02);
        assert_eq!(r.nsid, 1);
        assert_eq!((r.cdw10, r.cdw11), (0x2345_6789, 0x1));
        assert_eq!(r.cdw12, 7, "NLB is 0-based");
        assert_eq!((r.cdw13, r.cdw14, r.cdw15), (0, 0, 0));
        let w = rw_cmd(true, 7, 0, MAX_NLB, true);
        assert_eq!(w.opcode, 0x01);
        assert_eq!(w.nsid, 7);
        assert_eq!(w.cdw12 & 0xffff, 0xffff, "65536 blocks is NLB 0xffff");
        assert_eq!(w.cdw12 & CDW12_FUA, CDW12_FUA);
        assert_eq!(rw_cmd(true, 1, 5, 1, false).cdw12, 0);
        assert_eq!(rw_cmd(true, 1, u64::MAX, 1, false).cdw11, u32::MAX);
    }

    #[test]
    fn flush_write_zeroes_and_dsm_fields() {
        let f = flush_cmd(3);
        assert_eq!((f.opcode, f.nsid, f.addr, f.data_len), (0x00, 3, 0, 0));
        let z = write_zeroes_cmd(2, 0xabc_0000_0001, 16);
        assert_eq!(z.opcode, 0x08);
        assert_eq!((z.cdw10, z.cdw11, z.cdw12), (1, 0xabc, 15));
        assert_eq!((z.addr, z.data_len), (0, 0));

        let range = DsmRange::new(0x1122_3344_5566, 2048);
        let d = dsm_deallocate_cmd(1, &range);
        assert_eq!(d.opcode, 0x09);
        assert_eq!(d.cdw10, 0, "one range: NR is 0-based");
        assert_eq!(d.cdw11, 1 << 2, "AD attribute");
        assert_eq!(d.data_len, 16);
        assert_eq!(d.addr, &range as *const DsmRange as u64);
        // The wire layout: cattr (le32), nlb (le32), slba (le64).
        // SAFETY: DsmRange is repr(C), 16 bytes of plain integers without padding.
        let raw: [u8; 16] = unsafe { std::mem::transmute(range) };
        assert_eq!(raw[0..4], [0, 0, 0, 0]);
        assert_eq!(raw[4..8], 2048u32.to_le_bytes());
        assert_eq!(raw[8..16], 0x1122_3344_5566u64.to_le_bytes());
        assert_eq!(std::mem::align_of::<DsmRange>(), 16);
    }

    #[test]
    fn identify_command_and_parsing() {
        let mut buf = vec![0u8; IDENTIFY_LEN];
        let c = identify_cmd(CNS_CSI_CONTROLLER, 0, 0, buf.as_mut_ptr());
        assert_eq!((c.opcode, c.cdw10, c.cdw11, c.data_len), (0x06, 6, 0, 4096));

        // Namespace: 0x10000 blocks, format 1 = 4096-byte blocks (LBADS 12), no metadata.
        let mut ns = vec![0u8; IDENTIFY_LEN];
        ns[0..8].copy_from_slice(&0x10000u64.to_le_bytes());
        ns[25] = 1; // two formats
        ns[26] = 0x01;
        ns[33] = 0x09; // DLFEAT: reads zeroes (+ guard bit)
        ns[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        ns[132..136].copy_from_slice(&(12u32 << 16).to_le_bytes());
        let info = parse_identify_namespace(&ns).expect("parse");
        assert_eq!(
            (info.nsze, info.lba_format, info.lbads, info.ms),
            (0x10000, 1, 12, 0)
        );
        assert!(info.dealloc_reads_zeroes);
        // Format with 8 bytes of metadata.
        ns[26] = 0x00;
        ns[128..132].copy_from_slice(&((9u32 << 16) | 8).to_le_bytes());
        let info = parse_identify_namespace(&ns).expect("parse");
        assert_eq!((info.lbads, info.ms), (9, 8));
        // FLBAS naming a format past NLBAF: refused.
        ns[26] = 0x05;
        assert!(parse_identify_namespace(&ns).is_none());
        // More than 16 formats: FLBAS bits 6:5 are the high bits of the index.
        ns[25] = 63;
        ns[26] = 0x20 | 0x01; // index 0x11
        ns[128 + 4 * 0x11..128 + 4 * 0x12].copy_from_slice(&(12u32 << 16).to_le_bytes());
        assert_eq!(
            parse_identify_namespace(&ns).map(|i| i.lba_format),
            Some(0x11)
        );
        assert!(parse_identify_namespace(&ns[..100]).is_none());

        let mut ctrl = vec![0u8; IDENTIFY_LEN];
        ctrl[77] = 7;
        ctrl[520..522].copy_from_slice(&(ONCS_DSM | ONCS_WRITE_ZEROES).to_le_bytes());
        ctrl[525] = 1;
        let c = parse_identify_controller(&ctrl).expect("parse");
        assert_eq!(c.mdts, 7);
        assert_eq!(c.oncs & ONCS_DSM, ONCS_DSM);
        assert_eq!(c.oncs & ONCS_WRITE_ZEROES, ONCS_WRITE_ZEROES);
        assert!(c.volatile_write_cache);

        let mut nvm = vec![0u8; IDENTIFY_LEN];
        nvm[1] = 5;
        nvm[4..8].copy_from_slice(&4096u32.to_le_bytes());
        assert_eq!(
            parse_identify_nvm_controller(&nvm),
            Some(NvmControllerInfo {
                wzsl: 5,
                dmrsl: 4096
            })
        );
    }

    #[test]
    fn mdts_in_bytes() {
        assert_eq!(pages_limit_bytes(0), None, "0: no limit");
        assert_eq!(pages_limit_bytes(1), Some(8192));
        assert_eq!(pages_limit_bytes(5), Some(128 << 10));
        assert_eq!(pages_limit_bytes(7), Some(512 << 10));
        assert_eq!(pages_limit_bytes(51), Some(1u64 << 63));
        assert_eq!(
            pages_limit_bytes(52),
            None,
            "2^64 bytes: no limit that matters"
        );
        assert_eq!(pages_limit_bytes(255), None);
    }

    #[test]
    fn statuses() {
        assert_eq!(status_of(0), IoStatus::Success);
        assert_eq!(status_of(-libc::EIO), IoStatus::IoError);
        assert_eq!(status_of(-libc::EINTR), IoStatus::IoError);
        assert_eq!(status_of(0x01), IoStatus::Unsupported, "invalid opcode");
        assert_eq!(status_of(0x02), IoStatus::Unsupported, "invalid field");
        assert_eq!(
            status_of(0x4002),
            IoStatus::Unsupported,
            "invalid field with DNR set"
        );
        assert_eq!(status_of(0x80), IoStatus::IoError, "LBA out of range");
        assert_eq!(
            status_of(0x281),
            IoStatus::IoError,
            "media: unrecovered read"
        );
        assert_eq!(
            status_of(0x102),
            IoStatus::IoError,
            "SCT 1 SC 2 is not generic"
        );
        assert!(describe_result(-libc::EOPNOTSUPP).contains("errno 95"));
        assert!(describe_result(0x2).contains("status code 0x02"));
    }
}
