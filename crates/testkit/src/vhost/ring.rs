//! Split virtqueues built by hand in guest memory: descriptor table, avail ring, used ring.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use super::consts::desc;
use super::memory::GuestMemory;

/// One split-ring descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// NEXT / WRITE / INDIRECT.
    pub flags: u16,
    /// Next descriptor of the chain (with NEXT).
    pub next: u16,
}

impl Desc {
    /// A device-readable buffer.
    pub fn readable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }

    /// A device-writable buffer.
    pub fn writable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            flags: desc::WRITE,
            next: 0,
        }
    }

    /// An indirect table of `entries` descriptors at `addr`.
    pub fn indirect(addr: u64, entries: u32) -> Self {
        Desc {
            addr,
            len: entries * 16,
            flags: desc::INDIRECT,
            next: 0,
        }
    }

    /// The 16-byte ring form.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// Writes `descs` as a table at `table` (an indirect table, or any table), linking entry i to
/// i + 1 with NEXT unless `link` is false (then flags and next are written as given).
pub fn write_table(mem: &GuestMemory, table: u64, descs: &[Desc], link: bool) {
    for (i, d) in descs.iter().enumerate() {
        let mut d = *d;
        if link && i + 1 < descs.len() {
            d.flags |= desc::NEXT;
            d.next = (i + 1) as u16;
        }
        mem.write(table + 16 * i as u64, &d.to_bytes());
    }
}

/// One used-ring element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// The head of the chain returned.
    pub id: u32,
    /// Bytes the device wrote into the chain.
    pub len: u32,
}

/// A split virtqueue laid out in guest memory, with the driver-side indices.
#[derive(Clone, Debug)]
pub struct SplitRing {
    /// Entries.
    pub size: u16,
    /// Guest address of the descriptor table (16-byte aligned).
    pub desc: u64,
    /// Guest address of the avail ring.
    pub avail: u64,
    /// Guest address of the used ring (4-byte aligned; page aligned here).
    pub used: u64,
    /// The driver's next avail index.
    avail_idx: u16,
    /// Used elements consumed so far.
    used_seen: u16,
    /// Next descriptor slot [`submit`](Self::submit) writes a chain at.
    next_slot: u16,
}

impl SplitRing {
    /// Bytes a ring of `size` takes at a page-aligned base (see [`at`](Self::at)).
    pub fn bytes(size: u16) -> u64 {
        let s = u64::from(size);
        let used = (16 * s + 6 + 2 * s).next_multiple_of(4096);
        (used + 6 + 8 * s).next_multiple_of(4096)
    }

    /// A ring of `size` entries at `base` (page aligned): table, avail right after it, used on
    /// the next page. All three are zeroed.
    pub fn at(mem: &GuestMemory, size: u16, base: u64) -> Self {
        let s = u64::from(size);
        let ring = SplitRing {
            size,
            desc: base,
            avail: base + 16 * s,
            used: base + (16 * s + 6 + 2 * s).next_multiple_of(4096),
            avail_idx: 0,
            used_seen: 0,
            next_slot: 0,
        };
        mem.fill(base, Self::bytes(size) as usize, 0);
        ring
    }

    /// Sets the driver's indices (after SET_VRING_BASE `idx`).
    pub fn set_base(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.used_seen = idx;
    }

    /// Writes descriptor `i` of the table exactly as given.
    pub fn set_desc(&self, mem: &GuestMemory, i: u16, d: Desc) {
        mem.write(self.desc + 16 * u64::from(i), &d.to_bytes());
    }

    /// Writes `descs` as a chain in consecutive slots (wrapping) starting at the next free slot,
    /// linked with NEXT; returns the head.
    pub fn write_chain(&mut self, mem: &GuestMemory, descs: &[Desc]) -> u16 {
        assert!(
            !descs.is_empty() && descs.len() <= usize::from(self.size),
            "chain of {} on a ring of {}",
            descs.len(),
            self.size
        );
        let head = self.next_slot;
        for (k, d) in descs.iter().enumerate() {
            let slot = (head as usize + k) % usize::from(self.size);
            let mut d = *d;
            if k + 1 < descs.len() {
                d.flags |= desc::NEXT;
                d.next = ((slot + 1) % usize::from(self.size)) as u16;
            }
            self.set_desc(mem, slot as u16, d);
        }
        self.next_slot = ((head as usize + descs.len()) % usize::from(self.size)) as u16;
        head
    }

