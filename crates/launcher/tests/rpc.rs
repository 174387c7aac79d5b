//! The runtime control plane driven by SPDK's own client (`spdk-rpc`, PyPI spdk==26.9): bdevs
//! and controllers created and deleted while spinblk runs, verified libblkio I/O through each,
//! statistics equal to what the client did, every error case, save_config -> restart with
//! --json, and deleting a controller under a connected client.

mod rpc_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rpc_common::{RawRpc, SpdkRpc};
use serde_json::{json, Value};
use spinblk_testkit::{
    assert_bytes_eq, assert_zeroes, pattern, wait_for_socket, Client, ClientConfig, Target,
    TempDir, MIB,
};

/// spinblk with an RPC socket and no disks, on core 0 unless `extra` names cores.
fn rpc_target(extra: &[&str]) -> (Target, SpdkRpc) {
    let mut args = vec!["-r", "{dir}/rpc.sock", "-S", "{dir}"];
    if !extra.iter().any(|a| *a == "-m" || *a == "--cpus") {
        args.extend_from_slice(&["--cpus", "0"]);
    }
    args.extend_from_slice(extra);
    let target = Target::start_args(&args, &["rpc.sock"]);
    let rpc = SpdkRpc::new(&target.socket_named("rpc.sock"));
    (target, rpc)
}

fn image(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(len))
        .expect("disk image");
    p
}

/// What a client did, to compare with bdev_get_iostat.
#[derive(Default, Debug, PartialEq, Eq)]
struct Did {
    reads: u64,
    read_bytes: u64,
    writes: u64,
    write_bytes: u64,
}

/// Writes a pattern at a few offsets and reads it back (zeroes from a null disk).
fn verified_io(socket: &Path, block: u64, null: bool, seed: u64) -> Did {
    let mut c = Client::connect(socket, ClientConfig::default())
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let mut q = c.queue(0);
    let mut did = Did::default();
    for (i, (off, len)) in [(0, block), (7 * block, 2 * block), (100 * block, 4 * block)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(seed + i as u64, len as usize);
        q.write_ok(off, &data);
        did.writes += 1;
        did.write_bytes += len;
        let got = q.read_ok(off, len as usize);
        did.reads += 1;
        did.read_bytes += len;
        if null {
            assert_zeroes(&got, "null disk read");
        } else {
            assert_bytes_eq(&got, &data, "read back");
        }
    }
    did
}

