//! The Clusters API, read-only, in the service's format:
//! `GET /api/v1/clusters` and `GET /api/v1/clusters/{id}`, `{"data": ...}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet::clusters_api::{ClusterView, Connection, Data, MtaView, SmtpPort};
use fleet::feed::{rfc3339, MtaState};
use fleet::{Cluster, Fleet, Live};

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
        let clusters: Vec<ClusterView> = fleet
            .clusters
            .iter()
            .filter(|c| caller.may_read(&c.id))
            .map(|c| cluster_view(fleet, c, records))
            .collect();
        Json(Data { data: clusters }).into_response()
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
            Some(cluster) => Json(Data {
                data: cluster_view(fleet, cluster, records),
            })
            .into_response(),
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
pub fn cluster_view(
    fleet: &Fleet,
    cluster: &Cluster,
    records: &HashMap<String, Record>,
) -> ClusterView {
    let hostname = fleet.hostname(cluster);
    let https = fleet.ports.https;
    let http_endpoint = if https == 443 {
        format!("https://{hostname}/api/inject/v1")
    } else {
        format!("https://{hostname}:{https}/api/inject/v1")
    };
    let smtp_ports = fleet
        .ports
        .smtp
        .iter()
        .map(|&port| SmtpPort {
            port,
            use_case: use_case(port).to_string(),
            starttls_required: true,
        })
        .collect();
    let mtas = cluster
        .mtas
        .iter()
        .map(|mta| match records.get(&mta.name) {
            Some(record) => MtaView {
                name: mta.name.clone(),
                state: record.shown,
                since: Some(rfc3339(record.shown_since)),
                latency_ms: record.latency_ms(),
                reason: record.reason(),
                degraded: record.degraded.clone(),
            },
            None => MtaView {
                name: mta.name.clone(),
                state: MtaState::Unknown,
                since: None,
                latency_ms: None,
                reason: None,
                degraded: None,
            },
        })
        .collect();
    ClusterView {
        id: cluster.id.clone(),
        hostname: hostname.clone(),
        connection: Connection {
            http_endpoint,
            smtp_host: hostname,
            smtp_ports,
            https_port: https,
        },
        rate_limit: cluster.rate_limit.per_mta_wording(),
        mtas,
    }
}
