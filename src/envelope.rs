//! The success envelope: the gateway's status, headers and body as one JSON object.

use base64::Engine as _;
use http::header::TRANSFER_ENCODING;
use http::{HeaderMap, StatusCode};

use crate::json_check::is_json;

/// Writes `{"status_code":…,"headers":{…},"body":…}` for a gateway response.
///
/// The body is embedded verbatim when it is JSON (no re-serialisation, so
/// numbers and key order survive byte for byte), as a string when it is
/// UTF-8, and as base64 with `"body_encoding":"base64"` otherwise.
pub fn build(status: StatusCode, headers: HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate_len(&headers, body));

    out.extend_from_slice(b"{\"status_code\":");
    out.extend_from_slice(status.as_str().as_bytes());

    out.extend_from_slice(b",\"headers\":");
    write_headers(&mut out, headers);

    out.extend_from_slice(b",\"body\":");
    let base64 = write_body(&mut out, body);
    if base64 {
        out.extend_from_slice(b",\"body_encoding\":\"base64\"");
    }

    out.push(b'}');
    out
}

/// Room for everything in one allocation: headers at their raw size plus
/// quoting, the body at its size plus a little escaping slack.
fn estimate_len(headers: &HeaderMap, body: &[u8]) -> usize {
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 8)
        .sum();
    64 + header_bytes + body.len() + body.len() / 8
}

/// Repeated headers become one member whose values are joined with ", ",
/// the list form RFC 9110 section 5.3 defines as equivalent.
///
/// `Transfer-Encoding` is left out: it described how the gateway framed
/// bytes on gwproxy's connection, not the body the envelope now carries
/// whole (Go's client, and so the Dashboard, drops it the same way).
///
/// The map is consumed because its owning iterator is the one that
/// promises a name's values come together (a `None` name means "same as
/// the last"), so each member is written in one pass with no lookups.
fn write_headers(out: &mut Vec<u8>, headers: HeaderMap) {
    out.push(b'{');
    // A member's string stays open until the next member or the end, so
    // that further values of the same name can be appended to it.
    let mut open = false;
    let mut skipping = false;
    for (name, value) in headers {
        match name {
            Some(name) => {
                skipping = name == TRANSFER_ENCODING;
                if skipping {
                    continue;
                }
                if open {
                    out.extend_from_slice(b"\",");
                }
                out.push(b'"');
                write_canonical_name(out, name.as_str());
                out.extend_from_slice(b"\":\"");
                open = true;
            }
            None if skipping => continue,
            None => out.extend_from_slice(b", "),
        }
        write_json_contents(out, value.as_bytes());
    }
    if open {
        out.push(b'"');
    }
    out.push(b'}');
}

/// `content-type` → `Content-Type`: upper case at the start and after each
/// hyphen, as Go's `CanonicalMIMEHeaderKey` (and so the Dashboard) does.
/// Header names are RFC 9110 tokens, so none needs JSON escaping.
fn write_canonical_name(out: &mut Vec<u8>, name: &str) {
    let mut upper = true;
    for &b in name.as_bytes() {
        out.push(if upper { b.to_ascii_uppercase() } else { b });
        upper = b == b'-';
    }
}

/// Writes the body member's value; returns true when it chose base64.
fn write_body(out: &mut Vec<u8>, body: &[u8]) -> bool {
    if body.is_empty() {
        out.extend_from_slice(b"\"\"");
        return false;
    }

    // UTF-8 first: serde_json does not check UTF-8 inside strings it skips,
    // and the envelope must stay valid UTF-8 JSON.
    let Ok(text) = std::str::from_utf8(body) else {
        out.push(b'"');
        write_base64(out, body);
        out.push(b'"');
        return true;
    };

    if is_json(text) {
        out.extend_from_slice(body);
    } else {
        write_json_str(out, text);
    }
    false
}

