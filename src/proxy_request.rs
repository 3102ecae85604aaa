//! The caller's JSON request (`method`, `url`, `headers`, `body`), parsed by borrowing.

use std::borrow::Cow;
use std::fmt;

use http::Method;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ProxyError;

/// A parsed `/api/proxy` request. Strings borrow from the received body
/// unless JSON escapes forced a decoded copy.
#[derive(Debug)]
pub struct ProxyRequest<'a> {
    pub method: Method,
    pub url: Cow<'a, str>,
    pub headers: HeaderPairs<'a>,
    pub body: RequestBody<'a>,
}

/// The caller's `headers` in the order given; a name may repeat.
pub type HeaderPairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// What to send as the gateway request's body.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestBody<'a> {
    /// `body` absent or `null`: no body at all.
    None,
    /// Any JSON value but a string: its exact text, byte for byte.
    Json(&'a str),
    /// A JSON string: its decoded text.
    Text(Cow<'a, str>),
}

/// Parses the body of a `POST /api/proxy`, whatever its Content-Type.
///
/// Unknown fields are ignored, but a known field given twice is refused:
/// two `url`s would let one component check one and another use the other.
///
/// The body is checked as UTF-8 once, up front (RFC 8259 section 8.1):
/// serde_json then reads it as text and does not check each string and
/// each raw field again, as it must when it reads bytes.
pub fn parse(bytes: &[u8], max_headers: usize) -> Result<ProxyRequest<'_>, ProxyError> {
    let json = std::str::from_utf8(bytes).map_err(|e| {
        ProxyError::bad_request(format!("request body must be a JSON object in UTF-8: {e}"))
    })?;
    let fields: RawFields<'_> = serde_json::from_str(json)
        .map_err(|e| ProxyError::bad_request(format!("request body must be a JSON object: {e}")))?;

    let method = parse_method(required(fields.method, "method")?)?;
    let url = text(required(fields.url, "url")?)
        .ok_or_else(|| ProxyError::bad_request("field `url` must be a string"))?;
    let headers = match fields.headers {
        Some(raw) if raw.get() != "null" => parse_headers(raw, max_headers)?,
        _ => Vec::new(),
    };
    let body = parse_body(fields.body)?;

    Ok(ProxyRequest {
        method,
        url,
        headers,
        body,
    })
}

fn required<'a>(raw: Option<&'a RawValue>, name: &str) -> Result<&'a RawValue, ProxyError> {
    raw.ok_or_else(|| ProxyError::bad_request(format!("field `{name}` is required")))
}

/// RFC 9110 section 9.1: methods are case-sensitive tokens, but callers of
/// the Dashboard write `get` and mean GET, so the standard ones are
/// upper-cased and the rest are sent as given.
fn parse_method(raw: &RawValue) -> Result<Method, ProxyError> {
    let name =
        text(raw).ok_or_else(|| ProxyError::bad_request("field `method` must be a string"))?;
    let method = standard_method(&name)
        .map(Ok)
        .unwrap_or_else(|| Method::from_bytes(name.as_bytes()))
        .map_err(|_| ProxyError::bad_request("field `method` is not an HTTP method token"))?;

    // CONNECT asks for a tunnel (RFC 9110 section 9.3.6), which a request
    // relayed through a JSON envelope cannot be.
    if method == Method::CONNECT {
        return Err(ProxyError::bad_request("method CONNECT cannot be proxied"));
    }
    Ok(method)
}

fn standard_method(name: &str) -> Option<Method> {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    STANDARD
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(name))
}

fn parse_headers<'a>(raw: &'a RawValue, max: usize) -> Result<HeaderPairs<'a>, ProxyError> {
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    deserializer
        .deserialize_map(HeadersVisitor { max })
        .map_err(|e| ProxyError::bad_request(e.to_string()))
}

fn parse_body(raw: Option<&RawValue>) -> Result<RequestBody<'_>, ProxyError> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
        return Ok(RequestBody::None);
    };
    if !raw.get().starts_with('"') {
        return Ok(RequestBody::Json(raw.get()));
    }
    // A JSON string may still fail to decode: a lone surrogate escape such
    // as "\ud800" names no character (RFC 8259 section 8.2).
    text(raw).map(RequestBody::Text).ok_or_else(|| {
        ProxyError::bad_request("field `body` is a string that is not valid Unicode")
    })
}

/// A JSON string, borrowed when it had no escapes.
fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Text<'_>>(raw.get())
        .ok()
        .map(|t| t.0)
}

/// The four known fields, each kept as raw JSON so that each can be given
/// its own error message.
#[derive(Default)]
struct RawFields<'a> {
    method: Option<&'a RawValue>,
    url: Option<&'a RawValue>,
    headers: Option<&'a RawValue>,
    body: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for RawFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = RawFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RawFields::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let slot = match key.0.as_ref() {
                "method" => &mut fields.method,
                "url" => &mut fields.url,
                "headers" => &mut fields.headers,
                "body" => &mut fields.body,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    key.0
                )));
            }
            *slot = Some(map.next_value()?);
        }
        Ok(fields)
    }
}

