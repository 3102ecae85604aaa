//! Black-box tests of what a gateway actually receives, and of which URLs
//! reach it at all (SPEC.md, "Request" and "Gateway matching").

mod common;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use common::{send, Gwproxy, Received, Upstream, SECRET};

const FORBIDDEN: &str = "Provided URL is not a recognised gateway URL";

type Answer = (StatusCode, HeaderMap, Bytes);

/// `POST /api/proxy` with the test secret and `body` sent as given.
async fn post(gw: &Gwproxy, body: &str) -> Answer {
    let auth = [("authorization", SECRET)];
    send(gw.addr, Method::POST, "/api/proxy", &auth, body.into()).await
}

/// Proxies `request` and returns what the upstream received for it.
async fn forwarded(gw: &Gwproxy, upstream: &Upstream, request: &str) -> Received {
    let before = upstream.count();
    let (status, _, body) = post(gw, request).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(upstream.count(), before + 1, "exactly one request upstream");
    upstream.last()
}

fn assert_forbidden(answer: &Answer) {
    let (status, headers, body) = answer;
    assert_eq!(
        *status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(headers["content-type"], "application/json");
    let value = common::parse_json(body);
    assert_eq!(value["Status"], "Error");
    assert_eq!(value["Message"], FORBIDDEN);
}

fn header<'a>(received: &'a Received, name: &str) -> Option<&'a str> {
    let value = received.headers.get(name)?;
    Some(value.to_str().expect("ASCII header"))
}

async fn gwproxy_for(upstream: &Upstream) -> Gwproxy {
    Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})))
}

fn get(url: String) -> String {
    json!({ "method": "GET", "url": url }).to_string()
}

#[tokio::test]
async fn sends_the_method_and_the_normalised_path_and_query() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    let cases = [
        ("/a/./b/../c?x=1&y=two", "/a/c?x=1&y=two"),
        ("/plain", "/plain"),
        ("", "/"),
        ("/q?list=a,b&empty=", "/q?list=a,b&empty="),
        ("/enc%20oded/%41", "/enc%20oded/%41"),
    ];
    for (path, expected) in cases {
        let request = json!({ "method": "DELETE", "url": upstream.url(path) });
        let received = forwarded(&gw, &upstream, &request.to_string()).await;
        assert_eq!(received.method, Method::DELETE);
        assert_eq!(received.uri, expected, "{path}");
    }
}

#[tokio::test]
async fn passes_the_callers_headers_through() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({
        "method": "GET",
        "url": upstream.url("/h"),
        "headers": {
            "X-Test": "tyk",
            "Accept": "application/json",
            "x-lower": "Mixed Case Value",
            "Authorization": "Bearer gateway-token",
        },
    });

    let received = forwarded(&gw, &upstream, &request.to_string()).await;

    assert_eq!(header(&received, "x-test"), Some("tyk"));
    assert_eq!(header(&received, "accept"), Some("application/json"));
    assert_eq!(header(&received, "x-lower"), Some("Mixed Case Value"));
    assert_eq!(
        header(&received, "authorization"),
        Some("Bearer gateway-token")
    );
}

#[tokio::test]
async fn does_not_forward_the_callers_own_authorization() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let auth = [("authorization", SECRET), ("x-from-caller", "1")];
    let request = get(upstream.url("/a"));

    let (status, _, _) = send(gw.addr, Method::POST, "/api/proxy", &auth, request.into()).await;

    assert_eq!(status, StatusCode::OK);
    let received = upstream.last();
    assert_eq!(header(&received, "authorization"), None);
    assert_eq!(header(&received, "x-from-caller"), None);
    let all = format!("{:?}", received.headers);
    assert!(!all.contains(SECRET), "{all}");
}

