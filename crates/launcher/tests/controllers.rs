//! Multi-queue, multi-reactor and multi-controller behaviour of the real target, driven by
//! libblkio clients: queues spread over reactors, exact per-queue statistics, several
//! controllers in one process, bdev sharing rules, SIGUSR1 and SIGTERM.

use std::collections::HashMap;
use std::time::Duration;

use spinblk_testkit::*;

/// `key=value` fields of the stats row that starts with `prefix`.
fn stats_row(output: &str, prefix: &str) -> HashMap<String, String> {
    let line = output
        .lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no stats row '{prefix}' in:\n{output}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(row: &HashMap<String, String>, key: &str) -> u64 {
    row.get(key)
        .unwrap_or_else(|| panic!("no field {key} in {row:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("field {key} is not a number: {row:?}"))
}

#[test]
fn four_queues_on_two_reactors_verify_and_count_exactly() {
    const QUEUES: usize = 4;
    let mut target = Target::start_args(
        &[
            "--socket",
            "{dir}/vhost.sock",
            "--malloc",
            "64M",
            "--cpus",
            "0-1",
            "--num-queues",
            "4",
        ],
        &["vhost.sock"],
    );
    let mut client = target.connect_with(ClientConfig {
        num_queues: QUEUES as i32,
        ..ClientConfig::default()
    });
    // Queue q writes `writes[q]` requests of (q + 1) * 4 KiB into its own 8 MiB region, then
    // reads each back once; every byte is checked.
    let writes = [40usize, 30, 20, 10];
    std::thread::scope(|s| {
        for mut q in client.queues() {
            let n = writes[q.index];
            s.spawn(move || {
                let len = (q.index + 1) * 4096;
                let base = q.index as u64 * 8 * MIB;
                for k in 0..n {
                    let off = base + (k * len) as u64;
                    q.write_ok(off, &pattern((q.index * 1000 + k) as u64, len));
                }
                for k in 0..n {
                    let off = base + (k * len) as u64;
                    let got = q.read_ok(off, len);
                    assert!(
                        got == pattern((q.index * 1000 + k) as u64, len),
                        "queue {} chunk {k} differs",
                        q.index
                    );
                }
            });
        }
    });
    drop(client);

    let (code, out) = target.stop_with(libc::SIGTERM);
    assert_eq!(code, Some(0), "SIGTERM must end in a clean exit\n{out}");
    let mut total_ops = 0;
    for (q, &n) in writes.iter().enumerate() {
        let row = stats_row(&out, &format!("stats controller=vhost0 queue={q}"));
        let len = ((q + 1) * 4096) as u64;
        assert_eq!(field(&row, "write_ops"), n as u64, "queue {q}: {row:?}");
        assert_eq!(field(&row, "write_bytes"), n as u64 * len, "queue {q}");
        assert_eq!(field(&row, "read_ops"), n as u64, "queue {q}");
        assert_eq!(field(&row, "read_bytes"), n as u64 * len, "queue {q}");
        assert_eq!(field(&row, "io_errors"), 0);
        assert_eq!(
            field(&row, "reactor"),
            (q % 2) as u64,
            "queues round-robin over reactors"
        );
        assert!(field(&row, "lat_p50_ns") > 0, "latency recorded");
        total_ops += 2 * n as u64;
    }
    let total = stats_row(&out, "stats controller=vhost0 queue=total");
    assert_eq!(
        field(&total, "read_ops") + field(&total, "write_ops"),
        total_ops
    );
    for r in 0..2 {
        let row = stats_row(&out, &format!("stats reactor={r}"));
        assert_eq!(field(&row, "cpu"), r as u64);
        assert!(field(&row, "busy_ms") + field(&row, "idle_ms") > 0);
    }
}

#[test]
fn two_controllers_are_served_at_once_and_independently() {
    let mut target = Target::start_args(
        &[
            "--bdev",
            "name=m0,malloc=32M",
            "--bdev",
            "name=m1,malloc=32M,block-size=4096",
            "--controller",
            "socket={dir}/a.sock,bdev=m0,num-queues=2",
            "--controller",
            "name=second,socket={dir}/b.sock,bdev=m1",
            "--cpus",
            "0",
        ],
        &["a.sock", "b.sock"],
    );
    let a_sock = target.socket_named("a.sock");
    let b_sock = target.socket_named("b.sock");
    let mut a = Client::connect(&a_sock, ClientConfig::default()).expect("connect a");
    let mut b = Client::connect(&b_sock, ClientConfig::default()).expect("connect b");
    assert_eq!(a.capacity(), 32 * MIB);
    assert_eq!(b.capacity(), 32 * MIB);
    a.queue(0).write_ok(0, &pattern(1, 64 << 10));
    b.queue(0).write_ok(0, &pattern(2, 64 << 10));
    assert!(
        a.queue(0).read_ok(0, 64 << 10) == pattern(1, 64 << 10),
        "a keeps its own data"
    );
    assert!(
        b.queue(0).read_ok(0, 64 << 10) == pattern(2, 64 << 10),
        "b keeps its own data"
    );

    // B runs I/O continuously while A disconnects and reconnects.
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let mut q = b.queue(0);
            for k in 0..300u64 {
                let off = (k % 64) * 65536 + MIB;
                let data = pattern(100 + k, 16 << 10);
                q.write_ok(off, &data);
                assert!(q.read_ok(off, 16 << 10) == data, "b's I/O disturbed at {k}");
            }
        });
        drop(a);
        let mut again = Client::connect(&a_sock, ClientConfig::default()).expect("reconnect a");
        assert!(
            again.queue(0).read_ok(0, 64 << 10) == pattern(1, 64 << 10),
            "a's data survives reconnect"
        );
        worker.join().expect("b worker");
    });
    target.assert_running();
    let out = target.dump_stats(Duration::from_millis(500));
    assert!(
        out.contains("stats controller=vhost0 queue=total"),
        "SIGUSR1 dumps every controller:\n{out}"
    );
    assert!(
        out.contains("stats controller=second queue=total"),
        "SIGUSR1 dumps every controller:\n{out}"
    );
    let b_row = stats_row(&out, "stats controller=second queue=0");
    assert_eq!(field(&b_row, "write_ops"), 301);
    assert_eq!(field(&b_row, "read_ops"), 301);
    let (code, _) = target.stop_with(libc::SIGINT);
    assert_eq!(code, Some(0));
}

