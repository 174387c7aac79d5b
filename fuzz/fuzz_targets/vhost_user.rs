//! Fuzz target `vhost_user`: the vhost-user message loop (`session::serve`) and the backend
//! behind it, in process, with real (unpinned, adaptive) reactors and a malloc bdev. Each input
//! is one frontend connection: a sequence of operations (see `run`) played over a socketpair by
//! this thread acting as the frontend, while a second thread serves the other end exactly as a
//! controller does. Operations send raw messages (with fds the harness creates: eventfds,
//! sealed or unsealed memfds of chosen sizes, pipes, sockets, /dev/null, duplicates of earlier
//! ones), write guest memory (the memfds: rings and requests, so started queues do I/O), kick
//! eventfds, shrink memfds under the target's mappings, and wait for the target to catch up.
//!
//! Checked: no panic, no crash (SIGSEGV, SIGBUS); every reply is well framed; the target
//! answers a GET_QUEUE_NUM round trip within 30 s whenever it still serves (no wedged message
//! loop); after the frontend hangs up, the session ends within 30 s; afterwards no poller is
//! left on any reactor (no orphaned queue), the process has exactly the fds it had before (no
//! leak), and its RSS stays bounded across inputs.
#![no_main]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use spinblk_bdev::{Bdev, IoOp, MallocBdev};
use spinblk_protocol::fuzzing::Session;
use spinblk_protocol::{serial_bytes, ControllerSpec, DeviceInfo, DeviceLimits};
use spinblk_reactor::{ReactorConfig, ReactorPool};

/// Most objects (fds) the harness keeps per input; more are still sent, then closed.
const MAX_FILES: usize = 32;
/// Most fds attached to one message (the target accepts 8; more tests the refusal).
const MAX_MSG_FDS: usize = 10;
/// Most fds the target takes with one message (session.rs MAX_FDS).
const TARGET_MAX_FDS: usize = 8;
/// How long the target may take to answer a round trip or to end the session.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const FLAG_VERSION: u32 = 1;
const FLAG_REPLY: u32 = 4;
const FLAG_NEED_REPLY: u32 = 8;
const GET_QUEUE_NUM: u32 = 17;
const SET_PROTOCOL_FEATURES: u32 = 16;
/// Protocol features the target offers, and REPLY_ACK's bit.
const OFFERED_PROTOCOL: u64 = 0x922b;
const REPLY_ACK: u64 = 1 << 3;
/// Requests whose reply carries data: GET_FEATURES, SET_LOG_BASE, GET_VRING_BASE,
/// GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_CONFIG, POSTCOPY_ADVISE, GET_INFLIGHT_FD,
/// GET_MAX_MEM_SLOTS, GET_SHARED_OBJECT, SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE,
/// GET_SHMEM_CONFIG.
const DATA_REPLY: [u32; 13] = [1, 6, 11, 15, 17, 24, 28, 31, 36, 41, 42, 43, 44];

struct Harness {
    pool: ReactorPool,
    session: Session,
    /// Pollers on the reactors with no connection (normally 0).
    idle_pollers: usize,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // libFuzzer's main is not Rust's: SIGPIPE is not ignored. A peer that went away must be
        // an EPIPE, as in the real target.
        // SAFETY: setting a signal disposition to SIG_IGN.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let pool = ReactorPool::start_unpinned(2, ReactorConfig::default()).expect("reactors");
        let bdev: Arc<dyn Bdev> = Arc::new(MallocBdev::new("fuzz", 1 << 20, 512).expect("bdev"));
        let device = Arc::new(DeviceInfo {
            limits: DeviceLimits {
                capacity: bdev.size_bytes(),
                block_size: bdev.block_size(),
                read_only: false,
                discard: bdev.supports(IoOp::Discard),
                write_zeroes: bdev.supports(IoOp::WriteZeroes),
            },
            serial: serial_bytes("fuzz"),
            write_cache: true,
            bdev,
        });
        let session = Session::new(ControllerSpec {
            name: "fuzz".into(),
            num_queues: 2,
            device,
            reactors: pool.handles().to_vec(),
        });
        let idle_pollers = pool.stats().iter().map(|s| s.pollers).sum();
        Harness {
            pool,
            session,
            idle_pollers,
        }
    })
}

