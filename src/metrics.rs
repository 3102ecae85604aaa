//! Prometheus metrics: counters kept per worker without locks, summed when scraped.
//!
//! Each worker thread owns its [`WorkerMetrics`]; the hot path only adds to
//! atomics that no other thread writes, so counting costs no lock and no
//! cache-line traffic between cores. A scrape walks every worker under the
//! registry's lock (held only by scrapes and worker start) and sums.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

/// Histogram bucket bounds in seconds, from a loopback hit to Tyk's 30 s
/// proxy timeout.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The statuses gwproxy itself answers with; anything else is "other".
const STATUSES: [u16; 9] = [200, 400, 401, 403, 404, 405, 413, 500, 503];

/// The routes of SPEC.md, and everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Proxy,
    Hello,
    Metrics,
    Other,
}

const ROUTES: [(Route, &str); 4] = [
    (Route::Proxy, "/api/proxy"),
    (Route::Hello, "/hello"),
    (Route::Metrics, "/metrics"),
    (Route::Other, "other"),
];

/// Every worker's metrics, and the few that belong to the process.
#[derive(Debug, Default)]
pub struct Registry {
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    /// Requests that reached no gateway, by route and status.
    requests: [[AtomicU64; STATUSES.len() + 1]; ROUTES.len()],
    request_duration: Histogram,
    in_flight: AtomicI64,
    shed: AtomicU64,
    /// Per gateway URL; kept across config reloads so counters never reset.
    gateways: Mutex<BTreeMap<String, Arc<GatewayMetrics>>>,
}

/// One gateway's figures within one worker.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    requests: [AtomicU64; STATUSES.len() + 1],
    duration: Histogram,
    pub idle: AtomicI64,
    pub in_use: AtomicI64,
    pub opened: AtomicU64,
    pub reused: AtomicU64,
    pub retried: AtomicU64,
    pub evicted: AtomicU64,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Registry {
    /// A new worker's metrics, registered for scraping.
    pub fn worker(&self) -> Arc<WorkerMetrics> {
        let worker = Arc::new(WorkerMetrics::default());
        lock(&self.workers).push(worker.clone());
        worker
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let workers = lock(&self.workers).clone();
        let mut out = String::with_capacity(8 * 1024);
        render_requests(&mut out, &workers);
        render_durations(&mut out, &workers);
        render_gauges(&mut out, &workers, self);
        render_pools(&mut out, &workers);
        out
    }
}

impl WorkerMetrics {
    /// This worker's figures for the gateway at `url`, made on first use.
    pub fn gateway(&self, url: &str) -> Arc<GatewayMetrics> {
        lock(&self.gateways)
            .entry(url.to_owned())
            .or_default()
            .clone()
    }

    /// Counts one finished request. `gateway` is the one it was sent to, if
    /// any, with the time the gateway took.
    pub fn record(
        &self,
        route: Route,
        status: StatusCode,
        elapsed: Duration,
        gateway: Option<(&GatewayMetrics, Duration)>,
    ) {
        let status = status_index(status);
        match gateway {
            Some((gateway, took)) => {
                gateway.requests[status].fetch_add(1, Relaxed);
                gateway.duration.observe(took);
            }
            None => {
                self.requests[route as usize][status].fetch_add(1, Relaxed);
            }
        }
        if route == Route::Proxy {
            self.request_duration.observe(elapsed);
        }
    }

    pub fn shed(&self) {
        self.shed.fetch_add(1, Relaxed);
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }
}

/// See [`WorkerMetrics::in_flight`].
pub struct InFlight(Arc<WorkerMetrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }
}

fn status_index(status: StatusCode) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status.as_u16())
        .unwrap_or(STATUSES.len())
}

fn status_label(index: usize) -> &'static str {
    const LABELS: [&str; STATUSES.len() + 1] = [
        "200", "400", "401", "403", "404", "405", "413", "500", "503", "other",
    ];
    LABELS[index]
}

