//! One endpoint's sender: reads the event log from its durable cursor,
//! batches (up to `batch_size`, waiting at most `linger` to fill), POSTs,
//! retries with exponential backoff and jitter until the endpoint answers
//! 2xx, then moves the cursor. One batch at a time, in log order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet::admin::Readiness;
use fleet::error_chain;
use fleet::event::Event;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{HookLabel, HookStatus, WebhookMetrics};
use crate::events::log::{EventLog, LogReader};
use crate::events::EventsConfig;
use fleet::clock::unix_secs;

pub struct Sender {
    pub hook: fleet::Webhook,
    pub log: Arc<EventLog>,
    pub client: reqwest::Client,
    pub config: EventsConfig,
    pub status: Arc<Mutex<HookStatus>>,
    pub metrics: WebhookMetrics,
    pub label: HookLabel,
    /// Told `degraded` while the endpoint keeps failing.
    pub readiness: Option<Arc<Readiness>>,
}

/// Failures in a row after which the node says it is degraded.
const DEGRADED_AFTER: u64 = 3;

/// The readiness concern of endpoint `name`.
pub fn concern(name: &str) -> String {
    format!("webhook:{name}")
}

/// The cursor file: the last acknowledged sequence, in decimal.
fn cursor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("cursors").join(format!("{name}.cursor"))
}

fn read_cursor(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Replaces the cursor file durably (write, sync, rename), mode 0600.
fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    fleet::fs::replace_file(path, format!("{seq}\n").as_bytes())
}

/// Backoff before retry `attempt` (1-based): doubling, capped, ±25 %.
fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let base = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    base.mul_f64(rand::random_range(0.75..1.25))
}

impl Sender {
    pub async fn run(self, stop: CancellationToken) {
        let path = cursor_path(self.log.dir(), &self.hook.name);
        // A new endpoint starts with the events committed from now on; its
        // cursor is written at once so a restart does not skip any.
        let cursor = match read_cursor(&path) {
            Some(seq) => seq,
            None => {
                let now = *self.log.committed().borrow();
                if let Err(e) = write_cursor(&path, now) {
                    tracing::error!(webhook = %self.hook.name, "cannot write {}: {e}", path.display());
                }
                now
            }
        };
        self.status.lock().cursor = cursor;
        let mut reader = LogReader::new(&self.log, cursor);
        let mut acked = cursor;
        loop {
            let Some(batch) = self.gather(&mut reader, &stop).await else {
                return;
            };
            if !batch.is_empty() && !self.post(&batch, &stop).await {
                return;
            }
            let position = reader.after();
            if position != acked {
                if let Err(e) = write_cursor(&path, position) {
                    tracing::error!(webhook = %self.hook.name, "cannot write {}: {e}", path.display());
                }
                acked = position;
            }
            self.acknowledged(&batch, position, reader.committed());
        }
    }

    /// The next batch of wanted events, or `None` at stop. An empty batch
    /// means only unwanted events were passed over.
    async fn gather(&self, reader: &mut LogReader, stop: &CancellationToken) -> Option<Vec<Event>> {
        let max = self.hook.batch_size.max(1);
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let before = reader.after();
            match reader.read(max - batch.len()) {
                Ok(events) => batch.extend(
                    events
                        .into_iter()
                        .map(|(_, e)| e)
                        .filter(|e| self.hook.wants(e.kind)),
                ),
                Err(error) => {
                    tracing::error!(webhook = %self.hook.name, "reading the event log: {error}");
                }
            }
            self.update_backlog(reader.committed(), batch.first());
            if batch.len() >= max {
                return Some(batch);
            }
            let caught_up = reader.after() >= reader.committed();
            if !caught_up {
                continue;
            }
            if batch.is_empty() {
                if reader.after() != before {
                    // Passed over unwanted events: let the cursor follow.
                    return Some(batch);
                }
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = reader.wait() => {}
                }
                continue;
            }
            let until = *deadline.get_or_insert_with(|| Instant::now() + self.hook.linger);
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep_until(until) => return Some(batch),
                _ = reader.wait() => {}
            }
        }
    }

    /// POSTs `batch` until a 2xx; false if stopped first.
    async fn post(&self, batch: &[Event], stop: &CancellationToken) -> bool {
        let body = match serde_json::to_vec(batch) {
            Ok(body) => bytes::Bytes::from(body),
            Err(e) => {
                tracing::error!(webhook = %self.hook.name, "cannot encode a batch: {e}");
                return true;
            }
        };
        let mut attempt = 0u32;
        loop {
            let error = match self.send_once(&body).await {
                Ok(()) => return true,
                Err(error) => error,
            };
            attempt += 1;
            self.metrics.failures.get_or_create(&self.label).inc();
            let failing = {
                let mut status = self.status.lock();
                status.failures += 1;
                status.consecutive_failures += 1;
                status.last_error = Some(error.clone());
                status.last_error_at = Some(unix_secs());
                status.consecutive_failures
            };
            let committed = *self.log.committed().borrow();
            self.update_backlog(committed, batch.first());
            if failing >= DEGRADED_AFTER {
                self.say_degraded(failing, &error);
            }
            let wait = backoff(
                self.config.webhook_retry_initial,
                self.config.webhook_retry_max,
                attempt,
            );
            tracing::warn!(webhook = %self.hook.name, attempt, retry_in_ms = wait.as_millis() as u64, "{error}");
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn send_once(&self, body: &bytes::Bytes) -> Result<(), String> {
        let timestamp = unix_secs();
        let response = self
            .client
            .post(&self.hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                super::sign::HEADER,
                super::sign::signature(&self.hook.secret, timestamp, body),
            )
            .header("X-UnMTA-Webhook", &self.hook.name)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| format!("POST {}: {}", self.hook.url, error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(format!(
            "POST {} answered {status}: {}",
            self.hook.url,
            text.trim()
        ))
    }

    fn acknowledged(&self, batch: &[Event], cursor: u64, committed: u64) {
        self.metrics
            .sent
            .get_or_create(&self.label)
            .inc_by(batch.len() as u64);
        let mut status = self.status.lock();
        status.cursor = cursor;
        if !batch.is_empty() {
            status.sent += batch.len() as u64;
            status.consecutive_failures = 0;
            status.last_success_at = Some(unix_secs());
        }
        drop(status);
        self.update_backlog(committed, None);
        if let Some(readiness) = &self.readiness {
            readiness.not_degraded(&concern(&self.hook.name));
        }
    }

    fn say_degraded(&self, failing: u64, error: &str) {
        let Some(readiness) = &self.readiness else {
            return;
        };
        let backlog = self.status.lock().backlog;
        readiness.degraded(
            &concern(&self.hook.name),
            format!(
                "webhook {} has failed {failing} times in a row with {backlog} events waiting: {error}",
                self.hook.name
            ),
        );
    }

    /// Backlog: events committed after the cursor (of every type); lag: the
    /// age of the oldest event waiting to be sent.
    fn update_backlog(&self, committed: u64, oldest: Option<&Event>) {
        let acked = self.status.lock().cursor;
        let backlog = committed.saturating_sub(acked);
        self.metrics
            .backlog
            .get_or_create(&self.label)
            .set(backlog as i64);
        let lag = oldest.map_or(0, |e| unix_secs().saturating_sub(e.timestamp));
        self.metrics
            .lag_seconds
            .get_or_create(&self.label)
            .set(lag as i64);
        let mut status = self.status.lock();
        status.backlog = backlog;
        status.lag_seconds = lag;
    }
}
