//! The HTTP request gwproxy sends to a gateway, built from the caller's JSON.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;

use crate::error::ProxyError;
use crate::gateway_match::TargetUrl;
use crate::proxy_request::{shorten, HeaderPairs, ProxyRequest, RequestBody};

/// Everything needed to send (and, once, resend) the request.
#[derive(Debug, Clone)]
pub struct GatewayRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Headers that describe one connection rather than the message (RFC 9110
/// section 7.6.1), plus the framing headers that hyper recomputes from the
/// body we actually send (RFC 9112 section 6).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl GatewayRequest {
    /// Builds the request for the matched gateway. `source` is the received
    /// body the parsed request borrows from: header values and the JSON
    /// body are sliced out of it rather than copied.
    pub fn build(
        req: &ProxyRequest<'_>,
        source: &Bytes,
        target: &TargetUrl,
        authority: &str,
    ) -> Result<Self, ProxyError> {
        let uri = Uri::builder()
            .path_and_query(target.path_and_query.as_str())
            .build()
            .map_err(|_| ProxyError::bad_request("url has characters that cannot be sent"))?;

        let (body, is_json) = match &req.body {
            RequestBody::None => (Bytes::new(), false),
            RequestBody::Json(text) => (share(source, text), true),
            RequestBody::Text(text) => (share(source, text), false),
        };

        let mut headers = caller_headers(&req.headers, source)?;
        if is_json && !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        // An empty Host is only valid for a URI without authority (RFC 9112
        // section 3.2), which a gateway URL never is.
        if headers.get(HOST).is_some_and(|host| host.is_empty()) {
            headers.remove(HOST);
        }
        if !headers.contains_key(HOST) {
            let host = HeaderValue::from_str(authority)
                .map_err(|_| ProxyError::bad_request("gateway host is not a valid Host header"))?;
            headers.insert(HOST, host);
        }

        Ok(GatewayRequest {
            method: req.method.clone(),
            uri,
            headers,
            body,
        })
    }

    /// Sends gwproxy's request id along, unless the caller's JSON headers
    /// already name one for the gateway.
    pub fn set_request_id(&mut self, id: &HeaderValue) {
        let name = HeaderName::from_static("x-request-id");
        if !self.headers.contains_key(&name) {
            self.headers.insert(name, id.clone());
        }
    }

    /// RFC 9110 section 9.2.2: only these may be sent twice without the
    /// caller's say-so.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::PUT
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
        )
    }

    /// The request as hyper sends it. HTTP/1.1 takes the origin form and a
    /// `Host` header; h2 takes the authority in the URI, which hyper sends
    /// as `:authority` in place of `Host` (RFC 9113 section 8.3.1). h2 is
    /// only negotiated by ALPN, so its scheme is https.
    pub fn into_http(mut self, h2: bool) -> Request<Full<Bytes>> {
        if h2 {
            self.uri = absolute_https(&self.uri, self.headers.remove(HOST)).unwrap_or(self.uri);
        }
        let mut request = Request::new(Full::new(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.headers_mut() = self.headers;
        request
    }
}

fn absolute_https(origin: &Uri, host: Option<HeaderValue>) -> Option<Uri> {
    let authority = http::uri::Authority::try_from(host?.as_bytes()).ok()?;
    Uri::builder()
        .scheme(http::uri::Scheme::HTTPS)
        .authority(authority)
        .path_and_query(origin.path_and_query()?.clone())
        .build()
        .ok()
}

/// Validates the caller's headers and drops the hop-by-hop ones, including
/// any that the caller's own `Connection` header names.
///
/// Each name is compared with the short hop-by-hop list as it arrives,
/// which is cheaper than hashing ten removals into the finished map.
fn caller_headers(pairs: &HeaderPairs<'_>, source: &Bytes) -> Result<HeaderMap, ProxyError> {
    let mut headers = HeaderMap::with_capacity(pairs.len() + 2);
    let mut named_by_connection = Vec::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ProxyError::bad_request(format!("header name `{}` is not valid HTTP", shorten(name)))
        })?;
        // from_maybe_shared refuses CR, LF and NUL: no header injection.
        let value = HeaderValue::from_maybe_shared(share(source, value)).map_err(|_| {
            ProxyError::bad_request(format!(
                "header `{}` has a value that is not valid HTTP",
                name
            ))
        })?;
        if name == header::CONNECTION {
            named_by_connection.extend(connection_options(&value));
        }
        if !is_hop_by_hop(&name) {
            headers.append(name, value);
        }
    }

    for name in &named_by_connection {
        headers.remove(name);
    }
    Ok(headers)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::CONTENT_LENGTH
}

