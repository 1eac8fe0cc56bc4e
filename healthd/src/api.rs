//! The Clusters API, read-only, in the service's format:
//! `GET /api/v1/clusters` and `GET /api/v1/clusters/{id}`, `{"data": ...}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet::feed::rfc3339;
use fleet::{Cluster, Fleet, Live};
use serde_json::{json, Value};

use crate::auth::{caller, not_found, unauthenticated, Caller};
use crate::board::{Board, Record};
use crate::config::Settings;

#[derive(Clone)]
pub struct ApiState {
    pub board: Arc<Board>,
    pub live: Arc<Live<Settings>>,
}

pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/clusters", get(list))
        .route("/api/v1/clusters/{id}", get(show))
        .with_state(state)
}

fn who(state: &ApiState, headers: &HeaderMap, fleet: &Fleet) -> Option<Caller> {
    let settings = state.live.get();
    caller(headers, fleet, settings.node.admin_token_sha256.as_deref())
}

async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    state.board.read(|fleet, records| {
        let Some(caller) = who(&state, &headers, fleet) else {
            return unauthenticated();
        };
        let clusters: Vec<Value> = fleet
            .clusters
            .iter()
            .filter(|c| caller.may_read(&c.id))
            .map(|c| cluster_json(fleet, c, records))
            .collect();
        Json(json!({ "data": clusters })).into_response()
    })
}

async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    state.board.read(|fleet, records| {
        let Some(caller) = who(&state, &headers, fleet) else {
            return unauthenticated();
        };
        match fleet.cluster(&id).filter(|c| caller.may_read(&c.id)) {
            Some(cluster) => {
                Json(json!({ "data": cluster_json(fleet, cluster, records) })).into_response()
            }
            None => not_found(),
        }
    })
}

fn use_case(port: u16) -> &'static str {
    match port {
        587 => "recommended: submission",
        25 => "standard SMTP port",
        2587 => "alternative when 587 is blocked",
        465 => "implicit TLS",
        _ => "alternative port",
    }
}

/// One cluster as the Clusters API writes it.
pub fn cluster_json(fleet: &Fleet, cluster: &Cluster, records: &HashMap<String, Record>) -> Value {
    let hostname = fleet.hostname(cluster);
    let https = fleet.ports.https;
    let http_endpoint = if https == 443 {
        format!("https://{hostname}/api/inject/v1")
    } else {
        format!("https://{hostname}:{https}/api/inject/v1")
    };
    let smtp_ports: Vec<Value> = fleet
        .ports
        .smtp
        .iter()
        .map(|port| json!({ "port": port, "use_case": use_case(*port), "starttls_required": true }))
        .collect();
    let mtas: Vec<Value> = cluster
        .mtas
        .iter()
        .map(|mta| match records.get(&mta.name) {
            Some(record) => json!({
                "name": mta.name,
                "state": record.shown.as_str(),
                "since": rfc3339(record.shown_since),
                "latency_ms": record.latency_ms(),
                "reason": record.reason(),
                "degraded": record.degraded,
            }),
            None => json!({ "name": mta.name, "state": "unknown", "since": null, "latency_ms": null, "reason": null, "degraded": null }),
        })
        .collect();
    json!({
        "id": cluster.id,
        "hostname": hostname,
        "connection": {
            "http_endpoint": http_endpoint,
            "smtp_host": hostname,
            "smtp_ports": smtp_ports,
            "https_port": https,
        },
        "rate_limit": cluster.rate_limit.per_mta_wording(),
        "mtas": mtas,
    })
}
