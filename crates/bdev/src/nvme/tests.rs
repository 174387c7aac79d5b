//! Tests of the NVMe bdev's open-time checks that need no NVMe device. Data-path tests against a
//! real (emulated) namespace run in a guest: scripts/nvme-vm-test.sh.

use super::*;

#[test]
fn generic_char_device_names() {
    for ok in ["ng0n1", "ng12n3", "ng0n65535"] {
        assert!(is_ng_name(ok), "{ok}");
    }
    for bad in [
        "nvme0n1", "ng0", "ngn1", "ng0n", "ng0n1p1", "ng0c1n1", "ng", "xng0n1",
    ] {
        assert!(!is_ng_name(bad), "{bad}");
    }
    assert_eq!(ng_name_for_block("nvme0n1").as_deref(), Some("ng0n1"));
    assert_eq!(ng_name_for_block("nvme3n12").as_deref(), Some("ng3n12"));
    assert_eq!(
        ng_name_for_block("nvme0n1p2"),
        None,
        "partitions have no char device"
    );
    assert_eq!(ng_name_for_block("nvme0c1n1"), None);
    assert_eq!(ng_name_for_block("sda"), None);
}

#[test]
fn proc_devices_parsing() {
    let text = "Character devices:\n  1 mem\n 10 misc\n239 nvme-generic\n240 nvme\n\n\
                Block devices:\n  7 loop\n259 blkext\n238 nvme-generic\n";
    assert_eq!(char_major(text, "nvme-generic"), Some(239));
    assert_eq!(char_major(text, "nvme"), Some(240));
    assert_eq!(
        char_major(text, "loop"),
        None,
        "a block major is not a char major"
    );
    assert_eq!(char_major("", "nvme-generic"), None);
}

fn open_err(path: &Path) -> BdevError {
    match NvmeBdev::open(path, NvmeOptions::default()) {
        Ok(_) => panic!("{} opened as an NVMe namespace", path.display()),
        Err(e) => e,
    }
}

#[test]
fn refuses_what_is_not_an_nvme_generic_char_device() {
    // A char device of another driver.
    let err = open_err(Path::new("/dev/null"));
    eprintln!("{err}");
    assert!(
        matches!(
            err,
            BdevError::Nvme {
                error: NvmeError::NotNvmeGeneric(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/dev/ng0n1"), "{err}");

    // A regular file and a directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("disk.img");
    std::fs::write(&file, [0u8; 4096]).expect("write");
    for p in [file.as_path(), dir.path()] {
        let err = open_err(p);
        eprintln!("{err}");
        assert!(
            matches!(
                err,
                BdevError::Nvme {
                    error: NvmeError::NotCharDevice,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("not a character device"), "{err}");
    }

    // Missing.
    let err = open_err(&dir.path().join("ng0n1"));
    assert!(matches!(err, BdevError::Open { .. }), "{err}");
}

#[test]
fn block_device_error_names_the_char_device() {
    let e = NvmeError::BlockDevice {
        suggestion: Some(PathBuf::from("/dev/ng0n1")),
    };
    let msg = BdevError::Nvme {
        path: PathBuf::from("/dev/nvme0n1"),
        error: e,
    }
    .to_string();
    assert!(msg.starts_with("/dev/nvme0n1: "), "{msg}");
    assert!(msg.contains("(/dev/ng0n1)"), "{msg}");
}

#[test]
fn error_messages_say_what_to_do() {
    let cases: Vec<(NvmeError, &str)> = vec![
        (
            NvmeError::Metadata {
                ms: 8,
                lba_format: 2,
            },
            "8 bytes of metadata",
        ),
        (NvmeError::BlockSize { lbads: 10 }, "only 512 and 4096"),
        (
            NvmeError::NoPollQueues("io_poll reads 0".into()),
            "nvme driver has no poll queues: load nvme with poll_queues=N",
        ),
        (
            NvmeError::ProbeTimeout {
                poll: true,
                waited: Duration::from_secs(10),
            },
            "poll_queues=N",
        ),
        (
            NvmeError::PassthroughUnsupported("x".into()),
            "io_uring NVMe passthrough is not available",
        ),
    ];
    for (e, want) in cases {
        let msg = e.to_string();
        eprintln!("{msg}");
        assert!(msg.contains(want), "{msg}");
    }
}

#[test]
fn options_default() {
    let o = NvmeOptions::default();
    assert!(!o.poll && !o.read_only);
}
