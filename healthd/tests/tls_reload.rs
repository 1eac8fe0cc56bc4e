//! healthd's HTTPS listener (`[tls]`, its feed between hosts) takes a
//! renewed certificate on SIGHUP: connections opened before keep working,
//! new ones get the new certificate (checked by rustls's default verifier
//! trusting only the local CA), `/status` shows its expiry and `/ready`
//! says degraded within 14 days of it. The real binary on 127.9.60.0/24.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use fleet::certificate::CertificateInfo;
use fleet::testkit::process::{eventually, DaemonProcess};
use fleet::testkit::strict_tls::Https;
use fleet::testkit::LocalCa;

const BINARY: &str = env!("CARGO_BIN_EXE_healthd");
const LIMIT: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(86_400);
const IP: Ipv4Addr = Ipv4Addr::new(127, 9, 60, 1);
const PORT: u16 = 19200;

/// A leaf of `ca` for healthd's address as `healthd.pem` (each file by a
/// rename); what it says.
fn install(dir: &Path, ca: &LocalCa, validity: Duration) -> CertificateInfo {
    let issued = ca.issue_valid_for(&[&IP.to_string()], validity).unwrap();
    for (name, text) in [
        ("healthd-key.pem", &issued.key_pem),
        ("healthd.pem", &issued.cert_pem),
    ] {
        std::fs::write(dir.join("new.pem"), text).unwrap();
        std::fs::rename(dir.join("new.pem"), dir.join(name)).unwrap();
    }
    CertificateInfo::from_pem_file(&dir.join("healthd.pem")).unwrap()
}

fn write_configs(dir: &Path, ca: &LocalCa) {
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(
        dir.join("fleet.toml"),
        "[zone]\norigin = \"unmta.net\"\nprimary_ns = \"ns1.unmta.net\"\n\
         hostmaster = \"hostmaster.unmta.net\"\n\
         nameservers = [ { name = \"ns1.unmta.net\", ipv4 = \"127.9.60.53\" } ]\n\
         [ports]\nsmtp = [19587]\nhttps = 19443\n\
         [[clusters]]\nid = \"tr000001\"\ndomains = [\"tr.example.com\"]\n\
         [[clusters.mtas]]\nname = \"mta-1\"\nipv4 = \"127.9.60.11\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("healthd.toml"),
        format!(
            "fleet_file = \"fleet.toml\"\nlisten = \"{IP}:{PORT}\"\nca_file = \"ca.pem\"\n\
             state_file = \"var/state.json\"\nshutdown_grace = \"1s\"\n\
             [tls]\ncertificate = \"healthd.pem\"\nkey = \"healthd-key.pem\"\n"
        ),
    )
    .unwrap();
}

async fn connect(ca: &LocalCa) -> anyhow::Result<Https> {
    Https::connect(
        SocketAddr::new(IpAddr::V4(IP), PORT),
        &IP.to_string(),
        &ca.cert_pem(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("healthd renewal test CA").unwrap();
    write_configs(dir.path(), &ca);
    let old = install(dir.path(), &ca, 397 * DAY);
    let mut healthd =
        DaemonProcess::start(BINARY.as_ref(), &dir.path().join("healthd.toml")).unwrap();
    eventually(LIMIT, "healthd answers over HTTPS", || async {
        connect(&ca).await.is_ok()
    })
    .await
    .unwrap();
    let mut before = connect(&ca).await.unwrap();
    assert_eq!(before.leaf.serial, old.serial);
    assert_eq!(before.get("/live").await.unwrap().0, 200);

    let new = install(dir.path(), &ca, 5 * DAY - Duration::from_secs(3600));
    healthd.signal("HUP").unwrap();
    eventually(
        LIMIT,
        "a new connection gets the renewed certificate",
        || async {
            connect(&ca).await.is_ok_and(|c| {
                (c.leaf.serial.clone(), c.leaf.not_after) == (new.serial.clone(), new.not_after)
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(before.get("/live").await.unwrap(), (200, "live\n".into()));

    let mut after = connect(&ca).await.unwrap();
    let (code, body) = after.get("/status").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let shown = &status["service"]["certificates"][0];
    assert_eq!(shown["serial"], new.serial.as_str(), "{status}");
    assert_eq!(shown["days_left"], 4, "{status}");
    assert_eq!(status["config"]["restart_required"], serde_json::json!([]));
    // Ready once the first probe round ends, and degraded: 200 with the
    // expiring certificate named.
    eventually(
        LIMIT,
        "/ready says degraded, naming the certificate",
        || async {
            let Ok(mut connection) = connect(&ca).await else {
                return false;
            };
            connection.get("/ready").await.is_ok_and(|(code, body)| {
                code == 200
                    && body.starts_with("ready, degraded:")
                    && body.contains("expires in 4 days")
            })
        },
    )
    .await
    .unwrap();
    healthd.signal("TERM").unwrap();
    healthd.wait_exit(LIMIT).await.unwrap();
}
