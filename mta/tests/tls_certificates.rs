//! Certificates as strict clients and operators need them, against the real
//! `mta` binary: rustls's default verifier and Python's strict context
//! (`VERIFY_X509_STRICT`, Python 3.13's default) over SMTP STARTTLS and
//! HTTPS, each trusting only the local CA; a renewed certificate taken on
//! SIGHUP while the connections opened before keep working; each
//! certificate's expiry in `/status`, and `/ready` degraded within 14 days
//! of it. 127.9.40.0/24 and 127.9.41.0/24.

mod ingress_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fleet::certificate::CertificateInfo;
use fleet::testkit::process::{eventually, http_get, DaemonProcess};
use fleet::testkit::strict_tls::Https;
use fleet::testkit::LocalCa;
use ingress_support::*;

const MTA: &str = env!("CARGO_BIN_EXE_mta");
const ADMIN_PORT: u16 = 19110;
const DAY: Duration = Duration::from_secs(86_400);

/// A node on `net`.11 serving a leaf of `ca` valid for `validity`, with
/// its admin listener on `net`.1:[`ADMIN_PORT`]; and what the leaf says.
fn fixture(net: [u8; 3], ca: &LocalCa, validity: Duration) -> (Fixture, CertificateInfo) {
    let [a, b, n] = net;
    let delivery =
        format!("[delivery]\nhold = true\nnameservers = [\"{a}.{b}.{n}.53:53\"]\ndsn = false\n");
    let mut fixture = Fixture::at(net, "", &delivery);
    let config = std::fs::read_to_string(fixture.config()).unwrap().replace(
        &format!("\"{a}.{b}.{n}.1:0\""),
        &format!("\"{a}.{b}.{n}.1:{ADMIN_PORT}\""),
    );
    std::fs::write(fixture.config(), config).unwrap();
    fixture.ca_pem = ca.cert_pem();
    let leaf = install(&fixture, ca, validity);
    (fixture, leaf)
}

/// Writes a new leaf of `ca` as the node's certificate and key (each by a
/// rename, so no reader sees half a file); returns what it says.
fn install(fixture: &Fixture, ca: &LocalCa, validity: Duration) -> CertificateInfo {
    let issued = ca
        .issue_valid_for(&[HOSTNAME, &fixture.ip.to_string()], validity)
        .unwrap();
    for (name, text) in [("key.pem", &issued.key_pem), ("cert.pem", &issued.cert_pem)] {
        let temporary = fixture.dir.path().join(format!("{name}.new"));
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, fixture.dir.path().join(name)).unwrap();
    }
    CertificateInfo::from_pem_file(&fixture.dir.path().join("cert.pem")).unwrap()
}

/// Serial and expiry, to compare a served certificate with a file.
fn identity(info: &CertificateInfo) -> (String, i64) {
    (info.serial.clone(), info.not_after)
}

fn served(der: &[u8]) -> (String, i64) {
    identity(&CertificateInfo::from_der("served".as_ref(), der).unwrap())
}

async fn admin(fixture: &Fixture, path: &str) -> Option<(u16, String)> {
    let [a, b, n, _] = fixture.ip.octets();
    http_get(&format!("http://{a}.{b}.{n}.1:{ADMIN_PORT}{path}")).await
}

