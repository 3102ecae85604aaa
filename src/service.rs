//! Routing and the `/api/proxy` flow: authorise, read, parse, match, forward, wrap.

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tracing::debug;

use crate::envelope;
use crate::error::{ErrorKind, ProxyError};
use crate::forward::forward;
use crate::gateway_match::parse_target;
use crate::gateway_request::GatewayRequest;
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
    match route(state, request).await {
        Ok(response) => response,
        Err(error) => {
            debug!(
                status = error.status().as_u16(),
                detail = error.detail(),
                "request failed"
            );
            error.into_response()
        }
    }
}

async fn route(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    match (request.uri().path(), request.method()) {
        ("/api/proxy", &Method::POST) => proxy(state, request).await,
        ("/api/proxy", _) => Err(ProxyError::bare(ErrorKind::MethodNotAllowed("POST"))),
        ("/hello", &Method::GET | &Method::HEAD) => {
            Ok(json_response(Bytes::from_static(HELLO.as_bytes())))
        }
        ("/hello", _) => Err(ProxyError::bare(ErrorKind::MethodNotAllowed("GET, HEAD"))),
        _ => Err(ProxyError::bare(ErrorKind::NotFound)),
    }
}

async fn proxy(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ProxyError> {
    let shared = &state.shared;

    // Shed before any work, so that an overload costs almost nothing.
    let _permit = shared
        .in_flight
        .try_acquire()
        .map_err(|_| ProxyError::bare(ErrorKind::Busy))?;

    // Authenticate before reading the body: strangers cannot make gwproxy
    // buffer anything.
    let user = shared
        .users
        .authenticate(request.headers().get(AUTHORIZATION))
        .ok_or_else(|| ProxyError::bare(ErrorKind::Unauthorized))?;

    let body = read_body(state, request).await?;
    let parsed = proxy_request::parse(&body, shared.limits.max_header_count)?;
    let target = parse_target(&parsed.url).map_err(ProxyError::bad_request)?;
    let (gateway, pool) = state.match_gateway(&target, user)?;

    let outgoing = GatewayRequest::build(parsed, &body, &target, &gateway.authority)?;
    let answer = forward(
        pool,
        outgoing,
        shared.timeouts.response,
        shared.limits.max_response_body_bytes,
    )
    .await?;

    let wrapped = envelope::build(answer.status, &answer.headers, &answer.body);
    Ok(json_response(Bytes::from(wrapped)))
}

/// Reads the caller's body within its size and time limits. A declared
/// `Content-Length` over the limit is refused before reading a byte.
async fn read_body(state: &State, request: Request<Incoming>) -> Result<Bytes, ProxyError> {
    let limit = state.shared.limits.max_request_body_bytes;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }

    let timeout = state.shared.timeouts.request_body;
    let collect = Limited::new(request.into_body(), limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Ok(Err(_)) => Err(ProxyError::bad_request(
            "the request body could not be read",
        )),
        Err(_) => Err(ProxyError::bad_request(format!(
            "the request body was not received within {} ms",
            timeout.as_millis()
        ))),
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
