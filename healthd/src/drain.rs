//! Drain by admin call: `POST /v1/mtas/{name}/drain` and `DELETE` to undo,
//! with the admin token. Admin drains are kept in the state file (written
//! atomically) so they survive a restart. A drained MTA is still probed and
//! shown, and never served.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use fleet::clusters_api::{Data, DrainView};
use fleet::Live;
use serde::{Deserialize, Serialize};

use crate::auth::{caller, forbidden, message, not_found, unauthenticated, Caller};
use crate::board::{Board, Record};
use crate::config::Settings;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// MTA names drained through the admin API.
    drained: BTreeSet<String>,
}

/// The drain state file.
#[derive(Debug, Clone)]
pub struct DrainFile {
    path: PathBuf,
}

impl DrainFile {
    pub fn new(path: &Path) -> DrainFile {
        DrainFile {
            path: path.to_path_buf(),
        }
    }

    /// The drained MTAs; none when the file does not exist yet.
    pub fn load(&self) -> Result<BTreeSet<String>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => {
                return Err(format!(
                    "drain state {} cannot be read: {e}",
                    self.path.display()
                ))
            }
        };
        serde_json::from_str::<Saved>(&text)
            .map(|saved| saved.drained)
            .map_err(|e| format!("drain state {} is not valid: {e}", self.path.display()))
    }

    /// Replaces the file atomically.
    pub fn save(&self, drained: &BTreeSet<String>) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(&Saved {
            drained: drained.clone(),
        })?;
        text.push('\n');
        fleet::fs::replace_file(&self.path, text.as_bytes())
    }
}

#[derive(Clone)]
pub struct DrainState {
    pub board: Arc<Board>,
    pub live: Arc<Live<Settings>>,
    pub file: DrainFile,
    /// One drain change at a time, so the file and the board agree.
    pub writing: Arc<tokio::sync::Mutex<()>>,
}

pub fn routes(state: DrainState) -> Router {
    Router::new()
        .route("/v1/mtas/{name}/drain", post(drain).delete(undrain))
        .with_state(state)
}

async fn drain(state: State<DrainState>, name: UrlPath<String>, headers: HeaderMap) -> Response {
    change(state, name, headers, true).await
}

async fn undrain(state: State<DrainState>, name: UrlPath<String>, headers: HeaderMap) -> Response {
    change(state, name, headers, false).await
}

async fn change(
    State(state): State<DrainState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    on: bool,
) -> Response {
    let settings = state.live.get();
    let who = state
        .board
        .read(|fleet, _| caller(&headers, fleet, settings.node.admin_token_sha256.as_deref()));
    match who {
        None => return unauthenticated(),
        Some(Caller::Account { .. }) => return forbidden(),
        Some(Caller::Admin) => {}
    }
    let _writing = state.writing.lock().await;
    if state.board.record(&name).is_none() {
        return not_found();
    }
    let mut drained = state.board.admin_drains();
    let changed = if on {
        drained.insert(name.clone())
    } else {
        drained.remove(&name)
    };
    if changed {
        let file = state.file.clone();
        let saved = tokio::task::spawn_blocking(move || file.save(&drained)).await;
        let error = match saved {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = error {
            tracing::error!(mta = %name, "drain change refused: the state file cannot be written: {error}");
            return message(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The drain state cannot be saved: {error}"),
            );
        }
    }
    let Some(record) = state.board.set_admin_drain(&name, on) else {
        return not_found();
    };
    if changed {
        tracing::info!(mta = %name, "{name} {} by admin call; shown as {}", if on { "drained" } else { "undrained" }, record.shown.as_str());
    }
    Json(Data {
        data: drain_view(&name, &record),
    })
    .into_response()
}

fn drain_view(name: &str, record: &Record) -> DrainView {
    DrainView {
        name: name.to_string(),
        state: record.shown,
        drained: record.drained(),
        drained_by_admin: record.admin_drain,
        drained_by_fleet: record.fleet_drain,
        probes: record.health.state,
        reason: record.reason(),
    }
}
