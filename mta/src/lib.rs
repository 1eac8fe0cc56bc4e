//! mta: SMTP submission and HTTP injection into a durable spool, then delivery.

pub mod admin;
pub mod anvil;
pub mod auth;
pub mod bounces;
pub mod config;
pub mod deadline;
pub mod delivery;
pub mod dkim;
pub mod events;
pub mod from_header;
pub mod ingress;
pub mod inject;
pub mod memory;
pub mod message;
pub mod planned_stop;
pub mod policy;
pub mod queue;
pub mod smtp;
pub mod spool;
pub mod throttle;
pub mod tls;
pub mod webhook;

use std::path::Path;
use std::sync::Arc;

use fleet::control::Control;
use fleet::daemon::{Daemon, Service, Started};
use fleet::telemetry::LogFormat;
use fleet::ConfigError;
use tokio::net::TcpListener;

pub use config::Settings;

/// The sockets the MTA serves, bound before `run` so tests can pass port 0.
pub struct Listeners {
    pub admin: TcpListener,
    /// Every `[ports].smtp` port on each of the node's addresses.
    pub smtp: Vec<TcpListener>,
    /// `[ports].https` on each of the node's addresses.
    pub https: Vec<TcpListener>,
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let addr = settings.node.admin_listen;
        let admin = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on admin address {addr}: {e}"))?;
        let bind = |ip: std::net::IpAddr, port: u16, what: &'static str| async move {
            let addr = std::net::SocketAddr::new(ip, port);
            TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
        };
        let (mut smtp, mut https) = (Vec::new(), Vec::new());
        for ip in Self::public_ips(settings)? {
            for &port in &settings.fleet.ports.smtp {
                smtp.push(bind(ip, port, "SMTP").await?);
            }
            https.push(bind(ip, settings.fleet.ports.https, "HTTPS").await?);
        }
        Ok(Listeners { admin, smtp, https })
    }

    /// `node.bind_address`, else this node's addresses in the fleet: its
    /// IPv4 and, when it has one, its IPv6 (lb-dns answers AAAA with it).
    pub fn public_ips(settings: &Settings) -> anyhow::Result<Vec<std::net::IpAddr>> {
        if let Some(ip) = settings.node.bind_address {
            return Ok(vec![ip]);
        }
        let (_, mta) = settings
            .fleet
            .mta(&settings.node.node)
            .ok_or_else(|| anyhow::anyhow!("no MTA named `{}` in the fleet", settings.node.node))?;
        Ok(std::iter::once(std::net::IpAddr::V4(mta.ipv4))
            .chain(mta.ipv6.map(std::net::IpAddr::V6))
            .collect())
    }
}

/// Serves until `control.shutdown`, reloading on `control`'s requests.
pub async fn run(settings: Settings, listeners: Listeners, control: Control) -> anyhow::Result<()> {
    let stores = Stores::open(&settings).await?;
    let config_file = settings.config_file.clone();
    let delivery_config = settings.node.delivery.clone();
    let hello_name = settings.hostname.clone();
    let secrets = settings.secrets.clone();
    let mut service = Service::new(control, settings);
    let (ingress_metrics, egress_metrics) =
        register_metrics(&mut service.registry, &secrets, &stores, &listeners);
    let engine_cell = Arc::new(std::sync::OnceLock::new());
    let reload = {
        let secrets = secrets.clone();
        move || Settings::load_with(&config_file, secrets.clone())
    };
    let started = start_admin(
        service,
        listeners.admin,
        reload,
        &stores,
        engine_cell.clone(),
    );
    fleet::secret::watch(&secrets, started.readiness.clone(), &started.control);
    watch_certificates(&started);
    // Delivery first: the queue is in place before the first client connects.
    let egress_stopped = start_delivery(
        &started,
        &stores,
        (delivery_config, hello_name),
        egress_metrics,
        &engine_cell,
    )?;
    serve_clients(
        &started,
        listeners.smtp,
        listeners.https,
        &stores,
        ingress_metrics,
    );
    started.control.take_planned_stops();
    started.control.tasks.spawn(planned_stop(
        started.live.clone(),
        started.readiness.clone(),
        started.control.clone(),
    ));
    started
        .until_shutdown(|s: &Settings| s.node.shutdown_grace)
        .await;
    let _ = egress_stopped.await;
    stores.close().await;
    Ok(())
}