/// The header names a `Connection` value lists (RFC 9110 section 7.6.1).
fn connection_options(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
}

/// A zero-copy slice of `source` when `text` lies inside it (it was
/// borrowed from the received body), else a copy (it was unescaped).
/// (`Bytes::slice_ref` would panic on a slice from elsewhere.)
fn share(source: &Bytes, text: &str) -> Bytes {
    let start = source.as_ptr() as usize;
    let at = text.as_ptr() as usize;
    if at >= start && at + text.len() <= start + source.len() {
        source.slice(at - start..at - start + text.len())
    } else {
        Bytes::copy_from_slice(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway_match::parse_target;
    use crate::proxy_request::parse;

    fn build(json: &str) -> Result<GatewayRequest, ProxyError> {
        let source = Bytes::copy_from_slice(json.as_bytes());
        let req = parse(&source, 100)?;
        let target = parse_target(&req.url).map_err(ProxyError::bad_request)?;
        GatewayRequest::build(&req, &source, &target, "gw:8181")
    }

    #[test]
    fn drops_hop_by_hop_and_connection_named_headers() {
        let r = build(
            r#"{"method":"GET","url":"http://gw:8181/a?b=1","headers":{
            "Connection":"close, X-Secret-Hop","X-Secret-Hop":"1","Keep-Alive":"5",
            "Transfer-Encoding":"chunked","Content-Length":"99","TE":"trailers",
            "Upgrade":"websocket","Proxy-Authorization":"x","X-Kept":"yes"}}"#,
        )
        .unwrap();
        let names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept", "host"]);
        assert_eq!(r.uri, "/a?b=1");
    }

    #[test]
    fn json_body_gets_default_content_type_but_caller_wins() {
        let r = build(r#"{"method":"POST","url":"http://gw:8181/","body":{"a":1}}"#).unwrap();
        assert_eq!(r.headers[CONTENT_TYPE], "application/json");
        assert_eq!(r.body, r#"{"a":1}"#);

        let r = build(
            r#"{"method":"POST","url":"http://gw:8181/","headers":{"content-type":"text/x"},"body":[1]}"#,
        )
        .unwrap();
        assert_eq!(r.headers[CONTENT_TYPE], "text/x");
    }

    #[test]
    fn string_body_is_decoded_without_content_type() {
        let r = build(r#"{"method":"POST","url":"http://gw:8181/","body":"a\tb"}"#).unwrap();
        assert_eq!(r.body, "a\tb");
        assert!(!r.headers.contains_key(CONTENT_TYPE));
    }

    #[test]
    fn caller_may_set_host() {
        let r =
            build(r#"{"method":"GET","url":"http://gw:8181/","headers":{"Host":"api.example"}}"#)
                .unwrap();
        assert_eq!(r.headers[HOST], "api.example");
    }

    #[test]
    fn refuses_header_injection() {
        for json in [
            r#"{"method":"GET","url":"http://gw:8181/","headers":{"X-A":"1\r\nEvil: 1"}}"#,
            r#"{"method":"GET","url":"http://gw:8181/","headers":{"X-A\r\nEvil":"1"}}"#,
            r#"{"method":"GET","url":"http://gw:8181/","headers":{"Bad Name":"1"}}"#,
            r#"{"method":"GET","url":"http://gw:8181/","headers":{"X-Nul":"a\u0000b"}}"#,
        ] {
            let err = build(json).unwrap_err();
            assert_eq!(err.status(), 400, "{json}");
        }
    }

    #[test]
    fn shares_unescaped_values_with_the_received_body() {
        let source = Bytes::from_static(
            br#"{"method":"GET","url":"http://gw:8181/","headers":{"X-A":"abc"}}"#,
        );
        let req = parse(&source, 100).unwrap();
        let target = parse_target(&req.url).unwrap();
        let r = GatewayRequest::build(&req, &source, &target, "gw:8181").unwrap();
        let value = r.headers["x-a"].as_bytes().as_ptr() as usize;
        let base = source.as_ptr() as usize;
        assert!(value >= base && value < base + source.len());
    }
}
