//! The JSON config file: its keys, their defaults, and validation that names every problem.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::gateway_match::GatewayTarget;

mod duplicates;
mod env;
mod read;

pub use env::variable_for as env_variable_for;

use read::{read_config, Problems};

/// Everything the config file says, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Key `listen`; default [`Config::DEFAULT_LISTEN`].
    pub listen: SocketAddr,
    /// Key `tls`; absent means plain HTTP/1.1 and h2c.
    pub tls: Option<TlsConfig>,
    /// Key `users`; may be empty, and then nobody can authenticate.
    pub users: Vec<UserConfig>,
    /// Key `gateways`; at least one.
    pub gateways: Vec<GatewayConfig>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub pool: PoolConfig,
    /// Key `workers`: event-loop threads, each with its own listening
    /// socket (`SO_REUSEPORT`) and gateway pools; default one per CPU.
    pub workers: usize,
    /// Key `reuse_port`: whether gwproxy may listen on a port that another
    /// process with this key set already listens on, as a zero-downtime
    /// restart needs. Default false: a port in use fails start-up.
    pub reuse_port: bool,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
}

/// Key `log`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Key `log.level`: a `tracing` filter such as `info` or
    /// `gwproxy=debug`; `RUST_LOG`, when set, wins. Default `info`.
    pub level: String,
    /// Key `log.format`: `text` for people (default) or `json` for collectors.
    pub format: LogFormat,
    /// Key `log.access_log`: one line per request. Default off.
    pub access_log: bool,
    /// Key `log.access_log_sample`: the share of requests logged, in (0, 1].
    /// Default 1.
    pub access_log_sample: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
            access_log: false,
            access_log_sample: 1.0,
        }
    }
}

/// Key `metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Key `metrics.enabled`, default true: `GET /metrics` in Prometheus
    /// text format.
    pub enabled: bool,
    /// Key `metrics.listen`: serve `/metrics` on this address instead of
    /// the main listener (which then answers it 404). Default none.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            enabled: true,
            listen: None,
        }
    }
}

impl Config {
    /// The Dashboard's own port, on loopback so that a bare start exposes nothing.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3000));
    /// The example gateway of the Dashboard API's documentation.
    pub const BUILTIN_GATEWAY: &'static str = "http://127.0.0.1:8181";

    /// One worker per CPU, as nginx's `worker_processes auto` does.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Key `tls`: the listener's PEM certificate chain and private key, and
/// more certificates chosen by SNI.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The default certificate, for clients whose SNI names no other one.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Key `tls.certificates`, like the Dashboard's
    /// `http_server_options.certificates`.
    pub certificates: Vec<SniCertificate>,
    /// Key `tls.handshake_timeout_ms`; default [`TlsConfig::DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    /// Long enough for a slow mobile client, short enough that a stalled
    /// handshake does not hold a connection slot for long.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
}

/// One entry of `tls.certificates`.
#[derive(Debug, Clone)]
pub struct SniCertificate {
    /// `api.example.com`, or `*.example.com` for one label of any name.
    pub domain_name: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// One entry of `users`.
#[derive(Debug, Clone)]
pub struct UserConfig {
    pub name: String,
    pub org_id: Option<String>,
    pub secret: SecretDigest,
}

/// SHA-256 of the user's secret; plain "secret" values are hashed at load and the plain
/// text dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretDigest(pub [u8; 32]);

impl SecretDigest {
    /// Hashes a secret as written in the config or presented in `Authorization`.
    pub fn of(secret: &[u8]) -> SecretDigest {
        SecretDigest(Sha256::digest(secret).into())
    }
}

impl fmt::Debug for SecretDigest {
    // A digest still lets anyone who reads it test guesses offline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

/// One entry of `gateways`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// As written, for logs and messages.
    pub url: String,
    pub target: GatewayTarget,
    /// When set, only users of this org may reach the gateway.
    pub org_id: Option<String>,
    /// Roots for an `https` gateway instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Keys `client_cert_file` and `client_key_file`: gwproxy's certificate
    /// for gateways that require mutual TLS. Both or neither.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Key `insecure_skip_verify`, default false: accept any certificate.
    /// For test rigs only; gwproxy warns at start when it is set.
    pub insecure_skip_verify: bool,
}

/// Key `limits`: how much one caller can make gwproxy hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Beyond it: 413.
    pub max_request_body_bytes: usize,
    /// Beyond it: 500, "response too large".
    pub max_response_body_bytes: usize,
    /// Header fields in a gateway's response head; beyond it: 500.
    pub max_response_header_count: usize,
    /// The caller's HTTP request headers, and the JSON `headers` object.
    pub max_header_count: usize,
    /// One request's header section; at least [`Limits::MIN_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// Requests in flight; beyond it: 503.
    pub max_concurrent_requests: usize,
    /// Open client connections; beyond it gwproxy stops accepting.
    pub max_connections: usize,
}

