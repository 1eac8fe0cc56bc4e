//! The one TLS client configuration every probe shares, and TLS errors in
//! words.

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// A client trusting only the certificates in `ca_file`, with session
/// resumption so steady probing costs little CPU.
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in fleet::tls::read_certificates(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("{} holds a bad certificate: {e}", ca_file.display()))?;
    }
    // SHA-256 suites first: probes hash more handshake than data, and
    // SHA-384 costs more per handshake. The server still chooses.
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::in_memory_sessions(16_384);
    Ok(Arc::new(config))
}

/// A failed TLS handshake with `host`, in words.
pub fn describe(error: &std::io::Error, host: &str) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return format!("tls: handshake failed: {error}");
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("tls: certificate not valid for {host}")
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "tls: certificate not issued by the configured CA".to_string()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "tls: certificate expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "tls: certificate not valid yet".to_string()
            }
            other => format!("tls: bad certificate: {other:?}"),
        },
        other => format!("tls: handshake failed: {other}"),
    }
}
