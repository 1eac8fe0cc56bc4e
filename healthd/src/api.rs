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

/// What each SMTP port is for, in the fleet's order: the first is the
/// recommended submission port, the others alternatives to it (25 named as
/// the standard port).
fn use_cases(ports: &[u16]) -> Vec<SmtpPort> {
    let first = ports.first().copied();
    ports
        .iter()
        .enumerate()
        .map(|(i, &port)| SmtpPort {
            port,
            use_case: match (i, port, first) {
                (0, _, _) => "recommended: submission".to_string(),
                (_, 25, _) => "standard SMTP port (often blocked by ISPs)".to_string(),
                (_, _, Some(first)) => format!("alternative when {first} is blocked"),
                _ => "alternative port".to_string(),
            },
            starttls_required: true,
        })
        .collect()
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
    let smtp_ports = use_cases(&fleet.ports.smtp);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cases(ports: &[u16]) -> Vec<(u16, String)> {
        use_cases(ports)
            .into_iter()
            .map(|p| (p.port, p.use_case))
            .collect()
    }

    /// The fleet's order decides: its first port is the recommended one,
    /// whatever its number (local-cluster's 10587 too).
    #[test]
    fn port_use_cases_follow_the_fleets_order() {
        assert_eq!(
            cases(&[587, 25, 2587]),
            [
                (587, "recommended: submission".to_string()),
                (25, "standard SMTP port (often blocked by ISPs)".to_string()),
                (2587, "alternative when 587 is blocked".to_string()),
            ]
        );
        assert_eq!(
            cases(&[10587, 10025, 12587])
                .into_iter()
                .map(|(_, case)| case)
                .collect::<Vec<_>>(),
            [
                "recommended: submission",
                "alternative when 10587 is blocked",
                "alternative when 10587 is blocked"
            ]
        );
        assert_eq!(cases(&[2587, 587])[0].1, "recommended: submission");
        assert!(cases(&[]).is_empty());
    }
}
