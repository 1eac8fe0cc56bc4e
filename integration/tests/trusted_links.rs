//! Trusted links: healthd serves its feed over HTTPS (fleet CA) to the
//! followers whose tokens it knows; lb-dns follows it with its token and
//! refuses a healthd whose certificate does not name the feed URL's host,
//! or comes from another CA. On 127.5.20.0/24.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet::control::Control;
use fleet::testkit::pki::LocalCa;
use fleet::testkit::process::eventually;
use integration::state::sha256_hex;

const FOLLOWER_TOKEN: &str = "lb-dns-1-feed-token";
const ADMIN_TOKEN: &str = "trusted-links-admin";

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 5, 20, host)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn fleet_file(dir: &Path) {
    write(
        dir,
        "fleet.toml",
        &format!(
            "[zone]\norigin = \"unmta.net\"\nprimary_ns = \"ns1.unmta.net\"\n\
             hostmaster = \"hostmaster.unmta.net\"\n\
             nameservers = [ {{ name = \"ns1.unmta.net\", ipv4 = \"{}\" }} ]\n\
             [ports]\nsmtp = [25587]\nhttps = 25443\n\
             [[clusters]]\nid = \"tl000001\"\ndomains = [\"tl.example.com\"]\n\
             [[clusters.mtas]]\nname = \"mta-1\"\nipv4 = \"{}\"\n",
            ip(53),
            ip(11)
        ),
    );
}

/// healthd on `listen` over HTTPS with `cert` (`healthd.pem`), knowing one
/// follower token.
async fn start_healthd(dir: &Path, listen: Ipv4Addr, stem: &str) -> (SocketAddr, Control) {
    let config = write(
        dir,
        &format!("{stem}.toml"),
        &format!(
            "fleet_file = \"fleet.toml\"\nlisten = \"{listen}:0\"\nca_file = \"ca.pem\"\n\
             admin_token_sha256 = \"{}\"\nstate_file = \"var/{stem}.json\"\n\
             shutdown_grace = \"1s\"\n\
             [[followers]]\nname = \"lb-dns-1\"\ntoken_sha256 = \"{}\"\n\
             [tls]\ncertificate = \"{stem}.pem\"\nkey = \"{stem}-key.pem\"\n",
            sha256_hex(ADMIN_TOKEN),
            sha256_hex(FOLLOWER_TOKEN)
        ),
    );
    let settings = healthd::Settings::load(&config).unwrap();
    let listeners = healthd::Listeners::bind(&settings).await.unwrap();
    let addr = listeners.listen.local_addr().unwrap();
    let control = Control::new();
    tokio::spawn(healthd::run(settings, listeners, control.clone()));
    (addr, control)
}

/// lb-dns following `url` with `token`, trusting `ca`; returns its admin URL.
async fn start_lb_dns(dir: &Path, n: u8, url: &str, token: &str, ca: &str) -> (String, Control) {
    let config = write(
        dir,
        &format!("lb-dns-{n}.toml"),
        &format!(
            "fleet_file = \"fleet.toml\"\nlisten = [\"{}:0\"]\nadmin_listen = \"{}:0\"\n\
             healthd = [\"{url}\"]\nhealthd_token = \"{token}\"\nhealthd_ca_file = \"{ca}\"\n\
             shutdown_grace = \"1s\"\n",
            ip(100 + n),
            ip(100 + n)
        ),
    );
    let settings = lb_dns::config::Settings::load(&config).unwrap();
    let listeners = lb_dns::Listeners::bind(&settings).await.unwrap();
    let admin = format!("http://{}", listeners.admin.local_addr().unwrap());
    let control = Control::new();
    tokio::spawn(lb_dns::run(settings, listeners, control.clone()));
    (admin, control)
}

