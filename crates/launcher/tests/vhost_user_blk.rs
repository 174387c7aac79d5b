//! End-to-end tests: the real `spinblk` binary serving a vhost-user-blk socket, driven by
//! libblkio's `virtio-blk-vhost-user` driver.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spinblk_testkit::blkio::{Errno, ReqFlags};
use spinblk_testkit::*;

const DISK: u64 = 64 * MIB;

fn start_malloc(bs: u32) -> Target {
    Target::start(TargetConfig::malloc(DISK).block_size(bs))
}

// ---------------------------------------------------------------------------------------------
// Geometry

fn check_geometry(config: TargetConfig, bs: u64) {
    let mut target = Target::start(config.clone());
    let client = target.connect();
    assert_eq!(
        client.capacity(),
        config.expected_capacity(),
        "capacity property"
    );
    let align = client
        .blkio()
        .get_i32("request-alignment")
        .expect("request-alignment property");
    assert_eq!(align as u64, bs, "request-alignment property");
    drop(client);
    target.assert_running();
}

#[test]
fn capacity_and_request_alignment_512() {
    check_geometry(TargetConfig::malloc(DISK).block_size(512), 512);
}

#[test]
fn capacity_and_request_alignment_4096() {
    // 65536K, so the K suffix is exercised too.
    check_geometry(TargetConfig::malloc(64 * 1024 * KIB).block_size(4096), 4096);
}

#[test]
fn capacity_with_gigabyte_suffix_and_default_block_size() {
    // Passed as "2G"; the malloc bdev reserves memory lazily, so this costs nothing.
    check_geometry(TargetConfig::malloc(2 * GIB).serial("spinblk-test"), 512);
}

