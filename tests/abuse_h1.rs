//! Abuse over raw HTTP/1.1: request smuggling attempts, oversized and
//! slow request heads and bodies, deep pipelining, half-closed clients and
//! clients that never read.
//! Each is refused or served within a bounded time, and the gateway never
//! sees a request the caller smuggled past gwproxy's framing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{Gwproxy, Upstream, SECRET};

/// Upper bound for anything that needs no timer to happen.
const PROMPT: Duration = Duration::from_secs(5);

/// An upstream that answers every request with its own path as text, so
/// that a response shows which request it belongs to.
async fn echo_upstream() -> Upstream {
    Upstream::start(|received| {
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(received.uri.clone())))
            .unwrap()
    })
    .await
}

fn start(upstream: &Upstream, extra: Value) -> Gwproxy {
    Gwproxy::start(Gwproxy::config(&[&upstream.url("")], extra))
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(PROMPT, TcpStream::connect(addr)).await;
    stream.expect("connect in time").expect("connect")
}

/// The JSON body of a proxy request for `path` on `upstream`.
fn proxy_json(upstream: &Upstream, path: &str) -> String {
    json!({ "method": "GET", "url": upstream.url(path) }).to_string()
}

/// A complete, well-framed `POST /api/proxy` for `path`.
fn proxy_request(upstream: &Upstream, path: &str, secret: &str) -> String {
    let body = proxy_json(upstream, path);
    format!(
        "POST /api/proxy HTTP/1.1\r\nHost: gwproxy\r\nAuthorization: {secret}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One chunk of a chunked body.
fn chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n", data.len())
}

/// What the client saw: the bytes, and whether gwproxy closed the
/// connection (rather than `within` running out).
struct Exchange {
    received: Vec<u8>,
    closed: bool,
}

/// Reads until gwproxy closes the connection or `within` passes.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Exchange {
    let mut received = Vec::new();
    let reading = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(within, reading).await.is_ok();
    Exchange { received, closed }
}

/// One parsed HTTP/1.1 response.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Splits the complete responses off the front of `bytes`; gwproxy and
/// hyper always frame theirs with `Content-Length`.
fn parse_responses(bytes: &mut Vec<u8>) -> Vec<Answer> {
    let mut answers = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).to_string();
        let status = head.get(9..12).and_then(|s| s.parse().ok());
        let status = status.unwrap_or_else(|| panic!("no status line: {head:?}"));
        let length = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, value)| value.trim().parse().expect("a length"));
        if bytes.len() < end + 4 + length {
            break;
        }
        let body = bytes[end + 4..end + 4 + length].to_vec();
        bytes.drain(..end + 4 + length);
        answers.push(Answer { status, body });
    }
    answers
}

// ---------------------------------------------------------------------------
// Request smuggling: whatever gwproxy makes of ambiguous framing, the bytes
// after the first request's body never become a second request.

/// Sends `head` (the request line and headers, without the blank line)
/// with `body`, where `body` hides a second request for `/smuggled`.
/// gwproxy must answer 400 or close, and the gateway must never see it.
async fn assert_not_smuggled(case: &str, head: &str, body: &str) {
    let upstream = echo_upstream().await;
    let gw = start(&upstream, json!({}));
    let mut stream = connect(gw.addr).await;
    let body = body.replace("{SMUGGLED}", &proxy_request(&upstream, "/smuggled", SECRET));
    let body = body.replace("{FIRST}", &proxy_json(&upstream, "/first"));
    let head = head.replace("{LEN}", &body.len().to_string());
    let request = format!("{head}\r\n\r\n{body}");
    stream.write_all(request.as_bytes()).await.unwrap();

    let mut exchange = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    // Anything the gateway would get has had time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paths: Vec<String> = upstream
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.uri.clone())
        .collect();
    let answers = parse_responses(&mut exchange.received);

    assert!(
        !paths.iter().any(|p| p.contains("smuggled")),
        "{case}: the gateway received a smuggled request: {paths:?}, answers {answers:?}"
    );
    assert!(answers.len() <= 1, "{case}: two answers: {answers:?}");
    let refused = answers.first().is_some_and(|a| a.status == 400);
    assert!(
        refused || exchange.closed,
        "{case}: neither 400 nor closed: {answers:?}"
    );
}

const POST: &str =
    "POST /api/proxy HTTP/1.1\r\nHost: gwproxy\r\nAuthorization: test-secret-0123456789";

