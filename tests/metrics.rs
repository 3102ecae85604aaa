//! Black-box tests of `GET /metrics` (README, "Metrics"): counts around real
//! traffic, load shedding, a separate metrics listener and the Prometheus
//! text format, over real sockets against the binary.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use http::{Method, StatusCode};
use serde_json::json;
use tokio::sync::watch;

use common::ops::*;
use common::{parse_json, Gwproxy, Upstream, SECRET};

// ================================================================ tests: metrics

#[tokio::test]
async fn metrics_count_requests_by_route_status_and_gateway_and_pool_reuse() {
    let gateway = Upstream::fixed(200, "application/json", br#"{"ok":true}"#).await;
    let url = gateway.url("");
    // One worker, so that all three requests share one pool.
    let gw = Gwproxy::start(Gwproxy::config(&[&url], json!({ "workers": 1 })));
    let before = scrape(gw.addr).await;

    for _ in 0..3 {
        let (status, _, body) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/ok")), &[]).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
    }
    let (status, ..) = proxy_as(gw.addr, WRONG_SECRET, &get(&gateway.url("/ok")), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, ..) = proxy_as(gw.addr, SECRET, &get("http://127.0.0.1:9/x"), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let after = scrape(gw.addr).await;

    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let proxied = |status| [("route", "/api/proxy"), ("status", status), ("gateway", "")];
    let requests = "gwproxy_requests_total";
    let ok = [
        ("route", "/api/proxy"),
        ("status", "200"),
        ("gateway", &url),
    ];
    assert_eq!(delta(requests, &ok), 3.0, "{}", after.text);
    assert_eq!(delta(requests, &proxied("401")), 1.0, "{}", after.text);
    assert_eq!(delta(requests, &proxied("403")), 1.0, "{}", after.text);
    // The first scrape is counted once it has been answered.
    let scrapes = [("route", "/metrics"), ("status", "200"), ("gateway", "")];
    assert_eq!(delta(requests, &scrapes), 1.0, "{}", after.text);

    // Every /api/proxy request is timed; only the three that reached it
    // are timed at the gateway.
    assert_eq!(delta("gwproxy_request_duration_seconds_count", &[]), 5.0);
    let inf = [("le", "+Inf")];
    assert_eq!(delta("gwproxy_request_duration_seconds_bucket", &inf), 5.0);
    assert!(delta("gwproxy_request_duration_seconds_sum", &[]) > 0.0);
    let by_gateway = [("gateway", url.as_str())];
    assert_eq!(
        delta("gwproxy_gateway_duration_seconds_count", &by_gateway),
        3.0
    );

    assert_pool_reused_one_connection(&before, &after, &url);
    assert_eq!(
        gateway
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(after.present("gwproxy_in_flight_requests", &[]), 0.0);
    assert_eq!(after.present("gwproxy_workers", &[]), 1.0);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(after.present("gwproxy_build_info", &version), 1.0);
}

/// Three requests on one keep-alive gateway: one connection opened, reused
/// twice, and back in the pool.
fn assert_pool_reused_one_connection(before: &Scrape, after: &Scrape, url: &str) {
    let gateway = [("gateway", url)];
    let delta = |name: &str| after.present(name, &gateway) - before.present(name, &gateway);
    assert_eq!(
        delta("gwproxy_pool_connections_opened_total"),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(delta("gwproxy_pool_reuses_total"), 2.0, "{}", after.text);
    assert_eq!(delta("gwproxy_pool_retries_total"), 0.0);
    assert_eq!(
        after.present("gwproxy_pool_idle_connections", &gateway),
        1.0
    );
    assert_eq!(
        after.present("gwproxy_pool_in_use_connections", &gateway),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_concurrency_limit_is_shed_and_counted() {
    let (release, release_rx) = watch::channel(false);
    let (held, mut arrived) = held_gateway(release_rx).await;
    let extra = json!({ "limits": { "max_concurrent_requests": 1 } });
    let gw = Gwproxy::start(Gwproxy::config(&[&held], extra));
    let before = scrape(gw.addr).await;

    let (addr, request) = (gw.addr, get(&format!("{held}/slow")));
    let first = tokio::spawn(async move { proxy_as(addr, SECRET, &request, &[]).await });
    next_arrival(&mut arrived).await;
    let during = scrape(gw.addr).await;
    assert_eq!(during.present("gwproxy_in_flight_requests", &[]), 1.0);
    // A reload with the same limit keeps counting the request in flight.
    flush_logs(&gw).await;

    let (status, headers, body) = proxy_as(gw.addr, SECRET, &get(&held), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert_eq!(
        headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(parse_json(&body)["Message"], "Server busy");

    release.send(true).expect("release the gateway");
    let (status, _, body) = first.await.expect("first request task");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(parse_json(&body)["body"], "held");

    let after = scrape(gw.addr).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(delta("gwproxy_shed_total", &[]), 1.0, "{}", after.text);
    let shed = [("route", "/api/proxy"), ("status", "503"), ("gateway", "")];
    assert_eq!(delta("gwproxy_requests_total", &shed), 1.0);
    let ok = [
        ("route", "/api/proxy"),
        ("status", "200"),
        ("gateway", &held),
    ];
    assert_eq!(delta("gwproxy_requests_total", &ok), 1.0);
    assert_eq!(after.present("gwproxy_in_flight_requests", &[]), 0.0);
}

#[tokio::test]
async fn metrics_listen_serves_metrics_apart_and_the_main_listener_answers_404() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let extra = json!({ "metrics": { "listen": "127.0.0.1:0" } });
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], extra));
    let logged = stderr_until(&gw, "the metrics address", |s| {
        s.contains("metrics listening")
    })
    .await;
    let metrics_addr = metrics_listening_addr(&logged);
    assert_ne!(metrics_addr, gw.addr);

    let (status, headers, body) = plain(gw.addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(parse_json(&body)["Message"], "Not found");
    assert!(headers.contains_key("x-request-id"));
    let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/a")), &[]).await;
    assert_eq!(status, StatusCode::OK);

    let apart = scrape(metrics_addr).await;
    let refused = [("route", "/metrics"), ("status", "404"), ("gateway", "")];
    assert_eq!(apart.present("gwproxy_requests_total", &refused), 1.0);
    let url = gateway.url("");
    let ok = [
        ("route", "/api/proxy"),
        ("status", "200"),
        ("gateway", url.as_str()),
    ];
    assert_eq!(apart.present("gwproxy_requests_total", &ok), 1.0);
    let (status, ..) = plain(metrics_addr, Method::GET, "/api/proxy").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "only /metrics is served there"
    );
}

/// The address in "metrics listening addr=…".
fn metrics_listening_addr(stderr: &str) -> SocketAddr {
    let line = stderr
        .lines()
        .find(|line| line.contains("metrics listening"))
        .expect("metrics listening line");
    let addr = text_fields(line)["addr"];
    addr.parse().expect("metrics address")
}

#[tokio::test]
async fn metrics_are_prometheus_text_0_0_4_with_declared_types_and_cumulative_buckets() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));
    let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/a")), &[]).await;
    assert_eq!(status, StatusCode::OK);

    // scrape() checks the content type and that every sample line parses.
    let metrics = scrape(gw.addr).await;
    assert!(metrics.text.ends_with('\n'));
    assert_types_declared_once_before_use(&metrics.text);
    let mut seen = HashSet::new();
    for sample in &metrics.samples {
        let key = format!("{}{:?}", sample.name, sample.labels);
        assert!(seen.insert(key.clone()), "duplicate series {key}");
    }
    assert_buckets_cumulative(&metrics, "gwproxy_request_duration_seconds", &[]);
    let url = gateway.url("");
    let labels = [("gateway", url.as_str())];
    assert_buckets_cumulative(&metrics, "gwproxy_gateway_duration_seconds", &labels);

    let (status, headers, _) = plain(gw.addr, Method::POST, "/metrics").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get("allow").expect("Allow"), "GET, HEAD");
}

/// Every sample belongs to a family whose `# TYPE` line came before it,
/// and no family is declared twice.
fn assert_types_declared_once_before_use(text: &str) {
    let mut declared: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                declared.insert(family, kind).is_none(),
                "declared twice: {line}"
            );
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "unknown comment {line}");
            continue;
        }
        let name = &line[..line.find(['{', ' ']).expect("sample")];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (declared.get(base) == Some(&"histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(declared.contains_key(family), "no # TYPE before {line}");
    }
}

/// Buckets never decrease, and `+Inf` equals `_count`.
fn assert_buckets_cumulative(metrics: &Scrape, family: &str, labels: &[(&str, &str)]) {
    let bucket = format!("{family}_bucket");
    let buckets: Vec<f64> = metrics
        .samples
        .iter()
        .filter(|s| s.name == bucket)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.contains(&(k.to_string(), v.to_string())))
        })
        .map(|s| s.value)
        .collect();
    assert!(buckets.len() > 2, "{family}: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "{family}: {buckets:?}"
    );
    let count = metrics.present(&format!("{family}_count"), labels);
    assert_eq!(buckets.last(), Some(&count), "{family}");
    assert!(count >= 1.0, "{family}");
}
