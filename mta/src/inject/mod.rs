//! HTTP injection: `POST /api/inject/v1` with Basic auth, and `/live`,
//! `/ready`, on the HTTPS listener.
//!
//! Answers: 200 with counts (per-recipient failures inside), 400 naming the
//! bad field, 401 with `WWW-Authenticate`, 413 for a body, a recipient list
//! or a message over the limits, 422 for the domain rules, headers only
//! MTAs write and templates that do not compile, 503 while the spool
//! cannot take mail.
//!
//! Messages are rendered one at a time and spooled as they are rendered,
//! with at most `max_message_size` bytes (or 64 messages) waiting for the
//! spool at once: a request never holds all its messages.

pub mod build;
pub mod model;
pub mod server;
pub mod template;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::auth::Principal;
use crate::config::Settings;
use crate::ingress::{Ingress, Rejected, Submission, Via};
use build::{Group, Refusal, RenderError};
use model::InjectResponse;

/// `[inject]` in the node config: limits of `POST /api/inject/v1`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectConfig {
    /// Recipients in one request; past it, 413 with the number.
    pub max_recipients_per_request: usize,
    /// Template instructions one message may run (MiniJinja fuel).
    pub template_fuel: u64,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            max_recipients_per_request: 1000,
            template_fuel: 100_000,
        }
    }
}

/// Messages waiting for the spool at once, besides the byte bound.
const MAX_IN_FLIGHT: usize = 64;

/// The client's address and the port it reached, set per connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub port: u16,
}

/// The routes of the HTTPS listener.
pub fn router(ingress: Arc<Ingress>) -> Router {
    Router::new()
        .route("/api/inject/v1", post(inject))
        .with_state(ingress.clone())
        .merge(fleet::admin::health_routes(ingress.readiness.clone()))
}

/// The largest request body: a message of the size limit, base64-encoded
/// as an attachment, and room for the rest of the JSON.
pub fn body_limit(max_message_size: usize) -> usize {
    max_message_size / 3 * 4 + 1024 * 1024
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = model::InjectError {
        error: message.into(),
    };
    (status, Json(body)).into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"unMTA\", charset=\"UTF-8\""),
    );
    response
}

async fn inject(
    State(ingress): State<Arc<Ingress>>,
    Extension(peer): Extension<Peer>,
    request: Request,
) -> Response {
    let settings = ingress.live.get();
    let via = Via::Http { port: peer.port };
    let listener = via.listener();
    let principal =
        match authenticate(&ingress, &settings, peer, &listener, request.headers()).await {
            Ok(principal) => principal,
            Err(response) => return response,
        };
    if let Err(reason) = ingress.spool_health() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the spool cannot take mail: {reason}"),
        );
    }
    let mut request = match read_request(&ingress, &settings, &listener, request).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    match deliver(&ingress, &settings, &mut request, &principal, peer, via).await {
        Ok((status, response)) => (status, Json(response)).into_response(),
        Err(refusal) => refused(&ingress, &listener, peer, (&principal, &request), refusal),
    }
}

/// The account of the request's Basic credentials, unless they are
/// missing, wrong (answered after `auth_failure_delay`) or their client or
/// username is blocked for failing too often.
async fn authenticate(
    ingress: &Ingress,
    settings: &Settings,
    peer: Peer,
    listener: &str,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    let limits = &settings.node.smtp;
    let Some((username, password)) = basic_credentials(headers) else {
        return Err(unauthorized("Basic authentication is required"));
    };
    let client = crate::anvil::client_key(peer.addr.ip(), limits.ipv6_client_prefix);
    if let Err(blocked) = ingress
        .anvil
        .check(client, &username, limits.anvil_limits())
    {
        ingress.metrics.auth_blocked(listener);
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, blocked.to_string());
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(blocked.retry_after().as_secs().max(1)),
        );
        return Err(response);
    }
    match ingress.auth.verify(&username, &password).await {
        Ok(principal) => Ok(principal),
        Err(_) => {
            ingress.metrics.auth_failure(listener);
            ingress.rejection(crate::ingress::Refused {
                peer: peer.addr,
                helo: "",
                protocol: "HTTP",
                credential: Some(&username),
                sender: "",
                recipient: "",
                reply: "401 authentication credentials invalid",
            });
            ingress
                .anvil
                .failed(client, &username, limits.anvil_limits());
            tracing::info!(peer = %peer.addr, "HTTP authentication failed");
            tokio::time::sleep(limits.auth_failure_delay).await;
            Err(unauthorized("authentication credentials invalid"))
        }
    }
}

