//! The accept loop of one SMTP port: a connection over a cap gets
//! `421 4.7.0` and is closed (never left hanging); every other one gets a
//! tracked session task.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::session::{self, Context};
use crate::ingress::{Accepted, Ingress};

/// Accepts on `listener` until shutdown.
pub async fn serve(listener: TcpListener, ingress: Arc<Ingress>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let name = format!("smtp:{port}");
    while let Some(accepted) = ingress.next_connection(&listener, &name).await {
        let settings = ingress.live.get();
        match accepted {
            Accepted::Refused(stream, _, cap) => {
                let hostname = settings.hostname.clone();
                ingress
                    .control
                    .tasks
                    .spawn(refuse(stream, hostname, cap.label()));
            }
            Accepted::Admitted(stream, peer, permit) => {
                let stream =
                    crate::deadline::WriteDeadline::new(stream, settings.node.smtp.command_timeout);
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
