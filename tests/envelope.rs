//! Black-box tests of the success envelope: how a gateway's status, headers
//! and body come back to the caller (SPEC.md, "Response").

mod common;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use common::{send, Gwproxy, Upstream, SECRET};

/// Proxies a GET of `url` and returns gwproxy's raw answer, which must be a
/// `200` JSON envelope.
async fn envelope_bytes(gw: &Gwproxy, url: String) -> Bytes {
    let request = json!({ "method": "GET", "url": url }).to_string();
    let auth = [("authorization", SECRET)];
    let (status, headers, body) =
        send(gw.addr, Method::POST, "/api/proxy", &auth, request.into()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json");
    body
}

async fn envelope(gw: &Gwproxy, url: String) -> Value {
    common::parse_json(&envelope_bytes(gw, url).await)
}

async fn gwproxy_for(upstream: &Upstream) -> Gwproxy {
    Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})))
}

#[tokio::test]
async fn embeds_a_json_body_verbatim() {
    const BODY: &str = r#"{"z":1.50,"a":[1, 2],  "n":{"k":null,"e":1E+2,"s":"\u00e9"} }"#;
    let upstream = Upstream::fixed(200, "application/json", BODY.as_bytes()).await;
    let gw = gwproxy_for(&upstream).await;

    let raw = envelope_bytes(&gw, upstream.url("/j")).await;

    let text = std::str::from_utf8(&raw).expect("envelope is UTF-8");
    assert!(text.contains(&format!("\"body\":{BODY}")), "{text}");
    let value = common::parse_json(&raw);
    assert_eq!(value["status_code"], 200);
    assert_eq!(value["body"]["a"], json!([1, 2]));
    assert_eq!(value["headers"]["Content-Type"], "application/json");
    assert!(value.get("body_encoding").is_none());
}

#[tokio::test]
async fn json_is_recognised_whatever_the_content_type_says() {
    let upstream = Upstream::fixed(200, "text/plain", b"[1,2,3]").await;
    let gw = gwproxy_for(&upstream).await;

    let value = envelope(&gw, upstream.url("/")).await;

    assert_eq!(value["body"], json!([1, 2, 3]));
}

#[tokio::test]
async fn embeds_a_text_body_as_a_string() {
    const BODY: &str = "hello\nworld \"quoted\" \\ caf\u{e9} {not json";
    let upstream = Upstream::fixed(200, "text/plain", BODY.as_bytes()).await;
    let gw = gwproxy_for(&upstream).await;

    let value = envelope(&gw, upstream.url("/t")).await;

    assert_eq!(value["body"], BODY);
    assert!(value.get("body_encoding").is_none());
}

#[tokio::test]
async fn a_json_string_body_stays_a_json_string() {
    let upstream = Upstream::fixed(200, "application/json", br#""just text""#).await;
    let gw = gwproxy_for(&upstream).await;

    let raw = envelope_bytes(&gw, upstream.url("/")).await;

    let text = std::str::from_utf8(&raw).unwrap();
    assert!(text.contains(r#""body":"just text""#), "{text}");
}

#[tokio::test]
async fn embeds_a_binary_body_as_base64() {
    const BODY: &[u8] = b"\x00\xff\x10\x80\xfe\x61\x00";
    // `printf '\x00\xff\x10\x80\xfe\x61\x00' | base64`
    const BASE64: &str = "AP8QgP5hAA==";
    let upstream = Upstream::fixed(200, "application/octet-stream", BODY).await;
    let gw = gwproxy_for(&upstream).await;

    let value = envelope(&gw, upstream.url("/bin")).await;

    assert_eq!(value["body"], BASE64);
    assert_eq!(value["body_encoding"], "base64");
    assert_eq!(value["status_code"], 200);
}

#[tokio::test]
async fn embeds_an_empty_body_as_an_empty_string() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    let value = envelope(&gw, upstream.url("/empty")).await;

    assert_eq!(value["body"], "");
    assert!(value.get("body_encoding").is_none());
}

#[tokio::test]
async fn joins_repeated_headers_and_writes_names_canonically() {
    let upstream = Upstream::start(|_| {
        Response::builder()
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2")
            .header("x-ratelimit-limit", "10")
            .header("x-request-id", "abc-123")
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap()
    })
    .await;
    let gw = gwproxy_for(&upstream).await;

    let value = envelope(&gw, upstream.url("/h")).await;
    let headers = value["headers"].as_object().expect("headers object");

    assert_eq!(headers["Set-Cookie"], "a=1; Path=/, b=2");
    assert_eq!(headers["X-Ratelimit-Limit"], "10");
    assert_eq!(headers["X-Request-Id"], "abc-123");
    assert_eq!(headers["Content-Type"], "text/plain");
    assert_eq!(headers["Content-Length"], "2");
    for name in headers.keys() {
        let canonical = name
            .split('-')
            .all(|part| part.starts_with(|c: char| c.is_ascii_uppercase()));
        assert!(canonical, "{name} is not canonical");
    }
}

#[tokio::test]
async fn passes_the_gateway_status_through_in_a_200() {
    let upstream = Upstream::start(|received| {
        let status: u16 = received.uri[1..].parse().unwrap();
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(format!("status {status}"))))
            .unwrap()
    })
    .await;
    let gw = gwproxy_for(&upstream).await;

    for status in [201, 202, 400, 401, 403, 404, 429, 500, 502, 503] {
        let value = envelope(&gw, upstream.url(&format!("/{status}"))).await;
        assert_eq!(value["status_code"], status);
        assert_eq!(value["body"], format!("status {status}"));
    }
    let no_content = envelope(&gw, upstream.url("/204")).await;
    assert_eq!(no_content["status_code"], 204);
    assert_eq!(no_content["body"], "");
}

