//! The secrets a daemon has read: each Vault reference's last value,
//! version and read time. Loads (start, SIGHUP) read every reference afresh;
//! [`refresh_loop`] re-reads them on a schedule and asks for a reload when a
//! version changed. With Vault unreachable the last values stay in use and
//! `/ready` says degraded; a reference Vault does not have is an error.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{SecretBytes, VaultRef};
use crate::admin::Readiness;
use crate::control::Control;
use crate::vault::{AuthStats, VaultClient, VaultConfig, VaultError, Versioned};

/// One reference in `/status`: never its value.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReadStatus {
    pub reference: String,
    /// The KV version last read.
    pub version: u64,
    /// Seconds since the Unix epoch of the last successful read.
    pub last_read: Option<u64>,
    pub last_error: Option<String>,
}

/// The store in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StoreStatus {
    pub address: Option<String>,
    pub auth: Option<AuthStats>,
    /// Set while Vault cannot be reached and the last values serve.
    pub degraded: Option<String>,
    pub secrets: Vec<ReadStatus>,
}

#[derive(Default)]
struct Entry {
    value: Option<SecretBytes>,
    version: u64,
    last_read: Option<u64>,
    last_error: Option<String>,
    reads_ok: u64,
    reads_unreachable: u64,
    reads_error: u64,
}

/// One reference's counts for `/metrics` (never its value).
#[derive(Debug, Clone)]
pub struct EntryMetrics {
    pub reference: String,
    pub version: u64,
    pub reads_ok: u64,
    pub reads_unreachable: u64,
    pub reads_error: u64,
    /// Seconds since the last successful read, if there was one.
    pub since_success: Option<i64>,
}

/// The store for `/metrics`; `None` when no Vault is configured.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub entries: Vec<EntryMetrics>,
    pub degraded: bool,
    pub auth: AuthStats,
    /// Seconds the token in use has left (AppRole); `None` when unknown or
    /// it does not expire.
    pub token_ttl_left: Option<i64>,
}

#[derive(Default)]
struct Inner {
    client: Option<Arc<VaultClient>>,
    entries: BTreeMap<VaultRef, Entry>,
    readiness: Option<Arc<Readiness>>,
    unreachable: Option<String>,
}

/// What a daemon read from Vault, shared by its loads and its refresh task.
#[derive(Default)]
pub struct SecretStore {
    inner: parking_lot::Mutex<Inner>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        write!(
            f,
            "SecretStore({:?}, {} references)",
            inner.client,
            inner.entries.len()
        )
    }
}

const CONCERN: &str = "vault";

/// Runs `future` to completion from synchronous code, inside or outside a
/// tokio runtime, on a thread of its own.
fn block_on<F: Future + Send>(future: F) -> Result<F::Output, String>
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(future))
                    .map_err(|e| format!("vault: cannot start a runtime for the read: {e}"))
            })
            .join()
            .unwrap_or_else(|_| Err("vault: the read panicked".to_string()))
    })
}

impl SecretStore {
    pub fn new() -> Arc<SecretStore> {
        Arc::default()
    }

    /// Uses `config` from now on (a changed config gets a new client and
    /// logs in again); `None`: no Vault, and a reference is an error.
    pub fn configure(&self, config: Option<&VaultConfig>) -> Result<(), String> {
        let mut inner = self.inner.lock();
        let unchanged = match (&inner.client, config) {
            (Some(client), Some(config)) => client.config() == config,
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return Ok(());
        }
        inner.client = match config {
            Some(config) => {
                forbid_core_dumps();
                Some(Arc::new(VaultClient::new(config.clone())?))
            }
            None => None,
        };
        Ok(())
    }

    /// The Vault client, if one is configured.
    pub fn client(&self) -> Option<Arc<VaultClient>> {
        self.inner.lock().client.clone()
    }

    /// `/ready` says degraded while Vault cannot be reached.
    pub fn attach_readiness(&self, readiness: Arc<Readiness>) {
        let mut inner = self.inner.lock();
        if let Some(note) = &inner.unreachable {
            readiness.degraded(CONCERN, note.clone());
        }
        inner.readiness = Some(readiness);
    }

    /// Reads `reference` from Vault now (blocking this thread up to the
    /// Vault timeout). Vault unreachable: the value last read, if any.
    pub fn read(&self, reference: &VaultRef) -> Result<SecretBytes, String> {
        let client = self.client().ok_or_else(|| {
            format!("{reference} is a Vault reference, but this config has no [vault] section")
        })?;
        let fetched = block_on(async { client.read(reference).await })?;
        self.record(reference, fetched)
    }

    /// As [`SecretStore::read`], from async code.
    pub async fn read_async(&self, reference: &VaultRef) -> Result<SecretBytes, String> {
        let client = self.client().ok_or_else(|| {
            format!("{reference} is a Vault reference, but this config has no [vault] section")
        })?;
        let fetched = client.read(reference).await;
        self.record(reference, fetched)
    }

    fn record(
        &self,
        reference: &VaultRef,
        fetched: Result<Versioned, VaultError>,
    ) -> Result<SecretBytes, String> {
        let mut inner = self.inner.lock();
        match fetched {
            Ok(read) => {
                inner.reachable();
                let entry = inner.entries.entry(reference.clone()).or_default();
                entry.value = Some(read.value.clone());
                entry.version = read.version;
                entry.last_read = Some(crate::clock::unix_secs());
                entry.last_error = None;
                entry.reads_ok += 1;
                Ok(read.value)
            }
            Err(error @ VaultError::Unreachable(..)) => {
                let message = format!("{reference}: {error}");
                inner.unreachable(&message);
                let entry = inner.entries.entry(reference.clone()).or_default();
                entry.last_error = Some(error.to_string());
                entry.reads_unreachable += 1;
                match &entry.value {
                    Some(value) => {
                        tracing::warn!("{message}; keeping the value read before");
                        Ok(value.clone())
                    }
                    None => Err(message),
                }
            }
            Err(error) => {
                inner.reachable();
                let entry = inner.entries.entry(reference.clone()).or_default();
                entry.last_error = Some(error.to_string());
                entry.reads_error += 1;
                Err(error.to_string())
            }
        }
    }

