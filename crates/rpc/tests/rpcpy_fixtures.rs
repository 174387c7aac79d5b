//! Replays the exact bytes SPDK's rpc.py 26.9 sent for every method spinblk implements
//! (captured by scripts/rpc/capture.py into tests/fixtures/rpcpy-26.9) against a real target,
//! through the same framing and dispatch as the server, cut into pieces of varying size as a
//! socket would deliver them. Every request must be accepted; framework_start_init must be
//! refused with SPDK's invalid-state error, since spinblk is always initialized.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use spinblk_protocol::SocketOptions;
use spinblk_rpc::framing::Framer;
use spinblk_rpc::{handle_frame, Outcome, SpdkMethods};
use spinblk_target::{Target, TargetOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rpcpy-26.9")
}

/// Feeds `raw` to a framer in pieces of 1, 2, 3, ... bytes and answers every value.
fn replay(methods: &SpdkMethods, raw: &[u8]) -> Vec<Value> {
    let mut framer = Framer::new(spinblk_rpc::MAX_REQUEST_BYTES);
    let mut answers = Vec::new();
    let mut at = 0;
    let mut step = 1;
    while at < raw.len() {
        let end = (at + step).min(raw.len());
        framer.feed(&raw[at..end]);
        at = end;
        step = step % 97 + 1;
        while let Some(frame) = framer.next_value().expect("rpc.py sends valid JSON") {
            match handle_frame(&frame, methods) {
                Outcome::Reply(b) => answers.push(serde_json::from_slice(&b).expect("answer")),
                Outcome::Nothing => {}
                Outcome::ReplyAndClose(b) => panic!(
                    "connection closed on rpc.py's request: {}",
                    String::from_utf8_lossy(&b)
                ),
            }
        }
    }
    assert!(framer.is_idle(), "nothing left over");
    answers
}

#[test]
fn every_captured_rpcpy_request_is_accepted() {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rpcpy-fixtures-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    std::fs::write(scratch.join("disk.img"), vec![0u8; 1 << 20]).expect("disk image");
    let target = Arc::new(
        Target::start(TargetOptions {
            // The captures name core 0 in their cpumasks.
            cores: vec![0],
            socket_dir: scratch.clone(),
            socket: SocketOptions::default(),
            poll_mode: spinblk_target::PollMode::default(),
            batch_wait: spinblk_target::DEFAULT_BATCH_WAIT,
        })
        .expect("target starts"),
    );
    let methods = SpdkMethods::new(Arc::clone(&target));
    let index: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("index.json")).expect("index.json"),
    )
    .expect("index is JSON");
    assert!(index.len() >= 40, "every method has a capture");
    let mut seen_methods = std::collections::BTreeSet::new();
    for entry in &index {
        let file = entry["file"].as_str().expect("file");
        let raw = std::fs::read(fixtures().join(file)).expect("capture");
        let raw = String::from_utf8(raw)
            .expect("utf8")
            .replace("@TMP@", &scratch.display().to_string());
        let answers = replay(&methods, raw.as_bytes());
        let sent: Vec<&str> = entry["methods"]
            .as_array()
            .expect("methods")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(answers.len(), sent.len(), "{file}: one answer per request");
        for (answer, method) in answers.iter().zip(&sent) {
            seen_methods.insert(method.to_string());
            if *method == "framework_start_init" {
                assert_eq!(answer["error"]["code"], -1, "{file}: {answer}");
                continue;
            }
            assert!(
                answer.get("result").is_some(),
                "{file} ({}): {method} refused: {answer}",
                entry["command"]
            );
        }
    }
    // Everything rpc.py can send for what spinblk implements was exercised; the RBD methods'
    // captures (rpcpy-26.9-rbd) need a Ceph cluster and are replayed by
    // crates/launcher/tests/rbd.rs.
    let rbd_index: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(
            fixtures()
                .with_file_name("rpcpy-26.9-rbd")
                .join("index.json"),
        )
        .expect("rpcpy-26.9-rbd/index.json"),
    )
    .expect("index is JSON");
    let rbd_methods: std::collections::BTreeSet<&str> = rbd_index
        .iter()
        .flat_map(|e| e["methods"].as_array().expect("methods").iter())
        .filter_map(Value::as_str)
        .collect();
    for m in spinblk_rpc::METHODS
        .iter()
        .filter(|m| !m.starts_with("spinblk_"))
    {
        if m.starts_with("bdev_rbd_") {
            assert!(rbd_methods.contains(*m), "no RBD capture exercises {m}");
        } else {
            assert!(seen_methods.contains(*m), "no capture exercises {m}");
        }
    }
    // The objects the captures created are gone again, except load_config's.
    let names: Vec<String> = target
        .bdevs()
        .list()
        .iter()
        .map(|b| b.name().to_string())
        .collect();
    assert_eq!(names, vec!["cfg0".to_string()]);
    assert_eq!(target.controllers().len(), 1);
    target.shutdown();
    let _ = std::fs::remove_dir_all(&scratch);
}
