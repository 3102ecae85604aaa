//! Black-box tests of the caller's connection: h2c, keep-alive, pooled
//! gateway connections, and the request body limit (SPEC.md, "Config
//! file", "Limits and lifecycle", "Errors").

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Gwproxy, Upstream, SECRET};

const WITHIN: Duration = Duration::from_secs(20);

fn proxy_request(uri: &str, body: String) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("authorization", SECRET)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn get(url: String) -> String {
    json!({ "method": "GET", "url": url }).to_string()
}

async fn collect(response: hyper::Response<hyper::body::Incoming>) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.into_body().collect().await.expect("body");
    (status, common::parse_json(&body.to_bytes()))
}

#[tokio::test]
async fn serves_h2_with_prior_knowledge() {
    let upstream = Upstream::fixed(200, "application/json", br#"{"via":"h2"}"#).await;
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})));
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);

    let uri = format!("http://{}/api/proxy", gw.addr);
    let request = proxy_request(&uri, get(upstream.url("/h2")));
    let response = tokio::time::timeout(WITHIN, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");

    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.headers()["content-type"], "application/json");
    let (status, value) = collect(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(value["status_code"], 200);
    assert_eq!(value["body"], json!({ "via": "h2" }));
    assert_eq!(upstream.last().uri, "/h2");
}

#[tokio::test]
async fn serves_concurrent_streams_on_one_h2_connection() {
    let upstream = Upstream::start(|received| {
        let body = Bytes::from(format!("{{\"path\":\"{}\"}}", received.uri));
        hyper::Response::new(Full::new(body))
    })
    .await;
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})));
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);

    let uri = format!("http://{}/api/proxy", gw.addr);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut sender = sender.clone();
        let request = proxy_request(&uri, get(upstream.url(&format!("/s{i}"))));
        tasks.push(tokio::spawn(async move {
            let response = sender.send_request(request).await.expect("response");
            (i, collect(response).await)
        }));
    }
    for task in tasks {
        let (i, (status, value)) = tokio::time::timeout(WITHIN, task).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value["body"]["path"], format!("/s{i}"));
    }
    assert_eq!(upstream.count(), 16);
}

#[tokio::test]
async fn keeps_the_callers_http1_connection_alive_across_requests_and_errors() {
    let upstream = Upstream::fixed(200, "text/plain", b"pong").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})));
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);

    let good = || get(upstream.url("/k"));
    let steps: [(Method, &str, Option<&str>, String, u16); 7] = [
        (Method::POST, "/api/proxy", Some(SECRET), good(), 200),
        (Method::GET, "/hello", None, String::new(), 200),
        (
            Method::POST,
            "/api/proxy",
            Some(SECRET),
            "{nope".into(),
            400,
        ),
        (Method::GET, "/missing", None, String::new(), 404),
        (Method::POST, "/api/proxy", Some("wrong"), good(), 401),
        (Method::GET, "/api/proxy", Some(SECRET), String::new(), 405),
        (Method::POST, "/api/proxy", Some(SECRET), good(), 200),
    ];
    for (method, path, secret, body, expected) in steps {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", gw.addr.to_string());
        if let Some(secret) = secret {
            request = request.header("authorization", secret);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        tokio::time::timeout(WITHIN, sender.ready())
            .await
            .expect("in time")
            .expect("connection still open");
        let response = tokio::time::timeout(WITHIN, sender.send_request(request))
            .await
            .expect("in time")
            .expect("response on the same connection");
        assert_eq!(response.status().as_u16(), expected, "{path}");
        response.into_body().collect().await.expect("body");
    }
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn reuses_pooled_gateway_connections() {
    let upstream = Upstream::fixed(200, "text/plain", b"pooled").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})));

    for i in 0..20 {
        let request = json!({ "method": "POST", "url": upstream.url("/p"), "body": i });
        let (status, value) = gw.proxy(request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value["body"], "pooled");
    }

    assert_eq!(upstream.count(), 20);
    let connections = upstream.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 2,
        "{connections} connections for 20 requests"
    );
}

/// A config whose request body limit is `limit` bytes.
fn limited(upstream: &Upstream, limit: usize) -> Value {
    let limits = json!({ "limits": { "max_request_body_bytes": limit } });
    Gwproxy::config(&[&upstream.url("")], limits)
}

/// A valid proxy request padded to exactly `len` bytes.
fn padded(upstream: &Upstream, len: usize) -> String {
    let head = format!(
        r#"{{"method":"GET","url":"{}","pad":""#,
        upstream.url("/pad")
    );
    let pad = len - head.len() - 2;
    let text = format!("{head}{}\"}}", "x".repeat(pad));
    assert_eq!(text.len(), len);
    text
}

#[tokio::test]
async fn body_over_the_limit_with_content_length_is_413() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = Gwproxy::start(limited(&upstream, 1024));
    let auth = [("authorization", SECRET)];

    let at_limit = padded(&upstream, 1024).into_bytes();
    let (status, _, body) =
        common::send(gw.addr, Method::POST, "/api/proxy", &auth, at_limit).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));

    let over = padded(&upstream, 1025).into_bytes();
    let (status, headers, body) =
        common::send(gw.addr, Method::POST, "/api/proxy", &auth, over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers["content-type"], "application/json");
    let value = common::parse_json(&body);
    assert_eq!(value["Status"], "Error");
    assert_eq!(value["Message"], "Request too large");
    assert!(value["Meta"]["detail"].is_string(), "{value}");
    assert_eq!(upstream.count(), 1);
}

/// Writes `request` on a fresh connection and reads until gwproxy closes
/// it; returns the status and the body after the header section.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(WITHIN, async {
        let mut buf = [0u8; 4096];
        // A reset after the answer arrived still leaves the answer.
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            received.extend_from_slice(&buf[..n]);
        }
    });
    read.await.expect("gwproxy answered and closed in time");

    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("no status line: {text:?}"));
    let split = text.find("\r\n\r\n").expect("end of headers") + 4;
    (status, received[split..].to_vec())
}

/// A chunked `POST /api/proxy` of `body` in 100-byte chunks.
fn chunked_request(addr: SocketAddr, body: &str) -> Vec<u8> {
    let mut out = format!(
        "POST /api/proxy HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {SECRET}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(100) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let upstream = Upstream::fixed(200, "text/plain", b"small").await;
    let gw = Gwproxy::start(limited(&upstream, 1024));

    let within = chunked_request(gw.addr, &padded(&upstream, 1000));
    let (status, body) = raw_exchange(gw.addr, &within).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(common::parse_json(&body)["body"], "small");

    let over = chunked_request(gw.addr, &padded(&upstream, 3000));
    let (status, body) = raw_exchange(gw.addr, &over).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let value = common::parse_json(&body);
    assert_eq!(value["Message"], "Request too large");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_arrives() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = Gwproxy::start(limited(&upstream, 1024));
    let head = format!(
        "POST /api/proxy HTTP/1.1\r\nHost: {}\r\nAuthorization: {SECRET}\r\n\
         Content-Length: 10000000000\r\n\r\n{{",
        gw.addr
    );

    // Only the head and one byte are sent: the answer cannot wait for the rest.
    let (status, body) = raw_exchange(gw.addr, head.as_bytes()).await;

    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(common::parse_json(&body)["Message"], "Request too large");
    assert_eq!(upstream.count(), 0);
}
