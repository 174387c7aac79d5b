//! Churn: 100 create/delete cycles of a controller over JSON-RPC, a client connecting to each
//! (half of them still connected when the controller is deleted), while a second controller on
//! the same reactor serves a verifying client that must see no error and no stall; afterwards
//! the process has no more fds, threads or mappings than before the cycles. Prints the figures.

mod rpc_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_common::RawRpc;
use serde_json::json;
use spinblk_testkit::{assert_bytes_eq, pattern, Client, ClientConfig, ProcessFootprint, Target};

const CYCLES: usize = 100;
const WARM_UP: usize = 10;

/// One create / connect / I/O / delete cycle; returns (create, delete) durations.
fn cycle(rpc: &mut RawRpc, target: &Target, i: usize) -> (Duration, Duration) {
    let t0 = Instant::now();
    rpc.ok(
        "vhost_create_blk_controller",
        Some(json!({"ctrlr": "churn", "dev_name": "n0"})),
    );
    let create = t0.elapsed();
    let mut c = Client::connect(&target.socket_named("churn"), ClientConfig::default())
        .unwrap_or_else(|e| panic!("cycle {i}: connect: {e}"));
    c.queue(0)
        .write_ok(4096 * i as u64, &pattern(i as u64, 4096));
    assert_eq!(
        c.queue(0).read(4096 * i as u64, 4096).0,
        0,
        "cycle {i}: read"
    );
    // Half the clients are still connected when their controller goes.
    let connected = if i.is_multiple_of(2) {
        Some(c)
    } else {
        drop(c);
        None
    };
    let t1 = Instant::now();
    rpc.ok("vhost_delete_controller", Some(json!({"ctrlr": "churn"})));
    let delete = t1.elapsed();
    drop(connected);
    assert!(
        !target.socket_named("churn").exists(),
        "cycle {i}: socket removed"
    );
    (create, delete)
}

fn settled(pid: u32, like: Option<ProcessFootprint>) -> ProcessFootprint {
    // Connections are torn down after the clients have gone: wait until nothing changes for
    // half a second (or until it equals `like`).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = ProcessFootprint::of(pid);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = ProcessFootprint::of(pid);
        if Some(now) == like {
            return now;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(500) && like.is_none() {
            return now;
        }
        if Instant::now() >= deadline {
            return now;
        }
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn hundred_controller_create_delete_cycles_leave_nothing_behind_and_never_stall_a_neighbour() {
    let mut target = Target::start_args(
        &["-r", "{dir}/rpc.sock", "-S", "{dir}", "--cpus", "0"],
        &["rpc.sock"],
    );
    let pid = target.pid();
    let mut rpc = RawRpc::connect(&target.socket_named("rpc.sock"));
    rpc.ok(
        "bdev_null_create",
        Some(json!({"name": "n0", "num_blocks": 131072, "block_size": 512})),
    );
    rpc.ok(
        "bdev_malloc_create",
        Some(json!({"name": "m0", "num_blocks": 131072, "block_size": 512})),
    );
    rpc.ok(
        "vhost_create_blk_controller",
        Some(json!({"ctrlr": "keep", "dev_name": "m0"})),
    );

    // The neighbour: writes and verifies without pause for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let neighbour = {
        let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
        let sock = target.socket_named("keep");
        std::thread::spawn(move || -> Result<Duration, String> {
            let mut c = Client::connect(&sock, ClientConfig::default())
                .map_err(|e| format!("neighbour connect: {e}"))?;
            let mut q = c.queue(0);
            let mut slowest = Duration::ZERO;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let off = (n % 1024) * 8192;
                let data = pattern(1000 + n, 8192);
                let t = Instant::now();
                let w = q.write(off, &data);
                let (r, got) = q.read(off, 8192);
                slowest = slowest.max(t.elapsed());
                if w != 0 || r != 0 {
                    return Err(format!("neighbour request {n}: write {w}, read {r}"));
                }
                assert_bytes_eq(&got, &data, "neighbour read-back");
                n += 1;
                ops.store(n, Ordering::Relaxed);
            }
            Ok(slowest)
        })
    };

    for i in 0..WARM_UP {
        cycle(&mut rpc, &target, i);
    }
    let before = settled(pid, None);
    let (mut creates, mut deletes) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in WARM_UP..WARM_UP + CYCLES {
        let (c, d) = cycle(&mut rpc, &target, i);
        creates.push(c);
        deletes.push(d);
    }
    let elapsed = started.elapsed();
    let after = settled(pid, Some(before));
    stop.store(true, Ordering::Relaxed);
    let slowest = neighbour
        .join()
        .expect("neighbour thread")
        .unwrap_or_else(|e| panic!("{e}"));
    let neighbour_ops = ops.load(Ordering::Relaxed);
    target.assert_running();
    let (max_c, max_d) = (
        creates.iter().max().copied().unwrap_or_default(),
        deletes.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "CHURN-FIGURE {CYCLES} cycles in {:.1} s: create median {:?} max {:?}, delete median {:?} max {:?}; \
         neighbour {neighbour_ops} verified write+read pairs, slowest pair {slowest:?}; \
         footprint before {before:?} after {after:?}",
        elapsed.as_secs_f64(),
        median(&mut creates),
        max_c,
        median(&mut deletes),
        max_d,
    );
    assert_eq!(
        before, after,
        "(fds, mappings, threads) after {CYCLES} cycles equal the baseline"
    );
    assert!(neighbour_ops > 0, "the neighbour made progress");
    // "No stall": every neighbour request completed, none took seconds.
    assert!(
        slowest < Duration::from_secs(2),
        "the neighbour's slowest write+read took {slowest:?}"
    );
    assert!(max_d < Duration::from_secs(5), "a delete took {max_d:?}");
    // Its statistics kept counting through the churn.
    let st = rpc.ok("bdev_get_iostat", Some(json!({"names": ["m0"]})));
    assert!(st["bdevs"][0]["num_write_ops"].as_u64() >= Some(neighbour_ops));
    let churn = rpc.ok("bdev_get_iostat", Some(json!({"names": ["n0"]})));
    assert_eq!(
        churn["bdevs"][0]["num_write_ops"].as_u64(),
        Some((WARM_UP + CYCLES) as u64),
        "every deleted controller's counts stay with its bdev"
    );
}
