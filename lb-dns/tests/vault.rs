//! lb-dns reads its feed token from a real OpenBao through `[vault]`, on
//! 127.7.8.0/24.

use fleet::testkit::example_configs::ExampleConfigs;
use fleet::testkit::Bao;
use toml_edit::value;

#[tokio::test]
async fn lb_dns_reads_its_feed_token_from_vault() {
    let bao = Bao::start("127.7.8.1", 8200).await.unwrap();
    bao.put(
        "unmta/lb-dns-1",
        &[("healthd_token", "feed-token-from-vault")],
    )
    .await
    .unwrap();
    let configs = ExampleConfigs::relocated_with_vault([127, 7, 8], &bao, "lb-dns.toml").unwrap();
    configs
        .edit("lb-dns.toml", |doc| {
            doc["healthd_token"] = value("vault:secret/data/unmta/lb-dns-1#healthd_token");
        })
        .unwrap();
    let settings = lb_dns::Settings::load(&configs.path("lb-dns.toml")).unwrap();
    assert_eq!(
        settings.node.healthd_token.as_deref(),
        Some("feed-token-from-vault")
    );
    assert!(!format!("{:?}", settings.secrets).contains("feed-token-from-vault"));
}
