//! The vhost-user message loop of one frontend connection: reads each message (header, fds,
//! payload), checks its framing, hands it to the [`BlkBackend`], and sends exactly one reply
//! wherever the frontend waits for one.
//!
//! We read the socket ourselves rather than through `vhost`'s `BackendReqHandler`, whose early
//! checks return errors without answering (an unknown request code, a missing fd, a misaligned
//! ring address...): a frontend that set NEED_REPLY then waits forever. Here the rule is simple:
//! a message with NEED_REPLY (REPLY_ACK negotiated) always gets an ack (0 or 1); a message whose
//! reply carries data gets that reply, or an empty/zero one where the protocol has a way to say
//! "no", or else the connection is closed on purpose and logged once. `vhost`'s message types
//! and their validators are still used for every payload.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use log::{debug, warn};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemory, VhostUserMemoryRegion, VhostUserMsgValidator, VhostUserProtocolFeatures,
    VhostUserSingleMemoryRegion, VhostUserU64, VhostUserVringAddr, VhostUserVringAddrFlags,
    VhostUserVringState, MAX_MSG_SIZE,
};
use vhost::vhost_user::{Error as VhostError, VhostUserBackendReqHandlerMut};
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::backend::BlkBackend;
use crate::device::lock;

/// Most fds one message may carry (SET_MEM_TABLE's 8 regions; QEMU's
/// VHOST_MEMORY_BASELINE_NREGIONS). More are closed by the kernel and the message is refused.
const MAX_FDS: usize = 8;
/// Largest payload accepted: the config space messages' 12-byte header plus 4 KiB. A larger
/// size cannot be skipped safely (the stream would lose its framing): the connection closes.
const MAX_PAYLOAD: usize = MAX_MSG_SIZE + 12;
/// How long the rest of a message may take once its header arrived.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive refused messages after which the connection is closed anyway.
const MAX_CONSECUTIVE_ERRORS: u32 = 1024;

/// Header flags: protocol version 1 in bits 0-1, REPLY, NEED_REPLY; the rest reserved.
const VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const KNOWN_FLAGS: u32 = 0x3 | FLAG_REPLY | FLAG_NEED_REPLY;

/// The 12-byte message header (`vhost`'s own type is private to it).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Header {
    request: u32,
    flags: u32,
    size: u32,
}
// SAFETY: three plain u32s, no padding; any bit pattern is valid.
unsafe impl ByteValued for Header {}

/// Why a connection ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The frontend closed it (or it was shut down from our side).
    Disconnected,
    /// We closed it: the reason, logged once.
    Closed(&'static str),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Disconnected => f.write_str("disconnected"),
            SessionEnd::Closed(why) => write!(f, "closed by the target: {why}"),
        }
    }
}

