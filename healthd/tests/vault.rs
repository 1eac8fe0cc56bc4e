//! healthd's token hashes (admin, followers, the fleet's accounts) read from
//! a real OpenBao through `[vault]`, on 127.7.7.0/24 (lb-dns: lb-dns/tests/vault.rs).

use fleet::testkit::example_configs::ExampleConfigs;
use fleet::testkit::Bao;
use healthd::auth::{caller_for_token, Caller};
use sha2::Digest;
use toml_edit::value;

fn sha256(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[tokio::test]
async fn token_hashes_come_from_vault_and_a_missing_one_names_its_reference() {
    let bao = Bao::start("127.7.7.1", 8200).await.unwrap();
    bao.put(
        "unmta/healthd",
        &[
            ("admin_token_sha256", &sha256("vault-admin")),
            ("lb_dns_1", &sha256("vault-feed")),
        ],
    )
    .await
    .unwrap();
    bao.put(
        "unmta/accounts/acme",
        &[("token_sha256", &sha256("vault-acme"))],
    )
    .await
    .unwrap();
    let configs = ExampleConfigs::relocated_with_vault([127, 7, 7], &bao, "healthd.toml").unwrap();
    configs
        .edit("healthd.toml", |doc| {
            doc["admin_token_sha256"] = value("vault:secret/data/unmta/healthd#admin_token_sha256");
            doc["followers"][0]["token_sha256"] = value("vault:secret/data/unmta/healthd#lb_dns_1");
        })
        .unwrap();
    configs
        .edit("fleet.toml", |doc| {
            doc["accounts"][0]["token_sha256"] =
                value("vault:secret/data/unmta/accounts/acme#token_sha256");
        })
        .unwrap();
    let settings = healthd::Settings::load(&configs.path("healthd.toml")).unwrap();
    let admin = settings.node.admin_token_sha256.as_deref();
    assert_eq!(
        caller_for_token("vault-admin", &settings.fleet, admin),
        Some(Caller::Admin)
    );
    assert!(matches!(
        caller_for_token("vault-acme", &settings.fleet, admin),
        Some(Caller::Account { name, .. }) if name == "acme"
    ));
    assert_eq!(
        caller_for_token("example-token", &settings.fleet, admin),
        None
    );
    assert!(settings.may_follow("vault-feed"));
    assert!(!settings.may_follow("example-feed-token-lb-dns-1"));
    let status = serde_json::to_string(&settings.secrets.status()).unwrap();
    assert!(!status.contains(&sha256("vault-admin")), "{status}");

    // A reference Vault does not have: the load (start, --check, reload)
    // fails and says which.
    configs
        .edit("fleet.toml", |doc| {
            doc["accounts"][0]["token_sha256"] =
                value("vault:secret/data/unmta/accounts/gone#token_sha256");
        })
        .unwrap();
    let error = healthd::Settings::load(&configs.path("healthd.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("accounts[0].token_sha256")
            && error.contains("vault:secret/data/unmta/accounts/gone#token_sha256"),
        "{error}"
    );
}

/// The feed's TLS key read from Vault (its file gone); a missing one is an
/// error naming `tls` and the reference.
#[tokio::test]
async fn the_feed_tls_key_comes_from_vault() {
    let bao = Bao::start("127.7.7.2", 8200).await.unwrap();
    let configs = ExampleConfigs::relocated_with_vault([127, 7, 7], &bao, "healthd.toml").unwrap();
    let dir = configs.path("feed-tls");
    fleet::testkit::LocalCa::new("feed test CA")
        .unwrap()
        .write_bundle(&dir, "healthd", &["127.7.7.1"])
        .unwrap();
    let key_file = dir.join("healthd-key.pem");
    let pem = std::fs::read_to_string(&key_file).unwrap();
    bao.put("unmta/tls/healthd", &[("private_key", &pem)])
        .await
        .unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let tls = |reference: &'static str| {
        let certificate = dir.join("healthd.pem");
        move |doc: &mut toml_edit::DocumentMut| {
            doc["tls"] = toml_edit::table();
            doc["tls"]["certificate"] = value(certificate.display().to_string());
            doc["tls"]["key"] = value(reference);
        }
    };
    configs
        .edit(
            "healthd.toml",
            tls("vault:secret/data/unmta/tls/healthd#private_key"),
        )
        .unwrap();
    let settings = healthd::Settings::load(&configs.path("healthd.toml")).unwrap();
    assert!(settings.listen_tls.is_some());
    configs
        .edit(
            "healthd.toml",
            tls("vault:secret/data/unmta/tls/gone#private_key"),
        )
        .unwrap();
    let error = healthd::Settings::load(&configs.path("healthd.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("tls") && error.contains("vault:secret/data/unmta/tls/gone#private_key"),
        "{error}"
    );
    assert!(!error.contains("PRIVATE KEY"), "{error}");
}