#[test]
fn default_backend_is_a_1g_malloc_disk() {
    let mut config = TargetConfig::new(Backend::Default);
    config.cpus = Some("0".to_string());
    let mut target = Target::start(config);
    let mut client = target.connect();
    assert_eq!(client.capacity(), GIB, "default capacity");
    // It is a malloc disk: data written reads back.
    let mut q = client.queue(0);
    let data = pattern(1, 8192);
    q.write_ok(GIB - 8192, &data);
    assert_bytes_eq(&q.read_ok(GIB - 8192, 8192), &data, "last 8 KiB");
    drop(client);
    target.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Read after write

/// Writes many (offset, size) combinations with a distinct pattern each, reading every one back
/// at once (with a block of context either side) and finally comparing the whole disk with a
/// model, so stray writes anywhere are caught too.
fn read_after_write(bs: u32) {
    let bs = u64::from(bs);
    let mut target = start_malloc(bs as u32);
    let mut client = target.connect();
    let cap = client.capacity();
    assert_eq!(cap, DISK);
    let mut model = vec![0u8; cap as usize];
    let mut rng = Rng::new(bs);
    let mut q = client.queue(0);

    let mut writes: Vec<(u64, u64)> = Vec::new();
    let block_counts = [1u64, 2, 3, 7, 16, 31, 64, 255];
    let mut sizes: Vec<u64> = block_counts.iter().map(|n| n * bs).collect();
    sizes.extend([MIB - bs, MIB]);
    for &size in &sizes {
        let blocks = (cap - size) / bs + 1;
        writes.push((0, size)); // first block(s)
        writes.push((cap - size, size)); // last block(s)
        writes.push((rng.below(blocks) * bs, size)); // somewhere
        if size > bs {
            writes.push((MIB - bs, size)); // across a 1 MiB boundary
        }
    }
    for _ in 0..40 {
        let size = (rng.below(64) + 1) * bs;
        writes.push((rng.below((cap - size) / bs + 1) * bs, size));
    }

    for (i, &(off, size)) in writes.iter().enumerate() {
        let data = pattern(1000 + i as u64, size as usize);
        q.write_ok(off, &data);
        model[off as usize..(off + size) as usize].copy_from_slice(&data);

        let got = q.read_ok(off, size as usize);
        assert_bytes_eq(&got, &data, &format!("write #{i}: {size} bytes at {off}"));

        let lo = off.saturating_sub(bs);
        let hi = (off + size + bs).min(cap);
        let got = q.read_ok(lo, (hi - lo) as usize);
        assert_bytes_eq(
            &got,
            &model[lo as usize..hi as usize],
            &format!("write #{i}: {size} bytes at {off}, with neighbours {lo}..{hi}"),
        );
    }

    for off in (0..cap).step_by(MIB as usize) {
        let got = q.read_ok(off, MIB as usize);
        assert_bytes_eq(
            &got,
            &model[off as usize..(off + MIB) as usize],
            &format!("final scan, 1 MiB at {off}"),
        );
    }
    drop(client);
    target.assert_running();
}

#[test]
fn read_after_write_many_offsets_and_sizes_512() {
    read_after_write(512);
}

#[test]
fn read_after_write_many_offsets_and_sizes_4096() {
    read_after_write(4096);
}

/// Multi-segment writes (writev) read back with plain reads and with differently segmented
/// readv, including segments that are not multiples of 512 bytes.
fn multi_segment(bs: u32) {
    let bs_u = bs as usize;
    let mut target = start_malloc(bs);
    let mut client = target.connect();
    let limits = client.limits;
    let mut q = client.queue(0);

    let mut cases: Vec<Vec<usize>> = vec![
        vec![bs_u, bs_u],
        vec![bs_u, 2 * bs_u, bs_u, 4 * bs_u],
        vec![
            bs_u,
            3 * bs_u,
            2 * bs_u,
            8 * bs_u,
            bs_u,
            5 * bs_u,
            2 * bs_u,
            10 * bs_u,
        ],
        // Odd segment sizes whose total is three blocks.
        vec![100, bs_u - 100, bs_u + 37, bs_u - 37],
        // 1 MiB in 16 segments.
        vec![64 << 10; 16],
    ];
    if limits.max_segments > 1 {
        cases.retain(|c| {
            let ok = c.len() <= limits.max_segments;
            if !ok {
                eprintln!(
                    "skipping a {}-segment case: target advertises max-segments {}",
                    c.len(),
                    limits.max_segments
                );
            }
            ok
        });
    }
    if limits.max_segment_len > 0 {
        cases.retain(|c| c.iter().all(|&l| l <= limits.max_segment_len));
    }
    assert!(cases.len() >= 3, "too few multi-segment cases left");

    let mut off = 0u64;
    for (i, lens) in cases.iter().enumerate() {
        let total: usize = lens.iter().sum();
        assert_eq!(total % bs_u, 0);
        let data = pattern(2000 + i as u64, total);
        let mut segs = Vec::new();
        let mut at = 0;
        for &len in lens {
            segs.push(&data[at..at + len]);
            at += len;
        }
        let ret = q.writev(off, &segs);
        assert_eq!(ret, 0, "case {i}: writev of {lens:?} at {off}");

        let got = q.read_ok(off, total);
        assert_bytes_eq(&got, &data, &format!("case {i}: plain read after writev"));

        let reversed: Vec<usize> = lens.iter().rev().copied().collect();
        let (ret, got) = q.readv(off, &reversed);
        assert_eq!(ret, 0, "case {i}: readv of {reversed:?}");
        assert_bytes_eq(&got, &data, &format!("case {i}: readv {reversed:?}"));

        // Same data again as one big write, read back in odd pieces.
        let data2 = pattern(3000 + i as u64, total);
        q.write_ok(off, &data2);
        let p2 = (total - 100) / 2 + 7;
        let pieces = [100, p2, total - 100 - p2];
        let (ret, got) = q.readv(off, &pieces);
        assert_eq!(ret, 0, "case {i}: readv of {pieces:?}");
        assert_bytes_eq(&got, &data2, &format!("case {i}: readv {pieces:?}"));

        off += (total as u64).next_multiple_of(MIB) + u64::from(bs);
    }
    drop(client);
    target.assert_running();
}

#[test]
fn multi_segment_writev_readv_512() {
    multi_segment(512);
}

#[test]
fn multi_segment_writev_readv_4096() {
    multi_segment(4096);
}

/// Many requests in flight at once on a small ring (so libblkio backlogs some and the ring wraps
/// many times).
#[test]
fn many_requests_in_flight() {
    let mut target = start_malloc(512);
    let mut client = target.connect_with(ClientConfig {
        queue_size: 32,
        ..ClientConfig::default()
    });
    let mut q = client.queue(0);
    for round in 0..3u64 {
        let datas: Vec<Vec<u8>> = (0..256).map(|k| pattern(round * 1000 + k, 4096)).collect();
        let offs: Vec<u64> = (0..256u64)
            .map(|k| k * 64 * KIB + (k + round) % 16 * 4096)
            .collect();
        let writes: Vec<(u64, &[u8])> = offs
            .iter()
            .zip(&datas)
            .map(|(&o, d)| (o, d.as_slice()))
            .collect();
        let rets = q.write_many(&writes);
        assert!(
            rets.iter().all(|&r| r == 0),
            "round {round}: write rets {rets:?}"
        );
        let reads: Vec<(u64, usize)> = offs.iter().map(|&o| (o, 4096)).collect();
        for (k, (ret, got)) in q.read_many(&reads).into_iter().enumerate() {
            assert_eq!(ret, 0, "round {round}: read #{k}");
            assert_bytes_eq(&got, &datas[k], &format!("round {round}: request #{k}"));
        }
    }
    drop(client);
    target.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Flush, discard, write-zeroes

/// The `queue=total` row of controller `name` in a stats table.
fn total_row(out: &str, name: &str) -> std::collections::HashMap<String, String> {
    let prefix = format!("stats controller={name} queue=total ");
    let line = out
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' row in:\n{out}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counter(row: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    row.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {row:?}"))
}

/// Flushes reach the bdev and succeed there: the target counts each one as a completed flush
/// (not as unsupported, not as an error, not answered without the bdev), and data written
/// around them reads back. A FUA write is a write plus a flush for libblkio on virtio-blk
/// (virtio-blk has no FUA bit), so it adds one of each.
#[test]
fn flushes_reach_the_bdev_and_are_counted() {
    if reference_target() {
        eprintln!("skipped: needs spinblk's statistics table");
        return;
    }
    let mut target = start_malloc(512);
    let mut client = target.connect();
    let mut q = client.queue(0);
    assert_eq!(q.flush(), 0, "flush on an untouched disk");
    let data = pattern(7, 64 * KIB as usize);
    q.write_ok(MIB, &data);
    assert_eq!(q.flush(), 0, "flush after a write");
    let data2 = pattern(8, 4096);
    assert_eq!(q.write_flags(0, &data2, ReqFlags::FUA), 0, "FUA write");
    assert_bytes_eq(&q.read_ok(MIB, data.len()), &data, "data after flush");
    assert_bytes_eq(&q.read_ok(0, 4096), &data2, "FUA-written data");
    assert_eq!(q.flush(), 0, "third flush");
    drop(client);
    let (code, out) = target.stop_with(libc::SIGTERM);
    assert_eq!(code, Some(0), "{out}");
    let row = total_row(&out, "vhost0");
    let writes = counter(&row, "write_ops");
    assert_eq!(writes, 2, "two writes: {row:?}");
    assert_eq!(
        counter(&row, "flush_ops"),
        3 + 1,
        "three flushes plus the FUA write's: {row:?}"
    );
    assert_eq!(counter(&row, "io_errors"), 0, "{row:?}");
    assert_eq!(counter(&row, "unsupported"), 0, "{row:?}");
}

/// Ranges zeroed in `zeroing_test`: page aligned, a single block inside a page, and one crossing
/// a 1 MiB boundary with unaligned ends.
const ZERO_RANGES: [(u64, u64); 4] = [
    (64 * KIB, 256 * KIB),
    (3 * 512, 512),
    (MIB - 1536, 5120),
    (2 * MIB - 4096, 4096),
];

fn zeroing_test(bs: u32, op: &str, mut zero: impl FnMut(&mut Queue<'_>, u64, u64) -> i32) {
    let mut target = start_malloc(bs);
    let mut client = target.connect();
    let limits = client.limits;
    let cap = client.capacity();
    let mut q = client.queue(0);
    let span = 2 * MIB as usize;
    let mut model = pattern(42, span);
    q.write_ok(0, &model[..MIB as usize]);
    q.write_ok(MIB, &model[MIB as usize..]);
    let tail = pattern(43, 8192);
    q.write_ok(cap - 8192, &tail);

    let max = if op == "discard" {
        limits.max_discard_len
    } else {
        limits.max_write_zeroes_len
    };
    let bs = u64::from(bs);
    let mut ranges: Vec<(u64, u64)> = ZERO_RANGES
        .iter()
        .map(|&(o, l)| (o / bs * bs, l.div_ceil(bs) * bs))
        .collect();
    ranges.push((cap - bs, bs)); // the last block of the disk
    for &(off, len) in &ranges {
        let mut done = 0;
        while done < len {
            let n = if max > 0 { (len - done).min(max) } else { len };
            let ret = zero(&mut q, off + done, n);
            assert_eq!(ret, 0, "{op} of {n} bytes at {}", off + done);
            done += n;
        }
        if off < span as u64 {
            model[off as usize..(off + len) as usize].fill(0);
        }
    }

    let got = q.read_ok(0, MIB as usize);
    assert_bytes_eq(
        &got,
        &model[..MIB as usize],
        &format!("first MiB after {op}"),
    );
    let got = q.read_ok(MIB, MIB as usize);
    assert_bytes_eq(
        &got,
        &model[MIB as usize..],
        &format!("second MiB after {op}"),
    );
    for &(off, len) in &ranges {
        assert_zeroes(
            &q.read_ok(off, len as usize),
            &format!("range {off}+{len} after {op}"),
        );
    }
    let got = q.read_ok(cap - 8192, 8192);
    let mut want = tail.clone();
    want[8192 - bs as usize..].fill(0);
    assert_bytes_eq(
        &got,
        &want,
        &format!("end of disk after {op} of the last block"),
    );
    drop(client);
    target.assert_running();
}

#[test]
fn discard_zeroes_range_and_keeps_neighbours() {
    zeroing_test(512, "discard", |q, off, len| q.discard(off, len));
}

#[test]
fn discard_zeroes_range_and_keeps_neighbours_4096() {
    zeroing_test(4096, "discard", |q, off, len| q.discard(off, len));
}

#[test]
fn write_zeroes_zeroes_range_and_keeps_neighbours() {
    let mut unmap = false;
    zeroing_test(512, "write-zeroes", |q, off, len| {
        // Alternate between "may unmap" and "must not unmap"; both must read back as zeroes.
        unmap = !unmap;
        let flags = if unmap {
            ReqFlags::empty()
        } else {
            ReqFlags::NO_UNMAP
        };
        q.write_zeroes(off, len, flags)
    });
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn requests_beyond_capacity_fail_and_target_keeps_serving() {
    let mut target = start_malloc(512);
    let mut client = target.connect();
    let cap = client.capacity();
    let mut q = client.queue(0);
    let last = pattern(9, 512);
    q.write_ok(cap - 512, &last);

    let junk = pattern(10, 1024);
    let huge = u64::MAX / 512 * 512; // the largest sector number libblkio can express
    let checks: Vec<(String, i32)> = vec![
        ("read at capacity".into(), q.read(cap, 512).0),
        ("read straddling the end".into(), q.read(cap - 512, 1024).0),
        ("read far beyond the end".into(), q.read(cap + GIB, 4096).0),
        ("read at the largest sector".into(), q.read(huge, 4096).0),
        ("read at sector 2^54".into(), q.read(1 << 63, 512).0),
        ("write at capacity".into(), q.write(cap, &junk[..512])),
        ("write straddling the end".into(), q.write(cap - 512, &junk)),
        ("write at the largest sector".into(), q.write(huge, &junk)),
        (
            "writev straddling the end".into(),
            q.writev(cap - 512, &[&junk[..512], &junk[512..]]),
        ),
        (
            "discard straddling the end".into(),
            q.discard(cap - 512, 1024),
        ),
        // (libblkio itself overflows on start + len past u64::MAX, so stay just below.)
        (
            "discard near the largest sector".into(),
            q.discard(huge - 4096, 512),
        ),
        (
            "write-zeroes straddling the end".into(),
            q.write_zeroes(cap - 512, 1024, ReqFlags::empty()),
        ),
        (
            "write-zeroes near the largest sector".into(),
            q.write_zeroes(huge - 4096, 512, ReqFlags::empty()),
        ),
    ];
    let succeeded: Vec<&String> = checks
        .iter()
        .filter(|(_, ret)| *ret >= 0)
        .map(|(what, _)| what)
        .collect();
    assert!(
        succeeded.is_empty(),
        "requests beyond the capacity did not fail: {succeeded:?} (all: {checks:?})"
    );

    // Still serving, and nothing past-the-end leaked into the last block.
    target.assert_running();
    assert_bytes_eq(&q.read_ok(cap - 512, 512), &last, "last block");
    let data = pattern(11, 4096);
    q.write_ok(0, &data);
    assert_bytes_eq(&q.read_ok(0, 4096), &data, "good read after errors");
    drop(client);
    target.assert_running();
}

#[test]
fn misaligned_requests_on_4k_disk_fail() {
    if reference_target() {
        // qemu-storage-daemon 7.2 serves sub-block requests on a 4096-byte export.
        eprintln!("skipped: the reference target does not enforce block alignment");
        return;
    }
    let mut target = start_malloc(4096);
    let mut client = target.connect();
    let mut q = client.queue(0);
    let block1 = pattern(12, 8192);
    q.write_ok(4096, &block1);
    let junk = pattern(13, 4096);
    let checks = [
        ("write of 512 bytes", q.write(4096, &junk[..512])),
        ("write at sector 9", q.write(4096 + 512, &junk)),
        ("read at sector 1", q.read(512, 4096).0),
        ("read of 1 KiB", q.read(4096, 1024).0),
    ];
    for (what, ret) in checks {
        assert!(
            ret < 0,
            "{what} on a 4096-byte-block disk returned {ret}, want an error"
        );
    }
    target.assert_running();
    assert_bytes_eq(
        &q.read_ok(4096, 8192),
        &block1,
        "blocks 1-2 after rejected writes",
    );
    drop(client);
    target.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Read-only

#[test]
fn readonly_target_rejects_writes_and_serves_reads() {
    let mut target = Target::start(TargetConfig::malloc(DISK).readonly());
    // A device that reports VIRTIO_BLK_F_RO makes libblkio refuse to start unless the client
    // asked for read-only; a device that does not must fail the writes itself.
    let mut client = match Client::connect(target.socket(), ClientConfig::default()) {
        Ok(c) => {
            eprintln!(
                "note: target did not report VIRTIO_BLK_F_RO; writes must fail in the target"
            );
            c
        }
        Err(e) if e.step == "start" && e.errno() == Errno::ROFS => {
            target.assert_running();
            target.connect_with(ClientConfig {
                read_only: true,
                ..ClientConfig::default()
            })
        }
        Err(e) => panic!("connect to read-only target: {e}"),
    };
    let cap = client.capacity();
    assert_eq!(cap, DISK);
    let mut q = client.queue(0);
    assert_zeroes(&q.read_ok(0, 64 * KIB as usize), "first 64 KiB");

    let junk = pattern(14, 8192);
    let checks = [
        ("write", q.write(0, &junk)),
        ("write of the last block", q.write(cap - 512, &junk[..512])),
        ("writev", q.writev(4096, &[&junk[..4096], &junk[4096..]])),
        ("write-zeroes", q.write_zeroes(0, 4096, ReqFlags::NO_UNMAP)),
        ("discard", q.discard(0, 4096)),
    ];
    for (what, ret) in checks {
        assert!(ret < 0, "{what} on a read-only target returned {ret}");
    }
    target.assert_running();
    assert_zeroes(
        &q.read_ok(0, 64 * KIB as usize),
        "first 64 KiB after writes",
    );
    assert_zeroes(&q.read_ok(cap - 4096, 4096), "last 4 KiB after writes");
    let (ret, got) = q.readv(0, &[512, 1536, 2048]);
    assert_eq!(ret, 0, "readv on a read-only target");
    assert_zeroes(&got, "readv");
    drop(client);
    target.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Multiple queues

#[test]
fn four_queues_write_distinct_regions_and_read_back_cross_queue() {
    const QUEUES: usize = 4;
    const REGION: u64 = 8 * MIB;
    const CHUNK: usize = 128 << 10;
    const BATCH: usize = 8;
    let mut target = Target::start(TargetConfig::malloc(DISK).num_queues(QUEUES as u32));
    let mut client = target.connect_with(ClientConfig {
        num_queues: QUEUES as i32,
        ..ClientConfig::default()
    });
    let max_queues = client
        .blkio()
        .get_i32("max-queues")
        .expect("max-queues property");
    assert!(max_queues >= QUEUES as i32, "max-queues {max_queues}");

    let chunk_data = |region: usize, k: usize| pattern((region * 1000 + k) as u64, CHUNK);
    let chunks = REGION as usize / CHUNK;

    // Phase 1: each queue, on its own thread, writes its own region, BATCH requests at a time.
    std::thread::scope(|s| {
        for mut q in client.queues() {
            s.spawn(move || {
                let region = q.index;
                let base = region as u64 * REGION;
                for first in (0..chunks).step_by(BATCH) {
                    let datas: Vec<Vec<u8>> = (first..first + BATCH)
                        .map(|k| chunk_data(region, k))
                        .collect();
                    let writes: Vec<(u64, &[u8])> = datas
                        .iter()
                        .enumerate()
                        .map(|(j, d)| (base + ((first + j) * CHUNK) as u64, d.as_slice()))
                        .collect();
                    let rets = q.write_many(&writes);
                    assert!(
                        rets.iter().all(|&r| r == 0),
                        "queue {region}: write rets {rets:?}"
                    );
                }
            });
        }
    });
    target.assert_running();

    // Phase 2: queue i reads back the region queue i+1 wrote, all queues at once.
    std::thread::scope(|s| {
        for mut q in client.queues() {
            s.spawn(move || {
                let region = (q.index + 1) % QUEUES;
                let base = region as u64 * REGION;
                for first in (0..chunks).step_by(BATCH) {
                    let reads: Vec<(u64, usize)> = (first..first + BATCH)
                        .map(|k| (base + (k * CHUNK) as u64, CHUNK))
                        .collect();
                    for (j, (ret, got)) in q.read_many(&reads).into_iter().enumerate() {
                        let k = first + j;
                        assert_eq!(ret, 0, "queue {} reading region {region}", q.index);
                        assert_bytes_eq(
                            &got,
                            &chunk_data(region, k),
                            &format!("region {region} chunk {k} read on queue {}", q.index),
                        );
                    }
                }
            });
        }
    });
    // Nothing outside the regions was touched.
    let mut q = client.queue(0);
    assert_zeroes(
        &q.read_ok(QUEUES as u64 * REGION, MIB as usize),
        "after the regions",
    );
    drop(client);
    target.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Connections

#[test]
fn reconnect_sees_earlier_data_and_keeps_serving() {
    let mut target = start_malloc(512);
    let a = pattern(20, MIB as usize);
    let a_tail = pattern(21, 64 * KIB as usize);
    let b = pattern(22, 256 * KIB as usize);
    let c = pattern(23, 4096);
    let cap;
    {
        let mut client1 = target.connect();
        cap = client1.capacity();
        let mut q = client1.queue(0);
        q.write_ok(0, &a);
        q.write_ok(cap - a_tail.len() as u64, &a_tail);
        assert_eq!(q.flush(), 0);
    } // client 1 disconnects
    target.assert_running();
    {
        let mut client2 = target.connect();
        let mut q = client2.queue(0);
        assert_bytes_eq(&q.read_ok(0, a.len()), &a, "client 2 reads client 1's data");
        assert_bytes_eq(
            &q.read_ok(cap - a_tail.len() as u64, a_tail.len()),
            &a_tail,
            "client 2 reads client 1's tail",
        );
        q.write_ok(MIB, &b);
        assert_bytes_eq(&q.read_ok(MIB, b.len()), &b, "client 2 reads its own write");
    }
    target.assert_running();
    {
        // A different ring size this time: the target must take the new vring setup.
        let mut client3 = target.connect_with(ClientConfig {
            queue_size: 32,
            ..ClientConfig::default()
        });
        let mut q = client3.queue(0);
        assert_bytes_eq(&q.read_ok(0, a.len()), &a, "client 3 reads client 1's data");
        assert_bytes_eq(
            &q.read_ok(MIB, b.len()),
            &b,
            "client 3 reads client 2's data",
        );
        q.write_ok(2 * MIB, &c);
        assert_bytes_eq(
            &q.read_ok(2 * MIB, c.len()),
            &c,
            "client 3 reads its own write",
        );
    }
    target.assert_running();
}

#[test]
fn abrupt_disconnects_do_not_break_the_target() {
    let mut target = start_malloc(512);
    // Handshake only, never started.
    for _ in 0..3 {
        let blkio = connect_only(target.socket(), ClientConfig::default())
            .unwrap_or_else(|e| panic!("connect only: {e}"));
        drop(blkio);
    }
    target.assert_running();
    // Started, then dropped with requests in flight.
    let data = pattern(30, 4096);
    for _ in 0..3 {
        let mut client = target.connect();
        let mut q = client.queue(0);
        let writes: Vec<(u64, &[u8])> = (0..16u64).map(|k| (k * 4096, data.as_slice())).collect();
        q.write_many_no_wait(&writes);
        drop(client);
    }
    target.assert_running();
    let mut client = target.connect();
    let mut q = client.queue(0);
    let fresh = pattern(31, 64 * KIB as usize);
    q.write_ok(MIB, &fresh);
    assert_bytes_eq(
        &q.read_ok(MIB, fresh.len()),
        &fresh,
        "after abrupt disconnects",
    );
    drop(client);
    target.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Null bdev

#[test]
fn null_bdev_reads_zeroes_after_writes() {
    let mut target = Target::start(TargetConfig::null(DISK));
    let mut client = target.connect();
    let cap = client.capacity();
    assert_eq!(cap, DISK, "null capacity");
    let mut q = client.queue(0);
    let data = pattern(40, 64 * KIB as usize);
    q.write_ok(0, &data);
    q.write_ok(cap - data.len() as u64, &data);
    assert_eq!(
        q.writev(MIB, &[&data[..512], &data[512..4096]]),
        0,
        "writev"
    );
    assert_zeroes(&q.read_ok(0, data.len()), "read after write");
    assert_zeroes(&q.read_ok(cap - 4096, 4096), "last 4 KiB");
    let (ret, got) = q.readv(MIB, &[512, 3584]);
    assert_eq!(ret, 0, "readv");
    assert_zeroes(&got, "readv after writev");
    assert_eq!(q.flush(), 0, "flush");
    assert!(q.read(cap, 512).0 < 0, "read beyond the end of a null disk");
    assert_zeroes(&q.read_ok(0, 512), "read after an error");
    drop(client);
    target.assert_running();
}

// ---------------------------------------------------------------------------------------------
// Command line

fn spinblk_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let dir = TempDir::new("cli");
    let log = dir.path().join("out.log");
    let out = std::fs::File::create(&log).expect("create log");
    let err = out.try_clone().expect("clone log fd");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spinblk"))
        .args(
            args.iter()
                .map(|a| a.replace("@DIR", &dir.path().to_string_lossy())),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn spinblk");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("poll spinblk") {
            return (status, std::fs::read_to_string(&log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "spinblk {args:?} still running after 10 s\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn help_lists_the_documented_options() {
    let (status, out) = spinblk_exit(&["--help"]);
    assert!(status.success(), "--help exited with {status}\n{out}");
    for opt in [
        "--socket",
        "--malloc",
        "--null",
        "--block-size",
        "--readonly",
        "--serial",
        "--cpus",
        "--num-queues",
    ] {
        assert!(out.contains(opt), "--help does not mention {opt}:\n{out}");
    }
}

#[test]
fn invalid_command_lines_are_rejected() {
    let cases: [&[&str]; 5] = [
        &["--socket", "@DIR/s.sock", "--block-size", "1024"],
        &["--socket", "@DIR/s.sock", "--malloc", "12Q"],
        &["--socket", "@DIR/s.sock", "--malloc", "1000"], // not a whole number of blocks
        &["--socket", "@DIR/s.sock", "--malloc", "1M", "--null", "1M"],
        &["--socket", "@DIR/s.sock", "--num-queues", "0"],
    ];
    for args in cases {
        let (status, out) = spinblk_exit(args);
        assert!(
            !status.success() && status.code().is_some(),
            "spinblk {args:?} should exit with an error, got {status}\n{out}"
        );
    }
}
