//! The HTTPS listener: rustls per connection, then hyper serving the axum
//! router over it, under the same connection caps as SMTP.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::{router, Peer};
use crate::ingress::{Accepted, ConnectionPermit, Ingress};

/// Accepts on `listener` until shutdown.
pub async fn serve(listener: TcpListener, ingress: Arc<Ingress>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let name = format!("https:{port}");
    let routes = router(ingress.clone());
    while let Some(accepted) = ingress.next_connection(&listener, &name).await {
        // Over a cap, before TLS there is no way to say why: it is closed.
        let Accepted::Admitted(stream, addr, permit) = accepted else {
            continue;
        };
        let app = routes.clone().layer(Extension(Peer { addr, port }));
        let span = tracing::info_span!("https", peer = %addr, port);
        ingress
            .control
            .tasks
            .spawn(connection(stream, app, ingress.clone(), name.clone(), permit).instrument(span));
    }
}

async fn connection(
    stream: TcpStream,
    app: axum::Router,
    ingress: Arc<Ingress>,
    name: String,
    _permit: ConnectionPermit,
) {
    let settings = ingress.live.get();
    let acceptor = tokio_rustls::TlsAcceptor::from(settings.tls.https.clone());
    let handshake = settings.node.smtp.tls_handshake_timeout;
    let stream = crate::deadline::WriteDeadline::new(stream, settings.node.smtp.command_timeout);
    let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            ingress.metrics.tls_handshake(&name, false);
            tracing::debug!("TLS handshake failed: {error}");
            return;
        }
        Err(_) => {
            ingress.metrics.tls_handshake(&name, false);
            return;
        }
    };
    ingress.metrics.tls_handshake(&name, true);
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let served = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(served);
    let shutdown = ingress.control.shutdown.clone();
    tokio::select! {
        result = served.as_mut() => {
            if let Err(error) = result {
                tracing::debug!("HTTP connection ended: {error}");
            }
        }
        _ = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            let _ = served.await;
        }
    }
}
