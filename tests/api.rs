//! Black-box tests of `/api/proxy`'s front door: routes, authentication,
//! org restrictions and the rules for the caller's JSON (SPEC.md, "Routes",
//! "Authentication", "Request", "Errors").

mod common;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use common::{send, Gwproxy, Upstream, SECRET};

/// SHA-256 of `xyz-ci-secret`, from `printf %s 'xyz-ci-secret' | sha256sum`.
const CI_SECRET: &str = "xyz-ci-secret";
const CI_SECRET_SHA256: &str = "5f7c822079f95bde6168600489fb76eefbba6e662db9a099f22a5be1911e8f30";

type Answer = (StatusCode, HeaderMap, Bytes);

/// `POST /api/proxy` with the test secret and `body` sent as given.
async fn post(gw: &Gwproxy, body: &str) -> Answer {
    let auth = [("authorization", SECRET)];
    send(gw.addr, Method::POST, "/api/proxy", &auth, body.into()).await
}

/// Checks the Dashboard's error shape exactly and returns its `Meta`.
fn assert_error(answer: &Answer, status: u16, message: &str) -> Value {
    let (got, headers, body) = answer;
    let text = String::from_utf8_lossy(body);
    assert_eq!(got.as_u16(), status, "{text}");
    assert_eq!(headers["content-type"], "application/json", "{text}");

    let value = common::parse_json(body);
    let object = value.as_object().expect("error is a JSON object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["Message", "Meta", "Status"], "{text}");
    assert_eq!(value["Status"], "Error");
    assert_eq!(value["Message"], message);

    let meta = value["Meta"].clone();
    assert!(
        meta.is_null() || meta["detail"].is_string(),
        "Meta must be null or carry a detail: {text}"
    );
    meta
}

/// The detail of a 400, which must be there to tell the caller what was wrong.
fn assert_bad_request(answer: &Answer) -> String {
    let meta = assert_error(answer, 400, "Invalid proxy request");
    let detail = meta["detail"].as_str().expect("a 400 explains itself");
    assert!(!detail.is_empty());
    detail.to_owned()
}

async fn gwproxy_for(upstream: &Upstream) -> Gwproxy {
    Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({})))
}

#[tokio::test]
async fn hello_answers_ok_without_authentication() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    let (status, headers, body) = send(gw.addr, Method::GET, "/hello", &[], vec![]).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(common::parse_json(&body)["status"], "ok");
}

#[tokio::test]
async fn unknown_path_is_a_404_envelope() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let auth = [("authorization", SECRET)];

    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::POST, "/api/proxy/extra"),
        (Method::POST, "/api/proxyx"),
        (Method::GET, "/"),
    ] {
        let answer = send(gw.addr, method, path, &auth, vec![]).await;
        assert_error(&answer, 404, "Not found");
    }
}

#[tokio::test]
async fn other_methods_on_api_proxy_are_405_with_allow_post() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let auth = [("authorization", SECRET)];

    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let answer = send(gw.addr, method.clone(), "/api/proxy", &auth, vec![]).await;
        assert_error(&answer, 405, "Method not allowed");
        assert_eq!(answer.1["allow"], "POST", "{method}");
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn missing_authorization_is_401_not_authorised() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({ "method": "GET", "url": upstream.url("/") }).to_string();

    let answer = send(gw.addr, Method::POST, "/api/proxy", &[], request.into()).await;

    assert_error(&answer, 401, "Not authorised");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn wrong_or_empty_secret_is_401_and_never_echoed() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({ "method": "GET", "url": upstream.url("/") }).to_string();
    let tried = "guess-the-secret-4711";

    for value in [
        tried.to_owned(),
        format!("Bearer {tried}"),
        String::new(),
        "Bearer ".to_owned(),
        format!("{SECRET}x"),
        format!("Basic {SECRET}"),
    ] {
        let auth = [("authorization", value.as_str())];
        let body = request.clone().into_bytes();
        let answer = send(gw.addr, Method::POST, "/api/proxy", &auth, body).await;
        assert_error(&answer, 401, "Not authorised");
        let text = String::from_utf8_lossy(&answer.2);
        assert!(!text.contains(tried) && !text.contains(SECRET), "{text}");
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn unauthenticated_garbage_body_is_401_not_400() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    let answer = send(gw.addr, Method::POST, "/api/proxy", &[], "{nope".into()).await;

    assert_error(&answer, 401, "Not authorised");
}

