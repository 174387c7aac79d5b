//! Online resize driven by SPDK's own client (`spdk-rpc`): a null bdev (`bdev_null_resize`), a
//! malloc bdev (`spinblk_bdev_resize`) and a file (grown on the host, then `bdev_aio_rescan` /
//! `bdev_uring_rescan`) grow while a libblkio client is connected; the connected client reads
//! the new capacity from the config space and its requests past the old end succeed at once, a
//! client that reconnects sees the new capacity, data written in the new area reads back (and is
//! in the file), and save_config carries the new size. Shrinking a bdev that a controller serves
//! is refused unless forced.

mod rpc_common;

use std::path::Path;

use rpc_common::SpdkRpc;
use serde_json::Value;
use spinblk_testkit::{
    assert_bytes_eq, assert_zeroes, pattern, Client, ClientConfig, Target, TempDir, MIB,
};

fn rpc_target() -> (Target, SpdkRpc) {
    let target = Target::start_args(
        &["-r", "{dir}/rpc.sock", "-S", "{dir}", "--cpus", "0"],
        &["rpc.sock"],
    );
    let rpc = SpdkRpc::new(&target.socket_named("rpc.sock"));
    (target, rpc)
}

fn connect(target: &Target, ctrlr: &str) -> Client {
    Client::connect(&target.socket_named(ctrlr), ClientConfig::default())
        .unwrap_or_else(|e| panic!("connect {ctrlr}: {e}"))
}

fn num_blocks(rpc: &SpdkRpc, bdev: &str) -> u64 {
    rpc.json(&["bdev_get_bdevs", "-b", bdev])[0]["num_blocks"]
        .as_u64()
        .expect("num_blocks")
}

/// The create entry save_config writes for `bdev`.
fn saved_entry(rpc: &SpdkRpc, bdev: &str) -> Value {
    let doc: Value = serde_json::from_str(&rpc.ok(&["save_config"])).expect("JSON");
    doc["subsystems"]
        .as_array()
        .expect("subsystems")
        .iter()
        .filter(|s| s["subsystem"] == "bdev")
        .flat_map(|s| s["config"].as_array().cloned().unwrap_or_default())
        .find(|e| {
            e["params"]["name"] == bdev
                && e["method"].as_str().is_some_and(|m| m.ends_with("_create"))
        })
        .unwrap_or_else(|| panic!("no create entry for {bdev}"))
}

/// The controller's capacity as vhost_get_controllers reports it.
fn ctrl_capacity(rpc: &SpdkRpc, ctrlr: &str) -> u64 {
    rpc.json(&["vhost_get_controllers", "-n", ctrlr])[0]["backend_specific"]["spinblk"]["capacity"]
        .as_u64()
        .expect("capacity")
}

