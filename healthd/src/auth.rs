//! Bearer tokens: the admin token (sha256 in healthd's config) sees and
//! changes everything; an account token (sha256 in the fleet file's
//! `[[accounts]]`) reads its own clusters.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet::Fleet;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// An account, with the ids of the clusters it may read.
    Account {
        name: String,
        clusters: Vec<String>,
    },
}

impl Caller {
    pub fn may_read(&self, cluster: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Account { clusters, .. } => clusters.iter().any(|c| c == cluster),
        }
    }
}

/// The bearer token of `Authorization`, if the request carries one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Who is calling, if the request carries a known token.
pub fn caller(headers: &HeaderMap, fleet: &Fleet, admin_sha256: Option<&str>) -> Option<Caller> {
    caller_for_token(bearer(headers)?, fleet, admin_sha256)
}

/// Who holds `token` (from a header, or the dashboard's cookie), if anyone.
pub fn caller_for_token(token: &str, fleet: &Fleet, admin_sha256: Option<&str>) -> Option<Caller> {
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    if admin_sha256.is_some_and(|admin| admin.trim().eq_ignore_ascii_case(&digest)) {
        return Some(Caller::Admin);
    }
    fleet
        .accounts
        .iter()
        .find(|a| a.token_sha256.trim().eq_ignore_ascii_case(&digest))
        .map(|a| Caller::Account {
            name: a.name.clone(),
            clusters: a.clusters.clone(),
        })
}

pub fn message(status: StatusCode, message: &str) -> Response {
    let body = fleet::clusters_api::ErrorMessage {
        message: message.to_string(),
    };
    (status, Json(body)).into_response()
}

pub fn unauthenticated() -> Response {
    let mut response = message(StatusCode::UNAUTHORIZED, "Unauthenticated.");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

pub fn forbidden() -> Response {
    message(StatusCode::FORBIDDEN, "This action is unauthorized.")
}

pub fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not Found")
}
