//! The Cluster page, served at `/`: a sidebar of the clusters the viewer may
//! see and, for one of them, the Connection Details card, the rate limit,
//! the MTAs with their health, recent transitions and ready-to-paste
//! examples. The page follows the board with a long poll on
//! `/dashboard/clusters/{id}/live?after=N` and updates without a reload.
//!
//! Who may see what is the Clusters API's rule (`auth`), with the token in
//! an `Authorization: Bearer` header or kept server-side in a session whose
//! opaque random id is the HttpOnly, SameSite=Strict cookie the login form
//! (or `/?token=…`) sets; the cookie never holds the token. What a cluster is comes from
//! `api::cluster_view`, the API's own types.

mod journal;
mod page;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use cookie::{Cookie, SameSite};
use fleet::clusters_api::ClusterView;
use fleet::feed::MtaState;
use fleet::{Fleet, Live};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::cluster_view;
use crate::auth::{self, Caller};
use crate::board::Board;
use crate::config::Settings;

pub use journal::{Entry, Journal, JournalFile};
pub use sessions::Sessions;

/// The cookie that holds the viewer's session id (never the token).
pub const COOKIE: &str = "healthd_session";
/// How long a live poll waits for a change at most.
pub const MAX_WAIT: Duration = Duration::from_secs(25);
/// Transitions shown on the page.
const RECENT: usize = 20;

const CSS: &str = include_str!("dashboard.css");
const JS: &str = include_str!("dashboard.js");
const FAVICON: &str = include_str!("favicon.svg");

/// Nothing but this server: no inline code, no other host.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

#[derive(Clone)]
pub struct DashboardState {
    pub board: Arc<Board>,
    pub live: Arc<Live<Settings>>,
    pub journal: Arc<Journal>,
    pub shutdown: CancellationToken,
    pub max_wait: Duration,
    pub sessions: Arc<Sessions>,
    /// Long polls waiting at once (shared with the feed).
    pub long_polls: Arc<tokio::sync::Semaphore>,
}

impl DashboardState {
    /// The dashboard's state; starts the journal of transitions (kept in
    /// `journal`), which follows `board` on `tasks` until `shutdown`.
    pub fn start(
        board: Arc<Board>,
        live: Arc<Live<Settings>>,
        journal: Option<JournalFile>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        long_polls: Arc<tokio::sync::Semaphore>,
    ) -> DashboardState {
        let journal = Journal::start(board.clone(), journal, tasks, shutdown.clone());
        DashboardState {
            board,
            live,
            journal,
            shutdown,
            max_wait: MAX_WAIT,
            sessions: Arc::default(),
            long_polls,
        }
    }

    /// Who is looking: a Bearer header first, then the cookie.
    fn viewer(&self, headers: &HeaderMap, fleet: &Fleet) -> Option<Caller> {
        let settings = self.live.get();
        let admin = settings.node.admin_token_sha256.as_deref();
        auth::caller(headers, fleet, admin).or_else(|| {
            let token = self.sessions.token(&session_id(headers)?)?;
            auth::caller_for_token(&token, fleet, admin)
        })
    }

    fn token_is_known(&self, token: &str) -> bool {
        let settings = self.live.get();
        let admin = settings.node.admin_token_sha256.as_deref();
        self.board
            .read(|fleet, _| auth::caller_for_token(token, fleet, admin))
            .is_some()
    }
}

pub fn routes(state: DashboardState) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/clusters/{id}", get(cluster))
        .route("/login", post(login).get(|| async { see_other("/") }))
        .route("/logout", post(logout))
        .route("/dashboard/clusters/{id}/live", get(live))
        .route("/dashboard/assets/dashboard.css", get(css))
        .route("/dashboard/assets/dashboard.js", get(js))
        .route("/dashboard/assets/favicon.svg", get(favicon))
        .with_state(state)
}

/// The session cookie's value, whatever it holds (the `cookie` crate
/// parses each `Cookie` header).
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == COOKIE)
        .map(|cookie| cookie.value().trim().to_string())
        .filter(|value| !value.is_empty())
}

/// The session cookie holding `value` for `max_age`: HttpOnly,
/// SameSite=Strict, for the whole site.
fn session_set_cookie(value: String, max_age: Duration) -> Option<HeaderValue> {
    let cookie = Cookie::build((COOKIE, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64))
        .build();
    HeaderValue::from_str(&cookie.to_string()).ok()
}

