//! Arbitrary bytes as a `POST /api/proxy` body: parsing, matching and
//! building the gateway request must never panic, whatever they refuse.

#![no_main]

use bytes::Bytes;
use gwproxy::gateway_match::{parse_target, GatewayTarget};
use gwproxy::gateway_request::GatewayRequest;
use gwproxy::proxy_request;
use libfuzzer_sys::fuzz_target;

/// The default `limits.max_header_count`.
const MAX_HEADERS: usize = 100;

fuzz_target!(|data: &[u8]| {
    let source = Bytes::copy_from_slice(data);
    let Ok(request) = proxy_request::parse(&source, MAX_HEADERS) else {
        return;
    };
    assert!(request.headers.len() <= MAX_HEADERS);
    let Ok(target) = parse_target(&request.url) else {
        return;
    };
    assert!(target.path_and_query.starts_with('/'), "{target:?}");

    // The authority of the gateway that would have matched; a URL that
    // matches none still exercises the build step with a plausible one.
    let host = GatewayTarget::parse(&request.url)
        .ok()
        .and_then(|gateway| http::HeaderValue::from_str(&gateway.authority()).ok())
        .unwrap_or_else(|| http::HeaderValue::from_static("127.0.0.1:8181"));
    if let Ok(built) = GatewayRequest::build(&request, &source, &target, &host) {
        // What gwproxy would hand to hyper must be a well-formed request.
        let _ = built.clone().into_http(false);
        let _ = built.into_http(true);
    }
});
