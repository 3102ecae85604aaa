//! Black-box tests of gwproxy's HTTPS listener: ALPN, SNI, rotation on SIGHUP, handshake limits.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use common::{parse_json, temp_path, Gwproxy, Upstream, SECRET};

/// The bound on every network wait.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Certificates, made fresh for every test.

/// A certificate authority that exists only for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP literals).
    fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

/// A certificate and its key on disk, removed when dropped.
struct PemFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl PemFiles {
    fn write(leaf: &Leaf) -> PemFiles {
        let files = PemFiles {
            cert: temp_path("pem"),
            key: temp_path("pem"),
        };
        files.replace_with(leaf);
        files
    }

    /// Overwrites both files in place, as a certificate renewal does.
    fn replace_with(&self, leaf: &Leaf) {
        std::fs::write(&self.key, &leaf.key_pem).unwrap();
        std::fs::write(&self.cert, &leaf.cert_pem).unwrap();
    }

    fn tls_entry(&self, domain_name: &str) -> Value {
        json!({ "domain_name": domain_name, "cert_file": self.cert, "key_file": self.key })
    }
}

impl Drop for PemFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert);
        let _ = std::fs::remove_file(&self.key);
    }
}

// ---------------------------------------------------------------------------
// gwproxy with TLS, and the clients that talk to it.

/// gwproxy serving HTTPS with `default` and, by SNI, `by_name`; one
/// plain HTTP gateway, `upstream`.
fn start_tls(
    upstream: &Upstream,
    default: &PemFiles,
    by_name: &[(&str, &PemFiles)],
    handshake_timeout_ms: u64,
) -> Gwproxy {
    let certificates: Vec<Value> = by_name
        .iter()
        .map(|(name, files)| files.tls_entry(name))
        .collect();
    let tls = json!({
        "cert_file": default.cert,
        "key_file": default.key,
        "certificates": certificates,
        "handshake_timeout_ms": handshake_timeout_ms,
    });
    Gwproxy::start(Gwproxy::config(&[&upstream.url("")], json!({ "tls": tls })))
}

/// gwproxy over TLS with one certificate, for `localhost`, in front of a
/// JSON upstream.
struct Rig {
    gw: Gwproxy,
    upstream: Upstream,
    ca: Ca,
    leaf: Leaf,
    files: PemFiles,
}

impl Rig {
    async fn start(handshake_timeout_ms: u64) -> Rig {
        let (upstream, ca) = (json_upstream().await, Ca::new("listener CA"));
        let leaf = ca.issue(&["localhost", "127.0.0.1"]);
        let files = PemFiles::write(&leaf);
        let gw = start_tls(&upstream, &files, &[], handshake_timeout_ms);
        Rig {
            gw,
            upstream,
            ca,
            leaf,
            files,
        }
    }

    /// One request over a new HTTP/1.1 connection, answered by the upstream.
    async fn assert_served(&self, path: &str) {
        let url = self.upstream.url(path);
        let (status, body) = proxy_once(&self.gw, &self.ca, &url).await;
        assert_envelope_from_upstream(status, &body);
    }
}