/// SPINBLK_FUZZ_KNOWN_BUGS=1: do not fail on the findings docs/fuzzing.md lists as reported
/// and not yet fixed (so a long run can look for new ones).
fn known_bugs() -> bool {
    static K: OnceLock<bool> = OnceLock::new();
    *K.get_or_init(|| std::env::var_os("SPINBLK_FUZZ_KNOWN_BUGS").is_some())
}

/// SPINBLK_FUZZ_DEBUG=1: print every reply and how each session ended (to check seeds).
fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("SPINBLK_FUZZ_DEBUG").is_some())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_mb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (pages * 4096) >> 20
}

/// A cursor over the input.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fn check(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: a descriptor a system call just returned, owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn memfd(pages: u8, sealed: bool) -> Option<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | if sealed { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = check(unsafe { libc::memfd_create(c"fuzz-guest".as_ptr(), flags) })?;
    // SAFETY: sizing our own memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), (i64::from(pages) + 1) * 4096) } != 0 {
        return None;
    }
    if sealed {
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: sealing our own memfd.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    }
    Some(fd)
}

/// Makes the fd an fd byte asks for (kinds in bits 0-2; see the match). `extra` holds fds that
/// must stay open while this one is in use (the other end of a pipe or socket).
fn make_fd(
    kind: u8,
    input: &mut Input<'_>,
    files: &[OwnedFd],
    extra: &mut Vec<OwnedFd>,
) -> Option<OwnedFd> {
    match kind & 7 {
        0 => {
            // SAFETY: eventfd with valid flags.
            let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
            if kind & 8 != 0 {
                // Saturated (2^64 - 2): a blocking write to it sleeps, so a target that writes
                // it blocking (a call fd) would hang. Written while the counter is 0, so this
                // write cannot block.
                let v = (u64::MAX - 1).to_ne_bytes();
                // SAFETY: writing 8 bytes from our buffer to our new eventfd.
                unsafe { libc::write(fd.as_raw_fd(), v.as_ptr().cast(), 8) };
            }
            Some(fd)
        }
        1 => memfd(input.u8()?, true),
        2 => memfd(input.u8()?, false),
        3 => files.get(usize::from(kind >> 3))?.try_clone().ok(),
        4 | 5 => {
            let mut p = [-1; 2];
            // SAFETY: pipe2 into a 2-element array.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return None;
            }
            let (r, w) = (check(p[0])?, check(p[1])?);
            if kind & 7 == 4 {
                extra.push(w);
                Some(r)
            } else {
                extra.push(r);
                Some(w)
            }
        }
        6 => File::open("/dev/null").ok().map(OwnedFd::from),
        _ => {
            let (a, b) = UnixStream::pair().ok()?;
            extra.push(b.into());
            Some(a.into())
        }
    }
}

/// The frontend side of one connection.
struct Frontend {
    sock: UnixStream,
    /// Reply bytes not yet parsed.
    rx: Vec<u8>,
    /// GET_QUEUE_NUM replies seen.
    queue_num_replies: u64,
    /// All replies seen.
    replies: u64,
    /// Replies the frontend is owed for the complete messages sent so far (see `owed`).
    expected: u64,
    /// Whether REPLY_ACK is negotiated, as the frontend can tell from what it sent.
    reply_ack: bool,
    /// A message carried more fds than the target takes (8).
    too_many_fds: bool,
    /// The target closed its end.
    closed: bool,
}

