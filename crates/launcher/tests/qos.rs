//! Per-bdev QoS limits set with SPDK's own client (`spdk-rpc bdev_set_qos_limit`), measured by a
//! libblkio client keeping 32 requests in flight per queue: an IOPS limit and a bandwidth limit
//! hold within 10 % on one reactor and on two (one controller with two queues on cores 0-1),
//! removing the limit gives the full speed back, a limited bdev does not slow another one on
//! the same reactor, throttled requests show as in flight, the limits survive save_config and a
//! restart with --json, and limits given with --bdev hold from the start.
//!
//! The machine these run on may be loaded: each measurement records how long the client and the
//! target's reactors were runnable but not running, and one that was clearly starved is
//! repeated once. Every figure is printed (and appended to target/figures/qos.txt).

mod life_common;
mod rpc_common;

use std::time::Duration;

use life_common::{cores, measure_checked, record, run, Load, Measured};
use rpc_common::SpdkRpc;
use serde_json::Value;
use spinblk_testkit::{Target, TempDir};

/// spinblk with an RPC socket and no disks on `cpus`.
fn qos_target(cpus: &str) -> (Target, SpdkRpc) {
    let target = Target::start_args(
        &["-r", "{dir}/rpc.sock", "-S", "{dir}", "--cpus", cpus],
        &["rpc.sock"],
    );
    let rpc = SpdkRpc::new(&target.socket_named("rpc.sock"));
    (target, rpc)
}

/// A 1 GiB null bdev `bdev` and a controller `ctrlr` on it with `queues` queues on `cpumask`.
fn null_disk(rpc: &SpdkRpc, bdev: &str, ctrlr: &str, cpumask: &str) {
    rpc.ok(&["bdev_null_create", bdev, "1024", "512"]);
    rpc.ok(&[
        "vhost_create_blk_controller",
        "--cpumask",
        cpumask,
        ctrlr,
        bdev,
    ]);
}

fn limits(rpc: &SpdkRpc, bdev: &str) -> Value {
    rpc.json(&["bdev_get_bdevs", "-b", bdev])[0]["assigned_rate_limits"].clone()
}

fn within(m: &Measured, want: f64, value: f64) -> bool {
    (value - want).abs() <= 0.10 * want && m.errors == 0
}

/// The client's core: the last one when the machine has one to spare beyond the reactors'.
fn client_cpu(reactor_cores: usize) -> Option<usize> {
    (cores() > reactor_cores).then(|| cores() - 1)
}

