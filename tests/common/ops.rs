//! Helpers for the operability tests (`tests/metrics.rs`,
//! `tests/operability.rs`): clients, held gateways, a Prometheus text
//! parser and log readers.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::{raw_upstream, send, Gwproxy};

/// Upper bound for anything that needs no timer to happen.
pub const PROMPT: Duration = Duration::from_secs(5);
/// A second user's secret, for reloads that swap users.
pub const OTHER_SECRET: &str = "other-user-secret-9876543210";
pub const WRONG_SECRET: &str = "not-anybody-s-secret";

// ---------------------------------------------------------------- clients

/// `POST /api/proxy` with `secret` and extra headers, on a fresh connection.
pub async fn proxy_as(
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

pub fn get(url: &str) -> Value {
    json!({ "method": "GET", "url": url })
}

/// A bodiless request on a fresh connection, answered in time.
pub async fn plain(addr: SocketAddr, method: Method, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    plain_with(addr, method, path, &[]).await
}

pub async fn plain_with(
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
pub fn request_id(headers: &HeaderMap) -> String {
    let id = headers
        .get("x-request-id")
        .expect("X-Request-Id in response");
    id.to_str().expect("ASCII request id").to_owned()
}

pub fn is_generated_id(id: &str) -> bool {
    id.len() == 20
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Retries `attempt` until it returns true; a reload reaches the worker
/// asynchronously, shortly after the signal.
pub async fn eventually<F, Fut>(what: &str, mut attempt: F)
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
pub async fn held_gateway(release: watch::Receiver<bool>) -> (String, mpsc::UnboundedReceiver<()>) {
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
pub async fn read_request_head(reader: &mut BufReader<TcpStream>) -> bool {
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if line == "\r\n" => return true,
            Ok(_) => {}
        }
    }
}

pub async fn next_arrival(arrived: &mut mpsc::UnboundedReceiver<()>) {
    let arrival = tokio::time::timeout(PROMPT, arrived.recv()).await;
    arrival.expect("the request reached the gateway in time");
}

// ---------------------------------------------------------------- metrics

/// One sample line of the Prometheus text format: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` answer.
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Scrape {
    /// The sample with exactly these labels, if rendered.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// A series that must be rendered.
    pub fn present(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{}", self.text))
    }
}

/// `GET /metrics` at `addr`: must be `200` Prometheus text whose every
/// sample line parses.
pub async fn scrape(addr: SocketAddr) -> Scrape {
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
pub fn parse_sample(line: &str) -> Result<Sample, String> {
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
pub fn parse_labels<'l>(
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
pub fn label_value(text: &str) -> Result<(String, &str), String> {
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
pub async fn stderr_until(gw: &Gwproxy, what: &str, done: impl Fn(&str) -> bool) -> String {
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
pub async fn flush_logs(gw: &Gwproxy) {
    let reloaded = |s: &str| s.matches("SIGHUP: config reloaded").count();
    let before = reloaded(&gw.stderr());
    gw.signal("HUP");
    stderr_until(gw, "the reload barrier", |s| reloaded(s) > before).await;
}

pub fn access_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.contains("gwproxy::access"))
        .collect()
}

/// The `key=value` fields of a text log line, quotes removed.
pub fn text_fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .map(|(key, value)| (key, value.trim_matches('"')))
        .collect()
}

pub fn write_config(gw: &Gwproxy, text: &str) {
    std::fs::write(gw.config_path(), text).expect("rewrite config");
}
