//! The io_uring file bdev served by the real target to a libblkio client: data reaches the file,
//! misaligned guest buffers take the bounce path, discard punches holes, kernel errors become
//! IOERR for that request only, and a killed target restarted on the same file serves the same
//! data.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use spinblk_testkit::*;

/// A sparse image file of `size` bytes in a fresh directory on the build disk (not tmpfs).
fn image(tag: &str, size: u64) -> (TempDirIn, PathBuf) {
    let dir = TempDirIn::new(Path::new(env!("CARGO_TARGET_TMPDIR")), tag);
    let path = dir.0.join("disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(size))
        .expect("create image");
    (dir, path)
}

/// A directory removed on drop (and unmounted first if something is mounted on it).
struct TempDirIn(PathBuf);

impl TempDirIn {
    fn new(parent: &Path, tag: &str) -> Self {
        let p = parent.join(format!("file-bdev-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create test dir");
        TempDirIn(p)
    }
}

impl Drop for TempDirIn {
    fn drop(&mut self) {
        let quiet_umount = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        // A file the stopped target had open can still be referenced for a moment (io_uring
        // workers finish after the process): then detach the mount, which goes away when
        // the last reference does, instead of leaving it behind (CI once did).
        if !quiet_umount(&[]) {
            quiet_umount(&["-l"]);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_file(path: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, off))
        .expect("read image");
    buf
}

#[test]
fn writes_reach_the_file_and_read_back() {
    let (_dir, img) = image("rw", 32 * MIB);
    let img_arg = img.display().to_string();
    let mut target = Target::start_args(
        &["--socket", "{dir}/vhost.sock", "--file", &img_arg],
        &["vhost.sock"],
    );
    let mut c = target.connect();
    assert_eq!(c.capacity(), 32 * MIB);
    let mut q = c.queue(0);
    for (i, &(off, len)) in [
        (0u64, 512usize),
        (4096, 65536),
        (MIB + 512, 1536),
        (32 * MIB - 4096, 4096),
        (5 * MIB, 1 << 20),
    ]
    .iter()
    .enumerate()
    {
        let data = pattern(i as u64, len);
        q.write_ok(off, &data);
        assert!(q.read_ok(off, len) == data, "read back at {off}");
        assert!(
            read_file(&img, off, len) == data,
            "the file holds the data at {off}"
        );
    }
    assert_eq!(q.flush(), 0);
    // Segments of odd sizes at odd addresses: the O_DIRECT channel bounces them.
    let a = pattern(100, 100);
    let b = pattern(101, 924);
    let d = pattern(102, 3072);
    assert_eq!(q.writev(8 * MIB, &[&a, &b, &d]), 0);
    let (ret, got) = q.readv(8 * MIB, &[300, 724, 3072]);
    assert_eq!(ret, 0);
    assert!(
        got == [a.as_slice(), &b, &d].concat(),
        "misaligned segments round-trip"
    );
    drop(c);
    target.assert_running();
}

#[test]
fn discard_punches_a_hole_and_write_zeroes_zeroes() {
    let (_dir, img) = image("discard", 16 * MIB);
    let img_arg = img.display().to_string();
    let target = Target::start_args(
        &["--socket", "{dir}/vhost.sock", "--file", &img_arg],
        &["vhost.sock"],
    );
    let mut c = target.connect();
    let mut q = c.queue(0);
    let data = pattern(7, 4 * MIB as usize);
    q.write_ok(0, &data);
    assert_eq!(q.flush(), 0);
    let blocks_before = std::fs::metadata(&img).expect("stat").blocks();
    assert_eq!(q.discard(MIB, 2 * MIB), 0);
    assert!(
        q.read_ok(MIB, 2 * MIB as usize).iter().all(|&b| b == 0),
        "discarded range reads zeroes"
    );
    assert!(
        q.read_ok(0, MIB as usize) == data[..MIB as usize],
        "data before the hole kept"
    );
    assert!(
        q.read_ok(3 * MIB, MIB as usize) == data[3 * MIB as usize..],
        "data after the hole kept"
    );
    let blocks_after = std::fs::metadata(&img).expect("stat").blocks();
    assert!(
        blocks_after + 2 * MIB / 512 <= blocks_before,
        "2 MiB deallocated: {blocks_before} -> {blocks_after} blocks"
    );
    assert_eq!(q.write_zeroes(3 * MIB, 4096, blkio::ReqFlags::empty()), 0);
    assert!(q.read_ok(3 * MIB, 4096).iter().all(|&b| b == 0));
    assert!(read_file(&img, 3 * MIB, 4096).iter().all(|&b| b == 0));
}

#[test]
fn enospc_fails_only_the_writes_that_hit_it() {
    // A 1 MiB tmpfs holding a 16 MiB sparse image: writes past 1 MiB of real data get ENOSPC.
    let dir = TempDirIn::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "enospc");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1M", "tmpfs"])
        .arg(&dir.0)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // Not a silent pass: only an explicit opt-out skips it (the README's test command runs
        // as root, where the mount works).
        let why = "cannot mount a tmpfs here (needs root), no way to inject ENOSPC";
        assert!(
            std::env::var("SPINBLK_SKIP_ROOT_TESTS").as_deref() == Ok("1"),
            "{why} (set SPINBLK_SKIP_ROOT_TESTS=1 to skip this test)"
        );
        eprintln!("SKIPPED (SPINBLK_SKIP_ROOT_TESTS=1): {why}");
        return;
    }
    let img = dir.0.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("create image");
    let img_arg = img.display().to_string();
    let mut target = Target::start_args(
        &["--socket", "{dir}/vhost.sock", "--file", &img_arg],
        &["vhost.sock"],
    );
    let mut c = target.connect();
    let mut q = c.queue(0);
    let first = pattern(1, 256 << 10);
    q.write_ok(0, &first);
    let mut failures = 0;
    for k in 1..16u64 {
        if q.write(k * MIB, &pattern(k, 512 << 10)) != 0 {
            failures += 1;
        }
    }
    assert!(failures > 0, "a full filesystem must fail writes");
    // The target keeps serving: earlier data reads back, later reads work.
    assert!(
        q.read_ok(0, 256 << 10) == first,
        "data written before the error is intact"
    );
    assert_eq!(q.read(15 * MIB, 4096).0, 0);
    drop(c);
    target.assert_running();
    let (code, out) = target.stop_with(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("io_errors=") && !out.contains("queue=total connected=false read_ops=0"),
        "{out}"
    );
}

#[test]
fn killed_target_restarted_on_the_same_file_serves_the_same_data() {
    let (_dir, img) = image("restart", 16 * MIB);
    let img_arg = img.display().to_string();
    let data = pattern(42, 2 * MIB as usize);
    {
        let mut target = Target::start_args(
            &["--socket", "{dir}/vhost.sock", "--file", &img_arg],
            &["vhost.sock"],
        );
        let mut c = target.connect();
        c.queue(0).write_ok(MIB, &data);
        let (code, _) = target.stop_with(libc::SIGKILL);
        assert_eq!(code, None, "killed by a signal");
    }
    let target = Target::start_args(
        &["--socket", "{dir}/vhost.sock", "--file", &img_arg],
        &["vhost.sock"],
    );
    let mut c = target.connect();
    assert!(
        c.queue(0).read_ok(MIB, 2 * MIB as usize) == data,
        "completed writes survive SIGKILL"
    );
}

#[test]
fn unusable_files_are_refused_with_one_line() {
    let (_dir, img) = image("odd", 1000);
    let out = Command::new(env!("CARGO_BIN_EXE_spinblk"))
        .args(["--socket", "/tmp/spinblk-odd.sock", "--file"])
        .arg(&img)
        .output()
        .expect("run spinblk");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("multiple") || err.contains("block size"),
        "says why: {err}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_spinblk"))
        .args([
            "--socket",
            "/tmp/spinblk-odd.sock",
            "--file",
            "/nonexistent/disk.img",
        ])
        .output()
        .expect("run spinblk");
    assert_ne!(missing.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/disk.img"));
}
