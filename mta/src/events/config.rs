//! `[events]` in the node config: the event log and how webhooks are sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// The durable event log (segments, webhook cursors), relative to the
    /// config file.
    pub dir: PathBuf,
    /// How long events are kept; older segments are deleted.
    #[serde(with = "fleet::config::duration")]
    pub retention: Duration,
    /// A segment is closed and a new one started beyond this size (bytes),
    /// or after an hour.
    pub segment_bytes: u64,
    /// The bounce classification rules; default: the built-in table, a copy
    /// of `configs/bounce-rules.toml`.
    pub bounce_rules: Option<PathBuf>,
    /// Limit on one webhook POST (connect, send, answer).
    #[serde(with = "fleet::config::duration")]
    pub webhook_timeout: Duration,
    /// First retry of a failed POST; each next one doubles (±25 % jitter).
    #[serde(with = "fleet::config::duration")]
    pub webhook_retry_initial: Duration,
    /// The longest wait between two POSTs of the same batch.
    #[serde(with = "fleet::config::duration")]
    pub webhook_retry_max: Duration,
    /// A PEM CA certificate trusted for https webhooks besides the public
    /// roots.
    pub webhook_ca_file: Option<PathBuf>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            dir: PathBuf::from("events"),
            retention: Duration::from_secs(24 * 3600),
            segment_bytes: 64 << 20,
            bounce_rules: None,
            webhook_timeout: Duration::from_secs(10),
            webhook_retry_initial: Duration::from_secs(1),
            webhook_retry_max: Duration::from_secs(300),
            webhook_ca_file: None,
        }
    }
}

impl EventsConfig {
    /// Paths made relative to `config_file`, and the values checked.
    pub fn prepare(&mut self, config_file: &Path) -> Result<(), (String, String)> {
        self.dir = fleet::config::resolve(config_file, &self.dir);
        if let Some(rules) = &mut self.bounce_rules {
            *rules = fleet::config::resolve(config_file, rules);
        }
        if let Some(ca) = &mut self.webhook_ca_file {
            *ca = fleet::config::resolve(config_file, ca);
        }
        if self.retention < Duration::from_secs(60) {
            return Err((
                "events.retention".into(),
                "retention must be at least 1m".into(),
            ));
        }
        if self.segment_bytes < 4096 {
            return Err((
                "events.segment_bytes".into(),
                "segment_bytes must be at least 4096".into(),
            ));
        }
        if self.webhook_retry_initial.is_zero()
            || self.webhook_retry_max < self.webhook_retry_initial
        {
            return Err((
                "events.webhook_retry_initial".into(),
                "webhook_retry_initial must be above 0 and at most webhook_retry_max".into(),
            ));
        }
        Ok(())
    }
}