/// The session id in the cookie, if it has the shape of one.
fn session_id(headers: &HeaderMap) -> Option<String> {
    session_cookie(headers).filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn see_other(location: &'static str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, HeaderValue::from_static(location))],
    )
        .into_response()
}

/// A page with the headers every dashboard page carries.
fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(headers);
    response
}

fn secure(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON)
}

#[derive(Debug, Deserialize)]
struct HomeQuery {
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// Sets the cookie and sends the browser to `/`, or shows the form again.
fn log_in(state: &DashboardState, token: &str) -> Response {
    let token = token.trim();
    if token.is_empty() || !state.token_is_known(token) {
        return html(
            StatusCode::UNAUTHORIZED,
            page::login(Some("That token is not valid. Check it and try again.")),
        );
    }
    let cookie = session_set_cookie(state.sessions.open(token), sessions::TTL);
    let mut response = see_other("/");
    let headers = response.headers_mut();
    if let Some(cookie) = cookie {
        headers.insert(header::SET_COOKIE, cookie);
    }
    secure(headers);
    response
}

/// A form posted from another site (its `Origin` is not this host) is
/// refused: nobody else's page signs a viewer in or out.
fn cross_site(headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let from = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    if from.is_some_and(|from| !host.is_empty() && from.eq_ignore_ascii_case(host)) {
        return None;
    }
    Some(auth::forbidden())
}

async fn login(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    log_in(&state, &form.token)
}

async fn logout(State(state): State<DashboardState>, headers: HeaderMap) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    if let Some(id) = session_id(&headers) {
        state.sessions.close(&id);
    }
    let mut response = see_other("/");
    let headers = response.headers_mut();
    if let Some(expired) = session_set_cookie(String::new(), Duration::ZERO) {
        headers.insert(header::SET_COOKIE, expired);
    }
    secure(headers);
    response
}

async fn home(
    State(state): State<DashboardState>,
    Query(query): Query<HomeQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = query.token {
        return log_in(&state, &token);
    }
    show(&state, &headers, None)
}

async fn cluster(
    State(state): State<DashboardState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    show(&state, &headers, Some(&id))
}

/// Everything one page needs, read from the board at once.
struct Gathered {
    viewer: Caller,
    nav: Vec<page::Nav>,
    /// `None` when the viewer may see no cluster of that id.
    selected: Option<page::Selected>,
}

/// The viewer's clusters for the sidebar and cluster `id` (or the first).
fn gather(state: &DashboardState, headers: &HeaderMap, id: Option<&str>) -> Option<Gathered> {
    let settings = state.live.get();
    let reach = page::Reach {
        dns: settings.node.dashboard.dns,
        ca_file: (settings.node.dashboard.ca_file.as_ref()).map(|ca| ca.display().to_string()),
    };
    state.board.read(|fleet, records| {
        let viewer = state.viewer(headers, fleet)?;
        let visible: Vec<_> = fleet
            .clusters
            .iter()
            .filter(|c| viewer.may_read(&c.id))
            .collect();
        let nav = visible
            .iter()
            .map(|c| page::Nav {
                id: c.id.clone(),
                hostname: fleet.hostname(c),
                up: c
                    .mtas
                    .iter()
                    .filter(|m| {
                        records
                            .get(&m.name)
                            .is_some_and(|r| r.shown == MtaState::Up)
                    })
                    .count(),
                total: c.mtas.len(),
            })
            .collect();
        let chosen = match id {
            Some(id) => visible.iter().find(|c| c.id == id),
            None => visible.first(),
        };
        let selected = chosen.map(|c| page::Selected {
            view: cluster_view(fleet, c, records),
            domain: c
                .domains
                .first()
                .cloned()
                .unwrap_or_else(|| "yourdomain.com".to_string()),
            username: c
                .credentials
                .first()
                .map(|c| c.username.clone())
                .unwrap_or_else(|| "your-credential".to_string()),
            reach: reach.clone(),
        });
        Some(Gathered {
            viewer,
            nav,
            selected,
        })
    })
}

fn viewer_name(viewer: &Caller) -> &str {
    match viewer {
        Caller::Admin => "admin",
        Caller::Account { name, .. } => name,
    }
}

