//! One JSON line per message event, as KumoMTA's log records: Reception,
//! Delivery, TransientFailure, Bounce, Expiration, Delayed.
//!
//! Lines go to `[delivery].events_file` when set, else to the log (target
//! `mta::events`). In-process subscribers (tests) get every event too.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    Reception,
    Delivery,
    TransientFailure,
    Bounce,
    Expiration,
    Delayed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The spool's message id.
    pub id: String,
    pub sender: String,
    pub recipient: String,
    /// The cluster the message was submitted under.
    pub cluster: String,
    /// The MX host (or smart host) tried, when there was one.
    pub mx_host: Option<String>,
    /// The address connected to, when there was one.
    pub peer_address: Option<String>,
    /// The SMTP reply code, or 0 when the outcome was decided here.
    pub code: u16,
    /// The remote reply, or the reason in words.
    pub response: String,
    /// Milliseconds from reception to this event.
    pub queue_time_ms: u64,
    /// Delivery attempts so far, this one included.
    pub attempts: u16,
    pub size: usize,
    /// Unix milliseconds.
    pub timestamp: u64,
}

pub struct Events {
    file: Option<Mutex<File>>,
    subscribers: broadcast::Sender<Arc<Event>>,
}

impl Events {
    /// Events written to `file` (appended) or, without one, to the log.
    pub fn new(file: Option<&Path>) -> Result<Arc<Events>, String> {
        let file = match file {
            None => None,
            Some(path) => {
                if let Some(parent) = path.parent() {
                    use std::os::unix::fs::DirBuilderExt;
                    let _ = std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent);
                }
                Some(Mutex::new(
                    crate::spool::private_file()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| {
                            format!("cannot open the events file {}: {e}", path.display())
                        })?,
                ))
            }
        };
        Ok(Arc::new(Events {
            file,
            subscribers: broadcast::channel(1 << 16).0,
        }))
    }

    pub fn emit(&self, event: Event) {
        match &self.file {
            Some(file) => {
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = file.write_all(&line) {
                    tracing::warn!("cannot write an event line: {e}");
                }
            }
            None => {
                if tracing::enabled!(target: "mta::events", tracing::Level::INFO) {
                    let line = serde_json::to_string(&event).unwrap_or_default();
                    tracing::info!(target: "mta::events", "{line}");
                }
            }
        }
        if self.subscribers.receiver_count() > 0 {
            let _ = self.subscribers.send(Arc::new(event));
        }
    }

    /// Every event from now on (a slow reader misses some: `Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.subscribers.subscribe()
    }
}