#[tokio::test]
async fn drops_hop_by_hop_headers() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({
        "method": "POST",
        "url": upstream.url("/hop"),
        "headers": {
            "Connection": "keep-alive, X-Named-By-Connection",
            "X-Named-By-Connection": "drop me",
            "Keep-Alive": "timeout=5",
            "Transfer-Encoding": "chunked",
            "TE": "trailers",
            "Upgrade": "websocket",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Proxy-Connection": "keep-alive",
            "Trailer": "X-Checksum",
            "X-Kept": "yes",
        },
        "body": "payload",
    });

    let received = forwarded(&gw, &upstream, &request.to_string()).await;

    for name in [
        "connection",
        "x-named-by-connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
    ] {
        assert_eq!(header(&received, name), None, "{name} was forwarded");
    }
    assert_eq!(header(&received, "x-kept"), Some("yes"));
    assert_eq!(&received.body[..], b"payload");
}

#[tokio::test]
async fn recomputes_a_lying_content_length() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({
        "method": "PUT",
        "url": upstream.url("/len"),
        "headers": { "Content-Length": "999" },
        "body": "12345",
    });

    let received = forwarded(&gw, &upstream, &request.to_string()).await;

    assert_eq!(&received.body[..], b"12345");
    assert_eq!(header(&received, "content-length"), Some("5"));
}

#[tokio::test]
async fn host_defaults_to_the_gateway_and_the_caller_may_set_it() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    let received = forwarded(&gw, &upstream, &get(upstream.url("/host"))).await;
    assert_eq!(
        header(&received, "host"),
        Some(upstream.addr.to_string().as_str())
    );

    let request = json!({
        "method": "GET",
        "url": upstream.url("/host"),
        "headers": { "Host": "api.example.com" },
    });
    let received = forwarded(&gw, &upstream, &request.to_string()).await;
    assert_eq!(header(&received, "host"), Some("api.example.com"));
    assert_eq!(received.headers.get_all("host").iter().count(), 1);
}

/// RFC 9112 section 3.2: two Host lines make a request servers must
/// refuse, and gateways would disagree on which one counts.
#[tokio::test]
async fn host_given_twice_in_any_case_is_400_and_not_sent() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    let request = format!(
        r#"{{"method":"GET","url":"{}","headers":{{"Host":"a.example","host":"b.example"}}}}"#,
        upstream.url("/two-hosts")
    );
    let (status, _, body) = post(&gw, &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let value = common::parse_json(&body);
    assert_eq!(value["Message"], "Invalid proxy request");
    assert!(
        value["Meta"]["detail"].as_str().unwrap().contains("host"),
        "{value}"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn forwards_json_body_byte_for_byte() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let body = r#"{"b":1.50,"a":[1, 2],  "z" : {"e":1e3,"u":"\u00e9\n"} }"#;
    let request = format!(
        r#"{{"method":"POST","url":"{}","body":{body}}}"#,
        upstream.url("/json")
    );

    let received = forwarded(&gw, &upstream, &request).await;

    assert_eq!(std::str::from_utf8(&received.body).unwrap(), body);
    assert_eq!(header(&received, "content-type"), Some("application/json"));
    let length = body.len().to_string();
    assert_eq!(header(&received, "content-length"), Some(length.as_str()));
}

#[tokio::test]
async fn forwards_every_kind_of_json_value_as_its_text() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    for body in ["[1, 2.0,3]", "42", "-0.10", "true", "false", "{}", "[]"] {
        let request = format!(
            r#"{{"method":"POST","url":"{}","body": {body} }}"#,
            upstream.url("/v")
        );
        let received = forwarded(&gw, &upstream, &request).await;
        assert_eq!(std::str::from_utf8(&received.body).unwrap(), body);
        assert_eq!(header(&received, "content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn keeps_the_callers_content_type_for_a_json_body() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({
        "method": "POST",
        "url": upstream.url("/ct"),
        "headers": { "content-type": "application/vnd.api+json" },
        "body": { "k": "v" },
    });

    let received = forwarded(&gw, &upstream, &request.to_string()).await;

    let types: Vec<_> = received.headers.get_all("content-type").iter().collect();
    assert_eq!(types, ["application/vnd.api+json"]);
    assert_eq!(&received.body[..], br#"{"k":"v"}"#);
}

#[tokio::test]
async fn sends_a_string_body_as_its_decoded_text() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({
        "method": "POST",
        "url": upstream.url("/text"),
        "body": "line1\nline2 \"q\" \u{e9}",
    });

    let received = forwarded(&gw, &upstream, &request.to_string()).await;

    assert_eq!(&received.body[..], "line1\nline2 \"q\" \u{e9}".as_bytes());
    assert_eq!(header(&received, "content-type"), None);
}

/// No body is sent as `Content-Length: 0` for the methods that give a
/// body meaning (RFC 9110 section 8.6, as Go's client does), and with no
/// framing header at all for the others.
#[tokio::test]
async fn absent_or_null_body_sends_an_empty_body() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    for method in ["POST", "put", "PATCH", "GET", "DELETE"] {
        for body in [None, Some(Value::Null)] {
            let mut request = json!({ "method": method, "url": upstream.url("/none") });
            if let Some(body) = body {
                request["body"] = body;
            }
            let received = forwarded(&gw, &upstream, &request.to_string()).await;
            assert!(received.body.is_empty());
            assert_eq!(header(&received, "content-type"), None);
            let length = header(&received, "content-length");
            let expected = ["POST", "put", "PATCH"].contains(&method).then_some("0");
            assert_eq!(length, expected, "{method}");
            assert_eq!(header(&received, "transfer-encoding"), None);
        }
    }
}

