//! Micro-benchmarks of the per-request work gwproxy adds to plain proxying:
//! parsing the caller's JSON, checking the URL, building the gateway
//! request, and writing the envelope. For regression checks:
//! `cargo bench --bench micro`.

use bytes::Bytes;
use divan::black_box;
use gwproxy::envelope;
use gwproxy::gateway_match::{parse_full, parse_target, GatewayTarget};
use gwproxy::gateway_request::GatewayRequest;
use gwproxy::proxy_request;
use http::{HeaderMap, HeaderValue, StatusCode};

fn main() {
    divan::main();
}

/// The OpenAPI seed's example request.
const SEED_REQUEST: &str = r#"{"method":"GET","url":"http://127.0.0.1:8181/test-oas/get","headers":{"test":"tyk","Content-Type":"application/json"},"body":{"name":"New Resource","description":"Description of the resource."}}"#;

/// The seed's example gateway answer, about 400 bytes of JSON.
const SEED_BODY: &str = r#"{"args":{},"headers":{"Accept-Encoding":"gzip","Content-Length":"83","Content-Type":"application/json","Host":"httpbin.org","Test":"tyk","User-Agent":"Go-http-client/1.1","X-Amzn-Trace-Id":"Root=1-67642968-11206636527acf9a25d230c3"},"origin":"::1, 81.18.84.15","url":"http://httpbin.org/get"}"#;

#[divan::bench]
fn parse_request() -> usize {
    let request = proxy_request::parse(black_box(SEED_REQUEST.as_bytes()), 100).unwrap();
    request.headers.len()
}

/// The seed's example URL, against a gateway parsed once as at start-up.
const SEED_URL: &str = "http://127.0.0.1:8181/test-oas/get";

/// The matched gateway's Host header.
const HOST: HeaderValue = HeaderValue::from_static("127.0.0.1:8181");

#[divan::bench]
fn match_url_fast_path(bencher: divan::Bencher) {
    let gateway = GatewayTarget::parse("http://127.0.0.1:8181").unwrap();
    bencher.bench(|| gateway.matches(&parse_target(black_box(SEED_URL)).unwrap()));
}

#[divan::bench]
fn match_url_full_parser(bencher: divan::Bencher) {
    let gateway = GatewayTarget::parse("http://127.0.0.1:8181").unwrap();
    bencher.bench(|| gateway.matches(&parse_full(black_box(SEED_URL)).unwrap()));
}

#[divan::bench]
fn build_gateway_request() -> usize {
    let source = Bytes::from_static(SEED_REQUEST.as_bytes());
    let request = proxy_request::parse(&source, 100).unwrap();
    let target = parse_target(&request.url).unwrap();
    let built = GatewayRequest::build(&request, &source, &target, &HOST).unwrap();
    built.headers.len()
}

#[divan::bench]
fn build_envelope(bencher: divan::Bencher) {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("content-length", "364"),
        ("date", "Thu, 19 Dec 2024 14:10:48 GMT"),
        ("server", "gunicorn/19.9.0"),
        ("access-control-allow-origin", "*"),
        ("x-ratelimit-limit", "0"),
        ("x-ratelimit-remaining", "0"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    // The envelope consumes the gateway's headers; the copy is made outside
    // the timed part.
    bencher
        .with_inputs(|| headers.clone())
        .bench_values(|headers| {
            envelope::build(StatusCode::OK, headers, black_box(SEED_BODY.as_bytes())).len()
        });
}