#[tokio::test]
async fn content_length_with_chunked_smuggles_nothing() {
    // CL.TE: the length covers the smuggled request, the chunking ends before it.
    let head = format!("{POST}\r\nContent-Length: {{LEN}}\r\nTransfer-Encoding: chunked");
    let body = format!("{}0\r\n\r\n{{SMUGGLED}}", chunk("{FIRST}"));
    assert_not_smuggled("CL.TE", &head, &body).await;

    // TE.CL: the same with the headers the other way round.
    let head = format!("{POST}\r\nTransfer-Encoding: chunked\r\nContent-Length: {{LEN}}");
    assert_not_smuggled("TE.CL", &head, &body).await;

    // A length that ends inside the chunked body.
    let head = format!("{POST}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked");
    assert_not_smuggled("short CL with TE", &head, &body).await;
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    let body = "{FIRST}{SMUGGLED}";
    let first_len = proxy_json(&echo_upstream().await, "/first").len();
    let head = format!("{POST}\r\nContent-Length: {first_len}\r\nContent-Length: {{LEN}}");
    assert_not_smuggled("two Content-Length headers", &head, body).await;

    let head = format!("{POST}\r\nContent-Length: {{LEN}}\r\nContent-Length: {first_len}");
    assert_not_smuggled("two Content-Length headers, reversed", &head, body).await;

    let head = format!("{POST}\r\nContent-Length: {first_len}, {{LEN}}");
    assert_not_smuggled("a Content-Length list", &head, body).await;

    let head = format!("{POST}\r\nContent-Length: +{{LEN}}");
    assert_not_smuggled("a signed Content-Length", &head, body).await;
}

#[tokio::test]
async fn unknown_or_oddly_spaced_transfer_encodings_smuggle_nothing() {
    let body = format!("{}0\r\n\r\n{{SMUGGLED}}", chunk("{FIRST}"));
    for (case, te) in [
        ("xchunked", "Transfer-Encoding: xchunked"),
        ("chunked not last", "Transfer-Encoding: chunked, identity"),
        ("space before colon", "Transfer-Encoding : chunked"),
        ("leading space", "Transfer-Encoding:  chunked"),
        ("tabs", "Transfer-Encoding:\tchunked\t"),
        ("vertical tab", "Transfer-Encoding: \x0bchunked"),
        (
            "two headers",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
        ),
        ("quoted", "Transfer-Encoding: \"chunked\""),
    ] {
        let head = format!("{POST}\r\nContent-Length: {{LEN}}\r\n{te}");
        assert_not_smuggled(case, &head, &body).await;
    }

    let head = "POST /api/proxy HTTP/1.0\r\nHost: gwproxy\r\n\
                Authorization: test-secret-0123456789\r\nTransfer-Encoding: chunked";
    assert_not_smuggled("chunked in HTTP/1.0", head, &body).await;
}

#[tokio::test]
async fn obsolete_line_folding_is_refused() {
    let body = "{FIRST}{SMUGGLED}";
    let head = format!("{POST}\r\nX-Folded: a\r\n b\r\nContent-Length: {{LEN}}");
    assert_not_smuggled("folded X-Folded", &head, body).await;

    let body = format!("{}0\r\n\r\n{{SMUGGLED}}", chunk("{FIRST}"));
    let head =
        format!("{POST}\r\nContent-Length: {{LEN}}\r\nTransfer-Encoding: identity\r\n chunked");
    assert_not_smuggled("folded Transfer-Encoding", &head, &body).await;
}

// ---------------------------------------------------------------------------
// Oversized and slow request heads and bodies.

/// Sends `request` and expects one of `statuses` or a close, in bounded time.
async fn assert_refused(gw: &Gwproxy, request: &[u8], statuses: &[u16]) {
    let mut stream = connect(gw.addr).await;
    let started = Instant::now();
    // gwproxy may close before the whole request is written.
    let _ = stream.write_all(request).await;
    let mut exchange = read_until_closed(&mut stream, PROMPT).await;
    assert!(exchange.closed, "open after {:?}", started.elapsed());
    let answers = parse_responses(&mut exchange.received);
    assert!(
        answers.iter().all(|a| statuses.contains(&a.status)) && answers.len() <= 1,
        "{answers:?}"
    );
}

/// Sends `request` and expects one JSON `431` error envelope, then a close.
async fn assert_json_431(gw: &Gwproxy, request: &[u8]) {
    let mut stream = connect(gw.addr).await;
    stream.write_all(request).await.expect("write");
    let mut exchange = read_until_closed(&mut stream, PROMPT).await;
    assert!(exchange.closed, "left open after a 431");
    let answers = parse_responses(&mut exchange.received);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].status, 431);
    let error: Value = serde_json::from_slice(&answers[0].body).expect("a JSON body");
    assert_eq!(error["Status"], "Error");
    assert_eq!(error["Message"], "Request header fields too large");
}