    /// Reads every reference read before again; true when one has a new
    /// version (the configuration should be reloaded).
    pub async fn refresh(&self) -> bool {
        let references: Vec<(VaultRef, u64)> = {
            let inner = self.inner.lock();
            inner
                .entries
                .iter()
                .filter(|(_, e)| e.value.is_some())
                .map(|(r, e)| (r.clone(), e.version))
                .collect()
        };
        let mut changed = false;
        for (reference, version) in references {
            if self.read_async(&reference).await.is_ok() {
                let now = self.inner.lock().entries.get(&reference).map(|e| e.version);
                if now != Some(version) {
                    tracing::info!(
                        "{reference}: version {version} -> {}",
                        now.unwrap_or_default()
                    );
                    changed = true;
                }
            }
        }
        changed
    }

    pub fn status(&self) -> StoreStatus {
        let inner = self.inner.lock();
        StoreStatus {
            address: inner.client.as_ref().map(|c| c.config().address.clone()),
            auth: inner.client.as_ref().map(|c| c.auth_stats()),
            degraded: inner.unreachable.clone(),
            secrets: inner
                .entries
                .iter()
                .map(|(reference, entry)| ReadStatus {
                    reference: reference.to_string(),
                    version: entry.version,
                    last_read: entry.last_read,
                    last_error: entry.last_error.clone(),
                })
                .collect(),
        }
    }

    /// What `/metrics` shows of the store; `None` without Vault.
    pub fn metrics_snapshot(&self) -> Option<MetricsSnapshot> {
        let inner = self.inner.lock();
        let client = inner.client.as_ref()?;
        let now = crate::clock::unix_secs();
        let auth = client.auth_stats();
        let token_ttl_left = auth.expires.map(|at| {
            let left = at.saturating_duration_since(std::time::Instant::now());
            i64::try_from(left.as_secs()).unwrap_or(i64::MAX)
        });
        Some(MetricsSnapshot {
            entries: inner
                .entries
                .iter()
                .map(|(reference, entry)| EntryMetrics {
                    reference: reference.to_string(),
                    version: entry.version,
                    reads_ok: entry.reads_ok,
                    reads_unreachable: entry.reads_unreachable,
                    reads_error: entry.reads_error,
                    since_success: entry
                        .last_read
                        .map(|at| i64::try_from(now.saturating_sub(at)).unwrap_or(i64::MAX)),
                })
                .collect(),
            degraded: inner.unreachable.is_some(),
            auth,
            token_ttl_left,
        })
    }

    /// How often [`refresh_loop`] reads; `None` without Vault.
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.client().map(|c| c.config().refresh_interval)
    }
}

impl Inner {
    fn reachable(&mut self) {
        if self.unreachable.take().is_some() {
            tracing::info!("vault: reachable again");
        }
        if let Some(readiness) = &self.readiness {
            readiness.not_degraded(CONCERN);
        }
    }

    fn unreachable(&mut self, message: &str) {
        let note = format!("secrets from Vault are the last read: {message}");
        if let Some(readiness) = &self.readiness {
            readiness.degraded(CONCERN, note.clone());
        }
        self.unreachable = Some(note);
    }
}

/// Re-reads the secrets every `refresh_interval` (and keeps an AppRole
/// token renewed before its TTL ends) until shutdown; a new version asks
/// for a reload, which reads and applies the new values. A reload that
/// changes the interval or the Vault settings applies within a second.
pub async fn refresh_loop(store: Arc<SecretStore>, control: Control) {
    use tokio::time::Instant;
    let mut last_refresh = Instant::now();
    loop {
        let now = Instant::now();
        let due = store
            .refresh_interval()
            .map(|interval| last_refresh + interval);
        let renew_at = match store.client() {
            Some(client) => client.renew_at().await.map(Instant::from_std),
            None => None,
        };
        let wake = [due, renew_at]
            .into_iter()
            .flatten()
            .fold(now + Duration::from_secs(1), Instant::min);
        tokio::select! {
            _ = control.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        if due.is_some_and(|due| Instant::now() >= due) {
            last_refresh = Instant::now();
            if store.refresh().await {
                tracing::info!("vault: a secret has a new version; reloading");
                control.request_reload();
            }
        } else if renew_at.is_some_and(|at| Instant::now() >= at) {
            if let Some(client) = store.client() {
                if let Err(error) = client.renew_now().await {
                    tracing::warn!("vault: keeping the token alive failed: {error}");
                }
            }
        }
    }
}

/// What a daemon's `run` does with its store: `/ready` follows Vault's
/// reachability and [`refresh_loop`] runs until shutdown.
pub fn watch(store: &Arc<SecretStore>, readiness: Arc<Readiness>, control: &Control) {
    store.attach_readiness(readiness);
    control
        .tasks
        .spawn(refresh_loop(store.clone(), control.clone()));
}

/// No core file of this process (it holds secrets): RLIMIT_CORE 0 and not
/// dumpable. Once per process.
pub fn forbid_core_dumps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain system calls with valid arguments.
        let (limit, dumpable) = unsafe {
            (
                libc::setrlimit(libc::RLIMIT_CORE, &zero),
                libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
            )
        };
        if limit != 0 || dumpable != 0 {
            tracing::warn!(
                "could not turn core dumps off: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}
