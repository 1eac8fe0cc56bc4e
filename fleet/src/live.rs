//! Configuration that reloads: parse, validate, then swap atomically. A bad
//! file is reported and the old configuration keeps serving.
//!
//! Every setting of a daemon is either applied on reload (whoever uses it
//! reads the [`Live`] value or follows [`Live::subscribe`]) or declared
//! start-up-only by the daemon's [`Reloadable::startup_only`]. A reload
//! that changes a start-up-only key applies everything else and names the
//! key, in the log and in `/status` (`restart_required`), until the daemon
//! restarts or the key gets its start-up value back.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::control::Control;
use crate::load::ConfigError;

/// A daemon's settings, and which of them apply only when it starts.
pub trait Reloadable {
    /// The prefix of every metric the daemon registers (`lb_dns`,
    /// `healthd`, `mta`): `/metrics` names each family `<prefix>_…`.
    const METRICS_PREFIX: &'static str;

    /// Every setting read only at start (listen addresses, spool and state
    /// directories, log format, ...) with its value.
    fn startup_only(&self) -> StartupOnly;
}

/// Start-up-only settings by key (as written in the config files), with
/// their values in a comparable form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartupOnly(BTreeMap<String, String>);

impl StartupOnly {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` with `value` (compared by its `Debug` form).
    pub fn key(mut self, key: impl Into<String>, value: impl std::fmt::Debug) -> Self {
        self.0.insert(key.into(), format!("{value:?}"));
        self
    }

    /// The keys whose value in `new` differs from this one, sorted.
    pub fn changed(&self, new: &StartupOnly) -> Vec<String> {
        let keys: std::collections::BTreeSet<&String> = self.0.keys().chain(new.0.keys()).collect();
        keys.into_iter()
            .filter(|key| self.0.get(*key) != new.0.get(*key))
            .cloned()
            .collect()
    }
}

/// What the last reloads did, for `/status` and the logs.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReloadStatus {
    /// Seconds since the Unix epoch when the serving configuration was loaded.
    pub loaded_at: u64,
    pub version: u64,
    pub last_error: Option<String>,
    /// Start-up-only keys whose value in the configuration in service
    /// differs from the one the daemon started with: they need a restart.
    pub restart_required: Vec<String>,
}

/// A configuration in service, replaced whole on reload.
pub struct Live<T> {
    current: ArcSwap<T>,
    version: watch::Sender<u64>,
    status: Mutex<ReloadStatus>,
    reloads: Family<Vec<(String, String)>, Counter>,
}

impl<T> Live<T> {
    pub fn new(initial: T) -> Arc<Self> {
        let reloads = Family::<Vec<(String, String)>, Counter>::default();
        for result in ["ok", "error"] {
            let _ = reloads.get_or_create(&vec![("result".to_string(), result.to_string())]);
        }
        Arc::new(Live {
            current: ArcSwap::from_pointee(initial),
            version: watch::channel(0).0,
            status: Mutex::new(ReloadStatus {
                loaded_at: crate::clock::unix_secs(),
                version: 0,
                last_error: None,
                restart_required: Vec::new(),
            }),
            reloads,
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

    /// Swaps `value` in (nothing pending a restart).
    pub fn replace(&self, value: T) {
        self.reloaded(value, Vec::new());
    }

    /// Swaps `value` in; `restart_required` are the start-up-only keys it
    /// changes.
    pub fn reloaded(&self, value: T, restart_required: Vec<String>) {
        self.current.store(Arc::new(value));
        let mut status = self.status.lock();
        status.version += 1;
        status.loaded_at = crate::clock::unix_secs();
        status.last_error = None;
        status.restart_required = restart_required;
        self.version.send_replace(status.version);
        self.count("ok");
    }

    pub fn record_failure(&self, error: &ConfigError) {
        self.status.lock().last_error = Some(error.to_string());
        self.count("error");
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
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

/// Waits for the next change on `changes`: `false` once `shutdown` is
/// cancelled or the sender is gone, when the loop that follows it ends.
pub async fn next_change<T>(
    changes: &mut watch::Receiver<T>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        changed = changes.changed() => changed.is_ok(),
    }
}

/// Reloads `live` with `load` on every reload request until shutdown.
/// Start-up-only keys are compared with the values the daemon started with.
pub async fn reload_on_request<T: Reloadable>(
    control: Control,
    live: Arc<Live<T>>,
    load: impl Fn() -> Result<T, ConfigError>,
) {
    let at_start = live.get().startup_only();
    loop {
        tokio::select! {
            _ = control.shutdown.cancelled() => return,
            _ = control.reload_requested() => {}
        }
        match load() {
            Ok(value) => {
                let restart_required = at_start.changed(&value.startup_only());
                live.reloaded(value, restart_required.clone());
                let version = live.status().version;
                if restart_required.is_empty() {
                    tracing::info!(version, "configuration reloaded");
                } else {
                    tracing::warn!(
                        version,
                        "configuration reloaded, but these start-up-only settings changed \
                         and apply only after a restart: {}",
                        restart_required.join(", ")
                    );
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Node {
        listen: &'static str,
        probe: u32,
    }

    impl Reloadable for Node {
        const METRICS_PREFIX: &'static str = "test";

        fn startup_only(&self) -> StartupOnly {
            StartupOnly::new().key("listen", self.listen)
        }
    }

    #[test]
    fn changed_names_every_key_that_differs_once() {
        let a = StartupOnly::new().key("listen", "a").key("spool_dir", "/s");
        let b = StartupOnly::new()
            .key("listen", "b")
            .key("log_format", "json");
        assert_eq!(a.changed(&b), vec!["listen", "log_format", "spool_dir"]);
        assert!(a.changed(&a.clone()).is_empty());
    }

    #[tokio::test]
    async fn a_reload_applies_the_rest_and_names_what_needs_a_restart() {
        let control = Control::new();
        let live = Live::new(Node {
            listen: "a",
            probe: 1,
        });
        let next = Arc::new(Mutex::new(vec![
            Node {
                listen: "a",
                probe: 2,
            },
            Node {
                listen: "a",
                probe: 4,
            },
            Node {
                listen: "b",
                probe: 3,
            },
        ]));
        let source = next.clone();
        tokio::spawn(reload_on_request(
            control.clone(),
            live.clone(),
            move || Ok(source.lock().pop().expect("one more")),
        ));
        let mut versions = live.subscribe();
        control.request_reload();
        versions.changed().await.unwrap();
        assert_eq!(live.get().probe, 3);
        assert_eq!(live.status().restart_required, vec!["listen"]);
        control.request_reload();
        versions.changed().await.unwrap();
        assert_eq!(live.get().probe, 4);
        assert!(live.status().restart_required.is_empty());
        control.shutdown.cancel();
    }
}
