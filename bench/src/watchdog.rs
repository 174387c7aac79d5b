//! Guards the blocking vhost-user control-plane phases (connect/start/map and
//! teardown). libblkio waits for the backend's replies without a timeout, so
//! a stopped or wedged target would otherwise hang the benchmark forever.

use std::sync::mpsc;
use std::time::Duration;

/// Exits the process with status 1 and `msg` unless dropped within `timeout`.
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    pub fn arm(timeout: Duration, msg: String) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("bench-watchdog".to_string())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                    eprintln!("spinblk-bench: {msg}");
                    std::process::exit(1);
                }
            });
        if let Err(e) = spawned {
            eprintln!("spinblk-bench: warning: no watchdog ({e}); a hung target will hang us");
        }
        Self { _disarm: tx }
    }
}
