//! Connecting to the vhost-user-blk target through libblkio and setting up
//! queues and the I/O buffer memory region.

use blkio::{Blkio, Blkioq, MemoryRegion};

const DRIVER: &str = "virtio-blk-vhost-user";

/// What was asked of the target.
pub struct TargetConfig<'a> {
    pub socket: &'a str,
    pub queues: u32,
    pub poll: bool,
    pub iodepth: u32,
    pub bs: u64,
    pub queue_size: Option<u32>,
    /// User-requested max bytes per data segment (None = as big as allowed).
    pub segment_size: Option<u64>,
    /// Open read-only (lets read workloads run against read-only exports).
    pub read_only: bool,
    pub verbose: bool,
}

/// Device properties read after connecting.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub capacity: u64,
    pub max_queues: i32,
    pub request_alignment: u64,
    pub max_segment_len: u64,
    pub max_segments: u64,
    pub max_transfer: u64,
    pub mem_region_alignment: u64,
    pub queue_size: u32,
    /// Bytes per data segment actually used (== bs when not split).
    pub seg_len: u64,
    /// Data segments per request.
    pub segs: u64,
}

/// A started device. Field order matters: the queues must be dropped before
/// the `Blkio` instance that owns the transport and virtqueue memory.
pub struct Target {
    pub queues: Vec<Blkioq>,
    pub region: MemoryRegion,
    pub info: DeviceInfo,
    pub blkio: Blkio,
}

impl Target {
    /// Orderly teardown: drop any remaining queues, then unmap and free the
    /// buffer region before the device itself is dropped.
    pub fn close(mut self) {
        self.queues.clear();
        self.blkio.unmap_mem_region(&self.region);
        self.blkio.free_mem_region(&self.region);
    }
}

fn prop_i32(b: &Blkio, name: &str) -> Result<i32, String> {
    b.get_i32(name)
        .map_err(|e| format!("cannot read property {name}: {e}"))
}

fn prop_u64(b: &Blkio, name: &str) -> Result<u64, String> {
    b.get_u64(name)
        .map_err(|e| format!("cannot read property {name}: {e}"))
}

fn non_neg(v: i32) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Segments needed for one `bs`-sized request given the device's
/// max-segment-len (0 = unlimited).
pub fn segments_for(bs: u64, max_segment_len: u64) -> u64 {
    if max_segment_len == 0 {
        1
    } else {
        bs.div_ceil(max_segment_len).max(1)
    }
}

