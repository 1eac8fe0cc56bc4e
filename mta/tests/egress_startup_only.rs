//! `[delivery.egress]` is read once, when the egress engine is built at
//! start: a reload that changes it applies the rest and names each changed
//! key under `restart_required` in `/status`. Runs on 127.7.61.0/24.

mod egress_support;

use egress_support::{Node, LIMIT};
use fleet::testkit::example_configs::ExampleConfigs;
use fleet::testkit::process::{eventually, http_get};
use toml_edit::value;

async fn config_status(node: &Node) -> serde_json::Value {
    let (_, body) = http_get(&format!("http://{}/status", node.admin))
        .await
        .expect("/status answers");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["config"].clone()
}

#[tokio::test]
async fn changed_egress_settings_are_reported_as_needing_a_restart() {
    let configs = ExampleConfigs::relocated([127, 7, 61]).unwrap();
    configs
        .edit("mta.toml", |doc| {
            doc["delivery"]["egress"]["source_backoff"] = value("30s");
            doc["delivery"]["egress"]["redis_timeout"] = value("500ms");
        })
        .unwrap();
    let node = Node::start(configs).await;
    node.configs
        .edit("mta.toml", |doc| {
            doc["delivery"]["egress"]["source_backoff"] = value("5s");
            doc["delivery"]["egress"]["redis_timeout"] = value("800ms");
            doc["delivery"]["egress"]["redis"] = value("redis://127.7.61.9:6379/");
        })
        .unwrap();
    node.reload();
    eventually(LIMIT, "the reload applied", || async {
        config_status(&node).await["version"] == 1
    })
    .await
    .unwrap();
    let status = config_status(&node).await;
    assert_eq!(
        status["restart_required"],
        serde_json::json!([
            "delivery.egress.redis",
            "delivery.egress.redis_timeout",
            "delivery.egress.source_backoff"
        ]),
        "{status}"
    );
    assert!(status["last_error"].is_null(), "{status}");
    node.stop().await;
}
