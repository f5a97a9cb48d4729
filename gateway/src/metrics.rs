//! Gateway metrics in the Prometheus text exposition format (version 0.0.4): counters and
//! latency histograms only. Labels are fixed strings chosen by the gateway (an outcome), never
//! anything taken from a request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Every metric the gateway keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Discover calls answered with candidates.
    pub discover_ok: Counter,
    /// Discover calls refused (bad request or no healthy node).
    pub discover_err: Counter,
    /// Submit calls whose stream ended with the node's final chunk.
    pub submit_ok: Counter,
    /// Submit calls refused before forwarding (malformed header, no known handle).
    pub submit_rejected: Counter,
    /// Submit calls where no node answered (every handle failed before its first message).
    pub submit_no_node: Counter,
    /// Submit calls whose node failed after its first message (the device got an error).
    pub submit_midstream_failure: Counter,
    /// Submit calls the device cancelled.
    pub submit_cancelled: Counter,
    /// Times a node failed before its first message and the next handle was tried.
    pub failovers: Counter,
    /// Health checks that passed.
    pub health_ok: Counter,
    /// Health checks that failed (unreachable, bad bundle, expired key).
    pub health_failed: Counter,
    /// DNS resolutions of the node source that answered (records or none).
    pub dns_ok: Counter,
    /// DNS resolutions that failed (the last set of nodes was kept).
    pub dns_failed: Counter,
    /// Discover latency.
    pub discover_seconds: Histogram,
    /// Time from receiving a Submit to relaying the node's first message.
    pub submit_first_message_seconds: Histogram,
    /// Time from receiving a Submit to the end of the relayed stream.
    pub submit_seconds: Histogram,
    /// Health check latency.
    pub health_check_seconds: Histogram,
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, rows: &[(&str, &Counter)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (label, c) in rows {
                let _ = writeln!(out, "{name}{label} {}", c.get());
            }
        };
        counter(
            &mut out,
            "tandem_gateway_discover_total",
            "Discover calls by outcome.",
            &[
                ("{outcome=\"ok\"}", &self.discover_ok),
                ("{outcome=\"error\"}", &self.discover_err),
            ],
        );
        counter(
            &mut out,
            "tandem_gateway_submit_total",
            "Submit calls by outcome.",
            &[
                ("{outcome=\"ok\"}", &self.submit_ok),
                ("{outcome=\"rejected\"}", &self.submit_rejected),
                ("{outcome=\"no_node\"}", &self.submit_no_node),
                (
                    "{outcome=\"midstream_failure\"}",
                    &self.submit_midstream_failure,
                ),
                ("{outcome=\"cancelled\"}", &self.submit_cancelled),
            ],
        );
        counter(
            &mut out,
            "tandem_gateway_failovers_total",
            "Nodes that failed before their first message, so the next handle was tried.",
            &[("", &self.failovers)],
        );
        counter(
            &mut out,
            "tandem_gateway_health_checks_total",
            "Node health checks by outcome.",
            &[
                ("{outcome=\"ok\"}", &self.health_ok),
                ("{outcome=\"failed\"}", &self.health_failed),
            ],
        );
        counter(
            &mut out,
            "tandem_gateway_dns_resolutions_total",
            "DNS resolutions of the node source by outcome.",
            &[
                ("{outcome=\"ok\"}", &self.dns_ok),
                ("{outcome=\"failed\"}", &self.dns_failed),
            ],
        );
        self.discover_seconds.render(
            &mut out,
            "tandem_gateway_discover_seconds",
            "Discover latency.",
        );
        self.submit_first_message_seconds.render(
            &mut out,
            "tandem_gateway_submit_first_message_seconds",
            "Time from a Submit to relaying the node's first message.",
        );
        self.submit_seconds.render(
            &mut out,
            "tandem_gateway_submit_seconds",
            "Time from a Submit to the end of the relayed stream.",
        );
        self.health_check_seconds.render(
            &mut out,
            "tandem_gateway_health_check_seconds",
            "Node health check latency.",
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.0005\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.005\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"10\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
    }

    #[test]
    fn render_has_every_family() {
        let m = Metrics::default();
        m.failovers.inc();
        let s = m.render();
        assert!(s.contains("tandem_gateway_failovers_total 1\n"));
        for fam in [
            "tandem_gateway_discover_total",
            "tandem_gateway_submit_total",
            "tandem_gateway_health_checks_total",
            "tandem_gateway_dns_resolutions_total",
            "tandem_gateway_submit_seconds",
        ] {
            assert!(s.contains(&format!("# TYPE {fam} ")), "{fam}");
        }
    }
}
