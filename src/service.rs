//! Routing and the `/api/proxy` flow: authorise, read, parse, match, forward, wrap.

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::pin::pin;
use std::time::Instant;

use tracing::debug;

use crate::body::{self, BodyError};
use crate::envelope;
use crate::error::{ErrorKind, ProxyError};
use crate::forward::forward;
use crate::gateway_match::parse_target;
use crate::gateway_request::GatewayRequest;
use crate::metrics::{Registry, Route};
use crate::observe::{self, Trace, X_REQUEST_ID};
use crate::proxy_request;
use crate::state::State;

/// `GET /hello`: for load balancers' health checks.
const HELLO: &str = concat!(
    r#"{"status":"ok","message":"gwproxy is running","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""}"#
);

/// Answers one request. Every failure becomes the Dashboard's error
/// envelope here, through [`ProxyError::into_response`].
pub async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let route = route_of(request.uri().path());
    let request_id = state
        .request_ids
        .for_request(request.headers().get(X_REQUEST_ID));

    let mut trace = Trace::default();
    // Only the proxy route awaits anything; the others are answered here,
    // so that their code adds nothing to the request's future.
    let result = match answer_at_once(state, route, &request) {
        Some(result) => result,
        None => proxy(state, request, &request_id, &mut trace).await,
    };
    let mut response = result.unwrap_or_else(|error| {
        debug!(
            status = error.status().as_u16(),
            detail = error.detail(),
            "request failed"
        );
        error.into_response()
    });

    response
        .headers_mut()
        .insert(X_REQUEST_ID, request_id.clone());
    observe::finish(state, route, &response, &trace, started, &request_id);
    response
}

fn route_of(path: &str) -> Route {
    match path {
        "/api/proxy" => Route::Proxy,
        "/hello" => Route::Hello,
        "/metrics" => Route::Metrics,
        _ => Route::Other,
    }
}

/// The answer to every request but a `POST /api/proxy`, which is `None`.
fn answer_at_once(
    state: &State,
    route: Route,
    request: &Request<Incoming>,
) -> Option<Result<Response<Full<Bytes>>, ProxyError>> {
    if header_bytes(request.headers()) > state.shared.limits.max_header_bytes {
        return Some(Err(ProxyError::bare(ErrorKind::HeadersTooLarge)));
    }
    let method = request.method();
    let answer = match route {
        Route::Proxy if method == Method::POST => return None,
        Route::Proxy => Err(ProxyError::bare(ErrorKind::MethodNotAllowed("POST"))),
        Route::Hello if method == Method::GET || method == Method::HEAD => {
            Ok(json_response(Bytes::from_static(HELLO.as_bytes())))
        }
        Route::Hello => Err(ProxyError::bare(ErrorKind::MethodNotAllowed("GET, HEAD"))),
        Route::Metrics if state.shared.metrics_on_main => {
            metrics_response(&state.shared.registry, method)
        }
        Route::Metrics | Route::Other => Err(ProxyError::bare(ErrorKind::NotFound)),
    };
    Some(answer)
}

/// The header section's size as HTTP/1.1 writes it: `name: value` and
/// CRLF per field (RFC 9112 section 5).
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// `GET /metrics`, on the main listener or on `metrics.listen`.
pub fn metrics_response(
    registry: &Registry,
    method: &Method,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ProxyError::bare(ErrorKind::MethodNotAllowed("GET, HEAD")));
    }
    let mut response = Response::new(Full::new(Bytes::from(registry.render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

async fn proxy<'s>(
    state: &'s State,
    request: Request<Incoming>,
    request_id: &HeaderValue,
    trace: &mut Trace<'s>,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    let shared = &state.shared;
    let _counted = state.metrics.in_flight();

    // Shed before any work, so that an overload costs almost nothing.
    let Some(_admitted) = shared.in_flight.try_admit() else {
        state.metrics.shed();
        return Err(ProxyError::bare(ErrorKind::Busy));
    };

    // Authenticate before reading the body: strangers cannot make gwproxy
    // buffer anything.
    let user = shared
        .users
        .authenticate(request.headers().get(AUTHORIZATION))
        .ok_or_else(|| ProxyError::bare(ErrorKind::Unauthorized))?;
    trace.user = Some(&user.name);

    let body = read_body(state, request).await?;
    trace.request_bytes = body.len();
    let parsed = proxy_request::parse(&body, shared.limits.max_header_count)?;
    trace.method = Some(parsed.method.clone());
    let target = parse_target(&parsed.url).map_err(ProxyError::bad_request)?;
    let (index, gateway, pool) = state.match_gateway(&target, user)?;
    (trace.gateway, trace.gateway_index) = (Some(gateway), Some(index));

    // Built again rather than copied up front for the rare resend
    // (forward.rs): from the same input, the second build cannot fail.
    let outgoing = || {
        GatewayRequest::build(&parsed, &body, &target, &gateway.host).map(|mut request| {
            request.set_request_id(request_id);
            request
        })
    };
    let first = outgoing()?;
    let sent = Instant::now();
    let answer = forward(
        pool,
        first,
        &outgoing,
        shared.timeouts.response,
        shared.limits.max_response_body_bytes,
    )
    .await;
    trace.gateway_time = sent.elapsed();
    let answer = answer?;
    trace.gateway_status = Some(answer.status);

    let wrapped = envelope::build(answer.status, answer.headers, &answer.body);
    Ok(json_response(Bytes::from(wrapped)))
}

/// Reads the caller's body within its size and time limits. A declared
/// length over the limit is refused before reading a byte.
///
/// A small body nearly always comes in the same read as its head and is
/// whole when first polled; only a body still on its way gets the timer
/// (building one reads the clock and finds the timer wheel: ~180
/// instructions a request, a third of a percent, by callgrind).
async fn read_body(state: &State, request: Request<Incoming>) -> Result<Bytes, ProxyError> {
    let limit = state.shared.limits.max_request_body_bytes;
    let timeout = state.shared.timeouts.request_body;
    let mut read = pin!(body::read_to_end(request.into_body(), limit));
    let outcome = match body::poll_once(read.as_mut()).await {
        Some(outcome) => outcome,
        None => tokio::time::timeout(timeout, read).await.map_err(|_| {
            ProxyError::bad_request(format!(
                "the request body was not received within {} ms",
                timeout.as_millis()
            ))
        })?,
    };
    match outcome {
        Ok(bytes) => Ok(bytes),
        Err(BodyError::TooLarge) => Err(too_large(limit)),
        Err(BodyError::Broken) => Err(ProxyError::bad_request(
            "the request body could not be read",
        )),
    }
}

fn too_large(limit: usize) -> ProxyError {
    ProxyError::new(
        ErrorKind::PayloadTooLarge,
        format!("the request body is over the limit of {limit} bytes"),
    )
}

fn json_response(body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
