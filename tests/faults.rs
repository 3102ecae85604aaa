//! Black-box tests of misbehaving gateways: each fault is a bounded `500` with a plain
//! detail, and the same gwproxy keeps serving afterwards.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use common::{raw_upstream, Gwproxy, Upstream};

/// Upper bound for a fault that needs no timer to be noticed.
const PROMPT: Duration = Duration::from_secs(5);

/// Starts gwproxy for the faulty gateway plus a healthy one, which
/// [`assert_still_serves`] uses afterwards.
async fn proxy_with_faulty(faulty: SocketAddr, extra: Value) -> (Gwproxy, Upstream) {
    let healthy = Upstream::fixed(200, "application/json", br#"{"healthy":true}"#).await;
    let faulty_url = format!("http://{faulty}");
    let config = Gwproxy::config(&[&faulty_url, &healthy.url("")], extra);
    (Gwproxy::start(config), healthy)
}

/// Pins gwproxy to one worker: these tests reason about one particular
/// pooled gateway connection, and each worker has pools of its own.
fn one_worker(mut extra: Value) -> Value {
    extra["workers"] = json!(1);
    extra
}

/// Sends one proxy request and expects the gateway-failure envelope within
/// `within`; returns the detail in lower case.
async fn expect_gateway_failure(gw: &Gwproxy, method: &str, url: &str, within: Duration) -> String {
    let started = Instant::now();
    let request = json!({ "method": method, "url": url, "body": {"n": 1} });
    let (status, body) = tokio::time::timeout(within, gw.proxy(request))
        .await
        .unwrap_or_else(|_| panic!("no answer within {within:?} for {method} {url}"));

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "body: {body}");
    assert_eq!(body["Status"], "Error");
    assert_eq!(body["Message"], "Failed to process proxy request");
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
    let detail = body["Meta"]["detail"].as_str();
    detail
        .unwrap_or_else(|| panic!("no Meta.detail: {body}"))
        .to_lowercase()
}

/// The same gwproxy answers a good request to a healthy gateway.
async fn assert_still_serves(gw: &Gwproxy, healthy: &Upstream) {
    let request = json!({ "method": "GET", "url": healthy.url("/after-fault") });
    let (status, body) = tokio::time::timeout(PROMPT, gw.proxy(request))
        .await
        .expect("gwproxy answered the good request in time");
    assert_eq!(status, StatusCode::OK, "body: {body}");
    assert_eq!(body["status_code"], 200);
    assert_eq!(body["body"], json!({"healthy": true}));
}

/// One proxy request with a small JSON body, answered within [`PROMPT`].
async fn call(gw: &Gwproxy, method: &str, url: String) -> (StatusCode, Value) {
    let request = json!({ "method": method, "url": url, "body": {"n": 1} });
    let answer = tokio::time::timeout(PROMPT, gw.proxy(request)).await;
    answer.unwrap_or_else(|_| panic!("no answer within {PROMPT:?} for {method} {url}"))
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body); returns its
/// request line, or `None` when the peer closed or sent something else.
async fn read_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> Option<String> {
    let whole = read_whole_request(reader).await?;
    Some(whole.lines().next().unwrap_or_default().to_owned())
}

/// Reads one HTTP/1.1 request and returns all of it, head and body, as text.
async fn read_whole_request<R: AsyncBufRead + Unpin>(reader: &mut R) -> Option<String> {
    let mut whole = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        whole.push_str(&line);
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    whole.push_str(&String::from_utf8_lossy(&body));
    Some(whole)
}

fn http_ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A raw gateway that reads one request and then does `then` with the stream.
async fn after_one_request<F, Fut>(then: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    raw_upstream(move |stream| async move {
        let mut reader = BufReader::new(stream);
        if read_request(&mut reader).await.is_some() {
            then(reader.into_inner()).await;
        }
    })
    .await
}

