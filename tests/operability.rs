//! Black-box tests of gwproxy's operability: `/metrics`, request ids, the
//! access log, SIGHUP reload and `GWPROXY_<KEY>` overrides (README,
//! "Operating it" and "Command line"), over real sockets against the binary.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use common::{parse_json, raw_upstream, send, temp_path, Gwproxy, Upstream, SECRET};

/// Upper bound for anything that needs no timer to happen.
const PROMPT: Duration = Duration::from_secs(5);
/// A second user's secret, for reloads that swap users.
const OTHER_SECRET: &str = "other-user-secret-9876543210";
const WRONG_SECRET: &str = "not-anybody-s-secret";

// ---------------------------------------------------------------- clients

/// `POST /api/proxy` with `secret` and extra headers, on a fresh connection.
async fn proxy_as(
    addr: SocketAddr,
    secret: &str,
    request: &Value,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut all = vec![("authorization", secret)];
    all.extend_from_slice(headers);
    let body = request.to_string().into_bytes();
    let sending = send(addr, Method::POST, "/api/proxy", &all, body);
    tokio::time::timeout(PROMPT, sending)
        .await
        .expect("gwproxy answered /api/proxy in time")
}

fn get(url: &str) -> Value {
    json!({ "method": "GET", "url": url })
}

/// A bodiless request on a fresh connection, answered in time.
async fn plain(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    plain_with(addr, method, path, &[]).await
}

async fn plain_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let sending = send(addr, method, path, headers, Vec::new());
    tokio::time::timeout(PROMPT, sending)
        .await
        .expect("gwproxy answered in time")
}

/// The `X-Request-Id` a response carried.
fn request_id(headers: &HeaderMap) -> String {
    let id = headers
        .get("x-request-id")
        .expect("X-Request-Id in response");
    id.to_str().expect("ASCII request id").to_owned()
}

fn is_generated_id(id: &str) -> bool {
    id.len() == 20
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Retries `attempt` until it returns true; a reload reaches the worker
/// asynchronously, shortly after the signal.
async fn eventually<F, Fut>(what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PROMPT;
    while !attempt().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- gateways

/// A gateway that reports each request's arrival and answers `200 held`
/// only once `release` turns true (or after 10 s, so nothing hangs).
async fn held_gateway(release: watch::Receiver<bool>) -> (String, mpsc::UnboundedReceiver<()>) {
    let (arrived_tx, arrived_rx) = mpsc::unbounded_channel();
    let addr = raw_upstream(move |stream| {
        let (mut release, arrived) = (release.clone(), arrived_tx.clone());
        async move {
            let mut reader = BufReader::new(stream);
            while read_request_head(&mut reader).await {
                let _ = arrived.send(());
                let wait = release.wait_for(|released| *released);
                let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nheld";
                if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (format!("http://{addr}"), arrived_rx)
}

/// Reads one request head; gwproxy sends these GETs without a body.
async fn read_request_head(reader: &mut BufReader<TcpStream>) -> bool {
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if line == "\r\n" => return true,
            Ok(_) => {}
        }
    }
}

async fn next_arrival(arrived: &mut mpsc::UnboundedReceiver<()>) {
    let arrival = tokio::time::timeout(PROMPT, arrived.recv()).await;
    arrival.expect("the request reached the gateway in time");
}

// ---------------------------------------------------------------- metrics

/// One sample line of the Prometheus text format: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A parsed `/metrics` answer.
struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    /// The sample with exactly these labels, if rendered.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: HashSet<(&str, &str)> = labels.iter().copied().collect();
        self.samples
            .iter()
            .find(|s| {
                let have: HashSet<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                s.name == name && have == wanted
            })
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], for series that are only rendered once non-zero.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// A series that must be rendered.
    fn present(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{}", self.text))
    }
}

/// `GET /metrics` at `addr`: must be `200` Prometheus text whose every
/// sample line parses.
async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = plain(addr, Method::GET, "/metrics").await;
    let text = String::from_utf8(body.to_vec()).expect("UTF-8 metrics");
    assert_eq!(status, StatusCode::OK, "{text}");
    let content_type = headers.get("content-type").expect("content-type");
    assert!(
        content_type
            .to_str()
            .expect("ASCII content type")
            .starts_with("text/plain; version=0.0.4"),
        "{content_type:?}"
    );
    let samples = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    Scrape { samples, text }
}

/// Parses `name{label="value",...} value` (labels optional), as the
/// Prometheus text format 0.0.4 defines it.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels)?;
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = value.parse::<f64>().map_err(|_| "value is not a number")?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads `label="value",...}` and returns what follows the `}`.
fn parse_labels<'l>(
    mut rest: &'l str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'l str, String> {
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        let key_ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(format!("bad label name {key:?}"));
        }
        let (value, after) = label_value(after)?;
        labels.push((key.to_owned(), value));
        rest = after.strip_prefix(',').unwrap_or(after);
        if !after.starts_with([',', '}']) {
            return Err("label not followed by , or }".into());
        }
    }
}

