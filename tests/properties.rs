//! Property tests: gateway matching never lets a URL out of its gateway's
//! host, port and path prefix, and the envelope carries a gateway's
//! status, headers and body without loss (SPEC.md, "Gateway matching",
//! "Response").

use base64::Engine as _;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};

use gwproxy::envelope;
use gwproxy::gateway_match::{parse_target, GatewayTarget};

/// Enough cases to find shallow bugs, few enough to run in seconds.
const CASES: u32 = 256;

fn config() -> Config {
    Config {
        cases: CASES,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Gateway matching

/// Plain path segments a gateway prefix is made of.
const PLAIN: [&str; 6] = ["apis", "v1", "a", "b.c", "x_y", "API"];

/// Segments a caller's path is made of: plain ones, dot segments in every
/// spelling, escapes of separators, and escapes of ordinary characters.
const TRICKY: [&str; 18] = [
    "apis", "v1", "a", "API", ".", "..", "...", "%2e", "%2E", "%2e%2e", ".%2E", "%2f", "%2F..",
    "%5c", "a%2fb", "%41", "%zz", "",
];

/// The hosts of generated gateways, and spellings of other hosts.
const HOSTS: [&str; 3] = ["127.0.0.1:8181", "gw.internal", "[::1]:8443"];
const OTHER_HOSTS: [&str; 7] = [
    "127.0.0.1:8182",
    "127.0.0.2:8181",
    "gw.internal:8080",
    "gw.internal.evil",
    "user@gw.internal",
    "127.0.0.1:8181@gw.internal",
    "[::2]:8443",
];

fn gateway_url() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec!["http", "https"]);
    let host = prop::sample::select(HOSTS.to_vec());
    let prefix = prop::collection::vec(prop::sample::select(PLAIN.to_vec()), 0..3);
    (scheme, host, prefix, any::<bool>()).prop_map(|(scheme, host, prefix, slash)| {
        let mut url = format!("{scheme}://{host}");
        for segment in prefix {
            url.push('/');
            url.push_str(segment);
        }
        if slash {
            url.push('/');
        }
        url
    })
}

/// A caller URL: the gateway's own authority or another one, then often
/// the gateway's prefix, then tricky segments joined by '/' or '\', maybe a query and a fragment.
fn caller_url(gateway: String) -> impl Strategy<Value = (String, String)> {
    let same_authority = gateway
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let authority = prop_oneof![
        3 => Just(same_authority),
        1 => prop::sample::select(OTHER_HOSTS.to_vec()).prop_map(str::to_owned),
    ];
    let scheme = prop_oneof![
        3 => Just(gateway.split("://").next().unwrap_or("http").to_owned()),
        1 => prop::sample::select(vec!["http", "HTTPS", "Http"]).prop_map(str::to_owned),
    ];
    // Most interesting URLs start inside the prefix and try to leave it.
    let gateway_path = gateway
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|at| rest[at..].trim_end_matches('/')))
        .unwrap_or_default()
        .to_owned();
    let start = prop_oneof![Just(gateway_path), Just(String::new())];
    let segments = prop::collection::vec(
        (
            prop::sample::select(TRICKY.to_vec()),
            prop::sample::select(vec!['/', '/', '/', '\\']),
        ),
        0..7,
    );
    let query = prop::option::of(prop::sample::select(vec![
        "a=1",
        "x=%2e%2e/..",
        "",
        "q=/../",
    ]));
    let fragment = prop::option::of(prop::sample::select(vec!["f", "/../x"]));
    (scheme, authority, start, segments, query, fragment).prop_map(
        move |(scheme, authority, start, segments, query, fragment)| {
            let mut url = format!("{scheme}://{authority}{start}");
            for (segment, separator) in segments {
                url.push(separator);
                url.push_str(segment);
            }
            if let Some(query) = query {
                url.push('?');
                url.push_str(query);
            }
            if let Some(fragment) = fragment {
                url.push('#');
                url.push_str(fragment);
            }
            (gateway.clone(), url)
        },
    )
}

/// Decodes every `%XX`; other bytes as they are.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The invariants of a match, as one message per broken one.
fn match_violations(gateway: &GatewayTarget, url: &str) -> Vec<String> {
    let Ok(target) = parse_target(url) else {
        return Vec::new();
    };
    let mut broken = Vec::new();
    if !target.path_and_query.starts_with('/') {
        broken.push(format!("path_and_query {:?}", target.path_and_query));
    }
    if !gateway.matches(&target) {
        return broken;
    }

    if (target.scheme, &target.host, target.port) != (gateway.scheme, &gateway.host, gateway.port) {
        broken.push(format!("authority {target:?} is not the gateway's"));
    }
    let path = target.path();
    match path.strip_prefix(gateway.prefix.as_str()) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {}
        _ => broken.push(format!("{path:?} outside prefix {:?}", gateway.prefix)),
    }
    if path.split('/').any(|segment| segment == "..") {
        broken.push(format!("{path:?} keeps a '..' segment"));
    }
    // What a gateway that percent-decodes the path would resolve.
    let decoded = percent_decode(path);
    for segment in decoded.split(|b| *b == b'/' || *b == b'\\') {
        if segment == b".." || segment == b"." {
            broken.push(format!("{path:?} decodes to a dot segment"));
        }
    }
    if !decoded.starts_with(&percent_decode(&gateway.prefix)) {
        broken.push(format!("{path:?} decodes outside the prefix"));
    }
    broken
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_matching_url_stays_inside_its_gateway(
        (gateway_url, url) in gateway_url().prop_flat_map(caller_url)
    ) {
        let gateway = GatewayTarget::parse(&gateway_url).expect("generated gateway parses");
        let broken = match_violations(&gateway, &url);
        prop_assert!(broken.is_empty(), "{gateway_url} / {url}: {broken:?}");
    }

    /// The other direction, so that the first property cannot pass by
    /// never matching: plain segments under the prefix always match.
    #[test]
    fn a_plain_path_under_the_prefix_always_matches(
        gateway_url in gateway_url(),
        tail in prop::collection::vec(prop::sample::select(PLAIN.to_vec()), 0..4),
        query in prop::option::of("[a-z0-9=&]{0,12}"),
    ) {
        let gateway = GatewayTarget::parse(&gateway_url).expect("generated gateway parses");
        let base = gateway_url.trim_end_matches('/');
        let mut url = base.to_owned();
        for segment in &tail {
            url.push('/');
            url.push_str(segment);
        }
        if let Some(query) = &query {
            url.push('?');
            url.push_str(query);
        }
        let target = parse_target(&url).expect("plain URL parses");
        prop_assert!(gateway.matches(&target), "{gateway_url} / {url}: {target:?}");
        prop_assert!(match_violations(&gateway, &url).is_empty());
    }
}