#[test]
fn bdevs_and_controllers_created_by_rpc_serve_verified_io_and_count_it() {
    let (target, rpc) = rpc_target(&[]);
    let files = TempDir::new("rpc-files");
    let a_img = image(files.path(), "a.img", 8 * MIB);
    let u_img = image(files.path(), "u.img", 8 * MIB);
    assert_eq!(
        rpc.ok(&["bdev_null_create", "n0", "64", "512"]).trim(),
        "n0"
    );
    assert_eq!(
        rpc.ok(&["bdev_malloc_create", "-b", "m0", "32", "4096"])
            .trim(),
        "m0"
    );
    assert_eq!(
        rpc.ok(&["bdev_aio_create", a_img.to_str().expect("path"), "a0"])
            .trim(),
        "a0"
    );
    assert_eq!(
        rpc.ok(&["bdev_uring_create", u_img.to_str().expect("path"), "u0"])
            .trim(),
        "u0"
    );
    let disks = [
        ("vn", "n0", 512, true),
        ("vm", "m0", 4096, false),
        ("va", "a0", 512, false),
        ("vu", "u0", 512, false),
    ];
    for (ctrlr, bdev, _, _) in disks {
        rpc.ok(&["vhost_create_blk_controller", ctrlr, bdev]);
        // The call returns once the socket accepts connections.
        let sock = target.socket_named(ctrlr);
        assert!(
            std::fs::metadata(&sock).is_ok(),
            "{} exists",
            sock.display()
        );
    }
    // While one client per controller is connected, each controller lists one session.
    let mut clients = Vec::new();
    for (ctrlr, _, _, _) in disks {
        clients.push(
            Client::connect(&target.socket_named(ctrlr), ClientConfig::default()).expect("connect"),
        );
    }
    let ctrls = rpc.json(&["vhost_get_controllers"]);
    let ctrls = ctrls.as_array().expect("array");
    assert_eq!(ctrls.len(), 4);
    for c in ctrls {
        let name = c["ctrlr"].as_str().expect("ctrlr");
        let (_, bdev, _, _) = disks
            .iter()
            .find(|d| d.0 == name)
            .expect("a controller we made");
        assert_eq!(c["cpumask"], "0x1");
        assert_eq!(c["socket"], target.socket_named(name).display().to_string());
        assert_eq!(c["backend_specific"]["block"]["bdev"], *bdev);
        assert_eq!(c["backend_specific"]["block"]["readonly"], false);
        assert_eq!(
            c["backend_specific"]["block"]["transport"],
            "vhost_user_blk"
        );
        assert_eq!(c["sessions"].as_array().map(Vec::len), Some(1), "{c}");
        assert_eq!(c["sessions"][0]["started"], true, "{c}");
        assert_eq!(c["sessions"][0]["max_queues"], 16, "{c}");
        assert_eq!(c["delay_base_us"], 0);
        assert_eq!(c["iops_threshold"], 60000);
    }
    drop(clients);
    let one = rpc.json(&["vhost_get_controllers", "-n", "vm"]);
    assert_eq!(one.as_array().map(Vec::len), Some(1));

    let bdevs = rpc.json(&["bdev_get_bdevs"]);
    let by_name = |n: &str| -> Value {
        bdevs
            .as_array()
            .expect("array")
            .iter()
            .find(|b| b["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("bdev {n} listed"))
    };
    let n0 = by_name("n0");
    assert_eq!(
        (n0["num_blocks"].as_u64(), n0["block_size"].as_u64()),
        (Some(131072), Some(512))
    );
    assert_eq!(n0["product_name"], "Null disk");
    assert_eq!(n0["claimed"], true);
    assert_eq!(n0["claim_type"], "read_many_write_one");
    let m0 = by_name("m0");
    assert_eq!(
        (m0["num_blocks"].as_u64(), m0["block_size"].as_u64()),
        (Some(8192), Some(4096))
    );
    assert_eq!(m0["product_name"], "Malloc disk");
    assert_eq!(by_name("a0")["product_name"], "AIO disk");
    assert_eq!(by_name("u0")["product_name"], "URING bdev");
    assert_eq!(by_name("a0")["num_blocks"].as_u64(), Some(8 * MIB / 512));
    for b in ["n0", "m0", "a0", "u0"] {
        let u = by_name(b)["uuid"].as_str().expect("uuid").to_string();
        assert_eq!(u.len(), 36, "uuid text");
        // SPDK looks bdevs up by uuid too.
        let same = rpc.json(&["bdev_get_bdevs", "-b", &u]);
        assert_eq!(same[0]["name"], b);
        assert_eq!(by_name(b)["supported_io_types"]["read"], true);
        assert_eq!(by_name(b)["assigned_rate_limits"]["rw_ios_per_sec"], 0);
    }

    for (i, (ctrlr, bdev, block, null)) in disks.into_iter().enumerate() {
        let did = verified_io(&target.socket_named(ctrlr), block, null, 10 * i as u64);
        let st = rpc.json(&["bdev_get_iostat", "--names", bdev]);
        assert_eq!(st["tick_rate"].as_u64(), Some(1_000_000_000));
        let s = &st["bdevs"][0];
        assert_eq!(s["name"], bdev);
        let got = Did {
            reads: s["num_read_ops"].as_u64().expect("num_read_ops"),
            read_bytes: s["bytes_read"].as_u64().expect("bytes_read"),
            writes: s["num_write_ops"].as_u64().expect("num_write_ops"),
            write_bytes: s["bytes_written"].as_u64().expect("bytes_written"),
        };
        assert_eq!(got, did, "{bdev}: iostat equals what the client did");
        assert_eq!(s["num_unmap_ops"], 0);
        // Per channel: one entry per queue that carried I/O, on reactor thread 1.
        let pc = rpc.json(&["bdev_get_iostat", "-c", "--names", bdev]);
        let chans = pc["channels"].as_array().expect("channels");
        assert_eq!(chans.len(), 1, "{pc}");
        assert_eq!(chans[0]["thread_id"], 1);
        assert_eq!(chans[0]["num_write_ops"].as_u64(), Some(did.writes));
    }
    // Totals survive the controller: deleting it keeps its counts in the bdev's.
    rpc.ok(&["vhost_delete_controller", "vm"]);
    let s = rpc.json(&["bdev_get_iostat", "--names", "m0"]);
    assert_eq!(s["bdevs"][0]["num_write_ops"].as_u64(), Some(3));
    // All bdevs at once.
    let all = rpc.json(&["bdev_get_iostat"]);
    assert_eq!(all["bdevs"].as_array().map(Vec::len), Some(4));
    for (ctrlr, bdev) in [("vn", "n0"), ("va", "a0"), ("vu", "u0")] {
        rpc.ok(&["vhost_delete_controller", ctrlr]);
        assert!(
            !target.socket_named(ctrlr).exists(),
            "{ctrlr}'s socket removed"
        );
        let _ = bdev;
    }
    rpc.ok(&["bdev_null_delete", "n0"]);
    rpc.ok(&["bdev_malloc_delete", "m0"]);
    rpc.ok(&["bdev_aio_delete", "a0"]);
    rpc.ok(&["bdev_uring_delete", "u0"]);
    assert_eq!(rpc.json(&["bdev_get_bdevs"]), json!([]));
    assert_eq!(rpc.json(&["vhost_get_controllers"]), json!([]));
}

#[test]
fn every_error_case_gets_spdks_error() {
    let (mut target, rpc) = rpc_target(&[]);
    rpc.ok(&["bdev_null_create", "n0", "16", "512"]);
    rpc.ok(&["bdev_malloc_create", "-b", "m0", "16", "512"]);
    // Duplicate bdev name: EEXIST.
    let e = rpc.err(&["bdev_null_create", "n0", "16", "512"]);
    assert_eq!(e.code, -17, "{}", e.output);
    assert!(e.message.contains("already exists"), "{}", e.message);
    // Deleting through another module's method: no such null bdev.
    assert_eq!(rpc.err(&["bdev_null_delete", "m0"]).code, -19);
    assert_eq!(rpc.err(&["bdev_malloc_delete", "nope"]).code, -19);
    // A file that does not exist: ENOENT.
    let e = rpc.err(&["bdev_aio_create", "/nonexistent/spinblk.img", "a0"]);
    assert_eq!(e.code, -2, "{}", e.output);
    rpc.ok(&["vhost_create_blk_controller", "c0", "n0"]);
    // Bdev in use: EBUSY, naming the controller.
    let e = rpc.err(&["bdev_null_delete", "n0"]);
    assert_eq!(e.code, -16, "{}", e.output);
    assert!(e.message.contains("c0"), "{}", e.message);
    // A second writable controller on a bdev that is not shared.
    let e = rpc.err(&["vhost_create_blk_controller", "c1", "n0"]);
    assert_eq!(e.code, -32602, "{}", e.output);
    // Duplicate controller, unknown bdev, unknown controller.
    assert_eq!(
        rpc.err(&["vhost_create_blk_controller", "c0", "m0"]).code,
        -17
    );
    assert_eq!(
        rpc.err(&["vhost_create_blk_controller", "c2", "nope"]).code,
        -19
    );
    assert_eq!(rpc.err(&["vhost_delete_controller", "nope"]).code, -19);
    assert_eq!(rpc.err(&["vhost_get_controllers", "-n", "nope"]).code, -19);
    // Bad cpumasks: unparsable, and cores the app does not have.
    let e = rpc.err(&[
        "vhost_create_blk_controller",
        "--cpumask",
        "0xzz",
        "c3",
        "m0",
    ]);
    assert_eq!(e.code, -32602, "{}", e.output);
    let e = rpc.err(&[
        "vhost_create_blk_controller",
        "--cpumask",
        "0x2",
        "c3",
        "m0",
    ]);
    assert_eq!(e.code, -32602, "{}", e.output);
    assert!(e.message.contains("subset"), "{}", e.message);
    // Packed rings are refused with a clear error.
    let e = rpc.err(&["vhost_create_blk_controller", "-p", "c3", "m0"]);
    assert_eq!(e.code, -32602, "{}", e.output);
    assert!(e.message.contains("packed"), "{}", e.message);
    let e = rpc.err(&[
        "vhost_create_blk_controller",
        "--transport",
        "vfio_user_virtio_blk",
        "c3",
        "m0",
    ]);
    assert_eq!(e.code, -32602, "{}", e.output);
    // Coalescing: unknown controller, and SPDK's lower bound on the threshold.
    assert_eq!(
        rpc.err(&["vhost_controller_set_coalescing", "nope", "10", "1000"])
            .code,
        -19
    );
    assert_eq!(
        rpc.err(&["vhost_controller_set_coalescing", "c0", "10", "50"])
            .code,
        -32602
    );
    rpc.ok(&["vhost_controller_set_coalescing", "c0", "10", "1000"]);
    let c = rpc.json(&["vhost_get_controllers", "-n", "c0"]);
    assert_eq!(
        (
            c[0]["delay_base_us"].as_u64(),
            c[0]["iops_threshold"].as_u64()
        ),
        (Some(10), Some(1000))
    );
    // Malloc options spinblk does not have.
    let e = rpc.err(&["bdev_malloc_create", "-b", "m9", "-m", "8", "16", "512"]);
    assert_eq!(e.code, -32602, "{}", e.output);
    // iostat of an unknown bdev.
    assert_eq!(rpc.err(&["bdev_get_iostat", "--names", "nope"]).code, -19);
    assert_eq!(rpc.err(&["bdev_get_bdevs", "-b", "nope"]).code, -19);
    // framework_start_init: spinblk is always past init.
    assert_eq!(rpc.err(&["framework_start_init"]).code, -1);

    // What rpc.py cannot send, over a raw connection.
    let mut raw = RawRpc::connect(&target.socket_named("rpc.sock"));
    assert_eq!(
        raw.err("no_such_method", None),
        (-32601, "Method not found".into())
    );
    let (code, msg) = raw.err(
        "bdev_null_create",
        Some(json!({"name": "x", "block_size": 512, "num_blocks": 8, "bogus": 1})),
    );
    assert_eq!(code, -32602);
    assert!(msg.contains("bogus"), "{msg}");
    let (code, msg) = raw.err("bdev_null_create", Some(json!({"name": "x"})));
    assert_eq!(code, -32602);
    assert!(msg.contains("block_size"), "{msg}");
    assert_eq!(
        raw.err("bdev_null_create", Some(json!(["x", 512, 8]))).0,
        -32602
    );
    assert_eq!(
        raw.err(
            "bdev_null_create",
            Some(json!({"name": "x", "block_size": "512", "num_blocks": 8}))
        )
        .0,
        -32602
    );
    assert_eq!(raw.err("spdk_get_version", Some(json!({}))).0, -32602);
    assert_eq!(raw.err("vhost_delete_controller", None).0, -32602);
    // A batch: answers for the two calls with ids, none for the notification.
    raw.send_raw(
        br#"[{"jsonrpc":"2.0","method":"spdk_get_version","id":"a"},
            {"jsonrpc":"2.0","method":"bdev_get_bdevs"},
            {"jsonrpc":"2.0","method":"nope","id":"b"}]"#,
    );
    let batch = raw.read_answer().expect("batch answer");
    let batch = batch.as_array().expect("array");
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0]["id"], "a");
    assert_eq!(batch[1]["error"]["code"], -32601);
    // Two requests in one write, then one split over two writes.
    raw.send_raw(b"{\"method\":\"framework_wait_init\",\"id\":1}{\"method\":\"framework_wait_init\",\"id\":2}{\"method\":");
    assert_eq!(raw.read_answer().expect("1")["id"], 1);
    assert_eq!(raw.read_answer().expect("2")["id"], 2);
    raw.send_raw(b"\"framework_wait_init\",\"id\":3}");
    assert_eq!(raw.read_answer().expect("3")["result"], true);
    // Invalid request (not an object): -32600, the connection stays.
    raw.send_raw(b"[]");
    assert_eq!(raw.read_answer().expect("answer")["error"]["code"], -32600);
    // Invalid JSON: -32700 and the connection is closed (no resync point in a stream).
    raw.send_raw(b"{\"method\": \"spdk_get_version\", \"id\": 1,,}");
    assert_eq!(
        raw.read_answer().expect("parse error")["error"]["code"],
        -32700
    );
    assert!(
        raw.closed_within(Duration::from_secs(5)),
        "closed after a parse error"
    );

    // A huge request is refused and its connection closed, while another client is served.
    let mut huge = RawRpc::connect(&target.socket_named("rpc.sock"));
    let mut other = RawRpc::connect(&target.socket_named("rpc.sock"));
    huge.send_raw(b"{\"method\":\"bdev_get_bdevs\",\"params\":{\"name\":\"");
    let chunk = vec![b'a'; 256 * 1024];
    let started = Instant::now();
    let mut refused = false;
    for _ in 0..40 {
        // The server may close mid-way; a failed write means it did.
        if std::io::Write::write_all(&mut huge_stream(&huge), &chunk).is_err() {
            refused = true;
            break;
        }
        // Meanwhile other clients are answered at once.
        assert_eq!(other.ok("framework_wait_init", None), true);
    }
    if !refused {
        let a = huge.read_answer();
        refused = match a {
            None => true,
            Some(a) => a["error"]["code"] == -32700,
        };
    }
    assert!(refused, "a request over 4 MiB is refused");
    assert!(huge.closed_within(Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(30));
    // An endless request that never completes does not hold up others either.
    let mut slow = RawRpc::connect(&target.socket_named("rpc.sock"));
    slow.send_raw(b"{\"method\":\"spdk_get_version\",\"id\":1,\"params\":");
    for _ in 0..20 {
        assert!(other.ok("spdk_get_version", None)["version"].is_string());
    }
    drop(slow);
    // The target is fine after all of it.
    target.assert_running();
    rpc.ok(&["vhost_delete_controller", "c0"]);
    rpc.ok(&["bdev_null_delete", "n0"]);
}

