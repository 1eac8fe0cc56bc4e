//! The From: corpus: every form below is sent over SMTP (raw client, STARTTLS,
//! AUTH) and over HTTP (raw `content`) to a node running in-process on
//! 127.1.90.11. Valid forms are accepted on both; hostile ones are refused
//! (`550 5.7.1` / 422, or `550 5.6.0` for a control character) with a
//! sentence, and nothing of them is spooled. For every accepted message the
//! DKIM signer's `d=` equals the domain Python's `email.policy.default`
//! reads from the spooled message, and no Return-Path: is left in it.

mod ingress_support;

use std::io::Write;

use ingress_support::*;
use mta::delivery::config::DkimKey;
use serde_json::json;

/// Forms accepted: the header lines (CRLF between them) before To:.
const VALID: &[&str] = &[
    "From: sender@yourdomain.com",
    "From: <sender@yourdomain.com>",
    "From: Sender <sender@yourdomain.com>",
    "From: \"Sender, Big\" <sender@yourdomain.com>",
    "From: \"boss@other.example\" <sender@yourdomain.com>",
    "From: Boss (boss@other.example) <sender@yourdomain.com>",
    "From: sender@yourdomain.com (boss@other.example)",
    "From: =?utf-8?q?boss=40other.example?= <sender@yourdomain.com>",
    "From: =?utf-8?b?Qm9zcw==?= <sender@YourDomain.COM>",
    "FROM: sender@yourdomain.com",
    "from:sender@yourdomain.com",
    "From:\r\n sender@yourdomain.com",
    "From: \"Sender\"\r\n\t<sender@yourdomain.com>",
    "From: John Q. Public <john.q.public@yourdomain.com>",
    "From: \"quoted local\"@yourdomain.com",
    "From: first.last+tag@yourdomain.com",
    "From: a@yourdomain.com, b@yourdomain.com\r\nSender: a@yourdomain.com",
    "From: Sender <sender@yourdomain.com>\r\nSender: ops@yourdomain.com",
    "From: sender@yourdomain.com\r\nResent-From: sender@yourdomain.com",
    "From: Müller <sender@yourdomain.com>",
    "Return-Path: <boss@other.example>\r\nFrom: sender@yourdomain.com",
    "From:    <sender@yourdomain.com>   ",
    "From: (comment) sender@yourdomain.com",
];

/// Forms refused with `550 5.7.1` / 422.
const HOSTILE: &[&str] = &[
    "From: <boss@other.example> sender@yourdomain.com",
    "From: boss@other.example sender@yourdomain.com",
    "From: <boss@other.example@yourdomain.com>",
    "From: boss@other.example: sender@yourdomain.com;",
    "From: undisclosed-recipients:;",
    "From: Team: sender@yourdomain.com;",
    "From:",
    "From: sender@yourdomain.com, boss@other.example",
    "From: sender@yourdomain.com, other@yourdomain.com",
    "From: sender@yourdomain.com\r\nFrom: boss@other.example",
    "From: boss@other.example",
    "F rom: boss@other.example\r\nFrom: sender@yourdomain.com",
    "From : sender@yourdomain.com",
    "From: =?utf-8?q?boss?=@yourdomain.com",
    "From: sender@=?utf-8?q?yourdomain.com?=",
    "From: \"boss@other.example\"@yourdomain.com",
    "From: sender@[127.0.0.1]",
    "From: <sender@yourdomain.com",
    "From: sender@yourdomain.com>",
    "From: Sender <sender@yourdomain.com> boss@other.example",
    "From: <@other.example:sender@yourdomain.com>",
    "From: sender@yourdomain.com (unterminated comment",
    "From: \"unterminated <sender@yourdomain.com>",
    "From: sender@yourdomain.com.",
    "From: sender@other.example\r\nSender: sender@yourdomain.com",
    "From: a@yourdomain.com, b@other.example\r\nSender: a@yourdomain.com",
    "From: sender@yourdomain.com\r\nSender: boss@other.example",
    "From: sender@yourdomain.com\r\nResent-From: boss@other.example",
    "From: sender@yourdomain.com\r\nResent-Sender: boss@other.example",
    "From: a@yourdomain.com, b@yourdomain.com\r\nSender: a@yourdomain.com, b@yourdomain.com",
    "From: sender@yourdomain.com\r\nFrom: sender@yourdomain.com",
    "Reply-To: sender@yourdomain.com",
    "From: sender@yourdomain.com@other.example",
    "From: sender(at)yourdomain.com",
    "From: sender@your domain.com",
    "From: \"Sender\" <sender@yourdomain.com>, ",
    " From: sender@yourdomain.com",
    "From: sender@yourdomain.com\r\nSender: a@yourdomain.com\r\nSender: b@yourdomain.com",
    "From: =?utf-8?q?x?= <=?utf-8?q?boss?=@yourdomain.com>",
    "From: sender@yourdomain.com\r\nResent-From: a@yourdomain.com, boss@other.example",
];

