//! What each request leaves behind: its id, its metrics, and its access-log line.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body as _;
use tracing::info;

use crate::metrics::Route;
use crate::state::{Gateway, State};

/// Taken from the caller, sent to the gateway, echoed in the response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A caller's id longer than this is replaced: ids end up in every log line.
const MAX_REQUEST_ID: usize = 128;

/// Per-worker source of request ids: a random prefix and a counter, so
/// ids are unique without a shared counter or a system call.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        // RandomState is seeded from the OS once per process and per call.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(Instant::now().elapsed().as_nanos());
        RequestIds {
            prefix: hasher.finish() as u32,
            next: AtomicU64::new(0),
        }
    }

    /// The caller's `X-Request-Id` when it is short visible text, else a
    /// fresh one.
    pub fn for_request(&self, given: Option<&HeaderValue>) -> HeaderValue {
        if let Some(given) = given.filter(|v| usable_id(v)) {
            return given.clone();
        }
        let n = self.next.fetch_add(1, Relaxed);
        // 8 hex digits of prefix, 12 of counter: `format!` would cost more
        // than the rest of this function on every request.
        let mut id = [0u8; 20];
        write_hex(&mut id[..8], u64::from(self.prefix));
        write_hex(&mut id[8..], n);
        HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// Fills `out` with the low hex digits of `value`, zero-padded, as
/// `{:0N$x}` would for `N = out.len()` (higher digits are dropped: the
/// counter would need 2^48 requests to reach them).
fn write_hex(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

fn usable_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID && bytes.iter().all(u8::is_ascii_graphic)
}

/// What the proxy flow learned, for metrics and the access log.
#[derive(Debug, Default)]
pub struct Trace<'s> {
    pub user: Option<&'s str>,
    pub method: Option<Method>,
    pub gateway: Option<&'s Gateway>,
    pub gateway_index: Option<usize>,
    pub gateway_status: Option<StatusCode>,
    pub gateway_time: Duration,
    pub request_bytes: usize,
}

/// Records the finished request: metrics always, the access log when on
/// and sampled.
pub fn finish(
    state: &State,
    route: Route,
    response: &Response<Full<Bytes>>,
    trace: &Trace<'_>,
    started: Instant,
    request_id: &HeaderValue,
) {
    let elapsed = started.elapsed();
    let gateway = trace
        .gateway_index
        .and_then(|i| state.pool(i))
        .map(|pool| (pool.stats(), trace.gateway_time));
    state
        .metrics
        .record(route, response.status(), elapsed, gateway);

    if state.access_log_sampled(route) {
        access_log(response, trace, elapsed, request_id);
    }
}

fn access_log(
    response: &Response<Full<Bytes>>,
    trace: &Trace<'_>,
    elapsed: Duration,
    request_id: &HeaderValue,
) {
    let response_bytes = response.body().size_hint().exact().unwrap_or(0);
    info!(
        target: "gwproxy::access",
        request_id = request_id.to_str().unwrap_or("-"),
        user = trace.user.unwrap_or("-"),
        method = trace.method.as_ref().map_or("-", Method::as_str),
        gateway = trace.gateway.map_or("-", |g| g.url.as_str()),
        status = response.status().as_u16(),
        gateway_status = trace.gateway_status.map_or(0, |s| s.as_u16()),
        request_bytes = trace.request_bytes,
        response_bytes,
        duration_ms = elapsed.as_secs_f64() * 1e3,
        gateway_ms = trace.gateway_time.as_secs_f64() * 1e3,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_usable_caller_id_and_replaces_others() {
        let ids = RequestIds::new();
        let given = HeaderValue::from_static("abc-123");
        assert_eq!(ids.for_request(Some(&given)), "abc-123");

        let spaced = HeaderValue::from_static("has space");
        let long = HeaderValue::from_str(&"x".repeat(200)).unwrap();
        for bad in [Some(&spaced), Some(&long), None] {
            let id = ids.for_request(bad);
            assert_eq!(id.len(), 20);
            assert!(id.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn generated_ids_differ() {
        let ids = RequestIds::new();
        assert_ne!(ids.for_request(None), ids.for_request(None));
    }

    #[test]
    fn hex_digits_match_the_zero_padded_format() {
        let mut out = [0u8; 12];
        for n in [0, 1, 0xabc, u64::from(u32::MAX) << 8, (1 << 48) - 1] {
            write_hex(&mut out, n);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{n:012x}"));
        }
    }
}
