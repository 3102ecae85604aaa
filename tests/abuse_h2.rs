//! Abuse over HTTP/2 with prior knowledge (h2c): rapid reset, more streams
//! than gwproxy allows, oversized header lists, CONTINUATION floods and
//! clients that never open their flow-control window. gwproxy stays
//! responsive to everyone else, and its memory stays bounded.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{self, SendRequest};
use h2::Reason;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use common::ops::read_request_head;
use common::{raw_upstream, Gwproxy, Upstream, SECRET};

/// Upper bound for anything that needs no timer to happen.
const PROMPT: Duration = Duration::from_secs(5);

/// gwproxy's SETTINGS_MAX_CONCURRENT_STREAMS (server.rs).
const MAX_STREAMS: usize = 256;

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(PROMPT, TcpStream::connect(addr)).await;
    stream.expect("connect in time").expect("connect")
}

/// An h2c client; the task holds the connection's result.
async fn h2_client(
    addr: SocketAddr,
    builder: &client::Builder,
) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let handshake = builder.handshake::<_, Bytes>(connect(addr).await);
    let (sender, connection) = tokio::time::timeout(PROMPT, handshake)
        .await
        .expect("h2 handshake in time")
        .expect("h2 handshake");
    (sender, tokio::spawn(connection))
}

fn proxy_head() -> Request<()> {
    Request::post("http://gwproxy/api/proxy")
        .header("authorization", SECRET)
        .body(())
        .unwrap()
}

/// One proxy request on `sender`: status and JSON body.
async fn h2_proxy(sender: &mut SendRequest<Bytes>, body: &Value) -> (StatusCode, Value) {
    let exchange = async {
        let ready = sender.clone().ready().await.expect("connection usable");
        *sender = ready;
        let (response, mut stream) = sender.send_request(proxy_head(), false).unwrap();
        stream
            .send_data(Bytes::from(body.to_string()), true)
            .unwrap();
        let response = response.await.expect("response");
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body chunk");
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        (status, common::parse_json(&bytes))
    };
    tokio::time::timeout(PROMPT, exchange)
        .await
        .expect("h2 answer in time")
}

/// A fresh h2c connection gets a normal proxied request answered promptly.
async fn assert_still_serves(gw: &Gwproxy, upstream: &Upstream) {
    let started = Instant::now();
    let (mut sender, _connection) = h2_client(gw.addr, &client::Builder::new()).await;
    let request = json!({ "method": "GET", "url": upstream.url("/after") });
    let (status, body) = h2_proxy(&mut sender, &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status_code"], 200, "{body}");
    assert!(started.elapsed() < PROMPT);
}

/// gwproxy's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

// ---------------------------------------------------------------------------
// Rapid reset (CVE-2023-44487).

#[tokio::test]
async fn rapid_reset_is_cut_off_and_others_are_still_served() {
    let upstream = Upstream::fixed(200, "application/json", b"{}").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})));
    let (mut sender, connection) = h2_client(gw.addr, &client::Builder::new()).await;
    let before = rss_kib(gw.pid());

    let started = Instant::now();
    let mut opened = 0;
    let abuse = async {
        for _ in 0..2000 {
            let Ok(ready) = sender.clone().ready().await else {
                return;
            };
            sender = ready;
            let Ok((_response, mut stream)) = sender.send_request(proxy_head(), false) else {
                return;
            };
            stream.send_reset(Reason::CANCEL);
            opened += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), abuse)
        .await
        .expect("2000 opened-and-reset streams took over 20 s");

    // gwproxy answers the abuse by going away, or it absorbed every
    // reset; either way the connection ends once the client lets go.
    drop(sender);
    let ended = tokio::time::timeout(PROMPT, connection).await;
    let result = ended.expect("the abusive connection ended").unwrap();
    eprintln!("rapid reset: {opened} streams opened and reset; connection: {result:?}");
    if let Err(error) = &result {
        assert!(
            error.is_go_away()
                || error.is_io()
                || error.reason() == Some(Reason::ENHANCE_YOUR_CALM),
            "{error:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(25));

    assert_still_serves(&gw, &upstream).await;
    let grown = rss_kib(gw.pid()).saturating_sub(before);
    assert!(
        grown < 50 * 1024,
        "RSS grew {grown} KiB after {opened} resets"
    );
    assert!(
        upstream.count() <= 1 + opened,
        "reset streams reached the gateway"
    );
}

/// The same in one burst of frames, so that the resets arrive before
/// gwproxy has accepted the streams: hyper's pending-reset limit applies.
#[tokio::test]
async fn a_burst_of_opened_and_reset_streams_is_cut_off() {
    let upstream = Upstream::fixed(200, "application/json", b"{}").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})));
    let before = rss_kib(gw.pid());
    let mut stream = raw_h2(gw.addr).await;

    let block = proxy_header_block();
    let cancel = 0x8u32.to_be_bytes();
    let burst: Vec<u8> = (0..2000u32)
        .flat_map(|i| {
            let mut pair = frame(HEADERS, END_HEADERS, 2 * i + 1, &block);
            pair.extend(frame(RST_STREAM, 0, 2 * i + 1, &cancel));
            pair
        })
        .collect();
    let started = Instant::now();
    // gwproxy may go away before it has read the whole burst.
    let _ = tokio::time::timeout(PROMPT, stream.write_all(&burst)).await;

    let (frames, ended) = read_frames(&mut stream, Duration::from_secs(3)).await;
    let goaway = frames.iter().find(|f| f.kind == GOAWAY);
    let reason = goaway.map(|f| u32::from_be_bytes(f.payload[4..8].try_into().unwrap()));
    eprintln!(
        "reset burst: ended={ended} GOAWAY reason={reason:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    assert_still_serves(&gw, &upstream).await;
    let grown = rss_kib(gw.pid()).saturating_sub(before);
    assert!(grown < 50 * 1024, "RSS grew {grown} KiB");
    assert_eq!(upstream.count(), 1, "reset streams reached the gateway");
}

