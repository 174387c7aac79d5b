//! systemd's readiness protocol (sd_notify): a datagram to the unix socket named by
//! $NOTIFY_SOCKET (a path, or an abstract name starting with '@'). Written by hand: it is one
//! sendto(2).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Sends `state` to the service manager, if there is one. Failures are logged, never fatal.
fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        log::warn!("cannot notify the service manager ({state}): {e}");
    }
}

/// Every configured controller and the RPC socket listen.
pub fn ready() {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving",
        std::process::id()
    ));
}

/// Shutting down (draining).
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining");
}
