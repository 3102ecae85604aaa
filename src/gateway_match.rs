//! Gateway matching: the allow-list check between a caller's URL and the configured gateways.

use url::{Host, Url};

const NOT_ABSOLUTE: &str = "URL must be an absolute http:// or https:// URL";
const BAD_CHARACTER: &str = "URL contains whitespace or a control character";
const NO_HOST: &str = "URL has no host";
const BAD_PORT: &str = "URL port must be between 1 and 65535";

/// The two schemes a gateway can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP, default port 80.
    Http,
    /// HTTP over TLS, default port 443.
    Https,
}

impl Scheme {
    /// The port implied when a URL names none (RFC 3986 section 6.2.3).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn from_name(name: &str) -> Option<Scheme> {
        if name.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if name.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

/// A configured gateway's URL, parsed and normalised once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayTarget {
    /// The gateway's scheme.
    pub scheme: Scheme,
    /// Normalised host: lower case, no trailing dot, IPv4 in dotted-quad,
    /// IPv6 in brackets (`[::1]`).
    pub host: String,
    /// Explicit or default (80/443).
    pub port: u16,
    /// Normalised path prefix without trailing slash; "" means the whole host.
    pub prefix: String,
}

impl GatewayTarget {
    /// Parses a gateway URL from the config. Err(plain-words reason) for: not http/https,
    /// no host, user info, a query or fragment, whitespace/control characters.
    pub fn parse(url: &str) -> Result<GatewayTarget, String> {
        let parsed = parse_strict(url)?;
        if parsed.has_userinfo {
            return Err("gateway URL must not carry user info".into());
        }
        if parsed.url.query().is_some() || parsed.url.fragment().is_some() {
            return Err("gateway URL must not have a query or fragment".into());
        }

        let prefix = parsed.url.path().trim_end_matches('/');
        // Such a prefix could never match: callers' URLs with these escapes are refused.
        if disguises_path(prefix) {
            return Err(
                "gateway URL path must not contain %2e, %2f, %5c or a .; or ..; segment".into(),
            );
        }
        Ok(GatewayTarget {
            scheme: parsed.scheme,
            host: parsed.host,
            port: parsed.port,
            prefix: prefix.to_owned(),
        })
    }

    /// "host" or "host:port" when the port is not the scheme's default; used for the Host header.
    pub fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// host without IPv6 brackets, for TLS SNI / DNS.
    pub fn host_bare(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// True when `target` has the same scheme, host and port and its path lies inside the prefix
    /// at a segment boundary, and `target` is not disqualified (user info, encoded separators).
    pub fn matches(&self, target: &TargetUrl) -> bool {
        !target.has_userinfo
            && !target.disguises_path
            && self.scheme == target.scheme
            && self.host == target.host
            && self.port == target.port
            && within_prefix(target.path(), &self.prefix)
    }
}

/// A caller's URL after validation and normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    /// The caller's scheme, whatever case it was written in.
    pub scheme: Scheme,
    /// Same normalisation as `GatewayTarget::host`.
    pub host: String,
    /// Explicit or default (80/443).
    pub port: u16,
    /// Normalised path (dot segments removed, percent-encoding as the url crate leaves it)
    /// followed by "?query" when there is a query. Never contains a fragment. Starts with '/'.
    pub path_and_query: String,
    /// Length of the path part of path_and_query (before '?').
    pub path_len: usize,
    /// The URL carried user info ("user@", "user:pw@", or even a bare "@") — never matches.
    pub has_userinfo: bool,
    /// The path carries %2e, %2f or %5c (any case), or a `.;` or `..;` segment, after
    /// normalisation — never matches, because a gateway that decodes them or drops the
    /// parameter could be stepped outside the prefix.
    pub disguises_path: bool,
}

impl TargetUrl {
    /// The path part of `path_and_query`; "" if `path_len` is inconsistent, which never matches.
    pub fn path(&self) -> &str {
        self.path_and_query.get(..self.path_len).unwrap_or("")
    }
}

