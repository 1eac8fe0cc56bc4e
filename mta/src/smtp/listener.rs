//! The accept loop of one SMTP port: connection caps answered with
//! `421 4.7.0` (never a hang), one tracked task per connection, and no
//! accept error ends the loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::session::{self, Context};
use crate::ingress::Ingress;

/// Accepts on `listener` until shutdown.
pub async fn serve(listener: TcpListener, ingress: Arc<Ingress>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let name = format!("smtp:{port}");
    let shutdown = ingress.control.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait a moment, go on.
                tracing::warn!(listener = %name, "accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let settings = ingress.live.get();
        let caps = &settings.node.smtp;
        let permit = match ingress.limiter.try_acquire(
            peer.ip(),
            caps.max_connections,
            caps.max_connections_per_ip,
        ) {
            Ok(permit) => permit,
            Err(cap) => {
                ingress.metrics.refused(&name, cap);
                tracing::info!(%peer, cap = cap.label(), "connection refused at its cap");
                let hostname = settings.hostname.clone();
                ingress
                    .control
                    .tasks
                    .spawn(refuse(stream, hostname, cap.label()));
                continue;
            }
        };
        ingress.metrics.connection(&name);
        let ctx = Context {
            ingress: ingress.clone(),
            settings,
            peer,
            port,
        };
        let span = tracing::info_span!("smtp", %peer, port);
        ingress.control.tasks.spawn(
            async move {
                session::serve(stream, ctx).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Answers a connection over a cap and closes it, within a bound.
async fn refuse(mut stream: TcpStream, hostname: String, cap: &str) {
    let reply = format!("421 4.7.0 {hostname} Too many connections ({cap}), try again later\r\n");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
