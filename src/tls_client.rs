//! TLS towards `https` gateways: whom to trust, what to present, and plain words for failures.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::GatewayConfig;
use crate::tls_server::load_certs;

/// The client TLS settings for one gateway. Resumption uses rustls's
/// default in-memory session cache, so pooled reconnects are cheap.
pub fn client_config(gateway: &GatewayConfig) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;

    let builder = if gateway.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        builder.with_root_certificates(roots(gateway)?)
    };

    let mut config = match &gateway.client_cert {
        Some((cert_file, key_file)) => {
            let chain = load_certs(cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                format!("cannot read a private key from {}: {e}", key_file.display())
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "client certificate {} is unusable: {e}",
                    cert_file.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The gateway's `ca_file`, or the system's roots.
fn roots(gateway: &GatewayConfig) -> Result<Arc<RootCertStore>, String> {
    let Some(ca_file) = &gateway.ca_file else {
        return system_roots();
    };
    let mut store = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        store.add(cert).map_err(|e| {
            format!(
                "{} holds an unusable CA certificate: {e}",
                ca_file.display()
            )
        })?;
    }
    Ok(Arc::new(store))
}

/// Read once: every gateway without a `ca_file` shares them.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err("no system root certificates found; give the gateway a ca_file".into());
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// Plain words for a failed TLS connect, for `Meta.detail`.
pub fn describe_failure(error: &std::io::Error) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return format!("TLS failure: {error}");
    };
    let why = match tls {
        rustls::Error::InvalidCertificate(cert) => certificate_problem(cert),
        rustls::Error::AlertReceived(alert) => {
            format!("the gateway refused the handshake ({alert:?})")
        }
        rustls::Error::NoApplicationProtocol => "no common ALPN protocol".to_owned(),
        other => other.to_string(),
    };
    format!("TLS failure: {why}")
}

fn certificate_problem(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => "the gateway's certificate has an unknown issuer".into(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the gateway's certificate is not valid for its host name (name mismatch)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the gateway's certificate has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the gateway's certificate is not valid yet".into()
        }
        CertificateError::Revoked => "the gateway's certificate is revoked".into(),
        other => format!("the gateway's certificate was rejected: {other:?}"),
    }
}

/// `insecure_skip_verify`: any certificate is accepted, but handshake
/// signatures are still checked so the connection is at least consistent.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
