//! Per-queue I/O statistics, kept on the owning reactor and copied out by message.

use hdrhistogram::Histogram;

use crate::request::RequestKind;

/// Latency histogram range: 100 ns to 60 s, 2 significant digits (fixed size, so recording
/// never allocates).
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(100, 60_000_000_000, 2).unwrap_or_else(|_| {
        // The bounds above are constants that hdrhistogram accepts; this arm is unreachable.
        Histogram::new(2).unwrap_or_else(|_| unreachable!("hdrhistogram refuses 2 sigfigs"))
    })
}

/// Counters of one kind of request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounters {
    /// Requests completed (any status).
    pub ops: u64,
    /// Data bytes of the completed requests that succeeded.
    pub bytes: u64,
}

/// What one virtqueue has done since it started.
#[derive(Debug, Clone)]
pub struct QueueStats {
    /// Reads.
    pub read: OpCounters,
    /// Writes.
    pub write: OpCounters,
    /// Flushes.
    pub flush: OpCounters,
    /// Discards.
    pub discard: OpCounters,
    /// Write-zeroes.
    pub write_zeroes: OpCounters,
    /// GET_ID requests.
    pub get_id: OpCounters,
    /// Requests that ended with VIRTIO_BLK_S_IOERR (refused or failed by the bdev).
    pub io_errors: u64,
    /// Requests that ended with VIRTIO_BLK_S_UNSUPP.
    pub unsupported: u64,
    /// Chains that could not be answered with a status byte, or reused an in-flight head.
    pub dropped: u64,
    /// Submit-to-complete latency of bdev requests, in nanoseconds.
    pub latency_ns: Histogram<u64>,
}

impl Default for QueueStats {
    fn default() -> Self {
        QueueStats {
            read: OpCounters::default(),
            write: OpCounters::default(),
            flush: OpCounters::default(),
            discard: OpCounters::default(),
            write_zeroes: OpCounters::default(),
            get_id: OpCounters::default(),
            io_errors: 0,
            unsupported: 0,
            dropped: 0,
            latency_ns: new_histogram(),
        }
    }
}

impl QueueStats {
    /// Counts a completed request of `kind`; `bytes` only when it succeeded.
    pub(crate) fn count(&mut self, kind: RequestKind, bytes: u64) {
        let c = match kind {
            RequestKind::Read => &mut self.read,
            RequestKind::Write => &mut self.write,
            RequestKind::Flush => &mut self.flush,
            RequestKind::Discard => &mut self.discard,
            RequestKind::WriteZeroes => &mut self.write_zeroes,
            RequestKind::GetId => &mut self.get_id,
        };
        c.ops += 1;
        c.bytes += bytes;
    }

    /// Records one bdev request's latency; values past the range are clamped.
    pub(crate) fn record_latency(&mut self, ns: u64) {
        self.latency_ns.saturating_record(ns.max(100));
    }

    /// All completed requests.
    pub fn total_ops(&self) -> u64 {
        [
            self.read,
            self.write,
            self.flush,
            self.discard,
            self.write_zeroes,
            self.get_id,
        ]
        .iter()
        .map(|c| c.ops)
        .sum()
    }

    /// Adds `other` into `self` (for per-controller totals).
    pub fn merge(&mut self, other: &QueueStats) {
        for (a, b) in [
            (&mut self.read, other.read),
            (&mut self.write, other.write),
            (&mut self.flush, other.flush),
            (&mut self.discard, other.discard),
            (&mut self.write_zeroes, other.write_zeroes),
            (&mut self.get_id, other.get_id),
        ] {
            a.ops += b.ops;
            a.bytes += b.bytes;
        }
        self.io_errors += other.io_errors;
        self.unsupported += other.unsupported;
        self.dropped += other.dropped;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_ns.add(&other.latency_ns);
    }
}