/// The request body within `body_limit` (refused at once when its declared
/// length is far over it), parsed.
async fn read_request(
    ingress: &Ingress,
    settings: &Settings,
    listener: &str,
    request: Request,
) -> Result<model::InjectRequest, Response> {
    let limits = &settings.node.smtp;
    let limit = body_limit(limits.max_message_size);
    let too_large = || {
        ingress.metrics.rejected(listener, Rejected::Size);
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit.saturating_mul(4)) {
        return Err(too_large());
    }
    let expected = declared.unwrap_or(0).min(limit);
    let body = match read_body(request.into_body(), limit, expected, limits.data_timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Err(too_large()),
        Err(BodyError::Broken(reason)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("request body: {reason}"),
            ))
        }
    };
    model::parse(&body).map_err(|message| error(StatusCode::BAD_REQUEST, message))
}

/// The answer to a request refused as a whole, counted (and a domain rule's
/// refusal recorded as a Rejection).
fn refused(
    ingress: &Ingress,
    listener: &str,
    peer: Peer,
    (principal, request): (&Principal, &model::InjectRequest),
    refusal: Refusal,
) -> Response {
    match refusal {
        Refusal::Invalid(message) => error(StatusCode::BAD_REQUEST, message),
        Refusal::Policy(policy) => {
            ingress.metrics.rejected(listener, Rejected::Policy);
            let reply = format!("422 {policy}");
            ingress.rejection(crate::ingress::Refused {
                peer: peer.addr,
                helo: "",
                protocol: "HTTP",
                credential: Some(&principal.username),
                sender: &request.envelope_sender,
                recipient: "",
                reply: &reply,
            });
            error(StatusCode::UNPROCESSABLE_ENTITY, policy.to_string())
        }
        Refusal::Unprocessable(message) => {
            ingress.metrics.rejected(listener, Rejected::Policy);
            error(StatusCode::UNPROCESSABLE_ENTITY, message)
        }
        Refusal::TooLarge(message) => {
            ingress.metrics.rejected(listener, Rejected::Size);
            error(StatusCode::PAYLOAD_TOO_LARGE, message)
        }
    }
}

/// Renders the messages one by one and spools each as it is rendered;
/// answers with the counts. A refusal of the first message (size, domain
/// rules) refuses the request before anything is stored; a later message
/// that fails fails only its recipients.
async fn deliver(
    ingress: &Ingress,
    settings: &Settings,
    request: &mut model::InjectRequest,
    principal: &Principal,
    peer: Peer,
    via: Via<'static>,
) -> Result<(StatusCode, InjectResponse), Refusal> {
    let limits = &settings.node.smtp;
    let inject = &settings.node.inject;
    if request.recipients.len() > inject.max_recipients_per_request {
        return Err(Refusal::TooLarge(format!(
            "the request has {} recipients, more than the {} allowed in one request (inject.max_recipients_per_request)",
            request.recipients.len(),
            inject.max_recipients_per_request
        )));
    }
    let bounds = build::Limits {
        max_line: limits.max_line_length,
        max_message_size: limits.max_message_size,
        fuel: inject.template_fuel,
    };
    let prepared = build::prepare(request, principal, bounds)?;
    let sender = prepared.sender();
    let (groups, bad) = prepared.plan(limits.max_recipients);
    let mut response = InjectResponse::default();
    fail_invalid(&mut response, &bad);
    let mut in_flight = FuturesUnordered::new();
    let mut in_flight_bytes = 0usize;
    let mut spool_failed = false;
    let mut last_size = 0usize;
    for (index, group) in groups.iter().enumerate() {
        // Room for a message like the last one before rendering the next.
        while !in_flight.is_empty()
            && (in_flight.len() >= MAX_IN_FLIGHT
                || in_flight_bytes + last_size > limits.max_message_size)
        {
            if let Some((group, size, result)) = in_flight.next().await {
                in_flight_bytes -= size;
                spool_failed |= settle(&mut response, group, result);
            }
        }
        let rendered = match prepared.render(group, principal) {
            Ok(rendered) => rendered,
            Err(RenderError::TooLarge(max)) if index == 0 => {
                return Err(Refusal::TooLarge(format!(
                    "the rendered message would be larger than the {max} bytes allowed"
                )))
            }
            Err(RenderError::Policy(policy)) if index == 0 => return Err(Refusal::Policy(policy)),
            Err(other) => {
                fail(&mut response, group, &other.to_string());
                continue;
            }
        };
        let size = rendered.data.len();
        last_size = size;
        in_flight_bytes += size;
        let submission = (principal, sender, via, peer);
        in_flight.push(spool_group(ingress, submission, group, rendered));
    }
    while let Some((group, _, result)) = in_flight.next().await {
        spool_failed |= settle(&mut response, group, result);
    }
    let status = if spool_failed && response.success_count == 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((status, response))
}

