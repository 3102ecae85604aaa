//! Black-box tests of gwproxy's operability: request ids, the access log,
//! SIGHUP reload and `GWPROXY_<KEY>` overrides (README, "Operating it" and
//! "Command line"), over real sockets against the binary. `/metrics` has
//! `tests/metrics.rs`.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

use common::ops::*;
use common::{parse_json, temp_path, Gwproxy, Upstream, SECRET};

// ================================================================ tests: request ids

#[tokio::test]
async fn a_callers_request_id_is_sent_to_the_gateway_and_echoed() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));

    let longest = "r".repeat(128);
    for given in ["caller-id-42.ABC", "{quoted:\"~!}", longest.as_str()] {
        let headers = [("x-request-id", given)];
        let (status, headers, _) =
            proxy_as(gw.addr, SECRET, &get(&gateway.url("/id")), &headers).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(request_id(&headers), given);
        assert_eq!(gateway.last().headers["x-request-id"], given);
    }

    // The caller's JSON headers may name the gateway's id themselves.
    let request = json!({
        "method": "GET",
        "url": gateway.url("/own"),
        "headers": { "X-Request-Id": "for-the-gateway" },
    });
    let headers = [("x-request-id", "from-the-caller")];
    let (status, headers, _) = proxy_as(gw.addr, SECRET, &request, &headers).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(request_id(&headers), "from-the-caller");
    let sent: Vec<_> = gateway
        .last()
        .headers
        .get_all("x-request-id")
        .iter()
        .cloned()
        .collect();
    assert_eq!(sent, ["for-the-gateway"]);
}

#[tokio::test]
async fn a_missing_or_unusable_request_id_is_replaced_by_a_fresh_generated_one() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));

    let too_long = "r".repeat(129);
    let cases: [Option<&str>; 5] = [
        None,
        Some(&too_long),
        Some("has space"),
        Some("tab\there"),
        Some(""),
    ];
    let mut ids = HashSet::new();
    for given in cases {
        let headers: Vec<(&str, &str)> = given.map(|id| ("x-request-id", id)).into_iter().collect();
        let (status, headers, _) =
            proxy_as(gw.addr, SECRET, &get(&gateway.url("/id")), &headers).await;
        assert_eq!(status, StatusCode::OK);
        let id = request_id(&headers);
        assert!(is_generated_id(&id), "{given:?} was answered with {id:?}");
        assert_eq!(gateway.last().headers["x-request-id"], id.as_str());
        assert!(ids.insert(id), "a generated id repeated");
    }
}

#[tokio::test]
async fn error_responses_carry_the_request_id_too() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));
    let given = [("x-request-id", "err-7")];

    let (status, headers, _) = plain_with(gw.addr, Method::GET, "/nowhere", &given).await;
    assert_eq!(
        (status, request_id(&headers).as_str()),
        (StatusCode::NOT_FOUND, "err-7")
    );
    let (status, headers, _) = plain_with(gw.addr, Method::GET, "/api/proxy", &given).await;
    assert_eq!(
        (status, request_id(&headers).as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "err-7")
    );
    let (status, headers, _) =
        proxy_as(gw.addr, WRONG_SECRET, &get(&gateway.url("/")), &given).await;
    assert_eq!(
        (status, request_id(&headers).as_str()),
        (StatusCode::UNAUTHORIZED, "err-7")
    );
    let (status, headers, _) = proxy_as(gw.addr, SECRET, &get("http://127.0.0.1:9/"), &given).await;
    assert_eq!(
        (status, request_id(&headers).as_str()),
        (StatusCode::FORBIDDEN, "err-7")
    );

    let (status, headers, _) = plain(gw.addr, Method::GET, "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(is_generated_id(&request_id(&headers)));
    assert_eq!(gateway.count(), 0, "no error reached the gateway");
}

// ================================================================ tests: access log

/// A config without users is valid (SPEC.md), but serves nothing but 401s:
/// start-up says so once.
#[tokio::test]
async fn starting_without_users_warns_that_every_request_is_refused() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let mut config = Gwproxy::config(&[&gateway.url("")], json!({}));
    config["users"] = json!([]);
    let gw = Gwproxy::start(config);
    let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/x")), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    flush_logs(&gw).await;
    let stderr = gw.stderr();
    let warnings = stderr.lines().filter(|l| l.contains("no users")).count();
    assert_eq!(warnings, 1, "{stderr}");

    let with_users = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));
    flush_logs(&with_users).await;
    assert!(
        !with_users.stderr().contains("no users"),
        "{}",
        with_users.stderr()
    );
}