#[tokio::test]
async fn gateway_path_prefix_is_a_boundary() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let prefix = upstream.url("/apis");
    let gw = Gwproxy::start(Gwproxy::config(&[&prefix], json!({})));
    let authority = upstream.addr.to_string();

    let outside = [
        format!("http://user:pw@{authority}/apis/x"),
        format!("http://user@{authority}/apis/x"),
        format!("http://@{authority}/apis/x"),
        format!("http://{authority}/admin"),
        format!("http://{authority}/"),
        format!("http://{authority}/apisx"),
        format!("http://{authority}/api"),
        format!("http://{authority}/apis/../admin"),
        format!("http://{authority}/apis/x/../../admin"),
        format!("http://{authority}/apis/%2e%2e/admin"),
        format!("http://{authority}/apis/%2E%2E/admin"),
        format!("http://{authority}/apis/.%2e/admin"),
        format!("http://{authority}/apis%2f..%2fadmin"),
        format!("http://{authority}/apis/..%2Fadmin"),
        format!("http://{authority}/apis/..%5cadmin"),
        // Tomcat and other servlet containers read `..;x` as `..`.
        format!("http://{authority}/apis/..;/admin"),
        format!("http://{authority}/apis/x/..;jsessionid=1/admin"),
        format!("https://{authority}/apis/x"),
    ];
    for url in outside {
        assert_forbidden(&post(&gw, &get(url)).await);
    }
    assert_eq!(upstream.count(), 0);

    for (url, seen) in [
        (format!("http://{authority}/apis/x"), "/apis/x"),
        (format!("http://{authority}/apis"), "/apis"),
        (format!("http://{authority}/apis/a/../b"), "/apis/b"),
        (format!("http://{authority}/apis/a;v=1/b"), "/apis/a;v=1/b"),
        (
            format!("http://{authority}/apis/x?next=/admin"),
            "/apis/x?next=/admin",
        ),
    ] {
        let received = forwarded(&gw, &upstream, &get(url.clone())).await;
        assert_eq!(received.uri, seen, "{url}");
    }
}