/// The accuracy checks on a target whose controller `vq` serves null bdev `n0` with `queues`
/// client queues: 20000 IOPS (4 KiB), 50 MiB/s (64 KiB), then no limit.
fn accuracy(label: &str, target: &Target, rpc: &SpdkRpc, queues: usize, cpu: Option<usize>) {
    let sock = target.socket_named("vq");
    let pid = target.pid();
    let load = |block: usize| Load {
        queues,
        cpu,
        ..Load::reads(block, 32, 5.0)
    };

    // 20000 IOPS, 4 KiB reads at QD32.
    rpc.ok(&["bdev_set_qos_limit", "n0", "--rw-ios-per-sec", "20000"]);
    assert_eq!(limits(rpc, "n0")["rw_ios_per_sec"], 20000);
    let m = measure_checked(
        &format!("{label}: 20000 IOPS limit, 4 KiB QD32"),
        &sock,
        pid,
        load(4096),
        |m| within(m, 20_000.0, m.iops),
    );
    record(
        "qos.txt",
        &format!("{label} rw_ios_per_sec=20000: {}", m.line()),
    );
    assert!(
        within(&m, 20_000.0, m.iops),
        "{label}: {:.0} IOPS against a 20000 IOPS limit (more than 10 % off)",
        m.iops
    );

    // 50 MiB/s, 64 KiB reads at QD32 (the IOPS limit removed in the same call).
    rpc.ok(&[
        "bdev_set_qos_limit",
        "n0",
        "--rw-ios-per-sec",
        "0",
        "--rw-mbytes-per-sec",
        "50",
    ]);
    let l = limits(rpc, "n0");
    assert_eq!(
        (
            l["rw_ios_per_sec"].as_u64(),
            l["rw_mbytes_per_sec"].as_u64()
        ),
        (Some(0), Some(50))
    );
    let m = measure_checked(
        &format!("{label}: 50 MiB/s limit, 64 KiB QD32"),
        &sock,
        pid,
        load(64 << 10),
        |m| within(m, 50.0, m.mib_s),
    );
    record(
        "qos.txt",
        &format!("{label} rw_mbytes_per_sec=50: {}", m.line()),
    );
    assert!(
        within(&m, 50.0, m.mib_s),
        "{label}: {:.1} MiB/s against a 50 MiB/s limit (more than 10 % off)",
        m.mib_s
    );

    // No limit: full speed again, well above the old limits.
    rpc.ok(&["bdev_set_qos_limit", "n0", "--rw-mbytes-per-sec", "0"]);
    let l = limits(rpc, "n0");
    assert!(
        [
            "rw_ios_per_sec",
            "rw_mbytes_per_sec",
            "r_mbytes_per_sec",
            "w_mbytes_per_sec"
        ]
        .iter()
        .all(|k| l[k] == 0),
        "every limit removed: {l}"
    );
    let m = measure_checked(
        &format!("{label}: no limit, 4 KiB QD32"),
        &sock,
        pid,
        load(4096),
        |m| m.iops >= 40_000.0,
    );
    record("qos.txt", &format!("{label} no limit: {}", m.line()));
    assert!(
        m.iops >= 40_000.0 && m.errors == 0,
        "{label}: {:.0} IOPS with the limit removed (expected at least twice the old 20000 limit)",
        m.iops
    );
}

#[test]
fn limits_hold_on_one_reactor() {
    let (target, rpc) = qos_target("0");
    null_disk(&rpc, "n0", "vq", "0x1");
    accuracy("1 reactor", &target, &rpc, 1, client_cpu(1));
}

#[test]
fn limits_hold_across_two_reactors() {
    if cores() < 2 {
        panic!(
            "this test needs two cores for two reactors; the machine has {}",
            cores()
        );
    }
    let (target, rpc) = qos_target("0-1");
    null_disk(&rpc, "n0", "vq", "0x3");
    let c = rpc.json(&["vhost_get_controllers", "-n", "vq"]);
    assert_eq!(
        c[0]["backend_specific"]["spinblk"]["queue_cpus"],
        serde_json::json!([0, 1]),
        "the controller's queues alternate between cores 0 and 1"
    );
    // Two client queues: queue 0 on reactor 0, queue 1 on reactor 1, one limit for both.
    accuracy("2 reactors", &target, &rpc, 2, client_cpu(2));
    // Both reactors carried I/O (the limit was shared, not served by one of them).
    let io = rpc.json(&["bdev_get_iostat", "-c", "--names", "n0"]);
    let busy: Vec<u64> = io["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| c["num_read_ops"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        busy.len() == 2 && busy.iter().all(|&n| n > 10_000),
        "reads per channel (queue): {busy:?}"
    );
}