#[tokio::test]
async fn a_header_section_over_max_header_bytes_is_refused() {
    let upstream = echo_upstream().await;
    let gw = start(&upstream, json!({ "limits": { "max_header_bytes": 8192 } }));

    let big = "a".repeat(20_000);
    let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    assert_json_431(&gw, request.as_bytes()).await;

    // Many small headers add up the same way, on any route.
    let many: String = (0..40)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(250)))
        .collect();
    let request = format!("POST /api/proxy HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_json_431(&gw, request.as_bytes()).await;

    // Just under the limit is served.
    let fits = "c".repeat(8000);
    let request = format!("GET /hello HTTP/1.1\r\nX-Fits: {fits}\r\nConnection: close\r\n\r\n");
    let mut stream = connect(gw.addr).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut exchange = read_until_closed(&mut stream, PROMPT).await;
    let answers = parse_responses(&mut exchange.received);
    assert_eq!(answers.iter().map(|a| a.status).collect::<Vec<_>>(), [200]);

    // Far over it, hyper refuses the head before there is a request.
    let huge = "d".repeat(200_000);
    let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n");
    assert_refused(&gw, request.as_bytes(), &[431, 400]).await;

    let (status, _) = gw
        .proxy(json!({ "method": "GET", "url": upstream.url("/ok") }))
        .await;
    assert_eq!(status, 200, "gwproxy still serves");
}

#[tokio::test]
async fn more_headers_than_max_header_count_are_refused() {
    let upstream = echo_upstream().await;
    let gw = start(&upstream, json!({ "limits": { "max_header_count": 20 } }));

    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /hello HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_refused(&gw, request.as_bytes(), &[431, 400]).await;

    let (status, _) = gw
        .proxy(json!({ "method": "GET", "url": upstream.url("/ok") }))
        .await;
    assert_eq!(status, 200, "gwproxy still serves");
}

/// gwproxy leaves hyper's own limit in place when the configured count is
/// the default, so check that the default still holds at 100.
#[tokio::test]
async fn the_default_header_count_limit_is_one_hundred() {
    let upstream = echo_upstream().await;
    let gw = start(&upstream, json!({}));
    let head = |count: usize| {
        let many: String = (0..count).map(|i| format!("X-H{i}: v\r\n")).collect();
        format!("GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{many}\r\n")
    };

    let mut stream = connect(gw.addr).await;
    stream.write_all(head(90).as_bytes()).await.expect("write");
    let mut exchange = read_until_closed(&mut stream, PROMPT).await;
    let answers = parse_responses(&mut exchange.received);
    assert_eq!(answers.iter().map(|a| a.status).collect::<Vec<_>>(), [200]);

    assert_refused(&gw, head(110).as_bytes(), &[431, 400]).await;
}