    /// Puts `head` in the next avail entry and publishes it (avail idx + 1).
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
        self.put_avail(mem, self.avail_idx, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.write_u16(self.avail + 2, self.avail_idx);
    }

    /// [`write_chain`](Self::write_chain) then [`publish`](Self::publish); returns the head.
    pub fn submit(&mut self, mem: &GuestMemory, descs: &[Desc]) -> u16 {
        let head = self.write_chain(mem, descs);
        self.publish(mem, head);
        head
    }

    /// Writes avail ring entry `idx % size` without publishing it.
    pub fn put_avail(&self, mem: &GuestMemory, idx: u16, head: u16) {
        let slot = u64::from(idx % self.size);
        mem.write_u16(self.avail + 4 + 2 * slot, head);
    }

    /// Publishes an arbitrary avail index (and remembers it as the driver's).
    pub fn set_avail_idx(&mut self, mem: &GuestMemory, idx: u16) {
        self.avail_idx = idx;
        fence(Ordering::SeqCst);
        mem.write_u16(self.avail + 2, idx);
    }

    /// The driver's avail index.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        let v = mem.read_u16(self.used + 2);
        fence(Ordering::Acquire);
        v
    }

    /// Used element `n % size`.
    pub fn used_elem(&self, mem: &GuestMemory, n: u16) -> UsedElem {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        UsedElem {
            id: mem.read_u32(at),
            len: mem.read_u32(at + 4),
        }
    }

    /// Waits up to `timeout` for the next used element.
    pub fn wait_used(&mut self, mem: &GuestMemory, timeout: Duration) -> Option<UsedElem> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.used_idx(mem) != self.used_seen {
                let e = self.used_elem(mem, self.used_seen);
                self.used_seen = self.used_seen.wrapping_add(1);
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Used elements published and not consumed yet.
    pub fn pending_used(&self, mem: &GuestMemory) -> u16 {
        self.used_idx(mem).wrapping_sub(self.used_seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_layout_is_aligned_and_chains_link_and_wrap() {
        let mem = GuestMemory::new(1 << 20).expect("guest memory");
        let mut ring = SplitRing::at(&mem, 8, 4096);
        assert_eq!((ring.desc, ring.avail), (4096, 4096 + 128));
        assert_eq!(ring.used % 4096, 0);
        assert!(ring.used >= ring.avail + 6 + 16);
        assert!(4096 + SplitRing::bytes(8) >= ring.used + 6 + 64);
        // A chain of 3 from slot 6 wraps to slot 0.
        for _ in 0..2 {
            ring.write_chain(&mem, &[Desc::readable(0, 1)]);
        }
        ring.write_chain(&mem, &[Desc::readable(0, 1); 4]);
        let head = ring.submit(
            &mem,
            &[
                Desc::readable(1, 16),
                Desc::writable(2, 8),
                Desc::writable(3, 1),
            ],
        );
        assert_eq!(head, 6);
        let d = |i: u64| mem.read(ring.desc + 16 * i, 16);
        assert_eq!(d(6)[12..16], [desc::NEXT as u8, 0, 7, 0]);
        assert_eq!(d(7)[12..16], [(desc::NEXT | desc::WRITE) as u8, 0, 0, 0]);
        assert_eq!(d(0)[12..14], [desc::WRITE as u8, 0]);
        assert_eq!(mem.read_u16(ring.avail + 2), 1);
        assert_eq!(mem.read_u16(ring.avail + 4), 6);
        // The device returns it.
        mem.write(ring.used + 4, &[6, 0, 0, 0, 9, 0, 0, 0]);
        mem.write_u16(ring.used + 2, 1);
        assert_eq!(
            ring.wait_used(&mem, Duration::from_millis(10)),
            Some(UsedElem { id: 6, len: 9 })
        );
        assert_eq!(ring.wait_used(&mem, Duration::from_millis(10)), None);
    }
}
