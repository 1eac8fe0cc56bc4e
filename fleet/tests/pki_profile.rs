//! The local CA's certificates follow the RFC 5280 profile strict clients
//! enforce, judged by openssl itself: `openssl verify -x509_strict` accepts
//! the chain, and `openssl x509 -text` shows every extension the profile
//! asks for, critical where it must be.

use std::path::Path;
use std::process::Command;

use fleet::certificate::CertificateInfo;
use fleet::testkit::pki::{openssl_verify_strict, LocalCa, MAX_LEAF_VALIDITY};

/// `openssl x509 -text` of a PEM file, with the lines joined by spaces.
fn text(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

fn assert_has(text: &str, wanted: &[&str]) {
    for want in wanted {
        assert!(text.contains(want), "no `{want}` in: {text}");
    }
}

#[test]
fn openssl_x509_strict_accepts_the_chain_and_sees_the_whole_profile() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("profile test CA").unwrap();
    ca.write_bundle(dir.path(), "leaf", &["c-a1b2c3d4.unmta.net", "127.9.0.11"])
        .unwrap();
    let (ca_pem, leaf_pem) = (dir.path().join("ca.pem"), dir.path().join("leaf.pem"));
    openssl_verify_strict(&ca_pem, &leaf_pem).unwrap();

    let ca_text = text(&ca_pem);
    assert_has(
        &ca_text,
        &[
            "X509v3 Basic Constraints: critical CA:TRUE",
            "X509v3 Key Usage: critical Certificate Sign, CRL Sign",
            "X509v3 Subject Key Identifier:",
        ],
    );
    let leaf_text = text(&leaf_pem);
    assert_has(
        &leaf_text,
        &[
            "X509v3 Basic Constraints: critical CA:FALSE",
            "X509v3 Key Usage: critical Digital Signature",
            "X509v3 Extended Key Usage: TLS Web Server Authentication",
            "X509v3 Subject Key Identifier:",
            "X509v3 Authority Key Identifier:",
            "DNS:c-a1b2c3d4.unmta.net, IP Address:127.9.0.11",
        ],
    );
    // The leaf's Authority Key Identifier is the CA's Subject Key Identifier.
    let ski = |t: &str| {
        let at = t.find("Subject Key Identifier: ").unwrap() + 24;
        t[at..].split(' ').next().unwrap().to_string()
    };
    assert!(leaf_text.contains(&format!("Authority Key Identifier: {}", ski(&ca_text))));

    let leaf = CertificateInfo::from_pem_file(&leaf_pem).unwrap();
    assert!(leaf.lifetime() <= MAX_LEAF_VALIDITY, "{leaf:?}");
    let now = fleet::certificate::now();
    assert!(leaf.not_before <= now && leaf.not_after > now + 390 * 86_400);
}

#[test]
fn openssl_reads_the_same_serial_and_expiry_as_the_status_page() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new("serial test CA").unwrap();
    let issued = ca
        // An hour short of 5 days: 4 whole days left.
        .issue_valid_for(
            &["localhost"],
            std::time::Duration::from_secs(5 * 86_400 - 3600),
        )
        .unwrap();
    let path = dir.path().join("leaf.pem");
    std::fs::write(&path, &issued.cert_pem).unwrap();
    let out = Command::new("openssl")
        .args([
            "x509", "-noout", "-serial", "-enddate", "-dateopt", "iso_8601", "-in",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8(out.stdout).unwrap();
    let info = CertificateInfo::from_pem_file(&path).unwrap();
    let status = info.status(fleet::certificate::now());
    assert!(
        said.contains(&format!("serial={}", info.serial.to_uppercase())),
        "{said} / {info:?}"
    );
    // openssl: `notAfter=2026-12-04 10:00:00Z`; ours: `2026-12-04T10:00:00Z`.
    assert!(
        said.contains(&format!("notAfter={}", status.not_after.replace('T', " "))),
        "{said} / {status:?}"
    );
    assert_eq!((status.days_left, status.expires_soon), (4, true));
}

#[test]
fn a_leaf_longer_than_398_days_is_refused_and_openssl_refuses_another_cas_leaf() {
    let ca = LocalCa::new("limit test CA").unwrap();
    let too_long = std::time::Duration::from_secs(398 * 86_400);
    assert!(ca.issue_valid_for(&["localhost"], too_long).is_err());

    let dir = tempfile::tempdir().unwrap();
    ca.write_bundle(dir.path(), "leaf", &["localhost"]).unwrap();
    let other = LocalCa::new("other CA").unwrap();
    let foreign = other.issue(&["localhost"]).unwrap();
    std::fs::write(dir.path().join("foreign.pem"), foreign.cert_pem).unwrap();
    let refused =
        openssl_verify_strict(&dir.path().join("ca.pem"), &dir.path().join("foreign.pem"));
    assert!(refused.is_err(), "openssl accepted a leaf of another CA");
}

#[test]
fn a_relocated_copy_of_the_configs_gets_a_fresh_leaf_the_committed_ca_verifies() {
    let configs = fleet::testkit::example_configs::ExampleConfigs::relocated([127, 9, 50]).unwrap();
    let committed = fleet::testkit::example_configs::repo_configs().join("tls");
    openssl_verify_strict(&committed.join("ca.pem"), &committed.join("cluster.pem")).unwrap();
    let leaf = configs.path("tls/cluster.pem");
    openssl_verify_strict(&committed.join("ca.pem"), &leaf).unwrap();
    assert_has(
        &text(&leaf),
        &["IP Address:127.9.50.11", "DNS:c-a1b2c3d4.unmta.net"],
    );
    let fresh = CertificateInfo::from_pem_file(&leaf).unwrap();
    assert!(fresh.seconds_left(fleet::certificate::now()) > 390 * 86_400);
}
