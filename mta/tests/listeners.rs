//! The node listens on every address lb-dns may hand out for it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use fleet::testkit::example_configs::ExampleConfigs;
use toml_edit::value;

#[tokio::test]
async fn listens_on_the_nodes_ipv4_and_ipv6_addresses() {
    let configs = ExampleConfigs::relocated([127, 1, 90]).unwrap();
    configs
        .edit("fleet.toml", |doc| {
            doc["clusters"][0]["mtas"][0]["ipv6"] = value("::1");
        })
        .unwrap();
    let settings = mta::Settings::load(&configs.path("mta.toml")).unwrap();
    let listeners = mta::Listeners::bind(&settings).await.unwrap();

    let bound = |listeners: &[tokio::net::TcpListener]| -> Vec<SocketAddr> {
        listeners.iter().map(|l| l.local_addr().unwrap()).collect()
    };
    let v4: IpAddr = "127.1.90.11".parse().unwrap();
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut expected_smtp = Vec::new();
    for ip in [v4, v6] {
        for port in [10587, 10025, 12587] {
            expected_smtp.push(SocketAddr::new(ip, port));
        }
    }
    assert_eq!(bound(&listeners.smtp), expected_smtp);
    assert_eq!(
        bound(&listeners.https),
        vec![SocketAddr::new(v4, 10443), SocketAddr::new(v6, 10443)]
    );
}