#[tokio::test]
async fn the_access_log_is_off_by_default() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));
    for _ in 0..3 {
        let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/quiet")), &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    flush_logs(&gw).await;
    let stderr = gw.stderr();
    assert_eq!(access_lines(&stderr), Vec::<&str>::new(), "{stderr}");
}

#[tokio::test]
async fn the_access_log_has_one_text_line_per_proxy_request_with_its_figures() {
    let gateway = Upstream::fixed(201, "text/plain", b"created").await;
    let url = gateway.url("");
    let extra = json!({ "log": { "access_log": true } });
    let gw = Gwproxy::start(Gwproxy::config(&[&url], extra));

    let request = get(&gateway.url("/made"));
    let (status, _, body) = proxy_as(gw.addr, SECRET, &request, &[("x-request-id", "t-1")]).await;
    assert_eq!(status, StatusCode::OK);
    let refused = proxy_as(gw.addr, WRONG_SECRET, &request, &[("x-request-id", "t-2")]).await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
    // Neither health checks nor scrapes are access-logged.
    assert_eq!(
        plain(gw.addr, Method::GET, "/hello").await.0,
        StatusCode::OK
    );
    assert_eq!(
        plain(gw.addr, Method::GET, "/metrics").await.0,
        StatusCode::OK
    );
    flush_logs(&gw).await;

    let stderr = gw.stderr();
    let lines = access_lines(&stderr);
    assert_eq!(lines.len(), 2, "{stderr}");
    let ok = text_fields(
        lines
            .iter()
            .find(|l| l.contains("t-1"))
            .expect("t-1 logged"),
    );
    let request_bytes = request.to_string().len().to_string();
    let response_bytes = body.len().to_string();
    let expected = [
        ("request_id", "t-1"),
        ("user", "tester"),
        ("method", "GET"),
        ("gateway", url.as_str()),
        ("status", "200"),
        ("gateway_status", "201"),
        ("request_bytes", request_bytes.as_str()),
        ("response_bytes", response_bytes.as_str()),
    ];
    for (key, value) in expected {
        assert_eq!(ok.get(key), Some(&value), "{key} in {ok:?}");
    }
    assert_durations(ok["duration_ms"], ok["gateway_ms"]);

    let no = text_fields(
        lines
            .iter()
            .find(|l| l.contains("t-2"))
            .expect("t-2 logged"),
    );
    assert_eq!(
        (no["status"], no["user"], no["gateway"]),
        ("401", "-", "-"),
        "{no:?}"
    );
    assert!(!stderr.contains(SECRET) && !stderr.contains(WRONG_SECRET));
}

/// Both are milliseconds; the whole request includes the gateway's part.
fn assert_durations(total: &str, gateway: &str) {
    let total: f64 = total.parse().expect("duration_ms is a number");
    let gateway: f64 = gateway.parse().expect("gateway_ms is a number");
    assert!(gateway > 0.0 && total >= gateway, "{total} {gateway}");
    assert!(total < PROMPT.as_millis() as f64, "{total}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_access_lines_hold_the_figures() {
    let gateway = Upstream::fixed(201, "application/json", br#"{"made":1}"#).await;
    let url = gateway.url("");
    let extra = json!({ "log": { "access_log": true, "format": "json" } });
    let gw = Gwproxy::start(Gwproxy::config(&[&url], extra));

    let request = json!({ "method": "post", "url": gateway.url("/made"), "body": {"n": 1} });
    let (status, _, body) = proxy_as(gw.addr, SECRET, &request, &[("x-request-id", "j-1")]).await;
    assert_eq!(status, StatusCode::OK);
    flush_logs(&gw).await;

    let stderr = gw.stderr();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "gwproxy::access")
        .collect();
    assert_eq!(access.len(), 1, "{stderr}");
    let (line, fields) = (access[0], &access[0]["fields"]);
    assert_eq!(line["level"], "INFO");
    let expected = json!({
        "message": "request", "request_id": "j-1", "user": "tester", "method": "POST",
        "gateway": url, "status": 200, "gateway_status": 201,
        "request_bytes": request.to_string().len(), "response_bytes": body.len(),
    });
    for (key, value) in expected.as_object().expect("object") {
        assert_eq!(&fields[key], value, "{key} in {fields}");
    }
    let number = |key: &str| {
        fields[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {fields}"))
    };
    assert_durations(
        &number("duration_ms").to_string(),
        &number("gateway_ms").to_string(),
    );
}

#[tokio::test]
async fn an_access_log_sample_of_one_half_logs_every_second_request() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    // One worker: each worker samples its own requests.
    let extra = json!({ "workers": 1, "log": { "access_log": true, "access_log_sample": 0.5 } });
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], extra));

    for n in 0..8 {
        let id = format!("s-{n}");
        let headers = [("x-request-id", id.as_str())];
        let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/s")), &headers).await;
        assert_eq!(status, StatusCode::OK);
    }
    flush_logs(&gw).await;

    let stderr = gw.stderr();
    let logged: Vec<usize> = access_lines(&stderr)
        .iter()
        .map(|line| {
            let id = text_fields(line)["request_id"];
            id.trim_start_matches("s-").parse().expect("a test id")
        })
        .collect();
    assert_eq!(logged.len(), 4, "{stderr}");
    assert!(logged.windows(2).all(|w| w[1] == w[0] + 2), "{logged:?}");
}

