//! Prometheus metrics, kept in atomics and rendered as text at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Bucket upper bounds in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket histogram.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    /// route → status → count
    requests: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    pub upstream_latency: Histogram,
    pub gateway_overhead: Histogram,
    pub upstream_attempt_failures: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(route) {
            Some(by_status) => *by_status.entry(status).or_default() += 1,
            None => {
                m.insert(route.to_string(), [(status, 1)].into());
            }
        }
    }

    /// The Prometheus text exposition; `extra` adds gauges known only to the caller.
    pub fn render(&self, extra: &[(&str, &str, &str, f64)]) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP tollgate_http_requests_total Requests by route and status.\n# TYPE tollgate_http_requests_total counter\n");
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let rows = requests
            .iter()
            .flat_map(|(route, by)| by.iter().map(move |(s, n)| (route, s, n)));
        for (route, status, n) in rows {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "tollgate_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        self.upstream_latency.render(
            &mut out,
            "tollgate_upstream_latency_seconds",
            "Time from sending a request upstream to its response headers.",
        );
        self.gateway_overhead.render(
            &mut out,
            "tollgate_gateway_overhead_seconds",
            "Time each proxied request spends inside tollgate, excluding the upstream.",
        );
        let _ = writeln!(
            out,
            "# HELP tollgate_upstream_attempt_failures_total Upstream attempts that failed (then retried or reported).\n# TYPE tollgate_upstream_attempt_failures_total counter\ntollgate_upstream_attempt_failures_total {}",
            self.upstream_attempt_failures.load(Ordering::Relaxed)
        );
        for (name, kind, help, v) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}
