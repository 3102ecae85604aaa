//! Arbitrary caller URLs against fixed gateways: a match never leaves the
//! gateway's host, port or path prefix.

#![no_main]

use std::sync::OnceLock;

use gwproxy::gateway_match::{parse_target, GatewayTarget};
use libfuzzer_sys::fuzz_target;

const GATEWAYS: [&str; 6] = [
    "http://127.0.0.1:8181",
    "http://127.0.0.1:8181/apis",
    "https://gw.internal/apis/v1/",
    "http://gw.internal:80/a.b",
    "https://[::1]:8443/x",
    "http://gw.internal./",
];

fn gateways() -> &'static [GatewayTarget] {
    static PARSED: OnceLock<Vec<GatewayTarget>> = OnceLock::new();
    PARSED.get_or_init(|| {
        GATEWAYS
            .iter()
            .map(|url| GatewayTarget::parse(url).expect("fixed gateway parses"))
            .collect()
    })
}

fuzz_target!(|url: &str| {
    let Ok(target) = parse_target(url) else {
        return;
    };
    assert!(target.path_and_query.starts_with('/'), "{url:?} → {target:?}");

    for gateway in gateways() {
        if !gateway.matches(&target) {
            continue;
        }
        assert_eq!(target.scheme, gateway.scheme, "{url:?}");
        assert_eq!(target.host, gateway.host, "{url:?}");
        assert_eq!(target.port, gateway.port, "{url:?}");

        let path = target.path();
        let rest = path
            .strip_prefix(gateway.prefix.as_str())
            .unwrap_or_else(|| panic!("{url:?}: {path:?} outside {:?}", gateway.prefix));
        assert!(
            rest.is_empty() || rest.starts_with('/'),
            "{url:?}: {path:?} not at a segment boundary of {:?}",
            gateway.prefix
        );
        assert!(
            !path.split('/').any(|segment| segment == ".."),
            "{url:?}: {path:?} keeps a dot-dot segment"
        );
        assert!(!target.has_userinfo && !target.disguises_path);
    }
});
