//! The witness's metrics, in Prometheus' text format (`GET /metrics`),
//! through `prometheus-client`, the Prometheus project's own Rust client:
//! typed metrics in an explicit registry (no process-global state), an
//! OpenMetrics text encoder, and no HTTP server of its own (the witness
//! serves the text on its own listener).
//!
//! Counters and histograms are kept as things happen; the gauges of what
//! is open (groups, their files' sizes, groups in all) are read when the
//! metrics are asked for. Labels have bounded values only (result codes,
//! endpoint names, status codes), never group ids.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

pub struct Metrics {
    registry: Registry,
    /// Commit requests answered by writers, by result: `accepted`,
    /// `replayed`, or the rejection's code.
    pub commits: Family<Labels, Counter>,
    /// Error answers of any endpoint, by code.
    pub errors: Family<Labels, Counter>,
    /// Commits per durable write (group commit).
    pub batch_commits: Histogram,
    /// Time of each batch's COMMIT (its WAL fsync).
    pub fsync_seconds: Histogram,
    /// Request time, by endpoint and status.
    pub request_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Connections open now.
    pub connections: Gauge,
    /// Callers waiting on a group's head (long-poll) now.
    pub waiters: Gauge,
    /// Read when asked: groups open, groups in all, and the bytes of the
    /// open groups' database and WAL files.
    pub open_groups: Gauge,
    pub groups: Gauge,
    pub db_bytes: Gauge,
    pub wal_bytes: Gauge,
    /// Open groups whose writer has been busy with one write for more
    /// than 60 s (read when asked).
    pub busy_writers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("pdb"),
            commits: Family::default(),
            errors: Family::default(),
            batch_commits: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            fsync_seconds: latency(),
            request_seconds: Family::new_with_constructor(latency as fn() -> Histogram),
            connections: Gauge::default(),
            waiters: Gauge::default(),
            open_groups: Gauge::default(),
            groups: Gauge::default(),
            db_bytes: Gauge::default(),
            wal_bytes: Gauge::default(),
            busy_writers: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "commits",
            "Commit requests answered, by result (accepted, replayed, or the rejection's code)",
            m.commits.clone(),
        );
        r.register("errors", "Error answers, by code", m.errors.clone());
        r.register(
            "batch_commits",
            "Commits made durable by one write (group commit)",
            m.batch_commits.clone(),
        );
        r.register(
            "fsync_seconds",
            "Time of each batch's durable COMMIT",
            m.fsync_seconds.clone(),
        );
        r.register(
            "request_seconds",
            "HTTP request time, by endpoint and status",
            m.request_seconds.clone(),
        );
        r.register("connections", "Connections open", m.connections.clone());
        r.register(
            "waiters",
            "Callers waiting on a group's head",
            m.waiters.clone(),
        );
        r.register("open_groups", "Groups open now", m.open_groups.clone());
        r.register("groups", "Groups in all", m.groups.clone());
        r.register(
            "open_db_bytes",
            "Bytes of the open groups' database files",
            m.db_bytes.clone(),
        );
        r.register(
            "open_wal_bytes",
            "Bytes of the open groups' WAL files",
            m.wal_bytes.clone(),
        );
        r.register(
            "busy_writers",
            "Open groups whose writer has been busy with one write for more than 60 s",
            m.busy_writers.clone(),
        );
        m
    }
}

impl Metrics {
    /// Counts one commit answer.
    pub fn commit(&self, result: &str) {
        self.commits
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    /// Records one request.
    pub fn request(&self, endpoint: &'static str, status: u16, seconds: f64) {
        self.request_seconds
            .get_or_create(&vec![
                ("endpoint", endpoint.to_string()),
                ("status", status.to_string()),
            ])
            .observe(seconds);
    }

    /// Counts one error answer.
    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&vec![("code", code.to_string())])
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_in_the_text_format() {
        let m = Metrics::default();
        m.commit("accepted");
        m.commit("stale_head");
        m.request("commits", 201, 0.002);
        m.batch_commits.observe(3.0);
        m.open_groups.set(2);
        let text = m.render();
        for line in [
            "pdb_commits_total{result=\"accepted\"} 1",
            "pdb_commits_total{result=\"stale_head\"} 1",
            "pdb_open_groups 2",
            "pdb_batch_commits_count 1",
            "pdb_request_seconds_count{endpoint=\"commits\",status=\"201\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
