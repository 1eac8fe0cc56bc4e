//! healthd in-process against fake MTAs: configs in a temporary folder,
//! the feed read over HTTP, bounded polling.

#![allow(dead_code)]

pub mod fake;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::control::Control;
use fleet::feed::{FleetHealth, MtaHealth, MtaState};
use fleet::testkit::pki::LocalCa;

pub use fake::Fake;
#[allow(unused_imports)]
pub use fake::Script;

pub const SMTP_PORT: u16 = 2525;
pub const HTTPS_PORT: u16 = 8443;
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const ACCOUNT_TOKEN: &str = "acme-token";

pub fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

pub fn ip(test: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 3, test, host)
}

/// A CA and server configurations for cluster hostnames.
pub struct Pki {
    pub ca: LocalCa,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            ca: LocalCa::new("healthd test CA").unwrap(),
        }
    }

    pub fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let issued = self.ca.issue(names).unwrap();
        fake::server_config(&issued.cert_pem, &issued.key_pem)
    }
}

/// One MTA line of a test fleet.
pub struct MtaSpec {
    pub name: &'static str,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub drain: bool,
}

pub fn mta(name: &'static str, ipv4: Ipv4Addr) -> MtaSpec {
    MtaSpec {
        name,
        ipv4,
        ipv6: None,
        drain: false,
    }
}

/// A fleet file with the test ports, clusters `(id, rate_limit, mtas)` and
/// the account `acme` owning the first cluster.
pub fn fleet_toml(clusters: &[(&str, &str, Vec<MtaSpec>)]) -> String {
    let mut text = format!(
        r#"[zone]
origin = "unmta.net"
primary_ns = "ns1.unmta.net"
hostmaster = "hostmaster.unmta.net"
nameservers = [ {{ name = "ns1.unmta.net", ipv4 = "127.3.255.53" }} ]

[ports]
smtp = [{SMTP_PORT}, 25]
https = {HTTPS_PORT}
"#
    );
    for (id, rate, mtas) in clusters {
        text.push_str(&format!(
            "\n[[clusters]]\nid = \"{id}\"\nrate_limit = \"{rate}\"\ndomains = [\"{id}.example.com\"]\n"
        ));
        for m in mtas {
            text.push_str(&format!(
                "\n  [[clusters.mtas]]\n  name = \"{}\"\n  ipv4 = \"{}\"\n  drain = {}\n",
                m.name, m.ipv4, m.drain
            ));
            if let Some(ipv6) = m.ipv6 {
                text.push_str(&format!("  ipv6 = \"{ipv6}\"\n"));
            }
        }
    }
    if let Some((first, _, _)) = clusters.first() {
        text.push_str(&format!(
            "\n[[accounts]]\nname = \"acme\"\ntoken_sha256 = \"{}\"\nclusters = [\"{first}\"]\n",
            sha256(ACCOUNT_TOKEN)
        ));
    }
    text
}

/// Writes healthd.toml (listening on `listen`:0), the fleet file and the
/// CA into `dir`. `probe` is extra TOML for the `[probe]` table.
pub fn write_configs(dir: &Path, listen: Ipv4Addr, pki: &Pki, fleet: &str, probe: &str) -> PathBuf {
    std::fs::write(dir.join("ca.pem"), pki.ca.cert_pem()).unwrap();
    std::fs::write(dir.join("fleet.toml"), fleet).unwrap();
    let config = dir.join("healthd.toml");
    std::fs::write(
        &config,
        format!(
            "fleet_file = \"fleet.toml\"\nlisten = \"{listen}:0\"\nca_file = \"ca.pem\"\n\
             admin_token_sha256 = \"{}\"\nstate_file = \"var/state.json\"\nshutdown_grace = \"2s\"\n\
             [probe]\n{probe}\n",
            sha256(ADMIN_TOKEN)
        ),
    )
    .unwrap();
    config
}

pub fn rewrite_fleet(dir: &Path, fleet: &str) {
    let temp = dir.join("fleet.toml.new");
    std::fs::write(&temp, fleet).unwrap();
    std::fs::rename(temp, dir.join("fleet.toml")).unwrap();
}

/// healthd running in this process.
pub struct Healthd {
    pub url: String,
    pub control: Control,
    pub client: reqwest::Client,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Healthd {
    pub async fn start(config: &Path) -> Healthd {
        fleet::telemetry::init(fleet::telemetry::LogFormat::Human);
        let settings = healthd::Settings::load(config).unwrap();
        let listeners = healthd::Listeners::bind(&settings).await.unwrap();
        let url = format!("http://{}", listeners.admin.local_addr().unwrap());
        let control = Control::new();
        let task = tokio::spawn(healthd::run(settings, listeners, control.clone()));
        Healthd {
            url,
            control,
            client: reqwest::Client::new(),
            task,
        }
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(self) {
        self.control.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("healthd stops within 10 s")
            .unwrap()
            .unwrap();
    }

    pub fn reload(&self) {
        self.control.request_reload();
    }

    pub async fn feed(&self) -> FleetHealth {
        self.client
            .get(format!("{}/v1/fleet", self.url))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn mta(&self, name: &str) -> Option<MtaHealth> {
        find(&self.feed().await, name)
    }

    /// Polls the feed (every 10 ms) until `check` holds for MTA `name`.
    pub async fn wait_for(
        &self,
        name: &str,
        bound: Duration,
        what: &str,
        check: impl Fn(&MtaHealth) -> bool,
    ) -> MtaHealth {
        let start = Instant::now();
        loop {
            let found = self.mta(name).await;
            if let Some(mta) = found.as_ref().filter(|m| check(m)) {
                return mta.clone();
            }
            assert!(
                start.elapsed() < bound,
                "{name}: not {what} within {bound:?}; last seen {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_state(&self, name: &str, state: MtaState, bound: Duration) -> MtaHealth {
        self.wait_for(name, bound, state.as_str(), |m| m.state == state)
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    pub async fn text(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

pub fn find(feed: &FleetHealth, name: &str) -> Option<MtaHealth> {
    feed.clusters
        .iter()
        .flat_map(|c| c.mtas.iter())
        .find(|m| m.name == name)
        .cloned()
}

/// A fake MTA at `ipv4` on the test ports.
pub async fn fake(ipv4: Ipv4Addr, tls: Arc<rustls::ServerConfig>) -> Fake {
    Fake::start(IpAddr::V4(ipv4), SMTP_PORT, HTTPS_PORT, tls).await
}