#[test]
fn null_bdev_grows_under_a_connected_client() {
    let (target, rpc) = rpc_target();
    rpc.ok(&["bdev_null_create", "n0", "64", "512"]);
    rpc.ok(&["vhost_create_blk_controller", "vn", "n0"]);
    let mut c = connect(&target, "vn");
    assert_eq!(c.capacity(), 64 * MIB);
    {
        let mut q = c.queue(0);
        assert_eq!(q.read(64 * MIB - 4096, 4096).0, 0, "last block before");
        assert_ne!(
            q.read(64 * MIB, 4096).0,
            0,
            "past the end before the resize"
        );
    }
    rpc.ok(&["bdev_null_resize", "n0", "128"]);
    assert_eq!(num_blocks(&rpc, "n0"), 128 * MIB / 512);
    assert_eq!(ctrl_capacity(&rpc, "vn"), 128 * MIB);
    // The connected client reads the config space afresh, and the queue takes requests up to
    // the new end at once.
    assert_eq!(
        c.capacity(),
        128 * MIB,
        "connected client, new config space"
    );
    {
        let mut q = c.queue(0);
        let got = q.read_ok(64 * MIB, 4096);
        assert_zeroes(&got, "a null disk past the old end");
        q.write_ok(100 * MIB, &pattern(1, 8192));
        assert_eq!(q.read(128 * MIB - 512, 512).0, 0, "last block after");
        assert_ne!(q.read(128 * MIB, 512).0, 0, "past the new end");
    }
    drop(c);
    let c = connect(&target, "vn");
    assert_eq!(c.capacity(), 128 * MIB, "a client that reconnects");
    drop(c);

    // SPDK's bdev_null_resize never shrinks.
    let e = rpc.err(&["bdev_null_resize", "n0", "32"]);
    assert_eq!(e.code, -libc::EINVAL as i64, "{}", e.output);
    // spinblk_bdev_resize shrinks only with force while a controller serves the bdev.
    let mut raw = rpc_common::RawRpc::connect(&target.socket_named("rpc.sock"));
    let (code, msg) = raw.err(
        "spinblk_bdev_resize",
        Some(serde_json::json!({"name": "n0", "new_size": 32})),
    );
    assert_eq!(code, -libc::EBUSY as i64, "{msg}");
    assert!(msg.contains("vn"), "names the controller: {msg}");
    assert_eq!(num_blocks(&rpc, "n0"), 128 * MIB / 512, "not shrunk");
    raw.ok(
        "spinblk_bdev_resize",
        Some(serde_json::json!({"name": "n0", "new_size": 32, "force": true})),
    );
    assert_eq!(connect(&target, "vn").capacity(), 32 * MIB, "forced shrink");
    // Bad sizes and kinds.
    let e = rpc.err(&["bdev_null_resize", "nope", "64"]);
    assert_eq!(e.code, -libc::ENODEV as i64, "{}", e.output);
    let e = rpc.err(&["bdev_null_resize", "n0", "0"]);
    assert_eq!(e.code, -libc::EINVAL as i64, "{}", e.output);
    rpc.ok(&["bdev_malloc_create", "-b", "m0", "8", "512"]);
    let e = rpc.err(&["bdev_null_resize", "m0", "16"]);
    assert_eq!(
        e.code,
        -libc::EINVAL as i64,
        "not a null bdev: {}",
        e.output
    );
    // The saved configuration carries the size now.
    assert_eq!(
        saved_entry(&rpc, "n0")["params"]["num_blocks"],
        32 * MIB / 512
    );
}

#[test]
fn malloc_bdev_grows_and_keeps_its_data() {
    let (target, rpc) = rpc_target();
    rpc.ok(&["bdev_malloc_create", "-b", "m0", "32", "4096"]);
    rpc.ok(&["vhost_create_blk_controller", "vm", "m0"]);
    let old = pattern(11, 64 << 10);
    let mut c = connect(&target, "vm");
    c.queue(0).write_ok(32 * MIB - (64 << 10), &old);
    let mut raw = rpc_common::RawRpc::connect(&target.socket_named("rpc.sock"));
    raw.ok(
        "spinblk_bdev_resize",
        Some(serde_json::json!({"name": "m0", "new_size": 64})),
    );
    assert_eq!(num_blocks(&rpc, "m0"), 64 * MIB / 4096);
    assert_eq!(c.capacity(), 64 * MIB);
    let new = pattern(12, 256 << 10);
    {
        let mut q = c.queue(0);
        q.write_ok(48 * MIB, &new);
        assert_bytes_eq(
            &q.read_ok(48 * MIB, new.len()),
            &new,
            "written past the old end",
        );
        assert_zeroes(&q.read_ok(32 * MIB, 64 << 10), "grown space reads zeroes");
        assert_bytes_eq(
            &q.read_ok(32 * MIB - (64 << 10), old.len()),
            &old,
            "old data",
        );
    }
    drop(c);
    let mut c = connect(&target, "vm");
    assert_eq!(c.capacity(), 64 * MIB, "after reconnecting");
    assert_bytes_eq(
        &c.queue(0).read_ok(48 * MIB, new.len()),
        &new,
        "after reconnecting",
    );
    drop(c);
    // A file bdev is not resized by the spinblk method (its file decides).
    let files = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "resize-kinds");
    let img = files.path().join("f.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(4 * MIB))
        .expect("image");
    rpc.ok(&["bdev_aio_create", img.to_str().expect("path"), "a0"]);
    let (code, _) = raw.err(
        "spinblk_bdev_resize",
        Some(serde_json::json!({"name": "a0", "new_size": 8})),
    );
    assert_eq!(code, -libc::ENOTSUP as i64);
    // Beyond the reserve a malloc bdev cannot grow (the default reserve is at least 64 GiB).
    let (code, msg) = raw.err(
        "spinblk_bdev_resize",
        Some(serde_json::json!({"name": "m0", "new_size": 1u64 << 30})),
    );
    assert!(
        code == -libc::EINVAL as i64 || code == -32602,
        "{code} {msg}"
    );
    let saved = saved_entry(&rpc, "m0");
    assert_eq!(saved["method"], "bdev_malloc_create");
    assert_eq!(saved["params"]["num_blocks"], 64 * MIB / 4096);
}

