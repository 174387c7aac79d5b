//! A libblkio `virtio-blk-vhost-user` client: the well-behaved frontend the tests drive the
//! target with. Request helpers are synchronous: submit, wait for the completion, return the
//! virtio-blk `ret` (0 = success, negative errno otherwise).

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::path::Path;
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, Errno, MemoryRegion, ReqFlags};

use crate::data::POISON;

/// How long a request may take to complete.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the shared memory region each client queue owns for its buffers.
pub const SLOT_LEN: usize = 4 << 20;

/// How a client is set up before `start`.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    /// libblkio's `num-queues`.
    pub num_queues: i32,
    /// libblkio's `queue-size` (ring entries).
    pub queue_size: i32,
    /// libblkio's `read-only` property (must be set when the device reports VIRTIO_BLK_F_RO).
    pub read_only: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            num_queues: 1,
            queue_size: 128,
            read_only: false,
        }
    }
}

/// A failed client setup step.
#[derive(Debug)]
pub struct ConnectError {
    /// The libblkio call that failed.
    pub step: &'static str,
    /// Its error.
    pub error: blkio::Error,
}

impl ConnectError {
    /// The error's errno.
    pub fn errno(&self) -> Errno {
        self.error.errno()
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (errno {:?})",
            self.step,
            self.error,
            self.error.errno()
        )
    }
}

fn step<T>(step: &'static str, r: blkio::Result<T>) -> Result<T, ConnectError> {
    r.map_err(|error| ConnectError { step, error })
}

/// Creates a libblkio instance for `socket` with `cfg` and connects it (the vhost-user handshake),
/// without starting the queues. Retries briefly while the socket refuses connections (it may
/// exist a moment before the target listens on it).
pub fn connect_only(socket: &Path, cfg: ClientConfig) -> Result<Blkio, ConnectError> {
    let path = socket.to_str().expect("socket path is UTF-8");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut blkio = step("Blkio::new", Blkio::new("virtio-blk-vhost-user"))?;
        step("set path", blkio.set_str("path", path))?;
        step("set read-only", blkio.set_bool("read-only", cfg.read_only))?;
        match blkio.connect() {
            Ok(()) => {}
            Err(e) if e.errno() == Errno::CONNREFUSED && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(error) => {
                return Err(ConnectError {
                    step: "connect",
                    error,
                })
            }
        }
        step(
            "set num-queues",
            blkio.set_i32("num-queues", cfg.num_queues),
        )?;
        step(
            "set queue-size",
            blkio.set_i32("queue-size", cfg.queue_size),
        )?;
        return Ok(blkio);
    }
}

/// Transfer limits the device advertised (0 = none advertised).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `request-alignment` (the logical block size).
    pub request_alignment: u64,
    /// `max-segment-len` (the device's `size_max`).
    pub max_segment_len: usize,
    /// `max-segments` (the device's `seg_max`).
    pub max_segments: usize,
    /// `max-discard-len`.
    pub max_discard_len: u64,
    /// `max-write-zeroes-len`.
    pub max_write_zeroes_len: u64,
}

/// A started libblkio client with `num_queues` queues and one shared-memory buffer slot of
/// [`SLOT_LEN`] bytes per queue.
pub struct Client {
    queues: Vec<Blkioq>,
    blkio: Blkio,
    mem: MemoryRegion,
    /// What the device advertised.
    pub limits: Limits,
}

impl Client {
    /// Connects, starts and maps a buffer region (allocated with `alloc_mem_region`, mapped with
    /// `map_mem_region` so the target can reach it).
    pub fn connect(socket: &Path, cfg: ClientConfig) -> Result<Client, ConnectError> {
        let mut blkio = connect_only(socket, cfg)?;
        let outcome = step("start", blkio.start())?;
        let queues = outcome.queues;
        assert_eq!(queues.len(), cfg.num_queues as usize, "queues after start");
        let len = SLOT_LEN * queues.len();
        let mem = step("alloc_mem_region", blkio.alloc_mem_region(len))?;
        step("map_mem_region", blkio.map_mem_region(&mem))?;
        let get_i32 = |name| blkio.get_i32(name).map(|v| usize::try_from(v).unwrap_or(0));
        let limits = Limits {
            request_alignment: step("request-alignment", get_i32("request-alignment"))? as u64,
            max_segment_len: step("max-segment-len", get_i32("max-segment-len"))?,
            max_segments: step("max-segments", get_i32("max-segments"))?,
            max_discard_len: step("max-discard-len", blkio.get_u64("max-discard-len"))?,
            max_write_zeroes_len: step(
                "max-write-zeroes-len",
                blkio.get_u64("max-write-zeroes-len"),
            )?,
        };
        Ok(Client {
            queues,
            blkio,
            mem,
            limits,
        })
    }