/// An escaped label value up to its closing quote; returns it unescaped
/// and the text after the quote.
fn label_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, c @ ('\\' | '"'))) => value.push(c),
                _ => return Err("bad escape in label value".into()),
            },
            '\n' => return Err("raw newline in label value".into()),
            c => value.push(c),
        }
    }
    Err("unterminated label value".into())
}

// ---------------------------------------------------------------- logs

/// Waits until stderr satisfies `done`; returns it.
async fn stderr_until(gw: &Gwproxy, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PROMPT;
    loop {
        let stderr = gw.stderr();
        if done(&stderr) {
            return stderr;
        }
        assert!(Instant::now() < deadline, "never logged {what}:\n{stderr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes sure every line logged so far has been captured: stderr is one
/// pipe, so once the line a reload logs is read, everything logged before
/// it has been read too. Reloads the unchanged file, so use it last.
async fn flush_logs(gw: &Gwproxy) {
    let reloaded = |s: &str| s.matches("SIGHUP: config reloaded").count();
    let before = reloaded(&gw.stderr());
    gw.signal("HUP");
    stderr_until(gw, "the reload barrier", |s| reloaded(s) > before).await;
}

fn access_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains("gwproxy::access"))
        .collect()
}

/// The `key=value` fields of a text log line, quotes removed.
fn text_fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .map(|(key, value)| (key, value.trim_matches('"')))
        .collect()
}

fn write_config(gw: &Gwproxy, text: &str) {
    std::fs::write(gw.config_path(), text).expect("rewrite config");
}

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

// ================================================================ tests: request ids

#[tokio::test]
async fn a_callers_request_id_is_sent_to_the_gateway_and_echoed() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));

    let longest = "r".repeat(128);
    for given in ["caller-id-42.ABC", "{quoted:\"~!}", longest.as_str()] {
        let headers = [("x-request-id", given)];
        let (status, headers, _) =
            proxy_as(gw.addr, SECRET, &get(&gateway.url("/id")), &headers).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(request_id(&headers), given);
        assert_eq!(gateway.last().headers["x-request-id"], given);
    }

    // The caller's JSON headers may name the gateway's id themselves.
    let request = json!({
        "method": "GET",
        "url": gateway.url("/own"),
        "headers": { "X-Request-Id": "for-the-gateway" },
    });
    let headers = [("x-request-id", "from-the-caller")];
    let (status, headers, _) = proxy_as(gw.addr, SECRET, &request, &headers).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(request_id(&headers), "from-the-caller");
    let sent: Vec<_> = gateway
        .last()
        .headers
        .get_all("x-request-id")
        .iter()
        .cloned()
        .collect();
    assert_eq!(sent, ["for-the-gateway"]);
}

#[tokio::test]
async fn a_missing_or_unusable_request_id_is_replaced_by_a_fresh_generated_one() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));

    let too_long = "r".repeat(129);
    let cases: [Option<&str>; 5] = [
        None,
        Some(&too_long),
        Some("has space"),
        Some("tab\there"),
        Some(""),
    ];
    let mut ids = HashSet::new();
    for given in cases {
        let headers: Vec<(&str, &str)> = given.map(|id| ("x-request-id", id)).into_iter().collect();
        let (status, headers, _) =
            proxy_as(gw.addr, SECRET, &get(&gateway.url("/id")), &headers).await;
        assert_eq!(status, StatusCode::OK);
        let id = request_id(&headers);
        assert!(is_generated_id(&id), "{given:?} was answered with {id:?}");
        assert_eq!(gateway.last().headers["x-request-id"], id.as_str());
        assert!(ids.insert(id), "a generated id repeated");
    }
}