#[tokio::test]
async fn bare_and_bearer_secrets_are_both_accepted() {
    let upstream = Upstream::fixed(200, "text/plain", b"hi").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({ "method": "GET", "url": upstream.url("/") }).to_string();

    let bearer = format!("Bearer {SECRET}");
    let lower = format!("bearer {SECRET}");
    for value in [SECRET, bearer.as_str(), lower.as_str()] {
        let auth = [("authorization", value)];
        let body = request.clone().into_bytes();
        let (status, _, body) = send(gw.addr, Method::POST, "/api/proxy", &auth, body).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(common::parse_json(&body)["body"], "hi");
    }
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn user_with_secret_sha256_is_accepted() {
    let upstream = Upstream::fixed(200, "text/plain", b"hi").await;
    let users = json!([
        { "name": "tester", "org_id": "acme", "secret": SECRET },
        { "name": "ci", "org_id": "acme", "secret_sha256": CI_SECRET_SHA256 },
    ]);
    let config = Gwproxy::config(&[&upstream.url("")], json!({ "users": users }));
    let gw = Gwproxy::start(config);
    let request = json!({ "method": "GET", "url": upstream.url("/") }).to_string();

    let auth = [("authorization", CI_SECRET)];
    let body = request.clone().into_bytes();
    let (status, _, _) = send(gw.addr, Method::POST, "/api/proxy", &auth, body).await;
    assert_eq!(status, StatusCode::OK);

    // The digest itself is not a secret that opens the door.
    let auth = [("authorization", CI_SECRET_SHA256)];
    let answer = send(gw.addr, Method::POST, "/api/proxy", &auth, request.into()).await;
    assert_error(&answer, 401, "Not authorised");
}

#[tokio::test]
async fn gateway_of_another_org_is_403_like_an_unknown_url() {
    let theirs = Upstream::fixed(200, "text/plain", b"theirs").await;
    let shared = Upstream::fixed(200, "text/plain", b"shared").await;
    let ours = Upstream::fixed(200, "text/plain", b"ours").await;
    let gateways = json!([
        { "url": theirs.url(""), "org_id": "other" },
        { "url": shared.url("") },
        { "url": ours.url(""), "org_id": "acme" },
    ]);
    let gw = Gwproxy::start(Gwproxy::config(&[], json!({ "gateways": gateways })));
    let call = |url: String| json!({ "method": "GET", "url": url }).to_string();

    let forbidden = post(&gw, &call(theirs.url("/x"))).await;
    assert_error(
        &forbidden,
        403,
        "Provided URL is not a recognised gateway URL",
    );
    assert_eq!(theirs.count(), 0);

    let unknown = post(&gw, &call(format!("http://{}/x", common::closed_port()))).await;
    assert_error(
        &unknown,
        403,
        "Provided URL is not a recognised gateway URL",
    );
    assert_eq!(
        forbidden.2, unknown.2,
        "a 403 must not reveal that the gateway exists"
    );

    for (upstream, text) in [(&shared, "shared"), (&ours, "ours")] {
        let (status, _, body) = post(&gw, &call(upstream.url("/x"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(common::parse_json(&body)["body"], text);
    }
}

#[tokio::test]
async fn malformed_requests_are_400_with_a_detail() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let url = upstream.url("/x");
    let ok = |extra: Value| {
        let mut request = json!({ "method": "GET", "url": url });
        request
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        request.to_string()
    };

    let cases = [
        ("non-JSON body", "method=GET&url=x".to_owned()),
        ("empty body", String::new()),
        ("JSON array", format!("[{}]", ok(json!({})))),
        ("JSON string", json!("GET").to_string()),
        ("trailing garbage", format!("{} x", ok(json!({})))),
        ("missing method", json!({ "url": url }).to_string()),
        ("missing url", json!({ "method": "GET" }).to_string()),
        ("method not a string", ok(json!({ "method": 7 }))),
        ("method null", ok(json!({ "method": null }))),
        ("bad method token", ok(json!({ "method": "GE T" }))),
        ("empty method", ok(json!({ "method": "" }))),
        ("url not a string", ok(json!({ "url": [url] }))),
        ("url relative", ok(json!({ "url": "/x" }))),
        (
            "url without scheme",
            ok(json!({ "url": upstream.addr.to_string() })),
        ),
        (
            "url ftp",
            ok(json!({ "url": format!("ftp://{}/x", upstream.addr) })),
        ),
        ("url without host", ok(json!({ "url": "http:///x" }))),
        (
            "url with a space",
            ok(json!({ "url": upstream.url("/a b") })),
        ),
        (
            "headers not an object",
            ok(json!({ "headers": ["X-Test: tyk"] })),
        ),
        (
            "header value a number",
            ok(json!({ "headers": { "X-Test": 1 } })),
        ),
        (
            "header value null",
            ok(json!({ "headers": { "X-Test": null } })),
        ),
        (
            "header name with space",
            ok(json!({ "headers": { "X Test": "tyk" } })),
        ),
        ("header name empty", ok(json!({ "headers": { "": "tyk" } }))),
        (
            "header name with colon",
            ok(json!({ "headers": { "X-A:b": "c" } })),
        ),
        (
            "url with a newline",
            ok(json!({ "url": upstream.url("/a\nb") })),
        ),
        (
            "url twice",
            format!(r#"{{"method":"GET","url":"{url}","url":"{url}"}}"#),
        ),
        (
            "method twice",
            format!(r#"{{"method":"GET","method":"GET","url":"{url}"}}"#),
        ),
    ];
    for (what, body) in cases {
        let answer = post(&gw, &body).await;
        assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_bad_request(&answer);
    }
    assert_eq!(upstream.count(), 0);
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn header_injection_is_400_and_the_upstream_receives_nothing() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n";

    for value in [
        "tyk\r\nX-Injected: yes".to_owned(),
        "tyk\nX-Injected: yes".to_owned(),
        "tyk\rX-Injected: yes".to_owned(),
        format!("tyk\r\n\r\n{smuggled}"),
        "tyk\u{0}".to_owned(),
    ] {
        let request = json!({
            "method": "GET",
            "url": upstream.url("/x"),
            "headers": { "X-Test": value },
        });
        let detail = assert_bad_request(&post(&gw, &request.to_string()).await);
        assert!(
            detail.contains("X-Test") || detail.contains("x-test"),
            "{detail}"
        );
    }

    let name = json!({
        "method": "GET",
        "url": upstream.url("/x"),
        "headers": { "X-Test: a\r\nX-Injected": "yes" },
    });
    assert_bad_request(&post(&gw, &name.to_string()).await);

    assert_eq!(upstream.count(), 0);
    assert_eq!(
        upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn connect_method_is_refused() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    let request = json!({ "method": "CONNECT", "url": upstream.url("/") });
    assert_bad_request(&post(&gw, &request.to_string()).await);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn unknown_fields_are_ignored_whatever_the_content_type() {
    let upstream = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = gwproxy_for(&upstream).await;
    let request = json!({
        "method": "GET",
        "url": upstream.url("/x"),
        "timeout": 5,
        "extra": { "deep": [1, { "url": "http://evil.example/" }] },
        "URL": "http://evil.example/",
    })
    .to_string();
    let headers = [("authorization", SECRET), ("content-type", "text/plain")];

    let answer = send(
        gw.addr,
        Method::POST,
        "/api/proxy",
        &headers,
        request.into(),
    )
    .await;

    assert_eq!(answer.0, StatusCode::OK);
    assert_eq!(common::parse_json(&answer.2)["body"], "fine");
    assert_eq!(upstream.last().uri, "/x");
}

#[tokio::test]
async fn standard_methods_are_upper_cased_and_extension_methods_sent_as_given() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let gw = gwproxy_for(&upstream).await;

    for (given, sent) in [
        ("get", "GET"),
        ("Post", "POST"),
        ("dElEtE", "DELETE"),
        ("options", "OPTIONS"),
        ("PURGE", "PURGE"),
        ("purge", "purge"),
        ("X-CUSTOM_1", "X-CUSTOM_1"),
    ] {
        let request = json!({ "method": given, "url": upstream.url("/m") });
        let (status, _, _) = post(&gw, &request.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{given}");
        assert_eq!(upstream.last().method.as_str(), sent, "{given}");
    }
}

#[tokio::test]
async fn more_json_headers_than_the_limit_are_400() {
    let upstream = Upstream::fixed(200, "text/plain", b"").await;
    let limits = json!({ "limits": { "max_header_count": 5 } });
    let gw = Gwproxy::start(Gwproxy::config(&[&upstream.url("")], limits));
    let with_headers = |n: usize| {
        let headers: serde_json::Map<String, Value> =
            (0..n).map(|i| (format!("X-H{i}"), json!("v"))).collect();
        json!({ "method": "GET", "url": upstream.url("/"), "headers": headers }).to_string()
    };

    assert_eq!(post(&gw, &with_headers(5)).await.0, StatusCode::OK);
    assert_bad_request(&post(&gw, &with_headers(6)).await);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn a_query_string_on_api_proxy_does_not_change_the_route() {
    let upstream = Upstream::fixed(200, "text/plain", b"q").await;
    let gw = gwproxy_for(&upstream).await;
    let auth = [("authorization", SECRET)];
    let request = json!({ "method": "GET", "url": upstream.url("/") }).to_string();

    let path = "/api/proxy?trace=1";
    let (status, _, body) = send(gw.addr, Method::POST, path, &auth, request.into()).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(common::parse_json(&body)["body"], "q");
}