/// Connects, configures and starts the device, then allocates and maps one
/// memory region holding `queues * iodepth` buffers of `bs` bytes.
pub fn open(cfg: &TargetConfig<'_>) -> Result<Target, String> {
    let mut blkio = Blkio::new(DRIVER).map_err(|e| format!("libblkio driver {DRIVER}: {e}"))?;
    blkio
        .set_str("path", cfg.socket)
        .map_err(|e| format!("cannot set path: {e}"))?;
    if cfg.read_only {
        blkio
            .set_bool("read-only", true)
            .map_err(|e| format!("cannot set read-only: {e}"))?;
    }
    blkio
        .connect()
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.socket))?;

    let capacity = prop_u64(&blkio, "capacity")?;
    let max_queues = prop_i32(&blkio, "max-queues")?;
    let request_alignment = non_neg(prop_i32(&blkio, "request-alignment")?).max(1);
    let max_segment_len = non_neg(prop_i32(&blkio, "max-segment-len")?);
    let max_segments = non_neg(prop_i32(&blkio, "max-segments")?).max(1);
    let max_transfer = non_neg(prop_i32(&blkio, "max-transfer")?);
    let mem_region_alignment = prop_u64(&blkio, "mem-region-alignment")?.max(1);
    let max_queue_size = non_neg(prop_i32(&blkio, "max-queue-size")?);

    if capacity == 0 {
        return Err(format!("{}: device has zero capacity", cfg.socket));
    }
    if i64::from(cfg.queues) > i64::from(max_queues) {
        return Err(format!(
            "{}: --queues {} exceeds the device's {max_queues} queue(s)",
            cfg.socket, cfg.queues
        ));
    }
    if cfg.bs == 0 || cfg.bs % request_alignment != 0 {
        return Err(format!(
            "--bs {} must be a non-zero multiple of the device's request alignment ({request_alignment})",
            cfg.bs
        ));
    }
    if max_transfer != 0 && cfg.bs > max_transfer {
        return Err(format!(
            "--bs {} exceeds the device's max transfer size ({max_transfer})",
            cfg.bs
        ));
    }
    if cfg.segment_size == Some(0) {
        return Err("--segment-size must be non-zero".to_string());
    }
    let seg_len = [Some(max_segment_len).filter(|&m| m != 0), cfg.segment_size]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(cfg.bs)
        .min(cfg.bs);
    let segs = segments_for(cfg.bs, seg_len);
    if segs > max_segments {
        return Err(format!(
            "--bs {} needs {segs} segments of at most {max_segment_len} bytes; the device allows {max_segments}",
            cfg.bs
        ));
    }

    // Each request occupies 2 + segs descriptors (header, data, status) in a
    // split virtqueue; libblkio does not use indirect descriptors. Requests
    // that do not fit wait in libblkio's software backlog, which would distort
    // the iodepth, so size the ring for the whole depth by default.
    let descs_needed = u64::from(cfg.iodepth) * (2 + segs);
    let queue_size = match cfg.queue_size {
        Some(q) => {
            if !q.is_power_of_two() {
                return Err(format!("--queue-size {q} must be a power of two"));
            }
            if u64::from(q) < descs_needed {
                eprintln!(
                    "spinblk-bench: warning: --queue-size {q} holds only {} requests of --iodepth {}; \
                     the rest wait in libblkio's backlog",
                    u64::from(q) / (2 + segs),
                    cfg.iodepth
                );
            }
            q
        }
        None => {
            let cap = max_queue_size.clamp(1, 32768);
            let want = descs_needed.next_power_of_two().max(256).min(cap);
            if want < descs_needed {
                eprintln!(
                    "spinblk-bench: warning: --iodepth {} needs {descs_needed} descriptors, \
                     more than the largest queue ({cap}); the excess waits in libblkio's backlog",
                    cfg.iodepth
                );
            }
            u32::try_from(want).unwrap_or(256)
        }
    };
    let queue_size_i32 =
        i32::try_from(queue_size).map_err(|_| format!("--queue-size {queue_size} too large"))?;
    let queues_i32 =
        i32::try_from(cfg.queues).map_err(|_| format!("--queues {} too large", cfg.queues))?;

    blkio
        .set_i32("queue-size", queue_size_i32)
        .map_err(|e| format!("cannot set queue-size {queue_size}: {e}"))?;
    let (nq, npq) = if cfg.poll {
        (0, queues_i32)
    } else {
        (queues_i32, 0)
    };
    blkio
        .set_i32("num-queues", nq)
        .map_err(|e| format!("cannot set num-queues: {e}"))?;
    blkio
        .set_i32("num-poll-queues", npq)
        .map_err(|e| format!("cannot set num-poll-queues: {e}"))?;

    let info = DeviceInfo {
        capacity,
        max_queues,
        request_alignment,
        max_segment_len,
        max_segments,
        max_transfer,
        mem_region_alignment,
        queue_size,
        seg_len,
        segs,
    };
    if cfg.verbose {
        eprintln!("spinblk-bench: device {info:?}");
    }

    let outcome = blkio
        .start()
        .map_err(|e| format!("cannot start device at {}: {e}", cfg.socket))?;
    let queues = if cfg.poll {
        outcome.poll_queues
    } else {
        outcome.queues
    };
    if queues.len() != cfg.queues as usize {
        return Err(format!(
            "libblkio returned {} queues, expected {}",
            queues.len(),
            cfg.queues
        ));
    }

    let want = u64::from(cfg.queues)
        .checked_mul(u64::from(cfg.iodepth))
        .and_then(|n| n.checked_mul(cfg.bs))
        .and_then(|n| n.checked_next_multiple_of(mem_region_alignment))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| "buffer memory (queues * iodepth * bs) is too large".to_string())?;
    // Memory regions can only be mapped once the device is started
    // (virtio-blk driver: map_mem_region() requires State::Started).
    let region = blkio
        .alloc_mem_region(want)
        .map_err(|e| format!("cannot allocate {want} bytes of buffer memory: {e}"))?;
    blkio
        .map_mem_region(&region)
        .map_err(|e| format!("cannot map buffer memory into the target: {e}"))?;
    if cfg.verbose {
        eprintln!(
            "spinblk-bench: mapped {} bytes of buffers at {:#x} (fd {})",
            region.len, region.addr, region.fd
        );
    }

    Ok(Target {
        queues,
        region,
        info,
        blkio,
    })
}