/// Gateway figures summed over workers, by gateway URL.
fn by_gateway(workers: &[Arc<WorkerMetrics>]) -> BTreeMap<String, Vec<Arc<GatewayMetrics>>> {
    let mut all: BTreeMap<String, Vec<Arc<GatewayMetrics>>> = BTreeMap::new();
    for worker in workers {
        for (url, gateway) in lock(&worker.gateways).iter() {
            all.entry(url.clone()).or_default().push(gateway.clone());
        }
    }
    all
}

fn render_requests(out: &mut String, workers: &[Arc<WorkerMetrics>]) {
    out.push_str(
        "# HELP gwproxy_requests_total Requests answered, by route, status and gateway.\n",
    );
    out.push_str("# TYPE gwproxy_requests_total counter\n");
    for (r, (_, route)) in ROUTES.iter().enumerate() {
        for s in 0..=STATUSES.len() {
            let n: u64 = workers.iter().map(|w| w.requests[r][s].load(Relaxed)).sum();
            if n > 0 {
                let status = status_label(s);
                let _ = writeln!(
                    out,
                    "gwproxy_requests_total{{route=\"{route}\",status=\"{status}\",gateway=\"\"}} {n}"
                );
            }
        }
    }
    for (url, gateways) in by_gateway(workers) {
        for s in 0..=STATUSES.len() {
            let n: u64 = gateways.iter().map(|g| g.requests[s].load(Relaxed)).sum();
            if n > 0 {
                let (status, url) = (status_label(s), escape(&url));
                let _ = writeln!(
                    out,
                    "gwproxy_requests_total{{route=\"/api/proxy\",status=\"{status}\",gateway=\"{url}\"}} {n}"
                );
            }
        }
    }
}

fn render_durations(out: &mut String, workers: &[Arc<WorkerMetrics>]) {
    out.push_str("# HELP gwproxy_request_duration_seconds Whole /api/proxy requests.\n");
    out.push_str("# TYPE gwproxy_request_duration_seconds histogram\n");
    let all: Vec<&Histogram> = workers.iter().map(|w| &w.request_duration).collect();
    render_histogram(out, "gwproxy_request_duration_seconds", "", &all);

    out.push_str("# HELP gwproxy_gateway_duration_seconds The gateway's part of each request.\n");
    out.push_str("# TYPE gwproxy_gateway_duration_seconds histogram\n");
    for (url, gateways) in by_gateway(workers) {
        let labels = format!("gateway=\"{}\"", escape(&url));
        let all: Vec<&Histogram> = gateways.iter().map(|g| &g.duration).collect();
        render_histogram(out, "gwproxy_gateway_duration_seconds", &labels, &all);
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &str, parts: &[&Histogram]) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, bound) in BUCKETS.iter().enumerate() {
        cumulative += parts
            .iter()
            .map(|h| h.buckets[i].load(Relaxed))
            .sum::<u64>();
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    let count: u64 = parts.iter().map(|h| h.count.load(Relaxed)).sum();
    let micros: u64 = parts.iter().map(|h| h.sum_micros.load(Relaxed)).sum();
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braced = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braced} {}", micros as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{braced} {count}");
}

fn render_gauges(out: &mut String, workers: &[Arc<WorkerMetrics>], registry: &Registry) {
    let in_flight: i64 = workers.iter().map(|w| w.in_flight.load(Relaxed)).sum();
    let shed: u64 = workers.iter().map(|w| w.shed.load(Relaxed)).sum();
    let handshakes = registry.tls_handshakes.load(Relaxed);
    let failures = registry.tls_handshake_failures.load(Relaxed);
    let version = env!("CARGO_PKG_VERSION");
    let _ = write!(
        out,
        "# HELP gwproxy_in_flight_requests /api/proxy requests being handled.\n\
         # TYPE gwproxy_in_flight_requests gauge\n\
         gwproxy_in_flight_requests {in_flight}\n\
         # HELP gwproxy_shed_total Requests refused with 503 over limits.max_concurrent_requests.\n\
         # TYPE gwproxy_shed_total counter\n\
         gwproxy_shed_total {shed}\n\
         # HELP gwproxy_tls_handshakes_total Completed client TLS handshakes.\n\
         # TYPE gwproxy_tls_handshakes_total counter\n\
         gwproxy_tls_handshakes_total {handshakes}\n\
         # HELP gwproxy_tls_handshake_failures_total Failed, timed-out or plain-HTTP client handshakes.\n\
         # TYPE gwproxy_tls_handshake_failures_total counter\n\
         gwproxy_tls_handshake_failures_total {failures}\n\
         # HELP gwproxy_workers Worker threads.\n\
         # TYPE gwproxy_workers gauge\n\
         gwproxy_workers {}\n\
         # HELP gwproxy_build_info Build information.\n\
         # TYPE gwproxy_build_info gauge\n\
         gwproxy_build_info{{version=\"{version}\"}} 1\n",
        workers.len()
    );
}

