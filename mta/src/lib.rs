//! mta: SMTP submission and HTTP injection into a durable spool, then delivery.

pub mod config;
pub mod events;
pub mod message;
pub mod queue;
pub mod spool;
pub mod throttle;

use std::path::Path;

use fleet::control::Control;
use fleet::daemon::{Daemon, Service};
use fleet::telemetry::LogFormat;
use fleet::ConfigError;
use tokio::net::TcpListener;

pub use config::Settings;

/// The sockets the MTA serves, bound before `run` so tests can pass port 0.
pub struct Listeners {
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let addr = settings.node.admin_listen;
        let admin = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on admin address {addr}: {e}"))?;
        Ok(Listeners { admin })
    }
}

/// Serves until `control.shutdown`, reloading on `control`'s requests.
pub async fn run(settings: Settings, listeners: Listeners, control: Control) -> anyhow::Result<()> {
    let config_file = settings.config_file.clone();
    let grace = settings.node.shutdown_grace;
    let service = Service::new(control, settings);
    let started = service.start(
        listeners.admin,
        axum::Router::new(),
        move || Settings::load(&config_file),
        |s: &Settings| {
            serde_json::json!({
                "zone": s.fleet.zone.origin,
                "clusters": s.fleet.clusters.len(),
                "mtas": s.fleet.mta_count(),
            })
        },
    );
    started.until_shutdown(grace).await;
    Ok(())
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