#[tokio::test]
async fn error_responses_carry_the_request_id_too() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));
    let given = [("x-request-id", "err-7")];

    let (status, headers, _) = plain_with(gw.addr, Method::GET, "/nowhere", &given).await;
    assert_eq!(
        (status, request_id(&headers).as_str()),
        (StatusCode::NOT_FOUND, "err-7")
    );
    let (status, headers, _) = plain_with(gw.addr, Method::GET, "/api/proxy", &given).await;
    assert_eq!(
        (status, request_id(&headers).as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "err-7")
    );
    let (status, headers, _) =
        proxy_as(gw.addr, WRONG_SECRET, &get(&gateway.url("/")), &given).await;
    assert_eq!(
        (status, request_id(&headers).as_str()),
        (StatusCode::UNAUTHORIZED, "err-7")
    );
    let (status, headers, _) = proxy_as(gw.addr, SECRET, &get("http://127.0.0.1:9/"), &given).await;
    assert_eq!(
        (status, request_id(&headers).as_str()),
        (StatusCode::FORBIDDEN, "err-7")
    );

    let (status, headers, _) = plain(gw.addr, Method::GET, "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(is_generated_id(&request_id(&headers)));
    assert_eq!(gateway.count(), 0, "no error reached the gateway");
}

// ================================================================ tests: access log

#[tokio::test]
async fn the_access_log_is_off_by_default() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));
    for _ in 0..3 {
        let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/quiet")), &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    flush_logs(&gw).await;
    let stderr = gw.stderr();
    assert_eq!(access_lines(&stderr), Vec::<&str>::new(), "{stderr}");
}

#[tokio::test]
async fn the_access_log_has_one_text_line_per_proxy_request_with_its_figures() {
    let gateway = Upstream::fixed(201, "text/plain", b"created").await;
    let url = gateway.url("");
    let extra = json!({ "log": { "access_log": true } });
    let gw = Gwproxy::start(Gwproxy::config(&[&url], extra));

    let request = get(&gateway.url("/made"));
    let (status, _, body) = proxy_as(gw.addr, SECRET, &request, &[("x-request-id", "t-1")]).await;
    assert_eq!(status, StatusCode::OK);
    let refused = proxy_as(gw.addr, WRONG_SECRET, &request, &[("x-request-id", "t-2")]).await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
    // Neither health checks nor scrapes are access-logged.
    assert_eq!(
        plain(gw.addr, Method::GET, "/hello").await.0,
        StatusCode::OK
    );
    assert_eq!(
        plain(gw.addr, Method::GET, "/metrics").await.0,
        StatusCode::OK
    );
    flush_logs(&gw).await;

    let stderr = gw.stderr();
    let lines = access_lines(&stderr);
    assert_eq!(lines.len(), 2, "{stderr}");
    let ok = text_fields(
        lines
            .iter()
            .find(|l| l.contains("t-1"))
            .expect("t-1 logged"),
    );
    let request_bytes = request.to_string().len().to_string();
    let response_bytes = body.len().to_string();
    let expected = [
        ("request_id", "t-1"),
        ("user", "tester"),
        ("method", "GET"),
        ("gateway", url.as_str()),
        ("status", "200"),
        ("gateway_status", "201"),
        ("request_bytes", request_bytes.as_str()),
        ("response_bytes", response_bytes.as_str()),
    ];
    for (key, value) in expected {
        assert_eq!(ok.get(key), Some(&value), "{key} in {ok:?}");
    }
    assert_durations(ok["duration_ms"], ok["gateway_ms"]);

    let no = text_fields(
        lines
            .iter()
            .find(|l| l.contains("t-2"))
            .expect("t-2 logged"),
    );
    assert_eq!(
        (no["status"], no["user"], no["gateway"]),
        ("401", "-", "-"),
        "{no:?}"
    );
    assert!(!stderr.contains(SECRET) && !stderr.contains(WRONG_SECRET));
}

