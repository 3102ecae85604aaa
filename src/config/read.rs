//! Walks a config's JSON by hand, so that every problem is reported with its key path.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{
    Config, ConfigProblem, GatewayConfig, Limits, LogConfig, LogFormat, MetricsConfig, PoolConfig,
    SecretDigest, SniCertificate, Timeouts, TlsConfig, UserConfig,
};
use crate::gateway_match::GatewayTarget;

/// Largest count or size: beyond any memory gwproxy could hold, and small enough
/// for every semaphore and counter on every platform.
const MAX_COUNT: u64 = u32::MAX as u64;
/// Longest timeout, one day: a longer wait cannot be told apart from a hang.
const MAX_MILLIS: u64 = 24 * 60 * 60 * 1000;

// Each reader returns the best value it can and records what is wrong; the config
// is handed out only when nothing was recorded.

/// A value read from an object, with its key path; `None` when the key is absent.
type Field<'v> = Option<(&'v Value, String)>;

const TOP_KEYS: &[&str] = &[
    "listen",
    "tls",
    "users",
    "gateways",
    "limits",
    "timeouts",
    "pool",
    "workers",
    "reuse_port",
    "log",
    "metrics",
];

pub(super) fn read_config(value: &Value, problems: &mut Problems) -> Option<Config> {
    let top = problems.object(value, "", TOP_KEYS)?;
    let config = Config {
        listen: read_listen(top.get("listen"), problems),
        tls: read_tls(top.get("tls"), problems),
        users: read_users(top.get("users"), problems),
        gateways: read_gateways(top.get("gateways"), problems),
        limits: read_limits(top.get("limits"), problems),
        timeouts: read_timeouts(top.get("timeouts"), problems),
        pool: read_pool(top.get("pool"), problems),
        workers: read_workers(top.get("workers"), problems),
        reuse_port: top
            .get("reuse_port")
            .is_some_and(|(value, path)| problems.boolean(value, &path).unwrap_or(false)),
        log: read_log(top.get("log"), problems),
        metrics: read_metrics(top.get("metrics"), problems),
    };
    if config
        .metrics
        .listen
        .is_some_and(|metrics| same_port(metrics, config.listen))
    {
        // Both listeners set SO_REUSEPORT, so the kernel would let them
        // share the port and split connections between them at random.
        problems.add(
            "metrics.listen",
            "the same port as `listen`: each would get a random share of the connections",
        );
    }
    Some(config)
}

/// Whether two listen addresses would accept on one port (an unspecified
/// address overlaps every other; port 0 is a fresh port each time).
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn read_log(field: Field, problems: &mut Problems) -> LogConfig {
    let mut log = LogConfig::default();
    let Some((value, path)) = field else {
        return log;
    };
    let keys = &["level", "format", "access_log", "access_log_sample"];
    let Some(object) = problems.object(value, &path, keys) else {
        return log;
    };
    if let Some(level) = problems.optional_string(&object, "level") {
        match tracing_subscriber::EnvFilter::try_new(level) {
            Ok(_) => log.level = level.to_owned(),
            Err(e) => problems.add(&join(&path, "level"), format!("not a log filter: {e}")),
        }
    }
    match problems.optional_string(&object, "format") {
        None => {}
        Some("text") => log.format = LogFormat::Text,
        Some("json") => log.format = LogFormat::Json,
        Some(_) => problems.add(&join(&path, "format"), "expected \"text\" or \"json\""),
    }
    if let Some((value, path)) = object.get("access_log") {
        log.access_log = problems.boolean(value, &path).unwrap_or(false);
    }
    if let Some((value, path)) = object.get("access_log_sample") {
        match value.as_f64() {
            Some(rate) if rate > 0.0 && rate <= 1.0 => log.access_log_sample = rate,
            _ => problems.add(&path, "expected a number above 0 and at most 1"),
        }
    }
    log
}

fn read_metrics(field: Field, problems: &mut Problems) -> MetricsConfig {
    let mut metrics = MetricsConfig::default();
    let Some((value, path)) = field else {
        return metrics;
    };
    let Some(object) = problems.object(value, &path, &["enabled", "listen"]) else {
        return metrics;
    };
    if let Some((value, path)) = object.get("enabled") {
        metrics.enabled = problems.boolean(value, &path).unwrap_or(true);
    }
    if let Some((value, path)) = object.get("listen") {
        metrics.listen = Some(read_listen(Some((value, path)), problems));
    }
    metrics
}

/// More threads than this only add contention on any machine gwproxy runs on.
const MAX_WORKERS: u64 = 1024;

