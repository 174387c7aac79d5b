//! spinblk as a service: systemd readiness (READY=1 on $NOTIFY_SOCKET once the RPC socket and
//! every configured controller listen, STOPPING=1 at shutdown), exit codes a supervisor can act
//! on (0 after a drained SIGTERM, 1 on a runtime failure, 2 on a bad configuration), and
//! owner-only socket permissions by default.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use spinblk_testkit::{spinblk_bin, Target, TempDir};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn ready_is_sent_once_everything_listens_and_stopping_at_sigterm() {
    let notify_dir = TempDir::new("notify");
    let notify = notify_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut target = Target::launch()
        .args([
            "-r",
            "{dir}/rpc.sock",
            "-S",
            "{dir}",
            "--cpus",
            "0",
            "--bdev",
            "name=m0,malloc=16M",
            "--controller",
            "name=vm0,bdev=m0",
            "--controller",
            "name=vm1,bdev=m1",
            "--bdev",
            "name=m1,malloc=16M",
        ])
        .env("NOTIFY_SOCKET", &notify)
        .wait_path("rpc.sock")
        .start();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY datagram");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", target.pid())), "{msg}");
    // Everything listens by the time READY is sent.
    for s in ["rpc.sock", "vm0", "vm1"] {
        let p = target.socket_named(s);
        assert!(p.exists(), "{} at READY", p.display());
        assert_eq!(mode(&p), 0o600, "{s} is owner-only by default");
    }
    let (code, _) = target.stop_with(libc::SIGTERM);
    assert_eq!(code, Some(0), "drained SIGTERM exits 0");
    let n = sock.recv(&mut buf).expect("STOPPING datagram");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

#[test]
fn socket_mode_and_group_apply_to_controller_sockets() {
    // The process's own primary group: always one it may give its files.
    // SAFETY: getgid(2) has no preconditions.
    let gid = unsafe { libc::getgid() };
    let mut target = Target::launch()
        .args([
            "-r",
            "{dir}/rpc.sock",
            "-S",
            "{dir}",
            "--cpus",
            "0",
            "--malloc",
            "8M",
            "--socket",
            "{dir}/vhost.sock",
            "--socket-mode",
            "0660",
        ])
        .arg("--socket-group")
        .arg(gid.to_string())
        .wait_socket("vhost.sock")
        .wait_path("rpc.sock")
        .start();
    let p = target.socket_named("vhost.sock");
    assert_eq!(mode(&p), 0o660);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&p).expect("stat").gid(), gid);
    // The RPC socket stays owner-only whatever the controller sockets get.
    assert_eq!(mode(&target.socket_named("rpc.sock")), 0o600);
    let (code, _) = target.stop_with(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(!p.exists(), "sockets are removed at exit");
}

/// Runs spinblk with `args` (in `dir`) to completion; returns its exit code and output.
fn run_to_exit(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(spinblk_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run spinblk");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn bad_configurations_exit_2_and_runtime_failures_exit_1() {
    let dir = TempDir::new("exitcodes");
    let d = dir.path();
    let p = |name: &str| d.join(name).display().to_string();
    std::fs::write(d.join("bad.json"), "{ not json").expect("write");
    std::fs::write(
        d.join("unknown.json"),
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_lvol_create","params":{}}]}]}"#,
    )
    .expect("write");
    std::fs::write(
        d.join("badparams.json"),
        r#"{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_null_create","params":{"name":"n","block_size":512}}]}]}"#,
    )
    .expect("write");
    std::fs::write(
        d.join("nobdev.json"),
        r#"{"bdevs":[],"controllers":[{"name":"c","bdev":"missing"}]}"#,
    )
    .expect("write");
    let rpc = p("rpc.sock");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--json".into(), p("missing.json")], "cannot read"),
        (vec!["--json".into(), p("bad.json")], "bad.json"),
        (vec!["--json".into(), p("unknown.json")], "not supported"),
        (vec!["--json".into(), p("badparams.json")], "num_blocks"),
        (vec!["--config".into(), p("nobdev.json")], "no bdev named"),
        (vec!["-m".into(), "0x0".into()], "cpumask"),
        (vec!["--socket-mode".into(), "0666".into()], "0666"),
        (vec!["--poll-mode".into(), "lazy".into()], "lazy"),
        (
            vec![
                "--bdev".into(),
                "name=f,file=/nonexistent/x.img".into(),
                "--controller".into(),
                "bdev=f".into(),
            ],
            "nonexistent",
        ),
    ];
    for (args, what) in cases {
        let mut all: Vec<&str> = vec!["-r", &rpc, "-S", d.to_str().expect("dir"), "--cpus", "0"];
        all.extend(args.iter().map(String::as_str));
        let (code, out) = run_to_exit(d, &all);
        assert_eq!(code, Some(2), "{args:?} exits 2:\n{out}");
        assert!(out.contains(what), "{args:?} says why ({what}):\n{out}");
        assert!(!d.join("rpc.sock").exists(), "{args:?} leaves no socket");
    }
    // The RPC socket is held by another live spinblk: a runtime failure.
    let mut first = Target::start_args(&["-r", "{dir}/rpc.sock", "--cpus", "0"], &["rpc.sock"]);
    let taken = first.socket_named("rpc.sock");
    let (code, out) = run_to_exit(d, &["-r", taken.to_str().expect("path"), "--cpus", "0"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("in use"), "{out}");
    first.assert_running();
    assert!(taken.exists(), "the first one's socket is left alone");
    let (code, _) = first.stop_with(libc::SIGTERM);
    assert_eq!(code, Some(0));
}
