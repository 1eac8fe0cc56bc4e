//! Configuration that reloads: parse, validate, then swap atomically. A bad
//! file is reported and the old configuration keeps serving.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::control::Control;
use crate::load::ConfigError;

/// What the last reloads did, for `/status` and the logs.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// Seconds since the Unix epoch when the serving configuration was loaded.
    pub loaded_at: u64,
    pub version: u64,
    pub last_error: Option<String>,
}

/// A configuration in service, replaced whole on reload.
pub struct Live<T> {
    current: ArcSwap<T>,
    version: watch::Sender<u64>,
    status: Mutex<ReloadStatus>,
    reloads: Family<Vec<(String, String)>, Counter>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl<T> Live<T> {
    pub fn new(initial: T) -> Arc<Self> {
        Arc::new(Live {
            current: ArcSwap::from_pointee(initial),
            version: watch::channel(0).0,
            status: Mutex::new(ReloadStatus {
                loaded_at: now_secs(),
                version: 0,
                last_error: None,
            }),
            reloads: Family::default(),
        })
    }

    /// The configuration in service now.
    pub fn get(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Changes whenever a new configuration is swapped in.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn replace(&self, value: T) {
        self.current.store(Arc::new(value));
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.version += 1;
        status.loaded_at = now_secs();
        status.last_error = None;
        self.version.send_replace(status.version);
        self.count("ok");
    }

    pub fn record_failure(&self, error: &ConfigError) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last_error = Some(error.to_string());
        self.count("error");
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, result: &str) {
        self.reloads
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    /// Adds `config_reloads_total{result="ok|error"}` to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            self.reloads.clone(),
        );
    }
}

/// Reloads `live` with `load` on every reload request until shutdown.
pub async fn reload_on_request<T>(
    control: Control,
    live: Arc<Live<T>>,
    load: impl Fn() -> Result<T, ConfigError>,
) {
    loop {
        tokio::select! {
            _ = control.shutdown.cancelled() => return,
            _ = control.reload_requested() => {}
        }
        match load() {
            Ok(value) => {
                live.replace(value);
                tracing::info!(version = live.status().version, "configuration reloaded");
            }
            Err(error) => {
                tracing::error!(
                    "reload refused, the previous configuration stays in service: {error}"
                );
                live.record_failure(&error);
            }
        }
    }
}