impl Frontend {
    /// Reads whatever replies arrived (waiting up to `wait` for the first byte).
    fn pump(&mut self, wait: Duration) {
        if self.closed {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll on one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return;
        }
        let mut buf = [0u8; 16384];
        loop {
            // SAFETY: recv into our buffer; fds in replies (GET_INFLIGHT_FD) are discarded and
            // closed by the kernel since no control buffer is given.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => {
                    self.closed = true;
                    break;
                }
                n if n < 0 => {
                    let e = std::io::Error::last_os_error().raw_os_error();
                    if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                        self.closed = true;
                    }
                    break;
                }
                n => self.rx.extend_from_slice(&buf[..n as usize]),
            }
        }
        self.parse_replies();
    }

    /// Checks the framing of every complete reply.
    fn parse_replies(&mut self) {
        let mut at = 0;
        while self.rx.len() - at >= 12 {
            let h = &self.rx[at..at + 12];
            let code = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let flags = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
            assert_eq!(
                flags,
                FLAG_VERSION | FLAG_REPLY,
                "reply flags (request {code})"
            );
            assert!(size <= 4096 + 12, "reply of {size} bytes (request {code})");
            if self.rx.len() - at < 12 + size {
                break;
            }
            if debug() {
                let v = self.rx[at + 12..at + 12 + size.min(8)].to_vec();
                eprintln!("reply to {code}: {size} bytes {v:?}");
            }
            self.replies += 1;
            if code == GET_QUEUE_NUM {
                assert_eq!(size, 8, "GET_QUEUE_NUM reply");
                self.queue_num_replies += 1;
            }
            at += 12 + size;
        }
        self.rx.drain(..at);
    }

    /// Sends `bytes` with `fds` attached to the first part, reading replies whenever the
    /// socket is full (the target blocks on its replies otherwise).
    fn send(&mut self, bytes: &[u8], fds: &[RawFd]) {
        let mut sent = 0;
        let mut fds = fds;
        while sent < bytes.len() && !self.closed {
            let n = send_some(&self.sock, &bytes[sent..], fds);
            if n > 0 {
                sent += n as usize;
                fds = &[];
                continue;
            }
            let e = std::io::Error::last_os_error().raw_os_error();
            if e == Some(libc::EAGAIN) || e == Some(libc::EINTR) {
                // The socket is full: let the target's replies out, wait for room.
                self.pump(Duration::ZERO);
                let mut pfd = libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: libc::POLLOUT | libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            } else {
                // EPIPE/ECONNRESET: the target closed the connection.
                self.closed = true;
            }
        }
    }

    /// Accounts for the reply a complete, well-framed message is owed: one for every request
    /// whose reply carries data (or the target closes the connection), and an ack for a
    /// NEED_REPLY message while REPLY_ACK is negotiated before or after it (vhost-user spec;
    /// session.rs). SET_PROTOCOL_FEATURES with a value the target offers (0x922b), 8 bytes
    /// and no fds is what turns REPLY_ACK on or off; resets keep it.
    fn owe(&mut self, code: u32, flags: u32, payload: &[u8], nfds: usize) {
        let before = self.reply_ack;
        if code == SET_PROTOCOL_FEATURES && payload.len() == 8 && nfds == 0 {
            let v = u64::from_le_bytes(payload.try_into().expect("8 bytes"));
            if v & !OFFERED_PROTOCOL == 0 {
                self.reply_ack = v & REPLY_ACK != 0;
            }
        }
        if DATA_REPLY.contains(&code)
            || (flags & FLAG_NEED_REPLY != 0 && (before || self.reply_ack))
        {
            self.expected += 1;
        }
    }

    /// A GET_QUEUE_NUM round trip: every earlier message has been handled once it returns.
    fn sync(&mut self) {
        let before = self.queue_num_replies;
        let mut msg = Vec::with_capacity(12);
        for v in [GET_QUEUE_NUM, FLAG_VERSION, 0] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        self.send(&msg, &[]);
        self.expected += 1;
        let t0 = Instant::now();
        while !self.closed && self.queue_num_replies == before {
            assert!(
                t0.elapsed() < ANSWER_TIMEOUT,
                "the target did not answer GET_QUEUE_NUM within {ANSWER_TIMEOUT:?}"
            );
            self.pump(Duration::from_millis(100));
        }
    }
}