/// What the node keeps on disk and across reloads: the spool, the event
/// log and the webhooks that follow it.
struct Stores {
    spool: Arc<spool::Spool>,
    events: Arc<events::Events>,
    webhooks: Arc<webhook::Webhooks>,
    webhook_metrics: webhook::WebhookMetrics,
}

impl Stores {
    async fn open(settings: &Settings) -> anyhow::Result<Stores> {
        let spool = spool::Spool::open(&settings.node.spool_dir).await?;
        let events = events::Events::open(&settings.node.events, &settings.node.node)
            .map_err(anyhow::Error::msg)?;
        let webhook_metrics = webhook::WebhookMetrics::default();
        let webhooks = webhook::Webhooks::new(
            events.log().clone(),
            settings.node.events.clone(),
            webhook_metrics.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Stores {
            spool,
            events,
            webhooks,
            webhook_metrics,
        })
    }

    /// Closes the spool, then the event log, each off the runtime.
    async fn close(self) {
        let Stores { spool, events, .. } = self;
        let _ = tokio::task::spawn_blocking(move || spool.close()).await;
        let _ = tokio::task::spawn_blocking(move || events.close()).await;
    }
}

/// Every metric family of the node, in `/metrics` order (ingress counters
/// at 0 for every listener); returns the ingress and egress sets for their
/// owners.
fn register_metrics(
    registry: &mut prometheus_client::registry::Registry,
    secrets: &Arc<fleet::secret::SecretStore>,
    stores: &Stores,
    listeners: &Listeners,
) -> (ingress::IngressMetrics, queue::EgressMetrics) {
    fleet::secret::register_metrics(secrets, registry);
    let ingress_metrics = ingress::IngressMetrics::register(registry, listeners);
    let egress_metrics = queue::EgressMetrics::default();
    egress_metrics.register(registry);
    stores.spool.register_metrics(registry);
    stores.events.log().register_metrics(registry);
    stores.webhook_metrics.register(registry);
    (ingress_metrics, egress_metrics)
}

/// The admin listener (with the admin API once `engine_cell` is filled),
/// `reload` on request, and `/status`.
fn start_admin(
    service: Service<Settings>,
    admin: TcpListener,
    reload: impl Fn() -> Result<Settings, ConfigError> + Send + 'static,
    stores: &Stores,
    engine_cell: Arc<std::sync::OnceLock<Arc<delivery::Engine>>>,
) -> Started<Settings> {
    let admin_routes = admin::routes(service.live.clone(), engine_cell);
    let (spool, webhooks) = (stores.spool.clone(), stores.webhooks.clone());
    service.start(admin, admin_routes, reload, move |s: &Settings| {
        status(s, &spool, &webhooks)
    })
}

/// `/status`: the fleet, Vault, the spool's quarantine, the webhooks and
/// the certificate.
fn status(s: &Settings, spool: &spool::Spool, webhooks: &webhook::Webhooks) -> Status {
    Status {
        zone: s.fleet.zone.origin.clone(),
        clusters: s.fleet.clusters.len(),
        mtas: s.fleet.mta_count(),
        vault: s.secrets.status(),
        spool_quarantined: spool.quarantined().to_vec(),
        webhooks: webhooks.status(),
        certificates: vec![s.tls.certificate.status(fleet::certificate::now())],
    }
}

/// `/status`'s report of this node.
#[derive(Debug, serde::Serialize)]
struct Status {
    zone: String,
    clusters: usize,
    mtas: usize,
    vault: fleet::secret::StoreStatus,
    /// Spool bytes recovery could not trust, moved aside.
    spool_quarantined: Vec<spool::Quarantined>,
    webhooks: Vec<webhook::HookStatus>,
    certificates: Vec<fleet::certificate::CertificateStatus>,
}

