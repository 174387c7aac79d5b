//! A split virtqueue (virtio 1.2, 2.7) read and written through host pointers resolved once per
//! memory table, instead of a guest-memory lookup per access. This is the hand-written fast path
//! that replaces `virtio_queue::Queue` on the reactor; its behaviour is tested against
//! virtio-queue's (same chains popped from rings built by virtio-queue's mock, same used ring).
//!
//! What the guest writes is read once into locals and checked there: ring addresses and
//! alignment when the ring starts (and again for every new memory table), every descriptor's
//! table index, the indirect table's address and length, and the chain's length (at most the
//! queue size, so a looping chain ends). A violation ends the chain as *broken*; the caller
//! answers it without a status byte.

use std::sync::atomic::{AtomicU16, Ordering};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};

use crate::memory::GuestMemory;

/// Largest ring the target accepts (QEMU's vhost-user-blk and SPDK allow at most 1024).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Largest indirect table followed (entries): bounds the work one chain can cause.
pub const MAX_INDIRECT: u32 = 4096;

const DESC_SIZE: u64 = 16;

/// A full memory barrier: this side's stores (used ring, `avail_event`) become visible before
/// its next loads (`used_event`, the avail flags and index), the store-to-load order virtio 1.2
/// 2.7.10 needs against the other side's mirror image of the same sequence.
///
/// On x86-64 a locked read-modify-write that changes nothing, as Linux's `smp_mb` and SPDK's
/// `spdk_smp_mb` do, instead of the `mfence` that `fence(SeqCst)` emits: both drain the store
/// buffer, but `mfence` also waits for weakly-ordered and non-temporal work this path never
/// does, and costs more cycles. Elsewhere, `fence(SeqCst)`.
#[inline(always)]
fn full_barrier() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: adds 0 to the 4 bytes just below the stack pointer, in the red zone, which an
    // `asm!` block without `nostack` may use (the compiler keeps nothing there across it): the
    // value stays what it was and no other memory is touched. Without `nomem` the block is also
    // a compiler barrier. The `lock` prefix orders it against all loads and stores (Intel SDM
    // vol. 3A 9.2.2: locked instructions have a total order and are not reordered with loads or
    // stores), which is the full barrier wanted.
    unsafe {
        std::arch::asm!("lock or dword ptr [rsp - 4], 0");
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// virtio's `vring_need_event(event, new, old)`: whether publishing the used indices from `old`
/// to `new` crossed the driver's `used_event`.
#[inline]
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Asks the CPU to start loading the cache line at `p` (a hint: it never faults and changes
/// nothing, whatever the address).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache; it cannot fault or write, for any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One descriptor as read from guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// VRING_DESC_F_* bits.
    pub flags: u16,
    /// Next descriptor's index when `flags` has NEXT.
    pub next: u16,
}

impl Desc {
    /// The device may write the buffer (VRING_DESC_F_WRITE).
    pub fn writable(&self) -> bool {
        self.flags & VRING_DESC_F_WRITE as u16 != 0
    }

    fn has_next(&self) -> bool {
        self.flags & VRING_DESC_F_NEXT as u16 != 0
    }

    fn indirect(&self) -> bool {
        self.flags & VRING_DESC_F_INDIRECT as u16 != 0
    }

    /// Reads the descriptor at `ptr`.
    ///
    /// # Safety
    /// `ptr` must point to 16 readable bytes (guest memory that stays mapped for the call).
    unsafe fn read(ptr: *const u8) -> Desc {
        let mut b = [0u8; 16];
        // SAFETY: the caller guarantees 16 readable bytes; guest memory may change under us, so
        // it is copied once into a local and only the copy is looked at.
        unsafe { std::ptr::copy_nonoverlapping(ptr, b.as_mut_ptr(), 16) };
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        Desc {
            addr: u64_at(0),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// Why a ring could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The size is zero, not a power of two or above [`MAX_QUEUE_SIZE`].
    BadSize,
    /// A ring part is misaligned (descriptors 16, avail 2, used 4 bytes).
    Misaligned,
    /// A ring part is not entirely inside one region of guest memory.
    OutsideMemory,
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RingError::BadSize => "bad ring size",
            RingError::Misaligned => "misaligned ring",
            RingError::OutsideMemory => "ring outside guest memory",
        })
    }
}

impl std::error::Error for RingError {}

/// Where a ring's three parts are, in guest physical addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// Why a chain ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A next index past the table.
    BadIndex,
    /// More descriptors than the queue size (a loop, or a driver bug).
    TooLong,
    /// An indirect descriptor inside an indirect table, or one with NEXT set.
    NestedIndirect,
    /// An indirect table of bad length or outside guest memory.
    BadIndirectTable,
}

