//! The request path's one error type, and the one place it becomes a response.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Which side of the proxy a failure belongs to, and so which status it earns.
///
/// The Messages are the Tyk Dashboard's own strings (SPEC.md, "Errors"):
/// callers match on them, so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's JSON or one of its fields is unusable.
    BadRequest,
    /// No secret, or one that no user has.
    Unauthorized,
    /// The URL is not inside a gateway this user may reach.
    Forbidden,
    NotFound,
    /// The route exists but not for this method; carries the `Allow` value.
    MethodNotAllowed(&'static str),
    /// The caller's body is over `limits.max_request_body_bytes`.
    PayloadTooLarge,
    /// The caller's header section is over `limits.max_header_bytes`.
    HeadersTooLarge,
    /// The gateway could not be reached, timed out, broke the connection or
    /// sent more than the response limit.
    Upstream,
    /// Over `limits.max_concurrent_requests`.
    Busy,
}

/// A failed request: its kind and, where it helps the caller, plain words
/// about what went wrong. Details never carry secrets.
#[derive(Debug, Clone)]
pub struct ProxyError {
    kind: ErrorKind,
    detail: Option<Cow<'static, str>>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        ProxyError {
            kind,
            detail: Some(detail.into()),
        }
    }

    pub fn bare(kind: ErrorKind) -> Self {
        ProxyError { kind, detail: None }
    }

    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::BadRequest, detail)
    }

    pub fn upstream(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Upstream, detail)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::Upstream => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn message(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest => "Invalid proxy request",
            ErrorKind::Unauthorized => "Not authorised",
            ErrorKind::Forbidden => "Provided URL is not a recognised gateway URL",
            ErrorKind::NotFound => "Not found",
            ErrorKind::MethodNotAllowed(_) => "Method not allowed",
            ErrorKind::PayloadTooLarge => "Request too large",
            // Not a Dashboard error (its HTTP server refuses such heads
            // itself); worded like its 413.
            ErrorKind::HeadersTooLarge => "Request header fields too large",
            ErrorKind::Upstream => "Failed to process proxy request",
            ErrorKind::Busy => "Server busy",
        }
    }

    /// The Dashboard's error envelope: `{"Status":"Error","Message":…,"Meta":…}`.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.detail.as_ref().map_or(0, |d| d.len()));
        out.extend_from_slice(b"{\"Status\":\"Error\",\"Message\":\"");
        // Messages are fixed ASCII without quotes or backslashes: no escaping needed.
        out.extend_from_slice(self.message().as_bytes());
        out.extend_from_slice(b"\",\"Meta\":");
        match &self.detail {
            Some(detail) => {
                out.extend_from_slice(b"{\"detail\":");
                crate::envelope::write_json_str(&mut out, detail);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        out
    }

    /// The one mapping from an error to what the caller sees.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body())));
        *response.status_mut() = self.status();

        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self.kind {
            ErrorKind::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            // One second: long enough for in-flight requests to drain a
            // little, short enough that load generators keep pressing.
            ErrorKind::Busy => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // A client that sends oversized heads is not worth keeping;
            // hyper drops the header itself on h2 (RFC 9113 section 8.2.2).
            ErrorKind::HeadersTooLarge => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {}", self.message(), detail),
            None => f.write_str(self.message()),
        }
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(err: &ProxyError) -> serde_json::Value {
        serde_json::from_slice(&err.body()).unwrap()
    }

    #[test]
    fn bare_error_has_null_meta() {
        let v = json(&ProxyError::bare(ErrorKind::Unauthorized));
        assert_eq!(v["Status"], "Error");
        assert_eq!(v["Message"], "Not authorised");
        assert!(v["Meta"].is_null());
    }

    #[test]
    fn detail_is_escaped_into_meta() {
        let v = json(&ProxyError::bad_request("field \"url\"\n is bad"));
        assert_eq!(v["Meta"]["detail"], "field \"url\"\n is bad");
    }

    #[test]
    fn busy_carries_retry_after_and_405_carries_allow() {
        let busy = ProxyError::bare(ErrorKind::Busy).into_response();
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");

        let wrong = ProxyError::bare(ErrorKind::MethodNotAllowed("POST")).into_response();
        assert_eq!(wrong.status(), 405);
        assert_eq!(wrong.headers()[ALLOW], "POST");
        assert_eq!(wrong.headers()[CONTENT_TYPE], "application/json");
    }
}
