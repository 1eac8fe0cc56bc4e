//! healthd in-process against fake MTAs: configs in a temporary folder,
//! the feed read over HTTP, bounded polling.

#![allow(dead_code)]

pub mod fake;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::feed::{FleetHealth, MtaHealth, MtaState};
use fleet::testkit::pki::LocalCa;
use fleet::testkit::InProcess;

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
    let mut text = fleet::testkit::FleetToml::new("127.3.255.53")
        .ports(&[SMTP_PORT, 25], HTTPS_PORT)
        .to_string();
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

/// One test's ground: its addresses (127.3.`test`.x), a folder for
/// healthd's files and the CA the fakes' certificates come from.
pub struct Bed {
    pub test: u8,
    pub dir: tempfile::TempDir,
    pub pki: Pki,
}

impl Bed {
    pub fn new(test: u8) -> Bed {
        Bed {
            test,
            dir: tempfile::tempdir().unwrap(),
            pki: Pki::new(),
        }
    }

    pub fn ip(&self, host: u8) -> Ipv4Addr {
        ip(self.test, host)
    }

    /// A fake MTA on `.host` with a certificate for `names`.
    pub async fn fake(&self, host: u8, names: &[&str]) -> Fake {
        fake(self.ip(host), self.pki.server(names)).await
    }

    /// healthd's files for `fleet`, healthd on `.1`: `node` is more
    /// top-level TOML, `probe` TOML for the `[probe]` table.
    pub fn configs(&self, fleet: &str, node: &str, probe: &str) -> PathBuf {
        let probe = format!("{probe}\n");
        let config = write_configs(self.dir.path(), self.ip(1), &self.pki, fleet, &probe);
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replacen("[probe]", &format!("{node}\n[probe]"), 1);
        std::fs::write(&config, text).unwrap();
        config
    }

    /// Replaces the fleet file at once (a rename), as an operator's tool
    /// would; healthd reads it on its next reload.
    pub fn rewrite_fleet(&self, fleet: &str) {
        rewrite_fleet(self.dir.path(), fleet);
    }
}

/// One fake MTA `mta-1` on `.10` of cluster `id` (`c-<id>.unmta.net`,
/// unlimited), scripted, and the fleet file that holds just it.
pub struct OneFake {
    pub bed: Bed,
    pub fake: Fake,
    pub fleet: String,
}

impl OneFake {
    pub async fn new(test: u8, id: &str, script: impl FnOnce(&mut Script)) -> OneFake {
        let bed = Bed::new(test);
        let fake = bed.fake(10, &[&format!("c-{id}.unmta.net")]).await;
        fake.set(script);
        let fleet = fleet_toml(&[(id, "unlimited", vec![mta("mta-1", bed.ip(10))])]);
        OneFake { bed, fake, fleet }
    }

    /// healthd watching it, started with `node` and `probe` settings as in
    /// [`Bed::configs`].
    pub async fn start(&self, node: &str, probe: &str) -> Healthd {
        Healthd::start(&self.bed.configs(&self.fleet, node, probe)).await
    }
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
    pub client: reqwest::Client,
    daemon: InProcess,
}

impl Healthd {
    pub async fn start(config: &Path) -> Healthd {
        fleet::telemetry::init(fleet::telemetry::LogFormat::Human);
        let settings = healthd::Settings::load(config).unwrap();
        let listeners = healthd::Listeners::bind(&settings).await.unwrap();
        let url = format!("http://{}", listeners.listen.local_addr().unwrap());
        let daemon = InProcess::spawn(|control| healthd::run(settings, listeners, control));
        Healthd {
            url,
            client: reqwest::Client::new(),
            daemon,
        }
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(self) {
        self.daemon.stop(Duration::from_secs(10)).await;
    }

    pub fn reload(&self) {
        self.daemon.reload();
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

    /// Waits, at most `bound`, for `name` to be down; with how long that
    /// took from now (call it right after breaking the MTA).
    pub async fn wait_down_timed(&self, name: &str, bound: Duration) -> (MtaHealth, Duration) {
        let start = Instant::now();
        let down = self.wait_state(name, MtaState::Down, bound).await;
        (down, start.elapsed())
    }

    /// [`Healthd::wait_state`] up, within the 5 s a healthy fake needs.
    pub async fn wait_up(&self, name: &str) -> MtaHealth {
        self.wait_state(name, MtaState::Up, Duration::from_secs(5))
            .await
    }

    pub async fn wait_state(&self, name: &str, state: MtaState, bound: Duration) -> MtaHealth {
        self.wait_for(name, bound, state.as_str(), |m| m.state == state)
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, token).await
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
