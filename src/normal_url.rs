//! Recognises caller URLs already in normal form, so the common case skips the full parser.
//!
//! Most `/api/proxy` URLs look like `http://gw.internal:8080/apis/x?y=1`: the
//! WHATWG parser would return them unchanged. For exactly those, this module
//! builds the [`TargetUrl`] directly; anything it is not sure of (upper case,
//! `%`, dot segments, IP spellings, IDNA, `\`, `@`, `#`, odd characters)
//! returns `None` and goes through [`crate::gateway_match::parse_target`]'s
//! full path. A differential test holds the two to the same answers.

use crate::gateway_match::{Scheme, TargetUrl};

/// The [`TargetUrl`] for `raw` when it is already normal, else `None`.
pub fn parse_normal(raw: &str) -> Option<TargetUrl> {
    let (scheme, rest) = if let Some(rest) = raw.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        (Scheme::Https, raw.strip_prefix("https://")?)
    };

    let authority_end = rest
        .bytes()
        .position(|b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (host, port) = split_port(authority, scheme)?;
    if !(is_plain_domain(host) || is_canonical_ipv4(host)) {
        return None;
    }

    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    if !is_normal_path(path) || !query.is_none_or(is_normal_query) {
        return None;
    }

    // An empty path is "/" for http(s) (WHATWG URL, path state).
    let path = if path.is_empty() { "/" } else { path };
    let mut path_and_query = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    path_and_query.push_str(path);
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Some(TargetUrl {
        scheme,
        host: host.to_owned(),
        port,
        path_len: path.len(),
        path_and_query,
        has_userinfo: false,
        disguises_path: false,
    })
}

/// `host` and its port (explicit, or the scheme's default). An explicit
/// port must be plain decimal without leading zeros, 1 to 65535.
fn split_port(authority: &str, scheme: Scheme) -> Option<(&str, u16)> {
    let Some((host, digits)) = authority.split_once(':') else {
        return Some((authority, scheme.default_port()));
    };
    let plain = !digits.is_empty()
        && digits.len() <= 5
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    let port = digits.parse::<u16>().ok().filter(|_| plain)?;
    Some((host, port))
}