/// The stream of a raw connection, for writes that may fail.
fn huge_stream(r: &RawRpc) -> std::os::unix::net::UnixStream {
    r.try_clone_stream()
}

#[test]
fn save_config_then_restart_with_json_rebuilds_the_same_objects() {
    let files = TempDir::new("rpc-saved");
    let img = image(files.path(), "disk.img", 16 * MIB);
    let img_s = img.to_str().expect("path").to_string();
    let saved_path = files.path().join("saved.json");
    let (bdevs_before, ctrls_before) = {
        let (mut target, rpc) = rpc_target(&["-m", "0x1"]);
        rpc.ok(&["bdev_null_create", "n0", "64", "4096"]);
        rpc.ok(&["bdev_malloc_create", "-b", "m0", "8", "512"]);
        rpc.ok(&["bdev_aio_create", &img_s, "a0", "512"]);
        rpc.ok(&[
            "vhost_create_blk_controller",
            "--cpumask",
            "0x1",
            "vn",
            "n0",
        ]);
        rpc.ok(&["vhost_create_blk_controller", "-r", "vm", "m0"]);
        rpc.ok(&["vhost_create_blk_controller", "va", "a0"]);
        rpc.ok(&["vhost_controller_set_coalescing", "va", "20", "5000"]);
        // Data on the file bdev, to read back after the restart.
        let mut c =
            Client::connect(&target.socket_named("va"), ClientConfig::default()).expect("connect");
        c.queue(0).write_ok(64 * 1024, &pattern(77, 8192));
        c.queue(0).flush();
        drop(c);
        // A non-default poll mode is part of the configuration too.
        let mut raw = RawRpc::connect(&target.socket_named("rpc.sock"));
        raw.ok("spinblk_set_poll_mode", Some(json!({"mode": "busy"})));
        // spinblk's own null option, which save_config must carry (SPDK's client has no flag).
        raw.ok(
            "bdev_null_create",
            Some(json!({"name": "n1", "num_blocks": 64, "block_size": 512, "read_zeroes": false})),
        );
        let saved = rpc.ok(&["save_config"]);
        std::fs::write(&saved_path, &saved).expect("save");
        let doc: Value = serde_json::from_str(&saved).expect("save_config writes JSON");
        let subsystems: Vec<&str> = doc["subsystems"]
            .as_array()
            .expect("subsystems")
            .iter()
            .filter_map(|s| s["subsystem"].as_str())
            .collect();
        assert_eq!(subsystems, vec!["spinblk", "bdev", "vhost_blk"]);
        let null_params = |name: &str| {
            doc["subsystems"][1]["config"]
                .as_array()
                .expect("bdev config")
                .iter()
                .find(|e| e["method"] == "bdev_null_create" && e["params"]["name"] == name)
                .map(|e| e["params"].clone())
                .expect("saved null bdev")
        };
        assert_eq!(null_params("n1")["read_zeroes"], json!(false));
        let shown = |name: &str| {
            rpc.json(&["bdev_get_bdevs", "-b", name])[0]["driver_specific"]["spinblk"]
                ["read_zeroes"]
                .clone()
        };
        assert_eq!((shown("n1"), shown("n0")), (json!(false), json!(true)));
        assert!(
            null_params("n0").get("read_zeroes").is_none(),
            "default left out"
        );
        assert_eq!(
            doc["subsystems"][0]["config"],
            json!([{"method": "spinblk_set_poll_mode", "params": {"mode": "busy"}}])
        );
        let before = (
            rpc.json(&["bdev_get_bdevs"]),
            rpc.json(&["vhost_get_controllers"]),
        );
        let (code, _) = target.stop_with(libc::SIGTERM);
        assert_eq!(code, Some(0));
        before
    };
    let json_arg = saved_path.to_str().expect("path").to_string();
    let target = Target::start_args(
        &[
            "-r",
            "{dir}/rpc.sock",
            "-S",
            "{dir}",
            "--cpus",
            "0",
            "--json",
            &json_arg,
        ],
        &["rpc.sock", "vn", "vm", "va"],
    );
    let rpc = SpdkRpc::new(&target.socket_named("rpc.sock"));
    let mut raw = RawRpc::connect(&target.socket_named("rpc.sock"));
    assert_eq!(raw.ok("spinblk_get_poll_mode", None)["mode"], "busy");
    raw.ok("spinblk_set_poll_mode", Some(json!({"mode": "adaptive"})));
    assert_eq!(
        raw.err("spinblk_set_poll_mode", Some(json!({"mode": "lazy"})))
            .0,
        -32602
    );
    let bdevs_after = rpc.json(&["bdev_get_bdevs"]);
    let key = |b: &Value| {
        (
            b["name"].clone(),
            b["uuid"].clone(),
            b["num_blocks"].clone(),
            b["block_size"].clone(),
            b["product_name"].clone(),
            b["claimed"].clone(),
        )
    };
    let list = |v: &Value| {
        v.as_array()
            .expect("array")
            .iter()
            .map(key)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list(&bdevs_after),
        list(&bdevs_before),
        "same bdevs, same uuids"
    );
    let ckey = |c: &Value| {
        (
            c["ctrlr"].clone(),
            c["cpumask"].clone(),
            c["backend_specific"]["block"].clone(),
            c["delay_base_us"].clone(),
            c["iops_threshold"].clone(),
        )
    };
    let clist = |v: &Value| {
        v.as_array()
            .expect("array")
            .iter()
            .map(ckey)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        clist(&rpc.json(&["vhost_get_controllers"])),
        clist(&ctrls_before)
    );
    // The file bdev still holds what was written before the restart; the others serve.
    let mut c =
        Client::connect(&target.socket_named("va"), ClientConfig::default()).expect("connect va");
    let got = c.queue(0).read_ok(64 * 1024, 8192);
    assert_bytes_eq(&got, &pattern(77, 8192), "data across the restart");
    drop(c);
    verified_io(&target.socket_named("vn"), 4096, true, 3);
    let mut ro = Client::connect(
        &target.socket_named("vm"),
        ClientConfig {
            read_only: true,
            ..ClientConfig::default()
        },
    )
    .expect("connect vm read-only");
    assert_eq!(ro.queue(0).read(0, 4096).0, 0);
    drop(ro);
    // save_config again gives the same document (same order, same parameters), once the poll
    // mode this test switched back is busy again.
    raw.ok("spinblk_set_poll_mode", Some(json!({"mode": "busy"})));
    let again = rpc.ok(&["save_config"]);
    raw.ok("spinblk_set_poll_mode", Some(json!({"mode": "adaptive"})));
    let first: Value =
        serde_json::from_str(&std::fs::read_to_string(&saved_path).expect("saved")).expect("json");
    assert_eq!(serde_json::from_str::<Value>(&again).expect("json"), first);
}

