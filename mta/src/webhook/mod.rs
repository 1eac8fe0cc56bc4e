//! Webhooks: every MTA sends its cluster's events to each
//! `[[clusters.webhooks]]` endpoint as signed JSON batches, at least once
//! and in log order (so in order per message), from a durable cursor per
//! endpoint. The set of endpoints follows the fleet file on every reload.

pub mod sender;
pub mod sign;

use std::collections::BTreeMap;
use std::sync::Arc;

use fleet::admin::Readiness;
use fleet::Live;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::events::log::EventLog;
use crate::events::EventsConfig;
use crate::Settings;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub webhook: String,
}

/// `webhook_*` metrics, by endpoint name.
#[derive(Clone, Default)]
pub struct WebhookMetrics {
    pub backlog: Family<HookLabel, Gauge>,
    pub lag_seconds: Family<HookLabel, Gauge>,
    pub sent: Family<HookLabel, Counter>,
    pub failures: Family<HookLabel, Counter>,
}

impl WebhookMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("webhook");
        registry.register(
            "backlog_events",
            "Committed events the endpoint has not acknowledged yet",
            self.backlog.clone(),
        );
        registry.register(
            "lag_seconds",
            "Age of the oldest event waiting for the endpoint",
            self.lag_seconds.clone(),
        );
        registry.register(
            "sent_events",
            "Events the endpoint acknowledged (2xx)",
            self.sent.clone(),
        );
        registry.register(
            "failures",
            "POSTs that failed (error, timeout, non-2xx)",
            self.failures.clone(),
        );
    }
}

/// What `/status` shows of one endpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HookStatus {
    pub name: String,
    pub url: String,
    /// The last event sequence acknowledged (the durable cursor).
    pub cursor: u64,
    pub backlog: u64,
    pub lag_seconds: u64,
    pub sent: u64,
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    /// Unix seconds.
    pub last_error_at: Option<u64>,
    pub last_success_at: Option<u64>,
}

struct Running {
    hook: fleet::Webhook,
    status: Arc<Mutex<HookStatus>>,
    stop: CancellationToken,
}

/// The endpoints this node sends to, following the fleet file.
pub struct Webhooks {
    running: Mutex<BTreeMap<String, Running>>,
    metrics: WebhookMetrics,
    log: Arc<EventLog>,
    config: EventsConfig,
    client: reqwest::Client,
}

impl Webhooks {
    pub fn new(
        log: Arc<EventLog>,
        config: EventsConfig,
        metrics: WebhookMetrics,
    ) -> Result<Arc<Webhooks>, String> {
        let client = client(&config)?;
        Ok(Arc::new(Webhooks {
            running: Mutex::new(BTreeMap::new()),
            metrics,
            log,
            config,
            client,
        }))
    }

    /// Starts the endpoints of `live`'s cluster and follows reloads until
    /// `shutdown`.
    /// An endpoint that keeps failing makes `readiness` say `degraded`
    /// (healthd's dashboard shows it).
    pub async fn follow(
        self: Arc<Self>,
        live: Arc<Live<Settings>>,
        readiness: Arc<Readiness>,
        shutdown: CancellationToken,
    ) {
        let mut changed = live.subscribe();
        loop {
            self.apply(&live.get(), &readiness, &shutdown);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                result = changed.changed() => if result.is_err() { break },
            }
        }
        for (_, running) in std::mem::take(&mut *self.running.lock()) {
            running.stop.cancel();
        }
    }

    /// Starts new and changed endpoints, stops removed ones.
    fn apply(&self, settings: &Settings, readiness: &Arc<Readiness>, shutdown: &CancellationToken) {
        let wanted: BTreeMap<String, fleet::Webhook> = settings
            .cluster()
            .map(|c| {
                c.webhooks
                    .iter()
                    .map(|h| (h.name.clone(), h.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut running = self.running.lock();
        running.retain(|name, r| {
            let keep = wanted.get(name) == Some(&r.hook);
            if !keep {
                r.stop.cancel();
                readiness.not_degraded(&sender::concern(name));
            }
            keep
        });
        for (name, hook) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let status = Arc::new(Mutex::new(HookStatus {
                name: name.clone(),
                url: hook.url.clone(),
                ..HookStatus::default()
            }));
            let stop = shutdown.child_token();
            let label = HookLabel {
                webhook: name.clone(),
            };
            // This endpoint's counters are there at 0 from its start.
            for counter in [&self.metrics.sent, &self.metrics.failures] {
                let _ = counter.get_or_create(&label);
            }
            let sender = sender::Sender {
                hook: hook.clone(),
                log: self.log.clone(),
                client: self.client.clone(),
                config: self.config.clone(),
                status: status.clone(),
                metrics: self.metrics.clone(),
                label,
                readiness: Some(readiness.clone()),
            };
            tokio::spawn(sender.run(stop.clone()));
            tracing::info!(webhook = %name, url = %hook.url, "webhook started");
            running.insert(name, Running { hook, status, stop });
        }
    }

    /// Every endpoint's state, for `/status`.
    pub fn status(&self) -> Vec<HookStatus> {
        self.running
            .lock()
            .values()
            .map(|r| r.status.lock().clone())
            .collect()
    }
}

/// An HTTP client trusting the system's roots and `webhook_ca_file`.
fn client(config: &EventsConfig) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(config.webhook_timeout)
        .connect_timeout(config.webhook_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("unMTA-webhooks/", env!("CARGO_PKG_VERSION")));
    for bundle in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = std::fs::read(bundle) {
            for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
                builder = builder.add_root_certificate(cert);
            }
            break;
        }
    }
    if let Some(path) = &config.webhook_ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("events.webhook_ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("events.webhook_ca_file {}: {e}", path.display()))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
}