#[test]
fn json_config_file_serves_its_controllers() {
    let dir = TempDir::new("cfg");
    let cfg = dir.path().join("spinblk.json");
    let text = format!(
        r#"{{"cpus": "0", "bdevs": [{{"name": "n0", "type": "null", "size": "16M"}}],
            "controllers": [{{"name": "ro0", "socket": "{d}/x.sock", "bdev": "n0", "readonly": true}},
                            {{"name": "ro1", "socket": "{d}/y.sock", "bdev": "n0", "readonly": true}}]}}"#,
        d = dir.path().display()
    );
    std::fs::write(&cfg, text).expect("write config");
    let cfg_arg = cfg.display().to_string();
    // The config puts its sockets in `dir`, not the target's own directory.
    let mut target = Target::launch()
        .args(["--config", &cfg_arg])
        .wait_socket(dir.path().join("x.sock"))
        .wait_socket(dir.path().join("y.sock"))
        .start();
    for name in ["x.sock", "y.sock"] {
        let c = Client::connect(
            &dir.path().join(name),
            ClientConfig {
                read_only: true,
                ..ClientConfig::default()
            },
        )
        .expect("read-only client connects");
        assert_eq!(c.capacity(), 16 * MIB);
    }
    let (code, _) = target.stop_with(libc::SIGTERM);
    assert_eq!(code, Some(0));
}

#[test]
fn two_writable_controllers_on_one_bdev_are_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spinblk"))
        .args([
            "--bdev",
            "name=m0,malloc=8M",
            "--controller",
            "socket=/tmp/spinblk-refused-a.sock,bdev=m0",
            "--controller",
            "socket=/tmp/spinblk-refused-b.sock,bdev=m0",
        ])
        .output()
        .expect("run spinblk");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readonly") && err.lines().count() == 1,
        "one-line reason: {err}"
    );
}

