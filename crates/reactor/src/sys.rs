//! The few Linux calls a reactor makes to sleep and wake: eventfd, epoll (with a nanosecond
//! timeout where the kernel has `epoll_pwait2`), `fcntl` and `gettid`. All `unsafe` of the crate
//! lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// A non-blocking, close-on-exec eventfd.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a negative result is an error and nothing leaks.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter. A full counter (EAGAIN) already reads as signalled, so errors
    /// are ignored.
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to a descriptor this struct owns.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Resets an eventfd's counter with one non-blocking read (errors such as EAGAIN are ignored:
/// the point is only that the counter does not grow without bound).
pub(crate) fn drain(fd: RawFd) {
    let mut value: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local; an invalid or closed fd only returns an
    // error. The fd is non-blocking (set by `set_nonblocking` when it was watched).
    let _ = unsafe { libc::read(fd, (&mut value as *mut u64).cast::<libc::c_void>(), 8) };
}

/// Blocks until `fd` or `stop` (an eventfd written to stop a control thread: an accept loop)
/// is readable. `true`: `fd` is readable and `stop` is not; `false`: told to stop, or `poll`
/// failed with anything but `EINTR` (the loop should end).
pub fn wait_readable_or_stop(fd: RawFd, stop: RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return n > 0 && fds[1].revents == 0;
    }
}

/// Sets O_NONBLOCK on `fd` (on its open file description, so every copy of it sees the flag).
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFL takes an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the calling thread's timers (epoll timeouts) expire on time instead of up to 50 us
/// late (the default timer slack). Best effort.
pub(crate) fn set_timer_slack_min() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and affects only this thread.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
}

/// The calling thread's kernel id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// An epoll instance; every registration is edge-triggered EPOLLIN with a caller's token.
#[derive(Debug)]
pub(crate) struct Epoll(OwnedFd);

/// Set once `epoll_pwait2` answered ENOSYS; from then on `epoll_wait` (ms timeouts) is used.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Registers `fd` for edge-triggered readability, reported with `token`.
    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live, initialised epoll_event the kernel only reads.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes `fd` (errors, e.g. for an fd already closed, are returned for the caller to
    /// ignore or report).
    pub(crate) fn del(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is live (old kernels require a non-null pointer for DEL).
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Blocks until a registered fd fires or `timeout_ns` passes (`None`: no timeout). Returns
    /// how many entries of `events` were filled (0 on timeout, EINTR or error).
    pub(crate) fn wait(&self, events: &mut [libc::epoll_event], timeout_ns: Option<u64>) -> usize {
        let max = events.len().min(i32::MAX as usize) as libc::c_int;
        let epfd = self.0.as_raw_fd();
        if !NO_PWAIT2.load(Ordering::Relaxed) {
            let ts = timeout_ns.map(|ns| libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            });
            let ts_ptr = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `events` is a live buffer of `max` entries the kernel fills; `ts_ptr` is
            // null or points to a live timespec; a null sigmask means "no change".
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    epfd,
                    events.as_mut_ptr(),
                    max,
                    ts_ptr,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 {
                return n as usize;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return 0;
            }
            NO_PWAIT2.store(true, Ordering::Relaxed);
        }
        let ms = timeout_ns.map_or(-1, |ns| ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32);
        // SAFETY: `events` is a live buffer of `max` entries the kernel fills.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), max, ms) };
        n.max(0) as usize
    }
}