/// Refused with `550 5.6.0` / 422: control characters.
const CONTROL: &[&str] = &[
    "From: sender@yourdomain.com\0boss@other.example",
    "From: sender@yourdomain.com\r\nX-Esc: \x1b[31m",
];

fn message(headers: &str, marker: &str) -> String {
    format!(
        "{headers}\r\nTo: <rcpt@example.com>\r\nSubject: corpus {marker}\r\n\r\nbody {marker}\r\n"
    )
}

async fn over_http(fixture: &Fixture, content: &str) -> (u16, String) {
    let body = json!({
        "envelope_sender": "sender@yourdomain.com",
        "recipients": ["rcpt@example.com"],
        "content": content,
    });
    let response = fixture
        .http()
        .post(fixture.https_url("/api/inject/v1"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// The domain of the first From: address as Python's email package reads
/// each file, one line per file.
fn python_domains(files: &[std::path::PathBuf]) -> Vec<String> {
    let script = "import sys, email, email.policy\n\
        for path in sys.argv[1:]:\n\
        \x20   msg = email.message_from_bytes(open(path, 'rb').read(), policy=email.policy.default)\n\
        \x20   print(msg['From'].addresses[0].domain.lower())\n";
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn from_forms_over_smtp_and_http() {
    assert!(VALID.len() + HOSTILE.len() + CONTROL.len() >= 40);
    let (fixture, node) = Fixture::started(90, "").await;
    let mut raw = Raw::authenticated(&fixture).await;
    let refused = HOSTILE
        .iter()
        .map(|h| (h, "5.7.1"))
        .chain(CONTROL.iter().map(|h| (h, "5.6.0")));
    for (i, (headers, code)) in refused.enumerate() {
        let text = message(headers, &format!("hostile-{i}"));
        let reply = transaction(&mut raw, text.as_bytes()).await;
        assert_eq!(reply.code, 550, "{headers:?} over SMTP: {reply:?}");
        assert!(reply.first().starts_with(code), "{headers:?}: {reply:?}");
        assert!(reply.first().len() > 20, "{headers:?}: no sentence");
        let (status, body) = over_http(&fixture, &text).await;
        assert_eq!(status, 422, "{headers:?} over HTTP: {body}");
    }
    for (i, headers) in VALID.iter().enumerate() {
        let text = message(headers, &format!("valid-{i}"));
        let reply = transaction(&mut raw, text.as_bytes()).await;
        assert_eq!(reply.code, 250, "{headers:?} over SMTP: {reply:?}");
        let (status, body) = over_http(&fixture, &text).await;
        assert_eq!(status, 200, "{headers:?} over HTTP: {body}");
    }
    node.stop().await;
    check_spooled(&fixture).await;
}

/// Only the valid forms are spooled, twice each; d= is what Python reads.
async fn check_spooled(fixture: &Fixture) {
    let spooled = fixture.spooled().await;
    assert_eq!(spooled.len(), 2 * VALID.len());
    let key = fixture.dir.path().join("dkim.pem");
    std::fs::write(&key, include_str!("egress_support/dkim-rsa-test.pem")).unwrap();
    // As the node config writes it (the key's type is the config's business).
    let key: DkimKey = toml::from_str(&format!(
        "domain = \"yourdomain.com\"\nselector = \"s1\"\nkey = \"{}\"\nalgorithm = \"rsa-sha256\"",
        key.display()
    ))
    .unwrap();
    let dkim = mta::dkim::Dkim::load(&[key]).unwrap();
    let mut files = Vec::new();
    let mut signed = Vec::new();
    for (i, stored) in spooled.iter().enumerate() {
        let text = String::from_utf8_lossy(&stored.data);
        assert!(text.contains("Subject: corpus valid-"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("return-path"), "{text}");
        let signature = dkim.sign(&stored.data).expect("signed").unwrap();
        let d = signature
            .split(';')
            .find_map(|tag| tag.trim().strip_prefix("d="))
            .expect("a d= tag")
            .to_string();
        signed.push(d);
        let path = fixture.dir.path().join(format!("m{i}.eml"));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&stored.data)
            .unwrap();
        files.push(path);
    }
    assert_eq!(python_domains(&files), signed);
}
