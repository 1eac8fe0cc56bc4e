//! The MTA's admin API, on its admin listener next to /metrics and /status:
//! `POST /api/admin/bounce` with `Authorization: Bearer <token>` (the
//! token's sha256 is `admin_token_sha256` in the node config).

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use fleet::Live;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::delivery::Engine;
use crate::queue::sweep::BounceSelector;
use crate::Settings;

/// The body of `POST /api/admin/bounce`: at least one of `cluster`,
/// `domain`, `id`, and the reason recorded in the events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BounceRequest {
    pub cluster: Option<String>,
    pub domain: Option<String>,
    pub id: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BounceAnswer {
    /// Queued recipients bounced.
    pub bounced: usize,
}

#[derive(Clone)]
struct AdminApi {
    live: Arc<Live<Settings>>,
    engine: Arc<OnceLock<Arc<Engine>>>,
}

/// The admin routes; `engine` is filled once delivery has started.
pub fn routes(live: Arc<Live<Settings>>, engine: Arc<OnceLock<Arc<Engine>>>) -> Router {
    Router::new()
        .route("/api/admin/bounce", post(bounce))
        .with_state(AdminApi { live, engine })
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "message": text.into() }))).into_response()
}

/// Whether the request carries the admin token.
fn authorized(headers: &HeaderMap, sha256: &str) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
    else {
        return false;
    };
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let expected = sha256.trim().to_ascii_lowercase();
    // Constant time over the (fixed-length) digests.
    digest.len() == expected.len()
        && digest
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn bounce(
    State(api): State<AdminApi>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let settings = api.live.get();
    let Some(sha256) = settings.node.admin_token_sha256.as_deref() else {
        return message(
            StatusCode::NOT_FOUND,
            "the admin API is off: no admin_token_sha256 in the node config",
        );
    };
    if !authorized(&headers, sha256) {
        let mut response = message(StatusCode::UNAUTHORIZED, "Unauthenticated.");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    let request: BounceRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return message(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let selector = BounceSelector {
        cluster: request.cluster,
        domain: request.domain.map(|d| d.to_ascii_lowercase()),
        id: request.id,
    };
    if selector.is_empty() {
        return message(
            StatusCode::BAD_REQUEST,
            "give at least one of cluster, domain or id",
        );
    }
    if request.reason.trim().is_empty() || request.reason.len() > 1000 {
        return message(
            StatusCode::BAD_REQUEST,
            "reason must be 1 to 1000 characters",
        );
    }
    let Some(engine) = api.engine.get() else {
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            "delivery has not started yet",
        );
    };
    match engine.admin_bounce(selector, request.reason).await {
        Ok(bounced) => (StatusCode::OK, Json(BounceAnswer { bounced })).into_response(),
        Err(e) => message(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}