// ================================================================ tests: reload

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_users_and_gateways_while_a_request_in_flight_finishes() {
    let (release, release_rx) = watch::channel(false);
    let (held, mut arrived) = held_gateway(release_rx).await;
    let old = Upstream::fixed(200, "text/plain", b"old").await;
    let new = Upstream::fixed(200, "text/plain", b"new").await;
    // One worker, so that every connection sees the reload at once.
    let gw = Gwproxy::start(Gwproxy::config(
        &[&held, &old.url("")],
        json!({ "workers": 1 }),
    ));
    for _ in 0..2 {
        assert_eq!(
            proxy_as(gw.addr, SECRET, &get(&old.url("/")), &[]).await.0,
            StatusCode::OK
        );
    }

    let (addr, slow) = (gw.addr, get(&format!("{held}/slow")));
    let in_flight = tokio::spawn(async move { proxy_as(addr, SECRET, &slow, &[]).await });
    next_arrival(&mut arrived).await;

    let mut next = Gwproxy::config(&[&new.url("")], json!({ "workers": 1 }));
    next["users"] = json!([{ "name": "second", "secret": OTHER_SECRET }]);
    write_config(&gw, &next.to_string());
    gw.signal("HUP");
    let (addr, to_new) = (gw.addr, get(&new.url("/")));
    eventually("the new user reaches the new gateway", move || {
        let request = to_new.clone();
        async move { proxy_as(addr, OTHER_SECRET, &request, &[]).await.0 == StatusCode::OK }
    })
    .await;
    assert_eq!(
        proxy_as(gw.addr, SECRET, &get(&new.url("/")), &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        proxy_as(gw.addr, OTHER_SECRET, &get(&old.url("/")), &[])
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    release.send(true).expect("release the gateway");
    let (status, _, body) = in_flight.await.expect("in-flight request task");
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(parse_json(&body)["body"], "held");

    // Counters of the gateways that are gone survive the reload.
    let metrics = scrape(gw.addr).await;
    let count = |url: &str| {
        let labels = [("route", "/api/proxy"), ("status", "200"), ("gateway", url)];
        metrics.present("gwproxy_requests_total", &labels)
    };
    assert_eq!(
        (count(&old.url("")), count(&held)),
        (2.0, 1.0),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn sighup_with_a_bad_file_keeps_the_old_config_and_names_the_problem() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(&[&gateway.url("")], json!({})));
    let request = get(&gateway.url("/still"));

    write_config(&gw, "{ \"listen\": ");
    gw.signal("HUP");
    stderr_until(&gw, "the JSON error", |s| s.contains("not valid JSON")).await;
    assert_eq!(
        proxy_as(gw.addr, SECRET, &request, &[]).await.0,
        StatusCode::OK
    );

    // Valid JSON with a new user, but one misspelt key: nothing changes.
    let mut typo = Gwproxy::config(&[&gateway.url("")], json!({ "limits": { "max_bodyy": 1 } }));
    typo["users"] = json!([{ "name": "second", "secret": OTHER_SECRET }]);
    write_config(&gw, &typo.to_string());
    gw.signal("HUP");
    let stderr = stderr_until(&gw, "the bad key", |s| s.contains("limits.max_bodyy")).await;
    let line = stderr
        .lines()
        .find(|l| l.contains("limits.max_bodyy"))
        .expect("line");
    assert!(
        line.contains("WARN") && line.contains("not reloaded"),
        "{line}"
    );
    assert!(!stderr.contains("SIGHUP: config reloaded"), "{stderr}");

    assert_eq!(
        proxy_as(gw.addr, SECRET, &request, &[]).await.0,
        StatusCode::OK
    );
    assert_eq!(
        proxy_as(gw.addr, OTHER_SECRET, &request, &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sighup_warns_about_a_change_that_needs_a_restart() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let gw = Gwproxy::start(Gwproxy::config(
        &[&gateway.url("")],
        json!({ "workers": 1 }),
    ));

    // Every key here shaped the listeners, the connection builder, the
    // logger or the metrics endpoint at start.
    let changed = json!({
        "workers": 2,
        "limits": { "max_connections": 7, "max_header_count": 50 },
        "timeouts": { "idle_ms": 1234 },
        "log": { "level": "debug" },
        "metrics": { "listen": "127.0.0.1:0" },
    });
    write_config(
        &gw,
        &Gwproxy::config(&[&gateway.url("")], changed).to_string(),
    );
    gw.signal("HUP");
    let keys = [
        "workers",
        "limits.max_connections",
        "limits.max_header_count",
        "timeouts.idle_ms",
        "log.level",
        "metrics",
    ];
    // One warning line per key.
    let warned = |stderr: &str, key: &str| {
        let named = format!("key=\"{key}\"");
        stderr
            .lines()
            .any(|l| l.contains("takes effect on restart") && l.contains(&named))
    };
    stderr_until(&gw, "a restart warning for each key", |s| {
        keys.iter().all(|key| warned(s, key))
    })
    .await;

    // The new settings serve, and /metrics stays where it was.
    let (status, ..) = proxy_as(gw.addr, SECRET, &get(&gateway.url("/")), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = plain(gw.addr, Method::GET, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

// ================================================================ tests: environment

#[tokio::test]
async fn environment_overrides_set_listen_a_limit_and_metrics_over_the_file() {
    let gateway = Upstream::fixed(200, "text/plain", b"fine").await;
    let port = common::closed_port().port();
    let listen = format!("127.0.0.1:{port}");
    let file = json!({
        "limits": { "max_request_body_bytes": 1_048_576 },
        "metrics": { "enabled": true },
    });
    let vars = [
        ("GWPROXY_LISTEN", listen.as_str()),
        ("GWPROXY_LIMITS_MAX_REQUEST_BODY_BYTES", "200"),
        ("GWPROXY_METRICS_ENABLED", "false"),
    ];
    let gw = Gwproxy::start_with_env(Gwproxy::config(&[&gateway.url("")], file), &vars);

    assert_eq!(gw.addr.port(), port, "GWPROXY_LISTEN was not applied");
    let small = get(&gateway.url("/small"));
    assert_eq!(
        proxy_as(gw.addr, SECRET, &small, &[]).await.0,
        StatusCode::OK
    );
    let big = json!({ "method": "POST", "url": gateway.url("/big"), "body": "x".repeat(300) });
    let (status, _, body) = proxy_as(gw.addr, SECRET, &big, &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body:?}");
    assert_eq!(
        plain(gw.addr, Method::GET, "/metrics").await.0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn a_bad_environment_value_ends_start_up_with_exit_2_naming_the_key() {
    let cases = [
        (
            "GWPROXY_LIMITS_MAX_CONCURRENT_REQUESTS",
            "lots",
            "limits.max_concurrent_requests",
        ),
        (
            "GWPROXY_LOG_ACCESS_LOG_SAMPLE",
            "2",
            "log.access_log_sample",
        ),
        ("GWPROXY_LISTEN", "nowhere", "listen"),
    ];
    for (variable, value, key) in cases {
        let (code, stderr) = run_to_exit(variable, value);
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {variable}: {stderr}");
        assert!(
            lines[0].contains(&format!("{key}:")),
            "{variable}: {}",
            lines[0]
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Starts gwproxy with a valid file and one override; it must exit on its
/// own within [`PROMPT`], or it is killed by its PID and the test fails.
fn run_to_exit(variable: &str, value: &str) -> (Option<i32>, String) {
    let path = temp_path("json");
    let config = Gwproxy::config(&["http://127.0.0.1:8181"], json!({}));
    std::fs::write(&path, config.to_string()).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gwproxy"))
        .arg("--config")
        .arg(&path)
        .env_remove("GWPROXY_CONFIG")
        .env_remove("RUST_LOG")
        .env(variable, value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gwproxy");

    let deadline = Instant::now() + PROMPT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            panic!("gwproxy kept running with {variable}={value}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&path);
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().expect("stderr piped");
    std::io::Read::read_to_string(&mut pipe, &mut stderr).expect("read stderr");
    (status.code(), stderr)
}
