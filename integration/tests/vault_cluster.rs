//! `local-cluster --vault`: an OpenBao dev server next to the fleet holds
//! every secret. Mail is accepted with a credential whose hash is only in
//! OpenBao, DKIM-signed with keys that are only there (and verifies), a hash
//! changed in OpenBao takes over on reload, and `/metrics` counts the reads
//! without a value. Runs on 127.5.21.0/24 (OpenBao on 127.5.21.1:8200).

mod common;

use std::time::Duration;

use common::Cluster;
use fleet::testkit::process::{eventually, http_get};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use lettre::AsyncTransport;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

const NET: u8 = 21;
const LIMIT: Duration = Duration::from_secs(60);

fn read(cluster: &Cluster, name: &str) -> String {
    std::fs::read_to_string(cluster.state_dir().join(name)).unwrap()
}

/// Every file of the state dir holds no password hash and no private key:
/// they are only in OpenBao (the TLS key stays for restarts, see README).
fn assert_no_secret_files(cluster: &Cluster) {
    let tls = cluster.state_dir().join("tls");
    for name in ["dkim-s1.pem", "dkim-r1.pem"] {
        assert!(!tls.join(name).exists(), "{name} is still a file");
    }
    for name in ["fleet.toml", "mta-1.toml", "healthd.toml", "lb-dns.toml"] {
        let text = read(cluster, name);
        assert!(!text.contains("$argon2"), "{name} holds a hash:\n{text}");
        assert!(
            name == "fleet.toml" || text.contains("[vault]"),
            "{name} has no [vault]:\n{text}"
        );
    }
    let fleet = read(cluster, "fleet.toml");
    assert!(
        fleet.contains("password = \"vault:secret/data/unmta/"),
        "{fleet}"
    );
    assert!(
        fleet.contains("token_sha256 = \"vault:secret/data/unmta/accounts/local#token_sha256\""),
        "{fleet}"
    );
    let mta = read(cluster, "mta-1.toml");
    fleet::testkit::assert_contains_all(
        &mta,
        &[
            "key = \"vault:secret/data/unmta/dkim/yourdomain.test#private_key\"",
            "key = \"vault:secret/data/unmta/dkim/yourdomain.test/r1#private_key\"",
            "key = \"vault:secret/data/unmta/tls/cluster-key#private_key\"",
        ],
    );
    assert!(read(cluster, "lb-dns.toml").contains("healthd_token = \"vault:"));
    assert!(read(cluster, "healthd.toml").contains("token_sha256 = \"vault:"));
}

/// Both signatures (ed25519 s1, rsa r1) verify against the local DNS.
async fn assert_dkim_verifies(cluster: &Cluster, message: &str) {
    let resolver = &cluster.info.resolver;
    let mut server = NameServerConfig::udp_and_tcp(resolver.address.into());
    for connection in &mut server.connections {
        connection.port = resolver.port;
    }
    let verifier = MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![server]),
        ResolverOpts::default(),
    )
    .unwrap();
    let parsed = AuthenticatedMessage::parse(message.as_bytes()).expect("a message");
    let results = verifier.verify_dkim(&parsed).await;
    assert_eq!(results.len(), 2, "{results:?}\n{message}");
    for result in &results {
        assert_eq!(result.result(), &DkimResult::Pass, "{results:?}");
    }
}

/// Writes a new version of a KV v2 secret with the dev server's root token.
async fn put(cluster: &Cluster, path: &str, field: &str, text: &str) {
    let vault = cluster
        .info
        .vault
        .as_ref()
        .expect("cluster.json names Vault");
    let token = std::fs::read_to_string(&vault.token_file).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/secret/data/{path}", vault.address))
        .header("X-Vault-Token", token.trim())
        .json(&serde_json::json!({ "data": { field: text } }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

async fn metrics(cluster: &Cluster, mta: &str) -> String {
    let admin = cluster
        .info
        .process(mta)
        .unwrap()
        .admin_url
        .clone()
        .unwrap();
    http_get(&format!("{admin}/metrics")).await.unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_cluster_accepts_signs_and_rotates_from_openbao_only() -> anyhow::Result<()> {
    let cluster = Cluster::start(NET, &["--vault", "--mtas", "2"])?;
    assert!(cluster
        .output()
        .contains("OpenBao dev server on http://127.5.21.1:8200"));
    assert!(cluster.output().contains("bao kv list secret/unmta"));
    assert_no_secret_files(&cluster);

    // SMTP AUTH and HTTP Basic with the hash from OpenBao; signed with the
    // keys from OpenBao; the signatures verify.
    let [first, second] = cluster.mta_addresses()[..] else {
        panic!("two MTAs");
    };
    cluster.send_smtp(first, "vault smtp").await?;
    let answer = cluster.inject(second, "vault http").await?;
    assert_eq!(answer["success_count"], 1, "{answer}");
    let tags = ["vault smtp".to_string(), "vault http".to_string()];
    cluster.wait_delivered(&tags, LIMIT).await?;
    for tag in &tags {
        let message = cluster.sink_message(tag).unwrap();
        assert_dkim_verifies(&cluster, &message).await;
    }

    // /metrics counts reads per reference, never a value.
    let text = metrics(&cluster, "mta-1").await;
    fleet::testkit::assert_contains_all(
        &text,
        &[
        "mta_vault_secret_reads_total{reference=\"vault:secret/data/unmta/dkim/yourdomain.test#private_key\",result=\"ok\"}",
        "mta_vault_secret_seconds_since_success{reference=\"vault:secret/data/unmta/tls/cluster-key#private_key\"}",
        "mta_vault_degraded 0",
        "mta_vault_logins_total{method=\"token\"} 0",
        ],
    );
    assert!(!text.contains("PRIVATE KEY") && !text.contains("$argon2"));

    // A new hash written only to OpenBao: after a reload the new password
    // is accepted and the old one refused.
    let credential = &cluster.info.credential;
    let path = format!(
        "unmta/{}/credentials/{}",
        cluster.info.cluster.id, credential.username
    );
    let hash = fleet::password::hash_password("rotated-in-openbao").unwrap();
    put(&cluster, &path, "password", &hash).await;
    cluster.ops(&["reload"])?;
    eventually(LIMIT, "the rotated password is accepted", || async {
        cluster
            .smtp_as(first, &credential.username, "rotated-in-openbao")
            .send(cluster.message("vault rotated"))
            .await
            .is_ok()
    })
    .await?;
    let old = cluster.send_smtp(first, "vault old password").await;
    assert!(old.is_err(), "the old password still works");
    cluster
        .wait_delivered(&["vault rotated".to_string()], LIMIT)
        .await?;

    // A restart: the dev server kept nothing, so the secrets are imported
    // afresh (new DKIM keys, published by the local DNS) and still live
    // only in OpenBao; mail flows and verifies again.
    let mut cluster = cluster;
    let dir = cluster.take_dir();
    let again = Cluster::start_in(dir, NET, &[])?;
    assert!(again.info.vault.is_some(), "the restart keeps --vault");
    assert_no_secret_files(&again);
    again.send_smtp(first, "vault after restart").await?;
    let tag = ["vault after restart".to_string()];
    again.wait_delivered(&tag, LIMIT).await?;
    assert_dkim_verifies(&again, &again.sink_message(&tag[0]).unwrap()).await;
    Ok(())
}