#[tokio::test]
async fn host_and_scheme_match_in_any_case_with_the_explicit_port() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let port = upstream.addr.port();
    let gateway = format!("http://LocalHost:{port}/apis");
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway], json!({})));

    for url in [
        format!("http://localhost:{port}/apis/x"),
        format!("HTTP://LOCALHOST:{port}/apis/x"),
        format!("http://localhost.:{port}/apis/x"),
    ] {
        let received = forwarded(&gw, &upstream, &get(url.clone())).await;
        assert_eq!(received.uri, "/apis/x", "{url}");
    }

    let wrong_port = common::closed_port().port();
    for url in [
        format!("http://localhost:{wrong_port}/apis/x"),
        "http://localhost/apis/x".to_owned(),
        format!("http://127.0.0.2:{port}/apis/x"),
        format!("http://localhost.example:{port}/apis/x"),
    ] {
        assert_forbidden(&post(&gw, &get(url)).await);
    }
}

#[tokio::test]
async fn ip_literal_gateway_matches_by_address() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let port = upstream.addr.port();
    let gw = gwproxy_for(&upstream).await;

    let received = forwarded(&gw, &upstream, &get(format!("http://127.0.0.1:{port}/ip"))).await;
    assert_eq!(received.uri, "/ip");

    // Alternative spellings of 127.0.0.1 are the same address.
    for url in [
        format!("http://2130706433:{port}/ip"),
        format!("http://127.1:{port}/ip"),
    ] {
        let (status, _, _) = post(&gw, &get(url.clone())).await;
        assert_eq!(status, StatusCode::OK, "{url}");
    }
    assert_forbidden(&post(&gw, &get(format!("http://[::1]:{port}/ip"))).await);
}

#[tokio::test]
async fn never_sends_the_fragment() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    let received = forwarded(&gw, &upstream, &get(upstream.url("/f?q=1#frag"))).await;

    assert_eq!(received.uri, "/f?q=1");
}

#[tokio::test]
async fn default_ports_match_their_explicit_form() {
    // Port 80 on loopback: nothing may listen there, so the proof of a
    // match is any answer but 403 (a refused connection is a 500).
    let timeouts = json!({ "timeouts": { "connect_ms": 1000, "response_ms": 2000 } });
    for (gateway, url) in [
        ("http://127.0.0.1", "http://127.0.0.1:80/x"),
        ("http://127.0.0.1:80", "http://127.0.0.1/x"),
    ] {
        let gw = Gwproxy::start(Gwproxy::config(&[gateway], timeouts.clone()));
        let (status, _, body) = post(&gw, &get(url.to_owned())).await;
        assert_ne!(status, StatusCode::FORBIDDEN, "{gateway} {url}");
        assert!(
            status == StatusCode::OK || status == StatusCode::INTERNAL_SERVER_ERROR,
            "{status} {}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[tokio::test]
async fn string_body_that_cannot_be_decoded_is_400() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let request = format!(
        r#"{{"method":"POST","url":"{}","body":"a\ud800b"}}"#,
        upstream.url("/s")
    );

    let (status, _, body) = post(&gw, &request).await;

    let received = upstream.received.lock().unwrap().clone();
    assert_eq!(received.len(), 0, "sent upstream: {received:?}");
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn never_sends_plain_http_to_an_https_gateway() {
    // A plain-HTTP server behind an https gateway URL: a TLS client cannot
    // talk to it, so it must never see a readable request.
    let upstream = Upstream::fixed(200, "text/plain", b"plain").await;
    let gateway = format!("https://{}", upstream.addr);
    let timeouts = json!({ "timeouts": { "connect_ms": 2000, "response_ms": 2000 } });
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway], timeouts));
    let request = json!({
        "method": "GET",
        "url": format!("{gateway}/x"),
        "headers": { "Authorization": "Bearer gateway-token" },
    });

    let (status, _, body) = post(&gw, &request.to_string()).await;

    assert_eq!(
        upstream.count(),
        0,
        "the request crossed the wire in clear text"
    );
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let value = common::parse_json(&body);
    assert_eq!(value["Message"], "Failed to process proxy request");
}
