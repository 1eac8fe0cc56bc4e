//! Following healthd feeds: one task per base URL long-polls
//! `GET <url>/v1/fleet?after=<generation>` and hands every answer to
//! `Health`. A failure makes the feed stale at once; the task retries with
//! a capped backoff. Each request carries this node's token; `https://`
//! feeds are verified against the configured CA only (see `feed_client`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet::control::Control;
use fleet::feed::FleetHealth;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::feed_client::FeedLink;
use crate::health::Health;

/// Longer than healthd's ~30 s long-poll: past this a silent feed is stale.
const POLL_TIMEOUT: Duration = Duration::from_secs(40);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The largest health feed accepted (50,000 MTAs take about 10 MB); a
/// larger one is refused like a malformed one and the last good state stays.
pub const MAX_FEED_BYTES: usize = 16 << 20;

/// The running follower tasks, one per feed URL.
pub struct Followers {
    client: reqwest::Client,
    link: FeedLink,
    health: Arc<Health>,
    control: Control,
    running: HashMap<String, CancellationToken>,
}

impl Followers {
    pub fn new(health: Arc<Health>, control: Control) -> anyhow::Result<Followers> {
        let link = FeedLink::default();
        Ok(Followers {
            client: link.client()?,
            link,
            health,
            control,
            running: HashMap::new(),
        })
    }

    /// Follows exactly the feeds of `node` from now on; a changed token or
    /// CA restarts every follower with it.
    pub fn sync(&mut self, node: &NodeConfig) {
        let urls = &node.healthd;
        match FeedLink::from_node(node).and_then(|link| {
            let client = link.client().map_err(|e| e.to_string())?;
            Ok((link, client))
        }) {
            Ok((link, client)) if link != self.link => {
                for stop in self.running.values() {
                    stop.cancel();
                }
                self.running.clear();
                (self.link, self.client) = (link, client);
            }
            Ok(_) => {}
            Err(error) => tracing::error!("healthd feed link unchanged: {error}"),
        }
        self.health.set_feeds(urls);
        self.running.retain(|url, stop| {
            let keep = urls.contains(url);
            if !keep {
                tracing::info!(feed = %url, "no longer following this healthd feed");
                stop.cancel();
            }
            keep
        });
        for url in urls {
            if self.running.contains_key(url) {
                continue;
            }
            let stop = self.control.shutdown.child_token();
            self.running.insert(url.clone(), stop.clone());
            tracing::info!(feed = %url, "following healthd feed");
            self.control.tasks.spawn(follow(
                url.clone(),
                self.health.clone(),
                (self.client.clone(), self.link.clone()),
                stop,
            ));
        }
    }
}

enum Polled {
    Snapshot(FleetHealth),
    Unchanged,
}

async fn poll(
    (client, link): &(reqwest::Client, FeedLink),
    base: &str,
    known: Option<&FleetHealth>,
) -> Result<Polled, String> {
    let url = match known {
        None => format!("{base}/v1/fleet"),
        Some(k) => format!("{base}/v1/fleet?after={}", k.generation),
    };
    let response = link
        .get(client, &url)
        .timeout(POLL_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", fleet::error_chain(&e)))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED || status == reqwest::StatusCode::NO_CONTENT {
        return Ok(Polled::Unchanged);
    }
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let body = read_bounded(response, &url).await?;
    let snapshot: FleetHealth =
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not a health feed: {e}"))?;
    match known {
        Some(k) if k.instance == snapshot.instance && snapshot.generation <= k.generation => {
            Ok(Polled::Unchanged)
        }
        _ => Ok(Polled::Snapshot(snapshot)),
    }
}

/// The body, refused past `MAX_FEED_BYTES` without reading further.
async fn read_bounded(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>, String> {
    let too_large =
        || format!("GET {url}: the feed is larger than {MAX_FEED_BYTES} bytes; refused");
    if response
        .content_length()
        .is_some_and(|n| n > MAX_FEED_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: {}", fleet::error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_FEED_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Follows one feed until `stop`.
pub async fn follow(
    url: String,
    health: Arc<Health>,
    client: (reqwest::Client, FeedLink),
    stop: CancellationToken,
) {
    let base = url.trim_end_matches('/').to_string();
    let mut known: Option<FleetHealth> = None;
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = poll(&client, &base, known.as_ref()) => result,
        };
        match result {
            Ok(polled) => {
                if failing {
                    tracing::info!(feed = %url, "healthd feed reachable again");
                    failing = false;
                }
                backoff = BACKOFF_MIN;
                match polled {
                    Polled::Snapshot(snapshot) => {
                        if known.as_ref().map(|k| &k.instance) != Some(&snapshot.instance) {
                            tracing::info!(
                                feed = %url,
                                instance = %snapshot.instance,
                                generation = snapshot.generation,
                                "healthd feed instance"
                            );
                        }
                        known = Some(snapshot.clone());
                        health.feed_ok(&url, Some(snapshot));
                    }
                    Polled::Unchanged => health.feed_ok(&url, None),
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(feed = %url, "healthd feed unreachable: {error}");
                    failing = true;
                }
                health.feed_failed(&url, error);
                // healthd may have restarted: its generations start over, so
                // ask for the whole state rather than long-poll past an old one.
                known = None;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
