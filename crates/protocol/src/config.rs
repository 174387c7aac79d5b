//! The virtio-blk configuration space (`struct virtio_blk_config`) and feature bits.

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::request::{DeviceLimits, SECTOR_SIZE, SEG_MAX, SIZE_MAX};

/// Offset of `writeback` in the config space, the one field a driver may write.
pub const WRITEBACK_OFFSET: u32 = 32;
/// Bytes of the config space we serve (up to and including `unused1`).
pub const CONFIG_LEN: usize = 60;
/// Largest discard / write-zeroes request, in sectors (1 GiB).
const MAX_RANGE_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;

/// The virtio feature bits offered for a device with these limits.
pub fn device_features(limits: &DeviceLimits) -> u64 {
    let mut bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_TOPOLOGY,
        VIRTIO_BLK_F_CONFIG_WCE,
        VIRTIO_BLK_F_MQ,
    ]
    .iter()
    .fold(0u64, |acc, &b| acc | 1 << b);
    if limits.read_only {
        bits |= 1 << VIRTIO_BLK_F_RO;
    } else {
        if limits.discard {
            bits |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if limits.write_zeroes {
            bits |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
    }
    bits | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// Builds the config space bytes.
pub fn config_space(limits: &DeviceLimits, num_queues: u16, writeback: bool) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &(limits.capacity / SECTOR_SIZE).to_le_bytes()); // capacity, in 512-byte sectors
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    // 16..20: geometry, not offered.
    put(20, &limits.block_size.to_le_bytes());
    // 24: physical_block_exp = 0, 25: alignment_offset = 0.
    put(26, &1u16.to_le_bytes()); // min_io_size, in logical blocks
    put(28, &0u32.to_le_bytes()); // opt_io_size: no preference
    put(32, &[u8::from(writeback)]);
    put(34, &num_queues.to_le_bytes());
    let align = limits.block_size / SECTOR_SIZE as u32;
    put(36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
    put(40, &1u32.to_le_bytes()); // max_discard_seg
    put(44, &align.to_le_bytes()); // discard_sector_alignment
    put(48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[0]); // write_zeroes_may_unmap: zeroes are written, never deallocated
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout_matches_the_spec() {
        let limits = DeviceLimits {
            capacity: 1 << 30,
            block_size: 4096,
            read_only: false,
            discard: true,
            write_zeroes: true,
        };
        let c = config_space(&limits, 4, true);
        let u64_at = |o: usize| u64::from_le_bytes(c[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(c[o..o + 2].try_into().expect("2 bytes"));
        assert_eq!(u64_at(0), 2 * 1024 * 1024);
        assert_eq!(u32_at(12), SEG_MAX);
        assert_eq!(u32_at(20), 4096);
        assert_eq!(c[32], 1);
        assert_eq!(u16_at(34), 4);
        assert_eq!(u32_at(40), 1);
        assert_eq!(u32_at(44), 8);
    }

    #[test]
    fn read_only_offers_ro_and_no_discard() {
        let ro = DeviceLimits {
            capacity: 1 << 20,
            block_size: 512,
            read_only: true,
            discard: true,
            write_zeroes: true,
        };
        let f = device_features(&ro);
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(
            f & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
            0
        );
        assert_ne!(f & (1 << VIRTIO_F_VERSION_1), 0);
    }
}
