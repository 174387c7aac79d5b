//! Several frontend sessions on one controller (a live-migration destination connects while the
//! source is still attached): each is served on its own thread, up to four at once; a fifth is
//! refused while the others keep working, and a freed slot is usable again.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use spinblk_testkit::vhost::Frontend;
use spinblk_testkit::{assert_bytes_eq, pattern, Client, ClientConfig, Target};

#[test]
fn four_sessions_at_once_are_served_and_a_fifth_is_refused() {
    let target = Target::start_args(
        &[
            "--socket",
            "{dir}/vhost.sock",
            "--malloc",
            "64M",
            "--num-queues",
            "2",
            "--cpus",
            "0",
        ],
        &["vhost.sock"],
    );
    let sock = target.socket_named("vhost.sock");
    let mut clients: Vec<Client> = (0..4)
        .map(|i| {
            Client::connect(&sock, ClientConfig::default())
                .unwrap_or_else(|e| panic!("session {i}: {e}"))
        })
        .collect();
    // Every session does verified I/O on its own region, interleaved with the others.
    for round in 0..3u64 {
        for (i, c) in clients.iter_mut().enumerate() {
            let off = (i as u64) << 24 | round << 12;
            let data = pattern(round * 10 + i as u64, 4096);
            c.queue(0).write_ok(off, &data);
            assert_bytes_eq(&c.queue(0).read_ok(off, 4096), &data, "own region");
        }
    }
    // Each session sees the others' writes (one disk).
    let seen = clients[3].queue(0).read_ok(0, 4096);
    assert_bytes_eq(
        &seen,
        &pattern(0, 4096),
        "session 0's first write, read by session 3",
    );
    // A fifth connection is closed at once: it reads EOF instead of an answer.
    let fifth = UnixStream::connect(&sock).expect("the socket still accepts");
    fifth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut b = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut &fifth, &mut b), Ok(0)),
        "the fifth session is refused"
    );
    assert!(
        Client::connect(&sock, ClientConfig::default()).is_err(),
        "a fifth libblkio client cannot start"
    );
    // The four are unaffected.
    for (i, c) in clients.iter_mut().enumerate() {
        c.queue(0).write_ok(48 << 20, &pattern(99, 512));
        assert_eq!(c.queue(0).read(0, 512).0, 0, "session {i} still served");
    }
    // A freed slot is usable again.
    drop(clients.pop());
    let mut again = None;
    for _ in 0..100 {
        match Client::connect(&sock, ClientConfig::default()) {
            Ok(c) => {
                again = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut again = again.expect("a session slot freed by a disconnect is reused");
    assert_eq!(again.queue(0).read(0, 4096).0, 0);
}

/// A reconnecting frontend may have lost the interrupt for requests the previous target
/// completed just before it stopped (`vm-test.sh --restart term` saw a guest wait 30 s on 22
/// writes with the new target idle); like libvhost-user, the target writes every new call fd
/// once, so the driver looks at its used ring.
#[test]
fn every_new_call_fd_is_signalled_once() {
    // Busy polling: the raw frontend never kicks.
    let mut target = Target::start_args(
        &[
            "--socket",
            "{dir}/vhost.sock",
            "--malloc",
            "16M",
            "--num-queues",
            "2",
            "--cpus",
            "0",
            "--poll-mode",
            "busy",
        ],
        &["vhost.sock"],
    );
    let sock = target.socket_named("vhost.sock");
    let mut fe = Frontend::ready(&sock, 1 << 20, &[(0, 64), (1, 64)]).expect("frontend setup");
    for q in 0..2u16 {
        let call = fe.queue(q).call.as_raw_fd();
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a valid u64 from our own non-blocking eventfd.
        let n = unsafe { libc::read(call, (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, 8, "queue {q}: the call fd was not signalled");
        assert!(v >= 1, "queue {q}: counter {v}");
    }
    // The queues still work afterwards.
    let data = pattern(7, 4096);
    let w = fe.write(0, 8, &data);
    assert_eq!(w.status(), Some(0), "write: {}", w.describe());
    let (outcome, back) = fe.read(1, 8, 4096);
    assert_eq!(outcome.status(), Some(0));
    assert_bytes_eq(&back, &data, "read back");
    target.assert_running();
}