    /// The libblkio instance (for properties).
    pub fn blkio(&self) -> &Blkio {
        &self.blkio
    }

    /// The disk's capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.blkio.get_u64("capacity").expect("capacity property")
    }

    /// Started queues.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The handle for queue `i` (and its buffer slot).
    pub fn queue(&mut self, i: usize) -> Queue<'_> {
        let base = self.mem.addr as *mut u8;
        let limits = self.limits;
        let q = &mut self.queues[i];
        // SAFETY: slot i lies inside the mapped region (len = SLOT_LEN * num_queues), which stays
        // mapped while `self` (borrowed mutably for the handle's life) exists.
        let buf = unsafe { base.add(i * SLOT_LEN) };
        Queue::new(i, q, buf, limits)
    }

    /// Handles for every queue at once (each with its own slot), e.g. to drive them from
    /// separate threads.
    pub fn queues(&mut self) -> Vec<Queue<'_>> {
        let base = self.mem.addr as *mut u8;
        let limits = self.limits;
        self.queues
            .iter_mut()
            .enumerate()
            .map(|(i, q)| {
                // SAFETY: as in `queue`; the slots are disjoint.
                let buf = unsafe { base.add(i * SLOT_LEN) };
                Queue::new(i, q, buf, limits)
            })
            .collect()
    }
}

/// One client queue plus its private buffer slot in the mapped region. All request helpers are
/// synchronous: they submit, wait (up to [`IO_TIMEOUT`]) and return the completion's `ret`
/// (0 = success, negative errno otherwise).
pub struct Queue<'a> {
    /// The queue's index.
    pub index: usize,
    q: &'a mut Blkioq,
    buf: *mut u8,
    limits: Limits,
    next_tag: usize,
    timeout: Duration,
    _slot: PhantomData<&'a mut [u8]>,
}

// SAFETY: the handle owns its slot of the region exclusively for 'a (slots are disjoint and the
// client is mutably borrowed), and `Blkioq` is itself `Send`; moving the handle to another thread
// moves that exclusive access with it.
unsafe impl Send for Queue<'_> {}

/// A request's data layout in the slot: iovecs and the slot offsets they cover.
struct Layout {
    iov: Vec<blkio::iovec>,
}

impl<'a> Queue<'a> {
    fn new(index: usize, q: &'a mut Blkioq, buf: *mut u8, limits: Limits) -> Self {
        Queue {
            index,
            q,
            buf,
            limits,
            next_tag: index << 32,
            timeout: IO_TIMEOUT,
            _slot: PhantomData,
        }
    }

