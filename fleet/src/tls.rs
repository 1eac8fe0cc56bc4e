//! TLS on a daemon's HTTP listener (healthd's feed and APIs between hosts):
//! the server configuration from a PEM chain and key, whose certificate a
//! reload replaces for the connections that follow, and a listener that
//! hands axum only connections whose handshake finished.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::certificate::CertificateInfo;
use crate::live::Live;
use crate::secret::{SecretFile, SecretStore};

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes finished but not yet taken by the server.
const BACKLOG: usize = 128;

/// A rustls server configuration (TLS 1.2 and 1.3, ALPN `http/1.1`) from
/// a PEM certificate chain and a PEM private key (a file, or a Vault
/// reference read through `secrets`); the error names the file or
/// reference, never the key.
pub fn server_config(
    certificate: &Path,
    key: &SecretFile,
    secrets: &SecretStore,
) -> Result<Arc<ServerConfig>, String> {
    ServerTls::load(certificate, key, secrets).map(|tls| tls.config)
}

/// The certificate a listener serves, replaceable while it runs: rustls
/// asks for it at every handshake, so after a replacement every new
/// connection gets the new one and established ones keep their session.
#[derive(Debug)]
pub struct ServedCertificate(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A listener's TLS as a config load builds it: the rustls configuration
/// (serving `served`) and what its certificate says (for `/status`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub served: Arc<ServedCertificate>,
    pub certificate: CertificateInfo,
}

impl ServerTls {
    /// Reads and checks the PEM chain and key (a file or a Vault
    /// reference); the error names the file or reference.
    pub fn load(
        certificate: &Path,
        key_file: &SecretFile,
        secrets: &SecretStore,
    ) -> Result<ServerTls, String> {
        let (chain, key) = read_pair(certificate, key_file, secrets)?;
        let info = CertificateInfo::from_der(certificate, &chain[0])?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            format!(
                "certificate {} does not go with its key {key_file}: {e}",
                certificate.display(),
            )
        })?;
        let served = Arc::new(ServedCertificate(ArcSwap::from_pointee(certified)));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(served.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            served,
            certificate: info,
        })
    }

    /// Serves `newer`'s certificate on the listener built with this one.
    pub fn take_certificate_of(&self, newer: &ServerTls) {
        self.served.0.store(newer.served.0.load_full());
    }
}

/// Keeps `running` (the TLS a listener was started with) serving the
/// certificate of the settings in service: after every reload, until
/// `shutdown`.
pub async fn follow_reloads<S: Send + Sync + 'static>(
    live: Arc<Live<S>>,
    running: ServerTls,
    shutdown: CancellationToken,
    tls_of: impl Fn(&S) -> Option<ServerTls> + Send,
) {
    let mut reloads = live.subscribe();
    while crate::live::next_change(&mut reloads, &shutdown).await {
        if let Some(newer) = tls_of(&live.get()) {
            running.take_certificate_of(&newer);
        }
    }
}

/// Every certificate of the PEM file at `path`, in order (a chain: the leaf
/// first; or a set of CAs); an error naming the file when it cannot be read
/// or holds none.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read PEM certificates from {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certificates)
}

fn read_pair(
    certificate: &Path,
    key: &SecretFile,
    secrets: &SecretStore,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = read_certificates(certificate)?;
    let pem = key.read(secrets)?;
    let key = PrivateKeyDer::from_pem_slice(pem.expose())
        .map_err(|e| format!("cannot read a PEM private key from {key}: {e}"))?;
    Ok((chain, key))
}

/// Accepts TCP connections and runs each handshake in its own task (bounded
/// in time), so a slow client never holds up the others.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `listener` until `shutdown`.
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        shutdown: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (send, ready) = mpsc::channel(BACKLOG);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let stop = async {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = send.closed() => {}
                    }
                };
                let Some((stream, peer)) =
                    crate::accept::next_connection(&listener, local, stop).await
                else {
                    return;
                };
                let (acceptor, send) = (acceptor.clone(), send.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = send.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {error}")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop stopped (shutdown): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
