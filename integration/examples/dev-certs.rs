//! Regenerates the example certificates in `configs/tls/`:
//! `cargo run -p integration --example dev-certs -- configs/tls`.
//! For local use only: the keys, the CA's too, are public.

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "configs/tls".to_string());
    let ca = fleet::testkit::pki::LocalCa::new(fleet::testkit::pki::EXAMPLE_CA)?;
    ca.write_bundle(
        std::path::Path::new(&dir),
        "cluster",
        &[
            "c-a1b2c3d4.unmta.net",
            "c-e5f6a7b8.unmta.net",
            "localhost",
            "127.0.0.11",
            "127.0.0.12",
            "127.0.0.13",
            "127.0.0.21",
        ],
    )?;
    // Public on purpose: tests issue their own leaves from this CA
    // (`ExampleConfigs::relocated`), so none depends on the committed
    // leaf's expiry.
    std::fs::write(std::path::Path::new(&dir).join("ca-key.pem"), ca.key_pem())?;
    println!("wrote {dir}/ca.pem, ca-key.pem, cluster.pem and cluster-key.pem");
    Ok(())
}
