//! Statistics output: a one-line summary per controller (`--stats-interval`) and the full
//! key=value table (SIGUSR1 and shutdown), printed on stdout.

use std::fmt::Write;
use std::time::Duration;

use spinblk_protocol::{ControllerReport, QueueStats};
use spinblk_reactor::ReactorStats;

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn bytes(s: &QueueStats) -> u64 {
    s.read.bytes + s.write.bytes
}

/// One line for a controller over the last interval: IOPS, throughput, latency of the
/// interval's requests, errors.
pub fn summary_line(report: &ControllerReport, previous: &QueueStats, elapsed: Duration) -> String {
    let now = &report.total;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ops = now.total_ops().saturating_sub(previous.total_ops());
    let mib = bytes(now).saturating_sub(bytes(previous)) as f64 / (1 << 20) as f64;
    let mut lat = now.latency_ns();
    // Same bounds on both histograms, and `previous` is an earlier snapshot of the same counts.
    let interval = lat.subtract(previous.latency_ns()).is_ok();
    let (p50, p99) = if interval && !lat.is_empty() {
        (
            us(lat.value_at_quantile(0.5)),
            us(lat.value_at_quantile(0.99)),
        )
    } else {
        (0.0, 0.0)
    };
    format!(
        "stats {}: {:.0} IOPS, {:.1} MiB/s, lat p50 {:.1} us p99 {:.1} us, errors {}, {}",
        report.name,
        ops as f64 / secs,
        mib / secs,
        p50,
        p99,
        now.io_errors + now.unsupported,
        if report.connected {
            "connected"
        } else {
            "no frontend"
        }
    )
}

fn queue_fields(out: &mut String, s: &QueueStats) {
    let l = &s.latency_ns();
    let _ = write!(
        out,
        " read_ops={} read_bytes={} write_ops={} write_bytes={} flush_ops={} discard_ops={} write_zeroes_ops={} get_id_ops={} io_errors={} unsupported={} dropped={} lat_p50_ns={} lat_p99_ns={} lat_p999_ns={} lat_max_ns={}",
        s.read.ops,
        s.read.bytes,
        s.write.ops,
        s.write.bytes,
        s.flush.ops,
        s.discard.ops,
        s.write_zeroes.ops,
        s.get_id.ops,
        s.io_errors,
        s.unsupported,
        s.dropped,
        l.value_at_quantile(0.5),
        l.value_at_quantile(0.99),
        l.value_at_quantile(0.999),
        l.max()
    );
}

/// The full table: a row per queue with I/O, a total row per controller, a row per reactor.
pub fn table(reports: &[ControllerReport], reactors: &[ReactorStats]) -> String {
    let mut out = String::new();
    for r in reports {
        for q in &r.queues {
            let core = q.core.map_or("-".to_string(), |c| c.to_string());
            let _ = write!(
                out,
                "stats controller={} queue={} reactor={} cpu={}",
                r.name, q.index, q.reactor, core
            );
            queue_fields(&mut out, &q.stats);
            out.push('\n');
        }
        let _ = write!(
            out,
            "stats controller={} queue=total connected={}",
            r.name, r.connected
        );
        queue_fields(&mut out, &r.total);
        out.push('\n');
    }
    for s in reactors {
        let all = (s.busy + s.idle).as_secs_f64().max(1e-9);
        let core = s.core.map_or("-".to_string(), |c| c.to_string());
        let _ = writeln!(
            out,
            "stats reactor={} cpu={} pollers={} busy_ms={} idle_ms={} busy_pct={:.1}",
            s.id,
            core,
            s.pollers,
            s.busy.as_millis(),
            s.idle.as_millis(),
            100.0 * s.busy.as_secs_f64() / all
        );
    }
    out
}