/// Lower-case ASCII labels of letters, digits and hyphens, with no empty
/// label and no trailing dot. A last label that starts with a digit could
/// be read as an IPv4 number, and `xn--` labels go through IDNA: both are
/// left to the full parser.
fn is_plain_domain(host: &str) -> bool {
    let host = host.as_bytes();
    let plain_label = |label: &[u8]| {
        !label.is_empty()
            && !label.starts_with(b"xn--")
            && label
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let last = host.rsplit(|&b| b == b'.').next().unwrap_or_default();
    split_bytes(host, b'.').all(plain_label) && !last.first().is_some_and(u8::is_ascii_digit)
}

/// Four decimal octets, 0 to 255, without leading zeros: the form the
/// parser would print anyway.
fn is_canonical_ipv4(host: &str) -> bool {
    let mut octets = 0;
    let canonical = split_bytes(host.as_bytes(), b'.').all(|octet| {
        octets += 1;
        is_canonical_octet(octet)
    });
    canonical && octets == 4
}

fn is_canonical_octet(octet: &[u8]) -> bool {
    let digits = !octet.is_empty() && octet.len() <= 3 && octet.iter().all(u8::is_ascii_digit);
    digits
        && (octet.len() == 1 || octet[0] != b'0')
        && octet
            .iter()
            .fold(0u32, |value, &digit| value * 10 + u32::from(digit - b'0'))
            <= 255
}

/// `bytes` split at each `separator`. (`str::split` looks for a char with
/// memchr, which costs more on these short strings than it saves.)
fn split_bytes(bytes: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    bytes.split(move |&b| b == separator)
}

/// Characters that the WHATWG parser copies unchanged in both path and
/// query of an http(s) URL (RFC 3986 unreserved and most sub-delims).
fn is_plain_byte(b: u8) -> bool {
    PLAIN[usize::from(b)]
}

/// [`is_plain_byte`] as a table: it is asked of every byte of every URL.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < table.len() {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~!$&()*+,;=:@";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

/// "" or "/…" with only plain bytes and no "." or ".." segment, with or
/// without a `;` parameter. `%` is excluded: an escaped dot is still a dot
/// segment to the parser.
fn is_normal_path(path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    let dotted = |segment: &[u8]| {
        matches!(segment, b"." | b"..") || segment.starts_with(b".;") || segment.starts_with(b"..;")
    };
    path.starts_with('/')
        && path.bytes().all(|b| b == b'/' || is_plain_byte(b))
        && !split_bytes(path.as_bytes(), b'/').any(dotted)
}

/// Plain bytes plus `/`, `?` and well-formed `%XX` escapes, which the
/// parser leaves as they are in a query.
fn is_normal_query(query: &str) -> bool {
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let Some(escape) = bytes.get(i + 1..i + 3) else {
                    return false;
                };
                if !escape.iter().all(u8::is_ascii_hexdigit) {
                    return false;
                }
                i += 3;
                continue;
            }
            b'/' | b'?' => {}
            b if is_plain_byte(b) => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway_match::parse_full;

    #[test]
    fn takes_common_urls() {
        for url in [
            "http://127.0.0.1:8181/test-oas/get",
            "http://gw.internal/apis/x?y=1&z=%20",
            "https://gw-1.example.com:8443",
            "http://localhost:3000/a//b/?",
            "https://10.0.0.1/x;y=1/@z:w",
        ] {
            assert!(parse_normal(url).is_some(), "{url}");
        }
    }

    #[test]
    fn leaves_everything_unusual_to_the_full_parser() {
        for url in [
            "HTTP://gw/x",
            "http://GW/x",
            "http://gw./x",
            "http://gw/a/../b",
            "http://gw/a/./b",
            "http://gw/a/%2e%2e/b",
            "http://gw/a%20b",
            "http://u@gw/",
            "http://gw/#frag",
            "http://gw\\x",
            "http://0x7f.1/",
            "http://127.1/",
            "http://1.2.3.04/",
            "http://gw.123/",
            "http://xn--bcher-kva.example/",
            "http://[::1]/",
            "http://gw:080/",
            "http://gw:/",
            "http://gw/a b",
            "http://gw/é",
            "http://gw/?a=%zz",
            "http://gw/?it's",
            "ftp://gw/",
        ] {
            assert!(parse_normal(url).is_none(), "{url}");
        }
    }

    /// The fast path may only ever give the full parser's answer.
    #[test]
    fn agrees_with_the_full_parser_on_random_urls() {
        const SCHEMES: &[&str] = &["http://", "https://", "HTTP://", "http:/", "http:"];
        const HOSTS: &[&str] = &[
            "gw",
            "GW",
            "gw.internal",
            "a-b.c",
            "gw.",
            "127.0.0.1",
            "1.2.3",
            "256.1.1.1",
            "1.2.3.04",
            "0.0.0.0",
            "255.255.255.255",
            "1.2.3.4.5",
            "1.2..4",
            "0x7f.1",
            "xn--x",
            "[::1]",
            "",
            "gw.1a",
            "u@gw",
            "é",
        ];
        const PORTS: &[&str] = &["", ":80", ":443", ":8080", ":0", ":099", ":65536", ":"];
        const SEGMENTS: &[&str] = &[
            "/", "/a", "/.", "/..", "/%2e", "/%41", "//", "/~x", "/a b", "/é", "/@", "/:", "\\x",
            "#f", "/a;b=c", "/.a", "/..b",
        ];
        const QUERIES: &[&str] = &["", "?", "?a=1", "?%zz", "?%41", "?'", "?a/b?c", "?#"];

        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut pick = |options: &[&'static str]| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            options[(seed % options.len() as u64) as usize]
        };

        let mut taken = 0;
        for _ in 0..100_000 {
            let mut url = format!("{}{}{}", pick(SCHEMES), pick(HOSTS), pick(PORTS));
            for _ in 0..pick(&["0", "1", "2", "3"]).parse::<usize>().unwrap_or(0) {
                url.push_str(pick(SEGMENTS));
            }
            url.push_str(pick(QUERIES));
            if let Some(fast) = parse_normal(&url) {
                taken += 1;
                assert_eq!(Ok(fast), parse_full(&url), "{url}");
            }
        }
        // About 1.5% of generated URLs are normal; make sure many were compared.
        assert!(
            taken > 1_000,
            "the generator should reach the fast path often ({taken})"
        );
    }
}
