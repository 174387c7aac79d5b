//! The vhost-user socket, spoken by hand: any header, any payload, any fds, and replies read
//! with deadlines so a target that never answers shows up as a hang instead of causing one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::consts::{flags, req};

/// The most fds one message carries (and one receive accepts).
const MAX_FDS: usize = 32;
/// Replies larger than this are a target bug (the protocol's limit is 4 KiB of payload).
const MAX_REPLY_PAYLOAD: usize = 0x1000 + 64;

/// A message received from the target.
#[derive(Debug)]
pub struct Reply {
    /// The request code it answers.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// The payload.
    pub payload: Vec<u8>,
    /// Fds that came with it.
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// The payload as a u64, when it is exactly 8 bytes.
    pub fn u64(&self) -> Option<u64> {
        let b: [u8; 8] = self.payload.as_slice().try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// Why no message was received.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing (or only part of a message) arrived before the deadline.
    Timeout,
    /// The target closed the connection.
    Closed,
    /// The target sent something that is not a vhost-user message.
    Malformed(String),
    /// Another socket error.
    Io(io::Error),
}

/// What became of a message that asked for a reply.
#[derive(Debug)]
pub enum Answer {
    /// A REPLY_ACK of 0.
    Ack,
    /// A REPLY_ACK with this non-zero value.
    Nack(u64),
    /// A reply that is not a plain 8-byte ack (GET_* answers).
    Reply(Reply),
    /// The target answered a later message first: this one got no reply, and a front-end
    /// waiting for it would hang.
    NoReply,
    /// The target closed the connection.
    Closed,
    /// Nothing came back before the deadline, not even for a later message.
    Hang,
    /// A socket error or a garbled reply.
    Broken(String),
}

impl Answer {
    /// Short text for reports.
    pub fn describe(&self) -> String {
        match self {
            Answer::Ack => "ACK".into(),
            Answer::Nack(v) => format!("NACK({v})"),
            Answer::Reply(r) => format!("reply({} bytes, {} fds)", r.payload.len(), r.fds.len()),
            Answer::NoReply => "no reply".into(),
            Answer::Closed => "connection closed".into(),
            Answer::Hang => "hang (nothing within the timeout)".into(),
            Answer::Broken(e) => format!("broken: {e}"),
        }
    }
}

/// A raw vhost-user connection.
pub struct VhostConn {
    sock: UnixStream,
    /// How long [`call`](Self::call) waits for replies.
    pub timeout: Duration,
}

impl VhostConn {
    /// Connects to `path`, retrying while the socket does not exist yet or refuses
    /// connections, up to `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(sock) => {
                    return Ok(VhostConn {
                        sock,
                        timeout: Duration::from_secs(2),
                    })
                }
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Wraps a connected stream (e.g. one end of `UnixStream::pair`).
    pub fn from_stream(sock: UnixStream) -> Self {
        VhostConn {
            sock,
            timeout: Duration::from_secs(2),
        }
    }

    /// The socket's fd.
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Sends `bytes` with `fds` attached (SCM_RIGHTS, with the first byte).
    pub fn send_bytes(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        assert!(fds.len() <= 253, "SCM_MAX_FD");
        let mut sent = 0;
        let mut first = true;
        while sent < bytes.len() || (first && !fds.is_empty()) {
            let n = send_with_fds(self.raw_fd(), &bytes[sent..], if first { fds } else { &[] })?;
            first = false;
            sent += n;
        }
        Ok(())
    }