/// Starts delivery and the webhooks; the task returned ends once delivery
/// has stopped after the shutdown (within the shutdown grace).
fn start_delivery(
    started: &Started<Settings>,
    stores: &Stores,
    (config, hello_name): (delivery::DeliveryConfig, String),
    metrics: queue::EgressMetrics,
    engine_cell: &std::sync::OnceLock<Arc<delivery::Engine>>,
) -> anyhow::Result<tokio::task::JoinHandle<bool>> {
    let egress = delivery::start_for_node(
        stores.spool.clone(),
        config,
        hello_name,
        stores.events.clone(),
        metrics,
        started.live.clone(),
    )?;
    let _ = engine_cell.set(egress.engine.clone());
    tokio::spawn(stores.webhooks.clone().follow(
        started.live.clone(),
        started.readiness.clone(),
        started.control.shutdown.clone(),
    ));
    egress
        .engine
        .egress()
        .attach_readiness(started.readiness.clone());
    let shutdown = started.control.shutdown.clone();
    let live = started.live.clone();
    Ok(tokio::spawn(async move {
        shutdown.cancelled().await;
        egress.stop(live.get().node.shutdown_grace).await
    }))
}

/// SMTP and HTTPS injection on their listeners, into the spool.
fn serve_clients(
    started: &Started<Settings>,
    smtp_listeners: Vec<TcpListener>,
    https_listeners: Vec<TcpListener>,
    stores: &Stores,
    metrics: ingress::IngressMetrics,
) {
    let ingress = ingress::Ingress::new(
        started.live.clone(),
        stores.spool.clone(),
        started.readiness.clone(),
        metrics,
        started.control.clone(),
        stores.events.clone(),
    );
    let tasks = &started.control.tasks;
    tasks.spawn(ingress.clone().watch_spool_health());
    for listener in smtp_listeners {
        tasks.spawn(smtp::serve(listener, ingress.clone()));
    }
    for listener in https_listeners {
        tasks.spawn(inject::server::serve(listener, ingress.clone()));
    }
}

/// `/ready` says degraded while the certificate in service is within 14
/// days of expiry (followed across reloads).
fn watch_certificates(started: &fleet::daemon::Started<Settings>) {
    started
        .control
        .tasks
        .spawn(fleet::certificate::watch_expiry(
            started.live.clone(),
            started.readiness.clone(),
            started.control.shutdown.clone(),
            |s: &Settings| vec![s.tls.certificate.clone()],
        ));
}

/// On a stop request: not ready at once, serving until out of DNS for one
/// TTL (bounded), then the shutdown.
async fn planned_stop(
    live: Arc<fleet::Live<Settings>>,
    readiness: Arc<fleet::admin::Readiness>,
    control: Control,
) {
    tokio::select! {
        _ = control.stop_requested.cancelled() => {}
        _ = control.shutdown.cancelled() => return,
    }
    let settings = live.get();
    let config = &settings.node.planned_stop;
    if config.max_wait.is_zero() {
        control.shutdown.cancel();
        return;
    }
    readiness.not_ready(
        "shutdown",
        "stopping: waiting until lb-dns no longer answers this node",
    );
    let fleet_entry = settings.fleet.mta(&settings.node.node).map(|(_, mta)| mta);
    let watch = planned_stop::Watch {
        hostname: format!("{}.", settings.hostname),
        addresses: (fleet_entry.into_iter())
            .flat_map(|mta| {
                std::iter::once(std::net::IpAddr::V4(mta.ipv4))
                    .chain(mta.ipv6.map(std::net::IpAddr::V6))
            })
            .collect(),
        servers: config.servers(&settings.fleet).unwrap_or_default(),
        ttl: std::time::Duration::from_secs(settings.fleet.zone.ttl.into()),
        max_wait: config.max_wait,
        poll: config.poll,
    };
    tokio::select! {
        _ = watch.wait_out_of_dns() => {}
        _ = control.shutdown.cancelled() => {}
    }
    control.shutdown.cancel();
}

pub struct MtaNode;

impl Daemon for MtaNode {
    type Settings = Settings;
    const NAME: &'static str = "mta";

    fn load(config_file: &Path) -> Result<Settings, ConfigError> {
        Settings::load(config_file)
    }

    fn describe(s: &Settings) -> String {
        format!(
            "node {} of {} MTAs, spool {}, admin on {}",
            s.node.node,
            s.fleet.mta_count(),
            s.node.spool_dir.display(),
            s.node.admin_listen
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
