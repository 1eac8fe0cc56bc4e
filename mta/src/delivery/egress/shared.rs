//! Fleet-wide throttles in Redis: one GCRA (generic cell rate algorithm)
//! per key, evaluated by one Lua script so every MTA's check-and-take is
//! atomic, on the Redis server's clock (as KumoMTA's shared throttles do).
//!
//! Redis being down must never stop delivery: every call is bounded by a
//! timeout, and after a failure Redis is not asked again for a second;
//! callers then hold to their local share.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;

/// KEYS[1]: the throttle; ARGV[1]: microseconds between permits;
/// ARGV[2]: the burst. Returns {1, 0} for a permit taken, {0, µs to wait}.
const GCRA: &str = r#"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local allow_at = tat - (burst - 1) * interval
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
local ttl_ms = math.floor((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', ttl_ms)
return {1, 0}
"#;

/// How long Redis is left alone after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct SharedThrottles {
    client: redis::Client,
    url: String,
    script: redis::Script,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    quiet_until: Mutex<Option<Instant>>,
    last_failure: Mutex<String>,
}

/// A GCRA's parameters: the interval between permits and the burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    pub interval: Duration,
    pub burst: u32,
}

impl SharedThrottles {
    /// A client for `url` (`redis://host:port[/db]`); nothing is connected
    /// until the first check.
    pub fn new(url: &str, timeout: Duration) -> Result<SharedThrottles, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("`{url}` is not a Redis URL: {e}"))?;
        Ok(SharedThrottles {
            client,
            url: url.to_string(),
            script: redis::Script::new(GCRA),
            timeout,
            connection: tokio::sync::Mutex::new(None),
            quiet_until: Mutex::new(None),
            last_failure: Mutex::new(String::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Takes a permit of `key`: `Ok(Ok(()))`, or `Ok(Err(wait))` until the
    /// next one, or `Err(why)` when Redis cannot be asked.
    pub async fn check(&self, key: &str, cell: Cell) -> Result<Result<(), Duration>, String> {
        if self
            .quiet_until
            .lock()
            .is_some_and(|until| Instant::now() < until)
        {
            return Err(self.last_failure.lock().clone());
        }
        let asked = tokio::time::timeout(self.timeout, self.ask(key, cell)).await;
        let failure = match asked {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => format!("Redis at {}: {e}", self.url),
            Err(_) => format!(
                "Redis at {} did not answer within {:?}",
                self.url, self.timeout
            ),
        };
        *self.connection.lock().await = None;
        *self.quiet_until.lock() = Some(Instant::now() + RETRY_AFTER);
        *self.last_failure.lock() = failure.clone();
        Err(failure)
    }

    async fn ask(&self, key: &str, cell: Cell) -> redis::RedisResult<Result<(), Duration>> {
        let mut connection = {
            let mut slot = self.connection.lock().await;
            match slot.as_ref() {
                Some(connection) => connection.clone(),
                None => {
                    let connection = self.client.get_multiplexed_async_connection().await?;
                    *slot = Some(connection.clone());
                    connection
                }
            }
        };
        let interval = cell.interval.as_micros().max(1) as u64;
        let (allowed, wait): (i64, i64) = self
            .script
            .key(key)
            .arg(interval)
            .arg(cell.burst.max(1))
            .invoke_async(&mut connection)
            .await?;
        Ok(if allowed == 1 {
            Ok(())
        } else {
            Err(Duration::from_micros(wait.max(1) as u64))
        })
    }
}