impl Limits {
    pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 1 << 20;
    pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: usize = 8 << 20;
    pub const DEFAULT_MAX_HEADER_COUNT: usize = 100;
    /// hyper's own default for a response head.
    pub const DEFAULT_MAX_RESPONSE_HEADER_COUNT: usize = 100;
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 << 10;
    pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// hyper refuses a smaller read buffer, so a smaller limit could not be enforced.
    pub const MIN_HEADER_BYTES: usize = 8192;
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_body_bytes: Limits::DEFAULT_MAX_REQUEST_BODY_BYTES,
            max_response_body_bytes: Limits::DEFAULT_MAX_RESPONSE_BODY_BYTES,
            max_response_header_count: Limits::DEFAULT_MAX_RESPONSE_HEADER_COUNT,
            max_header_count: Limits::DEFAULT_MAX_HEADER_COUNT,
            max_header_bytes: Limits::DEFAULT_MAX_HEADER_BYTES,
            max_concurrent_requests: Limits::DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_connections: Limits::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Key `timeouts`; the file gives each in milliseconds, under the key in brackets.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// (`request_header_ms`) Reading one request's headers.
    pub request_header: Duration,
    /// (`request_body_ms`) Reading one request's body.
    pub request_body: Duration,
    /// (`idle_ms`) A client connection's keep-alive between requests.
    pub idle: Duration,
    /// (`connect_ms`) TCP and TLS connect to a gateway.
    pub connect: Duration,
    /// (`response_ms`) The gateway's whole response.
    pub response: Duration,
    /// (`shutdown_grace_ms`) In-flight requests' time to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

impl Timeouts {
    pub const DEFAULT_REQUEST_HEADER: Duration = Duration::from_secs(10);
    pub const DEFAULT_REQUEST_BODY: Duration = Duration::from_secs(30);
    /// nginx's `keepalive_timeout`, which callers' own pools are tuned to.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(75);
    pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
    /// The Tyk gateway's `proxy_default_timeout`.
    pub const DEFAULT_RESPONSE: Duration = Duration::from_secs(30);
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            request_header: Timeouts::DEFAULT_REQUEST_HEADER,
            request_body: Timeouts::DEFAULT_REQUEST_BODY,
            idle: Timeouts::DEFAULT_IDLE,
            connect: Timeouts::DEFAULT_CONNECT,
            response: Timeouts::DEFAULT_RESPONSE,
            shutdown_grace: Timeouts::DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Key `pool`: the connections kept to each gateway.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// (`max_idle_per_gateway`)
    pub max_idle_per_gateway: usize,
    /// (`idle_timeout_ms`)
    pub idle_timeout: Duration,
    /// (`h2_max_streams_per_connection`)
    pub h2_max_streams_per_connection: usize,
}

impl PoolConfig {
    pub const DEFAULT_MAX_IDLE_PER_GATEWAY: usize = 256;
    /// Below nginx's 75 s and cloud balancers' 60 s, so gwproxy drops an idle
    /// connection before the gateway does and never writes into a closing one.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
    /// RFC 9113 section 6.5.2 recommends servers allow at least 100
    /// concurrent streams, so this many fit within any server that does.
    pub const DEFAULT_H2_MAX_STREAMS_PER_CONNECTION: usize = 100;
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            max_idle_per_gateway: PoolConfig::DEFAULT_MAX_IDLE_PER_GATEWAY,
            idle_timeout: PoolConfig::DEFAULT_IDLE_TIMEOUT,
            h2_max_streams_per_connection: PoolConfig::DEFAULT_H2_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// One problem found in a config: the key path (e.g. `gateways[1].url`,
/// `limits.max_header_bytes`, `users[0]`) and what is wrong in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Empty for the whole document; the file's name when it could not be read.
    pub path: String,
    pub message: String,
}

impl ConfigProblem {
    fn new(path: &str, message: impl Into<String>) -> ConfigProblem {
        let (path, message) = (path.to_owned(), message.into());
        ConfigProblem { path, message }
    }
}

/// Reads `GWPROXY_<KEY>` from the process environment; an unset or
/// non-UTF-8 variable is no override.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl Config {
    /// Parses the JSON text. Collects every problem (does not stop at the first) and
    /// returns them all.
    pub fn from_json(text: &str) -> Result<Config, Vec<ConfigProblem>> {
        Config::from_json_with_env(text, &|_| None)
    }