/// Parses the caller's `url` field. Err(plain-words reason, will be shown to the caller in a 400)
/// when it is not an absolute http/https URL with a host, or contains whitespace or control
/// characters (the WHATWG parser would silently strip tabs/newlines: we refuse instead), or
/// starts with spaces, or has an empty host such as "http:///x" (which WHATWG would accept).
pub fn parse_target(url: &str) -> Result<TargetUrl, String> {
    match crate::normal_url::parse_normal(url) {
        Some(target) => Ok(target),
        None => parse_full(url),
    }
}

/// [`parse_target`] through the full WHATWG parser, for any input.
pub fn parse_full(url: &str) -> Result<TargetUrl, String> {
    let parsed = parse_strict(url)?;
    let path = parsed.url.path();
    let path_and_query = match parsed.url.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    Ok(TargetUrl {
        scheme: parsed.scheme,
        host: parsed.host,
        port: parsed.port,
        path_len: path.len(),
        has_userinfo: parsed.has_userinfo,
        disguises_path: disguises_path(path),
        path_and_query,
    })
}

/// What gateway and caller URLs have in common once the strict checks passed.
struct StrictUrl {
    url: Url,
    scheme: Scheme,
    host: String,
    port: u16,
    has_userinfo: bool,
}

fn parse_strict(raw: &str) -> Result<StrictUrl, String> {
    let (scheme, raw_userinfo) = check_raw(raw)?;
    let url = Url::parse(raw).map_err(|e| format!("URL is not valid: {e}"))?;
    // RFC 3986 section 3.2.1: user info is deprecated and only ever hides the real host.
    let has_userinfo = raw_userinfo || !url.username().is_empty() || url.password().is_some();
    let port = url
        .port_or_known_default()
        .filter(|port| *port != 0)
        .ok_or(BAD_PORT)?;
    Ok(StrictUrl {
        host: normalised_host(&url)?,
        url,
        scheme,
        port,
        has_userinfo,
    })
}

/// Checks the raw text before WHATWG's lenient parser sees it. Returns the scheme and whether
/// the authority holds an '@', which the parser drops silently when the user info is empty.
fn check_raw(raw: &str) -> Result<(Scheme, bool), String> {
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BAD_CHARACTER.into());
    }
    let (name, rest) = raw.split_once(':').ok_or(NOT_ABSOLUTE)?;
    let scheme = Scheme::from_name(name).ok_or(NOT_ABSOLUTE)?;
    // WHATWG would accept "http:host", "http:/host" and "http:\\host"; RFC 3986 wants "//".
    let after = rest.strip_prefix("//").ok_or(NOT_ABSOLUTE)?;

    // For http(s) WHATWG ends the authority at '\' as well as at '/', '?' and '#'.
    let end = after.find(['/', '\\', '?', '#']).unwrap_or(after.len());
    let authority = &after[..end];
    if authority.is_empty() {
        return Err(NO_HOST.into());
    }
    Ok((scheme, authority.contains('@')))
}

fn normalised_host(url: &Url) -> Result<String, String> {
    let host = match url.host() {
        // A fully qualified name with its root dot names the same host (RFC 1034 section 3.1).
        Some(Host::Domain(name)) => name.strip_suffix('.').unwrap_or(name).to_owned(),
        Some(Host::Ipv4(addr)) => addr.to_string(),
        Some(Host::Ipv6(addr)) => format!("[{addr}]"),
        None => String::new(),
    };
    if host.is_empty() {
        return Err(NO_HOST.into());
    }
    Ok(host)
}

/// Encoded '.', '/' and '\' survive RFC 3986 section 5.2.4 remove_dot_segments, and so does
/// a dot segment with a parameter (`..;x`, RFC 2396 section 3.3), which servlet containers
/// such as Tomcat read as `..`. A gateway that decodes or strips them afterwards would
/// resolve a path outside the prefix we checked.
fn disguises_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    ["%2e", "%2f", "%5c"]
        .iter()
        .any(|code| lower.contains(code))
        || path
            .split('/')
            .any(|segment| segment.starts_with(".;") || segment.starts_with("..;"))
}

