//! healthd: probes every MTA over SMTP and HTTPS and serves the health feed,
//! the Clusters API and admin drains.

pub mod api;
pub mod auth;
pub mod board;
pub mod config;
pub mod dashboard;
pub mod drain;
pub mod fallback;
pub mod feed;
pub mod metrics;
pub mod probe;
pub mod probe_health;
pub mod probe_scheduler;
pub mod tls;

use std::path::Path;
use std::sync::Arc;

use fleet::control::Control;
use fleet::daemon::{Daemon, Service, Started};
use fleet::telemetry::LogFormat;
use fleet::ConfigError;
use tokio::net::TcpListener;

pub use config::Settings;

/// The sockets healthd serves, bound before `run` so tests can pass port 0.
pub struct Listeners {
    /// `listen`: the feed, the Clusters API, the dashboard and the admin
    /// endpoints.
    pub listen: TcpListener,
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let addr = settings.node.listen;
        let listen = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on HTTP address {addr}: {e}"))?;
        Ok(Listeners { listen })
    }
}

/// Serves until `control.shutdown`, reloading on `control`'s requests.
pub async fn run(settings: Settings, listeners: Listeners, control: Control) -> anyhow::Result<()> {
    let config_file = settings.config_file.clone();
    let (drain_file, drains) = load_drains(&settings)?;
    let board = board::Board::new(settings.fleet.clone(), drains);
    let metrics = metrics::Metrics::default();
    if settings.node.followers.is_empty() {
        tracing::warn!(
            "no [[followers]] in {}: the health feed is open to anyone who can reach {}",
            settings.config_file.display(),
            settings.node.listen
        );
    }
    let listen_tls = settings.listen_tls.clone();
    let secrets = settings.secrets.clone();
    let mut service = Service::new(control, settings);
    fleet::secret::register_metrics(&secrets, &mut service.registry);
    service.admin_tls = listen_tls.as_ref().map(|tls| tls.config.clone());
    service.admin_max_connections = Some(service.live.get().node.max_connections);
    metrics.register(&mut service.registry);
    let router = fallback::apply(routes(&service, &board, drain_file));
    let scheduler = probe_scheduler::ProbeScheduler::new(
        service.live.clone(),
        board.clone(),
        metrics,
        service.readiness.clone(),
    );
    let status_board = board.clone();
    let started = service.start(
        listeners.listen,
        router,
        {
            let secrets = secrets.clone();
            move || Settings::load_with(&config_file, secrets.clone())
        },
        move |s: &Settings| status(s, &status_board),
    );
    fleet::secret::watch(&secrets, started.readiness.clone(), &started.control);
    if let Some(running) = listen_tls {
        follow_certificate(&started, running);
    }
    let shutdown = started.control.shutdown.clone();
    started
        .control
        .tasks
        .spawn(board.clone().follow(started.live.clone(), shutdown.clone()));
    started.control.tasks.spawn(scheduler.run(shutdown));
    started
        .until_shutdown(|s: &Settings| s.node.shutdown_grace)
        .await;
    Ok(())
}

/// The state file and the admin drains kept in it by an earlier run.
fn load_drains(
    settings: &Settings,
) -> anyhow::Result<(drain::DrainFile, std::collections::BTreeSet<String>)> {
    let drain_file = drain::DrainFile::new(&settings.node.state_file);
    let drains = drain_file.load().map_err(|e| anyhow::anyhow!(e))?;
    if !drains.is_empty() {
        tracing::info!(
            "drained by earlier admin calls: {}",
            drains.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok((drain_file, drains))
}

/// The feed, the Clusters API, the admin drains and the dashboard, which
/// share `max_long_polls` between their long polls.
fn routes(
    service: &Service<Settings>,
    board: &Arc<board::Board>,
    drain_file: drain::DrainFile,
) -> axum::Router {
    let long_polls = Arc::new(tokio::sync::Semaphore::new(
        service.live.get().node.max_long_polls,
    ));
    let live = service.live.clone();
    let shutdown = service.control.shutdown.clone();
    feed::routes(feed::FeedState {
        board: board.clone(),
        live: live.clone(),
        max_wait: feed::MAX_WAIT,
        shutdown: shutdown.clone(),
        long_polls: long_polls.clone(),
    })
    .merge(api::routes(api::ApiState {
        board: board.clone(),
        live: live.clone(),
    }))
    .merge(drain::routes(drain::DrainState {
        board: board.clone(),
        live: live.clone(),
        file: drain_file,
        writing: Arc::new(tokio::sync::Mutex::new(())),
    }))
    .merge(dashboard::routes(dashboard::DashboardState::start(
        board.clone(),
        live.clone(),
        Some(dashboard::JournalFile::beside(&live.get().node.state_file)),
        &service.control.tasks,
        shutdown,
        long_polls,
    )))
}

/// `/status`: the fleet, the board's generation and instance, Vault and
/// the HTTPS certificate.
fn status(s: &Settings, board: &board::Board) -> Status {
    Status {
        zone: s.fleet.zone.origin.clone(),
        clusters: s.fleet.clusters.len(),
        mtas: s.fleet.mta_count(),
        generation: board.generation(),
        instance: board.instance().to_string(),
        vault: s.secrets.status(),
        certificates: s
            .listen_tls
            .iter()
            .map(|tls| tls.certificate.status(fleet::certificate::now()))
            .collect(),
    }
}

/// `/status`'s report of this healthd.
#[derive(Debug, serde::Serialize)]
struct Status {
    zone: String,
    clusters: usize,
    mtas: usize,
    /// The fleet feed's generation and this run's instance id.
    generation: u64,
    instance: String,
    vault: fleet::secret::StoreStatus,
    certificates: Vec<fleet::certificate::CertificateStatus>,
}

/// The HTTPS listener serves the certificate of each reloaded `[tls]`, and
/// `/ready` says degraded within 14 days of its expiry.
fn follow_certificate(started: &Started<Settings>, running: fleet::tls::ServerTls) {
    let (live, shutdown) = (started.live.clone(), started.control.shutdown.clone());
    started.control.tasks.spawn(fleet::tls::follow_reloads(
        live.clone(),
        running,
        shutdown.clone(),
        |s: &Settings| s.listen_tls.clone(),
    ));
    started
        .control
        .tasks
        .spawn(fleet::certificate::watch_expiry(
            live,
            started.readiness.clone(),
            shutdown,
            |s: &Settings| s.listen_tls.iter().map(|t| t.certificate.clone()).collect(),
        ));
}

pub struct Healthd;

impl Daemon for Healthd {
    type Settings = Settings;
    const NAME: &'static str = "healthd";

    fn load(config_file: &Path) -> Result<Settings, ConfigError> {
        Settings::load(config_file)
    }

    fn describe(s: &Settings) -> String {
        format!(
            "{} clusters with {} MTAs, {} on {} ({} feed followers), probing every {} (timeout {}, rise {}, fall {})",
            s.fleet.clusters.len(),
            s.fleet.mta_count(),
            if s.listen_tls.is_some() { "HTTPS" } else { "HTTP" },
            s.node.listen,
            s.node.followers.len(),
            probe::words(s.node.probe.interval),
            probe::words(s.node.probe.timeout),
            s.node.probe.rise,
            s.node.probe.fall,
        )
    }

    fn log_format(s: &Settings) -> LogFormat {
        s.node.log_format
    }

    async fn run(settings: Settings, control: Control) -> anyhow::Result<()> {
        let listeners = Listeners::bind(&settings).await?;
        run(settings, listeners, control).await
    }
}
