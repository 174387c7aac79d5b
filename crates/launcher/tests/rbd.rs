//! spinblk serving Ceph RBD images, end to end: the real binary, libblkio clients, SPDK's rpc.py
//! and a real one-node Ceph cluster (scripts/ceph/cluster.sh, started once for every case).
//!
//! Cases, in order: an unreachable cluster at start (exit 2, one line); verified I/O through
//! spinblk on an image filled by `rbd import`, read out again by `rbd export` after SIGTERM (with
//! a SIGKILL negative control proving librbd's write-back cache was in play); flush, discard and
//! write-zeroes reaching the image; two images served at once over one rados connection (the
//! monitor's session list); the rpc.py 26.9 captures of every RBD method; save_config reloaded
//! with --json, bdev_rbd_resize and a resize by another client; the RPC server and another
//! controller going on while connects to an unreachable cluster wait; an idle RBD disk letting
//! its reactor sleep and waking it for I/O; and, last (it breaks the cluster), the OSD killed
//! under load: RBD requests fail with EIO within the op timeout while a malloc controller in the
//! same process is undisturbed, and SIGTERM reports the image it could not flush.
//!
//! Its own harness (one cluster for all cases): `test NAME ... ok|FAILED` lines. Without Ceph
//! installed the run FAILS, unless SPINBLK_SKIP_CEPH=1, which prints each case as skipped and
//! counts them. Arguments: substrings selecting cases.

#[path = "../../rbd/tests/support/mod.rs"]
mod ceph;
#[path = "rpc_common/mod.rs"]
mod rpc_common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ceph::Cluster;
use rpc_common::{RawRpc, SpdkRpc};
use serde_json::{json, Value};
use spinblk_testkit::{
    assert_bytes_eq, assert_zeroes, pattern, Client, ClientConfig, Rng, Target, TempDir, MIB,
};

const SIGTERM: i32 = libc::SIGTERM;
const SIGKILL: i32 = libc::SIGKILL;
/// virtio-blk IOERR as libblkio reports it.
const EIO: i32 = -libc::EIO;

struct Env {
    cluster: Cluster,
    /// The monitor's address (`v2:127.0.0.1:PORT`).
    mon: String,
}

impl Env {
    fn conf(&self) -> PathBuf {
        self.cluster.conf()
    }

    fn conf_str(&self) -> String {
        self.conf().display().to_string()
    }

    fn image(&self, name: &str, mib: u64) {
        self.cluster.create_image(name, mib);
    }

    /// `rbd export` of the whole image.
    fn export(&self, image: &str) -> Vec<u8> {
        let out = self.cluster.dir.join(format!("{image}.export"));
        let _ = std::fs::remove_file(&out);
        self.cluster.rbd(&[
            "export",
            &format!("{}/{image}", self.cluster.pool),
            out.to_str().expect("utf8"),
        ]);
        let data = std::fs::read(&out).expect("read the export");
        let _ = std::fs::remove_file(&out);
        data
    }

    /// `rbd import` of `data` as a new image.
    fn import(&self, image: &str, data: &[u8]) {
        let src = self.cluster.dir.join(format!("{image}.import"));
        std::fs::write(&src, data).expect("write the image file");
        self.cluster.rbd(&[
            "import",
            src.to_str().expect("utf8"),
            &format!("{}/{image}", self.cluster.pool),
        ]);
        let _ = std::fs::remove_file(&src);
    }

    /// spinblk serving `pool/image` on `{dir}/vhost.sock` with an RPC socket, plus `extra`.
    fn serve(&self, image: &str, extra: &[&str]) -> Target {
        let spec = format!("{}/{image}", self.cluster.pool);
        Target::launch()
            .args(["--rbd", &spec, "--rbd-conf", &self.conf_str()])
            .args(["--socket", "{dir}/vhost.sock", "-r", "{dir}/rpc.sock"])
            .args(["--cpus", &first_cpu().to_string()])
            .args(extra)
            .wait_socket("{dir}/vhost.sock")
            .wait_path("{dir}/rpc.sock")
            .start()
    }
}

/// A CPU this process may run on (reactors are pinned).
fn first_cpu() -> usize {
    // SAFETY: no arguments; the CPU this thread runs on.
    usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(0)
}

fn client(t: &Target, queues: i32) -> Client {
    Client::connect(
        t.socket(),
        ClientConfig {
            num_queues: queues,
            ..ClientConfig::default()
        },
    )
    .unwrap_or_else(|e| panic!("connect: {e}\n{}", t.output()))
}

fn rpc(t: &Target) -> RawRpc {
    RawRpc::connect(&t.dir().join("rpc.sock"))
}

/// A ceph.conf whose monitor is a port nothing listens on.
fn unreachable_conf(dir: &Path) -> (PathBuf, String) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mon = format!("v2:127.0.0.1:{port}");
    let conf = dir.join("unreachable.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nmon host = {mon}\nauth client required = none\n\
             [client]\nlog file = /dev/null\nadmin socket = \n"
        ),
    )
    .expect("write conf");
    (conf, mon)
}

/// The spinblk lines in a target's output (its own messages, not the log's).
fn spinblk_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.starts_with("spinblk: ")).collect()
}

/// A cluster that does not answer at start: a one-line error and exit 2 within the mount
/// timeout; a missing image likewise (at once). Needs no cluster.
fn unreachable_cluster_at_start(dir: &Path) {
    let (conf, _) = unreachable_conf(dir);
    let mount = 3;
    let t0 = Instant::now();
    let mut t = Target::launch()
        .args([
            "--rbd",
            "rbd/img",
            "--rbd-conf",
            conf.to_str().expect("utf8"),
        ])
        .args(["--rbd-option", &format!("client_mount_timeout={mount}")])
        .args([
            "--socket",
            "{dir}/vhost.sock",
            "--cpus",
            &first_cpu().to_string(),
        ])
        .start();
    let status = t
        .wait_exit(Duration::from_secs(mount + 20))
        .unwrap_or_else(|| panic!("still running after {:?}", t0.elapsed()));
    let took = t0.elapsed();
    let log = t.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    let lines = spinblk_lines(&log);
    assert_eq!(lines.len(), 1, "one line: {log}");
    assert!(lines[0].contains("bdev 'rbd0'"), "{}", lines[0]);
    assert!(!t.socket_named("vhost.sock").exists(), "no socket was made");
    assert!(took < Duration::from_secs(mount + 8), "took {took:?}");
    println!(
        "    exit 2 after {took:?} (client_mount_timeout {mount} s): {}",
        lines[0]
    );
}

