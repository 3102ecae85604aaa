//! Black-box tests of gwproxy's lifecycle: slow and idle clients, load shedding,
//! the connection cap, graceful shutdown on signals, and pooled-connection ageing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use common::ops::read_request_head;
use common::{raw_upstream, send, Gwproxy, Upstream, SECRET};

/// Upper bound for anything that needs no timer to happen.
const PROMPT: Duration = Duration::from_secs(5);

/// Reads until the peer closes (EOF or error) and returns what it sent;
/// panics if that takes longer than `within`.
async fn wait_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let reading = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, reading)
        .await
        .unwrap_or_else(|_| panic!("gwproxy kept the connection open for {within:?}"));
    received
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(PROMPT, TcpStream::connect(addr)).await;
    stream
        .expect("connect in time")
        .expect("connect to gwproxy")
}

/// A keep-alive HTTP/1.1 client connection; the task ends when the connection does.
async fn h1_client(addr: SocketAddr) -> (http1::SendRequest<Full<Bytes>>, JoinHandle<()>) {
    let io = TokioIo::new(connect(addr).await);
    let (sender, conn) = http1::handshake(io).await.expect("handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

/// `GET /hello` on an existing HTTP/1.1 connection.
async fn hello(sender: &mut http1::SendRequest<Full<Bytes>>) -> StatusCode {
    let request = Request::get("/hello")
        .header("host", "gwproxy")
        .body(Full::default());
    let answer = tokio::time::timeout(PROMPT, sender.send_request(request.unwrap())).await;
    let response = answer
        .expect("answer in time")
        .expect("response on the open connection");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    status
}

/// `POST /api/proxy` on a fresh connection: status, headers, JSON body, and how long it took.
async fn proxy_get(addr: SocketAddr, url: &str) -> (StatusCode, HeaderMap, Value, Duration) {
    let started = Instant::now();
    let body = json!({ "method": "GET", "url": url })
        .to_string()
        .into_bytes();
    let headers = [("authorization", SECRET)];
    let sending = send(addr, Method::POST, "/api/proxy", &headers, body);
    let (status, headers, bytes) = tokio::time::timeout(Duration::from_secs(20), sending)
        .await
        .expect("gwproxy answered in time");
    (
        status,
        headers,
        common::parse_json(&bytes),
        started.elapsed(),
    )
}

/// A raw gateway that reports each request's arrival on the returned channel
/// and answers only once `release` turns true (or after 30 s). Counts requests.
async fn held_upstream(
    release: watch::Receiver<bool>,
) -> (SocketAddr, mpsc::UnboundedReceiver<()>, Arc<AtomicUsize>) {
    let (arrived_tx, arrived_rx) = mpsc::unbounded_channel();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let addr = raw_upstream(move |stream| {
        let (mut release, arrived, count) = (release.clone(), arrived_tx.clone(), count.clone());
        async move {
            let mut reader = BufReader::new(stream);
            while read_request_head(&mut reader).await {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = arrived.send(());
                let wait = release.wait_for(|released| *released);
                let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
                let answer = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nheld";
                if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, arrived_rx, requests)
}

async fn next_arrival(arrived: &mut mpsc::UnboundedReceiver<()>) {
    let arrival = tokio::time::timeout(PROMPT, arrived.recv()).await;
    arrival.expect("the request reached the gateway in time");
}

#[tokio::test]
async fn closes_a_connection_whose_request_head_never_completes() {
    let gw = Gwproxy::start(Gwproxy::config(
        &["http://127.0.0.1:9"],
        json!({ "timeouts": { "request_header_ms": 500 } }),
    ));

    let mut partial = connect(gw.addr).await;
    partial
        .write_all(b"POST /api/proxy HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = connect(gw.addr).await;

    let started = Instant::now();
    wait_closed(&mut partial, Duration::from_secs(3)).await;
    wait_closed(&mut silent, Duration::from_secs(3)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_trickling_slower_than_request_body_ms_gets_400_or_close() {
    let gw = Gwproxy::start(Gwproxy::config(
        &["http://127.0.0.1:9"],
        json!({ "timeouts": { "request_body_ms": 500 } }),
    ));
    let stream = connect(gw.addr).await;
    let (mut read_half, mut write_half) = stream.into_split();

    let head = format!(
        "POST /api/proxy HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    );
    write_half.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if write_half.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    // Read until a status line is complete or the connection closes.
    let mut received = Vec::new();
    let reading = async {
        let mut buf = [0u8; 1024];
        while !received.windows(2).any(|w| w == b"\r\n") {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), reading)
        .await
        .expect("gwproxy neither answered nor closed within 3 s");
    trickle.abort();

    let text = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || text.starts_with("HTTP/1.1 400 "),
        "answer: {text}"
    );
}

#[tokio::test]
async fn idle_timer_not_header_timer_governs_a_kept_alive_connection() {
    let gw = Gwproxy::start(Gwproxy::config(
        &["http://127.0.0.1:9"],
        json!({ "timeouts": { "idle_ms": 2000, "request_header_ms": 300 } }),
    ));
    let (mut sender, connection) = h1_client(gw.addr).await;

    // Idle for over twice the header timeout, well within the idle one.
    assert_eq!(hello(&mut sender).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(hello(&mut sender).await, StatusCode::OK, "second request");

    tokio::time::timeout(Duration::from_secs(6), connection)
        .await
        .expect("gwproxy closed the idle connection within 6 s")
        .unwrap();
    assert!(sender.is_closed());
}

#[tokio::test]
async fn times_the_next_request_head_on_a_kept_alive_connection() {
    let gw = Gwproxy::start(Gwproxy::config(
        &["http://127.0.0.1:9"],
        json!({ "timeouts": { "request_header_ms": 500, "idle_ms": 30000 } }),
    ));
    let mut stream = connect(gw.addr).await;
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let first = async {
        let mut buf = [0u8; 1024];
        // `/hello`'s JSON body ends the response.
        while !received.ends_with(b"\"}") {
            let n = stream.read(&mut buf).await.expect("read the first answer");
            assert!(n > 0, "closed before answering");
            received.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PROMPT, first)
        .await
        .expect("first answer in time");
    assert!(received.starts_with(b"HTTP/1.1 200 "));

    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHo")
        .await
        .unwrap();
    wait_closed(&mut stream, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_slower_than_request_header_ms_does_not_cut_the_request() {
    let (release, release_rx) = watch::channel(false);
    let (gateway, mut arrived, _) = held_upstream(release_rx).await;
    let url = format!("http://{gateway}/slow");
    let gw = Gwproxy::start(Gwproxy::config(
        &[&url],
        json!({ "timeouts": { "request_header_ms": 300 } }),
    ));

    let addr = gw.addr;
    let answer = tokio::spawn(async move { proxy_get(addr, &url).await });
    next_arrival(&mut arrived).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    release.send(true).unwrap();

    let (status, _, body, _) = tokio::time::timeout(PROMPT, answer).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "body: {body}");
    assert_eq!(body["body"], "held");
}

#[tokio::test(flavor = "multi_thread")]
async fn sheds_load_over_max_concurrent_requests_with_503_and_retry_after() {
    let (release, release_rx) = watch::channel(false);
    let (gateway, mut arrived, requests) = held_upstream(release_rx).await;
    let url = format!("http://{gateway}/held");
    let gw = Gwproxy::start(Gwproxy::config(
        &[&url],
        json!({ "limits": { "max_concurrent_requests": 2 } }),
    ));

    let (done_tx, mut done) = mpsc::unbounded_channel();
    for _ in 0..6 {
        let (addr, url, done_tx) = (gw.addr, url.clone(), done_tx.clone());
        tokio::spawn(async move { done_tx.send(proxy_get(addr, &url).await) });
    }

    // Four are shed while the other two are still held at the gateway.
    for _ in 0..4 {
        let answer = tokio::time::timeout(PROMPT, done.recv()).await;
        let (status, headers, body, took) = answer.expect("a shed answer in time").unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "body: {body}");
        assert_eq!(body["Status"], "Error");
        assert_eq!(body["Message"], "Server busy");
        assert!(headers.contains_key("retry-after"), "headers: {headers:?}");
        assert!(took < Duration::from_secs(2), "shedding took {took:?}");
    }
    next_arrival(&mut arrived).await;
    next_arrival(&mut arrived).await;
    assert_eq!(requests.load(Ordering::SeqCst), 2);

    release.send(true).unwrap();
    for _ in 0..2 {
        let answer = tokio::time::timeout(PROMPT, done.recv()).await;
        let (status, _, body, _) = answer.expect("a held answer in time").unwrap();
        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["body"], "held");
    }

    let (status, _, body, _) = proxy_get(gw.addr, &url).await;
    assert_eq!(status, StatusCode::OK, "after the burst: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_200_concurrent_requests_all_succeed() {
    let gateway = Upstream::fixed(200, "application/json", br#"{"ok":true}"#).await;
    let url = gateway.url("/burst");
    let gw = Gwproxy::start(Gwproxy::config(&[&url], json!({})));
    let body = json!({ "method": "GET", "url": url }).to_string();

    let mut answers = tokio::task::JoinSet::new();
    // 100 on their own HTTP/1.1 connections...
    for _ in 0..100 {
        let (addr, body) = (gw.addr, body.clone().into_bytes());
        answers.spawn(async move {
            let auth = [("authorization", SECRET)];
            let (status, _, bytes) = send(addr, Method::POST, "/api/proxy", &auth, body).await;
            (status, bytes)
        });
    }
    // ...and 100 as streams of two h2c connections.
    for _ in 0..2 {
        let io = TokioIo::new(connect(gw.addr).await);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2c");
        tokio::spawn(conn);
        for _ in 0..50 {
            let (mut sender, addr, body) = (sender.clone(), gw.addr, body.clone());
            answers.spawn(async move {
                let request = Request::post(format!("http://{addr}/api/proxy"))
                    .header("authorization", SECRET)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let response = sender.send_request(request).await.expect("h2 response");
                let status = response.status();
                (
                    status,
                    response.into_body().collect().await.unwrap().to_bytes(),
                )
            });
        }
    }

    let all = tokio::time::timeout(Duration::from_secs(60), answers.join_all()).await;
    for (status, bytes) in all.expect("the burst finished in time") {
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(common::parse_json(&bytes)["body"], json!({"ok": true}));
    }
    assert_eq!(gateway.count(), 200);
}

#[tokio::test]
async fn a_connection_over_max_connections_is_closed_at_once() {
    let gw = Gwproxy::start(Gwproxy::config(
        &["http://127.0.0.1:9"],
        json!({ "limits": { "max_connections": 2 } }),
    ));
    let (mut first, _first_task) = h1_client(gw.addr).await;
    let (mut second, second_task) = h1_client(gw.addr).await;
    assert_eq!(hello(&mut first).await, StatusCode::OK);
    assert_eq!(hello(&mut second).await, StatusCode::OK);

    let mut third = connect(gw.addr).await;
    let _ = third
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let received = wait_closed(&mut third, Duration::from_secs(2)).await;
    assert!(
        received.is_empty(),
        "the third connection was served: {received:?}"
    );

    assert_eq!(hello(&mut first).await, StatusCode::OK);
    assert_eq!(hello(&mut second).await, StatusCode::OK);

    // Once a client leaves, its slot serves a new connection.
    drop(second);
    tokio::time::timeout(PROMPT, second_task)
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + PROMPT;
    loop {
        let (mut fourth, _task) = h1_client(gw.addr).await;
        let request = Request::get("/hello")
            .header("host", "x")
            .body(Full::default());
        let sent = tokio::time::timeout(PROMPT, fourth.send_request(request.unwrap())).await;
        match sent.expect("an answer or a close in time") {
            Ok(response) => break assert_eq!(response.status(), StatusCode::OK),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the freed slot was never reused: {error}"),
        }
    }
}

/// Which worker answered `GET /hello` on `sender`: request ids begin with
/// eight hex digits of their worker's own (src/observe.rs).
async fn hello_worker(sender: &mut http1::SendRequest<Full<Bytes>>) -> String {
    let request = Request::get("/hello").header("host", "gwproxy");
    let answer = sender.send_request(request.body(Full::default()).unwrap());
    let response = tokio::time::timeout(PROMPT, answer).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["x-request-id"].to_str().unwrap();
    id[..8].to_owned()
}

#[tokio::test]
async fn kept_alive_connections_are_spread_evenly_over_the_workers() {
    // The kernel's hash alone puts 16 connections 4-4-4-4 on four workers
    // about one time in 70.
    let gw = Gwproxy::start(Gwproxy::config(
        &["http://127.0.0.1:9"],
        json!({ "workers": 4 }),
    ));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (mut sender, task) = h1_client(gw.addr).await;
        let worker = hello_worker(&mut sender).await;
        clients.push((worker, sender, task));
    }
    let count = |clients: &[(String, _, _)], worker: &str| {
        clients.iter().filter(|(w, _, _)| w == worker).count()
    };
    let workers: std::collections::BTreeSet<String> =
        clients.iter().map(|(w, _, _)| w.clone()).collect();
    assert_eq!(workers.len(), 4, "{workers:?}");
    for worker in &workers {
        assert_eq!(count(&clients, worker), 4, "{workers:?}");
    }

    // A worker whose clients left gets the next connections.
    let emptied = clients[0].0.clone();
    let (leaving, staying): (Vec<_>, Vec<_>) =
        clients.into_iter().partition(|(w, _, _)| *w == emptied);
    for (_, sender, task) in leaving {
        drop(sender);
        tokio::time::timeout(PROMPT, task).await.unwrap().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..4 {
        let (mut sender, _task) = h1_client(gw.addr).await;
        assert_eq!(hello_worker(&mut sender).await, emptied);
    }
    drop(staying);
}

/// Polls until a connect to `addr` is refused; panics after `within`.
async fn wait_refused(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(PROMPT, TcpStream::connect(addr)).await;
        match attempt.expect("connect attempt in time") {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("still accepting {within:?} after the signal: {other:?}"),
        }
    }
}

async fn drains_an_in_flight_request_then_exits_zero_on(signal: &str) {
    let (release, release_rx) = watch::channel(false);
    let (gateway, mut arrived, _) = held_upstream(release_rx).await;
    let url = format!("http://{gateway}/in-flight");
    let mut gw = Gwproxy::start(Gwproxy::config(&[&url], json!({})));

    // An idle keep-alive client must not hold up the exit.
    let (mut idle, idle_connection) = h1_client(gw.addr).await;
    assert_eq!(hello(&mut idle).await, StatusCode::OK);

    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { proxy_get(addr, &url).await });
    next_arrival(&mut arrived).await;

    gw.signal(signal);
    let closing = tokio::time::timeout(Duration::from_secs(3), idle_connection).await;
    closing
        .expect("the idle connection was closed on the signal")
        .unwrap();
    wait_refused(gw.addr, Duration::from_secs(3)).await;
    assert!(
        !in_flight.is_finished(),
        "the request ended before its gateway answered"
    );

    release.send(true).unwrap();
    let answer = tokio::time::timeout(PROMPT, in_flight).await;
    let (status, _, body, _) = answer.expect("in-flight answer in time").unwrap();
    assert_eq!(status, StatusCode::OK, "body: {body}");
    assert_eq!(body["body"], "held");

    let code = tokio::task::block_in_place(|| gw.wait_exit(PROMPT));
    assert_eq!(code, Some(0), "stderr: {}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_accepting_drains_in_flight_requests_and_exits_zero() {
    drains_an_in_flight_request_then_exits_zero_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_accepting_drains_in_flight_requests_and_exits_zero() {
    drains_an_in_flight_request_then_exits_zero_on("INT").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_exits_zero_after_the_grace_period_when_a_gateway_never_answers() {
    let (_release, release_rx) = watch::channel(false);
    let (gateway, mut arrived, _) = held_upstream(release_rx).await;
    let url = format!("http://{gateway}/never");
    let mut gw = Gwproxy::start(Gwproxy::config(
        &[&url],
        json!({ "timeouts": { "shutdown_grace_ms": 500 } }),
    ));

    let mut client = connect(gw.addr).await;
    let body = json!({ "method": "GET", "url": url }).to_string();
    let request = format!(
        "POST /api/proxy HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    next_arrival(&mut arrived).await;

    let started = Instant::now();
    gw.signal("TERM");
    let code = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(4)));
    assert_eq!(
        code,
        Some(0),
        "after {:?}; stderr: {}",
        started.elapsed(),
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_does_not_wait_the_grace_period_for_an_incomplete_request_head() {
    let mut gw = Gwproxy::start(Gwproxy::config(
        &["http://127.0.0.1:9"],
        json!({ "timeouts": { "request_header_ms": 300, "shutdown_grace_ms": 20000 } }),
    ));
    let mut partial = connect(gw.addr).await;
    partial
        .write_all(b"POST /api/proxy HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (mut idle, _idle_connection) = h1_client(gw.addr).await;
    assert_eq!(hello(&mut idle).await, StatusCode::OK);

    // Nothing is in flight: only request_header_ms may delay the exit.
    gw.signal("TERM");
    let code = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(4)));
    assert_eq!(code, Some(0), "stderr: {}", gw.stderr());
}

/// The race is narrow, so this tries many times; it failed within the first
/// 200 starts on every run so far.
#[test]
fn sigterm_right_after_start_still_exits_zero() {
    for attempt in 0..500 {
        let mut gw = Gwproxy::start(Gwproxy::config(&["http://127.0.0.1:9"], json!({})));
        gw.signal("TERM");
        let code = gw.wait_exit(PROMPT);
        assert_eq!(code, Some(0), "start {attempt}; stderr: {}", gw.stderr());
    }
}

#[tokio::test]
async fn back_to_back_requests_share_one_pooled_gateway_connection() {
    let gateway = Upstream::fixed(200, "text/plain", b"pooled").await;
    // One worker: each worker has its own pool.
    let gw = Gwproxy::start(Gwproxy::config(
        &[&gateway.url("")],
        json!({ "workers": 1 }),
    ));

    for _ in 0..3 {
        let (status, _, body, _) = proxy_get(gw.addr, &gateway.url("/again")).await;
        assert_eq!(status, StatusCode::OK, "body: {body}");
    }
    assert_eq!(gateway.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pooled_connection_idle_past_idle_timeout_is_replaced() {
    let gateway = Upstream::fixed(200, "text/plain", b"pooled").await;
    let gw = Gwproxy::start(Gwproxy::config(
        &[&gateway.url("")],
        json!({ "workers": 1, "pool": { "idle_timeout_ms": 300 } }),
    ));

    let (status, _, body, _) = proxy_get(gw.addr, &gateway.url("/first")).await;
    assert_eq!(status, StatusCode::OK, "body: {body}");
    assert_eq!(gateway.connections.load(Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _, body, _) = proxy_get(gw.addr, &gateway.url("/second")).await;
    assert_eq!(status, StatusCode::OK, "body: {body}");
    assert_eq!(body["body"], "pooled");
    assert_eq!(gateway.connections.load(Ordering::SeqCst), 2);
}