async fn status(fixture: &Fixture) -> serde_json::Value {
    let (code, body) = admin(fixture, "/status").await.expect("/status answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn start(fixture: &Fixture) -> DaemonProcess {
    let node = DaemonProcess::start(MTA.as_ref(), &fixture.config()).unwrap();
    eventually(LIMIT, "the mta answers /ready", || async {
        admin(fixture, "/ready")
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await
    .unwrap();
    node
}

/// SMTP: banner, EHLO, STARTTLS with the strict client, EHLO; the
/// connection and the leaf the server presented.
async fn smtp(fixture: &Fixture) -> (Raw, (String, i64)) {
    let mut raw = Raw::greeted(fixture.smtp_addr()).await;
    assert_eq!(raw.cmd("EHLO client.example").await.code, 250);
    assert_eq!(raw.cmd("STARTTLS").await.code, 220);
    let (mut raw, leaf) = raw
        .try_tls_served(&fixture.ca_pem)
        .await
        .expect("the strict client accepts the STARTTLS certificate");
    assert_eq!(raw.cmd("EHLO client.example").await.code, 250);
    (raw, served(&leaf))
}

/// A keep-alive HTTPS connection to the node with the strict client.
async fn https(fixture: &Fixture) -> Https {
    let addr = SocketAddr::new(IpAddr::V4(fixture.ip), HTTPS_PORT);
    Https::connect(addr, HOSTNAME, &fixture.ca_pem)
        .await
        .expect("the strict client accepts the HTTPS certificate")
}

/// SMTP STARTTLS then HTTPS with Python's default context made strict
/// (what Python 3.13 does), trusting only the CA file, checking the IP.
const PYTHON_STRICT: &str = r#"
import http.client, smtplib, ssl, sys
ca, ip, smtp_port, https_port = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
with smtplib.SMTP(ip, int(smtp_port), timeout=20) as smtp:
    smtp.ehlo("client.example")
    assert smtp.starttls(context=ctx)[0] == 220
    assert smtp.ehlo("client.example")[0] == 250
https = http.client.HTTPSConnection(ip, int(https_port), context=ctx, timeout=20)
https.request("GET", "/ready")
print("smtp starttls ok; https", https.getresponse().status)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_clients_accept_smtp_starttls_and_https() {
    let ca = LocalCa::new("strict client test CA").unwrap();
    let (fixture, leaf) = fixture([127, 9, 40], &ca, 397 * DAY);
    let mut node = start(&fixture).await;

    let (mut raw, smtp_leaf) = smtp(&fixture).await;
    assert_eq!(smtp_leaf, identity(&leaf));
    assert_eq!(raw.cmd("QUIT").await.code, 221);
    let mut connection = https(&fixture).await;
    assert_eq!(identity(&connection.leaf), identity(&leaf));
    assert_eq!(
        connection.get("/ready").await.unwrap(),
        (200, "ready\n".to_string())
    );

    let ca_file = fixture.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    // The node is another process: waiting here holds nothing it needs.
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PYTHON_STRICT)
        .arg(&ca_file)
        .arg(fixture.ip.to_string())
        .arg(SMTP_PORTS[0].to_string())
        .arg(HTTPS_PORT.to_string())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.trim(), "smtp starttls ok; https 200");

    // `/status` shows the certificate's expiry, far off: not degraded.
    let status = status(&fixture).await;
    let shown = &status["service"]["certificates"][0];
    assert_eq!(shown["serial"], leaf.serial.as_str(), "{status}");
    assert!(shown["days_left"].as_i64().unwrap() >= 396, "{status}");
    assert_eq!(shown["expires_soon"], false);
    node.signal("TERM").unwrap();
    node.wait_exit(LIMIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate_and_keeps_open_connections() {
    let ca = LocalCa::new("renewal test CA").unwrap();
    let (fixture, old) = fixture([127, 9, 41], &ca, 397 * DAY);
    let mut node = start(&fixture).await;
    assert_eq!(
        admin(&fixture, "/ready").await.unwrap(),
        (200, "ready\n".into())
    );

    // Connections opened (and secured) before the reload.
    let (mut before, smtp_leaf) = smtp(&fixture).await;
    assert_eq!(smtp_leaf, identity(&old));
    let reply = before
        .cmd(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
        .await;
    assert_eq!(reply.code, 235, "{reply:?}");
    let mut https_before = https(&fixture).await;
    assert_eq!(https_before.get("/ready").await.unwrap().0, 200);

    // Renewed, by the same CA, with an hour short of 5 days left (4 whole
    // days): inside the warning window.
    let new = install(&fixture, &ca, 5 * DAY - Duration::from_secs(3600));
    assert_ne!(new.serial, old.serial);
    node.signal("HUP").unwrap();
    eventually(
        LIMIT,
        "a new connection gets the renewed certificate",
        || async { identity(&https(&fixture).await.leaf) == identity(&new) },
    )
    .await
    .unwrap();
    let (mut after, smtp_leaf) = smtp(&fixture).await;
    assert_eq!(smtp_leaf, identity(&new));
    assert_eq!(after.cmd("QUIT").await.code, 221);

    // The connections from before still work, on their old session.
    let reply = transaction(&mut before, message("before-reload").as_bytes()).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(before.cmd("QUIT").await.code, 221);
    let (code, body) = https_before.get("/ready").await.unwrap();
    assert_eq!(code, 200, "{body}");

    // Five days left: `/ready` stays 200 but says degraded, with the file.
    eventually(LIMIT, "/ready says degraded", || async {
        admin(&fixture, "/ready")
            .await
            .is_some_and(|(code, body)| code == 200 && body.starts_with("ready, degraded:"))
    })
    .await
    .unwrap();
    let (_, body) = admin(&fixture, "/ready").await.unwrap();
    assert!(body.contains("expires in 4 days"), "{body}");
    assert!(body.contains(&new.serial), "{body}");
    let status = status(&fixture).await;
    let shown = &status["service"]["certificates"][0];
    assert_eq!(shown["serial"], new.serial.as_str(), "{status}");
    assert_eq!(shown["days_left"], 4, "{status}");
    assert_eq!(shown["expires_soon"], true, "{status}");
    assert!(status["config"]["version"].as_u64().unwrap() >= 1);
    node.signal("TERM").unwrap();
    node.wait_exit(LIMIT).await.unwrap();
}