/// Data put in with `rbd import` reads back through spinblk; random writes from two queues
/// verify; after a flush (librbd's cache turns write-back) more writes stay in the cache until
/// SIGTERM, which must flush and close the image: `rbd export` then holds every byte. The
/// negative control: the same with SIGKILL loses the unflushed write.
fn verified_io_import_export(env: &Env) {
    let size = 16 * MIB;
    let mut shadow = pattern(0x1b, size as usize);
    env.import("imp", &shadow);
    // Dirty data stays in librbd's cache for 30 s unless flushed. (Ceph 16's default cache
    // policy, writearound, acknowledges a write before the OSD has it but sends it at once; a
    // write-back cache holds it until a flush, a close or its age.)
    let cache = [
        "--rbd-option",
        "rbd_cache_policy=writeback",
        "--rbd-option",
        "rbd_cache_max_dirty_age=30",
        "--num-queues",
        "2",
    ];
    let mut t = env.serve("imp", &cache);
    let mut c = client(&t, 2);
    assert_eq!(c.capacity(), size);
    let t0 = Instant::now();
    {
        let mut q = c.queue(0);
        for off in (0..size).step_by(MIB as usize) {
            let got = q.read_ok(off, MIB as usize);
            assert_bytes_eq(
                &got,
                &shadow[off as usize..(off + MIB) as usize],
                "imported data",
            );
        }
    }
    let read_in = t0.elapsed();
    // Each queue writes its own half: batches of up to 8 non-overlapping writes, 512 B..256 KiB.
    let t0 = Instant::now();
    let half = (size / 2) as usize;
    let (lo, hi) = shadow.split_at_mut(half);
    let written: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = c
            .queues()
            .into_iter()
            .zip([lo, hi])
            .enumerate()
            .map(|(i, (mut q, part))| {
                s.spawn(move || {
                    let mut rng = Rng::new(7 + i as u64);
                    let mut bytes = 0u64;
                    for _ in 0..25 {
                        let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
                        let mut off = rng.below(64) * 512;
                        while batch.len() < 8 && off < part.len() as u64 {
                            let len = (512u64 << rng.below(10)).min(part.len() as u64 - off);
                            let data = pattern(rng.next_u64(), len as usize);
                            part[off as usize..(off + len) as usize].copy_from_slice(&data);
                            batch.push((off + (i * half) as u64, data));
                            off += len + rng.below(256) * 512;
                        }
                        bytes += batch.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
                        let reqs: Vec<(u64, &[u8])> =
                            batch.iter().map(|(o, d)| (*o, d.as_slice())).collect();
                        let rets = q.write_many(&reqs);
                        assert!(rets.iter().all(|&r| r == 0), "queue {i}: writes {rets:?}");
                    }
                    bytes
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect()
    });
    let write_in = t0.elapsed();
    let mut q = c.queue(0);
    for off in (0..size).step_by(MIB as usize) {
        let got = q.read_ok(off, MIB as usize);
        assert_bytes_eq(
            &got,
            &shadow[off as usize..(off + MIB) as usize],
            "after writes",
        );
    }
    // A flush, then writes that only librbd's cache holds until the close.
    assert_eq!(q.flush(), 0);
    let mut rng = Rng::new(99);
    for k in 0..8u64 {
        let off = (k * 2 * MIB) + rng.below(64) * 512;
        let data = pattern(1000 + k, 65536);
        q.write_ok(off, &data);
        shadow[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    drop(c);
    let t0 = Instant::now();
    let (code, log) = t.stop_with(SIGTERM);
    let stop_in = t0.elapsed();
    assert_eq!(code, Some(0), "{log}");
    let closed = spinblk_lines(&log)
        .into_iter()
        .find(|l| l.contains("flushed and closed"))
        .unwrap_or_else(|| panic!("no close reported:\n{log}"))
        .to_string();
    let exported = env.export("imp");
    assert_bytes_eq(&exported, &shadow, "rbd export after SIGTERM");
    println!(
        "    16 MiB imported and read back in {read_in:?}; {} KiB of random writes from 2 queues \
         in {write_in:?}, verified; 8 x 64 KiB cached writes after a flush; SIGTERM: exit 0 in \
         {stop_in:?} ({}); rbd export == every byte written",
        written.iter().sum::<u64>() / 1024,
        closed.trim_start_matches("spinblk: ")
    );

    // Negative control: SIGKILL after the same sequence loses the unflushed write.
    drop(t);
    env.image("imp-kill", 8);
    let mut t = env.serve("imp-kill", &cache);
    let mut c = client(&t, 1);
    let mut q = c.queue(0);
    let (a, b) = (pattern(5, 65536), pattern(6, 65536));
    q.write_ok(0, &a);
    assert_eq!(q.flush(), 0);
    q.write_ok(MIB, &b);
    assert_eq!(q.read_ok(MIB, 65536), b, "the cached write reads back");
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    t.signal(SIGKILL);
    t.wait_exit(Duration::from_secs(10)).expect("killed");
    let exported = env.export("imp-kill");
    assert_bytes_eq(&exported[..65536], &a, "the flushed write");
    assert!(
        exported[MIB as usize..(MIB + 65536) as usize] != b[..],
        "the unflushed write reached the cluster without a flush: the SIGTERM check above \
         proves nothing (is librbd's cache off?)"
    );
    println!("    negative control: SIGKILL instead: the flushed write is in the image, the unflushed one is not");
}

/// Flush, discard and write-zeroes reach the image, seen by `rbd export` while spinblk still
/// has it open; spinblk counts each.
fn flush_discard_write_zeroes(env: &Env) {
    const OBJECT: u64 = 4 * MIB;
    env.image("ops", 16);
    let t = env.serve(
        "ops",
        &[
            "--rbd-option",
            "rbd_cache_policy=writeback",
            "--rbd-option",
            "rbd_cache_max_dirty_age=30",
        ],
    );
    let mut c = client(&t, 1);
    let mut q = c.queue(0);
    let fill = vec![0x5au8; MIB as usize];
    for off in (0..3 * OBJECT).step_by(MIB as usize) {
        q.write_ok(off, &fill);
    }
    assert_eq!(q.flush(), 0);
    let e = env.export("ops");
    assert!(
        e[..(3 * OBJECT) as usize].iter().all(|&x| x == 0x5a),
        "flushed fill"
    );
    // A write after the flush stays in librbd's cache until the next flush.
    let w = vec![0x77u8; 65536];
    q.write_ok(MIB, &w);
    let before = env.export("ops");
    assert!(
        before[MIB as usize..(MIB + 65536) as usize] != w[..],
        "the write reached the cluster before any flush: the check below proves nothing"
    );
    assert_eq!(q.flush(), 0);
    let after = env.export("ops");
    assert_bytes_eq(
        &after[MIB as usize..(MIB + 65536) as usize],
        &w,
        "after the flush",
    );
    // Discard a whole object; write-zeroes an unaligned range in another.
    assert_eq!(q.discard(OBJECT, OBJECT), 0);
    let (zoff, zlen) = (2 * OBJECT + 4096 + 512, 65536u64);
    assert_eq!(
        q.write_zeroes(zoff, zlen, spinblk_testkit::blkio::ReqFlags::empty()),
        0
    );
    assert_eq!(q.flush(), 0);
    let e = env.export("ops");
    assert_zeroes(
        &e[OBJECT as usize..(2 * OBJECT) as usize],
        "the discarded object",
    );
    for (i, &b) in e[(2 * OBJECT) as usize..(3 * OBJECT) as usize]
        .iter()
        .enumerate()
    {
        let at = 2 * OBJECT + i as u64;
        let want = if (zoff..zoff + zlen).contains(&at) {
            0
        } else {
            0x5a
        };
        assert_eq!(b, want, "export byte {at}");
    }
    assert_zeroes(
        &q.read_ok(OBJECT, MIB as usize),
        "discarded, read through spinblk",
    );
    assert_zeroes(
        &q.read_ok(zoff, zlen as usize),
        "zeroed, read through spinblk",
    );
    drop(c);
    let stats = rpc(&t).ok("spinblk_get_stats", None);
    let total = &stats[0]["total"];
    assert!(total["flush_ops"].as_u64() >= Some(3), "{total}");
    assert_eq!(total["discard_ops"].as_u64(), Some(1), "{total}");
    assert_eq!(total["write_zeroes_ops"].as_u64(), Some(1), "{total}");
    assert_eq!(total["io_errors"].as_u64(), Some(0), "{total}");
    println!(
        "    flush: a cached write (not in rbd export before) is there after FLUSH; discard of a \
         4 MiB object and write-zeroes of {zlen} B at {zoff}: zeroes in rbd export; spinblk \
         counted {} flushes, 1 discard, 1 write-zeroes",
        total["flush_ops"]
    );
}

/// The monitor's sessions of clients (`client.<id>`, one per rados connection).
fn client_sessions(env: &Env) -> Vec<u64> {
    let asok = env.cluster.dir.join("run/mon.a.asok");
    let out = std::process::Command::new("ceph")
        .arg("--admin-daemon")
        .arg(&asok)
        .arg("sessions")
        .output()
        .expect("ceph --admin-daemon");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("sessions JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .filter(|s| s["con_type"] == "client")
        .filter_map(|s| s["global_id"].as_u64())
        .collect()
}

/// Two images of one cluster served at once by two controllers: verified I/O on both in
/// parallel, one rados connection (one "connected" line, one client id, one monitor session).
fn two_images_one_connection(env: &Env) {
    env.image("two-a", 16);
    env.image("two-b", 16);
    let conf = env.conf_str();
    let before = client_sessions(env);
    let t = Target::launch()
        .args([
            "--bdev",
            &format!("name=a,rbd={}/two-a,conf={conf}", env.cluster.pool),
            "--bdev",
            &format!(
                "name=b,rbd={}/two-b,conf={conf},block-size=4096",
                env.cluster.pool
            ),
            "--controller",
            "socket={dir}/a.sock,bdev=a",
            "--controller",
            "socket={dir}/b.sock,bdev=b",
            "-r",
            "{dir}/rpc.sock",
            "--cpus",
            &first_cpu().to_string(),
        ])
        .wait_socket("{dir}/a.sock")
        .wait_socket("{dir}/b.sock")
        .wait_path("{dir}/rpc.sock")
        .start();
    let socks = [t.socket_named("a.sock"), t.socket_named("b.sock")];
    let t0 = Instant::now();
    let ops: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = socks
            .iter()
            .enumerate()
            .map(|(i, sock)| {
                s.spawn(move || {
                    let mut c = Client::connect(sock, ClientConfig::default()).expect("connect");
                    let mut q = c.queue(0);
                    let mut rng = Rng::new(40 + i as u64);
                    let mut n = 0;
                    for _ in 0..60 {
                        let off = rng.below(16 * MIB / 4096 - 16) * 4096;
                        let data = pattern(rng.next_u64(), 65536);
                        q.write_ok(off, &data);
                        assert_eq!(q.read_ok(off, 65536), data, "image {i} at {off}");
                        n += 2;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let took = t0.elapsed();
    let bdevs = rpc(&t).ok("bdev_get_bdevs", None);
    let ids: Vec<u64> = bdevs
        .as_array()
        .expect("list")
        .iter()
        .map(|b| {
            b["driver_specific"]["spinblk"]["rbd"]["client_id"]
                .as_u64()
                .expect("id")
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "both images on one connection");
    let connects = t.log_text().matches("rbd: connected to").count();
    assert_eq!(connects, 1, "{}", t.output());
    let now = client_sessions(env);
    let new: Vec<u64> = now
        .iter()
        .filter(|id| !before.contains(id))
        .copied()
        .collect();
    assert_eq!(
        new,
        vec![ids[0]],
        "the monitor sees one new client session: {now:?}"
    );
    println!(
        "    {} verified requests on two images at once in {took:?}; one connection: client.{} \
         (one 'connected' line, one new monitor session)",
        ops.iter().sum::<u64>(),
        ids[0]
    );
}

/// Feeds captured rpc.py bytes to `methods` and returns the answers.
fn replay(methods: &spinblk_rpc::SpdkMethods, raw: &[u8]) -> Vec<Value> {
    let mut framer = spinblk_rpc::framing::Framer::new(spinblk_rpc::MAX_REQUEST_BYTES);
    framer.feed(raw);
    let mut answers = Vec::new();
    while let Some(frame) = framer.next_value().expect("rpc.py sends valid JSON") {
        match spinblk_rpc::handle_frame(&frame, methods) {
            spinblk_rpc::Outcome::Reply(b) => {
                answers.push(serde_json::from_slice(&b).expect("answer"))
            }
            spinblk_rpc::Outcome::Nothing => {}
            spinblk_rpc::Outcome::ReplyAndClose(b) => {
                panic!("closed: {}", String::from_utf8_lossy(&b))
            }
        }
    }
    answers
}

/// Every capture of SPDK's rpc.py 26.9 for the RBD methods (crates/rpc/tests/fixtures/
/// rpcpy-26.9-rbd), replayed against a target on the cluster: each is accepted, and what they
/// made is right.
fn rpcpy_rbd_captures(env: &Env) {
    for i in ["img0", "img1", "img2"] {
        env.image(i, 8);
    }
    let scratch = TempDir::new("rbd-rpcpy");
    std::fs::copy(env.conf(), scratch.path().join("ceph.conf")).expect("copy conf");
    let target = Arc::new(
        spinblk_target::Target::start(spinblk_target::TargetOptions {
            cores: vec![first_cpu()],
            socket_dir: scratch.path().to_path_buf(),
            socket: Default::default(),
            poll_mode: Default::default(),
            batch_wait: spinblk_target::DEFAULT_BATCH_WAIT,
        })
        .expect("target"),
    );
    let methods = spinblk_rpc::SpdkMethods::new(Arc::clone(&target));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rpc/tests/fixtures/rpcpy-26.9-rbd");
    let index: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).expect("index"))
            .expect("JSON");
    let mon = env.mon.trim_start_matches("v2:");
    let mut seen = std::collections::BTreeSet::new();
    let mut bdev_config = Value::Null;
    for entry in &index {
        let file = entry["file"].as_str().expect("file");
        let raw = std::fs::read_to_string(dir.join(file))
            .expect("capture")
            .replace("@TMP@", &scratch.path().display().to_string())
            .replace("@MON@", mon);
        let answers = replay(&methods, raw.as_bytes());
        let sent: Vec<&str> = entry["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(answers.len(), sent.len(), "{file}");
        for (a, m) in answers.iter().zip(&sent) {
            assert!(
                a.get("result").is_some(),
                "{file} ({}): {m} refused: {a}",
                entry["command"]
            );
            seen.insert(m.to_string());
            match (entry["command"].as_str().unwrap_or(""), *m) {
                ("bdev_rbd_get_clusters_info", _) => {
                    let names: Vec<&str> = a["result"]
                        .as_array()
                        .expect("a list")
                        .iter()
                        .filter_map(|c| c["cluster_name"].as_str())
                        .collect();
                    assert_eq!(names, ["c0", "c1"]);
                    assert_eq!(a["result"][1]["config_param"]["rbd_cache"], "false");
                    assert_eq!(a["result"][1]["core_mask"], "0x1");
                }
                ("bdev_rbd_get_clusters_info -b c0", _) => {
                    assert_eq!(a["result"]["cluster_name"], "c0", "{a}");
                }
                ("bdev_get_bdevs -b r0", _) => {
                    let b = &a["result"][0];
                    assert_eq!(b["product_name"], "Ceph Rbd Disk");
                    assert_eq!(b["driver_specific"]["rbd"]["rbd_name"], "img0");
                    assert_eq!(b["driver_specific"]["rbd"]["cluster_name"], "c0");
                }
                ("framework_get_config bdev", _) => bdev_config = a["result"].clone(),
                _ => {}
            }
        }
    }
    for m in spinblk_rpc::METHODS
        .iter()
        .filter(|m| m.starts_with("bdev_rbd_"))
    {
        assert!(seen.contains(*m), "no capture exercises {m}");
    }
    // What framework_get_config wrote: the clusters first, then the bdevs naming them.
    let methods_in: Vec<(&str, &Value)> = bdev_config
        .as_array()
        .expect("config")
        .iter()
        .map(|e| (e["method"].as_str().unwrap_or(""), &e["params"]))
        .collect();
    assert_eq!(methods_in[0].0, "bdev_rbd_register_cluster");
    assert_eq!(methods_in[1].0, "bdev_rbd_register_cluster");
    let create = |name: &str| {
        methods_in
            .iter()
            .find(|(m, p)| *m == "bdev_rbd_create" && p["name"] == name)
            .map(|(_, p)| (*p).clone())
            .unwrap_or_else(|| panic!("no bdev_rbd_create for {name}: {bdev_config}"))
    };
    assert_eq!(create("r0")["cluster_name"], "c0");
    assert_eq!(
        create("Ceph0")["uuid"],
        "0e8a5d5c-7c4e-4b8e-9b3e-0123456789ac"
    );
    assert_eq!(create("Ceph0")["block_size"], 4096);
    assert_eq!(create("r2")["config"]["mon_host"], mon);
    assert_eq!(create("r3")["read_only"], true);
    // The images the captures resized: r0 (img0) to 16 MiB.
    assert!(
        target.bdevs().list().is_empty(),
        "the captures deleted their bdevs"
    );
    assert!(
        target.rbd_clusters().is_empty(),
        "and unregistered their clusters"
    );
    target.shutdown();
    let sizes = env.cluster.rbd(&["info", "--format", "json", "rbd/img0"]);
    let info: Value = serde_json::from_str(&sizes).expect("rbd info");
    assert_eq!(
        info["size"].as_u64(),
        Some(16 * MIB),
        "bdev_rbd_resize r0 16"
    );
    println!(
        "    {} rpc.py runs accepted ({} methods); save_config: 2 clusters, then bdev_rbd_create \
         with cluster_name / config; img0 resized to 16 MiB",
        index.len(),
        seen.len()
    );
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// RBD bdevs made with rpc.py (a registered cluster and a bdev with its own connection), saved
/// with save_config and rebuilt with --json: same data, same clusters, same geometry.
/// bdev_rbd_resize grows the image and the controller; a resize by another client (`rbd
/// resize`) is seen through librbd's header watch.
fn rpc_save_config_reload_and_resize(env: &Env) {
    env.image("cfg", 8);
    env.image("cfg2", 8);
    let cpu = first_cpu().to_string();
    let mut t1 = Target::launch()
        .args(["-r", "{dir}/rpc.sock", "-S", "{dir}", "--cpus", &cpu])
        .wait_path("{dir}/rpc.sock")
        .start();
    let py = SpdkRpc::new(&t1.dir().join("rpc.sock"));
    let mon = env.mon.trim_start_matches("v2:").to_string();
    py.ok(&[
        "bdev_rbd_register_cluster",
        "c0",
        "--config-file",
        &env.conf_str(),
    ]);
    py.ok(&[
        "bdev_rbd_create",
        "-b",
        "r0",
        "-c",
        "c0",
        "rbd",
        "cfg",
        "512",
    ]);
    py.ok(&[
        "bdev_rbd_create",
        "-b",
        "r1",
        "--config",
        &format!("mon_host={mon}"),
        "--config",
        "auth_client_required=none",
        "rbd",
        "cfg2",
        "4096",
    ]);
    py.ok(&["vhost_create_blk_controller", "v0", "r0"]);
    let sock = t1.dir().join("v0");
    let data = pattern(0xc0ffee, MIB as usize);
    // A client connected before the resizes: requests up to the new end succeed at once.
    let mut early = Client::connect(&sock, ClientConfig::default()).expect("connect");
    assert_eq!(early.capacity(), 8 * MIB);
    early.queue(0).write_ok(0, &data);
    assert_eq!(
        early.queue(0).write(10 * MIB, &[1u8; 4096]),
        EIO,
        "past the end"
    );
    // bdev_rbd_resize: MiB; growing only.
    py.ok(&["bdev_rbd_resize", "r0", "12"]);
    let e = py.err(&["bdev_rbd_resize", "r0", "4"]);
    assert_eq!(e.code, -32602, "{}", e.output);
    early.queue(0).write_ok(12 * MIB - 4096, &[2u8; 4096]);
    let c = Client::connect(&sock, ClientConfig::default()).expect("connect");
    assert_eq!(c.capacity(), 12 * MIB, "a new connection sees the new size");
    drop(c);
    let blocks = |py: &SpdkRpc, b: &str| {
        py.json(&["bdev_get_bdevs", "-b", b])[0]["num_blocks"]
            .as_u64()
            .expect("num_blocks")
    };
    assert_eq!(blocks(&py, "r0"), 12 * MIB / 512);
    // Another client grows the image: the header watch reports it.
    let t0 = Instant::now();
    env.cluster.rbd(&["resize", "--size", "16M", "rbd/cfg"]);
    let seen = wait_until("external resize seen", Duration::from_secs(10), || {
        blocks(&py, "r0") == 16 * MIB / 512
    });
    let external = t0.elapsed();
    // The controller follows (the watcher's rescan sends Resized): the connected client writes
    // at the new end, a new one sees the new capacity.
    // (No sync point with the watcher here: the session may take a moment more.)
    let mut q = early.queue(0);
    wait_until(
        "the connected client writes at the new end",
        Duration::from_secs(5),
        || q.write(16 * MIB - 4096, &[3u8; 4096]) == 0,
    );
    let c = Client::connect(&sock, ClientConfig::default()).expect("connect");
    assert_eq!(
        c.capacity(),
        16 * MIB,
        "a new connection sees the external resize"
    );
    drop(c);
    drop(early);
    let config = py.json(&["save_config"]);
    let keep = TempDir::new("rbd-saved");
    let saved = keep.path().join("saved.json");
    std::fs::write(&saved, serde_json::to_vec_pretty(&config).expect("json")).expect("save");
    let (code, log) = t1.stop_with(SIGTERM);
    assert_eq!(code, Some(0), "{log}");
    let closes = spinblk_lines(&log)
        .into_iter()
        .filter(|l| l.contains("flushed and closed"))
        .count();
    assert_eq!(closes, 2, "r0 and r1: {log}");
    drop(t1);
    let t2 = Target::launch()
        .args([
            "--json",
            saved.to_str().expect("utf8"),
            "-r",
            "{dir}/rpc.sock",
        ])
        .args(["-S", "{dir}", "--cpus", &cpu])
        .wait_socket("{dir}/v0")
        .wait_path("{dir}/rpc.sock")
        .start();
    let py2 = SpdkRpc::new(&t2.dir().join("rpc.sock"));
    let mut c = Client::connect(&t2.dir().join("v0"), ClientConfig::default()).expect("connect");
    assert_eq!(c.capacity(), 16 * MIB);
    assert_bytes_eq(&c.queue(0).read_ok(0, MIB as usize), &data, "reloaded");
    let info = py2.json(&["bdev_rbd_get_clusters_info", "-b", "c0"]);
    assert_eq!(info["config_file"], env.conf_str());
    let r1 = &py2.json(&["bdev_get_bdevs", "-b", "r1"])[0];
    assert_eq!(r1["block_size"], 4096);
    assert_eq!(r1["driver_specific"]["rbd"]["config"]["mon_host"], mon);
    for b in ["r0", "r1"] {
        let old = config["subsystems"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["subsystem"] == "bdev"))
            .and_then(|s| s["config"].as_array())
            .and_then(|c| c.iter().find(|e| e["params"]["name"] == b))
            .map(|e| e["params"]["uuid"].clone())
            .expect("saved uuid");
        assert_eq!(py2.json(&["bdev_get_bdevs", "-b", b])[0]["uuid"], old);
    }
    println!(
        "    rpc.py: cluster c0 + bdev r0 on it, r1 with its own connection, controller v0; \
         bdev_rbd_resize 8 -> 12 MiB and rbd resize to 16 MiB by another client (seen after \
         {seen:?}; rbd CLI + watch {external:?}): a client connected before writes at each new \
         end at once, new connections see each size; shrinking refused; save_config -> --json: \
         data, uuids, clusters and geometry back"
    );
}

/// While connects to an unreachable cluster wait (bdev_rbd_register_cluster and a direct
/// bdev_rbd_create, at the same time), other RPC clients are answered at once and a malloc
/// controller's verifying client sees no stall; both calls fail within the mount timeout.
fn connects_do_not_stall(env: &Env) {
    let dir = TempDir::new("rbd-stall");
    let (_, mon) = unreachable_conf(dir.path());
    let t = Target::launch()
        .args(["--malloc", "64M", "--socket", "{dir}/vhost.sock"])
        .args(["-r", "{dir}/rpc.sock", "--cpus", &first_cpu().to_string()])
        .wait_socket("{dir}/vhost.sock")
        .wait_path("{dir}/rpc.sock")
        .start();
    let _ = env;
    let mount = 5;
    let stop = AtomicBool::new(false);
    let params = json!({
        "mon_host": mon, "client_mount_timeout": mount.to_string(),
        "auth_client_required": "none",
    });
    let (io, slow_rpc, failures) = std::thread::scope(|s| {
        let io = s.spawn(|| {
            let mut c = client(&t, 1);
            let mut q = c.queue(0);
            let mut rng = Rng::new(3);
            let (mut n, mut worst) = (0u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let off = rng.below(64 * MIB / 4096 - 1) * 4096;
                let data = pattern(rng.next_u64(), 4096);
                let t0 = Instant::now();
                q.write_ok(off, &data);
                assert_eq!(q.read_ok(off, 4096), data);
                worst = worst.max(t0.elapsed());
                n += 2;
            }
            (n, worst)
        });
        let register = s.spawn(|| {
            let t0 = Instant::now();
            let e = rpc(&t).err(
                "bdev_rbd_register_cluster",
                Some(json!({"name": "far", "config_param": params})),
            );
            (t0.elapsed(), e)
        });
        let create = s.spawn(|| {
            let t0 = Instant::now();
            let e = rpc(&t).err(
                "bdev_rbd_create",
                Some(json!({"name": "far0", "pool_name": "rbd", "rbd_name": "x",
                            "block_size": 512, "config": params})),
            );
            (t0.elapsed(), e)
        });
        // Meanwhile: other RPC clients, one call each.
        std::thread::sleep(Duration::from_millis(300));
        let mut slow = Duration::ZERO;
        let mut calls = 0;
        while !register.is_finished() || !create.is_finished() {
            let t0 = Instant::now();
            let mut r = rpc(&t);
            let bdevs = r.ok("bdev_get_bdevs", None);
            assert_eq!(
                bdevs.as_array().map(Vec::len),
                Some(1),
                "only malloc0: {bdevs}"
            );
            r.ok("vhost_get_controllers", None);
            slow = slow.max(t0.elapsed());
            calls += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        let failures = [
            register.join().expect("register"),
            create.join().expect("create"),
        ];
        (io.join().expect("io"), (slow, calls), failures)
    });
    for (took, (code, msg)) in &failures {
        assert!(
            *took < Duration::from_secs(mount + 8),
            "took {took:?}: {msg}"
        );
        assert!(*code < 0, "{code}: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
    assert!(
        slow_rpc.0 < Duration::from_secs(1),
        "an RPC took {:?}",
        slow_rpc.0
    );
    assert!(io.1 < Duration::from_secs(2), "an I/O pair took {:?}", io.1);
    // Nothing half-made is left behind.
    let mut r = rpc(&t);
    assert_eq!(
        r.ok("bdev_get_bdevs", None).as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        r.err("bdev_rbd_get_clusters_info", None).0,
        -i64::from(libc::ENOENT)
    );
    println!(
        "    register_cluster failed after {:?} ({}), create after {:?} ({}); meanwhile {} RPC \
         rounds, slowest {:?}; {} verified malloc I/Os, slowest write+read {:?}",
        failures[0].0,
        failures[0].1 .1,
        failures[1].0,
        failures[1].1 .1,
        slow_rpc.1,
        slow_rpc.0,
        io.0,
        io.1
    );
}

/// utime + stime of the process and of its reactor threads, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let fields = |path: &Path| -> Option<(String, u64)> {
        let text = std::fs::read_to_string(path).ok()?;
        let (head, rest) = text.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After ")": state is field 3, utime 14, stime 15.
        let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((comm, t))
    };
    let total = fields(Path::new(&format!("/proc/{pid}/stat")))
        .map(|(_, t)| t)
        .unwrap_or(0);
    let reactors = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| fields(&e.path().join("stat")))
                .filter(|(c, _)| c.starts_with("reactor"))
                .map(|(_, t)| t)
                .sum()
        })
        .unwrap_or(0);
    (total, reactors)
}

/// An idle RBD disk lets its reactor sleep (adaptive polling: it waits on the channel's
/// completion eventfd): the target's CPU while a connected client is idle, then QD1 reads wake
/// it at once.
fn idle_reactor_sleeps(env: &Env) {
    env.image("idle", 16);
    let t = env.serve("idle", &[]);
    let mut c = client(&t, 1);
    let mut q = c.queue(0);
    q.write_ok(0, &pattern(1, 65536));
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::thread::sleep(Duration::from_millis(500));
    let idle = Duration::from_secs(5);
    let (a, ra) = cpu_ticks(t.pid());
    std::thread::sleep(idle);
    let (b, rb) = cpu_ticks(t.pid());
    let pct = |ticks: u64| ticks as f64 / hz / idle.as_secs_f64() * 100.0;
    let (total, reactor) = (pct(b - a), pct(rb - ra));
    let reactors = rpc(&t).ok("framework_get_reactors", None);
    // Woken for I/O: QD1 reads for 2 s.
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut rng = Rng::new(11);
    while t0.elapsed() < Duration::from_secs(2) {
        let off = rng.below(16 * MIB / 4096) * 4096;
        let s = Instant::now();
        let (ret, _) = q.read(off, 4096);
        assert_eq!(ret, 0);
        lat.push(s.elapsed());
    }
    lat.sort();
    let p50 = lat[lat.len() / 2];
    assert!(
        reactor < 5.0,
        "the reactor used {reactor:.1}% of a core while idle"
    );
    assert!(
        total < 15.0,
        "spinblk used {total:.1}% of a core while idle"
    );
    println!(
        "    idle 5 s with a client connected: spinblk {total:.1}% of a core (reactor thread \
         {reactor:.1}%, the rest librados/librbd); then {} QD1 4 KiB reads in 2 s, p50 {p50:?}; \
         framework_get_reactors while idle: in_interrupt={}",
        lat.len(),
        reactors["reactors"][0]["in_interrupt"]
    );
}

/// The OSD is killed under load: the RBD requests outstanding then fail with EIO within the op
/// timeout, the target stays up, a malloc controller in the same process (same reactor) is
/// undisturbed, and SIGTERM reports the image it could not flush. Breaks the cluster: last.
fn osd_killed(env: &Env) {
    env.image("fault", 16);
    let op_timeout = 5u64;
    let conf = env.conf_str();
    let mut t = Target::launch()
        .args([
            "--bdev",
            &format!(
                "name=r,rbd={}/fault,conf={conf},op-timeout={op_timeout}",
                env.cluster.pool
            ),
            "--bdev",
            "name=m,malloc=64M",
            "--controller",
            "socket={dir}/r.sock,bdev=r",
            "--controller",
            "socket={dir}/m.sock,bdev=m",
            "-r",
            "{dir}/rpc.sock",
            "--cpus",
            &first_cpu().to_string(),
        ])
        .wait_socket("{dir}/r.sock")
        .wait_socket("{dir}/m.sock")
        .wait_path("{dir}/rpc.sock")
        .start();
    let (rsock, msock) = (t.socket_named("r.sock"), t.socket_named("m.sock"));
    let stop = AtomicBool::new(false);
    let killed_at: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    struct RbdOutcome {
        ok_batches: u64,
        /// (submitted, completed, rets) of the batches that failed.
        failed: Vec<(Instant, Instant, Vec<i32>)>,
        after: (Duration, i32),
    }
    let (rbd, malloc) = std::thread::scope(|s| {
        let rbd = s.spawn(|| {
            let mut c = Client::connect(&rsock, ClientConfig::default()).expect("rbd client");
            let mut q = c.queue(0);
            q.set_timeout(Duration::from_secs(120));
            let mut rng = Rng::new(21);
            let mut out = RbdOutcome {
                ok_batches: 0,
                failed: Vec::new(),
                after: (Duration::ZERO, 0),
            };
            // Batches of 16 writes (QD16) until one fails.
            loop {
                let bufs: Vec<(u64, Vec<u8>)> = (0..16)
                    .map(|_| {
                        (
                            rng.below(16 * MIB / 4096) * 4096,
                            pattern(rng.next_u64(), 4096),
                        )
                    })
                    .collect();
                let reqs: Vec<(u64, &[u8])> = bufs.iter().map(|(o, d)| (*o, &d[..])).collect();
                let t0 = Instant::now();
                let rets = q.write_many(&reqs);
                if rets.iter().all(|&r| r == 0) {
                    out.ok_batches += 1;
                    continue;
                }
                out.failed.push((t0, Instant::now(), rets));
                break;
            }
            // A request sent after the fault fails within the timeout too.
            let t0 = Instant::now();
            let ret = q.write(0, &[7u8; 4096]);
            out.after = (t0.elapsed(), ret);
            out
        });
        let malloc = s.spawn(|| {
            let mut c = Client::connect(&msock, ClientConfig::default()).expect("malloc client");
            let mut q = c.queue(0);
            let mut rng = Rng::new(22);
            let (mut n, mut worst, mut worst_at) = (0u64, Duration::ZERO, Duration::ZERO);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let off = rng.below(64 * MIB / 4096) * 4096;
                let data = pattern(rng.next_u64(), 4096);
                let t0 = Instant::now();
                assert_eq!(q.write(off, &data), 0, "malloc write");
                let (ret, got) = q.read(off, 4096);
                assert_eq!(ret, 0, "malloc read");
                assert_eq!(got, data, "malloc data at {off}");
                let took = t0.elapsed();
                if took > worst {
                    (worst, worst_at) = (took, start.elapsed());
                }
                n += 2;
            }
            (n, worst, worst_at)
        });
        std::thread::sleep(Duration::from_millis(1500));
        env.cluster.kill_osd();
        *killed_at.lock().expect("lock") = Some(Instant::now());
        let rbd = rbd.join().expect("rbd client");
        // The malloc client keeps going a little past the RBD failures.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (rbd, malloc.join().expect("malloc client"))
    });
    let killed = killed_at.lock().expect("lock").expect("killed");
    let limit = Duration::from_secs(op_timeout + 4);
    let (sub, done, rets) = rbd.failed.first().expect("a batch failed");
    assert!(rets.iter().all(|&r| r == EIO || r == 0), "{rets:?}");
    let failed = rets.iter().filter(|&&r| r == EIO).count();
    let took = done.duration_since(*sub);
    assert!(
        took < limit,
        "the failing batch took {took:?} (op timeout {op_timeout} s)"
    );
    let after_kill = done.saturating_duration_since(killed);
    assert_eq!(rbd.after.1, EIO, "a request after the fault");
    assert!(rbd.after.0 < limit, "{:?}", rbd.after.0);
    assert!(
        malloc.1 < Duration::from_secs(2),
        "malloc stalled {:?}",
        malloc.1
    );
    // The target is up: RPC answers, the malloc disk serves a new client.
    t.assert_running();
    assert_eq!(
        rpc(&t).ok("bdev_get_bdevs", None).as_array().map(Vec::len),
        Some(2)
    );
    let mut c = Client::connect(&msock, ClientConfig::default()).expect("malloc again");
    c.queue(0).write_ok(0, &[1u8; 4096]);
    drop(c);
    println!(
        "    before the kill: {} batches of 16 writes ok. The batch outstanding at the kill \
         (submitted {:?} before it): {failed} of 16 failed with EIO, all done {after_kill:?} \
         after the kill, {took:?} after submission (op timeout {op_timeout} s); a new write: \
         EIO after {:?}. Malloc controller on the same reactor: {} verified I/Os, no error, \
         slowest write+read {:?} (at {:?}); target still up",
        rbd.ok_batches,
        killed.saturating_duration_since(*sub),
        rbd.after.0,
        malloc.0,
        malloc.1,
        malloc.2
    );
    // SIGTERM with the cluster gone: the image cannot be flushed; said so, exit 1, bounded.
    let t0 = Instant::now();
    t.signal(SIGTERM);
    let status = t.wait_exit(Duration::from_secs(90)).expect("exits");
    let took = t0.elapsed();
    let log = t.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    let last = *spinblk_lines(&log).last().expect("a message");
    assert!(
        last.contains("not every rbd image was flushed") && last.contains("bdev 'r'"),
        "{last}"
    );
    assert!(last.contains("no answer from the cluster"), "{last}");
    println!("    SIGTERM with the OSD gone: exit 1 after {took:?}: {last}");
}

type Case = (&'static str, fn(&Env));

const CASES: &[Case] = &[
    ("verified_io_import_export", verified_io_import_export),
    ("flush_discard_write_zeroes", flush_discard_write_zeroes),
    ("two_images_one_connection", two_images_one_connection),
    ("rpcpy_rbd_captures", rpcpy_rbd_captures),
    (
        "rpc_save_config_reload_and_resize",
        rpc_save_config_reload_and_resize,
    ),
    ("connects_do_not_stall", connects_do_not_stall),
    ("idle_reactor_sleeps", idle_reactor_sleeps),
    ("osd_killed", osd_killed),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("unreachable_cluster_at_start: test");
        for (n, _) in CASES {
            println!("{n}: test");
        }
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected = |n: &str| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str()));
    let mut names: Vec<&str> = vec![];
    if selected("unreachable_cluster_at_start") {
        names.push("unreachable_cluster_at_start");
    }
    names.extend(CASES.iter().map(|c| c.0).filter(|n| selected(n)));
    if let Err(why) = ceph::ceph_present() {
        if std::env::var("SPINBLK_SKIP_CEPH").as_deref() == Ok("1") {
            for n in &names {
                println!("test {n} ... SKIPPED ({why})");
            }
            println!(
                "\ntest result: SKIPPED. {} skipped (SPINBLK_SKIP_CEPH=1)",
                names.len()
            );
            return;
        }
        eprintln!("error: {why}\n(set SPINBLK_SKIP_CEPH=1 to skip the Ceph tests, counted)");
        std::process::exit(1);
    }
    let started = Instant::now();
    let (mut passed, mut failed) = (0, vec![]);
    let mut report = |name: &str, t: Instant, r: std::thread::Result<()>| {
        println!("    ({name}: {:?})", t.elapsed());
        match r {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name.to_string());
            }
        }
    };
    if selected("unreachable_cluster_at_start") {
        let dir = TempDir::new("rbd-unreach");
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| {
            unreachable_cluster_at_start(dir.path())
        }));
        report("unreachable_cluster_at_start", t, r);
    }
    let todo: Vec<&Case> = CASES.iter().filter(|c| selected(c.0)).collect();
    if !todo.is_empty() {
        let cluster = Cluster::start();
        let conf = std::fs::read_to_string(cluster.conf()).expect("ceph.conf");
        let mon = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("mon host = "))
            .expect("mon host in ceph.conf")
            .to_string();
        println!(
            "cluster started in {:?}; daemons' RSS (KiB): {}",
            cluster.start_time,
            cluster.rss()
        );
        let env = Env { cluster, mon };
        for (name, f) in todo {
            let t = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| f(&env)));
            if *name == "idle_reactor_sleeps" || *name == "osd_killed" {
                println!("    daemons' RSS now (KiB): {}", env.cluster.rss());
            }
            report(name, t, r);
        }
        let t = Instant::now();
        drop(env);
        println!("cluster stopped in {:?}", t.elapsed());
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; finished in {:?}",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        started.elapsed()
    );
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}