#[test]
fn a_limited_bdev_does_not_slow_another_on_the_same_reactor() {
    let (target, rpc) = qos_target("0");
    null_disk(&rpc, "na", "va", "0x1");
    null_disk(&rpc, "nb", "vb", "0x1");
    let (sa, sb) = (target.socket_named("va"), target.socket_named("vb"));
    let pid = target.pid();
    let cpu = client_cpu(1);
    let load = Load {
        cpu,
        ..Load::reads(4096, 32, 5.0)
    };
    rpc.ok(&["bdev_set_qos_limit", "na", "--rw-ios-per-sec", "5000"]);
    let attempt = || {
        let alone = run(&sb, pid, load);
        println!("nb alone (na idle, limited to 5000 IOPS): {}", alone.line());
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| run(&sa, pid, load));
            let b = s.spawn(|| run(&sb, pid, load));
            (a.join().expect("na"), b.join().expect("nb"))
        });
        println!("na (5000 IOPS limit) while nb runs: {}", a.line());
        println!("nb (no limit) while na runs: {}", b.line());
        (alone, a, b)
    };
    let ok = |alone: &Measured, a: &Measured, b: &Measured| {
        within(a, 5000.0, a.iops) && b.iops >= 0.6 * alone.iops && b.iops >= 4.0 * 5000.0
    };
    let (mut alone, mut a, mut b) = attempt();
    if !ok(&alone, &a, &b) {
        // A starved client, or this machine's speed flipping (up to 3x) between the "alone"
        // and the "beside" measurement (clean-clone CI once had nb alone at 575K IOPS and
        // beside na at 341K, where runs before and after measured 89-96%): measure once more.
        println!("a failed attempt (starved, or the machine's speed changed); measuring once more");
        (alone, a, b) = attempt();
    }
    record(
        "qos.txt",
        &format!(
            "isolation, 1 reactor: na limited to 5000 IOPS: {}; nb alone {:.0} IOPS, nb beside na {:.0} IOPS ({:.0} %)",
            a.line(),
            alone.iops,
            b.iops,
            100.0 * b.iops / alone.iops.max(1.0)
        ),
    );
    assert!(
        within(&a, 5000.0, a.iops),
        "the limited bdev ran at {:.0} IOPS against 5000",
        a.iops
    );
    assert!(
        b.iops >= 0.6 * alone.iops && b.iops >= 20_000.0 && b.errors == 0,
        "the unlimited bdev on the same reactor slowed from {:.0} to {:.0} IOPS beside the limited one",
        alone.iops,
        b.iops
    );
}

#[test]
fn throttled_requests_count_as_in_flight() {
    let (target, rpc) = qos_target("0");
    null_disk(&rpc, "n0", "vq", "0x1");
    // SPDK's smallest IOPS limit: a QD32 client keeps requests waiting in the queue's backlog.
    rpc.ok(&["bdev_set_qos_limit", "n0", "--rw-ios-per-sec", "1000"]);
    let sock = target.socket_named("vq");
    let pid = target.pid();
    let seen = std::thread::scope(|s| {
        let load = s.spawn(|| run(&sock, pid, Load::reads(4096, 32, 3.0)));
        std::thread::sleep(Duration::from_millis(2000));
        let c = rpc.json(&["vhost_get_controllers", "-n", "vq"]);
        let m = load.join().expect("load");
        println!("1000 IOPS limit: {}", m.line());
        c
    });
    let sessions = seen[0]["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{seen}");
    let n = sessions[0]["inflight_task_cnt"].as_u64().expect("count");
    println!("inflight_task_cnt under a 1000 IOPS limit at QD32: {n}");
    assert!(
        (16..=32).contains(&n),
        "a QD32 client held back by the limit has most of its 32 requests in flight, not {n}"
    );
    assert_eq!(
        seen[0]["backend_specific"]["spinblk"]["inflight_task_cnt"].as_u64(),
        Some(n)
    );
}