/// A split ring: host pointers to its parts plus the device's own indices.
pub struct SplitRing {
    size: u16,
    addrs: RingAddrs,
    desc: *const u8,
    avail: *mut u8,
    used: *mut u8,
    event_idx: bool,
    next_avail: u16,
    next_used: u16,
    /// The used index last made visible to the driver.
    published_used: u16,
    /// The used index the driver was last signalled for (EVENT_IDX), if any.
    signalled_used: Option<u16>,
    /// A "no interrupt wanted" answered without the fence, not yet re-checked with it (see
    /// [`SplitRing::needs_notification`]).
    unconfirmed: Option<Unconfirmed>,
    /// The driver's `used_event` as last loaded (EVENT_IDX).
    used_event_seen: u16,
    /// The last head taken, and how far it lay from the one before (modulo the ring): the guess
    /// for the next head's descriptor (see [`SplitRing::prefetch_guessed_desc`]).
    last_head: u16,
    head_stride: u16,
    /// Unfenced checks left that load `used_event` afresh before the check trusts
    /// `used_event_seen` (see [`SplitRing::needs_notification`]).
    fresh_loads_left: u16,
}

/// Unfenced interrupt checks that load `used_event` afresh after the driver last wanted an
/// interrupt; a driver that wants none for this long is a polling one, whose `used_event`
/// [`SplitRing::needs_notification`] then stops loading on every busy pass.
pub const FRESH_LOADS: u16 = 256;

/// Suppressed signals since the last fenced check: where their used-index window starts and
/// how many there were.
#[derive(Debug, Clone, Copy)]
struct Unconfirmed {
    /// The signalled used index before the first of them (EVENT_IDX's `old`).
    from: u16,
    /// How many unfenced checks answered "no" since.
    checks: u16,
}

/// Unfenced "no interrupt wanted" answers in a row after which [`SplitRing::needs_notification`]
/// re-checks with the fence itself, so the wait of a driver that re-enabled interrupts at the
/// wrong moment stays bounded even while every pass publishes.
pub const CONFIRM_EVERY: u16 = 8;

