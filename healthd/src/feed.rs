//! The health feed: `GET /v1/fleet` answers the whole state now;
//! `GET /v1/fleet?after=N` waits until the generation passes N (at most
//! `max_wait`, then answers the state as it is).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use fleet::feed::FleetHealth;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::board::Board;

/// How long a long-poll waits at most.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct FeedState {
    pub board: Arc<Board>,
    pub max_wait: Duration,
    pub shutdown: CancellationToken,
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

async fn fleet_feed(
    State(state): State<FeedState>,
    Query(query): Query<FeedQuery>,
) -> Json<FleetHealth> {
    if let Some(after) = query.after {
        let mut generations = state.board.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(state.max_wait, generations.wait_for(|g| *g > after)) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
    Json(state.board.snapshot())
}