    /// [`Config::from_json`] with `GWPROXY_<KEY>` overrides looked up by
    /// `lookup` (see `config/env.rs`).
    pub fn from_json_with_env(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigProblem>> {
        let mut value: Value = serde_json::from_str(text)
            .map_err(|error| vec![ConfigProblem::new("", format!("not valid JSON: {error}"))])?;
        env::apply(&mut value, lookup);

        let mut problems = Problems(duplicates::duplicate_keys(text));
        match read_config(&value, &mut problems) {
            Some(config) if problems.0.is_empty() => Ok(config),
            _ => Err(problems.0),
        }
    }

    /// Reads and parses a file; an unreadable file is one problem with path = the file
    /// name. Problems with the whole document keep the empty path, as in
    /// [`Config::from_json`], since callers print the file name before each problem.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigProblem>> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            let file = path.display().to_string();
            vec![ConfigProblem::new(&file, format!("cannot read: {error}"))]
        })?;
        with_unknown_variables(Config::from_json_with_env(&text, &process_env))
    }

    /// The built-in default: listen 127.0.0.1:3000, one gateway
    /// http://127.0.0.1:8181, one user named "default" (no org) whose secret
    /// is the given string; `GWPROXY_<KEY>` overrides apply.
    pub fn builtin(secret: &str) -> Result<Config, Vec<ConfigProblem>> {
        let text = serde_json::json!({
            "listen": Config::DEFAULT_LISTEN.to_string(),
            "users": [{ "name": "default", "secret": secret }],
            "gateways": [{ "url": Config::BUILTIN_GATEWAY }],
        })
        .to_string();
        with_unknown_variables(Config::from_json_with_env(&text, &process_env))
    }
}

