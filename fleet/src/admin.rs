//! The admin HTTP listener every daemon serves: `/live`, `/ready` (503 with
//! the reason), `/metrics` (Prometheus text) and `/status` (JSON).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        lock(&self.reasons)
    }
}

fn lock(
    map: &Mutex<BTreeMap<String, String>>,
) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
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
            get(move || {
                let registry = metrics_registry.clone();
                async move { metrics(&registry) }
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

fn metrics(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics encoding failed: {e}\n"),
        )
            .into_response(),
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