/// `prefix` is "" or starts with '/' and has no trailing '/', so the boundary is the next byte.
fn within_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with('/')
        && path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Expect::{Invalid, Match, NoMatch};

    #[derive(Debug, PartialEq)]
    enum Expect {
        Match(&'static str),
        NoMatch,
        Invalid,
    }

    const GW: &str = "http://127.0.0.1:8181";
    const APIS: &str = "http://127.0.0.1:8181/apis";

    const CASES: &[(&str, &str, Expect)] = &[
        // Exact match, case and trailing dot.
        (GW, "http://127.0.0.1:8181/", Match("/")),
        (GW, "http://127.0.0.1:8181", Match("/")),
        (GW, "HTTP://127.0.0.1:8181/x", Match("/x")),
        ("http://GW.Internal", "hTTp://gw.INTERNAL/x", Match("/x")),
        ("http://gw.internal", "http://gw.internal./x", Match("/x")),
        ("http://gw.internal.", "http://gw.internal/x", Match("/x")),
        (GW, "http://127.0.0.1.:8181/", Match("/")),
        // Ports and schemes.
        ("http://gw.internal", "http://gw.internal:80/x", Match("/x")),
        ("http://gw.internal:80", "http://gw.internal/x", Match("/x")),
        (
            "https://gw.internal",
            "https://gw.internal:443/x",
            Match("/x"),
        ),
        (GW, "http://127.0.0.1:8182/", NoMatch),
        (GW, "http://127.0.0.1/", NoMatch),
        (GW, "https://127.0.0.1:8181/", NoMatch),
        ("https://gw.internal", "http://gw.internal:443/", NoMatch),
        (GW, "http://127.0.0.1:0/", Invalid),
        (GW, "http://127.0.0.1:65536/", Invalid),
        // IP literals compare as addresses.
        (GW, "http://0x7f.0.0.1:8181/", Match("/")),
        (GW, "http://2130706433:8181/", Match("/")),
        (GW, "http://127.1:8181/", Match("/")),
        (GW, "http://0177.0.0.1:8181/", Match("/")),
        (
            "http://[::1]:8181",
            "http://[0:0:0:0:0:0:0:1]:8181/",
            Match("/"),
        ),
        ("http://[::1]:8181", "http://[::1]:8181/a", Match("/a")),
        (GW, "http://[::ffff:127.0.0.1]:8181/", NoMatch),
        (GW, "http://[::1]:8181/", NoMatch),
        // RFC 3986 section 3.2.1: user info never matches.
        (GW, "http://user@127.0.0.1:8181/", NoMatch),
        (GW, "http://user:pw@127.0.0.1:8181/", NoMatch),
        (GW, "http://@127.0.0.1:8181/", NoMatch),
        (GW, "http://:@127.0.0.1:8181/", NoMatch),
        (GW, "http://127.0.0.1:8181@evil.com/", NoMatch),
        (GW, "http://evil.com\\@127.0.0.1:8181/", NoMatch),
        // Names that only share a prefix.
        (GW, "http://127.0.0.1.evil.com:8181/", NoMatch),
        ("http://gw.internal", "http://gw.internal.evil/", NoMatch),
        ("http://gw.internal", "http://evilgw.internal/", NoMatch),
        // RFC 3986 section 5.2.4: dot segments are removed before the prefix test.
        (APIS, "http://127.0.0.1:8181/apis/../admin", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis/./x", Match("/apis/x")),
        (APIS, "http://127.0.0.1:8181/apis/x/../y", Match("/apis/y")),
        (APIS, "http://127.0.0.1:8181/x/../apis/y", Match("/apis/y")),
        (APIS, "http://127.0.0.1:8181/apis/..", NoMatch),
        // Encoded dots and separators.
        (APIS, "http://127.0.0.1:8181/apis/%2e%2e/admin", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis/%2E%2e/admin", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis/.%2e/admin", NoMatch),
        (
            APIS,
            "http://127.0.0.1:8181/apis/x/%2e%2e/y",
            Match("/apis/y"),
        ),
        (APIS, "http://127.0.0.1:8181/apis/..%2fadmin", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis/a%2fb", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis/a%2Fb", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis/..%5cadmin", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis/a%2eb", NoMatch),
        // Dot segments with a parameter, which servlet containers read as dot segments.
        (APIS, "http://127.0.0.1:8181/apis/..;/admin", NoMatch),
        (
            APIS,
            "http://127.0.0.1:8181/apis/..;jsessionid=1/admin",
            NoMatch,
        ),
        (APIS, "http://127.0.0.1:8181/apis/.;/x", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis/x/..;", NoMatch),
        (
            APIS,
            "http://127.0.0.1:8181/apis/a;b/..c;d",
            Match("/apis/a;b/..c;d"),
        ),
        (
            APIS,
            "http://127.0.0.1:8181/apis/...;x",
            Match("/apis/...;x"),
        ),
        (
            APIS,
            "http://127.0.0.1:8181/apis/x?q=%2f",
            Match("/apis/x?q=%2f"),
        ),
        // WHATWG reads '\' as '/' in http(s) paths, so it cannot hide a dot segment.
        (APIS, "http://127.0.0.1:8181/apis\\..\\admin", NoMatch),
        (APIS, "http://127.0.0.1:8181/apis\\x", Match("/apis/x")),
        // Prefix boundary.
        (APIS, "http://127.0.0.1:8181/apis", Match("/apis")),
        (APIS, "http://127.0.0.1:8181/apis/", Match("/apis/")),
        (APIS, "http://127.0.0.1:8181/apisx", NoMatch),
        (APIS, "http://127.0.0.1:8181/api", NoMatch),
        (APIS, "http://127.0.0.1:8181/", NoMatch),
        (APIS, "http://127.0.0.1:8181/APIS/x", NoMatch),
        (
            "http://127.0.0.1:8181/apis/",
            "http://127.0.0.1:8181/apis",
            Match("/apis"),
        ),
        // Query kept, fragment dropped.
        (GW, "http://127.0.0.1:8181/x?a=1&b=2", Match("/x?a=1&b=2")),
        (GW, "http://127.0.0.1:8181/x?a=1#frag", Match("/x?a=1")),
        (GW, "http://127.0.0.1:8181/x#frag", Match("/x")),
        (GW, "http://127.0.0.1:8181?a=1", Match("/?a=1")),
        // Not an absolute http(s) URL with a host.
        (GW, "ftp://127.0.0.1:8181/", Invalid),
        (GW, "javascript:alert(1)", Invalid),
        (GW, "/apis/x", Invalid),
        (GW, "//127.0.0.1:8181/x", Invalid),
        (GW, "http:///x", Invalid),
        (GW, "http://", Invalid),
        (GW, "http:127.0.0.1:8181/", Invalid),
        (GW, "http:/127.0.0.1:8181/", Invalid),
        (GW, "http:\\\\127.0.0.1:8181/", Invalid),
        (GW, "http://?a=1", Invalid),
        (GW, "http://:8181/", Invalid),
        (GW, "", Invalid),
        // Whitespace and control characters are refused, not stripped.
        (GW, "http://127.0.0.1:8181/a\tb", Invalid),
        (GW, "http://127.0.0.1:8181/a\nb", Invalid),
        (GW, "http://127.0.0.1:8181/a b", Invalid),
        (GW, " http://127.0.0.1:8181/", Invalid),
        (GW, "http://127.0.0.1:8181/\u{0}", Invalid),
    ];

    /// Describes the row's failure, or None when the outcome is the expected one.
    fn check(gw: &str, url: &str, expected: &Expect) -> Option<String> {
        let gateway = GatewayTarget::parse(gw).expect("gateway in table parses");
        let got = parse_target(url);
        let as_expected = match (&got, expected) {
            (Err(_), Invalid) => true,
            (Ok(target), Match(sent)) => gateway.matches(target) && target.path_and_query == *sent,
            (Ok(target), NoMatch) => !gateway.matches(target),
            _ => false,
        };
        (!as_expected).then(|| format!("{gw} / {url:?}: want {expected:?}, got {got:?}"))
    }

    #[test]
    fn matches_caller_urls_as_the_table_says() {
        let failures: Vec<String> = CASES
            .iter()
            .filter_map(|(gw, url, expected)| check(gw, url, expected))
            .collect();
        assert!(CASES.len() >= 45);
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn rejects_gateway_url_with_query_or_fragment() {
        assert!(GatewayTarget::parse("http://gw.internal/apis?x=1").is_err());
        assert!(GatewayTarget::parse("http://gw.internal/apis?").is_err());
        assert!(GatewayTarget::parse("http://gw.internal/apis#top").is_err());
    }

    #[test]
    fn rejects_userinfo_in_gateway_url() {
        assert!(GatewayTarget::parse("http://user:pw@gw.internal").is_err());
        assert!(GatewayTarget::parse("http://@gw.internal").is_err());
    }

    #[test]
    fn rejects_gateway_url_that_is_not_http_or_has_no_host() {
        for url in [
            "ftp://gw.internal",
            "gw.internal",
            "http:///apis",
            "http://",
            "",
        ] {
            assert!(GatewayTarget::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn rejects_gateway_url_with_whitespace_or_encoded_separator() {
        assert!(GatewayTarget::parse("http://gw.internal/a pis").is_err());
        assert!(GatewayTarget::parse("http://gw.internal/a%2fb").is_err());
        assert!(GatewayTarget::parse("http://gw.internal/a/..;/b").is_err());
    }

    #[test]
    fn normalises_gateway_url_once() {
        let gateway = GatewayTarget::parse("HTTPS://GW.Internal.:443/apis/").expect("valid");
        assert_eq!(gateway.scheme, Scheme::Https);
        assert_eq!(gateway.host, "gw.internal");
        assert_eq!(gateway.port, 443);
        assert_eq!(gateway.prefix, "/apis");
        let root = GatewayTarget::parse("http://gw.internal/").expect("valid");
        assert_eq!(root.prefix, "");
    }

    #[test]
    fn authority_omits_default_port_and_host_bare_drops_brackets() {
        let authority = |url: &str| GatewayTarget::parse(url).expect("valid").authority();
        assert_eq!(authority("http://127.0.0.1:8181"), "127.0.0.1:8181");
        assert_eq!(authority("https://gw.internal:443/apis"), "gw.internal");
        assert_eq!(authority("http://gw.internal:443"), "gw.internal:443");
        assert_eq!(authority("https://[::1]:8443"), "[::1]:8443");
        let ipv6 = GatewayTarget::parse("https://[::1]:8443").expect("valid");
        assert_eq!(ipv6.host_bare(), "::1");
    }

    #[test]
    fn reports_userinfo_and_encoded_separators_on_target() {
        let target = parse_target("http://u@h/a%2Fb?x=%2f").expect("valid");
        assert!(target.has_userinfo);
        assert!(target.disguises_path);
        assert_eq!(target.path(), "/a%2Fb");
        assert_eq!(target.path_and_query, "/a%2Fb?x=%2f");
    }

    #[test]
    fn never_matches_a_target_with_inconsistent_path_len() {
        let gateway = GatewayTarget::parse(GW).expect("valid");
        let mut target = parse_target("http://127.0.0.1:8181/x").expect("valid");
        target.path_len = 99;
        assert!(!gateway.matches(&target));
    }
}