fn send_some(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> isize {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let mut cmsg_buf = [0u64; 16]; // room for CMSG_SPACE(4 * MAX_MSG_FDS)
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure computations.
        let (space, len) = unsafe { (libc::CMSG_SPACE(data_len), libc::CMSG_LEN(data_len)) };
        assert!(space as usize <= std::mem::size_of_val(&cmsg_buf));
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as usize;
        // SAFETY: the control buffer holds one header with room for `fds` (checked above).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = len as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: sendmsg with the header built above.
    unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    }
}

/// Plays one input. Operations (first byte % 8):
/// - 0-3 message: `code u8, hflags u8, len u16, nfds u8`, then per fd a kind byte (+ a size
///   byte for memfds), then `len` payload bytes (fewer when the input ends: a message cut
///   short). hflags bit 0 sets NEED_REPLY; bit 1 uses the next 4 input bytes as the raw
///   request code; bit 2 puts hflags' high nibble into the header's flags (bad flags).
/// - 4 guest write: `file u8, offset u32, len u8`, then `len` bytes written into that memfd.
/// - 5 kick: `file u8`: writes 1 to it when that cannot block (an eventfd kick; other kinds as
///   they come).
/// - 6 round trip: waits for the target to answer GET_QUEUE_NUM (all earlier messages done).
/// - 7 shrink: `file u8, pages u8`: truncates a memfd (refused on sealed ones).
fn run(data: &[u8]) {
    let h = harness();
    let fds_before = open_fds();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    ours.set_nonblocking(true).expect("nonblocking");
    let mut fe = Frontend {
        sock: ours,
        rx: Vec::new(),
        queue_num_replies: 0,
        replies: 0,
        expected: 0,
        reply_ack: false,
        too_many_fds: false,
        closed: false,
    };
    let mut files: Vec<OwnedFd> = Vec::new();
    let mut extra: Vec<OwnedFd> = Vec::new();
    std::thread::scope(|scope| {
        let server = scope.spawn(|| h.session.serve(theirs));
        let mut input = Input(data);
        while let Some(op) = input.u8() {
            if fe.closed {
                break;
            }
            if debug() {
                eprintln!("op {op} ({} input bytes left)", input.0.len());
            }
            match op % 8 {
                0..=3 => {
                    let (Some(code), Some(hflags), Some(len), Some(nfds)) =
                        (input.u8(), input.u8(), input.u16(), input.u8())
                    else {
                        break;
                    };
                    let code = if hflags & 2 != 0 {
                        let Some(c) = input.u32() else { break };
                        c
                    } else {
                        u32::from(code)
                    };
                    let mut flags = FLAG_VERSION;
                    if hflags & 1 != 0 {
                        flags |= FLAG_NEED_REPLY;
                    }
                    if hflags & 4 != 0 {
                        flags ^= u32::from(hflags >> 4) << 2;
                    }
                    let mut attached: Vec<OwnedFd> = Vec::new();
                    for _ in 0..usize::from(nfds) % (MAX_MSG_FDS + 1) {
                        let Some(kind) = input.u8() else { break };
                        if let Some(fd) = make_fd(kind, &mut input, &files, &mut extra) {
                            attached.push(fd);
                        }
                    }
                    let payload = input.bytes(usize::from(len));
                    let mut msg = Vec::with_capacity(12 + payload.len());
                    msg.extend_from_slice(&code.to_le_bytes());
                    msg.extend_from_slice(&flags.to_le_bytes());
                    msg.extend_from_slice(&u32::from(len).to_le_bytes());
                    msg.extend_from_slice(payload);
                    let raw: Vec<RawFd> = attached.iter().map(AsRawFd::as_raw_fd).collect();
                    fe.send(&msg, &raw);
                    fe.too_many_fds |= raw.len() > TARGET_MAX_FDS;
                    if payload.len() == usize::from(len) {
                        fe.owe(code, flags, payload, raw.len());
                    }
                    for fd in attached {
                        if files.len() < MAX_FILES {
                            files.push(fd);
                        }
                    }
                    fe.pump(Duration::ZERO);
                }
                4 => {
                    let (Some(i), Some(off), Some(len)) = (input.u8(), input.u32(), input.u8())
                    else {
                        break;
                    };
                    let bytes = input.bytes(usize::from(len));
                    if let Some(f) = files.get(usize::from(i) % MAX_FILES) {
                        // SAFETY: pwrite from our buffer into an fd we own (errors ignored:
                        // not every file is a memfd).
                        unsafe {
                            libc::pwrite(
                                f.as_raw_fd(),
                                bytes.as_ptr().cast(),
                                bytes.len(),
                                i64::from(off % (1 << 20)),
                            )
                        };
                    }
                }
                5 => {
                    let Some(i) = input.u8() else { break };
                    if let Some(f) = files.get(usize::from(i) % MAX_FILES) {
                        let one = 1u64.to_ne_bytes();
                        // SAFETY: a non-blocking-safe 8-byte write attempt; errors ignored.
                        // (A full pipe would block: only eventfds and memfds are written.)
                        let mut pfd = libc::pollfd {
                            fd: f.as_raw_fd(),
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        // SAFETY: poll on one pollfd we own.
                        if unsafe { libc::poll(&mut pfd, 1, 0) } == 1 {
                            // SAFETY: writing our buffer to an fd we own.
                            unsafe { libc::write(f.as_raw_fd(), one.as_ptr().cast(), 8) };
                        }
                    }
                }
                6 => fe.sync(),
                _ => {
                    let (Some(i), Some(pages)) = (input.u8(), input.u8()) else {
                        break;
                    };
                    if let Some(f) = files.get(usize::from(i) % MAX_FILES) {
                        // SAFETY: ftruncate on an fd we own (fails harmlessly on non-files
                        // and sealed memfds).
                        unsafe { libc::ftruncate(f.as_raw_fd(), i64::from(pages) * 4096) };
                    }
                }
            }
        }
        // Hang up and wait for the target to notice.
        let _ = fe.sock.shutdown(std::net::Shutdown::Write);
        let t0 = Instant::now();
        while !fe.closed {
            assert!(
                t0.elapsed() < ANSWER_TIMEOUT,
                "the session did not end within {ANSWER_TIMEOUT:?} of the frontend hanging up"
            );
            fe.pump(Duration::from_millis(100));
        }
        let end = server.join().expect("serve panicked");
        // The frontend hung up (the target closed nothing on purpose): every message was
        // complete and handled, and each one owed a reply got exactly one.
        if fe.too_many_fds && end.is_none() {
            // Finding F1 (docs/fuzzing.md): recv_with_fds fails (ENOBUFS) on a message with
            // more than 8 fds, after consuming part of it, and serve() reports that as the
            // frontend disconnecting: no log, no reply, not a deliberate close.
            assert!(
                known_bugs(),
                "a message with more than {TARGET_MAX_FDS} fds ended the session as \
                 'disconnected' (expected a deliberate, logged close)"
            );
        } else if end.is_none() {
            assert_eq!(
                fe.replies, fe.expected,
                "replies received vs owed (the target ended the session as disconnected)"
            );
        }
        if debug() {
            eprintln!(
                "session ended: {end:?}; requests completed so far: {}",
                h.session.completed_requests()
            );
        }
    });
    drop(files);
    drop(extra);
    drop(fe);

    // No queue may outlive its connection, and no fd may leak. Reactors drop a stopped queue
    // (and its fds) right after acknowledging the stop, so allow them a moment.
    let t0 = Instant::now();
    let mut retries = 0u64;
    loop {
        let pollers: usize = h.pool.stats().iter().map(|s| s.pollers).sum();
        let fds = open_fds();
        if pollers == h.idle_pollers && fds <= fds_before {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "after the session: {pollers} pollers (idle {}), {fds} fds (before {fds_before})",
            h.idle_pollers
        );
        retries += 1;
        std::thread::yield_now();
    }
    if debug() {
        eprintln!("post-session checks settled after {retries} retries");
    }
    let rss = rss_mb();
    assert!(rss < 1024, "RSS {rss} MiB after a session");
}

fuzz_target!(|data: &[u8]| run(data));
