//! `GWPROXY_<KEY>` environment overrides for the common keys, like the Dashboard's `TYK_DB_` ones.
//!
//! `GWPROXY_LISTEN=0.0.0.0:3000` sets `listen`;
//! `GWPROXY_TIMEOUTS_RESPONSE_MS=10000` sets `timeouts.response_ms`. A value
//! that reads as a JSON number or boolean is one; anything else is a string.
//! Overrides are applied to the parsed file before validation, so a bad
//! value is reported with its key path like any other problem.

use serde_json::{Map, Value};

use super::ConfigProblem;

/// Every key that an environment variable may set.
const OVERRIDABLE: &[&str] = &[
    "listen",
    "workers",
    "reuse_port",
    "log.level",
    "log.format",
    "log.access_log",
    "log.access_log_sample",
    "metrics.enabled",
    "metrics.listen",
    "limits.max_request_body_bytes",
    "limits.max_response_body_bytes",
    "limits.max_response_header_count",
    "limits.max_header_count",
    "limits.max_header_bytes",
    "limits.max_concurrent_requests",
    "limits.max_connections",
    "timeouts.request_header_ms",
    "timeouts.request_body_ms",
    "timeouts.idle_ms",
    "timeouts.connect_ms",
    "timeouts.response_ms",
    "timeouts.shutdown_grace_ms",
    "pool.max_idle_per_gateway",
    "pool.idle_timeout_ms",
    "pool.h2_max_streams_per_connection",
];

/// Sections in which every variable is an override: a name under one of
/// them that sets no key is a typo, and a typo must not silently leave a
/// limit at its default.
const SECTIONS: &[&str] = &["LIMITS_", "TIMEOUTS_", "POOL_", "LOG_", "METRICS_"];

/// A problem for each variable in `names` that looks like an override of
/// a section's key but names none.
pub fn unknown(names: impl Iterator<Item = String>) -> Vec<ConfigProblem> {
    let in_a_section = |name: &str| {
        name.strip_prefix("GWPROXY_")
            .is_some_and(|rest| SECTIONS.iter().any(|section| rest.starts_with(section)))
    };
    names
        .filter(|name| in_a_section(name))
        .filter(|name| !OVERRIDABLE.iter().any(|key| variable_for(key) == *name))
        .map(|name| ConfigProblem::new(&name, "sets no config key; see the README's list"))
        .collect()
}

/// The variable that overrides `key`: `limits.max_connections` →
/// `GWPROXY_LIMITS_MAX_CONNECTIONS`.
pub fn variable_for(key: &str) -> String {
    format!("GWPROXY_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Sets each overridable key whose variable `lookup` finds. Keys under a
/// section that is not an object are left for validation to report.
pub fn apply(config: &mut Value, lookup: &dyn Fn(&str) -> Option<String>) {
    for key in OVERRIDABLE {
        let Some(raw) = lookup(&variable_for(key)) else {
            continue;
        };
        let value = match serde_json::from_str::<Value>(&raw) {
            Ok(value @ (Value::Number(_) | Value::Bool(_))) => value,
            _ => Value::String(raw),
        };
        set(config, key, value);
    }
}

fn set(config: &mut Value, key: &str, value: Value) {
    let Some(top) = config.as_object_mut() else {
        return;
    };
    match key.split_once('.') {
        None => {
            top.insert(key.to_owned(), value);
        }
        Some((section, field)) => {
            let entry = top
                .entry(section)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(section) = entry.as_object_mut() {
                section.insert(field.to_owned(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_variables_after_key_paths() {
        assert_eq!(variable_for("listen"), "GWPROXY_LISTEN");
        assert_eq!(
            variable_for("timeouts.response_ms"),
            "GWPROXY_TIMEOUTS_RESPONSE_MS"
        );
    }

    #[test]
    fn reports_variables_in_a_section_that_set_no_key() {
        let names = [
            "GWPROXY_LIMITS_MAX_REQUEST_BODY_BYTE",
            "GWPROXY_LIMITS_MAX_REQUEST_BODY_BYTES",
            "GWPROXY_POOL_BOGUS",
            "GWPROXY_SECRET",
            "GWPROXY_BIN",
            "PATH",
        ];
        let problems = unknown(names.iter().map(|n| n.to_string()));
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            ["GWPROXY_LIMITS_MAX_REQUEST_BODY_BYTE", "GWPROXY_POOL_BOGUS"]
        );
    }

    #[test]
    fn sets_numbers_booleans_and_strings_creating_sections() {
        let mut config = json!({ "listen": "127.0.0.1:1", "limits": { "max_connections": 5 } });
        let env = |name: &str| match name {
            "GWPROXY_LISTEN" => Some("0.0.0.0:3000".to_owned()),
            "GWPROXY_LIMITS_MAX_CONNECTIONS" => Some("9".to_owned()),
            "GWPROXY_LOG_ACCESS_LOG" => Some("true".to_owned()),
            "GWPROXY_TIMEOUTS_RESPONSE_MS" => Some("soon".to_owned()),
            _ => None,
        };
        apply(&mut config, &env);
        assert_eq!(
            config,
            json!({
                "listen": "0.0.0.0:3000",
                "limits": { "max_connections": 9 },
                "log": { "access_log": true },
                "timeouts": { "response_ms": "soon" },
            })
        );
    }
}