#[test]
fn stats_interval_prints_a_line_per_controller() {
    let mut target = Target::start_args(
        &[
            "--socket",
            "{dir}/vhost.sock",
            "--malloc",
            "16M",
            "--stats-interval",
            "1",
        ],
        &["vhost.sock"],
    );
    let mut client = target.connect();
    for k in 0..50u64 {
        client.queue(0).write_ok(k * 4096, &pattern(k, 4096));
    }
    std::thread::sleep(Duration::from_millis(2300));
    let (code, out) = target.stop_with(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("stats vhost0: "))
        .collect();
    assert!(lines.len() >= 2, "one line a second:\n{out}");
    assert!(
        lines.iter().any(|l| !l.starts_with("stats vhost0: 0 IOPS")),
        "the writes show up:\n{out}"
    );
    assert!(lines
        .iter()
        .all(|l| l.contains("IOPS") && l.contains("MiB/s") && l.contains("p99")));
}

/// Samples the target's footprint every 50 ms until it has been the same for `settle`
/// (`Ok`), or until `deadline` passes (`Err` with the last sample). Replaces fixed sleeps: a
/// slow machine gets more time, a fast one finishes early.
fn settled_footprint(
    target: &Target,
    settle: Duration,
    deadline: Duration,
) -> Result<ProcessFootprint, ProcessFootprint> {
    let end = std::time::Instant::now() + deadline;
    let mut last = target.footprint();
    let mut since = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = target.footprint();
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        } else if since.elapsed() >= settle {
            return Ok(now);
        }
        if std::time::Instant::now() >= end {
            return Err(now);
        }
    }
}

/// Waits (up to 20 s, then panics) until the target runs `threads` threads: a session's
/// thread ends after its client has gone and its queues have stopped.
fn wait_for_threads(target: &Target, threads: usize) {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while target.footprint().threads != threads {
        assert!(
            std::time::Instant::now() < end,
            "the session's thread still runs 20 s after its client went: {:?}",
            target.footprint()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn disconnects_leave_no_fd_mapping_or_thread_behind() {
    let mut target = Target::start_args(
        &[
            "--socket",
            "{dir}/vhost.sock",
            "--malloc",
            "16M",
            "--num-queues",
            "2",
        ],
        &["vhost.sock"],
    );
    // A few connections first, so lazily created process state exists before the baseline:
    // each session runs on a thread of its own, and the C library keeps the stacks and malloc
    // arenas of threads that have exited for reuse (bounded caches, not leaks). Its stack cache
    // keeps one stack per session thread that was alive at once with another, so every
    // connection here waits for the session before it to end: otherwise a disconnect that
    // overlaps the next connect adds a cached 2 MiB stack (two lines of maps) by timing.
    let threads = settled_footprint(&target, Duration::from_millis(500), Duration::from_secs(20))
        .unwrap_or_else(|last| panic!("footprint never settled after the start: {last:?}"))
        .threads;
    for _ in 0..4 {
        drop(target.connect_with(ClientConfig {
            num_queues: 2,
            ..ClientConfig::default()
        }));
        wait_for_threads(&target, threads);
    }
    // The target tears a connection down after the client has gone: wait until nothing
    // changes for half a second before taking the baseline.
    let before = settled_footprint(&target, Duration::from_millis(500), Duration::from_secs(20))
        .unwrap_or_else(|last| panic!("footprint never settled after the warm-up: {last:?}"));
    // Listener + log fds, the binary and libc mapped, main + reactor + controller threads.
    assert!(
        before.fds >= 3 && before.mappings >= 10 && before.threads >= 3,
        "footprint readable: {before:?}"
    );
    let maps_before = ProcessFootprint::maps(target.pid());
    for round in 0..10u64 {
        let mut c = target.connect_with(ClientConfig {
            num_queues: 2,
            ..ClientConfig::default()
        });
        c.queue((round % 2) as usize)
            .write_ok(round * 4096, &pattern(round, 4096));
        // Half the clients go away with I/O still queued.
        if round % 2 == 0 {
            c.queue(0)
                .write_many_no_wait(&[(0, &[0u8; 4096][..]), (8192, &[1u8; 4096][..])]);
        }
        drop(c);
        wait_for_threads(&target, before.threads);
    }
    // Poll until the footprint is back to the baseline (or stops changing elsewhere).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut after = target.footprint();
    while after != before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = target.footprint();
    }
    target.assert_running();
    assert_eq!(
        before,
        after,
        "(fds, mappings, threads) before vs 20 s after 10 connections; maps:\n{}",
        maps_diff(&maps_before, &ProcessFootprint::maps(target.pid()))
    );
}