// ---------------------------------------------------------------------------
// The envelope

/// Header names: common ones, `transfer-encoding` (which the envelope
/// leaves out), and any RFC 9110 token.
fn header_name() -> impl Strategy<Value = HeaderName> {
    let common = prop::sample::select(vec![
        "content-type",
        "set-cookie",
        "x-ratelimit-limit",
        "etag",
        "www-authenticate",
        "x-a-b-c",
        "transfer-encoding",
        "a",
    ])
    .prop_map(str::to_owned);
    let token = "[a-z0-9!#$%&'*+.^_`|~-]{1,16}";
    prop_oneof![common, token]
        .prop_map(|name| HeaderName::from_bytes(name.as_bytes()).expect("a token is a name"))
}

/// Visible ASCII, with spaces only inside.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    "([!-~]([ -~]{0,30}[!-~])?)?"
        .prop_map(|value| HeaderValue::from_str(&value).expect("visible ASCII is a value"))
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name, value);
        }
        headers
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Bodies of every kind the envelope distinguishes: JSON (compact, pretty
/// and padded), UTF-8 text, and arbitrary bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|v| serde_json::to_vec_pretty(&v).expect("serialises")),
        json_value().prop_map(|v| format!(" \t\n{v}\r\n").into_bytes()),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// What the envelope's `headers` member should be: canonical names,
/// repeated values joined with ", ", no `Transfer-Encoding`.
fn expected_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut expected = Map::new();
    for name in headers.keys() {
        if name == http::header::TRANSFER_ENCODING {
            continue;
        }
        let canonical = name
            .as_str()
            .split('-')
            .map(|word| {
                let mut chars = word.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect::<Vec<_>>()
            .join("-");
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("generated values are ASCII"))
            .collect();
        expected.insert(canonical, Value::from(values.join(", ")));
    }
    expected
}

/// Checks that the envelope's body member decodes to exactly `body`.
fn assert_body_round_trips(envelope: &Value, body: &[u8]) -> Result<(), TestCaseError> {
    let encoding = envelope.get("body_encoding");
    match serde_json::from_slice::<Value>(body) {
        Ok(original) if !body.is_empty() => {
            prop_assert!(encoding.is_none());
            prop_assert_eq!(&envelope["body"], &original);
        }
        _ => match std::str::from_utf8(body) {
            Ok(text) => {
                prop_assert!(encoding.is_none());
                prop_assert_eq!(envelope["body"].as_str(), Some(text));
            }
            Err(_) => {
                prop_assert_eq!(encoding, Some(&Value::from("base64")));
                let encoded = envelope["body"].as_str().expect("base64 is a string");
                let decoded = base64::engine::general_purpose::STANDARD.decode(encoded);
                prop_assert_eq!(decoded.as_deref(), Ok(body));
            }
        },
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_envelope_carries_status_headers_and_body_without_loss(
        status in 100u16..=599,
        headers in header_map(),
        body in body(),
    ) {
        let status = StatusCode::from_u16(status).expect("100..=599 is a status");
        let bytes = envelope::build(status, headers.clone(), &body);

        let envelope: Value = serde_json::from_slice(&bytes).map_err(|e| {
            TestCaseError::fail(format!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        })?;
        prop_assert_eq!(&envelope["status_code"], &Value::from(status.as_u16()));
        prop_assert_eq!(
            envelope["headers"].as_object(),
            Some(&expected_headers(&headers))
        );
        assert_body_round_trips(&envelope, &body)?;
    }
}

/// Bodies that are JSON by RFC 8259's grammar but name no value a strict
/// parser can hold: the envelope must still be JSON that such a parser
/// (serde_json, Go's encoding/json) reads.
#[test]
fn an_unrepresentable_json_body_still_yields_a_parseable_envelope() {
    for body in [
        &b"1e400"[..],
        b"[-1e999]",
        br#""\ud800""#,
        br#"{"k":"\udc00x"}"#,
    ] {
        let bytes = envelope::build(StatusCode::OK, HeaderMap::new(), body);
        let parsed = serde_json::from_slice::<Value>(&bytes);
        assert!(
            parsed.is_ok(),
            "{}: {parsed:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