/// Writes `bytes` one at a time, `gap` apart, until done or the peer closes.
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, gap: Duration) {
    tokio::spawn(async move {
        for byte in bytes {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
}

/// Sends `head` one byte per 100 ms to a gwproxy with `request_header_ms`
/// 500: each byte is prompt, the whole head never is.
async fn assert_slow_head_cut_off(head: impl FnOnce(&Upstream) -> String) {
    let upstream = echo_upstream().await;
    let gw = start(
        &upstream,
        json!({ "timeouts": { "request_header_ms": 500 } }),
    );
    let (mut reader, writer) = connect(gw.addr).await.into_split();

    let started = Instant::now();
    trickle(
        writer,
        head(&upstream).into_bytes(),
        Duration::from_millis(100),
    );

    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), reader.read_to_end(&mut received));
    assert!(
        closed.await.is_ok(),
        "gwproxy kept the connection open for 3 s"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(2500),
        "closed after {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_get_head_sent_one_byte_per_100_ms_is_cut_off_at_request_header_ms() {
    assert_slow_head_cut_off(|_| {
        format!(
            "GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(60)
        )
    })
    .await;
}

/// A first read of just "P" also starts the h2 preface ("PRI * HTTP/2.0"),
/// so gwproxy must wait for more bytes before it calls the connection h2.
#[tokio::test]
async fn a_post_head_sent_one_byte_per_100_ms_is_cut_off_at_request_header_ms() {
    assert_slow_head_cut_off(|upstream| proxy_request(upstream, "/slow", SECRET)).await;
}

#[tokio::test]
async fn a_body_sent_one_byte_per_100_ms_gets_400_or_close_at_request_body_ms() {
    let upstream = echo_upstream().await;
    let gw = start(&upstream, json!({ "timeouts": { "request_body_ms": 500 } }));
    let (mut reader, mut writer) = connect(gw.addr).await.into_split();

    let body = proxy_json(&upstream, "/slow-body");
    let head = format!(
        "POST /api/proxy HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    trickle(writer, body.into_bytes(), Duration::from_millis(100));

    let mut received = Vec::new();
    let answered = async {
        let mut buf = [0u8; 1024];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let within = tokio::time::timeout(Duration::from_secs(3), answered).await;
    assert!(within.is_ok(), "neither answered nor closed");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    let text = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || text.starts_with("HTTP/1.1 400 "),
        "{text}"
    );
    assert_eq!(upstream.count(), 0);
}

// ---------------------------------------------------------------------------
// Pipelining and half-closed clients.

#[tokio::test]
async fn two_hundred_pipelined_requests_are_all_answered_in_order() {
    let upstream = echo_upstream().await;
    let gw = start(&upstream, json!({}));
    let (mut reader, mut writer) = connect(gw.addr).await.into_split();

    // A mix of proxied requests, health checks and refusals.
    let requests: Vec<String> = (0..200)
        .map(|i| match i % 3 {
            0 => proxy_request(&upstream, &format!("/p/{i}"), SECRET),
            1 => "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            _ => proxy_request(&upstream, &format!("/p/{i}"), "wrong-secret"),
        })
        .collect();
    let all = requests.concat();
    let writing = tokio::spawn(async move {
        writer.write_all(all.as_bytes()).await.unwrap();
        writer
    });

    let started = Instant::now();
    let mut pending = Vec::new();
    let mut answers = Vec::new();
    let reading = async {
        let mut buf = [0u8; 16384];
        while answers.len() < 200 {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            answers.extend(parse_responses(&mut pending));
        }
    };
    let done = tokio::time::timeout(Duration::from_secs(20), reading).await;
    assert!(done.is_ok(), "{} of 200 answered", answers.len());
    assert_eq!(answers.len(), 200, "connection closed early");
    let _writer = writing.await.unwrap();

    for (i, answer) in answers.iter().enumerate() {
        let value: Value = serde_json::from_slice(&answer.body).expect("JSON answer");
        match i % 3 {
            0 => {
                assert_eq!(answer.status, 200, "#{i}: {value}");
                assert_eq!(value["body"], format!("/p/{i}"), "#{i} out of order");
            }
            1 => assert_eq!(
                (answer.status, &value["status"]),
                (200, &json!("ok")),
                "#{i}"
            ),
            _ => assert_eq!(answer.status, 401, "#{i}: {value}"),
        }
    }
    assert_eq!(upstream.count(), 67);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_response() {
    let upstream = echo_upstream().await;
    let gw = start(&upstream, json!({}));
    let mut stream = connect(gw.addr).await;

    let request = proxy_request(&upstream, "/half-closed", SECRET);
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();

    let mut exchange = read_until_closed(&mut stream, PROMPT).await;
    assert!(
        exchange.closed,
        "gwproxy kept the half-closed connection open"
    );
    let answers = parse_responses(&mut exchange.received);
    assert_eq!(answers.len(), 1, "no response after the client's FIN");
    let value: Value = serde_json::from_slice(&answers[0].body).unwrap();
    assert_eq!(
        (answers[0].status, &value["body"]),
        (200, &json!("/half-closed"))
    );
}

/// A gateway whose every response is `len` bytes of text.
async fn large_upstream(len: usize) -> Upstream {
    let body = Bytes::from(vec![b'a'; len]);
    Upstream::start(move |_| {
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(body.clone()))
            .unwrap()
    })
    .await
}

/// A client that sends a request and never reads the response. Its
/// receive buffer is kept small, so that the kernel cannot take the whole
/// response off gwproxy's hands.
#[tokio::test]
async fn an_http1_client_that_never_reads_is_dropped_after_idle_ms() {
    const LEN: usize = 24 << 20;
    let upstream = large_upstream(LEN).await;
    let config = json!({
        "timeouts": { "idle_ms": 1000, "request_header_ms": 1000 },
        "limits": { "max_response_body_bytes": 32 << 20 },
    });
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], config));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = tokio::time::timeout(PROMPT, socket.connect(gw.addr))
        .await
        .expect("connect in time")
        .expect("connect");

    let body = json!({ "method": "GET", "url": upstream.url("/large") }).to_string();
    let request = format!(
        "POST /api/proxy HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read nothing for longer than any of gwproxy's timers.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    });
    assert!(
        drained.await.is_ok() && total < LEN,
        "gwproxy still held the whole response for a client silent for 8 s ({total} bytes)"
    );
}
