//! Black-box tests of gwproxy's TLS towards `https` gateways: trust, names, expiry, mTLS, h2, pooling.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use common::{temp_path, Gwproxy};

/// The bound on every network wait.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Certificates, made fresh for every test.

/// A certificate authority that exists only for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
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
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn server_cert(&self, names: &[&str]) -> Leaf {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, false)
    }

    fn expired_server_cert(&self, names: &[&str]) -> Leaf {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, true)
    }

    fn client_cert(&self, name: &str) -> Leaf {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf::new(cert.pem(), cert.der().clone(), key)
    }

    /// The CA certificate in a file, for `ca_file`.
    fn file(&self) -> TempFile {
        TempFile::with(&self.pem)
    }
}

struct Leaf {
    cert_pem: String,
    der: CertificateDer<'static>,
    key: KeyPair,
}

impl Leaf {
    fn new(cert_pem: String, der: CertificateDer<'static>, key: KeyPair) -> Leaf {
        Leaf { cert_pem, der, key }
    }

    /// A certificate signed by its own key, for `localhost` and 127.0.0.1.
    fn self_signed() -> Leaf {
        let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]);
        let key = KeyPair::generate().unwrap();
        let cert = params.unwrap().self_signed(&key).unwrap();
        Leaf::new(cert.pem(), cert.der().clone(), key)
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }

    /// `client_cert_file` and `client_key_file` for a gateway entry.
    fn files(&self) -> (TempFile, TempFile) {
        let key = self.key.serialize_pem();
        (TempFile::with(&self.cert_pem), TempFile::with(&key))
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn with(text: &str) -> TempFile {
        let path = temp_path("pem");
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------
// A gateway that speaks TLS, run in the test.

/// What the TLS gateway saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    path: String,
    /// `:authority` in h2, the authority of an absolute-form target in HTTP/1.1.
    authority: Option<String>,
    host: Option<String>,
    /// The SNI of the connection that carried the request.
    sni: Option<String>,
    /// The first certificate the client presented, if any.
    client_cert: Option<CertificateDer<'static>>,
}

/// A TLS server on loopback with hyper behind it (HTTP/1.1, or h2 when
/// its config offers h2 by ALPN). Answers `{"path": …, "version": …}`.
struct TlsGateway {
    addr: SocketAddr,
    /// TCP connections accepted, handshake or not.
    connections: Arc<AtomicUsize>,
    /// Connections that completed the TLS handshake and have since closed.
    closed: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TlsGateway {
    async fn start(config: ServerConfig, delay: Duration) -> TlsGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = TlsGateway {
            addr: listener.local_addr().unwrap(),
            connections: Arc::new(AtomicUsize::new(0)),
            closed: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (count, seen) = (gateway.connections.clone(), gateway.seen.clone());
        let closed = gateway.closed.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, seen, closed) = (acceptor.clone(), seen.clone(), closed.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = timeout(WAIT, acceptor.accept(tcp)).await else {
                        return;
                    };
                    let session = tls.get_ref().1;
                    let sni = session.server_name().map(str::to_owned);
                    let client_cert = session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.clone().into_owned());
                    let service = service_fn(move |request: Request<Incoming>| {
                        let seen = seen.clone();
                        let (sni, client_cert) = (sni.clone(), client_cert.clone());
                        async move {
                            tokio::time::sleep(delay).await;
                            let answer = Seen {
                                version: request.version(),
                                path: request.uri().path().to_owned(),
                                authority: request.uri().authority().map(|a| a.to_string()),
                                host: request
                                    .headers()
                                    .get("host")
                                    .and_then(|h| h.to_str().ok())
                                    .map(str::to_owned),
                                sni,
                                client_cert,
                            };
                            let body = json!({
                                "path": answer.path,
                                "version": format!("{:?}", answer.version),
                            });
                            seen.lock().unwrap().push(answer);
                            let response = Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        gateway
    }

    /// A gateway presenting `leaf`, HTTP/1.1 only, answering at once.
    async fn serving(leaf: &Leaf) -> TlsGateway {
        TlsGateway::start(server_config(leaf, &[], None), Duration::ZERO).await
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The gateway's TLS: its certificate, its ALPN list and, for mutual TLS,
/// the CA its clients' certificates must come from.
fn server_config(leaf: &Leaf, alpn: &[&[u8]], client_ca: Option<&Ca>) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(vec![leaf.der.clone()], leaf.private_key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

// ---------------------------------------------------------------------------
// gwproxy in front of such gateways.

/// gwproxy (plain HTTP listener) with these `gateways` entries.
/// One worker, so that connection counts speak of one pool (each worker
/// has its own).
fn start_gwproxy(gateways: Vec<Value>) -> Gwproxy {
    start_gwproxy_with_pool(gateways, json!({}))
}

/// [`start_gwproxy`] with these `pool` keys.
fn start_gwproxy_with_pool(gateways: Vec<Value>, pool: Value) -> Gwproxy {
    let extra = json!({ "gateways": gateways, "workers": 1, "pool": pool });
    Gwproxy::start(Gwproxy::config(&[], extra))
}

async fn proxy_get(gw: &Gwproxy, url: &str) -> (StatusCode, Value) {
    let request = json!({ "method": "GET", "url": url });
    timeout(WAIT, gw.proxy(request))
        .await
        .expect("gwproxy answered in time")
}

/// A proxied GET that the gateway answered; returns the gateway's body.
async fn assert_proxied(gw: &Gwproxy, url: &str) -> Value {
    let (status, body) = proxy_get(gw, url).await;
    assert_eq!(status, StatusCode::OK, "{url}: {body}");
    assert_eq!(body["status_code"], 200, "{url}: {body}");
    body["body"].clone()
}

/// A proxied GET that failed on TLS; returns `Meta.detail`.
async fn assert_tls_failure(gw: &Gwproxy, url: &str, words: &str) -> String {
    let (status, body) = proxy_get(gw, url).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{url}: {body}");
    assert_eq!(body["Status"], "Error", "{body}");
    assert_eq!(body["Message"], "Failed to process proxy request", "{body}");
    let detail = body["Meta"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.starts_with("TLS failure:"), "{body}");
    assert!(detail.contains(words), "expected {words:?} in {body}");
    detail
}

/// A well-configured https gateway for the same gwproxy, to show that a
/// TLS failure elsewhere leaves it working.
struct GoodGateway {
    server: TlsGateway,
    _ca_file: TempFile,
    entry: Value,
}

impl GoodGateway {
    async fn start() -> GoodGateway {
        let ca = Ca::new("good gateway CA");
        let server = TlsGateway::serving(&ca.server_cert(&["localhost", "127.0.0.1"])).await;
        let ca_file = ca.file();
        let entry = json!({ "url": server.url("127.0.0.1", ""), "ca_file": ca_file.0 });
        GoodGateway {
            server,
            _ca_file: ca_file,
            entry,
        }
    }

    async fn assert_still_works(&self, gw: &Gwproxy) {
        let before = self.server.seen().len();
        let body = assert_proxied(gw, &self.server.url("127.0.0.1", "/good")).await;
        assert_eq!(body["path"], "/good");
        assert_eq!(self.server.seen().len(), before + 1);
    }
}

/// Fails `bad_url` with `words`, then serves the good gateway, then fails
/// again: the failure is neither sticky nor cached as a success.
async fn fail_then_recover(gw: &Gwproxy, good: &GoodGateway, bad_url: &str, words: &str) {
    assert_tls_failure(gw, bad_url, words).await;
    good.assert_still_works(gw).await;
    assert_tls_failure(gw, bad_url, words).await;
    good.assert_still_works(gw).await;
}

// ---------------------------------------------------------------------------
// Trust

#[tokio::test]
async fn https_gateway_verified_by_its_ca_file_answers_200() {
    let ca = Ca::new("gateway CA");
    let server = TlsGateway::serving(&ca.server_cert(&["localhost", "127.0.0.1"])).await;
    let ca_file = ca.file();
    let gw = start_gwproxy(vec![
        json!({ "url": server.url("localhost", "/apis"), "ca_file": ca_file.0 }),
        json!({ "url": server.url("127.0.0.1", "/ip"), "ca_file": ca_file.0 }),
    ]);

    let body = assert_proxied(&gw, &server.url("localhost", "/apis/users?id=7")).await;
    assert_eq!(
        body,
        json!({ "path": "/apis/users", "version": "HTTP/1.1" })
    );
    let seen = server.seen();
    assert_eq!(seen[0].sni.as_deref(), Some("localhost"));
    let port = server.addr.port();
    assert_eq!(seen[0].host, Some(format!("localhost:{port}")));

    // An IP literal is checked against the certificate's IP SAN, and is
    // never sent as SNI (RFC 6066 section 3).
    let body = assert_proxied(&gw, &server.url("127.0.0.1", "/ip/x")).await;
    assert_eq!(body["path"], "/ip/x");
    assert_eq!(server.seen()[1].sni, None);
}

#[tokio::test]
async fn https_gateway_signed_by_another_ca_is_an_unknown_issuer() {
    let (ca, other) = (Ca::new("real CA"), Ca::new("unrelated CA"));
    let server = TlsGateway::serving(&ca.server_cert(&["localhost", "127.0.0.1"])).await;
    let (good, wrong_ca) = (GoodGateway::start().await, other.file());
    let bad = json!({ "url": server.url("127.0.0.1", ""), "ca_file": wrong_ca.0 });
    let gw = start_gwproxy(vec![bad, good.entry.clone()]);

    let bad_url = server.url("127.0.0.1", "/x");
    fail_then_recover(&gw, &good, &bad_url, "unknown issuer").await;
    assert!(
        server.seen().is_empty(),
        "no request may follow a failed check"
    );
}

#[tokio::test]
async fn https_gateway_whose_certificate_names_another_host_is_a_name_mismatch() {
    let ca = Ca::new("mismatch CA");
    let server = TlsGateway::serving(&ca.server_cert(&["other.test"])).await;
    let ip_only = TlsGateway::serving(&ca.server_cert(&["localhost"])).await;
    let (good, ca_file) = (GoodGateway::start().await, ca.file());
    let gw = start_gwproxy(vec![
        json!({ "url": server.url("localhost", ""), "ca_file": ca_file.0 }),
        json!({ "url": ip_only.url("127.0.0.1", ""), "ca_file": ca_file.0 }),
        good.entry.clone(),
    ]);

    let by_name = server.url("localhost", "/x");
    fail_then_recover(&gw, &good, &by_name, "name mismatch").await;
    // A DNS SAN does not cover the gateway's IP address.
    let by_ip = ip_only.url("127.0.0.1", "/x");
    fail_then_recover(&gw, &good, &by_ip, "name mismatch").await;
    assert!(server.seen().is_empty() && ip_only.seen().is_empty());
}

#[tokio::test]
async fn https_gateway_with_an_expired_certificate_is_refused_as_expired() {
    let ca = Ca::new("expiry CA");
    let leaf = ca.expired_server_cert(&["localhost", "127.0.0.1"]);
    let server = TlsGateway::serving(&leaf).await;
    let (good, ca_file) = (GoodGateway::start().await, ca.file());
    let bad = json!({ "url": server.url("127.0.0.1", ""), "ca_file": ca_file.0 });
    let gw = start_gwproxy(vec![bad, good.entry.clone()]);

    let bad_url = server.url("127.0.0.1", "/x");
    fail_then_recover(&gw, &good, &bad_url, "expired").await;
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_self_signed_gateway() {
    let server = TlsGateway::serving(&Leaf::self_signed()).await;
    let some_ca = Ca::new("some CA").file();
    let gw = start_gwproxy(vec![
        json!({ "url": server.url("localhost", "/skip"), "insecure_skip_verify": true }),
        json!({ "url": server.url("127.0.0.1", "/checked"), "ca_file": some_ca.0 }),
    ]);

    let body = assert_proxied(&gw, &server.url("localhost", "/skip/me")).await;
    assert_eq!(body["path"], "/skip/me");
    // The setting belongs to its gateway only.
    assert_tls_failure(&gw, &server.url("127.0.0.1", "/checked"), "TLS failure").await;
    assert!(
        gw.stderr().contains("insecure_skip_verify"),
        "no warning at start"
    );
}

#[tokio::test]
async fn https_gateway_that_answers_in_plain_http_is_a_tls_failure() {
    let plain = common::Upstream::fixed(200, "text/plain", b"not TLS").await;
    let good = GoodGateway::start().await;
    let gw = start_gwproxy(vec![
        json!({ "url": format!("https://{}", plain.addr) }),
        good.entry.clone(),
    ]);

    let bad_url = format!("https://{}/x", plain.addr);
    fail_then_recover(&gw, &good, &bad_url, "TLS failure").await;
    assert_eq!(plain.count(), 0);
}

/// `timeouts.connect_ms` covers the TLS handshake, not only TCP.
#[tokio::test]
async fn https_gateway_that_stalls_the_handshake_times_out_at_connect_ms() {
    let silent = common::raw_upstream(|tcp| async move {
        tokio::time::sleep(WAIT).await;
        drop(tcp);
    })
    .await;
    let good = GoodGateway::start().await;
    let gw = Gwproxy::start(Gwproxy::config(
        &[],
        json!({
            "gateways": [{ "url": format!("https://{silent}") }, good.entry],
            "timeouts": { "connect_ms": 500 },
        }),
    ));

    let started = std::time::Instant::now();
    let (status, body) = proxy_get(&gw, &format!("https://{silent}/x")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let detail = body["Meta"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("timeout"), "{body}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    good.assert_still_works(&gw).await;
}

// ---------------------------------------------------------------------------
// Mutual TLS

/// A gateway that requires client certificates from `client_ca`, and
/// gwproxy with three routes to it: `/with` the right certificate,
/// `/without` one, `/stranger` with one from another CA.
struct MutualTls {
    server: TlsGateway,
    client: Leaf,
    gw: Gwproxy,
    _files: Vec<TempFile>,
}

impl MutualTls {
    async fn start() -> MutualTls {
        let (ca, client_ca) = (Ca::new("mtls server CA"), Ca::new("mtls client CA"));
        let leaf = ca.server_cert(&["localhost", "127.0.0.1"]);
        let config = server_config(&leaf, &[], Some(&client_ca));
        let server = TlsGateway::start(config, Duration::ZERO).await;
        let client = client_ca.client_cert("gwproxy");
        let stranger = Ca::new("stranger CA").client_cert("gwproxy");
        let (ca_file, (cert, key)) = (ca.file(), client.files());
        let (stranger_cert, stranger_key) = stranger.files();
        let gw = start_gwproxy(vec![
            json!({ "url": server.url("127.0.0.1", "/with"), "ca_file": ca_file.0,
                    "client_cert_file": cert.0, "client_key_file": key.0 }),
            json!({ "url": server.url("127.0.0.1", "/without"), "ca_file": ca_file.0 }),
            json!({ "url": server.url("127.0.0.1", "/stranger"), "ca_file": ca_file.0,
                    "client_cert_file": stranger_cert.0, "client_key_file": stranger_key.0 }),
        ]);
        let files = vec![ca_file, cert, key, stranger_cert, stranger_key];
        MutualTls {
            server,
            client,
            gw,
            _files: files,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url("127.0.0.1", path)
    }
}

#[tokio::test]
async fn mutual_tls_gateway_is_reached_only_with_the_client_certificate() {
    let mtls = MutualTls::start().await;

    let body = assert_proxied(&mtls.gw, &mtls.url("/with/a")).await;
    assert_eq!(body["path"], "/with/a");
    assert!(mtls.server.seen()[0].client_cert.as_ref() == Some(&mtls.client.der));

    for refused in ["/without/b", "/stranger/c"] {
        let (status, body) = proxy_get(&mtls.gw, &mtls.url(refused)).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{refused}: {body}"
        );
        assert_eq!(body["Message"], "Failed to process proxy request", "{body}");
    }
    assert_proxied(&mtls.gw, &mtls.url("/with/d")).await;
    let paths: Vec<String> = mtls.server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/with/a", "/with/d"]);
}

/// Under TLS 1.3 the client's handshake is over before the gateway has
/// judged its certificate: the refusal comes as an alert on the first
/// read, and gwproxy words it as a broken connection.
#[tokio::test]
async fn a_refused_client_certificate_is_reported_as_a_tls_failure() {
    let mtls = MutualTls::start().await;

    for refused in ["/without/b", "/stranger/c"] {
        assert_tls_failure(&mtls.gw, &mtls.url(refused), "TLS failure").await;
    }
    assert!(mtls.server.seen().is_empty());
}

// ---------------------------------------------------------------------------
// Protocols and pooling

#[tokio::test]
async fn https_gateway_that_negotiates_h2_serves_concurrent_requests_on_one_connection() {
    let ca = Ca::new("h2 gateway CA");
    let leaf = ca.server_cert(&["localhost"]);
    let config = server_config(&leaf, &[b"h2"], None);
    let server = TlsGateway::start(config, Duration::from_millis(100)).await;
    let ca_file = ca.file();
    let gw = Arc::new(start_gwproxy(vec![
        json!({ "url": server.url("localhost", ""), "ca_file": ca_file.0 }),
    ]));

    let body = assert_proxied(&gw, &server.url("localhost", "/warm")).await;
    assert_eq!(body["version"], "HTTP/2.0");

    let requests: Vec<_> = (0..8)
        .map(|i| {
            let (gw, url) = (gw.clone(), server.url("localhost", &format!("/c/{i}")));
            tokio::spawn(async move { assert_proxied(&gw, &url).await })
        })
        .collect();
    for (i, request) in requests.into_iter().enumerate() {
        let body = request.await.unwrap();
        assert_eq!(
            body,
            json!({ "path": format!("/c/{i}"), "version": "HTTP/2.0" })
        );
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 9);
    assert!(seen.iter().all(|s| s.version == Version::HTTP_2));
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        1,
        "h2 is multiplexed"
    );
}

/// Past `pool.h2_max_streams_per_connection` requests in flight on every
/// h2 connection, gwproxy opens another; requests that arrive meanwhile
/// wait for that one rather than each opening its own. Connections that
/// then carry nothing for `pool.idle_timeout_ms` are closed.
#[tokio::test]
async fn an_h2_gateway_gets_one_more_connection_per_max_streams_requests() {
    let ca = Ca::new("h2 streams CA");
    let config = server_config(&ca.server_cert(&["localhost"]), &[b"h2"], None);
    let server = TlsGateway::start(config, Duration::from_millis(400)).await;
    let ca_file = ca.file();
    let gw = Arc::new(start_gwproxy_with_pool(
        vec![json!({ "url": server.url("localhost", ""), "ca_file": ca_file.0 })],
        json!({ "h2_max_streams_per_connection": 2, "idle_timeout_ms": 600 }),
    ));
    assert_proxied(&gw, &server.url("localhost", "/warm")).await;

    // Seven at once: two fit on the first connection, the other five
    // need three more.
    let requests: Vec<_> = (0..7)
        .map(|i| {
            let (gw, url) = (gw.clone(), server.url("localhost", &format!("/s/{i}")));
            tokio::spawn(async move { assert_proxied(&gw, &url).await })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap()["version"], "HTTP/2.0");
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 4);

    // All four idle out (the sweep runs every half idle timeout).
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.closed.load(Ordering::SeqCst) < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 4 idle h2 connections closed",
            server.closed.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_proxied(&gw, &server.url("localhost", "/again")).await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 5);
}

/// RFC 9113 section 8.3.1: a client that generates HTTP/2 requests
/// directly MUST convey the target's authority in `:authority`. gwproxy
/// sends origin-form targets, so h2 carries only a `Host` header (and the
/// h2 layer fills in `:scheme: http` on a TLS connection).
#[tokio::test]
async fn h2_requests_to_a_gateway_carry_its_authority() {
    let ca = Ca::new("h2 authority CA");
    let config = server_config(&ca.server_cert(&["localhost"]), &[b"h2"], None);
    let server = TlsGateway::start(config, Duration::ZERO).await;
    let ca_file = ca.file();
    let gw = start_gwproxy(vec![
        json!({ "url": server.url("localhost", ""), "ca_file": ca_file.0 }),
    ]);

    assert_proxied(&gw, &server.url("localhost", "/a")).await;
    let seen = &server.seen()[0];
    assert_eq!(seen.version, Version::HTTP_2);
    let authority = format!("localhost:{}", server.addr.port());
    assert_eq!(
        seen.authority.as_deref(),
        Some(authority.as_str()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn tls_connections_to_a_gateway_are_pooled() {
    let ca = Ca::new("pool CA");
    let leaf = ca.server_cert(&["localhost", "127.0.0.1"]);
    let config = server_config(&leaf, &[b"http/1.1"], None);
    let server = TlsGateway::start(config, Duration::ZERO).await;
    let ca_file = ca.file();
    let gw = start_gwproxy(vec![
        json!({ "url": server.url("127.0.0.1", ""), "ca_file": ca_file.0 }),
    ]);

    for i in 0..10 {
        let body = assert_proxied(&gw, &server.url("127.0.0.1", &format!("/{i}"))).await;
        assert_eq!(body["version"], "HTTP/1.1");
    }
    assert_eq!(server.seen().len(), 10);
    let connections = server.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 2,
        "{connections} TLS connections for 10 requests"
    );
}