#[tokio::test]
async fn refused_connection_is_a_500_that_says_refused() {
    let faulty = common::closed_port();
    let (gw, healthy) = proxy_with_faulty(faulty, json!({})).await;

    let detail = expect_gateway_failure(&gw, "GET", &format!("http://{faulty}/x"), PROMPT).await;
    assert!(detail.contains("refused"), "detail: {detail}");

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn stalled_gateway_times_out_within_response_ms() {
    let faulty = after_one_request(|stream| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    })
    .await;
    let extra = json!({ "timeouts": { "response_ms": 500 } });
    let (gw, healthy) = proxy_with_faulty(faulty, extra).await;

    let url = format!("http://{faulty}/stall");
    let detail = expect_gateway_failure(&gw, "GET", &url, Duration::from_secs(3)).await;
    assert!(detail.contains("timeout"), "detail: {detail}");

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn body_shorter_than_content_length_says_the_connection_broke() {
    let faulty = after_one_request(|mut stream| async move {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(b"0123456789").await;
        let _ = stream.shutdown().await;
    })
    .await;
    let (gw, healthy) = proxy_with_faulty(faulty, json!({})).await;

    let url = format!("http://{faulty}/short");
    let detail = expect_gateway_failure(&gw, "GET", &url, PROMPT).await;
    assert!(detail.contains("body"), "detail: {detail}");
    assert!(detail.contains("broke the connection"), "detail: {detail}");

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn gateway_closing_before_responding_is_a_500() {
    let faulty = after_one_request(|stream| async move { drop(stream) }).await;
    let (gw, healthy) = proxy_with_faulty(faulty, json!({})).await;

    for method in ["GET", "POST"] {
        let url = format!("http://{faulty}/close");
        let detail = expect_gateway_failure(&gw, method, &url, PROMPT).await;
        assert!(detail.contains("closed the connection"), "detail: {detail}");
    }

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn gateway_resetting_before_responding_is_a_500() {
    let faulty = after_one_request(|stream| async move {
        // Linger zero turns the close into a TCP RST.
        let _ = stream.set_zero_linger();
        drop(stream);
    })
    .await;
    let (gw, healthy) = proxy_with_faulty(faulty, json!({})).await;

    let url = format!("http://{faulty}/reset");
    let detail = expect_gateway_failure(&gw, "POST", &url, PROMPT).await;
    assert!(
        detail.contains("reset") || detail.contains("closed the connection"),
        "detail: {detail}"
    );

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn garbage_instead_of_a_response_is_not_valid_http() {
    let faulty = after_one_request(|mut stream| async move {
        let _ = stream.write_all(b"hello garbage\r\n\r\n").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    let (gw, healthy) = proxy_with_faulty(faulty, json!({})).await;

    let url = format!("http://{faulty}/garbage");
    let detail = expect_gateway_failure(&gw, "GET", &url, PROMPT).await;
    assert!(detail.contains("not valid http"), "detail: {detail}");

    assert_still_serves(&gw, &healthy).await;
}

/// A response head with more fields than `limits.max_response_header_count`
/// is a 500 that says so; one within the limit is answered.
#[tokio::test]
async fn response_head_over_the_header_count_is_too_large() {
    let faulty = raw_upstream(|stream| async move {
        let mut reader = BufReader::new(stream);
        while let Some(request) = read_request(&mut reader).await {
            let count = if request.contains("/many") { 30 } else { 10 };
            let fields: String = (0..count)
                .map(|i| format!("X-Field-{i}: {i}\r\n"))
                .collect();
            let answer = format!("HTTP/1.1 200 OK\r\n{fields}Content-Length: 2\r\n\r\nok");
            if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let extra = json!({ "limits": { "max_response_header_count": 20 } });
    let (gw, healthy) = proxy_with_faulty(faulty, extra).await;

    let (status, body) = call(&gw, "GET", format!("http://{faulty}/few")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["headers"]["X-Field-9"], "9");

    let url = format!("http://{faulty}/many");
    let detail = expect_gateway_failure(&gw, "GET", &url, PROMPT).await;
    assert!(detail.contains("response too large"), "detail: {detail}");
    assert!(
        detail.contains("max_response_header_count"),
        "detail: {detail}"
    );

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn body_trickling_forever_times_out_within_response_ms() {
    let faulty = after_one_request(|mut stream| async move {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..300 {
            if stream.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let extra = json!({ "timeouts": { "response_ms": 1000 } });
    let (gw, healthy) = proxy_with_faulty(faulty, extra).await;

    let url = format!("http://{faulty}/trickle");
    let detail = expect_gateway_failure(&gw, "GET", &url, Duration::from_secs(4)).await;
    assert!(detail.contains("timeout"), "detail: {detail}");

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn response_over_the_limit_is_too_large_and_its_connection_is_not_reused() {
    let gateway = Upstream::start(|received| {
        let body = if received.uri.starts_with("/big") {
            Bytes::from(vec![b'a'; 4096])
        } else {
            Bytes::from_static(b"small")
        };
        Response::new(Full::new(body))
    })
    .await;
    let extra = json!({ "limits": { "max_response_body_bytes": 1024 } });
    let (gw, healthy) = proxy_with_faulty(gateway.addr, extra).await;

    let detail = expect_gateway_failure(&gw, "GET", &gateway.url("/big"), PROMPT).await;
    assert!(detail.contains("too large"), "detail: {detail}");

    // The half-read connection must be dropped, not pooled: the next request
    // to the same gateway gets a clean answer on a new connection.
    let request = json!({ "method": "GET", "url": gateway.url("/small") });
    let (status, body) = tokio::time::timeout(PROMPT, gw.proxy(request))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "body: {body}");
    assert_eq!(body["body"], "small");
    assert_eq!(gateway.connections.load(Ordering::SeqCst), 2);

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn connection_of_a_timed_out_request_is_never_reused() {
    // Each connection answers `/slow` only after the caller gave up, then
    // keeps serving: a reused connection would hand out that stale answer.
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let faulty = raw_upstream(move |stream| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut reader = BufReader::new(stream);
            while let Some(line) = read_request(&mut reader).await {
                if line.contains("/slow") {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let body = if line.contains("/slow") {
                    "stale"
                } else {
                    "fresh"
                };
                if reader
                    .get_mut()
                    .write_all(http_ok(body).as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await;
    let extra = json!({ "timeouts": { "response_ms": 500 } });
    let (gw, healthy) = proxy_with_faulty(faulty, one_worker(extra)).await;

    let url = format!("http://{faulty}/slow");
    let detail = expect_gateway_failure(&gw, "GET", &url, Duration::from_secs(3)).await;
    assert!(detail.contains("timeout"), "detail: {detail}");

    for pause in [0, 1500] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let request = json!({ "method": "GET", "url": format!("http://{faulty}/fast") });
        let (status, body) = tokio::time::timeout(PROMPT, gw.proxy(request))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["body"], "fresh", "after {pause} ms");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    assert_still_serves(&gw, &healthy).await;
}

/// A raw gateway whose every connection answers its first request properly
/// (keep-alive) and then reads the second and dies without answering, by
/// FIN or, with `reset`, by RST. Counts its connections.
async fn one_answer_per_connection(reset: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let addr = raw_upstream(move |stream| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut reader = BufReader::new(stream);
            if read_request(&mut reader).await.is_none() {
                return;
            }
            let answer = http_ok(&format!("connection {n}"));
            if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            if read_request(&mut reader).await.is_some() && reset {
                let _ = reader.get_ref().set_zero_linger();
            }
        }
    })
    .await;
    (addr, connections)
}

async fn retries_idempotent_requests_once_on_a_fresh_connection(reset: bool) {
    let (faulty, connections) = one_answer_per_connection(reset).await;
    let (gw, healthy) = proxy_with_faulty(faulty, one_worker(json!({}))).await;
    let url = format!("http://{faulty}/retry");
    let proxy = |method: &'static str| call(&gw, method, url.clone());

    let (status, body) = proxy("GET").await;
    assert_eq!(
        (status, &body["body"]),
        (StatusCode::OK, &json!("connection 1"))
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    // Connection 1 is reused and dies under the GET: one retry on a new one.
    let (status, body) = proxy("GET").await;
    assert_eq!(status, StatusCode::OK, "body: {body}");
    assert_eq!(body["body"], "connection 2");
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    // Connection 2 is reused and dies under a POST, which may not be resent.
    let (status, body) = proxy("POST").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "body: {body}");
    assert_eq!(body["Message"], "Failed to process proxy request");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the POST was retried"
    );

    let (status, body) = proxy("POST").await;
    assert_eq!(status, StatusCode::OK, "body: {body}");
    assert_eq!(body["body"], "connection 3");

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn get_is_retried_after_a_reused_connection_closes_but_post_is_not() {
    retries_idempotent_requests_once_on_a_fresh_connection(false).await;
}

#[tokio::test]
async fn get_is_retried_after_a_reused_connection_resets_but_post_is_not() {
    retries_idempotent_requests_once_on_a_fresh_connection(true).await;
}

/// The resend after a keep-alive race is built again rather than copied
/// (forward.rs): the gateway must see the very same request twice.
#[tokio::test]
async fn a_resent_request_is_the_request_first_sent() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (record, count) = (seen.clone(), connections.clone());
    // Connection 1 answers once and dies under its second request;
    // connection 2 answers.
    let faulty = raw_upstream(move |stream| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let record = record.clone();
        async move {
            let mut reader = BufReader::new(stream);
            for answered in 0.. {
                let Some(request) = read_whole_request(&mut reader).await else {
                    return;
                };
                record.lock().unwrap().push(request);
                if n == 1 && answered == 1 {
                    return;
                }
                let answer = http_ok(&format!("connection {n}"));
                if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let (gw, _healthy) = proxy_with_faulty(faulty, one_worker(json!({}))).await;
    let request = json!({
        "method": "PUT",
        "url": format!("http://{faulty}/resend?q=1"),
        "headers": { "X-Kept": "yes", "Content-Type": "text/plain" },
        "body": "the same body",
    });

    let (status, _) = gw.proxy(request.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = gw.proxy(request).await;
    assert_eq!(
        (status, &body["body"]),
        (StatusCode::OK, &json!("connection 2"))
    );

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].starts_with("PUT /resend?q=1 "), "{}", seen[1]);
    assert!(seen[1].contains("x-request-id: "), "{}", seen[1]);
    assert!(seen[1].ends_with("the same body"), "{}", seen[1]);
    assert_eq!(
        seen[1], seen[2],
        "the resend differs from the first attempt"
    );
}

/// A loopback listener that never accepts, with its one-slot accept queue
/// filled, so that further SYNs are dropped and connects hang. Returns the
/// socket and the filler connections, which must stay open; `None` if this
/// kernel answers instead of dropping.
async fn black_hole() -> Option<(tokio::net::TcpListener, Vec<TcpStream>)> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.1:0".parse().unwrap()).ok()?;
    let listener = socket.listen(0).ok()?;
    let addr = listener.local_addr().ok()?;

    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(_)) => return None,
            // Only a full queue makes a connect hang; a slow first one may just be load.
            Err(_) if !fillers.is_empty() => return Some((listener, fillers)),
            Err(_) => {}
        }
    }
    None
}

#[tokio::test]
async fn connect_timeout_is_a_500_within_connect_ms() {
    let Some((listener, _fillers)) = black_hole().await else {
        panic!("could not build a listener whose connects hang on this kernel");
    };
    let faulty = listener.local_addr().unwrap();
    let extra = json!({ "timeouts": { "connect_ms": 300 } });
    let (gw, healthy) = proxy_with_faulty(faulty, extra).await;

    let url = format!("http://{faulty}/hang");
    let detail = expect_gateway_failure(&gw, "GET", &url, Duration::from_secs(3)).await;
    assert!(
        detail.contains("timeout") && detail.contains("connect"),
        "detail: {detail}"
    );

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn endless_chunked_body_is_cut_off_as_too_large() {
    let faulty = after_one_request(|mut stream| async move {
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = format!("1000\r\n{}\r\n", "z".repeat(4096));
        // 4 MiB at most, far past the limit; stops once gwproxy hangs up.
        for _ in 0..1024 {
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let extra = json!({ "limits": { "max_response_body_bytes": 65536 } });
    let (gw, healthy) = proxy_with_faulty(faulty, extra).await;

    let url = format!("http://{faulty}/endless");
    let detail = expect_gateway_failure(&gw, "GET", &url, PROMPT).await;
    assert!(detail.contains("too large"), "detail: {detail}");

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn pooled_connection_the_gateway_closed_while_idle_is_not_used() {
    // Like a gateway with a 100 ms keep-alive timeout.
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let gateway = raw_upstream(move |stream| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut reader = BufReader::new(stream);
            let mut patience = Duration::from_secs(10);
            while let Ok(Some(_)) = tokio::time::timeout(patience, read_request(&mut reader)).await
            {
                let answer = http_ok(&format!("connection {n}"));
                if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                patience = Duration::from_millis(100);
            }
        }
    })
    .await;
    let (gw, healthy) = proxy_with_faulty(gateway, one_worker(json!({}))).await;
    let url = format!("http://{gateway}/keep-alive");

    for expected in ["connection 1", "connection 2"] {
        // POST: a write into the closed connection could not be retried.
        let (status, body) = call(&gw, "POST", url.clone()).await;
        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["body"], expected);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);

    assert_still_serves(&gw, &healthy).await;
}

#[tokio::test]
async fn get_is_not_retried_once_response_bytes_arrived() {
    // Connection 1 answers once, then sends half a status line and closes.
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let faulty = raw_upstream(move |stream| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut reader = BufReader::new(stream);
            if read_request(&mut reader).await.is_none() {
                return;
            }
            let answer = http_ok(&format!("connection {n}"));
            if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            if read_request(&mut reader).await.is_some() {
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Le")
                    .await;
            }
        }
    })
    .await;
    let (gw, healthy) = proxy_with_faulty(faulty, one_worker(json!({}))).await;
    let url = format!("http://{faulty}/partial-head");

    let (status, body) = call(&gw, "GET", url.clone()).await;
    assert_eq!(status, StatusCode::OK, "body: {body}");
    let (status, body) = call(&gw, "GET", url).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "body: {body}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "the GET was retried");

    assert_still_serves(&gw, &healthy).await;
}
