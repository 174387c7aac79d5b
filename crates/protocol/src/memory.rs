//! Guest memory as the data path sees it: one snapshot of the frontend's memory table, sorted by
//! guest physical address, translated with a short scan over plain `(start, len, host)` triples
//! instead of vm-memory's per-access trait dispatch (which was 22% of the reactor's profile).
//!
//! The mappings themselves are still vm-memory's (`GuestMemoryMmap`, kept inside the snapshot),
//! so they stay mapped for as long as any holder of the snapshot lives. Every translation checks
//! the whole range against one region with overflow-checked arithmetic; a range that is not
//! entirely inside one region is refused (callers split at region ends where that is allowed).

use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::sigbus::Guard;

/// One region: guest addresses `start .. start + len` live at host address `host`.
#[derive(Clone, Copy, Debug)]
struct HostRegion {
    start: u64,
    len: u64,
    host: *mut u8,
}

/// A snapshot of guest memory: the regions of one memory table. Cheap to share (`Arc`), never
/// changed after it is built; a new memory table is a new snapshot.
pub struct GuestMemory {
    regions: Box<[HostRegion]>,
    mmap: GuestMemoryMmap,
    /// SIGBUS protection of the regions that need it; dropped after `mmap` (field order), so a
    /// range is never unregistered while this snapshot still maps it.
    _guards: Vec<Arc<Guard>>,
}

// SAFETY: the host pointers point into mappings owned by `mmap` (vm-memory's regions, which are
// Send + Sync), which live as long as this value; a `GuestMemory` is never mutated after it is
// built, and guest memory is shared with the guest by design (accesses through it are raw
// copies into memory another party may change at any time, as with vm-memory itself).
unsafe impl Send for GuestMemory {}
// SAFETY: as above; `&GuestMemory` only hands out addresses.
unsafe impl Sync for GuestMemory {}

impl Default for GuestMemory {
    fn default() -> Self {
        GuestMemory::new(GuestMemoryMmap::default())
    }
}

impl GuestMemory {
    /// Takes over vm-memory's table (regions are already sorted and non-overlapping: vm-memory
    /// checks that when it is built).
    pub fn new(mmap: GuestMemoryMmap) -> Self {
        Self::with_guards(mmap, Vec::new())
    }

    /// As [`new`](Self::new), keeping the regions' SIGBUS guards registered for as long as
    /// this snapshot lives.
    pub(crate) fn with_guards(mmap: GuestMemoryMmap, guards: Vec<Arc<Guard>>) -> Self {
        let regions = mmap
            .iter()
            .map(|r| HostRegion {
                start: r.start_addr().0,
                len: r.len(),
                host: r.as_ptr(),
            })
            .collect();
        GuestMemory {
            regions,
            mmap,
            _guards: guards,
        }
    }

    /// A shared snapshot of `mmap`.
    pub fn shared(mmap: GuestMemoryMmap) -> Arc<Self> {
        Arc::new(Self::new(mmap))
    }

    /// vm-memory's view of the same table (control plane, tests).
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mmap
    }

    /// Number of regions.
    pub fn num_regions(&self) -> usize {
        self.regions.len()
    }

    #[inline]
    fn region(&self, gpa: u64) -> Option<&HostRegion> {
        // Frontends use a handful of regions (QEMU: one or two for RAM): a scan beats a search.
        self.regions
            .iter()
            .find(|r| gpa >= r.start && gpa - r.start < r.len)
    }

    /// The host address of guest range `gpa .. gpa + len` when all of it lies in one region
    /// (`len` 0 is treated as 1: the address itself must be valid).
    #[inline]
    pub fn host(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let r = self.region(gpa)?;
        let off = gpa - r.start;
        if len.max(1) > r.len - off {
            return None;
        }
        // SAFETY: `off < r.len`, so the result stays inside the region's mapping.
        Some(unsafe { r.host.add(off as usize) })
    }

    /// The host address of `gpa` and how many bytes from there on are in the same region.
    #[inline]
    pub fn host_run(&self, gpa: u64) -> Option<(*mut u8, u64)> {
        let r = self.region(gpa)?;
        let off = gpa - r.start;
        // SAFETY: `off < r.len`, so the result stays inside the region's mapping.
        Some((unsafe { r.host.add(off as usize) }, r.len - off))
    }

    /// The guest address of host address `host`, if it lies in one of the regions (dirty
    /// logging of buffers known only by their host iovecs).
    pub fn guest_addr(&self, host: *const u8) -> Option<u64> {
        let h = host as usize;
        self.regions.iter().find_map(|r| {
            let base = r.host as usize;
            (h >= base && ((h - base) as u64) < r.len).then(|| r.start + (h - base) as u64)
        })
    }

    /// Faults repaired in this table's regions so far (the frontend shrank a file under us);
    /// nothing to read (0) when every region is sealed, the usual case.
    pub(crate) fn repaired_faults(&self) -> u64 {
        self._guards.iter().map(|g| g.hits()).sum()
    }

    /// One past the highest guest address in the table (0 when empty).
    pub fn end_addr(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.start + r.len)
            .max()
            .unwrap_or(0)
    }

    /// Whether `gpa .. gpa + len` lies in one region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.host(gpa, len).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn two_regions() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x10000), 0x2000)])
            .expect("memory")
    }

    #[test]
    fn translation_matches_vm_memory_and_refuses_ranges_across_regions() {
        let m = two_regions();
        let g = GuestMemory::new(m.clone());
        for &gpa in &[0u64, 0x10, 0xfff, 0x10000, 0x10fff, 0x11fff] {
            let ours = g.host(gpa, 1).expect("inside");
            let theirs = m.get_host_address(GuestAddress(gpa)).expect("vm-memory");
            assert_eq!(ours, theirs, "gpa {gpa:#x}");
            assert_eq!(g.guest_addr(ours), Some(gpa));
        }
        assert!(g.host(0xfff, 2).is_none(), "crosses the end of region 0");
        assert!(g.host(0x1000, 1).is_none(), "hole");
        assert!(g.host(0x12000, 1).is_none(), "past the end");
        assert!(g.host(u64::MAX, 1).is_none());
        assert!(g.host(0x11000, u64::MAX).is_none(), "length overflow");
        assert_eq!(g.host_run(0x10800).map(|(_, n)| n), Some(0x1800));
        m.write_obj(0xabu8, GuestAddress(0x10010)).expect("write");
        // SAFETY: a byte inside a live mapping.
        assert_eq!(unsafe { *g.host(0x10010, 1).expect("inside") }, 0xab);
    }
}