fn read_workers(field: Field, problems: &mut Problems) -> usize {
    field
        .and_then(|(value, path)| problems.positive(value, &path, MAX_WORKERS))
        .map_or_else(Config::default_workers, |n| n as usize)
}

fn read_listen(field: Field, problems: &mut Problems) -> SocketAddr {
    let Some((value, path)) = field else {
        return Config::DEFAULT_LISTEN;
    };
    let Some(text) = problems.string(value, &path) else {
        return Config::DEFAULT_LISTEN;
    };

    text.parse().unwrap_or_else(|_| {
        let message = "not a socket address like 0.0.0.0:3000 or [::1]:3000";
        problems.add(&path, message);
        Config::DEFAULT_LISTEN
    })
}

const TLS_KEYS: &[&str] = &[
    "cert_file",
    "key_file",
    "certificates",
    "handshake_timeout_ms",
];

fn read_tls(field: Field, problems: &mut Problems) -> Option<TlsConfig> {
    let (value, path) = field?;
    let tls = problems.object(value, &path, TLS_KEYS)?;
    let cert_file = problems.required_string(&tls, "cert_file");
    let key_file = problems.required_string(&tls, "key_file");
    let certificates = read_sni_certificates(tls.get("certificates"), problems);
    let handshake_timeout = tls
        .get("handshake_timeout_ms")
        .and_then(|(value, path)| problems.positive(value, &path, MAX_MILLIS))
        .map_or(TlsConfig::DEFAULT_HANDSHAKE_TIMEOUT, Duration::from_millis);
    Some(TlsConfig {
        cert_file: cert_file?.into(),
        key_file: key_file?.into(),
        certificates,
        handshake_timeout,
    })
}

fn read_sni_certificates(field: Field, problems: &mut Problems) -> Vec<SniCertificate> {
    let Some((value, path)) = field else {
        return Vec::new();
    };
    let Some(items) = problems.array(value, &path) else {
        return Vec::new();
    };
    let keys = &["domain_name", "cert_file", "key_file"];
    let mut certificates = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Some(entry) = problems.object(item, &item_path, keys) else {
            continue;
        };
        let domain_name = problems.required_string(&entry, "domain_name");
        let cert_file = problems.required_string(&entry, "cert_file");
        let key_file = problems.required_string(&entry, "key_file");
        if let (Some(domain_name), Some(cert_file), Some(key_file)) =
            (domain_name, cert_file, key_file)
        {
            certificates.push(SniCertificate {
                domain_name: domain_name.to_ascii_lowercase(),
                cert_file: cert_file.into(),
                key_file: key_file.into(),
            });
        }
    }
    certificates
}

fn read_users(field: Field, problems: &mut Problems) -> Vec<UserConfig> {
    // Absent is the same as empty: a server that only answers /hello.
    let Some(items) = field.and_then(|(v, path)| problems.array(v, &path)) else {
        return Vec::new();
    };

    let mut users: Vec<(usize, UserConfig)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("users[{index}]");
        let Some(user) = read_user(item, &path, problems) else {
            continue;
        };

        // Authentication finds the user by secret alone, so a shared one is ambiguous.
        if let Some((first, _)) = users.iter().find(|(_, u)| u.secret == user.secret) {
            problems.add(&path, format!("same secret as users[{first}]"));
        }
        users.push((index, user));
    }
    users.into_iter().map(|(_, user)| user).collect()
}

fn read_user(value: &Value, path: &str, problems: &mut Problems) -> Option<UserConfig> {
    let user = problems.object(value, path, &["name", "org_id", "secret", "secret_sha256"])?;
    let name = problems.required_string(&user, "name");
    let org_id = problems.optional_string(&user, "org_id");
    let secret = read_secret(&user, problems);
    Some(UserConfig {
        name: name?.to_owned(),
        org_id: org_id.map(str::to_owned),
        secret: secret?,
    })
}

// No message here may quote the secret or its digest: problems get printed.
fn read_secret(user: &Object, problems: &mut Problems) -> Option<SecretDigest> {
    match (user.get("secret"), user.get("secret_sha256")) {
        (Some((value, path)), None) => read_plain_secret(value, &path, problems),
        (None, Some((value, path))) => read_hashed_secret(value, &path, problems),
        (Some(_), Some(_)) => {
            problems.add(&user.path, "give secret or secret_sha256, not both");
            None
        }
        (None, None) => {
            problems.add(&user.path, "missing secret or secret_sha256");
            None
        }
    }
}