#[test]
fn a_config_written_by_spdk_loads() {
    let files = TempDir::new("rpc-spdkcfg");
    let img = image(files.path(), "aio.img", 4 * MIB);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spdk-vhost-config.json"),
    )
    .expect("fixture")
    .replace("@AIO_FILE@", img.to_str().expect("path"));
    let cfg = files.path().join("spdk.json");
    std::fs::write(&cfg, text).expect("write config");
    let target = Target::start_args(
        &[
            "-r",
            "{dir}/rpc.sock",
            "-S",
            "{dir}",
            "-m",
            "0x1",
            "--json",
            cfg.to_str().expect("path"),
        ],
        &["rpc.sock", "vhost.0", "vhost.1"],
    );
    let rpc = SpdkRpc::new(&target.socket_named("rpc.sock"));
    let bdevs = rpc.json(&["bdev_get_bdevs"]);
    let names: Vec<&str> = bdevs
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert_eq!(names, vec!["AIO0", "Malloc0", "Null0"]);
    let malloc = &bdevs[1];
    assert_eq!(malloc["uuid"], "4f1fa6a4-9c4e-4b8f-8b0e-0d4d2b7d3a11");
    assert_eq!(malloc["num_blocks"], 65536);
    verified_io(&target.socket_named("vhost.0"), 512, false, 1);
    verified_io(&target.socket_named("vhost.1"), 512, false, 2);
    let c = rpc.json(&["vhost_get_controllers", "-n", "vhost.1"]);
    assert_eq!(c[0]["delay_base_us"], 20);
}

