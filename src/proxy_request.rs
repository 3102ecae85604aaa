//! The caller's JSON request (`method`, `url`, `headers`, `body`), parsed by borrowing.

use std::borrow::Cow;
use std::fmt;

use http::Method;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
/// serde_json then reads it as text and does not check each string again,
/// as it must when it reads bytes. One pass reads every field; a field of
/// the wrong type is noted and reported once the whole body proved JSON.
pub fn parse(bytes: &[u8], max_headers: usize) -> Result<ProxyRequest<'_>, ProxyError> {
    let json = std::str::from_utf8(bytes).map_err(|e| {
        ProxyError::bad_request(format!("request body must be a JSON object in UTF-8: {e}"))
    })?;
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let fields = FieldsVisitor { max_headers }
        .deserialize(&mut deserializer)
        .and_then(|fields| deserializer.end().map(|()| fields))
        .map_err(|e| ProxyError::bad_request(format!("request body must be a JSON object: {e}")))?;

    let method = required(fields.method, "method")?
        .ok_or_else(|| ProxyError::bad_request("field `method` must be a string"))?;
    let method = parse_method(&method)?;
    let url = required(fields.url, "url")?
        .ok_or_else(|| ProxyError::bad_request("field `url` must be a string"))?;
    let headers = fields
        .headers
        .unwrap_or(Ok(Vec::new()))
        .map_err(ProxyError::bad_request)?;
    let body = parse_body(fields.body)?;

    Ok(ProxyRequest {
        method,
        url,
        headers,
        body,
    })
}

fn required<T>(field: Option<T>, name: &str) -> Result<T, ProxyError> {
    field.ok_or_else(|| ProxyError::bad_request(format!("field `{name}` is required")))
}

/// RFC 9110 section 9.1: methods are case-sensitive tokens, but callers of
/// the Dashboard write `get` and mean GET, so the standard ones are
/// upper-cased and the rest are sent as given.
fn parse_method(name: &str) -> Result<Method, ProxyError> {
    let method = standard_method(name)
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

/// The four known fields as read. `method` and `url` are `Some(None)`
/// when present but not strings; `headers` holds its own error message;
/// `body` is kept as raw JSON, to be sent byte for byte.
#[derive(Default)]
struct Fields<'a> {
    method: Option<Option<Cow<'a, str>>>,
    url: Option<Option<Cow<'a, str>>>,
    headers: Option<Result<HeaderPairs<'a>, String>>,
    body: Option<&'a RawValue>,
}

struct FieldsVisitor {
    max_headers: usize,
}

impl<'de> DeserializeSeed<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let fresh = match key.0.as_ref() {
                "method" => fields
                    .method
                    .replace(map.next_value::<MaybeText>()?.0)
                    .is_none(),
                "url" => fields
                    .url
                    .replace(map.next_value::<MaybeText>()?.0)
                    .is_none(),
                "headers" => {
                    let headers = map.next_value_seed(HeadersVisitor {
                        max: self.max_headers,
                    })?;
                    fields.headers.replace(headers).is_none()
                }
                "body" => fields.body.replace(map.next_value()?).is_none(),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    true
                }
            };
            if !fresh {
                return Err(de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    key.0
                )));
            }
        }
        Ok(fields)
    }
}

/// `headers`: an object of strings, or `null` for none. Anything else is
/// read to its end and becomes the error message, so that the rest of the
/// body is still checked as JSON first.
struct HeadersVisitor {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for HeadersVisitor {
    type Value = Result<HeaderPairs<'de>, String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HeadersVisitor {
    type Value = Result<HeaderPairs<'de>, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field `headers` to be an object of strings")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(Vec::new()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut headers = Vec::with_capacity(map.size_hint().unwrap_or(8).min(self.max));
        let mut refused = None;
        while let Some(name) = map.next_key::<Text<'de>>()? {
            if refused.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if headers.len() == self.max {
                refused = Some(format!(
                    "field `headers` has more than {} entries",
                    self.max
                ));
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match map.next_value::<MaybeText>()?.0 {
                Some(value) => headers.push((name.0, value)),
                None => {
                    refused = Some(format!(
                        "header `{}` must have a string value",
                        shorten(&name.0)
                    ))
                }
            }
        }
        Ok(refused.map_or(Ok(headers), Err))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Err(NOT_AN_OBJECT.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(NOT_AN_OBJECT.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(NOT_AN_OBJECT.to_owned()))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(NOT_AN_OBJECT.to_owned()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(NOT_AN_OBJECT.to_owned()))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(NOT_AN_OBJECT.to_owned()))
    }
}

const NOT_AN_OBJECT: &str = "field `headers` must be an object of strings";

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Any JSON value: a string's text, or `None` for anything else, which is
/// read to its end and dropped.
struct MaybeText<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for MaybeText<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MaybeTextVisitor)
    }
}

struct MaybeTextVisitor;

impl<'de> Visitor<'de> for MaybeTextVisitor {
    type Value = MaybeText<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(MaybeText(Some(Cow::Borrowed(s))))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(MaybeText(Some(Cow::Owned(s.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(MaybeText(Some(Cow::Owned(s))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(MaybeText(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(MaybeText(None))
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
    fn a_field_of_the_wrong_type_is_reported_only_for_a_whole_json_body() {
        assert!(err(r#"{"method":{"a":[1,{}]},"url":"u"}"#).contains("`method` must be a string"));
        assert!(err(r#"{"method":"GET","url":null}"#).contains("`url` must be a string"));
        assert!(err(r#"{"method":"GET","url":"u","headers":"x"}"#).contains("object of strings"));
        let detail = err(r#"{"method":7,"url":"u","headers":{"a":1}"#);
        assert!(detail.contains("must be a JSON object"), "{detail}");
        let detail =
            err(r#"{"method":"GET","url":"u","headers":{"a":"1","b":"2","c":"3","d":"4"},}"#);
        assert!(detail.contains("must be a JSON object"), "{detail}");
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