/// Fails the recipients whose address is not valid, each with the reason.
fn fail_invalid(response: &mut InjectResponse, bad: &[&model::Recipient]) {
    for recipient in bad {
        response.fail_count += 1;
        response.failed_recipients.push(recipient.email.clone());
        let why = crate::policy::check_recipient(&recipient.email)
            .err()
            .map_or_else(
                || "not a valid email address".to_string(),
                |e| e.to_string(),
            );
        response.errors.push(format!("{}: {why}", recipient.email));
    }
}

/// Spools one rendered message for `group`'s recipients; resolves to the
/// group, the message's size and the spool's answer.
async fn spool_group<'a>(
    ingress: &Ingress,
    (principal, sender, via, peer): (&Principal, &str, Via<'static>, Peer),
    group: &'a Group<'a>,
    rendered: build::Rendered,
) -> (&'a Group<'a>, usize, Result<(), crate::spool::SpoolError>) {
    let size = rendered.data.len();
    let recipients: Vec<String> = group.recipients.iter().map(|r| r.email.clone()).collect();
    let result = ingress
        .submit(Submission {
            principal,
            sender,
            recipients: &recipients,
            data: &rendered.data,
            has_message_id: rendered.has_message_id,
            has_date: rendered.has_date,
            via,
            peer: peer.addr,
        })
        .await
        .map(|_| ());
    (group, size, result)
}

/// Counts one spooled group; true when the spool refused it.
fn settle(
    response: &mut InjectResponse,
    group: &Group<'_>,
    result: Result<(), crate::spool::SpoolError>,
) -> bool {
    match result {
        Ok(()) => {
            response.success_count += group.recipients.len();
            false
        }
        Err(e) => {
            fail(response, group, &format!("not stored: {e}"));
            true
        }
    }
}

fn fail(response: &mut InjectResponse, group: &Group<'_>, why: &str) {
    for recipient in &group.recipients {
        response.fail_count += 1;
        response.failed_recipients.push(recipient.email.clone());
        response.errors.push(format!("{}: {why}", recipient.email));
    }
}

/// `Authorization: Basic base64(user:password)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads up to `limit` bytes. A larger body is read to its end (so the
/// client hears the 413) unless it goes far past the limit.
async fn read_body(
    body: Body,
    limit: usize,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let hard_cap = limit.saturating_mul(4);
    let read = async {
        let mut body = body;
        // The declared length (bounded by the limit): no doubling growth.
        let mut data = Vec::with_capacity(expected);
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            total += chunk.len();
            if total <= limit {
                data.extend_from_slice(&chunk);
            } else if total > hard_cap {
                return Err(BodyError::TooLarge);
            }
        }
        if total > limit {
            Err(BodyError::TooLarge)
        } else {
            Ok(data)
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::Broken(format!("not received within {timeout:?}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            "Basic dXNlcjpwYTpzcw==".parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("user".into(), "pa:ss".into()))
        );
        headers.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
    }

    #[test]
    fn body_limit_fits_a_base64_message() {
        let limit = body_limit(10 * 1024 * 1024);
        assert!(limit > 10 * 1024 * 1024 * 4 / 3);
        assert!(limit < 20 * 1024 * 1024);
    }
}