#[test]
fn deleting_a_controller_under_a_connected_client_returns_quickly() {
    let (mut target, rpc) = rpc_target(&[]);
    rpc.ok(&["bdev_malloc_create", "-b", "m0", "16", "512"]);
    rpc.ok(&["vhost_create_blk_controller", "c0", "m0"]);
    let sock = target.socket_named("c0");
    let mut c = Client::connect(
        &sock,
        ClientConfig {
            num_queues: 2,
            ..ClientConfig::default()
        },
    )
    .expect("connect");
    c.queue(0).write_ok(0, &pattern(5, 4096));
    c.queue(1).write_ok(4096, &pattern(6, 4096));
    // The client stays connected (it never disconnects by itself).
    let started = Instant::now();
    rpc.ok(&["vhost_delete_controller", "c0"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "delete took {took:?}");
    assert!(!sock.exists(), "socket removed");
    target.assert_running();
    assert!(rpc.json(&["spdk_get_version"])["version"].is_string());
    // Claim released: the bdev can go, and its counts stayed.
    let st = rpc.json(&["bdev_get_iostat", "--names", "m0"]);
    assert_eq!(st["bdevs"][0]["num_write_ops"], 2);
    rpc.ok(&["bdev_malloc_delete", "m0"]);
    drop(c);
    // The same name can be used again at once.
    rpc.ok(&["bdev_null_create", "n0", "16", "512"]);
    rpc.ok(&["vhost_create_blk_controller", "c0", "n0"]);
    wait_for_socket(&sock, Duration::from_secs(5)).expect("socket");
    verified_io(&sock, 512, true, 9);
    rpc.ok(&["vhost_delete_controller", "c0"]);
    rpc.ok(&["bdev_null_delete", "n0"]);
}

/// The keys of an object, sorted.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn sorted(k: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// spdk_top decodes these answers with SPDK's strict object decoders (app/spdk_top/spdk_top.c:
/// rpc_core_info_decoders, rpc_core_thread_info_decoders, rpc_thread_info_decoders,
/// rpc_pollers_decoders): an unknown or a missing key makes it fail. The figures must be real.
#[test]
fn spdk_top_calls_answer_with_exactly_spdks_keys_and_real_figures() {
    let (target, rpc) = rpc_target(&[]);
    rpc.ok(&["bdev_malloc_create", "-b", "m0", "16", "512"]);
    rpc.ok(&["vhost_create_blk_controller", "c0", "m0"]);
    let mut c =
        Client::connect(&target.socket_named("c0"), ClientConfig::default()).expect("connect");
    for i in 0..200u64 {
        c.queue(0).write_ok(i * 4096, &pattern(i, 4096));
    }
    let mut raw = RawRpc::connect(&target.socket_named("rpc.sock"));
    assert_eq!(raw.ok("framework_wait_init", None), true);

    let r = raw.ok("framework_get_reactors", None);
    assert_eq!(keys(&r), sorted(&["tick_rate", "pid", "reactors"]));
    assert_eq!(r["pid"].as_u64(), Some(u64::from(target.pid())));
    let reactors = r["reactors"].as_array().expect("reactors");
    assert_eq!(reactors.len(), 1);
    let core = &reactors[0];
    assert_eq!(
        keys(core),
        sorted(&[
            "lcore",
            "numa_id",
            "tid",
            "busy",
            "idle",
            "in_interrupt",
            "irq",
            "sys",
            "usr",
            "lw_threads"
        ])
    );
    assert_eq!(core["lcore"], 0);
    let tid = core["tid"].as_u64().expect("tid");
    assert!(
        Path::new(&format!("/proc/{}/task/{tid}", target.pid())).exists(),
        "tid {tid} is one of spinblk's threads"
    );
    assert!(
        core["busy"].as_u64() > Some(0),
        "200 writes made it busy: {core}"
    );
    assert!(core["idle"].as_u64() > Some(0), "{core}");
    assert!(core["in_interrupt"].is_boolean());
    for t in core["lw_threads"].as_array().expect("lw_threads") {
        assert_eq!(keys(t), sorted(&["name", "id", "cpumask", "elapsed"]));
    }

    let s = raw.ok("thread_get_stats", None);
    assert_eq!(keys(&s), sorted(&["tick_rate", "threads"]));
    for t in s["threads"].as_array().expect("threads") {
        assert_eq!(
            keys(t),
            sorted(&[
                "name",
                "id",
                "cpumask",
                "busy",
                "idle",
                "active_pollers_count",
                "timed_pollers_count",
                "paused_pollers_count"
            ])
        );
        assert!(t["active_pollers_count"].as_u64() >= Some(1), "{t}");
    }

    let p = raw.ok("thread_get_pollers", None);
    assert_eq!(keys(&p), sorted(&["tick_rate", "threads"]));
    let mut polled = 0;
    for t in p["threads"].as_array().expect("threads") {
        assert_eq!(
            keys(t),
            sorted(&[
                "name",
                "id",
                "active_pollers",
                "timed_pollers",
                "paused_pollers"
            ])
        );
        for kind in ["active_pollers", "timed_pollers"] {
            for poller in t[kind].as_array().expect("pollers") {
                let mut want = vec!["name", "id", "state", "run_count", "busy_count"];
                if kind == "timed_pollers" {
                    want.push("period_ticks");
                }
                assert_eq!(keys(poller), sorted(&want));
                polled += poller["busy_count"].as_u64().unwrap_or(0);
            }
        }
    }
    assert!(polled > 0, "some poller was busy: {p}");

    let sched = raw.ok("framework_get_scheduler", None);
    assert!(sched["scheduler_period"].is_u64(), "{sched}");
    assert!(sched["scheduler_name"].is_string(), "{sched}");
    drop(c);
    rpc.ok(&["vhost_delete_controller", "c0"]);
}