#[tokio::test]
async fn does_not_follow_redirects() {
    let target = Upstream::fixed(200, "text/plain", b"followed").await;
    let location = target.url("/target");
    let redirecting = Upstream::start(move |_| {
        Response::builder()
            .status(302)
            .header("location", location.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await;
    let urls = [redirecting.url(""), target.url("")];
    let gw = Gwproxy::start(Gwproxy::config(&[&urls[0], &urls[1]], json!({})));

    let value = envelope(&gw, redirecting.url("/moved")).await;

    assert_eq!(value["status_code"], 302);
    assert_eq!(value["headers"]["Location"], target.url("/target"));
    assert_eq!(value["body"], "");
    assert_eq!(redirecting.count(), 1);
    assert_eq!(target.count(), 0);
}

#[tokio::test]
async fn head_request_gets_headers_and_an_empty_body() {
    let upstream = Upstream::fixed(200, "application/json", br#"{"big":true}"#).await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({ "method": "HEAD", "url": upstream.url("/h") }).to_string();
    let auth = [("authorization", SECRET)];

    let (status, _, body) = send(gw.addr, Method::POST, "/api/proxy", &auth, request.into()).await;

    assert_eq!(status, StatusCode::OK);
    let value = common::parse_json(&body);
    assert_eq!(value["status_code"], 200);
    assert_eq!(value["body"], "");
    assert_eq!(upstream.last().method, Method::HEAD);
}

/// A raw gateway that answers every request with `body` in chunked
/// framing, one chunk per `piece` bytes, each written and flushed apart.
async fn chunked_gateway(body: &'static str, piece: usize) -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    common::raw_upstream(move |stream| async move {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).await.is_ok_and(|n| n > 0) {
            if line != "\r\n" {
                line.clear();
                continue;
            }
            line.clear();
            let stream = reader.get_mut();
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            for part in body.as_bytes().chunks(piece) {
                let chunk = [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat();
                let _ = stream.write_all(&chunk).await;
                let _ = stream.flush().await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        }
    })
    .await
}

#[tokio::test]
async fn a_body_sent_in_pieces_comes_back_whole_up_to_the_limit() {
    // 39 bytes in 7-byte chunks: the limit is the body's length.
    const BODY: &str = r#"{"pieces":["abcdefgh","ijklmnop","qr"]}"#;
    let at_limit = chunked_gateway(BODY, 7).await;
    let over_limit = chunked_gateway(r#"{"pieces":["abcdefgh","ijklmnop","qrs"]}"#, 7).await;
    let urls = [format!("http://{at_limit}"), format!("http://{over_limit}")];
    let limits = json!({ "limits": { "max_response_body_bytes": BODY.len() } });
    let gw = Gwproxy::start(Gwproxy::config(&[&urls[0], &urls[1]], limits));

    let raw = envelope_bytes(&gw, format!("{}/whole", urls[0])).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains(&format!(r#""body":{BODY}"#)), "{text}");

    let request = json!({ "method": "GET", "url": format!("{}/over", urls[1]) });
    let (status, value) = gw.proxy(request).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{value}");
    let detail = value["Meta"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("response too large"), "{value}");
}
