//! Per-queue I/O statistics, kept on the owning reactor and copied out by message. Latencies
//! are recorded in clock ticks (no conversion per request) and converted to nanoseconds when
//! read.

use hdrhistogram::Histogram;
use spinblk_reactor::Tick;

use crate::request::RequestKind;

/// Latency histogram range: 1 tick to 2^40 ticks (minutes at any TSC rate), 2 significant
/// digits (fixed size, so recording never allocates).
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 40, 2).unwrap_or_else(|_| {
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
    /// Sum of submit-to-complete latencies of bdev requests, in ticks.
    pub latency_ticks: u64,
    /// Longest latency, in ticks (0 when none).
    pub max_ticks: u64,
    /// Shortest latency, in ticks (0 when none).
    pub min_ticks: u64,
}

impl OpCounters {
    fn add(&mut self, o: &OpCounters) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.latency_ticks += o.latency_ticks;
        self.max_ticks = self.max_ticks.max(o.max_ticks);
        self.min_ticks = match (self.min_ticks, o.min_ticks) {
            (0, m) | (m, 0) => m,
            (a, b) => a.min(b),
        };
    }
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
    /// Requests in the queue's hands when this snapshot was taken (submitted to the bdev,
    /// throttled or waiting for room; summed by `merge`). Zero in the totals of stopped queues.
    pub in_flight: u64,
    /// Writes of the call eventfd that failed (a saturated counter is not one: it means an
    /// interrupt is pending already; an fd that is not an eventfd cannot get here).
    pub notify_errors: u64,
    /// Submit-to-complete latency of bdev requests, in clock ticks (see
    /// [`latency_ns`](Self::latency_ns)).
    pub latency_ticks: Histogram<u64>,
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
            in_flight: 0,
            notify_errors: 0,
            latency_ticks: new_histogram(),
        }
    }
}

impl QueueStats {
    fn counters(&mut self, kind: RequestKind) -> &mut OpCounters {
        match kind {
            RequestKind::Read => &mut self.read,
            RequestKind::Write => &mut self.write,
            RequestKind::Flush => &mut self.flush,
            RequestKind::Discard => &mut self.discard,
            RequestKind::WriteZeroes => &mut self.write_zeroes,
            RequestKind::GetId => &mut self.get_id,
        }
    }

    /// Counts a completed request of `kind`; `bytes` only when it succeeded.
    pub(crate) fn count(&mut self, kind: RequestKind, bytes: u64) {
        let c = self.counters(kind);
        c.ops += 1;
        c.bytes += bytes;
    }

    /// Records one bdev request's latency in ticks; values past the range are clamped.
    pub(crate) fn record_latency(&mut self, kind: RequestKind, ticks: u64) {
        let ticks = ticks.max(1);
        let c = self.counters(kind);
        c.latency_ticks += ticks;
        c.max_ticks = c.max_ticks.max(ticks);
        if c.min_ticks == 0 || ticks < c.min_ticks {
            c.min_ticks = ticks;
        }
        self.latency_ticks.saturating_record(ticks);
    }

    /// The latency histogram in nanoseconds (converted now, at the clock's measured rate).
    pub fn latency_ns(&self) -> Histogram<u64> {
        let mut ns =
            Histogram::new_with_bounds(100, 600_000_000_000, 2).unwrap_or_else(|_| new_histogram());
        for v in self.latency_ticks.iter_recorded() {
            let value = Tick::to_nanos(v.value_iterated_to()).max(100);
            ns.saturating_record_n(value, v.count_at_value());
        }
        ns
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
            a.add(&b);
        }
        self.io_errors += other.io_errors;
        self.unsupported += other.unsupported;
        self.dropped += other.dropped;
        self.notify_errors += other.notify_errors;
        self.in_flight += other.in_flight;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_ticks.add(&other.latency_ticks);
    }
}