/// Adds a problem for each `GWPROXY_` variable of this process that looks
/// like an override but sets no key.
fn with_unknown_variables(
    loaded: Result<Config, Vec<ConfigProblem>>,
) -> Result<Config, Vec<ConfigProblem>> {
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    let unknown = env::unknown(names);
    match loaded {
        Ok(config) if unknown.is_empty() => Ok(config),
        Ok(_) => Err(unknown),
        Err(mut problems) => {
            problems.extend(unknown);
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of "abc", FIPS 180-2's own example.
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn with_gateway(extra: &str) -> String {
        format!(r#"{{ "gateways": [{{ "url": "http://127.0.0.1:8181" }}] {extra} }}"#)
    }

    fn with_users(users: &str) -> String {
        with_gateway(&format!(r#", "users": [{users}]"#))
    }

    fn problems_of(text: &str) -> Vec<ConfigProblem> {
        Config::from_json(text).expect_err("config should be refused")
    }

    fn paths_of(text: &str) -> Vec<String> {
        problems_of(text).into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn parses_the_spec_example() {
        let text = format!(
            r#"{{
              "listen": "0.0.0.0:3000",
              "tls": {{ "cert_file": "certs/server.pem", "key_file": "certs/server.key" }},
              "users": [
                {{ "name": "ops", "org_id": "acme", "secret": "plain-text-secret" }},
                {{ "name": "ci", "org_id": "acme", "secret_sha256": "{ABC_SHA256}" }}
              ],
              "gateways": [
                {{ "url": "http://127.0.0.1:8181" }},
                {{ "url": "https://gw.internal:8443/apis", "org_id": "acme",
                   "ca_file": "certs/ca.pem" }}
              ]
            }}"#
        );
        let config = Config::from_json(&text).unwrap();

        assert_eq!(config.listen, "0.0.0.0:3000".parse().unwrap());
        assert_eq!(
            config.tls.unwrap().key_file,
            PathBuf::from("certs/server.key")
        );
        let [ops, ci] = &config.users[..] else {
            panic!("two users")
        };
        assert_eq!(
            (ops.name.as_str(), ci.org_id.as_deref()),
            ("ops", Some("acme"))
        );
        assert_eq!(ci.secret.0, <[u8; 32]>::from(Sha256::digest(b"abc")));
        let [plain, https] = &config.gateways[..] else {
            panic!("two gateways")
        };
        assert_eq!(
            (plain.org_id.as_deref(), plain.ca_file.as_deref()),
            (None, None)
        );
        assert_eq!(https.url, "https://gw.internal:8443/apis");
        assert_eq!(https.ca_file, Some(PathBuf::from("certs/ca.pem")));
    }

    #[test]
    fn hashes_a_plain_secret_and_drops_its_text() {
        let config = Config::from_json(&with_users(r#"{ "name": "ops", "secret": "hunter2" }"#));
        let user = &config.unwrap().users[0];

        assert_eq!(user.secret.0, <[u8; 32]>::from(Sha256::digest(b"hunter2")));
        let debug = format!("{user:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("SecretDigest(..)"),
            "{debug}"
        );
    }

    #[test]
    fn applies_defaults_when_keys_are_absent() {
        let config = Config::from_json(&with_gateway("")).unwrap();
        let (limits, timeouts, pool) = (&config.limits, &config.timeouts, &config.pool);
        let secs = Duration::from_secs;

        assert_eq!(config.listen, "127.0.0.1:3000".parse().unwrap());
        assert!(config.tls.is_none() && config.users.is_empty());
        assert_eq!(limits.max_request_body_bytes, 1_048_576);
        assert_eq!(limits.max_response_body_bytes, 8 * 1_048_576);
        assert_eq!(limits.max_header_count, 100);
        assert_eq!(limits.max_response_header_count, 100);
        assert_eq!(limits.max_header_bytes, 16_384);
        assert_eq!(limits.max_concurrent_requests, 1024);
        assert_eq!(limits.max_connections, 10_000);
        assert_eq!(
            (timeouts.request_header, timeouts.request_body),
            (secs(10), secs(30))
        );
        assert_eq!((timeouts.idle, timeouts.connect), (secs(75), secs(5)));
        assert_eq!(
            (timeouts.response, timeouts.shutdown_grace),
            (secs(30), secs(30))
        );
        assert_eq!(
            (pool.max_idle_per_gateway, pool.idle_timeout),
            (256, secs(50))
        );
        assert_eq!(pool.h2_max_streams_per_connection, 100);
    }

    #[test]
    fn reads_every_tuning_key() {
        let text = with_gateway(
            r#", "listen": "[::1]:8080",
            "limits": { "max_request_body_bytes": 1, "max_response_body_bytes": 2,
              "max_header_count": 3, "max_header_bytes": 8192, "max_response_header_count": 4,
              "max_concurrent_requests": 5, "max_connections": 6 },
            "timeouts": { "request_header_ms": 1, "request_body_ms": 2, "idle_ms": 3,
              "connect_ms": 4, "response_ms": 5, "shutdown_grace_ms": 6 },
            "pool": { "max_idle_per_gateway": 7, "idle_timeout_ms": 8,
              "h2_max_streams_per_connection": 9 }"#,
        );
        let config = Config::from_json(&text).unwrap();
        let (l, t, ms) = (&config.limits, &config.timeouts, Duration::from_millis);

        assert_eq!(config.listen, "[::1]:8080".parse().unwrap());
        let counts = [
            l.max_request_body_bytes,
            l.max_response_body_bytes,
            l.max_header_count,
        ];
        assert_eq!(counts, [1, 2, 3]);
        assert_eq!(l.max_header_bytes, 8192);
        assert_eq!(l.max_response_header_count, 4);
        assert_eq!([l.max_concurrent_requests, l.max_connections], [5, 6]);
        assert_eq!(
            [t.request_header, t.request_body, t.idle],
            [ms(1), ms(2), ms(3)]
        );
        assert_eq!(
            [t.connect, t.response, t.shutdown_grace],
            [ms(4), ms(5), ms(6)]
        );
        assert_eq!(
            (config.pool.max_idle_per_gateway, config.pool.idle_timeout),
            (7, ms(8))
        );
        assert_eq!(config.pool.h2_max_streams_per_connection, 9);
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = format!(
            r#"{{
              "listen": "everywhere",
              "listn": "0.0.0.0:3000",
              "users": [{{ "name": "ops", "secret": "s", "secret_sha256": "{ABC_SHA256}" }}],
              "gateways": [{{ "url": "http://a" }}, {{ "url": "ftp://b" }}],
              "limits": {{ "max_concurrent_requests": 0 }},
              "timeouts": {{ "connect_msx": 5 }}
            }}"#
        );
        let problems = problems_of(&text);
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();

        let expected = [
            "listen: not a socket address",
            "listn: unknown key; expected one of: listen, tls, users, gateways",
            "users[0]: give secret or secret_sha256, not both",
            // The message itself is gateway_match's to word.
            "gateways[1].url: ",
            "limits.max_concurrent_requests: expected a positive integer",
            "timeouts.connect_msx: unknown key; expected one of: request_header_ms",
        ];
        for start in expected {
            assert!(
                shown.iter().any(|s| s.starts_with(start)),
                "{start} not in {shown:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{shown:#?}");
    }

    #[test]
    fn refuses_wrong_types_and_out_of_range_numbers() {
        let text = with_gateway(
            r#", "tls": { "cert_file": 1 }, "users": {},
            "limits": { "max_header_bytes": 8191, "max_header_count": -1,
              "max_connections": 1.0, "max_request_body_bytes": "1" },
            "timeouts": { "idle_ms": 86400001 }, "pool": []"#,
        );
        let problems = problems_of(&text);
        let message_at = |path: &str| {
            let found = problems.iter().find(|p| p.path == path);
            found.map_or("(none)", |p| p.message.as_str())
        };

        assert_eq!(message_at("tls.cert_file"), "expected a non-empty string");
        assert_eq!(message_at("tls.key_file"), "required key is missing");
        assert_eq!(message_at("users"), "expected an array");
        assert!(message_at("limits.max_header_bytes").starts_with("must be at least 8192"));
        for key in [
            "max_header_count",
            "max_connections",
            "max_request_body_bytes",
        ] {
            assert_eq!(
                message_at(&format!("limits.{key}")),
                "expected a positive integer"
            );
        }
        assert_eq!(message_at("timeouts.idle_ms"), "must be at most 86400000");
        assert_eq!(message_at("pool"), "expected an object");
        assert_eq!(problems.len(), 9, "{problems:#?}");
    }

    #[test]
    fn metrics_may_not_listen_on_the_main_port() {
        let on = |listen: &str, metrics: &str| {
            let text = with_gateway(&format!(
                r#", "listen": "{listen}", "metrics": {{ "listen": "{metrics}" }}"#
            ));
            Config::from_json(&text).map_or_else(
                |problems| problems.into_iter().map(|p| p.path).collect(),
                |_| Vec::new(),
            )
        };
        assert_eq!(on("127.0.0.1:3000", "127.0.0.1:3000"), ["metrics.listen"]);
        assert_eq!(on("0.0.0.0:3000", "127.0.0.1:3000"), ["metrics.listen"]);
        assert_eq!(on("127.0.0.1:3000", "0.0.0.0:3000"), ["metrics.listen"]);
        assert!(on("127.0.0.1:3000", "127.0.0.1:3001").is_empty());
        assert!(on("127.0.0.1:3000", "127.0.0.2:3000").is_empty());
        assert!(on("127.0.0.1:0", "127.0.0.1:0").is_empty());
        assert!(on("[::1]:3000", "127.0.0.1:3000").is_empty());
    }

    #[test]
    fn requires_at_least_one_gateway_with_a_url() {
        assert_eq!(paths_of("{}"), ["gateways"]);
        assert_eq!(paths_of(r#"{ "gateways": [] }"#), ["gateways"]);
        assert_eq!(paths_of(r#"{ "gateways": [{}] }"#), ["gateways[0].url"]);
    }

    #[test]
    fn names_the_whole_document_when_it_is_not_a_json_object() {
        let problems = problems_of("[1, 2]");
        assert_eq!(problems, [ConfigProblem::new("", "expected an object")]);
        assert_eq!(problems[0].to_string(), "expected an object");

        let problems = problems_of("{\n  \"listen\": ,\n}");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "");
        assert!(
            problems[0].message.contains("line 2 column"),
            "{problems:?}"
        );
    }

    #[test]
    fn load_names_a_file_it_cannot_read_and_reports_bad_json() {
        let missing = Config::load(Path::new("/nonexistent/gwproxy.json")).unwrap_err();
        assert_eq!(missing[0].path, "/nonexistent/gwproxy.json");
        assert!(missing[0].message.starts_with("cannot read"));

        let path = std::env::temp_dir().join(format!("gwproxy-cfg-{}.json", std::process::id()));
        std::fs::write(&path, "{ nope").unwrap();
        let broken = Config::load(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(broken[0].path, "");
        assert!(broken[0].message.starts_with("not valid JSON"));
    }

    #[test]
    fn accepts_secret_sha256_only_as_64_hex_digits_in_either_case() {
        let upper = with_users(&format!(
            r#"{{ "name": "ci", "secret_sha256": "{}" }}"#,
            ABC_SHA256.to_uppercase()
        ));
        let config = Config::from_json(&upper).unwrap();
        assert_eq!(config.users[0].secret, SecretDigest::of(b"abc"));

        let not_hex = format!("{}g", &ABC_SHA256[..63]);
        for bad in [&ABC_SHA256[..63], &not_hex, &format!("{ABC_SHA256}0")] {
            let text = with_users(&format!(r#"{{ "name": "ci", "secret_sha256": "{bad}" }}"#));
            assert_eq!(paths_of(&text), ["users[0].secret_sha256"], "{bad}");
        }
    }

    #[test]
    fn refuses_users_without_a_usable_secret_and_never_quotes_one() {
        let users = r#"
            { "name": "a" },
            { "name": "", "secret": "" },
            { "name": "c", "secret": " hunter2" },
            { "name": "d", "secret": "hunter2", "secret_sha256": "hunter2" },
            { "name": "e", "secret": "x", "org_id": 7, "role": "admin" }"#;
        let problems = problems_of(&with_users(users));
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();

        let expected = [
            "users[0]",
            "users[1].name",
            "users[1].secret",
            "users[2].secret",
            "users[3]",
            "users[4].role",
            "users[4].org_id",
        ];
        assert_eq!(paths, expected, "{problems:#?}");
        assert!(!format!("{problems:?}").contains("hunter2"));
    }

    #[test]
    fn refuses_two_users_with_the_same_secret() {
        let users = format!(
            r#"{{ "name": "a", "secret": "abc" }}, {{ "name": "b", "secret": "other" }},
               {{ "name": "c", "secret_sha256": "{ABC_SHA256}" }}"#
        );
        let problems = problems_of(&with_users(&users));

        assert_eq!(
            problems,
            [ConfigProblem::new("users[2]", "same secret as users[0]")]
        );
    }

    #[test]
    fn reads_log_and_metrics_sections_and_refuses_bad_values() {
        let config = Config::from_json(&with_gateway(
            r#", "log": { "level": "debug", "format": "json", "access_log": true,
                 "access_log_sample": 0.25 },
               "metrics": { "listen": "127.0.0.1:9100" }"#,
        ))
        .expect("valid");
        assert_eq!(config.log.format, LogFormat::Json);
        assert!(config.log.access_log);
        assert_eq!(config.log.access_log_sample, 0.25);
        assert!(config.metrics.enabled);
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );

        let paths = paths_of(&with_gateway(
            r#", "log": { "format": "xml", "access_log_sample": 0 }, "metrics": { "enabled": 1 }"#,
        ));
        assert_eq!(
            paths,
            ["log.format", "log.access_log_sample", "metrics.enabled"]
        );
    }

    #[test]
    fn environment_overrides_keys_before_validation() {
        let text = with_gateway("");
        let env = |name: &str| match name {
            "GWPROXY_TIMEOUTS_RESPONSE_MS" => Some("1234".to_owned()),
            "GWPROXY_LIMITS_MAX_CONNECTIONS" => Some("lots".to_owned()),
            _ => None,
        };
        let problems = Config::from_json_with_env(&text, &env).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "limits.max_connections");

        let env = |name: &str| (name == "GWPROXY_TIMEOUTS_RESPONSE_MS").then(|| "1234".to_owned());
        let config = Config::from_json_with_env(&text, &env).expect("valid");
        assert_eq!(config.timeouts.response, Duration::from_millis(1234));
    }

    #[test]
    fn builtin_config_has_the_dashboard_port_one_gateway_and_one_user() {
        let config = Config::builtin("s3cret").expect("the built-in config is valid");

        assert_eq!(config.listen, "127.0.0.1:3000".parse().unwrap());
        assert!(config.tls.is_none());
        let [gateway] = &config.gateways[..] else {
            panic!("one gateway")
        };
        assert_eq!(gateway.url, "http://127.0.0.1:8181");
        let [user] = &config.users[..] else {
            panic!("one user")
        };
        assert_eq!(
            (user.name.as_str(), user.org_id.as_deref()),
            ("default", None)
        );
        assert_eq!(user.secret, SecretDigest::of(b"s3cret"));
    }
}
