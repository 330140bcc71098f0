//! Prometheus metrics: every series `/metrics` exposes is named here ([`SERIES`]), recorded
//! through the `metrics` crate and rendered by `metrics-exporter-prometheus`.
//!
//! Each [`Metrics`] (one per `AppState`) owns its own Prometheus recorder instead of the
//! process-wide one, so several gateways in one process (the tests) each count only their own
//! requests. The hot path holds registered handles and never looks a series up by name; the
//! request counter keeps one handle per route and status.

use foldhash::HashMap;
use std::fmt::Write;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::domain::AccountHealth;

/// Bucket upper bounds in seconds, for both latency histograms.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes `/metrics`
/// (the exporter keeps raw samples until then).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exposed series: name, kind, help text and label names.
pub struct Series {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

const fn series(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    labels: &'static [&'static str],
) -> Series {
    Series {
        name,
        kind,
        help,
        labels,
    }
}

pub const HTTP_REQUESTS: Series = series(
    "tollgate_http_requests_total",
    Kind::Counter,
    "Requests by route and status.",
    &["route", "status"],
);
pub const REFUSED: Series = series(
    "tollgate_refused_total",
    Kind::Counter,
    "Proxy requests refused by the gateway, by error code (bad keys included; they write no log row).",
    &["code"],
);
pub const UPSTREAM_LATENCY: Series = series(
    "tollgate_upstream_latency_seconds",
    Kind::Histogram,
    "Time from sending a request upstream to its response headers.",
    &[],
);
pub const GATEWAY_OVERHEAD: Series = series(
    "tollgate_gateway_overhead_seconds",
    Kind::Histogram,
    "Time each proxied request spends inside tollgate, excluding the upstream.",
    &[],
);
pub const UPSTREAM_ATTEMPT_FAILURES: Series = series(
    "tollgate_upstream_attempt_failures_total",
    Kind::Counter,
    "Upstream attempts that failed (then retried or reported).",
    &[],
);
pub const RECORDER_QUEUE_DEPTH: Series = series(
    "tollgate_recorder_queue_depth",
    Kind::Gauge,
    "Usage events waiting to be settled.",
    &[],
);
pub const RECORDER_EVENTS_APPLIED: Series = series(
    "tollgate_recorder_events_applied_total",
    Kind::Counter,
    "Usage events settled in the database.",
    &[],
);
pub const RECORDER_DUPLICATES: Series = series(
    "tollgate_recorder_duplicates_total",
    Kind::Counter,
    "Usage events skipped as already applied.",
    &[],
);
pub const RECORDER_BATCHES: Series = series(
    "tollgate_recorder_batches_total",
    Kind::Counter,
    "Settlement transactions committed.",
    &[],
);
/// A counter of seconds, i.e. a float; the exporter's counters are integers, so this one is
/// written by [`Metrics::render`] itself.
pub const RECORDER_BATCH_SECONDS: Series = series(
    "tollgate_recorder_batch_seconds_sum",
    Kind::Counter,
    "Total time spent in settlement transactions.",
    &[],
);
pub const SETTLEMENT_FAILURES: Series = series(
    "tollgate_settlement_failures_total",
    Kind::Counter,
    "Settlement transactions that failed (and were retried).",
    &[],
);
pub const RECORDER_SPILLED: Series = series(
    "tollgate_recorder_spilled_total",
    Kind::Counter,
    "Usage events written to the on-disk journal.",
    &[],
);
pub const STATS_FAILURES: Series = series(
    "tollgate_stats_failures_total",
    Kind::Counter,
    "Real-time stats updates that failed.",
    &[],
);
pub const DB_POOL_CONNECTIONS: Series = series(
    "tollgate_db_pool_connections",
    Kind::Gauge,
    "Connections open in the database pool.",
    &[],
);
pub const DB_POOL_IDLE: Series = series(
    "tollgate_db_pool_idle",
    Kind::Gauge,
    "Idle connections in the database pool.",
    &[],
);
pub const ACCOUNTS: Series = series(
    "tollgate_accounts",
    Kind::Gauge,
    "Active upstream accounts by health (ok, cooling_down, auth_failed), read at scrape time.",
    &["health"],
);
pub const PROBES: Series = series(
    "tollgate_probes_total",
    Kind::Counter,
    "Upstream account probes (background and the admin Test), by result (ok or failed).",
    &["result"],
);

