//! The admin HTTP listener every daemon serves: `/live`, `/ready` (503 with
//! the reason), `/metrics` (Prometheus text or OpenMetrics) and `/status` (JSON).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why a daemon is not ready, by concern; ready when there is no reason.
/// A degraded concern (serving, but from stale data) keeps `/ready` at 200
/// and says so in the body.
#[derive(Default)]
pub struct Readiness {
    reasons: Mutex<BTreeMap<String, String>>,
    degraded: Mutex<BTreeMap<String, String>>,
}

impl Readiness {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn not_ready(&self, concern: &str, reason: impl Into<String>) {
        self.lock().insert(concern.to_string(), reason.into());
    }

    pub fn ready(&self, concern: &str) {
        self.lock().remove(concern);
    }

    /// Still ready, but `note` says what is wrong (shown by `/ready`).
    pub fn degraded(&self, concern: &str, note: impl Into<String>) {
        lock(&self.degraded).insert(concern.to_string(), note.into());
    }

    pub fn not_degraded(&self, concern: &str) {
        lock(&self.degraded).remove(concern);
    }

    /// `Err` holds every reason, joined, in words.
    pub fn check(&self) -> Result<(), String> {
        joined(&self.lock()).map_or(Ok(()), Err)
    }

    /// Every degradation note, joined, if there is one.
    pub fn degradation(&self) -> Option<String> {
        joined(&lock(&self.degraded))
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<String, String>> {
        lock(&self.reasons)
    }
}

fn lock(
    map: &Mutex<BTreeMap<String, String>>,
) -> parking_lot::MutexGuard<'_, BTreeMap<String, String>> {
    map.lock()
}

fn joined(map: &BTreeMap<String, String>) -> Option<String> {
    (!map.is_empty()).then(|| map.values().cloned().collect::<Vec<_>>().join("; "))
}

type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Clone)]
pub struct AdminState {
    pub readiness: Arc<Readiness>,
    pub registry: Arc<Registry>,
    pub status: StatusFn,
}

/// `/live` and `/ready` alone, for a daemon's public listener.
pub fn health_routes(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .with_state(readiness)
}

pub async fn ready(State(readiness): State<Arc<Readiness>>) -> Response {
    match readiness.check() {
        Ok(()) => match readiness.degradation() {
            None => (StatusCode::OK, "ready\n").into_response(),
            Some(note) => (StatusCode::OK, format!("ready, degraded: {note}\n")).into_response(),
        },
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

pub fn admin_router(state: AdminState) -> Router {
    let metrics_registry = state.registry.clone();
    let status = state.status.clone();
    health_routes(state.readiness)
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let registry = metrics_registry.clone();
                async move { metrics(&registry, &headers) }
            }),
        )
        .route(
            "/status",
            get(move || {
                let status = status.clone();
                async move { Json(status()) }
            }),
        )
}

/// `/metrics` in the format the `Accept` header asks for (see
/// [`crate::metrics`]).
fn metrics(registry: &Registry, headers: &axum::http::HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    match crate::metrics::encode(registry, accept) {
        Ok((content_type, body)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown`, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// [`serve`] over TLS: only connections whose handshake finished reach
/// `router`.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = crate::tls::TlsListener::new(listener, tls, shutdown.clone())?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// [`serve`] (or [`serve_tls`] with `tls`) with at most `max` connections
/// open at once: past it the next connection waits in the kernel's accept
/// queue until one closes, so a flood cannot exhaust file descriptors.
pub async fn serve_capped(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    max: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max.max(1)));
    let stop = shutdown.clone();
    match tls {
        None => {
            axum::serve(
                Capped {
                    inner: listener,
                    slots,
                },
                router,
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        }
        Some(tls) => {
            let inner = crate::tls::TlsListener::new(listener, tls, shutdown.clone())?;
            axum::serve(Capped { inner, slots }, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    }
}

/// A listener that holds a slot for every connection it hands out.
struct Capped<L> {
    inner: L,
    slots: Arc<tokio::sync::Semaphore>,
}

impl<L> axum::serve::Listener for Capped<L>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    type Io = Slotted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => std::future::pending().await,
        };
        let (io, addr) = self.inner.accept().await;
        (Slotted { io, _slot: slot }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection and the slot it holds until it is dropped.
pub struct Slotted<T> {
    io: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Slotted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Slotted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