fn read_plain_secret(value: &Value, path: &str, problems: &mut Problems) -> Option<SecretDigest> {
    let secret = problems.string(value, path)?;

    // HTTP trims a header value's edges and forbids control bytes in it, so such a
    // secret could never be presented in `Authorization`.
    if secret.trim() != secret || secret.chars().any(char::is_control) {
        let message = "must not start or end with spaces or contain control characters";
        problems.add(path, message);
        return None;
    }
    Some(SecretDigest::of(secret.as_bytes()))
}

fn read_hashed_secret(value: &Value, path: &str, problems: &mut Problems) -> Option<SecretDigest> {
    let digest = parse_hex_digest(problems.string(value, path)?).map(SecretDigest);
    if digest.is_none() {
        problems.add(path, "expected exactly 64 hex digits (a SHA-256 digest)");
    }
    digest
}

fn parse_hex_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }

    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(digest)
}

fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte).to_digit(16).map(|digit| digit as u8)
}

fn read_gateways(field: Field, problems: &mut Problems) -> Vec<GatewayConfig> {
    let items = match field {
        Some((value, path)) => problems.array(value, &path),
        // Absent reads as empty, which the check below refuses.
        None => Some([].as_slice()),
    };
    let Some(items) = items else {
        return Vec::new();
    };
    if items.is_empty() {
        problems.add("gateways", "at least one gateway is required");
    }

    let mut gateways = Vec::new();
    for (index, item) in items.iter().enumerate() {
        gateways.extend(read_gateway(item, &format!("gateways[{index}]"), problems));
    }
    gateways
}

fn read_gateway(value: &Value, path: &str, problems: &mut Problems) -> Option<GatewayConfig> {
    let gateway = problems.object(value, path, GATEWAY_KEYS)?;
    let url = problems.required_string(&gateway, "url");
    let org_id = problems.optional_string(&gateway, "org_id");
    let ca_file = problems.optional_string(&gateway, "ca_file");
    let client_cert = read_client_cert(&gateway, path, problems);
    let insecure_skip_verify = gateway
        .get("insecure_skip_verify")
        .and_then(|(value, path)| problems.boolean(value, &path))
        .unwrap_or(false);

    let url = url?;
    let target = GatewayTarget::parse(url)
        .map_err(|message| problems.add(&join(path, "url"), message))
        .ok()?;
    Some(GatewayConfig {
        url: url.to_owned(),
        target,
        org_id: org_id.map(str::to_owned),
        ca_file: ca_file.map(PathBuf::from),
        client_cert,
        insecure_skip_verify,
    })
}

const GATEWAY_KEYS: &[&str] = &[
    "url",
    "org_id",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "insecure_skip_verify",
];

fn read_client_cert(
    gateway: &Object,
    path: &str,
    problems: &mut Problems,
) -> Option<(PathBuf, PathBuf)> {
    let cert = problems.optional_string(gateway, "client_cert_file");
    let key = problems.optional_string(gateway, "client_key_file");
    match (cert, key) {
        (Some(cert), Some(key)) => Some((cert.into(), key.into())),
        (None, None) => None,
        _ => {
            let message = "give client_cert_file and client_key_file together";
            problems.add(path, message);
            None
        }
    }
}

fn read_limits(field: Field, problems: &mut Problems) -> Limits {
    let mut limits = Limits::default();
    let l = &mut limits;
    let mut slots = [
        Slot::Count("max_request_body_bytes", &mut l.max_request_body_bytes),
        Slot::Count("max_response_body_bytes", &mut l.max_response_body_bytes),
        Slot::Count(
            "max_response_header_count",
            &mut l.max_response_header_count,
        ),
        Slot::Count("max_header_count", &mut l.max_header_count),
        Slot::Count("max_header_bytes", &mut l.max_header_bytes),
        Slot::Count("max_concurrent_requests", &mut l.max_concurrent_requests),
        Slot::Count("max_connections", &mut l.max_connections),
    ];
    read_tuning(field, &mut slots, problems);

    if limits.max_header_bytes < Limits::MIN_HEADER_BYTES {
        let message = format!(
            "must be at least {}, hyper's smallest",
            Limits::MIN_HEADER_BYTES
        );
        problems.add("limits.max_header_bytes", message);
    }
    limits
}

fn read_timeouts(field: Field, problems: &mut Problems) -> Timeouts {
    let mut timeouts = Timeouts::default();
    let t = &mut timeouts;
    let mut slots = [
        Slot::Millis("request_header_ms", &mut t.request_header),
        Slot::Millis("request_body_ms", &mut t.request_body),
        Slot::Millis("idle_ms", &mut t.idle),
        Slot::Millis("connect_ms", &mut t.connect),
        Slot::Millis("response_ms", &mut t.response),
        Slot::Millis("shutdown_grace_ms", &mut t.shutdown_grace),
    ];
    read_tuning(field, &mut slots, problems);
    timeouts
}