fn grow(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("resize the image");
}

#[test]
fn file_bdev_follows_its_file_after_a_rescan() {
    let (target, rpc) = rpc_target();
    let files = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "resize-files");
    // On the real disk next to the target (O_DIRECT), like the other file tests.
    let img = files.path().join("grow.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("image");
    let p = img.to_str().expect("path");
    rpc.ok(&["bdev_aio_create", p, "a0", "512"]);
    rpc.ok(&["vhost_create_blk_controller", "va", "a0"]);
    let mut c = connect(&target, "va");
    assert_eq!(c.capacity(), 16 * MIB);
    // The size is re-read only when asked.
    grow(&img, 32 * MIB);
    assert_eq!(num_blocks(&rpc, "a0"), 16 * MIB / 512, "before the rescan");
    assert_ne!(
        c.queue(0).read(24 * MIB, 4096).0,
        0,
        "past the end before the rescan"
    );
    rpc.ok(&["bdev_aio_rescan", "a0"]);
    assert_eq!(num_blocks(&rpc, "a0"), 32 * MIB / 512);
    assert_eq!(c.capacity(), 32 * MIB, "connected client after the rescan");
    let data = pattern(21, 128 << 10);
    {
        let mut q = c.queue(0);
        q.write_ok(24 * MIB, &data);
        assert_bytes_eq(&q.read_ok(24 * MIB, data.len()), &data, "new area");
        q.flush();
    }
    drop(c);
    let mut c = connect(&target, "va");
    assert_eq!(c.capacity(), 32 * MIB, "after reconnecting");
    assert_bytes_eq(
        &c.queue(0).read_ok(24 * MIB, data.len()),
        &data,
        "after reconnecting",
    );
    drop(c);
    // The data is in the file where the guest put it.
    let bytes = std::fs::read(&img).expect("read image");
    assert_bytes_eq(
        &bytes[24 * MIB as usize..24 * MIB as usize + data.len()],
        &data,
        "the image file",
    );
    // A file that shrinks under a served bdev is not followed.
    grow(&img, 20 * MIB);
    let e = rpc.err(&["bdev_aio_rescan", "a0"]);
    assert_eq!(e.code, -libc::EBUSY as i64, "{}", e.output);
    assert_eq!(num_blocks(&rpc, "a0"), 32 * MIB / 512);
    // The method must match the module (SPDK: -ENODEV).
    let e = rpc.err(&["bdev_uring_rescan", "a0"]);
    assert_eq!(e.code, -libc::ENODEV as i64, "{}", e.output);
    // Once no controller serves it, a smaller file is followed too.
    rpc.ok(&["vhost_delete_controller", "va"]);
    rpc.ok(&["bdev_aio_rescan", "a0"]);
    assert_eq!(num_blocks(&rpc, "a0"), 20 * MIB / 512);

    // bdev_uring_rescan on a uring bdev, with a second controller following it.
    let img2 = files.path().join("grow2.img");
    std::fs::File::create(&img2)
        .and_then(|f| f.set_len(8 * MIB))
        .expect("image");
    rpc.ok(&["bdev_uring_create", img2.to_str().expect("path"), "u0"]);
    rpc.ok(&["vhost_create_blk_controller", "vu", "u0"]);
    let c = connect(&target, "vu");
    grow(&img2, 12 * MIB);
    rpc.ok(&["bdev_uring_rescan", "u0"]);
    assert_eq!(c.capacity(), 12 * MIB);
    assert_eq!(saved_entry(&rpc, "u0")["method"], "bdev_uring_create");
}