struct HeadersVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = HeaderPairs<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field `headers` to be an object of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut headers = Vec::with_capacity(map.size_hint().unwrap_or(8).min(self.max));
        while let Some(name) = map.next_key::<Text<'de>>()? {
            if headers.len() == self.max {
                return Err(de::Error::custom(format_args!(
                    "field `headers` has more than {} entries",
                    self.max
                )));
            }
            let value = map.next_value::<Text<'de>>().map_err(|_| {
                de::Error::custom(format_args!(
                    "header `{}` must have a string value",
                    shorten(&name.0)
                ))
            })?;
            headers.push((name.0, value.0));
        }
        Ok(headers)
    }
}

/// Caller-supplied names echoed in errors are cut, so that an error stays
/// small whatever was sent.
pub fn shorten(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// A JSON string that borrows from the input when it can.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> ProxyRequest<'_> {
        parse(json.as_bytes(), 100).expect("valid request")
    }

    fn err(json: &str) -> String {
        parse(json.as_bytes(), 3)
            .unwrap_err()
            .detail()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn parses_the_seed_example() {
        let r = ok(
            r#"{"method":"GET","url":"http://localhost:8181/test-oas/get",
            "headers":{"test":"tyk","Content-Type":"application/json"},
            "body":{"name":"New Resource","description":"Description of the resource."}}"#,
        );
        assert_eq!(r.method, Method::GET);
        assert_eq!(r.url, "http://localhost:8181/test-oas/get");
        assert_eq!(r.headers.len(), 2);
        assert_eq!(
            r.body,
            RequestBody::Json(
                r#"{"name":"New Resource","description":"Description of the resource."}"#
            )
        );
    }

    #[test]
    fn borrows_unescaped_strings_and_decodes_escaped_ones() {
        let r =
            ok(r#"{"method":"post","url":"http://x/","headers":{"a":"b\u0041"},"body":"line\n"}"#);
        assert!(matches!(r.url, Cow::Borrowed(_)));
        assert!(matches!(r.headers[0].1, Cow::Owned(_)));
        assert_eq!(r.headers[0].1, "bA");
        assert_eq!(r.body, RequestBody::Text(Cow::Borrowed("line\n")));
    }

    #[test]
    fn keeps_json_body_text_exactly() {
        let r = ok(r#"{"method":"PUT","url":"http://x/","body": [1.50, {"z":0,"a":1}] }"#);
        assert_eq!(r.body, RequestBody::Json(r#"[1.50, {"z":0,"a":1}]"#));
    }

    #[test]
    fn null_body_and_headers_mean_absent() {
        let r = ok(r#"{"method":"GET","url":"http://x/","body":null,"headers":null}"#);
        assert_eq!(r.body, RequestBody::None);
        assert!(r.headers.is_empty());
    }

    #[test]
    fn upper_cases_standard_methods_only() {
        assert_eq!(
            ok(r#"{"method":"dElEtE","url":"u"}"#).method,
            Method::DELETE
        );
        assert_eq!(
            ok(r#"{"method":"purge","url":"u"}"#).method.as_str(),
            "purge"
        );
    }

    #[test]
    fn ignores_unknown_fields() {
        let r = ok(r#"{"method":"GET","url":"u","extra":{"deep":[1,2]},"URL":5}"#);
        assert_eq!(r.url, "u");
    }

    #[test]
    fn explains_each_bad_field() {
        assert!(err("[]").contains("JSON object"));
        assert!(err("not json").contains("must be a JSON object"));
        assert!(err(r#"{"url":"u"}"#).contains("`method` is required"));
        assert!(err(r#"{"method":"GET"}"#).contains("`url` is required"));
        assert!(err(r#"{"method":7,"url":"u"}"#).contains("`method` must be a string"));
        assert!(err(r#"{"method":"GET","url":["u"]}"#).contains("`url` must be a string"));
        assert!(err(r#"{"method":"GE T","url":"u"}"#).contains("method token"));
        assert!(err(r#"{"method":"","url":"u"}"#).contains("method token"));
        assert!(err(r#"{"method":"CONNECT","url":"u"}"#).contains("CONNECT"));
        assert!(err(r#"{"method":"GET","url":"u","headers":[]}"#).contains("object of strings"));
        assert!(err(r#"{"method":"GET","url":"u","headers":{"a":1}}"#).contains("header `a`"));
        assert!(err(r#"{"method":"GET","url":"u","url":"v"}"#).contains("duplicate field `url`"));
    }

    #[test]
    fn refuses_more_headers_than_the_limit() {
        let detail =
            err(r#"{"method":"GET","url":"u","headers":{"a":"1","b":"2","c":"3","d":"4"}}"#);
        assert!(detail.contains("more than 3"), "{detail}");
    }

    #[test]
    fn refuses_a_string_body_with_a_lone_surrogate() {
        assert!(
            err(r#"{"method":"POST","url":"u","body":"a\ud800b"}"#).contains("not valid Unicode")
        );
    }

    #[test]
    fn refuses_trailing_garbage() {
        assert!(err(r#"{"method":"GET","url":"u"} x"#).contains("trailing characters"));
    }

    #[test]
    fn refuses_bytes_that_are_not_utf8() {
        let json = b"{\"method\":\"GET\",\"url\":\"http://gw/\xff\"}";
        let error = parse(json, 3).unwrap_err();
        assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
        let detail = error.detail().unwrap_or_default();
        assert!(detail.contains("UTF-8"), "{detail}");
    }
}