#[test]
fn limits_survive_save_config_and_a_restart_with_json() {
    let (mut target, rpc) = qos_target("0");
    null_disk(&rpc, "n0", "vq", "0x1");
    rpc.ok(&["bdev_null_create", "n1", "64", "4096"]);
    rpc.ok(&[
        "bdev_set_qos_limit",
        "n0",
        "--rw-ios-per-sec",
        "10500",
        "--w-mbytes-per-sec",
        "20",
    ]);
    rpc.ok(&["bdev_set_qos_limit", "n1", "--r-mbytes-per-sec", "7"]);
    // SPDK rounds an IOPS limit up to a multiple of 1000.
    let before_n0 = limits(&rpc, "n0");
    assert_eq!(before_n0["rw_ios_per_sec"], 11000);
    assert_eq!(before_n0["w_mbytes_per_sec"], 20);
    let before_n1 = limits(&rpc, "n1");
    let saved = rpc.ok(&["save_config"]);
    let doc: Value = serde_json::from_str(&saved).expect("save_config prints JSON");
    let bdev_cfg = doc["subsystems"]
        .as_array()
        .expect("subsystems")
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .expect("bdev subsystem")["config"]
        .clone();
    let qos: Vec<&Value> = bdev_cfg
        .as_array()
        .expect("config")
        .iter()
        .filter(|e| e["method"] == "bdev_set_qos_limit")
        .collect();
    assert_eq!(
        qos.len(),
        2,
        "one bdev_set_qos_limit per limited bdev: {bdev_cfg}"
    );
    assert_eq!(
        qos[0]["params"],
        serde_json::json!({"name": "n0", "rw_ios_per_sec": 11000, "w_mbytes_per_sec": 20}),
        "only the limits that are set, as SPDK writes them"
    );
    let keep = TempDir::new("qos-saved-config");
    let file = keep.path().join("saved.json");
    std::fs::write(&file, &saved).expect("write config");
    let (status, _) = target.stop_with(libc::SIGTERM);
    assert_eq!(status, Some(0));
    drop(target);

    let target = Target::start_args(
        &[
            "--json",
            file.to_str().expect("path"),
            "-r",
            "{dir}/rpc.sock",
            "-S",
            "{dir}",
            "--cpus",
            "0",
        ],
        &["rpc.sock", "vq"],
    );
    let rpc = SpdkRpc::new(&target.socket_named("rpc.sock"));
    assert_eq!(
        limits(&rpc, "n0"),
        before_n0,
        "n0's limits after the restart"
    );
    assert_eq!(
        limits(&rpc, "n1"),
        before_n1,
        "n1's limits after the restart"
    );
    // And they are enforced, not just reported.
    let sock = target.socket_named("vq");
    let m = measure_checked(
        "after restart with --json: 11000 IOPS limit, 4 KiB QD32",
        &sock,
        target.pid(),
        Load {
            cpu: client_cpu(1),
            ..Load::reads(4096, 32, 3.0)
        },
        |m| within(m, 11_000.0, m.iops),
    );
    record(
        "qos.txt",
        &format!(
            "after save_config + --json restart, rw_ios_per_sec=11000: {}",
            m.line()
        ),
    );
    assert!(
        within(&m, 11_000.0, m.iops),
        "{:.0} IOPS against the restored 11000 IOPS limit",
        m.iops
    );
}

#[test]
fn limits_from_the_command_line_hold_from_the_start() {
    // --bdev keys, as --config takes them too; SPDK's rounding applies (7500 -> 8000).
    let target = Target::start_args(
        &[
            "-r",
            "{dir}/rpc.sock",
            "--cpus",
            "0",
            "--bdev",
            "name=n0,null=1G,rw-ios-per-sec=7500",
            "--controller",
            "name=vq,socket={dir}/vq,bdev=n0",
        ],
        &["rpc.sock", "vq"],
    );
    let rpc = SpdkRpc::new(&target.socket_named("rpc.sock"));
    assert_eq!(limits(&rpc, "n0")["rw_ios_per_sec"], 8000);
    let m = measure_checked(
        "--bdev rw-ios-per-sec=7500 (8000 after rounding), 4 KiB QD32",
        &target.socket_named("vq"),
        target.pid(),
        Load {
            cpu: client_cpu(1),
            ..Load::reads(4096, 32, 3.0)
        },
        |m| within(m, 8000.0, m.iops),
    );
    record(
        "qos.txt",
        &format!("--bdev rw-ios-per-sec=7500 (8000): {}", m.line()),
    );
    assert!(
        within(&m, 8000.0, m.iops),
        "{:.0} IOPS against the 8000 IOPS limit given on the command line",
        m.iops
    );
}