fn show(state: &DashboardState, headers: &HeaderMap, id: Option<&str>) -> Response {
    let Some(gathered) = gather(state, headers, id) else {
        // A cookie that no longer opens anything gets the form and an answer.
        let (status, error) = if session_cookie(headers).is_some() {
            (
                StatusCode::UNAUTHORIZED,
                Some("Your session is no longer valid. Sign in again."),
            )
        } else {
            (StatusCode::OK, None)
        };
        return html(status, page::login(error));
    };
    let viewer = viewer_name(&gathered.viewer);
    match (gathered.selected, id) {
        (Some(selected), _) => {
            let transitions = state.journal.recent(&selected.view.id, RECENT);
            let generation = state.journal.generation();
            html(
                StatusCode::OK,
                page::cluster_page(viewer, &gathered.nav, &selected, &transitions, generation),
            )
        }
        (None, Some(_)) => html(
            StatusCode::NOT_FOUND,
            page::not_found(viewer, &gathered.nav),
        ),
        (None, None) => html(StatusCode::OK, page::no_clusters(viewer)),
    }
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    after: Option<u64>,
}

/// What the page needs to update itself once the journal passes `after`.
async fn live(
    State(state): State<DashboardState>,
    Path(id): Path<String>,
    Query(query): Query<LiveQuery>,
    headers: HeaderMap,
) -> Response {
    // Refuse at once rather than after the wait.
    if gather(&state, &headers, Some(&id)).is_none() {
        return auth::unauthenticated();
    }
    if let Some(after) = query.after {
        let Ok(_slot) = state.long_polls.clone().try_acquire_owned() else {
            return crate::feed::too_many_long_polls();
        };
        let mut generations = state.journal.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(state.max_wait, generations.wait_for(|g| *g > after)) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
    let generation = state.journal.generation();
    let Some(gathered) = gather(&state, &headers, Some(&id)) else {
        return auth::unauthenticated();
    };
    let Some(selected) = gathered.selected else {
        return auth::not_found();
    };
    let transitions = state.journal.recent(&id, RECENT);
    let nav = gathered
        .nav
        .iter()
        .map(|n| NavCount {
            id: n.id.clone(),
            count: n.count(),
        })
        .collect();
    let body = LiveUpdate {
        instance: state.board.instance().to_string(),
        generation,
        summary: page::summary(&selected.view),
        mtas_html: page::mta_rows(&selected.view).into_string(),
        transitions_html: page::transitions(&transitions).into_string(),
        data: selected.view,
        nav,
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What the page's script receives from `/dashboard/clusters/{id}/live`.
#[derive(Debug, Serialize)]
struct LiveUpdate {
    instance: String,
    generation: u64,
    data: ClusterView,
    summary: String,
    mtas_html: String,
    transitions_html: String,
    nav: Vec<NavCount>,
}

/// A sidebar entry's `n/m up`.
#[derive(Debug, Serialize)]
struct NavCount {
    id: String,
    count: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_cookie_holds_only_a_session_id() {
        let id = "ab".repeat(32);
        let h = headers(&[(
            header::COOKIE,
            Box::leak(format!("a=b; healthd_session={id}; c=d").into_boxed_str()),
        )]);
        assert_eq!(session_id(&h), Some(id));
        for bad in [
            "healthd_session=zz",
            "healthd_session=",
            "other=61",
            "healthd_session=61636d65",
        ] {
            assert_eq!(
                session_id(&headers(&[(header::COOKIE, bad)])),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn the_set_cookie_is_http_only_strict_and_expires() {
        let set = session_set_cookie("ab".repeat(32), Duration::from_secs(60)).unwrap();
        let set = set.to_str().unwrap();
        for part in [
            "healthd_session=abab",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(set.contains(part), "{set}");
        }
        let gone = session_set_cookie(String::new(), Duration::ZERO).unwrap();
        assert!(gone.to_str().unwrap().contains("Max-Age=0"), "{gone:?}");
    }

    #[test]
    fn only_forms_from_this_host_pass() {
        let host = (header::HOST, "127.0.0.1:8080");
        assert!(
            cross_site(&headers(std::slice::from_ref(&host))).is_none(),
            "no Origin: not a browser form"
        );
        assert!(cross_site(&headers(&[
            host.clone(),
            (header::ORIGIN, "http://127.0.0.1:8080")
        ]))
        .is_none());
        for origin in ["http://evil.example", "null", "http://127.0.0.1:9090"] {
            assert!(
                cross_site(&headers(&[host.clone(), (header::ORIGIN, origin)])).is_some(),
                "{origin}"
            );
        }
    }
}