/// Both are milliseconds; the whole request includes the gateway's part.
fn assert_durations(total: &str, gateway: &str) {
    let total: f64 = total.parse().expect("duration_ms is a number");
    let gateway: f64 = gateway.parse().expect("gateway_ms is a number");
    assert!(gateway > 0.0 && total >= gateway, "{total} {gateway}");
    assert!(total < PROMPT.as_millis() as f64, "{total}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_access_lines_hold_the_figures() {
    let gateway = Upstream::fixed(201, "application/json", br#"{"made":1}"#).await;
    let url = gateway.url("");
    let extra = json!({ "log": { "access_log": true, "format": "json" } });
    let gw = Gwproxy::start(Gwproxy::config(&[&url], extra));

    let request = json!({ "method": "post", "url": gateway.url("/made"), "body": {"n": 1} });
    let (status, _, body) = proxy_as(gw.addr, SECRET, &request, &[("x-request-id", "j-1")]).await;
    assert_eq!(status, StatusCode::OK);
    flush_logs(&gw).await;

    let stderr = gw.stderr();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "gwproxy::access")
        .collect();
    assert_eq!(access.len(), 1, "{stderr}");
    let (line, fields) = (access[0], &access[0]["fields"]);
    assert_eq!(line["level"], "INFO");
    let expected = json!({
        "message": "request", "request_id": "j-1", "user": "tester", "method": "POST",
        "gateway": url, "status": 200, "gateway_status": 201,
        "request_bytes": request.to_string().len(), "response_bytes": body.len(),
    });
    for (key, value) in expected.as_object().expect("object") {
        assert_eq!(&fields[key], value, "{key} in {fields}");
    }
    let number = |key: &str| {
        fields[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {fields}"))
    };
    assert_durations(
        &number("duration_ms").to_string(),
        &number("gateway_ms").to_string(),
    );
}

#[tokio::test]
async fn an_access_log_sample_of_one_half_logs_every_second_request() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    // One worker: each worker samples its own requests.
    let extra = json!({ "workers": 1, "log": { "access_log": true, "access_log_sample": 0.5 } });
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], extra));

    for n in 0..8 {
        let id = format!("s-{n}");
        let headers = [("x-request-id", id.as_str())];
        let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/s")), &headers).await;
        assert_eq!(status, StatusCode::OK);
    }
    flush_logs(&gw).await;

    let stderr = gw.stderr();
    let logged: Vec<usize> = access_lines(&stderr)
        .iter()
        .map(|line| {
            let id = text_fields(line)["request_id"];
            id.trim_start_matches("s-").parse().expect("a test id")
        })
        .collect();
    assert_eq!(logged.len(), 4, "{stderr}");
    assert!(logged.windows(2).all(|w| w[1] == w[0] + 2), "{logged:?}");
}