/// Every series, in one list.
pub const SERIES: [&Series; 17] = [
    &HTTP_REQUESTS,
    &REFUSED,
    &UPSTREAM_LATENCY,
    &GATEWAY_OVERHEAD,
    &UPSTREAM_ATTEMPT_FAILURES,
    &RECORDER_QUEUE_DEPTH,
    &RECORDER_EVENTS_APPLIED,
    &RECORDER_DUPLICATES,
    &RECORDER_BATCHES,
    &RECORDER_BATCH_SECONDS,
    &SETTLEMENT_FAILURES,
    &RECORDER_SPILLED,
    &STATS_FAILURES,
    &DB_POOL_CONNECTIONS,
    &DB_POOL_IDLE,
    &ACCOUNTS,
    &PROBES,
];

/// A latency histogram in seconds.
pub struct Histogram(metrics::Histogram);

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.0.record(d.as_secs_f64());
    }
}

/// A counter. `fetch_add` keeps the call form of the `AtomicU64` it replaced.
pub struct Counter(metrics::Counter);

impl Counter {
    pub fn increment(&self, n: u64) {
        self.0.increment(n);
    }
}

/// Values read from elsewhere (the recorder, the database pool) when `/metrics` is scraped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sampled {
    pub recorder_queue_depth: u64,
    pub recorder_events_applied: u64,
    pub recorder_duplicates: u64,
    pub recorder_batches: u64,
    pub recorder_batch_seconds: f64,
    pub settlement_failures: u64,
    pub recorder_spilled: u64,
    pub stats_failures: u64,
    pub db_pool_connections: u64,
    pub db_pool_idle: u64,
    /// Active accounts per health, in `AccountHealth::ALL`'s order; None when they could not
    /// be read (the gauges keep their last values).
    pub accounts_by_health: Option<[u64; AccountHealth::ALL.len()]>,
}