// ---------------------------------------------------------------------------
// Concurrent streams.

/// A raw gateway that answers each request only once `release` turns
/// true (or after 30 s); counts the requests that arrived.
async fn held_upstream(release: watch::Receiver<bool>) -> (SocketAddr, Arc<AtomicUsize>) {
    let arrived = Arc::new(AtomicUsize::new(0));
    let count = arrived.clone();
    let addr = raw_upstream(move |stream| {
        let (mut release, count) = (release.clone(), count.clone());
        async move {
            let mut reader = BufReader::new(stream);
            // gwproxy sends these GETs without a body: a head is a request.
            while read_request_head(&mut reader).await {
                count.fetch_add(1, Ordering::SeqCst);
                let wait = release.wait_for(|released| *released);
                let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
                let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                              Content-Length: 2\r\n\r\n{}";
                if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, arrived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_is_held_to_max_concurrent_streams_by_settings() {
    let (release_tx, release) = watch::channel(false);
    let (held, arrived) = held_upstream(release).await;
    let held_url = format!("http://{held}");
    let gw = Gwproxy::start(Gwproxy::config(&[&held_url], json!({})));
    let (mut sender, _connection) = h2_client(gw.addr, &client::Builder::new()).await;

    // After one exchange gwproxy's SETTINGS have surely arrived.
    let hello = Request::get("http://gwproxy/hello").body(()).unwrap();
    let (response, _) = sender.send_request(hello, true).unwrap();
    let response = tokio::time::timeout(PROMPT, response).await.unwrap();
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(sender.current_max_send_streams(), MAX_STREAMS);

    let body = json!({ "method": "GET", "url": format!("{held_url}/held") });
    let mut requests = Vec::new();
    for _ in 0..MAX_STREAMS + 44 {
        let mut sender = sender.clone();
        let body = body.clone();
        requests.push(tokio::spawn(async move {
            let exchange = async {
                sender = sender.ready().await?;
                let (response, mut stream) = sender.send_request(proxy_head(), false)?;
                stream.send_data(Bytes::from(body.to_string()), true)?;
                Ok::<_, h2::Error>(response.await?.status())
            };
            tokio::time::timeout(Duration::from_secs(30), exchange).await
        }));
    }

    // The first MAX_STREAMS reach the gateway; the rest wait in the client.
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrived.load(Ordering::SeqCst) < MAX_STREAMS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(arrived.load(Ordering::SeqCst), MAX_STREAMS);

    release_tx.send(true).unwrap();
    for request in requests {
        let status = request.await.unwrap().expect("answered in time");
        assert_eq!(status.expect("h2 exchange"), StatusCode::OK);
    }
    assert_eq!(arrived.load(Ordering::SeqCst), MAX_STREAMS + 44);
}

// ---------------------------------------------------------------------------
// Hand-made frames, for a client that breaks the rules on purpose.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK (RFC 7541) for `POST /api/proxy` with the test secret, using only
/// static-table entries and literals without indexing, so that every
/// block stands alone.
fn proxy_header_block() -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    for (index, value) in [(4u8, "/api/proxy"), (1, "gwproxy")] {
        block.extend_from_slice(&[index, value.len() as u8]);
        block.extend_from_slice(value.as_bytes());
    }
    // authorization is static entry 23: 15 in the 4-bit prefix, then 8.
    block.extend_from_slice(&[0x0f, 0x08, SECRET.len() as u8]);
    block.extend_from_slice(SECRET.as_bytes());
    block
}

/// A frame as read: type, flags, stream and payload.
struct Frame {
    kind: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames for `within` or until the connection ends; ACKs SETTINGS.
async fn read_frames(stream: &mut TcpStream, within: Duration) -> (Vec<Frame>, bool) {
    let mut frames = Vec::new();
    let reading = async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            let (kind, flags) = (head[2 + 1], head[4]);
            if kind == SETTINGS && flags & ACK == 0 {
                let _ = stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            frames.push(Frame {
                kind,
                stream: id,
                payload,
            });
        }
    };
    let ended = tokio::time::timeout(within, reading).await.is_ok();
    (frames, ended)
}

/// Opens a raw h2c connection: preface, empty SETTINGS, gwproxy's SETTINGS read and ACKed.
async fn raw_h2(addr: SocketAddr) -> TcpStream {
    let mut stream = connect(addr).await;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    let (frames, _) = read_frames(&mut stream, Duration::from_millis(300)).await;
    assert!(
        frames.iter().any(|f| f.kind == SETTINGS),
        "no SETTINGS from gwproxy"
    );
    stream
}

#[tokio::test]
async fn streams_over_the_advertised_limit_are_refused() {
    let upstream = Upstream::fixed(200, "application/json", b"{}").await;
    let config = json!({ "timeouts": { "request_body_ms": 5000 } });
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], config));
    let mut stream = raw_h2(gw.addr).await;

    // MAX_STREAMS + 40 requests whose bodies never come, so none finishes.
    let block = proxy_header_block();
    let burst: Vec<u8> = (0..MAX_STREAMS as u32 + 40)
        .flat_map(|i| frame(HEADERS, END_HEADERS, 2 * i + 1, &block))
        .collect();
    stream.write_all(&burst).await.unwrap();

    let (frames, _) = read_frames(&mut stream, Duration::from_secs(2)).await;
    let refused = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM && f.payload[..] == REFUSED_STREAM.to_be_bytes())
        .count();
    let went_away = frames.iter().any(|f| f.kind == GOAWAY);
    assert!(
        refused >= 40 || went_away,
        "{refused} streams refused, no GOAWAY"
    );
    let answered = frames
        .iter()
        .filter(|f| f.kind == HEADERS && f.stream <= 2 * MAX_STREAMS as u32)
        .count();
    assert_eq!(answered, 0, "streams within the limit were answered early");
    drop(stream);

    assert_still_serves(&gw, &upstream).await;
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_a_stream_or_connection_error() {
    let upstream = Upstream::fixed(200, "application/json", b"{}").await;
    let config = json!({ "limits": { "max_header_bytes": 8192 } });
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], config));

    let big = "v".repeat(12_000);
    let huge = "v".repeat(200_000);
    let many: Vec<(String, String)> = (0..2000).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let cases: [(&str, Vec<(String, String)>); 3] = [
        ("one 12 kB header", vec![("x-big".into(), big)]),
        ("one 200 kB header", vec![("x-huge".into(), huge)]),
        ("2000 headers", many),
    ];
    for (case, headers) in cases {
        let (mut sender, connection) = h2_client(gw.addr, &client::Builder::new()).await;
        sender = tokio::time::timeout(PROMPT, sender.ready())
            .await
            .unwrap()
            .unwrap();
        let mut request = proxy_head();
        for (name, value) in &headers {
            request.headers_mut().append(
                name.parse::<http::HeaderName>().unwrap(),
                value.parse().unwrap(),
            );
        }
        let outcome = match sender.send_request(request, true) {
            Ok((response, _)) => tokio::time::timeout(PROMPT, response)
                .await
                .unwrap_or_else(|_| panic!("{case}: no answer in time")),
            Err(error) => Err(error),
        };
        // Within hyper's slack over the limit, gwproxy itself answers, in JSON.
        if case == "one 12 kB header" {
            let response = outcome.as_ref().expect("an answer, not a reset");
            assert_eq!(response.headers()["content-type"], "application/json");
        }
        match outcome {
            Ok(response) => assert_eq!(
                response.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "{case}"
            ),
            Err(error) => assert!(
                error.is_reset() || error.is_go_away() || error.is_io(),
                "{case}: {error:?}"
            ),
        }
        drop(sender);
        let _ = tokio::time::timeout(PROMPT, connection).await;
        assert_still_serves(&gw, &upstream).await;
    }
    assert_eq!(
        upstream.count(),
        3,
        "an oversized request reached the gateway"
    );
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let upstream = Upstream::fixed(200, "application/json", b"{}").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})));
    let before = rss_kib(gw.pid());
    let mut stream = raw_h2(gw.addr).await;

    // A header block that never ends: one HEADERS, then CONTINUATION
    // frames each carrying a little more of an endless header value.
    let mut opening = proxy_header_block();
    opening.extend_from_slice(&[0x00, 0x05]);
    opening.extend_from_slice(b"x-pad");
    opening.extend_from_slice(&[0x7f, 0xff, 0xff, 0x7f]); // a 2 MiB string literal
    stream
        .write_all(&frame(HEADERS, END_STREAM, 1, &opening))
        .await
        .unwrap();
    let piece = frame(CONTINUATION, 0, 1, &[b'v'; 1024]);
    let flooding = async {
        for _ in 0..20_000 {
            if stream.write_all(&piece).await.is_err() {
                return true;
            }
        }
        false
    };
    let cut = tokio::time::timeout(Duration::from_secs(20), flooding)
        .await
        .expect("writing the flood took over 20 s");

    let (frames, ended) = read_frames(&mut stream, Duration::from_secs(2)).await;
    assert!(
        cut || ended || frames.iter().any(|f| f.kind == GOAWAY),
        "gwproxy accepted 20 MB of CONTINUATION"
    );
    assert_still_serves(&gw, &upstream).await;
    let grown = rss_kib(gw.pid()).saturating_sub(before);
    eprintln!("CONTINUATION flood: cut={cut} ended={ended}, RSS grew {grown} KiB");
    assert!(grown < 50 * 1024, "RSS grew {grown} KiB");
    assert_eq!(upstream.count(), 1);
}