// ================================================================ tests: reload

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_users_and_gateways_while_a_request_in_flight_finishes() {
    let (release, release_rx) = watch::channel(false);
    let (held, mut arrived) = held_gateway(release_rx).await;
    let old = Upstream::fixed(200, "text/plain", b"old").await;
    let new = Upstream::fixed(200, "text/plain", b"new").await;
    // One worker, so that every connection sees the reload at once.
    let gw = Gwproxy::start(Gwproxy::config(
        &[&held, &old.url("")],
        json!({ "workers": 1 }),
    ));
    for _ in 0..2 {
        assert_eq!(
            proxy_as(gw.addr, SECRET, &get(&old.url("/")), &[]).await.0,
            StatusCode::OK
        );
    }

    let (addr, slow) = (gw.addr, get(&format!("{held}/slow")));
    let in_flight = tokio::spawn(async move { proxy_as(addr, SECRET, &slow, &[]).await });
    next_arrival(&mut arrived).await;

    let mut next = Gwproxy::config(&[&new.url("")], json!({ "workers": 1 }));
    next["users"] = json!([{ "name": "second", "secret": OTHER_SECRET }]);
    write_config(&gw, &next.to_string());
    gw.signal("HUP");
    let (addr, to_new) = (gw.addr, get(&new.url("/")));
    eventually("the new user reaches the new gateway", move || {
        let request = to_new.clone();
        async move { proxy_as(addr, OTHER_SECRET, &request, &[]).await.0 == StatusCode::OK }
    })
    .await;
    assert_eq!(
        proxy_as(gw.addr, SECRET, &get(&new.url("/")), &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        proxy_as(gw.addr, OTHER_SECRET, &get(&old.url("/")), &[])
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    release.send(true).expect("release the gateway");
    let (status, _, body) = in_flight.await.expect("in-flight request task");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(parse_json(&body)["body"], "held");

    // Counters of the gateways that are gone survive the reload.
    let metrics = scrape(gw.addr).await;
    let count = |url: &str| {
        let labels = [("route", "/api/proxy"), ("status", "200"), ("gateway", url)];
        metrics.present("gwproxy_requests_total", &labels)
    };
    assert_eq!(
        (count(&old.url("")), count(&held)),
        (2.0, 1.0),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn sighup_with_a_bad_file_keeps_the_old_config_and_names_the_problem() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));
    let request = get(&gateway.url("/still"));

    write_config(&gw, "{ \"listen\": ");
    gw.signal("HUP");
    stderr_until(&gw, "the JSON error", |s| s.contains("not valid JSON")).await;
    assert_eq!(
        proxy_as(gw.addr, SECRET, &request, &[]).await.0,
        StatusCode::OK
    );

    // Valid JSON with a new user, but one misspelt key: nothing changes.
    let mut typo = Gwproxy::config(&[&gateway.url("")], json!({ "limits": { "max_bodyy": 1 } }));
    typo["users"] = json!([{ "name": "second", "secret": OTHER_SECRET }]);
    write_config(&gw, &typo.to_string());
    gw.signal("HUP");
    let stderr = stderr_until(&gw, "the bad key", |s| s.contains("limits.max_bodyy")).await;
    let line = stderr
        .lines()
        .find(|l| l.contains("limits.max_bodyy"))
        .expect("line");
    assert!(
        line.contains("WARN") && line.contains("not reloaded"),
        "{line}"
    );
    assert!(!stderr.contains("SIGHUP: config reloaded"), "{stderr}");

    assert_eq!(
        proxy_as(gw.addr, SECRET, &request, &[]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        proxy_as(gw.addr, OTHER_SECRET, &request, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sighup_warns_about_a_change_that_needs_a_restart() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(
        &[&gateway.url("")],
        json!({ "workers": 1 }),
    ));

    // Every key here shaped the listeners, the connection builder, the
    // logger or the metrics endpoint at start.
    let changed = json!({
        "workers": 2,
        "limits": { "max_connections": 7, "max_header_count": 50 },
        "timeouts": { "idle_ms": 1234 },
        "log": { "level": "debug" },
        "metrics": { "listen": "127.0.0.1:0" },
    });
    write_config(
        &gw,
        &Gwproxy::config(&[&gateway.url("")], changed).to_string(),
    );
    gw.signal("HUP");
    let keys = [
        "workers",
        "limits.max_connections",
        "limits.max_header_count",
        "timeouts.idle_ms",
        "log.level",
        "metrics",
    ];
    // One warning line per key.
    let warned = |stderr: &str, key: &str| {
        let named = format!("key=\"{key}\"");
        stderr
            .lines()
            .any(|l| l.contains("takes effect on restart") && l.contains(&named))
    };
    stderr_until(&gw, "a restart warning for each key", |s| {
        keys.iter().all(|key| warned(s, key))
    })
    .await;

    // The new settings serve, and /metrics stays where it was.
    let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/")), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = plain(gw.addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

// ================================================================ tests: environment

#[tokio::test]
async fn environment_overrides_set_listen_a_limit_and_metrics_over_the_file() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let port = common::closed_port().port();
    let listen = format!("127.0.0.1:{port}");
    let file = json!({
        "limits": { "max_request_body_bytes": 1_048_576 },
        "metrics": { "enabled": true },
    });
    let vars = [
        ("GWPROXY_LISTEN", listen.as_str()),
        ("GWPROXY_LIMITS_MAX_REQUEST_BODY_BYTES", "200"),
        ("GWPROXY_METRICS_ENABLED", "false"),
    ];
    let gw = Gwproxy::start_with_env(Gwproxy::config(&[&gateway.url("")], file), &vars);

    assert_eq!(gw.addr.port(), port, "GWPROXY_LISTEN was not applied");
    let small = get(&gateway.url("/small"));
    assert_eq!(
        proxy_as(gw.addr, SECRET, &small, &[]).await.0,
        StatusCode::OK
    );
    let big = json!({ "method": "POST", "url": gateway.url("/big"), "body": "x".repeat(300) });
    let (status, _, body) = proxy_as(gw.addr, SECRET, &big, &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:?}");
    assert_eq!(
        plain(gw.addr, Method::GET, "/metrics").await.0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn a_bad_environment_value_ends_start_up_with_exit_2_naming_the_key() {
    let cases = [
        (
            "GWPROXY_LIMITS_MAX_CONCURRENT_REQUESTS",
            "lots",
            "limits.max_concurrent_requests",
        ),
        (
            "GWPROXY_LOG_ACCESS_LOG_SAMPLE",
            "2",
            "log.access_log_sample",
        ),
        ("GWPROXY_LISTEN", "nowhere", "listen"),
    ];
    for (variable, value, key) in cases {
        let (code, stderr) = run_to_exit(variable, value);
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {variable}: {stderr}");
        assert!(
            lines[0].contains(&format!("{key}:")),
            "{variable}: {}",
            lines[0]
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Starts gwproxy with a valid file and one override; it must exit on its
/// own within [`PROMPT`], or it is killed by its PID and the test fails.
fn run_to_exit(variable: &str, value: &str) -> (Option<i32>, String) {
    let path = temp_path("json");
    let config = Gwproxy::config(&["http://127.0.0.1:8181"], json!({}));
    std::fs::write(&path, config.to_string()).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gwproxy"))
        .arg("--config")
        .arg(&path)
        .env_remove("GWPROXY_CONFIG")
        .env_remove("RUST_LOG")
        .env(variable, value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gwproxy");

    let deadline = Instant::now() + PROMPT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            panic!("gwproxy kept running with {variable}={value}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&path);
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().expect("stderr piped");
    std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("read stderr");
    (status.code(), stderr)
}