/// Handles for the series set from [`Sampled`] at each scrape.
struct SampledHandles {
    recorder_queue_depth: metrics::Gauge,
    recorder_events_applied: metrics::Counter,
    recorder_duplicates: metrics::Counter,
    recorder_batches: metrics::Counter,
    settlement_failures: metrics::Counter,
    recorder_spilled: metrics::Counter,
    stats_failures: metrics::Counter,
    db_pool_connections: metrics::Gauge,
    db_pool_idle: metrics::Gauge,
    accounts: Vec<metrics::Gauge>,
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: Arc<PrometheusHandle>,
    /// route → status → its counter
    requests: RwLock<HashMap<String, HashMap<u16, metrics::Counter>>>,
    /// code → its refusal counter
    refused: RwLock<HashMap<&'static str, metrics::Counter>>,
    pub upstream_latency: Histogram,
    pub gateway_overhead: Histogram,
    pub upstream_attempt_failures: Counter,
    sampled: SampledHandles,
    probes_ok: Counter,
    probes_failed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of series. Inside a tokio runtime this also starts the upkeep task that
    /// folds histogram samples every [`UPKEEP_EVERY`]; it ends when these metrics are dropped.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = Arc::new(recorder.handle());
        let m = metrics::with_local_recorder(&recorder, || {
            for s in SERIES {
                match s.kind {
                    Kind::Counter => metrics::describe_counter!(s.name, s.help),
                    Kind::Gauge => metrics::describe_gauge!(s.name, s.help),
                    Kind::Histogram => metrics::describe_histogram!(s.name, s.help),
                }
            }
            let counter = |s: &Series| metrics::counter!(s.name);
            let gauge = |s: &Series| metrics::gauge!(s.name);
            (
                Histogram(metrics::histogram!(UPSTREAM_LATENCY.name)),
                Histogram(metrics::histogram!(GATEWAY_OVERHEAD.name)),
                Counter(counter(&UPSTREAM_ATTEMPT_FAILURES)),
                SampledHandles {
                    recorder_queue_depth: gauge(&RECORDER_QUEUE_DEPTH),
                    recorder_events_applied: counter(&RECORDER_EVENTS_APPLIED),
                    recorder_duplicates: counter(&RECORDER_DUPLICATES),
                    recorder_batches: counter(&RECORDER_BATCHES),
                    settlement_failures: counter(&SETTLEMENT_FAILURES),
                    recorder_spilled: counter(&RECORDER_SPILLED),
                    stats_failures: counter(&STATS_FAILURES),
                    db_pool_connections: gauge(&DB_POOL_CONNECTIONS),
                    db_pool_idle: gauge(&DB_POOL_IDLE),
                    accounts: AccountHealth::ALL
                        .iter()
                        .map(|h| metrics::gauge!(ACCOUNTS.name, "health" => h.as_str()))
                        .collect(),
                },
                ["ok", "failed"].map(|r| Counter(metrics::counter!(PROBES.name, "result" => r))),
            )
        });
        let (upstream_latency, gateway_overhead, upstream_attempt_failures, sampled, probes) = m;
        let [probes_ok, probes_failed] = probes;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(upkeep(Arc::downgrade(&handle)));
        }
        Metrics {
            recorder,
            handle,
            requests: RwLock::default(),
            refused: RwLock::default(),
            upstream_latency,
            gateway_overhead,
            upstream_attempt_failures,
            sampled,
            probes_ok,
            probes_failed,
        }
    }

    /// One account probe sent, and whether upstream answered 2xx.
    pub fn count_probe(&self, ok: bool) {
        if ok {
            self.probes_ok.increment(1);
        } else {
            self.probes_failed.increment(1);
        }
    }

    pub fn count_request(&self, route: &str, status: u16) {
        {
            let by_route = self.requests.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = by_route.get(route).and_then(|by| by.get(&status)) {
                c.increment(1);
                return;
            }
        }
        let c = metrics::with_local_recorder(
            &self.recorder,
            || metrics::counter!(HTTP_REQUESTS.name, "route" => route.to_string(), "status" => status.to_string()),
        );
        c.increment(1);
        let mut by_route = self.requests.write().unwrap_or_else(|p| p.into_inner());
        by_route
            .entry(route.to_string())
            .or_default()
            .insert(status, c);
    }

    /// One proxy request refused with `code` (SPEC §11.4).
    pub fn count_refused(&self, code: &'static str) {
        if let Some(c) = self
            .refused
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(code)
        {
            c.increment(1);
            return;
        }
        let c = metrics::with_local_recorder(
            &self.recorder,
            || metrics::counter!(REFUSED.name, "code" => code),
        );
        c.increment(1);
        self.refused
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(code, c);
    }

    /// The Prometheus text exposition, with `sampled` as the values of the series read at
    /// scrape time.
    pub fn render(&self, sampled: &Sampled) -> String {
        let h = &self.sampled;
        h.recorder_queue_depth
            .set(sampled.recorder_queue_depth as f64);
        h.recorder_events_applied
            .absolute(sampled.recorder_events_applied);
        h.recorder_duplicates.absolute(sampled.recorder_duplicates);
        h.recorder_batches.absolute(sampled.recorder_batches);
        h.settlement_failures.absolute(sampled.settlement_failures);
        h.recorder_spilled.absolute(sampled.recorder_spilled);
        h.stats_failures.absolute(sampled.stats_failures);
        h.db_pool_connections
            .set(sampled.db_pool_connections as f64);
        h.db_pool_idle.set(sampled.db_pool_idle as f64);
        if let Some(counts) = sampled.accounts_by_health {
            for (g, n) in h.accounts.iter().zip(counts) {
                g.set(n as f64);
            }
        }
        let mut out = self.handle.render();
        let s = &RECORDER_BATCH_SECONDS;
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}",
            name = s.name,
            help = s.help,
            v = sampled.recorder_batch_seconds
        );
        out
    }
}