    /// Sends a message whose header says `size`, whatever the payload's real length.
    pub fn send_header(
        &self,
        request: u32,
        flags: u32,
        size: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(12 + payload.len());
        buf.extend_from_slice(&request.to_le_bytes());
        buf.extend_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&size.to_le_bytes());
        buf.extend_from_slice(payload);
        self.send_bytes(&buf, fds)
    }

    /// Sends a well-framed message (version 1 plus `extra_flags`).
    pub fn send(
        &self,
        request: u32,
        extra_flags: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let size = u32::try_from(payload.len()).expect("payload fits u32");
        self.send_header(request, flags::VERSION | extra_flags, size, payload, fds)
    }

    /// Receives one message, waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<Reply, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut fds = Vec::new();
        let mut hdr = [0u8; 12];
        self.read_full(&mut hdr, deadline, &mut fds)?;
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8) as usize);
        if size > MAX_REPLY_PAYLOAD {
            return Err(RecvError::Malformed(format!(
                "reply to {request} claims {size} bytes of payload"
            )));
        }
        let mut payload = vec![0u8; size];
        self.read_full(&mut payload, deadline, &mut fds)?;
        Ok(Reply {
            request,
            flags,
            payload,
            fds,
        })
    }

    /// Sends `request` with NEED_REPLY, then a harmless probe that is always answered
    /// (GET_PROTOCOL_FEATURES, or GET_FEATURES when probing that), and reads what comes back:
    /// replies are sent in order, so the probe's answer arriving first proves that `request`
    /// got none ([`Answer::NoReply`]) without waiting for a timeout.
    pub fn call(&self, request: u32, payload: &[u8], fds: &[RawFd]) -> Answer {
        self.call_flags(request, flags::NEED_REPLY, payload, fds)
    }

    /// [`call`](Self::call) with explicit extra header flags (e.g. without NEED_REPLY, for a
    /// GET_* request that is answered anyway).
    pub fn call_flags(
        &self,
        request: u32,
        extra_flags: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Answer {
        let probe = if request == req::GET_PROTOCOL_FEATURES {
            req::GET_FEATURES
        } else {
            req::GET_PROTOCOL_FEATURES
        };
        if let Err(e) = self.send(request, extra_flags, payload, fds) {
            return match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Answer::Closed,
                _ => Answer::Broken(e.to_string()),
            };
        }
        // The probe may fail to send if the target closed the connection meanwhile; what the
        // receive sees decides.
        let _ = self.send(probe, 0, &[], &[]);
        let first = match self.recv(self.timeout) {
            Ok(r) => r,
            Err(RecvError::Closed) => return Answer::Closed,
            Err(RecvError::Timeout) => return Answer::Hang,
            Err(RecvError::Malformed(m)) => return Answer::Broken(m),
            Err(RecvError::Io(e)) => return Answer::Broken(e.to_string()),
        };
        if first.request == probe && first.request != request {
            return Answer::NoReply;
        }
        if first.request != request {
            return Answer::Broken(format!(
                "reply for request {} while waiting for {request}",
                first.request
            ));
        }
        if first.flags & flags::REPLY == 0 {
            return Answer::Broken(format!("reply to {request} without the REPLY flag"));
        }
        // Consume the probe's reply so the next call starts clean (a missing one shows up
        // there as a hang or a closed connection).
        let _ = self.recv(self.timeout);
        if req::WITH_REPLY.contains(&request) {
            return Answer::Reply(first);
        }
        match first.u64() {
            Some(0) if first.fds.is_empty() => Answer::Ack,
            Some(v) if first.fds.is_empty() => Answer::Nack(v),
            _ => Answer::Reply(first),
        }
    }

    /// Reads and drops whatever arrives until the target closes the connection; `true` if it
    /// did within `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        let mut fds = Vec::new();
        loop {
            match self.read_some(&mut buf, deadline, &mut fds) {
                Ok(_) => fds.clear(),
                Err(RecvError::Closed) => return true,
                Err(RecvError::Io(_)) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Half-closes the connection: the target reads end-of-file.
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    fn read_full(
        &self,
        buf: &mut [u8],
        deadline: Instant,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(), RecvError> {
        let mut got = 0;
        while got < buf.len() {
            got += self.read_some(&mut buf[got..], deadline, fds)?;
        }
        Ok(())
    }

    /// One recvmsg of at most `buf.len()` bytes (at least one), collecting attached fds.
    fn read_some(
        &self,
        buf: &mut [u8],
        deadline: Instant,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<usize, RecvError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RecvError::Io(e));
            }
            if r == 0 {
                return Err(RecvError::Timeout);
            }
            return match recv_with_fds(self.raw_fd(), buf, fds) {
                Ok(0) => Err(RecvError::Closed),
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(RecvError::Closed),
                Err(e) => Err(RecvError::Io(e)),
            };
        }
    }
}