/// Name, type, help, and how to read one gateway's value.
type PoolSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&GatewayMetrics) -> i64,
);

fn render_pools(out: &mut String, workers: &[Arc<WorkerMetrics>]) {
    let gateways = by_gateway(workers);
    let series: [PoolSeries; 6] = [
        (
            "gwproxy_pool_idle_connections",
            "gauge",
            "Idle pooled gateway connections.",
            |g| g.idle.load(Relaxed),
        ),
        (
            "gwproxy_pool_in_use_connections",
            "gauge",
            "Gateway connections carrying a request.",
            |g| g.in_use.load(Relaxed),
        ),
        (
            "gwproxy_pool_connections_opened_total",
            "counter",
            "New gateway connections.",
            |g| count(&g.opened),
        ),
        (
            "gwproxy_pool_reuses_total",
            "counter",
            "Requests sent on a pooled connection.",
            |g| count(&g.reused),
        ),
        (
            "gwproxy_pool_retries_total",
            "counter",
            "Requests retried on a fresh connection.",
            |g| count(&g.retried),
        ),
        (
            "gwproxy_pool_evictions_total",
            "counter",
            "Pooled connections dropped as expired or closed.",
            |g| count(&g.evicted),
        ),
    ];
    for (name, kind, help, read) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (url, parts) in &gateways {
            let value: i64 = parts.iter().map(|g| read(g)).sum();
            let _ = writeln!(out, "{name}{{gateway=\"{}\"}} {value}", escape(url));
        }
    }
}

fn count(counter: &AtomicU64) -> i64 {
    i64::try_from(counter.load(Relaxed)).unwrap_or(i64::MAX)
}

/// Label values escape `\`, `"` and newlines (Prometheus text format).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere; keep serving them.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_renders_prometheus_text() {
        let registry = Registry::default();
        let (a, b) = (registry.worker(), registry.worker());
        let gw = "http://127.0.0.1:8181";
        let took = Duration::from_millis(3);
        a.record(
            Route::Proxy,
            StatusCode::OK,
            took,
            Some((&a.gateway(gw), took)),
        );
        b.record(
            Route::Proxy,
            StatusCode::OK,
            took,
            Some((&b.gateway(gw), took)),
        );
        b.record(Route::Proxy, StatusCode::UNAUTHORIZED, took, None);
        a.shed();
        b.gateway(gw).opened.fetch_add(2, Relaxed);

        let text = registry.render();
        for line in [
            "gwproxy_requests_total{route=\"/api/proxy\",status=\"200\",gateway=\"http://127.0.0.1:8181\"} 2",
            "gwproxy_requests_total{route=\"/api/proxy\",status=\"401\",gateway=\"\"} 1",
            "gwproxy_request_duration_seconds_bucket{le=\"0.005\"} 3",
            "gwproxy_request_duration_seconds_count 3",
            "gwproxy_gateway_duration_seconds_count{gateway=\"http://127.0.0.1:8181\"} 2",
            "gwproxy_shed_total 1",
            "gwproxy_pool_connections_opened_total{gateway=\"http://127.0.0.1:8181\"} 2",
            "gwproxy_workers 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn in_flight_guard_counts_up_and_down() {
        let registry = Registry::default();
        let worker = registry.worker();
        let guard = worker.in_flight();
        assert!(registry.render().contains("gwproxy_in_flight_requests 1\n"));
        drop(guard);
        assert!(registry.render().contains("gwproxy_in_flight_requests 0\n"));
    }
}