/// Appends a header value as the inside of a JSON string. Most values are
/// printable ASCII with nothing to escape and are copied as they are; the
/// rest go through serde_json, with anything that is not UTF-8 (obs-text,
/// RFC 9110 section 5.5) shown as replacement characters, not dropped.
fn write_json_contents(out: &mut Vec<u8>, value: &[u8]) {
    let plain = |b: &u8| (b' '..=b'~').contains(b) && *b != b'"' && *b != b'\\';
    if value.iter().all(plain) {
        out.extend_from_slice(value);
        return;
    }
    let start = out.len();
    write_json_str(out, &String::from_utf8_lossy(value));
    // Take off the quotes serde_json put around it.
    out.pop();
    out.remove(start);
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail, and a &str always serialises.
    let _ = serde_json::to_writer(out, s);
}

/// Encodes straight into the tail of the envelope buffer, with no
/// intermediate String.
fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    fn parse(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("envelope is JSON")
    }

    #[test]
    fn embeds_json_body_verbatim() {
        let body = br#"{"b":1.50,"a":[1,2]}"#;
        let out = build(StatusCode::OK, HeaderMap::new(), body);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains(r#""body":{"b":1.50,"a":[1,2]}"#), "{text}");
    }

    #[test]
    fn text_body_becomes_a_string() {
        let out = build(
            StatusCode::NOT_FOUND,
            HeaderMap::new(),
            b"no \"such\" page\n",
        );
        let v = parse(&out);
        assert_eq!(v["status_code"], 404);
        assert_eq!(v["body"], "no \"such\" page\n");
        assert!(v.get("body_encoding").is_none());
    }

    #[test]
    fn binary_body_becomes_base64() {
        let body = [0u8, 159, 146, 150, 255];
        let v = parse(&build(StatusCode::OK, HeaderMap::new(), &body));
        assert_eq!(v["body_encoding"], "base64");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, body);
    }

    #[test]
    fn empty_body_is_empty_string() {
        let v = parse(&build(StatusCode::NO_CONTENT, HeaderMap::new(), b""));
        assert_eq!(v["body"], "");
    }

    #[test]
    fn headers_are_canonical_and_repeats_joined() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-ratelimit-limit", HeaderValue::from_static("0"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let v = parse(&build(StatusCode::OK, headers, b"x"));
        assert_eq!(v["headers"]["Content-Type"], "text/plain");
        assert_eq!(v["headers"]["X-Ratelimit-Limit"], "0");
        assert_eq!(v["headers"]["Set-Cookie"], "a=1, b=2");
    }

    #[test]
    fn leaves_out_transfer_encoding() {
        let mut headers = HeaderMap::new();
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let v = parse(&build(StatusCode::OK, headers, b""));
        assert_eq!(v["headers"], serde_json::json!({"X-A": "1"}));
    }

    #[test]
    fn escapes_and_joins_values_around_a_left_out_header() {
        let mut headers = HeaderMap::new();
        headers.append("transfer-encoding", HeaderValue::from_static("gzip"));
        headers.append("x-a", HeaderValue::from_static("say \"hi\""));
        headers.append("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.append("x-a", HeaderValue::from_static("back\\slash"));
        headers.append("x-b", HeaderValue::from_static("\tz"));
        let v = parse(&build(StatusCode::OK, headers, b""));
        let expected = serde_json::json!({"X-A": "say \"hi\", back\\slash", "X-B": "\tz"});
        assert_eq!(v["headers"], expected);
    }

    #[test]
    fn non_utf8_header_value_stays_valid_json() {
        let mut headers = HeaderMap::new();
        headers.insert("x-odd", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let v = parse(&build(StatusCode::OK, headers, b""));
        assert_eq!(v["headers"]["X-Odd"], "caf\u{fffd}");
    }

    #[test]
    fn deeply_nested_json_is_sent_as_text() {
        let body = "[".repeat(10_000);
        let v = parse(&build(StatusCode::OK, HeaderMap::new(), body.as_bytes()));
        assert_eq!(v["body"].as_str().unwrap().len(), 10_000);
    }
}