/// The one feed lb-dns follows, as its /status reports it.
async fn feed_report(admin: &str) -> serde_json::Value {
    let status: serde_json::Value = reqwest::get(format!("{admin}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    status["service"]["health"]["feeds"][0].clone()
}

fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_needs_a_follower_token_and_lb_dns_checks_healthds_identity() {
    fleet::telemetry::init(fleet::telemetry::LogFormat::Human);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("var")).unwrap();
    fleet_file(dir);
    let ca = LocalCa::new("trusted-links fleet CA").unwrap();
    // healthd-a's certificate names its own address; healthd-b serves one
    // naming another address, signed by the same CA.
    ca.write_bundle(dir, "healthd-a", &[&ip(1).to_string()])
        .unwrap();
    ca.write_bundle(dir, "healthd-b", &[&ip(99).to_string()])
        .unwrap();
    let other = LocalCa::new("some other CA").unwrap();
    write(dir, "other-ca.pem", &other.cert_pem());
    let (a, stop_a) = start_healthd(dir, ip(1), "healthd-a").await;
    let (b, stop_b) = start_healthd(dir, ip(2), "healthd-b").await;

    // The feed itself: 401 without a token or with a wrong one, 200 with
    // the follower's or the admin's.
    let client = https_client(&ca.cert_pem());
    let feed = format!("https://{a}/v1/fleet");
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(status(client.get(&feed)).await, 401);
    assert_eq!(status(client.get(&feed).bearer_auth("guess")).await, 401);
    assert_eq!(
        status(client.get(&feed).header("Authorization", FOLLOWER_TOKEN)).await,
        401,
        "a token without the Bearer scheme"
    );
    assert_eq!(
        status(client.get(&feed).bearer_auth(FOLLOWER_TOKEN)).await,
        200
    );
    assert_eq!(
        status(client.get(&feed).bearer_auth(ADMIN_TOKEN)).await,
        200
    );
    // Plain HTTP on the TLS listener gets no feed.
    assert!(reqwest::get(format!("http://{a}/v1/fleet")).await.is_err());

    // lb-dns with the right token and CA follows healthd-a.
    let (good, g) = start_lb_dns(dir, 1, &format!("https://{a}"), FOLLOWER_TOKEN, "ca.pem").await;
    // A wrong token, another CA, a certificate for another host: refused.
    let (wrong_token, w) = start_lb_dns(dir, 2, &format!("https://{a}"), "guess", "ca.pem").await;
    let (wrong_ca, c) = start_lb_dns(
        dir,
        3,
        &format!("https://{a}"),
        FOLLOWER_TOKEN,
        "other-ca.pem",
    )
    .await;
    let (wrong_host, h) =
        start_lb_dns(dir, 4, &format!("https://{b}"), FOLLOWER_TOKEN, "ca.pem").await;

    let bound = Duration::from_secs(20);
    eventually(bound, "lb-dns-1 follows healthd over TLS", || async {
        feed_report(&good).await["fresh"] == true
    })
    .await
    .unwrap();
    for (admin, expected) in [
        (&wrong_token, "401"),
        (&wrong_ca, "certificate"),
        (&wrong_host, "certificate"),
    ] {
        eventually(bound, &format!("{admin} refuses the feed"), || async {
            let report = feed_report(admin).await;
            let error = report["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            report["fresh"] == false && error.to_lowercase().contains(expected)
        })
        .await
        .unwrap();
        println!("refused: {}", feed_report(admin).await["last_error"]);
    }
    for control in [g, w, c, h, stop_a, stop_b] {
        control.shutdown.cancel();
    }
}

#[test]
fn lb_dns_refuses_an_https_feed_without_a_ca_and_a_bad_url() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fleet_file(dir);
    for (healthd, expected) in [
        ("https://127.5.20.1:9200", "healthd_ca_file"),
        (
            "ftp://127.5.20.1:9200",
            "must start with http:// or https://",
        ),
    ] {
        let config = write(
            dir,
            "lb-dns.toml",
            &format!(
                "fleet_file = \"fleet.toml\"\nlisten = [\"127.5.20.101:5300\"]\n\
                 admin_listen = \"127.5.20.101:9300\"\nhealthd = [\"{healthd}\"]\n"
            ),
        );
        let error = lb_dns::config::Settings::load(&config)
            .unwrap_err()
            .to_string();
        assert!(error.contains(expected), "{error}");
        assert!(error.contains("healthd[0]"), "{error}");
    }
}

#[test]
fn healthd_refuses_a_follower_without_a_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fleet_file(dir);
    LocalCa::new("ca")
        .unwrap()
        .write_bundle(dir, "x", &["x"])
        .unwrap();
    let config = write(
        dir,
        "healthd.toml",
        "fleet_file = \"fleet.toml\"\nlisten = \"127.5.20.1:0\"\nca_file = \"ca.pem\"\n\
         state_file = \"state.json\"\n\
         [[followers]]\nname = \"lb-dns-1\"\ntoken_sha256 = \"the plain token\"\n\
         [[followers]]\nname = \"lb-dns-1\"\ntoken_sha256 = \"00\"\n",
    );
    let error = healthd::Settings::load(&config).unwrap_err().to_string();
    assert!(error.contains("followers[0].token_sha256"), "{error}");
    assert!(
        error.contains("duplicate follower name `lb-dns-1`"),
        "{error}"
    );
}