impl SplitRing {
    /// Checks the ring's geometry against `mem` and resolves its host addresses.
    pub fn new(
        size: u16,
        addrs: RingAddrs,
        event_idx: bool,
        next_avail: u16,
        mem: &GuestMemory,
    ) -> Result<Self, RingError> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(RingError::BadSize);
        }
        let mut ring = SplitRing {
            size,
            addrs,
            desc: std::ptr::null(),
            avail: std::ptr::null_mut(),
            used: std::ptr::null_mut(),
            event_idx,
            next_avail,
            next_used: next_avail,
            published_used: next_avail,
            signalled_used: None,
            unconfirmed: None,
            used_event_seen: 0,
            fresh_loads_left: FRESH_LOADS,
            last_head: 0,
            head_stride: 0,
        };
        ring.remap(mem)?;
        Ok(ring)
    }

    /// Resolves the host addresses again for a new memory table.
    pub fn remap(&mut self, mem: &GuestMemory) -> Result<(), RingError> {
        let n = u64::from(self.size);
        let a = self.addrs;
        if !a.desc.is_multiple_of(16) || !a.avail.is_multiple_of(2) || !a.used.is_multiple_of(4) {
            return Err(RingError::Misaligned);
        }
        let desc = mem.host(a.desc, DESC_SIZE * n);
        let avail = mem.host(a.avail, 6 + 2 * n);
        let used = mem.host(a.used, 6 + 8 * n);
        let (Some(desc), Some(avail), Some(used)) = (desc, avail, used) else {
            return Err(RingError::OutsideMemory);
        };
        // A region whose guest address is not aligned like its mapping can put an aligned guest
        // address at a misaligned host address (found by fuzzing): check what is dereferenced.
        if !(desc as usize).is_multiple_of(16)
            || !(avail as usize).is_multiple_of(2)
            || !(used as usize).is_multiple_of(4)
        {
            return Err(RingError::Misaligned);
        }
        (self.desc, self.avail, self.used) = (desc, avail, used);
        Ok(())
    }

    /// Ring size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest addresses of the ring's parts.
    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    /// The next avail entry the device will take.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The next used entry the device will write.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// The used index the driver can see now.
    pub fn published_used(&self) -> u16 {
        self.published_used
    }

    /// Sets both indices (start of a queue, restart recovery).
    pub fn set_indices(&mut self, next_avail: u16, next_used: u16) {
        self.next_avail = next_avail;
        self.next_used = next_used;
        self.published_used = next_used;
        self.signalled_used = None;
        self.unconfirmed = None;
        self.fresh_loads_left = FRESH_LOADS;
    }

    fn u16_at(&self, base: *mut u8, offset: usize) -> &AtomicU16 {
        // SAFETY: `base` is the avail or used ring, resolved by `remap` to cover its whole
        // length (offsets used here are inside it) and at least 2-byte aligned there; guest
        // memory stays mapped while the poller that owns this ring holds its memory table.
        unsafe { &*base.add(offset).cast::<AtomicU16>() }
    }

    /// The driver's avail index (acquire: entries up to it are visible after this).
    #[inline]
    pub fn avail_idx(&self) -> u16 {
        self.u16_at(self.avail, 2).load(Ordering::Acquire)
    }

    /// The used index as the ring holds it now.
    pub fn used_idx(&self) -> u16 {
        self.u16_at(self.used, 2).load(Ordering::Acquire)
    }

    /// How many avail entries the driver published that the device has not taken. A value above
    /// the ring size means the driver is broken.
    #[inline]
    pub fn pending(&self, avail_idx: u16) -> u16 {
        avail_idx.wrapping_sub(self.next_avail)
    }

    /// Takes the next avail entry (the caller checked `pending` > 0) and returns its head.
    #[inline]
    pub fn pop_head(&mut self) -> u16 {
        let head = self.peek_head(0);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.head_stride = head.wrapping_sub(self.last_head);
        self.last_head = head;
        head
    }

    /// Starts loading the avail entry the driver fills next. Issued before the avail index is
    /// loaded, so in the pass that finds the entry filled its cache miss (a line the driver
    /// just wrote, apart from the index's for most slots) overlaps the index's instead of
    /// following it.
    #[inline]
    pub fn prefetch_next_avail_entry(&self) {
        let slot = usize::from(self.next_avail & (self.size - 1));
        prefetch(self.avail.wrapping_add(4 + 2 * slot));
    }

    /// Starts loading the first descriptor of a guess at the next head: the last head plus the
    /// last step between heads. Drivers hand out descriptors in a steady order (Linux reuses
    /// the chain just freed, step 0; SPDK's and DPDK's initiators take their free list in
    /// order, one chain's length on), so for a driver that submits one request at a time the
    /// descriptor's miss, which otherwise waits for the avail entry's, overlaps it. A wrong
    /// guess loads one line for nothing; the index is masked into the table.
    #[inline]
    pub fn prefetch_guessed_desc(&self) {
        let guess = self.last_head.wrapping_add(self.head_stride) & (self.size - 1);
        prefetch(self.desc_ptr(guess));
    }

    /// Starts loading the first descriptor of the avail entry `ahead` places after the next
    /// one, so that its cache miss (a line the driver wrote) overlaps the work on the chains
    /// before it. The caller checked that the entry is pending; a head outside the ring is
    /// left alone (the pop reports it).
    #[inline]
    pub fn prefetch_desc(&self, ahead: u16) {
        let head = self.peek_head(ahead);
        if head < self.size {
            prefetch(self.desc_ptr(head));
        }
    }

    /// Starts loading the first buffer (the request header) of the avail entry `ahead` places
    /// after the next one, through its first descriptor (best loaded by
    /// [`prefetch_desc`](Self::prefetch_desc) earlier). Only a hint: nothing is checked or
    /// kept; an indirect chain or an address outside guest memory is skipped.
    #[inline]
    pub fn prefetch_first_buffer(&self, mem: &GuestMemory, ahead: u16) {
        let head = self.peek_head(ahead);
        if head >= self.size {
            return;
        }
        // SAFETY: `head < size` and the table of `size` descriptors lies in guest memory that
        // stays mapped while the poller that owns this ring holds its memory table.
        let d = unsafe { Desc::read(self.desc_ptr(head)) };
        if !d.indirect() {
            if let Some((host, _)) = mem.host_run(d.addr) {
                prefetch(host);
            }
        }
    }

    /// Where descriptor `head` of the table lies (in the table when `head < size`).
    #[inline]
    fn desc_ptr(&self, head: u16) -> *const u8 {
        self.desc
            .wrapping_add(usize::from(head) * DESC_SIZE as usize)
    }

    /// The head in the avail entry `ahead` places after the next one, not taken.
    #[inline]
    fn peek_head(&self, ahead: u16) -> u16 {
        let slot = usize::from(self.next_avail.wrapping_add(ahead) & (self.size - 1));
        self.u16_at(self.avail, 4 + 2 * slot)
            .load(Ordering::Relaxed)
    }

    /// The descriptor chain starting at `head` (the caller checked `head < size`).
    #[inline]
    pub fn chain<'a>(&self, mem: &'a GuestMemory, head: u16) -> Chain<'a> {
        Chain {
            mem,
            table: self.desc,
            table_len: u32::from(self.size),
            next: Some(head),
            ttl: u32::from(self.size),
            in_indirect: false,
            error: None,
        }
    }

    /// Writes used element `{head, len}` at the next used slot; it becomes visible to the
    /// driver with the next [`publish_used`](Self::publish_used).
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        let slot = usize::from(self.next_used & (self.size - 1));
        // SAFETY: the used ring covers 4 + 8 * size bytes from `used` (checked by `remap`), it is
        // 4-byte aligned, and `slot < size`.
        unsafe {
            let elem = self.used.add(4 + 8 * slot).cast::<u32>();
            elem.write_volatile(u32::from(head).to_le());
            elem.add(1).write_volatile(len.to_le());
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Rewrites the length of the (not yet published) used element at index `idx`.
    pub fn set_used_len(&mut self, idx: u16, len: u32) {
        let slot = usize::from(idx & (self.size - 1));
        // SAFETY: inside the used ring (checked by `remap`), 4-byte aligned.
        unsafe {
            self.used
                .add(8 + 8 * slot)
                .cast::<u32>()
                .write_volatile(len.to_le())
        };
    }

    /// Byte offset of used slot for used index `idx`, from the start of the used ring (dirty
    /// logging).
    pub fn used_elem_offset(&self, idx: u16) -> u64 {
        4 + 8 * u64::from(idx & (self.size - 1))
    }

    /// Bytes of the used ring (flags, index, ring, avail_event).
    pub fn used_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// The head recorded in used entry `idx` (restart recovery).
    pub fn used_head(&self, idx: u16) -> u16 {
        let slot = usize::from(idx & (self.size - 1));
        // SAFETY: inside the used ring (checked by `remap`), 4-byte aligned.
        let id = unsafe { self.used.add(4 + 8 * slot).cast::<u32>().read_volatile() };
        u32::from_le(id) as u16
    }

    /// Makes every pushed element visible (release store of the used index); returns the
    /// previous published index, or `None` when nothing new was pushed.
    #[inline]
    pub fn publish_used(&mut self) -> Option<u16> {
        if self.next_used == self.published_used {
            return None;
        }
        let old = self.published_used;
        self.u16_at(self.used, 2)
            .store(self.next_used, Ordering::Release);
        self.published_used = self.next_used;
        Some(old)
    }

    /// Whether the driver wants an interrupt for what was published since the last check
    /// (virtio 1.2, 2.7.10: `used_event` with EVENT_IDX, else `VRING_AVAIL_F_NO_INTERRUPT`),
    /// answered **without** the full fence.
    ///
    /// The fence (store the used index, then load the driver's field) is what keeps a driver
    /// that re-enables interrupts at the same moment from missing one: without it the load may
    /// see the field as it was before the driver's store, while the driver's own re-check of
    /// the used index sees the index as it was before ours. Waiting for the store buffer on
    /// every busy pass was the most expensive step of a null request, so the fence moves off
    /// that path, not away:
    ///
    /// - a "yes" needs no fence (a signal is never wrong, at worst spurious);
    /// - a "no" is remembered as *unconfirmed*. The caller re-checks with
    ///   [`confirm_notification`](Self::confirm_notification) (the fence, a fresh load, over
    ///   every index published since the first unconfirmed "no") in the next pass that
    ///   publishes nothing, before the reactor sleeps and before the queue stops; and this
    ///   method does so itself after [`CONFIRM_EVERY`] unconfirmed answers in a row.
    ///
    /// A driver that enabled interrupts meanwhile therefore gets its signal a pass or a few
    /// later, never not at all.
    ///
    /// With EVENT_IDX, `used_event` shares a cache line with the avail ring's tail, and a
    /// polling driver may rewrite it on every submission (SPDK's initiator parks it out of
    /// reach each time), so its load is a cache miss of every busy pass. Once the driver has
    /// wanted no interrupt for [`FRESH_LOADS`] checks, the check uses the value last loaded
    /// instead (the fenced re-check still loads it); the first "yes" goes back to loading it
    /// every time. An interrupt-driven driver (a Linux guest) so always gets a fresh load.
    #[inline]
    pub fn needs_notification(&mut self) -> bool {
        let new = self.published_used;
        let (wanted, old) = if self.event_idx {
            if self.fresh_loads_left > 0 {
                self.fresh_loads_left -= 1;
                self.used_event_seen = self.used_event().load(Ordering::Acquire);
            }
            match self.signalled_used.replace(new) {
                // The first signal is always sent.
                None => (true, new),
                Some(old) => (need_event(self.used_event_seen, new, old), old),
            }
        } else {
            (self.interrupts_enabled(), new)
        };
        if wanted {
            self.unconfirmed = None;
            self.fresh_loads_left = FRESH_LOADS;
            return true;
        }
        let u = self.unconfirmed.get_or_insert(Unconfirmed {
            from: old,
            checks: 0,
        });
        u.checks += 1;
        if u.checks >= CONFIRM_EVERY {
            return self.confirm_notification();
        }
        false
    }

    /// Whether a "no interrupt wanted" still waits for its fenced re-check.
    #[inline]
    pub fn notification_unconfirmed(&self) -> bool {
        self.unconfirmed.is_some()
    }

    /// The fenced re-check of every unconfirmed "no" (see
    /// [`needs_notification`](Self::needs_notification)): whether the driver wants an
    /// interrupt for anything published since the first of them. `false` when none waits.
    pub fn confirm_notification(&mut self) -> bool {
        let Some(u) = self.unconfirmed.take() else {
            return false;
        };
        full_barrier();
        let wanted = if self.event_idx {
            let used_event = self.used_event().load(Ordering::Acquire);
            self.used_event_seen = used_event;
            let new = self.published_used;
            self.signalled_used = Some(new);
            need_event(used_event, new, u.from)
        } else {
            self.interrupts_enabled()
        };
        if wanted {
            self.fresh_loads_left = FRESH_LOADS;
        }
        wanted
    }

    /// The driver's `used_event` (EVENT_IDX), after the avail ring.
    #[inline]
    fn used_event(&self) -> &AtomicU16 {
        self.u16_at(self.avail, 4 + 2 * usize::from(self.size))
    }

    /// The driver's avail flags do not say `VRING_AVAIL_F_NO_INTERRUPT`.
    #[inline]
    fn interrupts_enabled(&self) -> bool {
        let flags = self.u16_at(self.avail, 0).load(Ordering::Acquire);
        flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
    }

    /// Asks the driver to kick (true) or not to (false) when it adds buffers. Without
    /// EVENT_IDX this is the used ring's `VRING_USED_F_NO_NOTIFY`; with it, `avail_event` is set
    /// to the next entry the device will take (suppressing means leaving it behind, so the
    /// driver's `vring_need_event` stays false until the index wraps).
    pub fn set_notification(&mut self, enable: bool) {
        if self.event_idx {
            if enable {
                self.u16_at(self.used, 4 + 8 * usize::from(self.size))
                    .store(self.next_avail, Ordering::Release);
            }
        } else {
            let flags = if enable {
                0
            } else {
                VRING_USED_F_NO_NOTIFY as u16
            };
            self.u16_at(self.used, 0).store(flags, Ordering::Release);
        }
    }

    /// After [`set_notification(true)`](Self::set_notification): whether the driver added
    /// buffers meanwhile (the re-check that closes the race virtio 1.2 2.7.10 describes).
    pub fn has_work_after_enabling(&self) -> bool {
        full_barrier();
        self.avail_idx() != self.next_avail
    }
}