/// What a handled message asks the loop to send back.
enum Reply {
    /// No data reply; an ack with this outcome if the frontend asked for one (`Err`: why
    /// it was refused, for the log).
    Ack(Result<(), String>),
    /// A reply with this payload (and fds).
    Data(Vec<u8>, Vec<File>),
    /// The frontend waits for a reply we cannot give: close the connection.
    Close(&'static str),
}

fn ack(r: Result<(), VhostError>) -> Reply {
    Reply::Ack(r.map_err(|e| e.to_string()))
}

/// A refusal for a malformed or unexpected message.
fn refuse(why: &str) -> Reply {
    Reply::Ack(Err(why.to_string()))
}

/// Refusals logged at warning level per connection before the rest go to debug level (a
/// hostile frontend must not be able to flood the log).
const LOGGED_REFUSALS: u32 = 16;

fn data<T: ByteValued>(v: &T) -> Reply {
    Reply::Data(v.as_slice().to_vec(), Vec::new())
}

/// Decodes a fixed-size payload: exactly `size_of::<T>()` bytes, passing `T`'s validator.
fn body<T: ByteValued + Default + VhostUserMsgValidator>(payload: &[u8]) -> Option<T> {
    if payload.len() != std::mem::size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(payload);
    v.is_valid().then_some(v)
}

/// One received message.
struct Message {
    hdr: Header,
    payload: Vec<u8>,
    files: Vec<File>,
}

/// Reads one message; `Ok(None)` on a clean end of stream before a header.
fn recv(stream: &mut UnixStream) -> Result<Option<Message>, SessionEnd> {
    let mut hdr = Header::default();
    let mut fds = [-1 as RawFd; MAX_FDS];
    let buf = hdr.as_mut_slice();
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec covers `hdr`'s bytes, which accept any bit pattern (ByteValued).
    let got = unsafe { stream.recv_with_fds(&mut iov, &mut fds) };
    let (n, nfds) = match got {
        Ok((0, _)) => return Ok(None),
        Ok(v) => v,
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => (0, 0),
        // More fds than MAX_FDS: the kernel closed the extra ones, and the message's bytes are
        // consumed with them, so the stream has lost its framing.
        Err(e) if e.errno() == libc::ENOBUFS => {
            return Err(SessionEnd::Closed("a message carried more than 8 fds"))
        }
        Err(_) => return Err(SessionEnd::Disconnected),
    };
    // SAFETY: recvmsg installed `nfds` new descriptors that nobody else owns.
    let files: Vec<File> = fds[..nfds]
        .iter()
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    let _ = stream.set_read_timeout(Some(BODY_TIMEOUT));
    let result = (|| {
        let buf = hdr.as_mut_slice();
        if n < buf.len() {
            stream
                .read_exact(&mut buf[n..])
                .map_err(|_| SessionEnd::Closed("connection closed in the middle of a header"))?;
        }
        if hdr.flags & 0x3 != VERSION_1
            || hdr.flags & !KNOWN_FLAGS != 0
            || hdr.flags & FLAG_REPLY != 0
        {
            return Err(SessionEnd::Closed("malformed message header"));
        }
        let size = hdr.size as usize;
        if size > MAX_PAYLOAD {
            return Err(SessionEnd::Closed("oversized message"));
        }
        let mut payload = vec![0u8; size];
        stream
            .read_exact(&mut payload)
            .map_err(|_| SessionEnd::Closed("connection closed in the middle of a message"))?;
        Ok(payload)
    })();
    let _ = stream.set_read_timeout(None);
    let payload = result?;
    Ok(Some(Message {
        hdr,
        payload,
        files,
    }))
}

fn send(
    stream: &mut UnixStream,
    req: &Header,
    payload: &[u8],
    files: &[File],
) -> std::io::Result<()> {
    let hdr = Header {
        request: req.request,
        flags: VERSION_1 | FLAG_REPLY,
        size: payload.len() as u32,
    };
    let mut msg = Vec::with_capacity(12 + payload.len());
    msg.extend_from_slice(hdr.as_slice());
    msg.extend_from_slice(payload);
    if files.is_empty() {
        stream.write_all(&msg)
    } else {
        let fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
        let n = stream
            .send_with_fds(&[&msg[..]], &fds)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        if n < msg.len() {
            stream.write_all(&msg[n..])?;
        }
        Ok(())
    }
}

/// Serves the frontend on `stream` until it disconnects or misbehaves beyond repair. The
/// backend's mutex is taken per message (the control plane may take it between messages).
pub fn serve(name: &str, mut stream: UnixStream, backend: &Mutex<BlkBackend>) -> SessionEnd {
    let mut errors = 0u32;
    let mut refusals = 0u32;
    loop {
        let msg = match recv(&mut stream) {
            Ok(Some(m)) => m,
            Ok(None) => return SessionEnd::Disconnected,
            Err(SessionEnd::Disconnected) => return SessionEnd::Disconnected,
            Err(end) => {
                warn!("{name}: closing the connection: {end:?}");
                return end;
            }
        };
        let raw_code = msg.hdr.request;
        let need_reply = msg.hdr.flags & FLAG_NEED_REPLY != 0;
        let (reply, reply_ack) = {
            let mut b = lock(backend);
            // Whether acks are on is decided by the state before this message (a reset turns
            // REPLY_ACK off, yet its own ack is still owed).
            let reply_ack = b.reply_ack_negotiated();
            let reply = dispatch(&mut b, raw_code, msg.payload, msg.files);
            (reply, reply_ack || b.reply_ack_negotiated())
        };
        let outcome = match reply {
            Reply::Ack(result) => {
                let ok = result.is_ok();
                if let Err(why) = result {
                    errors += 1;
                    refusals += 1;
                    if refusals <= LOGGED_REFUSALS {
                        warn!("{name}: request {raw_code} refused: {why}");
                    } else {
                        debug!("{name}: request {raw_code} refused: {why}");
                    }
                } else {
                    errors = 0;
                }
                if need_reply && reply_ack {
                    let v = VhostUserU64::new(u64::from(!ok));
                    send(&mut stream, &msg.hdr, v.as_slice(), &[])
                } else {
                    Ok(())
                }
            }
            Reply::Data(payload, files) => {
                errors = 0;
                send(&mut stream, &msg.hdr, &payload, &files)
            }
            Reply::Close(why) => {
                warn!("{name}: closing the connection: request {raw_code}: {why}");
                return SessionEnd::Closed(why);
            }
        };
        if outcome.is_err() {
            return SessionEnd::Disconnected;
        }
        if let Some(why) = lock(backend).take_fatal() {
            warn!("{name}: closing the connection: {why}");
            return SessionEnd::Closed(why);
        }
        if errors >= MAX_CONSECUTIVE_ERRORS {
            warn!("{name}: closing the connection: {errors} requests refused in a row");
            return SessionEnd::Closed("too many refused requests");
        }
    }
}

fn one_file(files: Vec<File>) -> Option<File> {
    let mut files = files;
    (files.len() == 1).then(|| files.swap_remove(0))
}

/// A vring fd message: index in bits 0-7, NOFD in bit 8, exactly one fd unless NOFD.
fn vring_fd(payload: &[u8], files: Vec<File>) -> Option<(u8, Option<File>)> {
    let v = body::<VhostUserU64>(payload)?.value;
    if v & !0x1ff != 0 {
        return None;
    }
    let index = (v & 0xff) as u8;
    if v & 0x100 != 0 {
        files.is_empty().then_some((index, None))
    } else {
        one_file(files).map(|f| (index, Some(f)))
    }
}

/// Handles one message on the backend and says what to send back.
fn dispatch(b: &mut BlkBackend, code: u32, payload: Vec<u8>, files: Vec<File>) -> Reply {
    let p = &payload[..];
    let Ok(req) = FrontendReq::try_from(code) else {
        // Unknown to the protocol: refused (an ack of 1 if the frontend asked for one).
        return refuse("malformed or unexpected message");
    };
    // Every message without fds of its own must not carry any.
    let takes_fds = matches!(
        req,
        FrontendReq::SET_MEM_TABLE
            | FrontendReq::SET_VRING_CALL
            | FrontendReq::SET_VRING_KICK
            | FrontendReq::SET_VRING_ERR
            | FrontendReq::SET_BACKEND_REQ_FD
            | FrontendReq::SET_INFLIGHT_FD
            | FrontendReq::ADD_MEM_REG
            | FrontendReq::SET_LOG_BASE
            | FrontendReq::SET_LOG_FD
    );
    if !takes_fds && !files.is_empty() {
        return if has_data_reply(req) {
            Reply::Close("unexpected fds on a request with a reply")
        } else {
            refuse("malformed or unexpected message")
        };
    }
    match req {
        FrontendReq::SET_OWNER if p.is_empty() => ack(b.set_owner()),
        FrontendReq::RESET_OWNER if p.is_empty() => ack(b.reset_owner()),
        FrontendReq::RESET_DEVICE if p.is_empty() => ack(b.reset_device()),
        FrontendReq::GET_FEATURES if p.is_empty() => match b.get_features() {
            Ok(f) => data(&VhostUserU64::new(f)),
            Err(_) => Reply::Close("GET_FEATURES failed"),
        },
        FrontendReq::SET_FEATURES => match body::<VhostUserU64>(p) {
            Some(v) => ack(b.set_features(v.value)),
            None => refuse("malformed or unexpected message"),
        },
        FrontendReq::GET_PROTOCOL_FEATURES if p.is_empty() => match b.get_protocol_features() {
            Ok(f) => data(&VhostUserU64::new(f.bits())),
            Err(_) => Reply::Close("GET_PROTOCOL_FEATURES failed"),
        },
        FrontendReq::SET_PROTOCOL_FEATURES => match body::<VhostUserU64>(p) {
            Some(v) => ack(b.set_protocol_features(v.value)),
            None => refuse("malformed or unexpected message"),
        },
        FrontendReq::GET_QUEUE_NUM if p.is_empty() => match b.get_queue_num() {
            Ok(n) => data(&VhostUserU64::new(n)),
            Err(_) => Reply::Close("GET_QUEUE_NUM failed"),
        },
        FrontendReq::GET_MAX_MEM_SLOTS if p.is_empty() => match b.get_max_mem_slots() {
            Ok(n) => data(&VhostUserU64::new(n)),
            Err(_) => Reply::Close("GET_MAX_MEM_SLOTS failed"),
        },
        FrontendReq::SET_MEM_TABLE => ack(set_mem_table(b, p, files)),
        FrontendReq::ADD_MEM_REG
            if b.protocol_acked(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) =>
        {
            match (body::<VhostUserSingleMemoryRegion>(p), one_file(files)) {
                (Some(r), Some(f)) => ack(b.add_mem_region(&r, f, None).map(|_| ())),
                _ => refuse("malformed or unexpected message"),
            }
        }
        FrontendReq::REM_MEM_REG
            if b.protocol_acked(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) =>
        {
            match body::<VhostUserSingleMemoryRegion>(p) {
                Some(r) => ack(b.remove_mem_region(&r)),
                None => refuse("malformed or unexpected message"),
            }
        }
        FrontendReq::SET_VRING_NUM => match body::<VhostUserVringState>(p) {
            Some(s) => ack(b.set_vring_num(s.index, s.num)),
            None => refuse("malformed or unexpected message"),
        },
        FrontendReq::SET_VRING_ADDR => {
            let Some(a) = body_unchecked::<VhostUserVringAddr>(p) else {
                return refuse("malformed or unexpected message");
            };
            let Some(flags) = VhostUserVringAddrFlags::from_bits(a.flags) else {
                return refuse("malformed or unexpected message");
            };
            ack(b.set_vring_addr(a.index, flags, a.descriptor, a.used, a.available, a.log))
        }
        FrontendReq::SET_VRING_BASE => match body::<VhostUserVringState>(p) {
            Some(s) => ack(b.set_vring_base(s.index, s.num)),
            None => refuse("malformed or unexpected message"),
        },
        FrontendReq::GET_VRING_BASE => match body::<VhostUserVringState>(p) {
            Some(s) => match b.get_vring_base(s.index) {
                Ok(state) => data(&state),
                Err(_) => Reply::Close("GET_VRING_BASE failed"),
            },
            None => Reply::Close("malformed GET_VRING_BASE"),
        },
        FrontendReq::SET_VRING_KICK => match vring_fd(p, files) {
            Some((i, f)) => ack(b.set_vring_kick(i, f)),
            None => refuse("malformed or unexpected message"),
        },
        FrontendReq::SET_VRING_CALL => match vring_fd(p, files) {
            Some((i, f)) => ack(b.set_vring_call(i, f)),
            None => refuse("malformed or unexpected message"),
        },
        FrontendReq::SET_VRING_ERR => match vring_fd(p, files) {
            Some((i, f)) => ack(b.set_vring_err(i, f)),
            None => refuse("malformed or unexpected message"),
        },
        FrontendReq::SET_VRING_ENABLE if b.features_acked_protocol() => {
            match body::<VhostUserVringState>(p) {
                Some(s) if s.num <= 1 => ack(b.set_vring_enable(s.index, s.num == 1)),
                _ => refuse("malformed or unexpected message"),
            }
        }
        FrontendReq::GET_CONFIG => get_config(b, p),
        FrontendReq::SET_CONFIG if b.protocol_acked(VhostUserProtocolFeatures::CONFIG) => {
            ack(set_config(b, p))
        }
        FrontendReq::SET_BACKEND_REQ_FD
            if b.protocol_acked(VhostUserProtocolFeatures::BACKEND_REQ) =>
        {
            match one_file(files) {
                Some(f) => ack(b.set_backend_channel(f)),
                None => refuse("malformed or unexpected message"),
            }
        }
        FrontendReq::GET_INFLIGHT_FD => {
            let refused = || {
                // mmap_size 0 and no fd: QEMU takes that as "no inflight region".
                data(&VhostUserInflight::new(0, 0, 0, 0))
            };
            if !b.protocol_acked(VhostUserProtocolFeatures::INFLIGHT_SHMFD) {
                return refused();
            }
            let Some(req) = body::<VhostUserInflight>(p) else {
                return refused();
            };
            match b.get_inflight_fd(&req) {
                Ok((reply, file)) => Reply::Data(reply.as_slice().to_vec(), vec![file]),
                Err(_) => refused(),
            }
        }
        FrontendReq::SET_INFLIGHT_FD
            if b.protocol_acked(VhostUserProtocolFeatures::INFLIGHT_SHMFD) =>
        {
            match (body::<VhostUserInflight>(p), one_file(files)) {
                (Some(r), Some(f)) => ack(b.set_inflight_fd(&r, f)),
                _ => refuse("malformed or unexpected message"),
            }
        }
        FrontendReq::SET_LOG_BASE if b.protocol_acked(VhostUserProtocolFeatures::LOG_SHMFD) => {
            match (body::<VhostUserLog>(p), one_file(files)) {
                (Some(log), Some(f)) => match b.set_log_base(&log, f) {
                    // The reply echoes the request (as the vhost crate and DPDK do).
                    Ok(()) => data(&log),
                    Err(_) => Reply::Close("SET_LOG_BASE refused"),
                },
                _ => Reply::Close("malformed SET_LOG_BASE"),
            }
        }
        FrontendReq::SET_LOG_FD => {
            // The log fd is for a notification the target never sends: accepted and closed.
            drop(files);
            Reply::Ack(Ok(()))
        }
        other if has_data_reply(other) => {
            Reply::Close("a request with a reply that this target does not implement")
        }
        _ => refuse("malformed or unexpected message"),
    }
}

/// Requests whose reply carries data, sent whether or not NEED_REPLY is set.
fn has_data_reply(code: FrontendReq) -> bool {
    matches!(
        code,
        FrontendReq::GET_FEATURES
            | FrontendReq::GET_PROTOCOL_FEATURES
            | FrontendReq::GET_VRING_BASE
            | FrontendReq::GET_QUEUE_NUM
            | FrontendReq::GET_CONFIG
            | FrontendReq::GET_INFLIGHT_FD
            | FrontendReq::GET_MAX_MEM_SLOTS
            | FrontendReq::SET_LOG_BASE
            | FrontendReq::GET_SHARED_OBJECT
            | FrontendReq::SET_DEVICE_STATE_FD
            | FrontendReq::CHECK_DEVICE_STATE
            | FrontendReq::POSTCOPY_ADVISE
            | FrontendReq::GET_SHMEM_CONFIG
    )
}

/// Like [`body`] for messages whose validator refuses values we check ourselves.
fn body_unchecked<T: ByteValued + Default>(payload: &[u8]) -> Option<T> {
    if payload.len() != std::mem::size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(payload);
    Some(v)
}

fn set_mem_table(b: &mut BlkBackend, p: &[u8], files: Vec<File>) -> Result<(), VhostError> {
    let hdr_len = std::mem::size_of::<VhostUserMemory>();
    let region_len = std::mem::size_of::<VhostUserMemoryRegion>();
    let mem = body_unchecked::<VhostUserMemory>(p.get(..hdr_len).ok_or(VhostError::InvalidParam)?)
        .ok_or(VhostError::InvalidParam)?;
    let n = mem.num_regions as usize;
    if n == 0 || n > MAX_FDS || p.len() != hdr_len + n * region_len || files.len() != n {
        return Err(VhostError::InvalidParam);
    }
    let regions: Vec<VhostUserMemoryRegion> = p[hdr_len..]
        .chunks_exact(region_len)
        .map(|c| body_unchecked::<VhostUserMemoryRegion>(c).unwrap_or_default())
        .collect();
    b.set_mem_table(&regions, files, None).map(|_| ())
}

fn get_config(b: &mut BlkBackend, p: &[u8]) -> Reply {
    let hdr_len = std::mem::size_of::<VhostUserConfig>();
    let refuse = |offset: u32, flags: u32| {
        // A zero-sized reply says "failed" (vhost-user spec, GET_CONFIG).
        data(&VhostUserConfig {
            offset,
            size: 0,
            flags,
        })
    };
    let Some(c) = p.get(..hdr_len).and_then(body_unchecked::<VhostUserConfig>) else {
        return Reply::Close("malformed GET_CONFIG");
    };
    if !b.protocol_acked(VhostUserProtocolFeatures::CONFIG)
        || p.len() != hdr_len + c.size as usize
        || u64::from(c.offset) + u64::from(c.size) > u64::from(MAX_MSG_SIZE as u32)
    {
        return refuse(c.offset, c.flags);
    }
    let Some(flags) = VhostUserConfigFlags::from_bits(c.flags) else {
        return refuse(c.offset, c.flags);
    };
    match b.get_config(c.offset, c.size, flags) {
        Ok(bytes) if bytes.len() == c.size as usize => {
            let mut out = c.as_slice().to_vec();
            out.extend_from_slice(&bytes);
            Reply::Data(out, Vec::new())
        }
        _ => refuse(c.offset, c.flags),
    }
}

fn set_config(b: &mut BlkBackend, p: &[u8]) -> Result<(), VhostError> {
    let hdr_len = std::mem::size_of::<VhostUserConfig>();
    let c = p
        .get(..hdr_len)
        .and_then(body_unchecked::<VhostUserConfig>)
        .ok_or(VhostError::InvalidParam)?;
    if p.len() != hdr_len + c.size as usize
        || u64::from(c.offset) + u64::from(c.size) > u64::from(MAX_MSG_SIZE as u32)
    {
        return Err(VhostError::InvalidParam);
    }
    let flags = VhostUserConfigFlags::from_bits(c.flags).ok_or(VhostError::InvalidParam)?;
    b.set_config(c.offset, &p[hdr_len..], flags)
}