    /// How long each request may take before the helpers panic (default [`IO_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn check_bounds(at: usize, len: usize) {
        assert!(
            at.checked_add(len).is_some_and(|end| end <= SLOT_LEN),
            "buffer {at}+{len} exceeds the {SLOT_LEN}-byte slot"
        );
    }

    /// Copies `data` into the slot at `at`.
    fn put(&mut self, at: usize, data: &[u8]) {
        Self::check_bounds(at, data.len());
        // SAFETY: in bounds of this queue's slot (checked above), which only this handle uses,
        // and no request is in flight while helpers copy.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.add(at), data.len()) };
    }

    /// Fills the slot at `at` with `byte` (poisons read buffers so a read that transfers nothing
    /// cannot pass for zeroes).
    fn fill(&mut self, at: usize, len: usize, byte: u8) {
        Self::check_bounds(at, len);
        // SAFETY: as in `put`.
        unsafe { std::ptr::write_bytes(self.buf.add(at), byte, len) };
    }

    /// Copies `len` bytes out of the slot at `at`.
    fn get(&self, at: usize, len: usize) -> Vec<u8> {
        Self::check_bounds(at, len);
        let mut out = vec![0u8; len];
        // SAFETY: as in `put`.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.add(at), out.as_mut_ptr(), len) };
        out
    }

    fn iovec(&self, at: usize, len: usize) -> blkio::iovec {
        Self::check_bounds(at, len);
        blkio::iovec {
            // SAFETY: in bounds of the slot (checked above).
            iov_base: unsafe { self.buf.add(at) }.cast(),
            iov_len: len,
        }
    }

    /// A contiguous buffer of `len` bytes at slot offset `at`, split into several segments only
    /// where the device's advertised max segment size demands it (as a guest driver would).
    fn contiguous(&self, at: usize, len: usize) -> Layout {
        let seg = match self.limits.max_segment_len {
            0 => len.max(1),
            n => n,
        };
        if len == 0 {
            return Layout {
                iov: vec![self.iovec(at, 0)],
            };
        }
        let iov = (0..len)
            .step_by(seg)
            .map(|s| self.iovec(at + s, seg.min(len - s)))
            .collect();
        Layout { iov }
    }

    fn tag(&mut self) -> usize {
        self.next_tag += 1;
        self.next_tag
    }

    fn submit_read(&mut self, off: u64, layout: &Layout) -> usize {
        let tag = self.tag();
        if let [one] = layout.iov.as_slice() {
            self.q.read(
                off,
                one.iov_base.cast(),
                one.iov_len,
                tag,
                ReqFlags::empty(),
            );
        } else {
            self.q.readv(
                off,
                layout.iov.as_ptr(),
                layout.iov.len() as u32,
                tag,
                ReqFlags::empty(),
            );
        }
        tag
    }

    fn submit_write(&mut self, off: u64, layout: &Layout, flags: ReqFlags) -> usize {
        let tag = self.tag();
        if let [one] = layout.iov.as_slice() {
            self.q.write(
                off,
                one.iov_base.cast_const().cast(),
                one.iov_len,
                tag,
                flags,
            );
        } else {
            self.q.writev(
                off,
                layout.iov.as_ptr(),
                layout.iov.len() as u32,
                tag,
                flags,
            );
        }
        tag
    }

    /// Waits for the completions of `tags` (in any order) and returns their `ret`s in `tags`
    /// order.
    fn wait(&mut self, tags: &[usize]) -> Vec<i32> {
        let mut rets: Vec<Option<i32>> = vec![None; tags.len()];
        let mut got = 0;
        let mut completions: Vec<MaybeUninit<Completion>> = Vec::with_capacity(tags.len());
        completions.resize_with(tags.len(), MaybeUninit::uninit);
        let deadline = Instant::now() + self.timeout;
        while got < tags.len() {
            let mut timeout = deadline.saturating_duration_since(Instant::now());
            let want = tags.len() - got;
            let n = self
                .q
                .do_io(&mut completions[..want], want, Some(&mut timeout), None)
                .unwrap_or_else(|e| {
                    panic!(
                        "queue {}: waiting for {want} of {} completions failed after {:?}: {e} \
                         (errno {:?}); is the target answering?",
                        self.index,
                        tags.len(),
                        self.timeout,
                        e.errno()
                    )
                });
            for c in &completions[..n] {
                // SAFETY: do_io initialised the first `n` entries.
                let c = unsafe { c.assume_init_read() };
                let i = tags
                    .iter()
                    .position(|&t| t == c.user_data)
                    .unwrap_or_else(|| panic!("completion for unknown tag {}", c.user_data));
                assert!(rets[i].is_none(), "two completions for tag {}", c.user_data);
                rets[i] = Some(c.ret);
                got += 1;
            }
        }
        rets.into_iter()
            .map(|r| r.expect("every tag completed"))
            .collect()
    }

    fn wait_one(&mut self, tag: usize) -> i32 {
        self.wait(&[tag])[0]
    }

    /// Reads `len` bytes at `off` into a poisoned buffer; returns the `ret` and the buffer.
    pub fn read(&mut self, off: u64, len: usize) -> (i32, Vec<u8>) {
        self.fill(0, len, POISON);
        let layout = self.contiguous(0, len);
        let tag = self.submit_read(off, &layout);
        let ret = self.wait_one(tag);
        (ret, self.get(0, len))
    }

    /// Like [`read`](Self::read) but panics unless the read succeeds.
    pub fn read_ok(&mut self, off: u64, len: usize) -> Vec<u8> {
        let (ret, data) = self.read(off, len);
        assert_eq!(
            ret, 0,
            "queue {}: read of {len} bytes at {off} failed",
            self.index
        );
        data
    }

    /// Writes `data` at `off`; returns the `ret`.
    pub fn write(&mut self, off: u64, data: &[u8]) -> i32 {
        self.write_flags(off, data, ReqFlags::empty())
    }

    /// Writes with libblkio request flags (e.g. `ReqFlags::FUA`).
    pub fn write_flags(&mut self, off: u64, data: &[u8], flags: ReqFlags) -> i32 {
        self.put(0, data);
        let layout = self.contiguous(0, data.len());
        let tag = self.submit_write(off, &layout, flags);
        self.wait_one(tag)
    }

    /// Like [`write`](Self::write) but panics unless the write succeeds.
    pub fn write_ok(&mut self, off: u64, data: &[u8]) {
        let ret = self.write(off, data);
        assert_eq!(
            ret,
            0,
            "queue {}: write of {} bytes at {off} failed",
            self.index,
            data.len()
        );
    }

    /// Slot offsets for scattered segments: each starts `SEG_GAP` bytes past the previous one's
    /// end, so segments are neither adjacent nor page aligned.
    fn scattered(&self, lens: &[usize]) -> (Layout, Vec<usize>) {
        let mut at = SEG_GAP;
        let mut iov = Vec::new();
        let mut starts = Vec::new();
        for &len in lens {
            iov.push(self.iovec(at, len));
            starts.push(at);
            at += len + SEG_GAP;
        }
        (Layout { iov }, starts)
    }

    /// One write request whose data is `segments`, each in its own iovec.
    pub fn writev(&mut self, off: u64, segments: &[&[u8]]) -> i32 {
        let lens: Vec<usize> = segments.iter().map(|s| s.len()).collect();
        let (layout, starts) = self.scattered(&lens);
        for (seg, at) in segments.iter().zip(starts) {
            self.put(at, seg);
        }
        let tag = self.submit_write(off, &layout, ReqFlags::empty());
        self.wait_one(tag)
    }

    /// One read request into `lens.len()` poisoned iovecs; returns the `ret` and the data of all
    /// segments concatenated.
    pub fn readv(&mut self, off: u64, lens: &[usize]) -> (i32, Vec<u8>) {
        let (layout, starts) = self.scattered(lens);
        for (&len, &at) in lens.iter().zip(&starts) {
            self.fill(at, len, POISON);
        }
        let tag = self.submit_read(off, &layout);
        let ret = self.wait_one(tag);
        let mut out = Vec::new();
        for (&len, &at) in lens.iter().zip(&starts) {
            out.extend(self.get(at, len));
        }
        (ret, out)
    }

    /// A flush request; returns the `ret`.
    pub fn flush(&mut self) -> i32 {
        let tag = self.tag();
        self.q.flush(tag, ReqFlags::empty());
        self.wait_one(tag)
    }

    /// A discard of `len` bytes at `off`; returns the `ret`.
    pub fn discard(&mut self, off: u64, len: u64) -> i32 {
        let tag = self.tag();
        self.q.discard(off, len, tag, ReqFlags::empty());
        self.wait_one(tag)
    }

    /// Write-zeroes; `flags` may hold `ReqFlags::NO_UNMAP` (without it the device may unmap).
    pub fn write_zeroes(&mut self, off: u64, len: u64, flags: ReqFlags) -> i32 {
        let tag = self.tag();
        self.q.write_zeroes(off, len, tag, flags);
        self.wait_one(tag)
    }

    /// Submits all `writes` before waiting for any (their buffers lie side by side in the slot),
    /// then returns each one's `ret`.
    pub fn write_many(&mut self, writes: &[(u64, &[u8])]) -> Vec<i32> {
        let mut layouts = Vec::with_capacity(writes.len());
        let mut at = 0;
        for (_, data) in writes {
            self.put(at, data);
            layouts.push(self.contiguous(at, data.len()));
            at += data.len();
        }
        let tags: Vec<usize> = writes
            .iter()
            .zip(&layouts)
            .map(|((off, _), layout)| self.submit_write(*off, layout, ReqFlags::empty()))
            .collect();
        self.wait(&tags)
    }

    /// Submits `writes` and kicks the target, then returns without waiting: the requests are
    /// left in flight (e.g. to drop the client under them).
    pub fn write_many_no_wait(&mut self, writes: &[(u64, &[u8])]) {
        let mut at = 0;
        for (off, data) in writes {
            self.put(at, data);
            // A single-buffer write: libblkio keeps its own copy of the iovec, so nothing here
            // has to outlive this function.
            let iov = self.iovec(at, data.len());
            let tag = self.tag();
            self.q.write(
                *off,
                iov.iov_base.cast_const().cast(),
                iov.iov_len,
                tag,
                ReqFlags::empty(),
            );
            at += data.len();
        }
        // do_io notifies the device of new requests; min_completions 0 returns at once.
        self.q
            .do_io(&mut [], 0, None, None)
            .expect("kick the target");
    }

    /// Submits all `reads` (offset, length) before waiting for any; returns each one's `ret` and
    /// data.
    pub fn read_many(&mut self, reads: &[(u64, usize)]) -> Vec<(i32, Vec<u8>)> {
        let mut layouts = Vec::with_capacity(reads.len());
        let mut starts = Vec::with_capacity(reads.len());
        let mut at = 0;
        for &(_, len) in reads {
            self.fill(at, len, POISON);
            layouts.push(self.contiguous(at, len));
            starts.push(at);
            at += len;
        }
        let tags: Vec<usize> = reads
            .iter()
            .zip(&layouts)
            .map(|((off, _), layout)| self.submit_read(*off, layout))
            .collect();
        let rets = self.wait(&tags);
        rets.into_iter()
            .zip(reads.iter().zip(starts))
            .map(|(ret, (&(_, len), at))| (ret, self.get(at, len)))
            .collect()
    }
}

/// Bytes between scattered segments in a slot.
const SEG_GAP: usize = 320;