/// Control-message space for `n` fds.
fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// One sendmsg of `bytes` with `fds` (SCM_RIGHTS) attached, MSG_NOSIGNAL.
fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut cbuf = vec![0u64; cmsg_space(fds.len().max(1)).div_ceil(8)];
    // SAFETY: zeroed msghdr is a valid "no name, no control" message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds);
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: msg_control points at a buffer of msg_controllen bytes, which CMSG_SPACE
        // sized for `fds`; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), data_len);
        }
    }
    loop {
        // SAFETY: msg describes live buffers (iov over `bytes`, control over `cbuf`).
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One recvmsg into `buf`, appending any SCM_RIGHTS fds (close-on-exec) to `fds`.
fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = vec![0u64; cmsg_space(MAX_FDS).div_ceil(8)];
    // SAFETY: zeroed msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = (cbuf.len() * 8) as _;
    // SAFETY: as above; the kernel writes at most iov_len bytes and msg_controllen bytes.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walking the control messages the kernel wrote, with the libc macros that bound
    // each step by msg_controllen; SCM_RIGHTS data holds whole fds we now own.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost::consts::u64_payload;

    /// A fake back-end on the other end of a socket pair: answers each request with what
    /// `answer` returns (None: no reply).
    fn fake(answer: fn(u32) -> Option<Vec<u8>>) -> (VhostConn, std::thread::JoinHandle<()>) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let back = VhostConn::from_stream(b);
        let t = std::thread::spawn(move || {
            while let Ok(m) = back.recv(Duration::from_secs(5)) {
                if let Some(p) = answer(m.request) {
                    let _ = back.send(m.request, flags::REPLY, &p, &[]);
                }
            }
        });
        let mut conn = VhostConn::from_stream(a);
        conn.timeout = Duration::from_millis(500);
        (conn, t)
    }

    #[test]
    fn call_tells_ack_nack_no_reply_and_hang_apart() {
        let (conn, t) = fake(|r| match r {
            req::GET_PROTOCOL_FEATURES => Some(u64_payload(0)),
            req::SET_OWNER => Some(u64_payload(0)),
            req::SET_VRING_NUM => Some(u64_payload(1)),
            req::GET_FEATURES => Some(u64_payload(1 << 30)),
            _ => None,
        });
        assert!(matches!(conn.call(req::SET_OWNER, &[], &[]), Answer::Ack));
        assert!(matches!(
            conn.call(req::SET_VRING_NUM, &[0; 8], &[]),
            Answer::Nack(1)
        ));
        assert!(matches!(
            conn.call(req::SET_VRING_BASE, &[0; 8], &[]),
            Answer::NoReply
        ));
        match conn.call_flags(req::GET_FEATURES, 0, &[], &[]) {
            Answer::Reply(r) => assert_eq!(r.u64(), Some(1 << 30)),
            other => panic!("GET_FEATURES: {other:?}"),
        }
        drop(conn);
        t.join().expect("fake back-end");

        let (conn, t) = fake(|_| None);
        assert!(matches!(conn.call(req::SET_OWNER, &[], &[]), Answer::Hang));
        drop(conn);
        t.join().expect("fake back-end");
    }

    #[test]
    fn fds_travel_with_the_message() {
        let (a, b) = UnixStream::pair().expect("socketpair");
        let (a, b) = (VhostConn::from_stream(a), VhostConn::from_stream(b));
        let ev = crate::vhost::eventfd(true).expect("eventfd");
        a.send(
            req::SET_VRING_CALL,
            0,
            &u64_payload(3),
            &[ev.as_raw_fd(), ev.as_raw_fd()],
        )
        .expect("send");
        let m = b.recv(Duration::from_secs(1)).expect("recv");
        assert_eq!(
            (m.request, m.flags, m.u64()),
            (req::SET_VRING_CALL, flags::VERSION, Some(3))
        );
        assert_eq!(m.fds.len(), 2);
        drop(a);
        assert!(matches!(
            b.recv(Duration::from_secs(1)),
            Err(RecvError::Closed)
        ));
    }
}