async fn json_upstream() -> Upstream {
    Upstream::fixed(200, "application/json", br#"{"answer":42}"#).await
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts `ca` and offers `alpn`. A fresh config per call:
/// no session is resumed, so every handshake shows the certificate.
fn trusting(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    gw: &Gwproxy,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let handshake = async {
        let tcp = TcpStream::connect(gw.addr).await?;
        TlsConnector::from(config).connect(name, tcp).await
    };
    timeout(WAIT, handshake).await.expect("handshake in time")
}

/// A verified HTTP connection to gwproxy for `localhost`, offering `alpn`.
async fn connect(gw: &Gwproxy, ca: &Ca, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let connected = tls_connect(gw, "localhost", trusting(&ca.der, alpn)).await;
    connected.expect("handshake with gwproxy")
}

/// The certificate gwproxy shows, in a verified handshake, for `name`.
async fn presented(gw: &Gwproxy, name: &str, ca: &Ca) -> CertificateDer<'static> {
    let stream = tls_connect(gw, name, trusting(&ca.der, &[])).await;
    leaf_of(&stream.unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn leaf_of(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let certs = stream.get_ref().1.peer_certificates();
    certs.expect("a certificate")[0].clone().into_owned()
}

fn alpn_of(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

async fn h1_sender(stream: TlsStream<TcpStream>) -> http1::SendRequest<Full<Bytes>> {
    let handshake = http1::handshake(TokioIo::new(stream));
    let (sender, conn) = timeout(WAIT, handshake).await.unwrap().unwrap();
    tokio::spawn(conn);
    sender
}

async fn h2_sender(stream: TlsStream<TcpStream>) -> http2::SendRequest<Full<Bytes>> {
    let handshake = http2::handshake(TokioExecutor::new(), TokioIo::new(stream));
    let (sender, conn) = timeout(WAIT, handshake).await.unwrap().unwrap();
    tokio::spawn(conn);
    sender
}

/// `POST /api/proxy` asking for `url`, in absolute form so that it
/// serves HTTP/2 (`:authority`) as well as HTTP/1.1 (`Host`).
fn proxy_request(url: &str) -> Request<Full<Bytes>> {
    let body = json!({ "method": "GET", "url": url }).to_string();
    Request::post("https://localhost/api/proxy")
        .header("authorization", SECRET)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn read_answer(
    response: impl std::future::Future<Output = hyper::Result<Response<Incoming>>>,
) -> (StatusCode, Version, Value) {
    let response = timeout(WAIT, response).await.expect("in time").unwrap();
    let (parts, body) = response.into_parts();
    let body = timeout(WAIT, body.collect()).await.unwrap().unwrap();
    (parts.status, parts.version, parse_json(&body.to_bytes()))
}

async fn proxy_h1(sender: &mut http1::SendRequest<Full<Bytes>>, url: &str) -> (StatusCode, Value) {
    timeout(WAIT, sender.ready()).await.unwrap().unwrap();
    let (status, version, body) = read_answer(sender.send_request(proxy_request(url))).await;
    assert_eq!(version, Version::HTTP_11);
    (status, body)
}

/// One proxied request over a new HTTP/1.1 TLS connection.
async fn proxy_once(gw: &Gwproxy, ca: &Ca, url: &str) -> (StatusCode, Value) {
    let stream = connect(gw, ca, &[b"http/1.1"]).await;
    proxy_h1(&mut h1_sender(stream).await, url).await
}

fn assert_envelope_from_upstream(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status_code"], 200, "{body}");
    assert_eq!(body["body"], json!({ "answer": 42 }), "{body}");
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// ---------------------------------------------------------------------------
// ALPN

/// A client that offers http/1.1 gets it; one that offers nothing gets
/// HTTP/1.1 too.
#[tokio::test]
async fn http1_negotiated_by_alpn_proxies_requests() {
    let rig = Rig::start(5_000).await;
    let (gw, upstream, ca) = (&rig.gw, &rig.upstream, &rig.ca);

    for (offered, agreed) in [
        (&[&b"http/1.1"[..]][..], Some(&b"http/1.1"[..])),
        (&[], None),
    ] {
        let stream = connect(gw, ca, offered).await;
        assert_eq!(alpn_of(&stream).as_deref(), agreed);
        let mut sender = h1_sender(stream).await;
        for _ in 0..2 {
            let (status, body) = proxy_h1(&mut sender, &upstream.url("/via-h1")).await;
            assert_envelope_from_upstream(status, &body);
        }
    }
    assert_eq!(upstream.last().uri, "/via-h1");
    assert_eq!(upstream.count(), 4);
}

#[tokio::test]
async fn the_servers_cipher_suite_order_wins_over_the_clients() {
    use rustls::crypto::ring::cipher_suite as suite;
    use rustls::version::{TLS12, TLS13};

    let rig = Rig::start(5_000).await;
    let server_first = [
        (&TLS13, suite::TLS13_AES_256_GCM_SHA384),
        (&TLS12, suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ];
    for (version, expected) in server_first {
        // The client prefers ChaCha20, then AES-128: the server's first
        // choice, AES-256-GCM, is listed last.
        let mut chacha_first = rustls::crypto::ring::default_provider();
        chacha_first.cipher_suites.sort_by_key(|s| match s.suite() {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => 1,
            _ => 2,
        });
        let mut roots = RootCertStore::empty();
        roots.add(rig.ca.der.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(chacha_first))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let stream = tls_connect(&rig.gw, "localhost", Arc::new(config)).await;
        let stream = stream.expect("handshake with gwproxy");
        let negotiated = stream.get_ref().1.negotiated_cipher_suite().unwrap();
        assert_eq!(negotiated.suite(), expected.suite(), "{version:?}");
    }
}

#[tokio::test]
async fn http2_negotiated_by_alpn_proxies_concurrent_requests() {
    let rig = Rig::start(5_000).await;
    let (gw, upstream, ca) = (&rig.gw, &rig.upstream, &rig.ca);

    let stream = connect(gw, ca, &[b"h2"]).await;
    assert_eq!(alpn_of(&stream).as_deref(), Some(&b"h2"[..]));
    let sender = h2_sender(stream).await;

    let requests: Vec<_> = (0..4)
        .map(|i| {
            let mut sender = sender.clone();
            let url = upstream.url(&format!("/via-h2/{i}"));
            tokio::spawn(async move { read_answer(sender.send_request(proxy_request(&url))).await })
        })
        .collect();
    for request in requests {
        let (status, version, body) = request.await.unwrap();
        assert_eq!(version, Version::HTTP_2);
        assert_envelope_from_upstream(status, &body);
    }
    assert_eq!(upstream.count(), 4);
}

// ---------------------------------------------------------------------------
// SNI

#[tokio::test]
async fn sni_picks_the_exact_then_wildcard_then_default_certificate() {
    let (upstream, ca) = (json_upstream().await, Ca::new("sni CA"));
    // The default also names the hosts that must fall back to it, so
    // that every handshake below verifies as a real client's would.
    let fallbacks = ["wild.test", "a.b.wild.test", "other.test"];
    let default = ca.issue(&[&["localhost", "127.0.0.1"][..], &fallbacks].concat());
    let (api, wild) = (ca.issue(&["api.test"]), ca.issue(&["*.wild.test"]));
    let (default_files, api_files) = (PemFiles::write(&default), PemFiles::write(&api));
    let wild_files = PemFiles::write(&wild);
    let by_name = [("api.test", &api_files), ("*.wild.test", &wild_files)];
    let gw = start_tls(&upstream, &default_files, &by_name, 5_000);

    let cases = [
        ("localhost", &default.der),
        ("api.test", &api.der),
        ("API.Test", &api.der),
        ("x.wild.test", &wild.der),
        // A wildcard covers exactly one label (RFC 6125 section 6.4.3).
        ("wild.test", &default.der),
        ("a.b.wild.test", &default.der),
        ("other.test", &default.der),
        // An IP address is never sent as SNI (RFC 6066 section 3).
        ("127.0.0.1", &default.der),
    ];
    for (name, expected) in cases {
        let shown = presented(&gw, name, &ca).await;
        assert!(shown == *expected, "wrong certificate for {name}");
    }
}

// ---------------------------------------------------------------------------
// Certificate rotation

#[tokio::test]
async fn sighup_rotates_certificates_for_new_handshakes_and_keeps_old_connections() {
    let (upstream, ca) = (json_upstream().await, Ca::new("rotation CA"));
    let (old, old_api) = (ca.issue(&["localhost"]), ca.issue(&["api.test"]));
    let (files, api_files) = (PemFiles::write(&old), PemFiles::write(&old_api));
    let gw = start_tls(&upstream, &files, &[("api.test", &api_files)], 5_000);

    let stream = connect(&gw, &ca, &[b"http/1.1"]).await;
    assert!(leaf_of(&stream) == old.der);
    let mut kept = h1_sender(stream).await;
    let (status, body) = proxy_h1(&mut kept, &upstream.url("/before")).await;
    assert_envelope_from_upstream(status, &body);

    let (new, new_api) = (ca.issue(&["localhost"]), ca.issue(&["api.test"]));
    files.replace_with(&new);
    api_files.replace_with(&new_api);
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let rotated = eventually(Duration::from_secs(3), || async {
        presented(&gw, "localhost", &ca).await == new.der
    })
    .await;
    assert!(rotated, "new handshakes still get the old certificate");
    let api = presented(&gw, "api.test", &ca).await;
    assert!(api == new_api.der, "the SNI certificate was not rotated");

    let (status, body) = proxy_h1(&mut kept, &upstream.url("/after")).await;
    assert_envelope_from_upstream(status, &body);
    assert_eq!(upstream.last().uri, "/after");
    let (status, body) = proxy_once(&gw, &ca, &upstream.url("/fresh")).await;
    assert_envelope_from_upstream(status, &body);
}

/// Sends SIGHUP and waits for gwproxy to log one more line naming `file`,
/// the refused reload; returns that line.
async fn hup_and_wait_for_refusal(gw: &Gwproxy, file: &Path) -> String {
    let file = file.display().to_string();
    let naming = || -> Vec<String> {
        let stderr = gw.stderr();
        stderr
            .lines()
            .filter(|l| l.contains(&file))
            .map(str::to_owned)
            .collect()
    };
    let before = naming().len();
    gw.signal("HUP");
    let logged = eventually(Duration::from_secs(5), || async { naming().len() > before }).await;
    assert!(logged, "no failed reload naming {file}:\n{}", gw.stderr());
    naming().pop().unwrap()
}

#[tokio::test]
async fn sighup_with_a_broken_certificate_keeps_the_old_one_and_logs_why() {
    let rig = Rig::start(5_000).await;
    let (gw, ca, old, files) = (&rig.gw, &rig.ca, &rig.leaf, &rig.files);
    rig.assert_served("/before").await;

    std::fs::write(&files.cert, "this is not a certificate\n").unwrap();
    let line = hup_and_wait_for_refusal(gw, &files.cert).await;
    assert!(line.contains("not reloaded"), "{line}");
    for _ in 0..2 {
        assert!(presented(gw, "localhost", ca).await == old.der);
    }
    rig.assert_served("/still").await;

    // A renewal caught half-way: the new certificate is written, its key
    // not yet. Serving that pair would fail every handshake.
    let new = ca.issue(&["localhost"]);
    std::fs::write(&files.cert, &new.cert_pem).unwrap();
    hup_and_wait_for_refusal(gw, &files.cert).await;
    assert!(presented(gw, "localhost", ca).await == old.der);
    rig.assert_served("/half").await;

    // Failed reloads do not stop the next good one.
    std::fs::write(&files.key, &new.key_pem).unwrap();
    gw.signal("HUP");
    let rotated = eventually(Duration::from_secs(3), || async {
        presented(gw, "localhost", ca).await == new.der
    })
    .await;
    assert!(rotated, "the repaired files were not loaded");
}

/// Rotation tools send SIGHUP whenever a renewal lands, which may be just
/// after a (re)start. gwproxy logs "listening" before it installs its
/// SIGHUP handler, so a HUP in that window meets the default action and
/// ends the process.
#[test]
fn a_sighup_right_after_start_does_not_kill_gwproxy() {
    let ca = Ca::new("early HUP CA");
    let files = PemFiles::write(&ca.issue(&["localhost"]));
    let tls = json!({ "cert_file": files.cert, "key_file": files.key });
    let config = Gwproxy::config(&["http://127.0.0.1:9"], json!({ "tls": tls }));

    for _ in 0..3 {
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let config = config.clone();
                std::thread::spawn(move || {
                    let gw = Gwproxy::start(config);
                    gw.signal("HUP");
                    std::thread::sleep(Duration::from_millis(300));
                    (is_running(gw.pid()), gw.stderr())
                })
            })
            .collect();
        for start in starts {
            let (running, stderr) = start.join().unwrap();
            assert!(running, "gwproxy died of an early SIGHUP:\n{stderr}");
        }
    }
}

/// Neither gone nor a zombie, by the kernel's account (Linux).
fn is_running(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let state = status.lines().find(|l| l.starts_with("State:"));
    state.is_some_and(|s| !s.contains("Z (zombie)"))
}

#[test]
fn a_missing_or_broken_certificate_file_stops_start_up_naming_it() {
    let ca = Ca::new("start-up CA");
    let files = PemFiles::write(&ca.issue(&["localhost"]));
    let missing = temp_path("pem");
    let garbage = PemFiles::write(&ca.issue(&["api.test"]));
    std::fs::write(&garbage.key, "not a key").unwrap();

    let cases = [
        json!({ "cert_file": missing, "key_file": files.key }),
        json!({ "cert_file": files.cert, "key_file": files.key,
                "certificates": [garbage.tls_entry("api.test")] }),
    ];
    for (tls, named) in cases.into_iter().zip([&missing, &garbage.key]) {
        let config = Gwproxy::config(&["http://127.0.0.1:9"], json!({ "tls": tls }));
        let (code, stderr) = run_to_exit(&config);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(&named.display().to_string()), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Runs gwproxy with `config` until it exits by itself (killed, by its own
/// PID, after 10 s); returns its exit code and stderr.
fn run_to_exit(config: &Value) -> (Option<i32>, String) {
    let path = temp_path("json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gwproxy"))
        .args(["--config".as_ref(), path.as_os_str()])
        .env_remove("GWPROXY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gwproxy kept running with a broken certificate");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

// ---------------------------------------------------------------------------
// What is not TLS, or not finished

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_400_envelope() {
    let rig = Rig::start(5_000).await;
    let (gw, upstream) = (&rig.gw, &rig.upstream);

    for request in [
        "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
        format!(
            "POST /api/proxy HTTP/1.1\r\nHost: localhost\r\nAuthorization: {SECRET}\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        ),
    ] {
        let mut tcp = tcp_connect(gw).await;
        tcp.write_all(request.as_bytes()).await.unwrap();
        let raw = String::from_utf8(read_until_closed(&mut tcp).await).unwrap();

        let (head, body) = raw.split_once("\r\n\r\n").expect("a whole response");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 400 "), "{raw}");
        assert!(head.contains("content-type: application/json"), "{raw}");
        let body = parse_json(body.as_bytes());
        assert_eq!(body["Status"], "Error", "{body}");
        let detail = body["Meta"]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("plain HTTP was sent to the HTTPS port"),
            "{body}"
        );
    }
    rig.assert_served("/").await;
    assert_eq!(upstream.count(), 1, "plain HTTP reached the gateway");
}

async fn tcp_connect(gw: &Gwproxy) -> TcpStream {
    let connected = timeout(WAIT, TcpStream::connect(gw.addr)).await;
    connected.unwrap().unwrap()
}

/// Everything the peer sends until it closes; a reset after data counts as closing.
async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = timeout(WAIT, tcp.read(&mut chunk)).await;
        match read.expect("closed in time") {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if all.is_empty() => panic!("read failed before any byte: {e}"),
            Err(_) => return all,
        }
    }
}

/// A real ClientHello's bytes, to send in part.
fn client_hello() -> Vec<u8> {
    let config = trusting(&Ca::new("hello CA").der, &[]);
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut bytes = Vec::new();
    client.write_tls(&mut bytes).unwrap();
    assert_eq!(bytes[0], 0x16, "a handshake record");
    bytes
}

/// How long after connecting gwproxy closes a connection that never
/// completes its handshake. `trickle` bytes are sent one per 100 ms.
async fn time_to_close(gw: &Gwproxy, burst: Vec<u8>, trickle: Vec<u8>) -> Duration {
    let start = Instant::now();
    let tcp = tcp_connect(gw).await;
    let (mut reader, mut writer) = tcp.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&burst).await;
        for byte in trickle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
        // Keep the write half open: a FIN would end the handshake early.
        tokio::time::sleep(WAIT).await;
    });
    let mut chunk = [0u8; 1024];
    loop {
        let read = timeout(WAIT, reader.read(&mut chunk)).await;
        match read.expect("gwproxy never closed the stalled handshake") {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    writing.abort();
    start.elapsed()
}

#[tokio::test]
async fn stalled_handshakes_are_closed_at_the_timeout_while_others_are_served() {
    let rig = Rig::start(500).await;
    let (gw, upstream, ca) = (&rig.gw, &rig.upstream, &rig.ca);
    let hello = client_hello();

    let silent = time_to_close(gw, Vec::new(), Vec::new());
    let partial = time_to_close(gw, hello[..hello.len() / 2].to_vec(), Vec::new());
    // The deadline covers the whole handshake: bytes that keep coming
    // slowly do not extend it.
    let trickling = time_to_close(gw, hello[..5].to_vec(), hello[5..].to_vec());
    let served = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let answer = proxy_once(gw, ca, &upstream.url("/meanwhile")).await;
        (answer, started.elapsed())
    };
    let (silent, partial, trickling, ((status, body), took)) =
        tokio::join!(silent, partial, trickling, served);

    assert_envelope_from_upstream(status, &body);
    assert!(took < Duration::from_millis(2_000), "served in {took:?}");
    let (early, late) = (Duration::from_millis(450), Duration::from_millis(2_000));
    for (what, took) in [("silent", silent), ("half", partial), ("slow", trickling)] {
        let why = format!("{what} handshake closed after {took:?}, not about 500 ms");
        assert!(took >= early && took <= late, "{why}");
    }
}

#[tokio::test]
async fn failed_handshakes_do_not_disturb_other_connections() {
    let rig = Rig::start(5_000).await;
    let (gw, upstream, ca) = (&rig.gw, &rig.upstream, &rig.ca);

    let stream = connect(gw, ca, &[b"http/1.1"]).await;
    let mut open = h1_sender(stream).await;
    let (status, _) = proxy_h1(&mut open, &upstream.url("/1")).await;
    assert_eq!(status, StatusCode::OK);

    // A client that trusts another CA gives up on the handshake.
    let stranger = Ca::new("someone else's CA");
    let refused = tls_connect(gw, "localhost", trusting(&stranger.der, &[])).await;
    let error = refused.expect_err("handshake must fail");
    let cause = error.get_ref().and_then(|e| e.downcast_ref());
    let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
    assert_eq!(cause, Some(&unknown), "{error:?}");

    // A client that speaks only a protocol gwproxy does not.
    let refused = tls_connect(gw, "localhost", trusting(&ca.der, &[b"spdy/3"])).await;
    assert!(refused.is_err(), "no common ALPN protocol must fail");

    // A handshake record that is garbage.
    let mut tcp = tcp_connect(gw).await;
    tcp.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
    read_until_closed(&mut tcp).await;

    let (status, body) = proxy_h1(&mut open, &upstream.url("/2")).await;
    assert_envelope_from_upstream(status, &body);
    rig.assert_served("/3").await;
    assert_eq!(upstream.count(), 3);
}
