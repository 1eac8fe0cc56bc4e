//! DKIM as an independent verifier sees it: a node with an RSA-2048 and an
//! ed25519 key for its domain signs every message twice; Python's dkimpy
//! (Debian `python3-dkim`) verifies both signatures of every file the sink
//! MX stored: an 8-bit body, UTF-8 headers (as SMTPUTF8 mail carries
//! them), a builder message with attachments, and an SMTPUTF8 message
//! (a UTF-8 mailbox) sent and relayed over SMTP. 127.9.30.0/24.

mod ingress_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use fleet::testkit::sink::{Sink, SinkConfig};
use ingress_support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const VERIFY: &str = r#"
import json, sys, dkim
records = json.load(open(sys.argv[1]))
def dns(name, timeout=5):
    key = name.decode() if isinstance(name, bytes) else name
    return records.get(key.rstrip('.'), '').encode()
failed = 0
for path in sys.argv[2:]:
    message = open(path, 'rb').read()
    d = dkim.DKIM(message)
    count = sum(1 for (k, v) in d.headers if k.lower() == b'dkim-signature')
    results = [bool(d.verify(idx=i, dnsfunc=dns)) for i in range(count)]
    algorithms = []
    for (k, v) in d.headers:
        if k.lower() == b'dkim-signature':
            tags = dict(t.strip().split(b'=', 1) for t in v.split(b';') if b'=' in t)
            algorithms.append(tags[b'a'].decode())
    print(json.dumps({"file": path, "algorithms": algorithms, "results": results}))
    if count < 2 or not all(results):
        failed += 1
sys.exit(1 if failed else 0)
"#;

/// PEM files for the node and the DNS records dkimpy reads.
fn keys(dir: &Path) -> Value {
    use openssl::pkey::PKey;
    let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    std::fs::write(dir.join("rsa.pem"), rsa.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let ed = PKey::generate_ed25519().unwrap();
    std::fs::write(dir.join("ed.pem"), ed.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(b);
    json!({
        "rsa._domainkey.yourdomain.com":
            format!("v=DKIM1; k=rsa; p={}", b64(rsa.public_key_to_der().unwrap())),
        "ed._domainkey.yourdomain.com":
            format!("v=DKIM1; k=ed25519; p={}", b64(ed.raw_public_key().unwrap())),
    })
}

/// DATA with `data` (CRLF lines) and its end, after MAIL and RCPT.
async fn transaction_data(smtp: &mut Raw, data: &[u8]) -> Reply {
    assert_eq!(smtp.cmd("DATA").await.code, 354);
    smtp.send(data).await;
    smtp.send(b".\r\n").await;
    smtp.reply().await
}

async fn post(fixture: &Fixture, body: &Value) {
    let (status, answer) = fixture.inject(body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["fail_count"], 0, "{answer}");
}

#[tokio::test]
async fn dkimpy_verifies_both_signatures_of_every_message() {
    let maildir = tempfile::tempdir().unwrap();
    let sink_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 9, 30, 25)), 2525);
    let mut config = SinkConfig::accept(sink_addr);
    config.maildir = Some(maildir.path().to_path_buf());
    let sink = Sink::start(config).await.unwrap();
    let keydir = tempfile::tempdir().unwrap();
    let records = keys(keydir.path());
    let mut delivery = Fixture::delivery_to_sink([127, 9, 30], sink_addr);
    for (selector, algorithm) in [("rsa", "rsa-sha256"), ("ed", "ed25519-sha256")] {
        let key = keydir.path().join(format!("{selector}.pem"));
        delivery.push_str(&format!(
            "\n[[delivery.dkim]]\ndomain = \"yourdomain.com\"\nselector = \"{selector}\"\n\
             key = \"{}\"\nalgorithm = \"{algorithm}\"\n",
            key.display()
        ));
    }
    let fixture = Fixture::at([127, 9, 30], "", &delivery);
    let node = fixture.start().await;

    let raw = |content: &str, to: &str| json!({"envelope_sender": "news@yourdomain.com", "recipients": [to], "content": content});
    post(&fixture, &raw(
        "From: News <news@yourdomain.com>\nTo: a@example.com\nSubject: 8bit\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
         Grüße aus Köln, café ☕\n\n  trailing   spaces   \n\n\n",
        "eightbit@example.com",
    ))
    .await;
    post(&fixture, &raw(
        "From: Jörg Müller <news@yourdomain.com>\nTo: Zoë <utf8@example.com>\nSubject: Grüße ☕ {{ email }}\n\
         MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nHallo ✓\n",
        "utf8@example.com",
    ))
    .await;
    post(&fixture, &json!({
        "envelope_sender": "news@yourdomain.com",
        "recipients": [{"email": "attachments@example.com", "name": "Änne"}],
        "content": {
            "from": {"email": "news@yourdomain.com", "name": "Nëws"},
            "subject": "Attachments for {{ name }}",
            "text_body": "See the attachments.",
            "html_body": "<p>See <img src=\"cid:logo\"></p>",
            "attachments": [
                {"data": base64::engine::general_purpose::STANDARD.encode((0..=255u8).cycle().take(50_000).collect::<Vec<u8>>()),
                 "base64": true, "content_type": "application/octet-stream", "file_name": "data.bin"},
                {"data": "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7", "base64": true,
                 "content_type": "image/gif", "content_id": "logo", "file_name": "logo.gif"},
                {"data": "ligne 1\nligne 2 é\n", "content_type": "text/plain", "file_name": "notes.txt"}
            ]
        }
    }))
    .await;
    // Over SMTP with SMTPUTF8: a UTF-8 mailbox in the envelope and the
    // headers, an 8-bit body; relayed to the sink with SMTPUTF8.
    let mut smtp = Raw::authenticated(&fixture).await;
    let reply = smtp.cmd("MAIL FROM:<news@yourdomain.com> SMTPUTF8").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let reply = smtp.cmd("RCPT TO:<zoë@example.com>").await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let data = "From: Jörg <news@yourdomain.com>\r\nTo: Zoë <zoë@example.com>\r\n\
                Subject: SMTPUTF8 ✓\r\nMIME-Version: 1.0\r\n\
                Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                Grüße an zoë@example.com ☕\r\n";
    let reply = transaction_data(&mut smtp, data.as_bytes()).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(smtp.cmd("QUIT").await.code, 221);

    let got = sink.wait_for(4, Duration::from_secs(30)).await.unwrap();
    assert!(
        got.iter()
            .any(|m| m.rcpt_to == ["zoë@example.com"] && m.text().contains("Grüße an zoë")),
        "the SMTPUTF8 message did not reach the sink as sent"
    );
    node.stop().await;
    let files: Vec<String> = got
        .iter()
        .map(|m| {
            m.file
                .as_ref()
                .expect("the sink stores a file")
                .display()
                .to_string()
        })
        .collect();
    let records_file = keydir.path().join("records.json");
    std::fs::write(&records_file, records.to_string()).unwrap();
    let output = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(VERIFY)
        .arg(&records_file)
        .args(&files)
        .output()
        .expect("python3 with dkimpy (Debian python3-dkim) runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "dkimpy: {stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    for line in stdout.lines() {
        let result: Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            result["algorithms"],
            json!(["rsa-sha256", "ed25519-sha256"]),
            "{line}"
        );
        assert_eq!(result["results"], json!([true, true]), "{line}");
    }
}