fn read_pool(field: Field, problems: &mut Problems) -> PoolConfig {
    let mut pool = PoolConfig::default();
    let mut slots = [
        Slot::Count("max_idle_per_gateway", &mut pool.max_idle_per_gateway),
        Slot::Millis("idle_timeout_ms", &mut pool.idle_timeout),
        Slot::Count(
            "h2_max_streams_per_connection",
            &mut pool.h2_max_streams_per_connection,
        ),
    ];
    read_tuning(field, &mut slots, problems);
    pool
}

/// A tuning key, where its value goes, and the unit the file gives it in.
enum Slot<'a> {
    Count(&'static str, &'a mut usize),
    Millis(&'static str, &'a mut Duration),
}

/// Reads an object of optional positive integers into their slots; the slots' keys
/// are the only ones allowed.
fn read_tuning(field: Field, slots: &mut [Slot], problems: &mut Problems) {
    let Some((value, path)) = field else {
        return;
    };
    let known: Vec<&str> = slots.iter().map(Slot::key).collect();
    let Some(object) = problems.object(value, &path, &known) else {
        return;
    };

    for slot in slots {
        let Some((value, path)) = object.get(slot.key()) else {
            continue;
        };
        match slot {
            Slot::Count(_, count) => {
                let n = problems.positive(value, &path, MAX_COUNT);
                **count = n.and_then(|n| usize::try_from(n).ok()).unwrap_or(**count);
            }
            Slot::Millis(_, duration) => {
                let n = problems.positive(value, &path, MAX_MILLIS);
                **duration = n.map_or(**duration, Duration::from_millis);
            }
        }
    }
}

impl Slot<'_> {
    fn key(&self) -> &'static str {
        match self {
            Slot::Count(key, _) | Slot::Millis(key, _) => key,
        }
    }
}

/// The key path of `key` inside the object at `parent`.
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A JSON object and its key path, so that each value read from it can be named.
struct Object<'v> {
    map: &'v Map<String, Value>,
    path: String,
}

impl<'v> Object<'v> {
    fn get(&self, key: &str) -> Option<(&'v Value, String)> {
        let value = self.map.get(key)?;
        Some((value, join(&self.path, key)))
    }
}

/// Every problem found so far, and the type checks that record them.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigProblem::new(path, message));
    }

    /// The object at `path`, after recording each key not in `known`.
    fn object<'v>(&mut self, value: &'v Value, path: &str, known: &[&str]) -> Option<Object<'v>> {
        let Some(map) = value.as_object() else {
            self.add(path, "expected an object");
            return None;
        };

        for key in map.keys().filter(|key| !known.contains(&key.as_str())) {
            let message = format!("unknown key; expected one of: {}", known.join(", "));
            self.add(&join(path, key), message);
        }
        Some(Object {
            map,
            path: path.to_owned(),
        })
    }

    fn array<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v [Value]> {
        let array = value.as_array().map(Vec::as_slice);
        if array.is_none() {
            self.add(path, "expected an array");
        }
        array
    }

    /// A non-empty string: an empty name, path, org or secret is always a mistake.
    fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        let string = value.as_str().filter(|s| !s.is_empty());
        if string.is_none() {
            self.add(path, "expected a non-empty string");
        }
        string
    }

    fn required_string<'v>(&mut self, object: &Object<'v>, key: &str) -> Option<&'v str> {
        let Some((value, path)) = object.get(key) else {
            self.add(&join(&object.path, key), "required key is missing");
            return None;
        };
        self.string(value, &path)
    }

    fn optional_string<'v>(&mut self, object: &Object<'v>, key: &str) -> Option<&'v str> {
        let (value, path) = object.get(key)?;
        self.string(value, &path)
    }

    fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        let flag = value.as_bool();
        if flag.is_none() {
            self.add(path, "expected true or false");
        }
        flag
    }

    /// An integer in 1..=`max`; JSON floats such as `1.0` are refused like strings are.
    fn positive(&mut self, value: &Value, path: &str, max: u64) -> Option<u64> {
        match value.as_u64() {
            Some(n) if (1..=max).contains(&n) => Some(n),
            Some(n) if n > max => {
                self.add(path, format!("must be at most {max}"));
                None
            }
            _ => {
                self.add(path, "expected a positive integer");
                None
            }
        }
    }
}