/// The descriptors of one chain, as an iterator. Ends early on a malformed chain; `error()`
/// then says why.
pub struct Chain<'a> {
    mem: &'a GuestMemory,
    table: *const u8,
    table_len: u32,
    next: Option<u16>,
    ttl: u32,
    in_indirect: bool,
    error: Option<ChainError>,
}

impl Chain<'_> {
    /// Why the chain ended early, if it did.
    pub fn error(&self) -> Option<ChainError> {
        self.error
    }

    fn fail(&mut self, e: ChainError) -> Option<Desc> {
        self.error = Some(e);
        self.next = None;
        None
    }
}

impl Iterator for Chain<'_> {
    type Item = Desc;

    fn next(&mut self) -> Option<Desc> {
        let idx = self.next.take()?;
        if u32::from(idx) >= self.table_len {
            return self.fail(ChainError::BadIndex);
        }
        if self.ttl == 0 {
            return self.fail(ChainError::TooLong);
        }
        self.ttl -= 1;
        // SAFETY: `idx < table_len`, and the table (the ring's descriptor table, or an indirect
        // table checked below) covers `table_len` 16-byte entries of mapped guest memory.
        let desc = unsafe { Desc::read(self.table.add(usize::from(idx) * 16)) };
        if desc.indirect() {
            if self.in_indirect || desc.has_next() {
                return self.fail(ChainError::NestedIndirect);
            }
            let entries = desc.len / 16;
            if !desc.len.is_multiple_of(16) || entries == 0 || entries > MAX_INDIRECT {
                return self.fail(ChainError::BadIndirectTable);
            }
            let Some(table) = self.mem.host(desc.addr, u64::from(desc.len)) else {
                return self.fail(ChainError::BadIndirectTable);
            };
            self.table = table;
            self.table_len = entries;
            // An indirect table is walked at most once through (its own length bounds a loop).
            self.ttl = entries;
            self.in_indirect = true;
            self.next = Some(0);
            return self.next();
        }
        if desc.has_next() {
            self.next = Some(desc.next);
        }
        Some(desc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

    fn setup() -> (GuestMemoryMmap, GuestMemory) {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).expect("memory");
        let g = GuestMemory::new(m.clone());
        (m, g)
    }

    /// Ring parts of their own, apart, for EVENT_IDX tests of size-8 rings (the mock lays a
    /// size-8 used ring over the avail ring's `used_event`), and where `used_event` lies.
    fn event_idx_addrs() -> (RingAddrs, GuestAddress) {
        let addrs = RingAddrs {
            desc: 0x8000,
            avail: 0x9000,
            used: 0xa000,
        };
        (addrs, GuestAddress(addrs.avail + 4 + 2 * 8))
    }

    fn ring_of(vq: &MockSplitQueue<GuestMemoryMmap>, g: &GuestMemory, size: u16) -> SplitRing {
        let addrs = RingAddrs {
            desc: vq.desc_table_addr().raw_value(),
            avail: vq.avail_addr().raw_value(),
            used: vq.used_addr().raw_value(),
        };
        SplitRing::new(size, addrs, false, 0, g).expect("ring")
    }

    /// Writes descriptor `i` of the mock queue's table.
    fn write_desc(
        m: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        i: u16,
        d: SplitDescriptor,
    ) {
        vm_memory::Bytes::write_obj(
            m,
            RawDescriptor::from(d),
            vq.desc_table_addr().unchecked_add(16 * u64::from(i)),
        )
        .expect("desc")
    }

    /// Pops every pending chain from both our ring and virtio-queue's `Queue` and compares what
    /// each saw.
    fn compare_with_virtio_queue(m: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) {
        let g = GuestMemory::new(m.clone());
        let mut ours = ring_of(vq, &g, (vq.desc_table().total_size() / 16) as u16);
        let mut theirs: Queue = vq.create_queue().expect("queue");
        let mut count = 0;
        while ours.pending(ours.avail_idx()) > 0 {
            let head = ours.pop_head();
            let chain: Vec<_> = ours.chain(&g, head).collect();
            let mut c = theirs.iter(m).expect("iter").next().expect("their chain");
            assert_eq!(c.head_index(), head);
            let their: Vec<_> = c
                .by_ref()
                .map(|d| Desc {
                    addr: d.addr().0,
                    len: d.len(),
                    flags: d.flags() & !INDIRECT,
                    next: d.next(),
                })
                .collect();
            let ours_cmp: Vec<_> = chain
                .iter()
                .map(|d| Desc {
                    flags: d.flags & !INDIRECT,
                    ..*d
                })
                .collect();
            assert_eq!(ours_cmp, their, "chain {count}");
            count += 1;
        }
        assert!(count > 0);
    }

    #[test]
    fn chains_match_virtio_queue_direct_and_indirect() {
        let (m, _) = setup();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, 16, NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x9000, 4096, NEXT | WRITE, 2)),
            RawDescriptor::from(SplitDescriptor::new(0xa000, 1, WRITE, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x8100, 16, NEXT, 4)),
            RawDescriptor::from(SplitDescriptor::new(0xa100, 1, WRITE, 0)),
        ];
        vq.build_multiple_desc_chains(&descs).expect("chains");
        compare_with_virtio_queue(&m, &vq);

        // An indirect table of three descriptors.
        let (m, _) = setup();
        let vq = MockSplitQueue::new(&m, 16);
        let table = GuestAddress(0x40000);
        let inner = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, 16, NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x9000, 512, NEXT, 2)),
            RawDescriptor::from(SplitDescriptor::new(0xa000, 1, WRITE, 0)),
        ];
        for (i, d) in inner.iter().enumerate() {
            vm_memory::Bytes::write_obj(&m, *d, table.unchecked_add(16 * i as u64)).expect("w");
        }
        vq.add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                table.0, 48, INDIRECT, 0,
            ))],
            0,
        )
        .expect("chain");
        compare_with_virtio_queue(&m, &vq);
    }

    #[test]
    fn malformed_chains_end_as_broken() {
        let (m, g) = setup();
        let vq = MockSplitQueue::new(&m, 8);
        let mut ring = ring_of(&vq, &g, 8);
        let write = |i: u16, d: SplitDescriptor| write_desc(&m, &vq, i, d);
        // A loop 0 -> 1 -> 0.
        write(0, SplitDescriptor::new(0x8000, 16, NEXT, 1));
        write(1, SplitDescriptor::new(0x9000, 16, NEXT, 0));
        let mut c = ring.chain(&g, 0);
        assert_eq!(c.by_ref().count(), 8);
        assert_eq!(c.error(), Some(ChainError::TooLong));
        // Next index past the table.
        write(2, SplitDescriptor::new(0x8000, 16, NEXT, 200));
        let mut c = ring.chain(&g, 2);
        assert_eq!(c.by_ref().count(), 1);
        assert_eq!(c.error(), Some(ChainError::BadIndex));
        // Indirect tables: outside memory, bad length, nested, with NEXT.
        write(3, SplitDescriptor::new(0x7fff_0000, 32, INDIRECT, 0));
        let mut c = ring.chain(&g, 3);
        assert_eq!(c.by_ref().count(), 0);
        assert_eq!(c.error(), Some(ChainError::BadIndirectTable));
        write(4, SplitDescriptor::new(0x40000, 17, INDIRECT, 0));
        let mut c = ring.chain(&g, 4);
        assert_eq!(c.by_ref().count(), 0);
        assert_eq!(c.error(), Some(ChainError::BadIndirectTable));
        vm_memory::Bytes::write_obj(
            &m,
            RawDescriptor::from(SplitDescriptor::new(0x40000, 16, INDIRECT, 0)),
            GuestAddress(0x40000),
        )
        .expect("nested");
        write(5, SplitDescriptor::new(0x40000, 16, INDIRECT, 0));
        let mut c = ring.chain(&g, 5);
        assert_eq!(c.by_ref().count(), 0);
        assert_eq!(c.error(), Some(ChainError::NestedIndirect));
        write(6, SplitDescriptor::new(0x50000, 16, INDIRECT | NEXT, 1));
        let mut c = ring.chain(&g, 6);
        assert_eq!(c.by_ref().count(), 0);
        assert_eq!(c.error(), Some(ChainError::NestedIndirect));
        // A head past the ring is the caller's to refuse; the chain itself checks too.
        let mut c = ring.chain(&g, 8);
        assert_eq!(c.by_ref().count(), 0);
        assert_eq!(c.error(), Some(ChainError::BadIndex));
        ring.set_indices(0, 0);
    }

    /// The pop's prefetch hints read what a hostile driver wrote (heads past the ring, indirect
    /// heads, buffers outside memory, entries not yet published) without faulting and without
    /// taking anything.
    #[test]
    fn prefetch_hints_survive_hostile_rings() {
        let (m, g) = setup();
        let vq = MockSplitQueue::new(&m, 8);
        let mut ring = ring_of(&vq, &g, 8);
        let desc = |i: u16, d: SplitDescriptor| write_desc(&m, &vq, i, d);
        desc(0, SplitDescriptor::new(0x8000, 16, NEXT, 1));
        desc(1, SplitDescriptor::new(u64::MAX - 8, 16, 0, 0));
        desc(2, SplitDescriptor::new(0x7fff_0000, 32, INDIRECT, 0));
        desc(3, SplitDescriptor::new(0x10_0000, 16, 0, 0)); // just past the end of memory
        for (slot, head) in [0u16, 1, 2, 3, 200, u16::MAX, 7, 0].into_iter().enumerate() {
            let at = vq.avail_addr().unchecked_add(4 + 2 * slot as u64);
            vm_memory::Bytes::write_obj(&m, head, at).expect("avail entry");
        }
        vm_memory::Bytes::write_obj(&m, 6u16, vq.avail_addr().unchecked_add(2)).expect("idx");
        for wrap in [0u16, 65_530] {
            ring.set_indices(wrap, wrap);
            for ahead in 0..=u16::from(u8::MAX) {
                ring.prefetch_desc(ahead);
                ring.prefetch_first_buffer(&g, ahead);
            }
            ring.prefetch_next_avail_entry();
            ring.prefetch_guessed_desc();
            assert_eq!(ring.next_avail(), wrap, "hints take nothing");
        }
        ring.set_indices(0, 0);
        assert_eq!(ring.pending(ring.avail_idx()), 6);
        // The guess follows every head popped, hostile ones too (200, then u16::MAX: steps past
        // the ring), and stays a hint inside the table.
        let heads: Vec<u16> = (0..6)
            .map(|_| {
                let head = ring.pop_head();
                ring.prefetch_guessed_desc();
                ring.prefetch_next_avail_entry();
                head
            })
            .collect();
        assert_eq!(heads, [0, 1, 2, 3, 200, u16::MAX]);
        assert_eq!(ring.next_avail(), 6, "hints take nothing");
    }

    #[test]
    fn used_ring_matches_virtio_queue_and_publishes_once() {
        let (m, g) = setup();
        let vq = MockSplitQueue::new(&m, 8);
        let mut ours = ring_of(&vq, &g, 8);
        let theirs: Queue = vq.create_queue().expect("queue");
        for (head, len) in [(3u16, 17u32), (0, 1), (7, 4097)] {
            ours.push_used(head, len);
        }
        assert_eq!(vq.used().idx().load(), 0, "nothing visible before publish");
        assert_eq!(ours.publish_used(), Some(0));
        assert_eq!(ours.publish_used(), None, "nothing new");
        assert_eq!(vq.used().idx().load(), 3);
        // virtio-queue's add_used on a second, identical ring lays out the same bytes.
        let (m2, _) = setup();
        let vq2 = MockSplitQueue::new(&m2, 8);
        let mut q2: Queue = vq2.create_queue().expect("queue");
        for (head, len) in [(3u16, 17u32), (0, 1), (7, 4097)] {
            q2.add_used(&m2, head, len).expect("add_used");
        }
        for i in 0..3 {
            let a = vq.used().ring().ref_at(i).expect("ours").load();
            let b = vq2.used().ring().ref_at(i).expect("theirs").load();
            assert_eq!((a.id(), a.len()), (b.id(), b.len()));
            assert_eq!(ours.used_head(i as u16), a.id() as u16);
        }
        let _ = theirs.next_used();
    }

    #[test]
    fn notification_suppression_and_event_idx() {
        let (m, g) = setup();
        let vq = MockSplitQueue::new(&m, 8);
        let mut ring = ring_of(&vq, &g, 8);
        ring.set_notification(false);
        assert_eq!(read_u16(&m, vq.used_addr()), VRING_USED_F_NO_NOTIFY as u16);
        ring.set_notification(true);
        assert_eq!(read_u16(&m, vq.used_addr()), 0);
        // Without EVENT_IDX, the driver's NO_INTERRUPT flag decides.
        ring.push_used(0, 1);
        ring.publish_used();
        assert!(ring.needs_notification());
        vm_memory::Bytes::write_obj(&m, VRING_AVAIL_F_NO_INTERRUPT as u16, vq.avail_addr())
            .expect("flags");
        assert!(!ring.needs_notification());

        // With EVENT_IDX: used_event says after which used index the driver wants a signal.
        let addrs = ring.addrs();
        let mut ev = SplitRing::new(8, addrs, true, 0, &g).expect("ring");
        let used_event = GuestAddress(addrs.avail + 4 + 2 * 8);
        vm_memory::Bytes::write_obj(&m, 1u16, used_event).expect("used_event");
        ev.push_used(0, 1);
        ev.publish_used();
        assert!(ev.needs_notification(), "first signal is always sent");
        ev.push_used(1, 1);
        ev.publish_used(); // used idx 2: crosses used_event 1
        assert!(ev.needs_notification());
        ev.push_used(2, 1);
        ev.publish_used(); // used idx 3: used_event still 1, already signalled past it
        assert!(!ev.needs_notification());
        // Kicks: enabling writes avail_event = next avail.
        ev.pop_head_for_test(5);
        ev.set_notification(true);
        let avail_event: u16 =
            vm_memory::Bytes::read_obj(&m, GuestAddress(addrs.used + 4 + 8 * 8)).expect("r");
        assert_eq!(avail_event, 5);
        assert!(!ev.has_work_after_enabling() || ev.avail_idx() != 5);
    }

    /// A "no" from the unfenced check is re-checked with the fence over every index published
    /// since: flags, the EVENT_IDX window, and the bound on unconfirmed answers in a row.
    #[test]
    fn suppressed_signals_are_confirmed_with_the_fence() {
        let (m, g) = setup();
        let vq = MockSplitQueue::new(&m, 8);
        let mut ring = ring_of(&vq, &g, 8);
        let set_flags = |f: u16| vm_memory::Bytes::write_obj(&m, f, vq.avail_addr()).expect("w");
        assert!(!ring.confirm_notification(), "nothing to confirm");
        set_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
        ring.push_used(0, 1);
        ring.publish_used();
        assert!(!ring.needs_notification());
        assert!(ring.notification_unconfirmed());
        // The driver's store the unfenced load may have missed.
        set_flags(0);
        assert!(ring.confirm_notification());
        assert!(!ring.notification_unconfirmed());
        // Bounded: after CONFIRM_EVERY "no"s in a row the check confirms by itself.
        set_flags(VRING_AVAIL_F_NO_INTERRUPT as u16);
        for i in 1..CONFIRM_EVERY {
            ring.push_used(0, 1);
            ring.publish_used();
            assert!(!ring.needs_notification());
            assert!(ring.notification_unconfirmed(), "answer {i}");
        }
        ring.push_used(0, 1);
        ring.publish_used();
        assert!(!ring.needs_notification());
        assert!(!ring.notification_unconfirmed(), "confirmed at the bound");
        // A "yes" covers every earlier "no".
        ring.push_used(0, 1);
        ring.publish_used();
        assert!(!ring.needs_notification());
        set_flags(0);
        ring.push_used(0, 1);
        ring.publish_used();
        assert!(ring.needs_notification());
        assert!(!ring.notification_unconfirmed());

        // EVENT_IDX: the re-check covers the window from the first unconfirmed "no".
        let (addrs, at) = event_idx_addrs();
        let mut ev = SplitRing::new(8, addrs, true, 0, &g).expect("ring");
        let used_event = |v: u16| vm_memory::Bytes::write_obj(&m, v, at).expect("used_event");
        used_event(0);
        ev.push_used(0, 1);
        ev.publish_used();
        assert!(ev.needs_notification(), "first signal"); // signalled at 1
        used_event(7); // not yet
        ev.push_used(1, 1);
        ev.publish_used(); // 2
        assert!(!ev.needs_notification());
        ev.push_used(2, 1);
        ev.publish_used(); // 3
        assert!(!ev.needs_notification());
        // The driver had asked for a signal after index 1 (it saw 1 and not 2): inside the
        // unconfirmed window (1, 3] though outside the last check's (2, 3].
        used_event(1);
        assert!(ev.confirm_notification());
        ev.push_used(3, 1);
        ev.publish_used(); // 4: used_event 1 is behind the confirmed index 3
        assert!(!ev.needs_notification());
        assert!(!ev.confirm_notification());
    }

    /// EVENT_IDX: a driver that wants no interrupt for FRESH_LOADS checks (a polling one) has
    /// its `used_event` no longer loaded by the unfenced check, only by the fenced re-check;
    /// the first "yes" brings the fresh loads back.
    #[test]
    fn a_polling_drivers_used_event_is_loaded_only_by_the_fenced_check() {
        let (m, g) = setup();
        let (addrs, at) = event_idx_addrs();
        let mut ev = SplitRing::new(8, addrs, true, 0, &g).expect("ring");
        let used_event = |v: u16| vm_memory::Bytes::write_obj(&m, v, at).expect("used_event");
        let publish = |ev: &mut SplitRing| {
            ev.push_used(0, 1);
            ev.publish_used();
        };
        publish(&mut ev);
        assert!(ev.needs_notification(), "first signal");
        // Parked out of reach, as SPDK's initiator keeps it: FRESH_LOADS "no"s (confirmed
        // every CONFIRM_EVERY, all "no" too).
        for _ in 0..FRESH_LOADS {
            used_event(ev.published_used().wrapping_sub(9));
            publish(&mut ev);
            assert!(!ev.needs_notification());
        }
        // Now the unfenced check goes by the value it last loaded: a used_event inside the
        // next window is not seen by it, only by the fenced re-check.
        used_event(ev.published_used());
        publish(&mut ev);
        assert!(!ev.needs_notification(), "the last value loaded said no");
        assert!(ev.notification_unconfirmed());
        assert!(ev.confirm_notification(), "the fenced re-check loads it");
        // Interrupts wanted: the unfenced check loads it afresh again.
        used_event(ev.published_used());
        publish(&mut ev);
        assert!(ev.needs_notification());
    }

    #[test]
    fn geometry_is_checked() {
        let (_, g) = setup();
        let ok = RingAddrs {
            desc: 0x1000,
            avail: 0x2000,
            used: 0x3000,
        };
        assert!(SplitRing::new(8, ok, false, 0, &g).is_ok());
        assert_eq!(
            SplitRing::new(3, ok, false, 0, &g).err(),
            Some(RingError::BadSize)
        );
        assert_eq!(
            SplitRing::new(2048, ok, false, 0, &g).err(),
            Some(RingError::BadSize)
        );
        let mis = RingAddrs { desc: 0x1008, ..ok };
        assert_eq!(
            SplitRing::new(8, mis, false, 0, &g).err(),
            Some(RingError::Misaligned)
        );
        let out = RingAddrs {
            used: 0x100000 - 8,
            ..ok
        };
        assert_eq!(
            SplitRing::new(8, out, false, 0, &g).err(),
            Some(RingError::OutsideMemory)
        );
    }

    fn read_u16(m: &GuestMemoryMmap, a: GuestAddress) -> u16 {
        vm_memory::Bytes::read_obj(m, a).expect("read")
    }

    impl SplitRing {
        fn pop_head_for_test(&mut self, next_avail: u16) {
            self.next_avail = next_avail;
        }
    }
}