async fn upkeep(handle: Weak<PrometheusHandle>) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        match handle.upgrade() {
            Some(h) => h.run_upkeep(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("{start} missing:\n{text}"))
    }

    #[test]
    fn each_instance_counts_only_its_own_requests() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.count_request("/v1/chat/completions", 200);
        a.count_request("/v1/chat/completions", 200);
        a.count_request("/v1/chat/completions", 401);
        b.count_request("/v1/chat/completions", 200);
        let text = a.render(&Sampled::default());
        assert_eq!(
            line(
                &text,
                "tollgate_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"
            )
            .rsplit(' ')
            .next(),
            Some("2")
        );
        assert!(text.contains(
            "tollgate_http_requests_total{route=\"/v1/chat/completions\",status=\"401\"} 1\n"
        ));
        let text = b.render(&Sampled::default());
        assert!(text.contains(
            "tollgate_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1\n"
        ));
        assert!(!text.contains("status=\"401\""), "{text}");
    }

    #[test]
    fn every_series_is_exposed_with_its_type_and_help() {
        let m = Metrics::new();
        m.count_request("/healthz", 200);
        m.count_refused("invalid_api_key");
        m.upstream_latency.observe(Duration::from_millis(3));
        m.gateway_overhead.observe(Duration::from_micros(300));
        m.upstream_attempt_failures.increment(1);
        m.count_probe(true);
        m.count_probe(false);
        m.count_probe(false);
        let text = m.render(&Sampled {
            recorder_queue_depth: 4,
            recorder_events_applied: 7,
            recorder_batch_seconds: 0.25,
            db_pool_connections: 2,
            accounts_by_health: Some([3, 1, 2]),
            ..Sampled::default()
        });
        for s in SERIES {
            let kind = match s.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            line(&text, &format!("# TYPE {} {kind}", s.name));
            line(&text, &format!("# HELP {} {}", s.name, s.help));
        }
        assert_eq!(
            line(&text, "tollgate_recorder_queue_depth "),
            "tollgate_recorder_queue_depth 4"
        );
        assert_eq!(
            line(&text, "tollgate_recorder_events_applied_total "),
            "tollgate_recorder_events_applied_total 7"
        );
        assert_eq!(
            line(&text, "tollgate_recorder_batch_seconds_sum "),
            "tollgate_recorder_batch_seconds_sum 0.25"
        );
        assert_eq!(
            line(&text, "tollgate_upstream_attempt_failures_total "),
            "tollgate_upstream_attempt_failures_total 1"
        );
        assert_eq!(
            line(
                &text,
                "tollgate_upstream_latency_seconds_bucket{le=\"0.0025\"}"
            ),
            "tollgate_upstream_latency_seconds_bucket{le=\"0.0025\"} 0"
        );
        assert_eq!(
            line(
                &text,
                "tollgate_upstream_latency_seconds_bucket{le=\"0.005\"}"
            ),
            "tollgate_upstream_latency_seconds_bucket{le=\"0.005\"} 1"
        );
        assert_eq!(
            line(
                &text,
                "tollgate_upstream_latency_seconds_bucket{le=\"+Inf\"}"
            ),
            "tollgate_upstream_latency_seconds_bucket{le=\"+Inf\"} 1"
        );
        for (health, n) in [("ok", 3), ("cooling_down", 1), ("auth_failed", 2)] {
            let series = format!("tollgate_accounts{{health=\"{health}\"}}");
            assert_eq!(line(&text, &series), format!("{series} {n}"));
        }
        for (result, n) in [("ok", 1), ("failed", 2)] {
            let series = format!("tollgate_probes_total{{result=\"{result}\"}}");
            assert_eq!(line(&text, &series), format!("{series} {n}"));
        }
        // Unreadable account counts keep the gauges' last values.
        let text = m.render(&Sampled::default());
        assert_eq!(
            line(&text, "tollgate_accounts{health=\"ok\"}"),
            "tollgate_accounts{health=\"ok\"} 3"
        );
        assert_eq!(
            line(&text, "tollgate_gateway_overhead_seconds_count "),
            "tollgate_gateway_overhead_seconds_count 1"
        );
        assert_eq!(
            line(&text, "tollgate_gateway_overhead_seconds_sum "),
            "tollgate_gateway_overhead_seconds_sum 0.0003"
        );
    }
}
