//! A planned stop (SIGTERM): the node reports not ready at once (healthd's
//! `/ready` probe fails, lb-dns stops answering it), keeps serving whoever
//! still resolved it, and closes only once no lb-dns has answered its
//! addresses for one TTL (clients' caches have run out) and a second more
//! (transactions started just before), or `max_wait` has passed.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fleet::clock::words;
use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
use hickory_resolver::proto::rr::{Name, RecordType};
use serde::Deserialize;
use tokio::net::UdpSocket;

/// Past the TTL, for transactions started just before clients' caches ran
/// out.
const SETTLE: Duration = Duration::from_secs(1);

/// `[planned_stop]` in the node config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlannedStopConfig {
    /// The longest a planned stop keeps serving; `0s` stops at once.
    #[serde(with = "fleet::config::duration")]
    pub max_wait: Duration,
    /// The lb-dns servers asked whether they still answer this node
    /// (`address` or `address:port`); default: the fleet's `[zone]`
    /// nameservers on port 53.
    pub lb_dns: Vec<String>,
    /// Time between two rounds of questions.
    #[serde(with = "fleet::config::duration")]
    pub poll: Duration,
}

impl Default for PlannedStopConfig {
    fn default() -> Self {
        PlannedStopConfig {
            max_wait: Duration::ZERO,
            lb_dns: Vec::new(),
            poll: Duration::from_millis(250),
        }
    }
}

impl PlannedStopConfig {
    /// The lb-dns servers as socket addresses; the error names the entry.
    pub fn servers(&self, fleet: &fleet::Fleet) -> Result<Vec<SocketAddr>, String> {
        if self.lb_dns.is_empty() {
            let zone = &fleet.zone.nameservers;
            let v4 = zone.iter().filter_map(|ns| ns.ipv4.map(IpAddr::V4));
            let v6 = zone.iter().filter_map(|ns| ns.ipv6.map(IpAddr::V6));
            return Ok(v4.chain(v6).map(|ip| SocketAddr::new(ip, 53)).collect());
        }
        (self.lb_dns.iter().enumerate())
            .map(|(i, text)| {
                text.parse::<SocketAddr>()
                    .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        format!(
                            "planned_stop.lb_dns[{i}]: `{text}` is not an address or address:port"
                        )
                    })
            })
            .collect()
    }
}

/// What a planned stop waits on: this node's addresses under `hostname`.
pub struct Watch {
    pub hostname: String,
    pub addresses: HashSet<IpAddr>,
    pub servers: Vec<SocketAddr>,
    pub ttl: Duration,
    pub max_wait: Duration,
    pub poll: Duration,
}

impl Watch {
    /// Returns once no server has answered this node for one TTL, or
    /// `max_wait` has passed; says in the log which it was.
    pub async fn wait_out_of_dns(&self) {
        let start = Instant::now();
        let mut unanswered_since: Option<Instant> = None;
        loop {
            let answered = self.answered_anywhere().await;
            let now = Instant::now();
            match (answered, unanswered_since) {
                (true, _) => unanswered_since = None,
                (false, None) => {
                    tracing::info!(
                        "planned stop: lb-dns no longer answers this node; serving one more TTL ({})",
                        words(self.ttl)
                    );
                    unanswered_since = Some(now);
                }
                (false, Some(_)) => {}
            }
            if unanswered_since.is_some_and(|since| now - since >= self.ttl + SETTLE) {
                tracing::info!(
                    "planned stop: out of DNS for one TTL after {}: closing",
                    words(start.elapsed())
                );
                return;
            }
            if now - start >= self.max_wait {
                tracing::warn!(
                    "planned stop: max_wait ({}) over while lb-dns {}: closing",
                    words(self.max_wait),
                    if answered {
                        "still answers this node"
                    } else {
                        "had answered it within the TTL"
                    }
                );
                return;
            }
            tokio::time::sleep(self.poll.min(self.max_wait - (now - start))).await;
        }
    }

    /// Whether any lb-dns that answers names one of this node's addresses.
    /// A server that does not answer counts as not answering this node:
    /// the TTL wait covers what clients may have cached from it.
    async fn answered_anywhere(&self) -> bool {
        let mut types = vec![RecordType::A];
        if self.addresses.iter().any(IpAddr::is_ipv6) {
            types.push(RecordType::AAAA);
        }
        for server in &self.servers {
            for &qtype in &types {
                if let Some(addresses) = ask(*server, &self.hostname, qtype).await {
                    if addresses.iter().any(|a| self.addresses.contains(a)) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// The addresses `server` answers for `name`, or `None` without an answer
/// within a second.
pub async fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Vec<IpAddr>> {
    let name = Name::from_ascii(name).ok()?;
    let id: u16 = rand::random();
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(name, qtype));
    let bytes = query.to_vec().ok()?;
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(server).await.ok()?;
    socket.send(&bytes).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        let Ok(answer) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if answer.metadata.id != id {
            continue;
        }
        return Some(
            answer
                .answers
                .iter()
                .filter_map(|r| r.data.ip_addr())
                .collect(),
        );
    }
}
