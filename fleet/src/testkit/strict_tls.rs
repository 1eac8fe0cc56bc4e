//! A TLS client as strict as rustls makes it (its default
//! `WebPkiServerVerifier`), trusting only a given CA, and an HTTP/1.1
//! keep-alive connection over it that reports the certificate it was
//! served: what tests use to judge a daemon's certificates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::certificate::CertificateInfo;

/// How long a handshake or one request may take.
const LIMIT: Duration = Duration::from_secs(20);

/// rustls's default verification with `ca_pem` as the only root, offering
/// `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// TLS over `stream` to `server_name` (a DNS name or an IP address) with
/// [`client_config`]; `Err` when the server's certificate is refused.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    server_name: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> anyhow::Result<TlsStream<S>> {
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, alpn)?);
    let name = ServerName::try_from(server_name.to_string())?;
    Ok(tokio::time::timeout(LIMIT, connector.connect(name, stream)).await??)
}

/// The leaf certificate a TLS session was served.
pub fn served<S>(tls: &TlsStream<S>) -> anyhow::Result<CertificateInfo> {
    let leaf = (tls.get_ref().1.peer_certificates())
        .and_then(|chain| chain.first())
        .ok_or_else(|| anyhow::anyhow!("the server presented no certificate"))?;
    CertificateInfo::from_der("(served)".as_ref(), leaf).map_err(anyhow::Error::msg)
}

/// An HTTP/1.1 keep-alive connection over the strict client.
pub struct Https {
    stream: BufReader<TlsStream<TcpStream>>,
    /// The certificate the server presented.
    pub leaf: CertificateInfo,
}

impl Https {
    /// Connects to `addr`, verifying the certificate for `server_name`;
    /// the server must choose ALPN `http/1.1`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &str,
    ) -> anyhow::Result<Https> {
        let tcp = tokio::time::timeout(LIMIT, TcpStream::connect(addr)).await??;
        let tls = connect(tcp, server_name, ca_pem, &[b"http/1.1"]).await?;
        anyhow::ensure!(
            tls.get_ref().1.alpn_protocol() == Some(&b"http/1.1"[..]),
            "the server did not choose ALPN http/1.1"
        );
        let leaf = served(&tls)?;
        Ok(Https {
            stream: BufReader::new(tls),
            leaf,
        })
    }

    /// `GET path` on this connection: the status and the body.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, String)> {
        tokio::time::timeout(LIMIT, self.exchange(path)).await?
    }

    async fn exchange(&mut self, path: &str) -> anyhow::Result<(u16, String)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await?;
        self.stream.flush().await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let code = line.split(' ').nth(1).and_then(|c| c.parse().ok());
        let code = code.ok_or_else(|| anyhow::anyhow!("no HTTP status line: {line:?}"))?;
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.stream.read_line(&mut header).await?;
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse()?;
            }
        }
        anyhow::ensure!(length <= 1 << 20, "an answer of {length} bytes");
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((code, String::from_utf8(body)?))
    }
}
