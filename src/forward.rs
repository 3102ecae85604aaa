//! One request's trip to a gateway: send on a pooled connection, retry once, read the answer.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::{Request, Response};
use tracing::debug;

use crate::body::{self, BodyError};
use crate::error::ProxyError;
use crate::gateway_request::GatewayRequest;
use crate::pool::{GatewayPool, PooledConn};
use crate::tls_client::describe_failure;

/// The gateway's answer, read to the end.
#[derive(Debug)]
pub struct GatewayResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Builds the gateway request again, for a resend.
pub type Rebuild<'a> = &'a (dyn Fn() -> Result<GatewayRequest, ProxyError> + Sync);

/// Sends `request` and reads the whole response within `timeout`.
/// `rebuild` makes the same request again should it need resending, so
/// that no copy is made for the common case in which it does not.
///
/// Redirects are never followed: a `3xx` is an answer like any other.
pub async fn forward(
    pool: &GatewayPool,
    request: GatewayRequest,
    rebuild: Rebuild<'_>,
    timeout: Duration,
    max_body: usize,
) -> Result<GatewayResponse, ProxyError> {
    let exchange = async {
        let (conn, response) = send(pool, request, rebuild).await?;
        read_response(pool, conn, response, max_body).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        ProxyError::upstream(format!(
            "timeout: the gateway did not send its whole response within {} ms",
            timeout.as_millis()
        ))
    })?
}

/// Sends on a pooled connection. If that fails before any response, the
/// request goes once more on a fresh connection when that is safe: always
/// when hyper never wrote it, and for idempotent methods (RFC 9110 section
/// 9.2.2) when the reused connection died under it, the keep-alive race in
/// which a gateway closes an idle connection as a request arrives.
async fn send(
    pool: &GatewayPool,
    request: GatewayRequest,
    rebuild: Rebuild<'_>,
) -> Result<(PooledConn, Response<Incoming>), ProxyError> {
    let mut conn = pool.checkout().await?;
    let may_resend = conn.reused && request.is_idempotent();
    let h2 = conn.sender.is_h2();

    let mark = conn.sender.received();
    let error = match conn.sender.try_send(request.into_http(h2)).await {
        Ok(response) => return Ok((conn, response)),
        Err(error) => error,
    };

    // SPEC.md: retried only "before any response byte arrived".
    let nothing_back = mark.is_some() && conn.sender.received() == mark;
    let partial = mark.is_some() && !nothing_back;
    let resend = (may_resend && nothing_back).then_some(rebuild);
    let retry = retry_request(error, resend, partial, h2)?;
    debug!("retrying gateway request on a fresh connection");
    pool.note_retry();
    conn = pool.connect().await?;
    // The retry was built for the first connection's protocol.
    if conn.sender.is_h2() != h2 {
        return Err(ProxyError::upstream(
            "the gateway negotiated another HTTP version on a new connection",
        ));
    }
    match conn.sender.try_send(retry).await {
        Ok(response) => Ok((conn, response)),
        Err(error) => Err(send_error(error.error())),
    }
}

/// Decides whether a failed first attempt may be sent again, and with what.
/// `resend` is given only for an idempotent request on a reused HTTP/1.1
/// connection that received nothing for it; `partial` says some of the
/// response did arrive.
fn retry_request(
    mut error: TrySendError<Request<Full<Bytes>>>,
    resend: Option<Rebuild<'_>>,
    partial: bool,
    h2: bool,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    if let Some(unsent) = error.take_message() {
        return Ok(unsent);
    }
    match resend {
        Some(rebuild) if died_before_response(error.error()) => Ok(rebuild()?.into_http(h2)),
        _ if partial && error.error().is_incomplete_message() => Err(ProxyError::upstream(
            "the gateway closed the connection partway through its response head",
        )),
        _ => Err(send_error(error.error())),
    }
}

/// The connection closed or reset with no response head: the gateway
/// never started answering this request.
fn died_before_response(error: &hyper::Error) -> bool {
    error.is_incomplete_message() || error.is_canceled() || io_error(error).is_some()
}

async fn read_response(
    pool: &GatewayPool,
    conn: PooledConn,
    response: Response<Incoming>,
    max_body: usize,
) -> Result<GatewayResponse, ProxyError> {
    let (parts, body) = response.into_parts();
    let body = match body::read_to_end(body, max_body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return Err(ProxyError::upstream(format!(
                "response too large: the gateway's body is over {max_body} bytes"
            )));
        }
        Err(BodyError::Broken) => {
            return Err(ProxyError::upstream(
                "the gateway broke the connection while sending the response body",
            ));
        }
    };

    pool.checkin(conn);
    Ok(GatewayResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Plain words for a failure while sending or reading the head.
fn send_error(error: &hyper::Error) -> ProxyError {
    if error.is_incomplete_message() {
        return ProxyError::upstream("the gateway closed the connection before responding");
    }
    if error.is_parse_too_large() {
        return ProxyError::upstream(
            "response too large: the gateway's response head has more header fields than \
             limits.max_response_header_count, or is too long",
        );
    }
    if error.is_parse() || error.is_parse_status() {
        return ProxyError::upstream("the gateway sent a response that is not valid HTTP/1.1");
    }
    if let Some(io) = io_error(error) {
        // Under TLS 1.3 a gateway checks gwproxy's client certificate after
        // the handshake, so its refusal arrives as an alert on first read.
        if io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return ProxyError::upstream(describe_failure(io));
        }
        return ProxyError::upstream(format!("the gateway connection failed: {io}"));
    }
    ProxyError::upstream(format!("the gateway connection failed: {error}"))
}

fn io_error(error: &hyper::Error) -> Option<&std::io::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = inner.source();
    }
    None
}