// ---------------------------------------------------------------------------
// Flow control held at zero.

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

/// Opens `streams` proxy requests for large responses on a connection
/// whose stream windows are zero, and waits for their response heads.
async fn stall_large_responses(
    gw: &Gwproxy,
    upstream: &Upstream,
    streams: usize,
) -> (
    SendRequest<Bytes>,
    JoinHandle<Result<(), h2::Error>>,
    Vec<h2::RecvStream>,
) {
    let mut builder = client::Builder::new();
    builder.initial_window_size(0);
    let (mut sender, connection) = h2_client(gw.addr, &builder).await;
    let body = json!({ "method": "GET", "url": upstream.url("/large") });
    let mut held = Vec::new();
    for _ in 0..streams {
        sender = sender.ready().await.unwrap();
        let (response, mut stream) = sender.send_request(proxy_head(), false).unwrap();
        stream
            .send_data(Bytes::from(body.to_string()), true)
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("response head in time")
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response.into_body());
    }
    (sender, connection, held)
}

#[tokio::test]
async fn a_client_holding_its_window_at_zero_costs_bounded_memory() {
    const LEN: usize = 4 << 20;
    let upstream = large_upstream(LEN).await;
    let gw = Gwproxy::start(Gwproxy::config(
        &[&upstream.url("")],
        json!({ "workers": 1 }),
    ));
    assert_still_serves(&gw, &upstream).await;
    let before = rss_kib(gw.pid());

    let (_sender, _connection, held) = stall_large_responses(&gw, &upstream, 4).await;

    // Others are served meanwhile, and promptly.
    for _ in 0..20 {
        assert_still_serves(&gw, &upstream).await;
    }
    let grown = rss_kib(gw.pid()).saturating_sub(before);
    eprintln!("zero window: RSS {before} KiB, grew {grown} KiB");
    assert!(grown < 50 * 1024, "RSS grew {grown} KiB");
    drop(held);
}

#[tokio::test]
async fn a_client_holding_its_window_at_zero_is_dropped_after_idle_ms() {
    let upstream = large_upstream(1 << 20).await;
    let config = json!({ "timeouts": { "idle_ms": 1000, "request_header_ms": 1000 } });
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], config));

    let (_sender, connection, held) = stall_large_responses(&gw, &upstream, 1).await;

    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        ended.is_ok(),
        "gwproxy kept a connection that read nothing for 10 s open"
    );
    drop(held);
}
