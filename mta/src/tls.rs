//! The TLS server side of SMTP STARTTLS and the HTTPS listener: rustls with
//! TLS 1.2 and 1.3, the certificate chain and key named by the node config.
//!
//! Built as part of [`Settings::load`](crate::Settings::load), so a reload
//! (SIGHUP) re-reads the files and a broken certificate is refused like any
//! other config error while the old one keeps serving. Each new connection
//! takes the configuration in service at its start.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use fleet::secret::SecretStore;

use crate::config::TlsConfig;

/// One rustls configuration per protocol: HTTPS announces ALPN `http/1.1`,
/// SMTP announces none; and what the leaf certificate says (serial and
/// validity, for `/status` and the expiry warning of `/ready`).
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    pub smtp: Arc<ServerConfig>,
    pub https: Arc<ServerConfig>,
    pub certificate: fleet::certificate::CertificateInfo,
}

impl TlsConfigs {
    /// Reads and checks the certificate chain and key (a file or a Vault
    /// reference read through `secrets`); the error is a sentence naming
    /// the file or reference, never the key.
    pub fn load(config: &TlsConfig, secrets: &SecretStore) -> Result<TlsConfigs, String> {
        let certs = fleet::tls::read_certificates(&config.certificate)?;
        let certificate =
            fleet::certificate::CertificateInfo::from_der(&config.certificate, &certs[0])?;
        let pem = config.key.read(secrets)?;
        let key = PrivateKeyDer::from_pem_slice(pem.expose())
            .map_err(|e| format!("cannot read a PEM private key from {}: {e}", config.key))?;
        let smtp = server_config(certs, key).map_err(|e| {
            format!(
                "certificate {} and key {}: {e}",
                config.certificate.display(),
                config.key
            )
        })?;
        let mut https = smtp.clone();
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfigs {
            smtp: Arc::new(smtp),
            https: Arc::new(https),
            certificate,
        })
    }
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
}
