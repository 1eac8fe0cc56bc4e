//! DKIM: messages leave signed with their From: domain's key (rsa-sha256 or
//! ed25519-sha256) and the signatures verify with mail-auth's verifier
//! against the public keys published in the test's DNS.

mod egress_support;

use base64::Engine as _;
use egress_support::*;
use fleet::testkit::dns::Record;
use fleet::testkit::sink::Behaviour;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use mta::events::EventKind;
use mta::message::NewMessage;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

const RSA_KEY: &str = include_str!("egress_support/dkim-rsa-test.pem");

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn from(domain: &str, marker: &str) -> NewMessage {
    let mut m = message(&["reader@signed.test"], marker);
    let text = String::from_utf8(m.data.to_vec()).unwrap().replace(
        "From: App <app@yourdomain.com>",
        &format!("From: App <app@{domain}>"),
    );
    m.data = text.into();
    m
}

#[tokio::test]
async fn signatures_verify_with_the_published_keys() {
    let net = 18;
    let sink = sink(net, 25, Behaviour::Accept).await;

    let rsa_der = PrivateKeyDer::from_pem_slice(RSA_KEY.as_bytes()).unwrap();
    let rsa_public = RsaKey::<Sha256>::from_key_der(rsa_der)
        .unwrap()
        .public_key();
    let ed_der = Ed25519Key::generate_pkcs8().unwrap();
    let ed_public = Ed25519Key::from_pkcs8_der(&ed_der).unwrap().public_key();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);

    let dns = dns(
        net,
        vec![
            Record::txt(
                "rsa1._domainkey.yourdomain.com",
                &format!("v=DKIM1; k=rsa; p={}", b64(&rsa_public)),
            ),
            Record::txt(
                "ed1._domainkey.news.yourdomain.com",
                &format!("v=DKIM1; k=ed25519; p={}", b64(&ed_public)),
            ),
        ],
    )
    .await;
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("rsa.pem"), RSA_KEY).unwrap();
    std::fs::write(keys.path().join("ed.pem"), pem("PRIVATE KEY", &ed_der)).unwrap();
    let delivery = format!(
        "[delivery.routes]\n\"signed.test\" = \"{mx}:{MX_PORT}\"\n\
         [[delivery.dkim]]\ndomain = \"yourdomain.com\"\nselector = \"rsa1\"\n\
         key = \"{rsa}\"\nalgorithm = \"rsa-sha256\"\n\
         [[delivery.dkim]]\ndomain = \"News.YourDomain.com\"\nselector = \"ed1\"\n\
         key = \"{ed}\"\nalgorithm = \"ed25519-sha256\"\n",
        mx = ip(net, 25),
        rsa = keys.path().join("rsa.pem").display(),
        ed = keys.path().join("ed.pem").display(),
    );
    let mut egress = Egress::start(configs(net, "unlimited", None, &delivery)).await;
    let rsa_id = egress
        .spool
        .accept(from("yourdomain.com", "rsa"))
        .await
        .unwrap();
    let ed_id = egress
        .spool
        .accept(from("news.yourdomain.com", "ed"))
        .await
        .unwrap();
    let unsigned_id = egress
        .spool
        .accept(from("elsewhere.test", "unsigned"))
        .await
        .unwrap();
    for id in [&rsa_id, &ed_id, &unsigned_id] {
        egress.event(id, EventKind::Delivery).await;
    }
    let got = sink.wait_for(3, LIMIT).await.unwrap();

    let mut server = NameServerConfig::udp_and_tcp(dns.addr().ip());
    for connection in &mut server.connections {
        connection.port = dns.addr().port();
    }
    let authenticator = MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], vec![server]),
        ResolverOpts::default(),
    )
    .unwrap();
    for (marker, algorithm) in [("rsa", "a=rsa-sha256"), ("ed", "a=ed25519-sha256")] {
        let received = with_marker(&got, marker).unwrap();
        let signature = received.header("DKIM-Signature").expect("signed");
        assert!(signature.contains(algorithm), "{signature}");
        let parsed = AuthenticatedMessage::parse(&received.data).unwrap();
        let results = authenticator.verify_dkim(&parsed).await;
        assert_eq!(results.len(), 1, "{marker}: {results:?}");
        assert_eq!(
            results[0].result(),
            &DkimResult::Pass,
            "{marker}: {results:?}"
        );
        // A changed body no longer verifies.
        let mut tampered = received.data.clone();
        let at = tampered.len() - 4;
        tampered[at] = b'X';
        let parsed = AuthenticatedMessage::parse(&tampered).unwrap();
        let results = authenticator.verify_dkim(&parsed).await;
        assert_ne!(results[0].result(), &DkimResult::Pass, "{marker}");
    }
    let unsigned = with_marker(&got, "unsigned").unwrap();
    assert!(unsigned.header("DKIM-Signature").is_none());
    egress.stop().await;
}
