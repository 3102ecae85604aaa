//! The HTTP request gwproxy sends to a gateway, built from the caller's JSON.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;

use crate::error::ProxyError;
use crate::gateway_match::TargetUrl;
use crate::observe::X_REQUEST_ID;
use crate::proxy_request::{shorten, HeaderPairs, ProxyRequest, RequestBody};

/// Everything needed to send (and, once, resend) the request.
#[derive(Debug, Clone)]
pub struct GatewayRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the caller's headers include `X-Request-Id`.
    given_request_id: bool,
}

/// Which of the headers gwproxy may add the caller's JSON already has,
/// noted as the headers are copied rather than looked up afterwards.
#[derive(Debug, Default)]
struct Given {
    content_type: bool,
    host: bool,
    empty_host: bool,
    request_id: bool,
}

impl Given {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<(), ProxyError> {
        if name == CONTENT_TYPE {
            self.content_type = true;
        } else if name == HOST {
            // RFC 9112 section 3.2: a server must refuse a request with
            // more than one Host line, and gateways would disagree on
            // which one counts.
            if self.host {
                return Err(ProxyError::bad_request(
                    "header `host` is given more than once",
                ));
            }
            self.host = true;
            self.empty_host = value.is_empty();
        } else if name == X_REQUEST_ID {
            self.request_id = true;
        }
        Ok(())
    }

    fn of(headers: &HeaderMap) -> Given {
        Given {
            content_type: headers.contains_key(CONTENT_TYPE),
            host: headers.contains_key(HOST),
            empty_host: headers.get(HOST).is_some_and(|h| h.is_empty()),
            request_id: headers.contains_key(X_REQUEST_ID),
        }
    }
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
        host: &HeaderValue,
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

        let (mut headers, given) = caller_headers(&req.headers, source)?;
        if is_json && !given.content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        // RFC 9110 section 8.6: a request whose method gives content a
        // meaning carries Content-Length even when empty, as Go's client
        // (and so the Dashboard) sends it; some servers answer 411 without.
        if body.is_empty() && matches!(req.method, Method::POST | Method::PUT | Method::PATCH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        // An empty Host is only valid for a URI without authority (RFC 9112
        // section 3.2), which a gateway URL never is; insert replaces it.
        if !given.host || given.empty_host {
            headers.insert(HOST, host.clone());
        }

        Ok(GatewayRequest {
            method: req.method.clone(),
            uri,
            headers,
            body,
            given_request_id: given.request_id,
        })
    }

    /// Sends gwproxy's request id along, unless the caller's JSON headers
    /// already name one for the gateway.
    pub fn set_request_id(&mut self, id: &HeaderValue) {
        if !self.given_request_id {
            self.headers.insert(X_REQUEST_ID, id.clone());
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
fn caller_headers(
    pairs: &HeaderPairs<'_>,
    source: &Bytes,
) -> Result<(HeaderMap, Given), ProxyError> {
    let mut headers = HeaderMap::with_capacity(pairs.len() + 3);
    let mut given = Given::default();
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
            given.note(&name, &value)?;
            headers.append(name, value);
        }
    }

    if named_by_connection.is_empty() {
        return Ok((headers, given));
    }
    for name in &named_by_connection {
        headers.remove(name);
    }
    let given = Given::of(&headers);
    Ok((headers, given))
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == CONTENT_LENGTH
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
        GatewayRequest::build(&req, &source, &target, &HeaderValue::from_static("gw:8181"))
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
    fn headers_named_by_connection_count_as_not_given() {
        let r = build(
            r#"{"method":"POST","url":"http://gw:8181/","body":{},
            "headers":{"Connection":"content-type, host","Content-Type":"text/x","Host":"h"}}"#,
        )
        .unwrap();
        assert_eq!(r.headers[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers[HOST], "gw:8181");
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
        let host = HeaderValue::from_static("gw:8181");
        let r = GatewayRequest::build(&req, &source, &target, &host).unwrap();
        let value = r.headers["x-a"].as_bytes().as_ptr() as usize;
        let base = source.as_ptr() as usize;
        assert!(value >= base && value < base + source.len());
    }
}
