//! The health feed: `GET /v1/fleet` answers the whole state now;
//! `GET /v1/fleet?after=N` waits until the generation passes N (at most
//! `max_wait`, then answers the state as it is).
//!
//! Readers present `Authorization: Bearer <token>`: a follower's token
//! (`[[followers]]`, sha256 only) or the admin token. Without a token, or
//! with an unknown one, 401. With no follower configured the feed is open.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet::Live;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::auth::{bearer, unauthenticated};
use crate::board::Board;
use crate::config::Settings;

/// How long a long-poll waits at most.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct FeedState {
    pub board: Arc<Board>,
    pub live: Arc<Live<Settings>>,
    pub max_wait: Duration,
    pub shutdown: CancellationToken,
    /// Long polls waiting at once (`max_long_polls`, shared with the
    /// dashboard); past it a poll is answered 503 at once.
    pub long_polls: Arc<tokio::sync::Semaphore>,
}

/// 503 for a long poll over `max_long_polls`: retry in a second.
pub fn too_many_long_polls() -> Response {
    let mut response = (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "too many long polls waiting (max_long_polls): retry shortly\n",
    )
        .into_response();
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    pub after: Option<u64>,
}

pub fn routes(state: FeedState) -> Router {
    Router::new()
        .route("/v1/fleet", get(fleet_feed))
        .with_state(state)
}

/// Whether the request may read the feed.
pub fn authorized(settings: &Settings, headers: &HeaderMap) -> bool {
    if settings.node.followers.is_empty() {
        return true;
    }
    bearer(headers).is_some_and(|token| settings.may_follow(token))
}

async fn fleet_feed(
    State(state): State<FeedState>,
    Query(query): Query<FeedQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&state.live.get(), &headers) {
        return unauthenticated();
    }
    if let Some(after) = query.after {
        let Ok(_slot) = state.long_polls.clone().try_acquire_owned() else {
            return too_many_long_polls();
        };
        let mut generations = state.board.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(state.max_wait, generations.wait_for(|g| *g > after)) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
    Json(state.board.snapshot()).into_response()
}
