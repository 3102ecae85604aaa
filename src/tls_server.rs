//! The HTTPS listener's TLS: certificates chosen by SNI, reloadable without a restart.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::config::TlsConfig;
use crate::error::ProxyError;
use crate::metrics::Registry;

/// Sessions remembered for TLS 1.2 resumption by ID; TLS 1.3 and 1.2
/// tickets need no server memory at all.
const SESSION_CACHE_SIZE: usize = 16 * 1024;

/// The listener's TLS settings and the certificates it serves now.
#[derive(Debug)]
pub struct ListenerTls {
    server: Arc<ServerConfig>,
    resolver: Arc<SniResolver>,
    config: TlsConfig,
}

impl ListenerTls {
    /// Loads every certificate; the error names the file at fault.
    pub fn load(config: &TlsConfig) -> Result<ListenerTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(SniResolver {
            store: RwLock::new(Arc::new(CertStore::load(config, &provider)?)),
        });

        // rustls speaks only TLS 1.2 and 1.3, and its suites are all AEAD
        // with forward secrecy: nothing weak to switch off.
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // The server's order wins (RFC 8446 section 4.1.1 leaves the pick
        // to the server): AES-GCM first where the CPU has AES instructions,
        // whatever order an old client lists its suites in.
        server.ignore_client_order = true;
        server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        server.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("TLS session tickets unavailable: {e}"))?;

        Ok(ListenerTls {
            server: Arc::new(server),
            resolver,
            config: config.clone(),
        })
    }

    /// Reads the certificate files that `config` names (the same paths, or
    /// new ones after a config reload). New handshakes see the new
    /// certificates; established connections keep theirs. On any error
    /// the old certificates stay and the error is returned. The handshake
    /// timeout stays as it was at start.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), String> {
        let provider = rustls::crypto::ring::default_provider();
        let store = CertStore::load(config, &provider)?;
        let mut current = self
            .resolver
            .store
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(store);
        Ok(())
    }
}

/// Picks the certificate for a ClientHello's server name.
#[derive(Debug)]
struct SniResolver {
    /// Swapped whole on reload; a handshake clones the Arc and lets go of
    /// the lock at once.
    store: RwLock<Arc<CertStore>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.store.read().unwrap_or_else(|p| p.into_inner()).clone();
        Some(store.pick(hello.server_name()))
    }
}

#[derive(Debug)]
struct CertStore {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertStore {
    fn load(config: &TlsConfig, provider: &CryptoProvider) -> Result<CertStore, String> {
        let default = Arc::new(load_certified_key(
            &config.cert_file,
            &config.key_file,
            provider,
        )?);
        let mut store = CertStore {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for entry in &config.certificates {
            let key = Arc::new(load_certified_key(
                &entry.cert_file,
                &entry.key_file,
                provider,
            )?);
            match entry.domain_name.strip_prefix("*.") {
                Some(parent) => store.wildcard.insert(parent.to_owned(), key),
                None => store.exact.insert(entry.domain_name.clone(), key),
            };
        }
        Ok(store)
    }

    /// Exact name first, then a wildcard for the name's parent (one label,
    /// as RFC 6125 section 6.4.3 allows), else the default certificate.
    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// Reads a PEM chain and its PKCS#8, PKCS#1 or SEC1 key, and checks that
/// they belong together.
pub fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = load_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "certificate {} and key {} do not form a usable pair: {e}",
            cert_file.display(),
            key_file.display()
        )
    })
}

/// Every certificate in a PEM file, in order.
pub fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let unreadable = |e: &dyn std::fmt::Display| {
        format!("cannot read certificates from {}: {e}", file.display())
    };
    let chain = CertificateDer::pem_file_iter(file)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if chain.is_empty() {
        return Err(format!("no PEM certificate found in {}", file.display()));
    }
    Ok(chain)
}

/// The first byte of every TLS connection: a handshake record (RFC 8446
/// section 5.1, content type 22).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Completes the TLS handshake within `tls.handshake_timeout_ms`. A client
/// that speaks plain HTTP to this port gets a readable 400 instead of a
/// TLS alert it cannot show; one that stalls or fails is dropped.
pub async fn accept(
    tls: &ListenerTls,
    stream: TcpStream,
    registry: &Registry,
) -> Option<TlsStream<TcpStream>> {
    let accepted = handshake(tls, stream).await;
    let counter = match accepted {
        Some(_) => &registry.tls_handshakes,
        None => &registry.tls_handshake_failures,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    accepted
}

async fn handshake(tls: &ListenerTls, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    let deadline = tokio::time::Instant::now() + tls.config.handshake_timeout;

    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => {
            let _ = tokio::time::timeout_at(deadline, refuse_plain_http(stream)).await;
            return None;
        }
        _ => return None,
    }

    match tokio::time::timeout_at(
        deadline,
        TlsAcceptor::from(tls.server.clone()).accept(stream),
    )
    .await
    {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            None
        }
    }
}

async fn refuse_plain_http(mut stream: TcpStream) {
    let body = ProxyError::bad_request("plain HTTP was sent to the HTTPS port").body();
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}
