//! HTTP injection against a node running in-process, with reqwest over
//! TLS trusting the test CA. Each test has its own address, 127.1.<n>.11.

mod ingress_support;

use ingress_support::*;
use mail_parser::MimeHeaders;
use reqwest::StatusCode;
use serde_json::{json, Value};

const INJECT: &str = "/api/inject/v1";

async fn post(fixture: &Fixture, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
    post_as(fixture, Some((USER, PASSWORD)), body).await
}

async fn post_as(
    fixture: &Fixture,
    credentials: Option<(&str, &str)>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut request = fixture
        .http()
        .post(fixture.https_url(INJECT))
        .header("content-type", "application/json")
        .body(body);
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn error_of(value: &Value) -> &str {
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {value}"))
}

#[tokio::test]
async fn the_seed_example_gets_200_and_is_spooled() {
    let (fixture, node) = Fixture::started(40, "").await;
    let (status, body) = post(&fixture, seed_example().to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"success_count": 1, "fail_count": 0, "failed_recipients": [], "errors": []})
    );
    node.stop().await;
    let messages = fixture.spooled().await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.sender, "bounces@yourdomain.com");
    assert_eq!(message.recipients, ["user@example.com"]);
    assert_eq!(message.via, mta::message::Protocol::Http);
    let text = String::from_utf8_lossy(&message.data);
    assert!(text.starts_with("Received: from ["), "{text}");
    assert!(text.contains("with HTTPS"));
    let parsed = mail_parser::MessageParser::new()
        .parse(&message.data[..])
        .unwrap();
    assert_eq!(parsed.subject(), Some("Hello"));
    assert_eq!(
        parsed.from().unwrap().first().unwrap().address(),
        Some("sender@yourdomain.com")
    );
    assert_eq!(parsed.body_text(0).unwrap().trim_end(), "Hello from unMTA");
    assert!(parsed.message_id().is_some() && parsed.date().is_some());
}

#[tokio::test]
async fn builder_with_everything_and_per_recipient_substitutions() {
    let (fixture, node) = Fixture::started(41, "").await;
    let request = json!({
        "envelope_sender": "bounces@yourdomain.com",
        "recipients": [
            "a@example.com",
            {"email": "b@example.com", "name": "Bee"},
            {"email": "c@example.com", "substitutions": {"name": "Cee", "n": 3}},
            "not-an-address"
        ],
        "substitutions": {"name": "everyone", "n": 1},
        "content": {
            "from": {"email": "sender@yourdomain.com", "name": "The Sender"},
            "reply_to": "help@yourdomain.com",
            "subject": "Hi {{ name }} #{{n}}",
            "text_body": "Dear {{name}}",
            "html_body": "<p>Dear {{name}}</p><img src=\"cid:logo\">",
            "headers": {"X-Campaign": "c-{{n}}", "List-Unsubscribe": "<mailto:u@yourdomain.com>"},
            "attachments": [
                {"data": "aGVsbG8gd29ybGQ=", "base64": true, "content_type": "application/octet-stream", "file_name": "hello.bin"},
                {"data": "PNG!", "content_type": "image/png", "content_id": "logo"}
            ]
        }
    });
    let (status, body) = post(&fixture, request.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success_count"], 3);
    assert_eq!(body["fail_count"], 1);
    assert_eq!(body["failed_recipients"], json!(["not-an-address"]));
    node.stop().await;

    // One message per recipient (each has its own To:), rendered with the
    // global values, then the recipient's, then its name.
    let mut messages = fixture.spooled().await;
    messages.sort_by(|a, b| a.recipients.cmp(&b.recipients));
    assert_eq!(messages.len(), 3);
    let parse = |i: usize| {
        mail_parser::MessageParser::new()
            .parse(&messages[i].data[..])
            .unwrap()
    };
    let (a, b, own) = (parse(0), parse(1), parse(2));
    assert_eq!(messages[2].recipients, ["c@example.com"]);
    assert_eq!(own.subject(), Some("Hi Cee #3"));
    assert_eq!(a.subject(), Some("Hi everyone #1"));
    assert_eq!(b.subject(), Some("Hi Bee #1"));
    assert_eq!(
        b.to().unwrap().first().unwrap().name(),
        Some("Bee"),
        "To: has the recipient's name"
    );
    assert_eq!(own.body_text(0).unwrap().trim_end(), "Dear Cee");
    assert_eq!(own.header_raw("X-Campaign").map(str::trim), Some("c-3"));
    assert_eq!(
        own.reply_to().unwrap().first().unwrap().address(),
        Some("help@yourdomain.com")
    );
    assert_eq!(
        own.from().unwrap().first().unwrap().name(),
        Some("The Sender")
    );
    assert!(own.body_html(0).unwrap().contains("Dear Cee"));
    let attachment = own
        .attachments()
        .find(|a| a.attachment_name() == Some("hello.bin"))
        .unwrap();
    assert_eq!(attachment.contents(), b"hello world");
    assert_eq!(attachment.attachment_name(), Some("hello.bin"));
}

#[tokio::test]
async fn malformed_json_gets_400() {
    let (fixture, node) = Fixture::started(42, "").await;
    for body in ["{", "not json", "[]", "{\"envelope_sender\": 5}"] {
        let (status, value) = post(&fixture, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {value}");
        assert!(!error_of(&value).is_empty());
    }
    let (_, value) = post(&fixture, "{\"envelope_sender\": 5}").await;
    assert!(error_of(&value).starts_with("envelope_sender:"), "{value}");
    node.stop().await;
}

#[tokio::test]
async fn missing_and_unknown_fields_get_400_naming_them() {
    let (fixture, node) = Fixture::started(43, "").await;
    let cases = [
        (
            json!({"envelope_sender": "b@yourdomain.com", "content": "x"}),
            "recipients",
        ),
        (
            json!({"recipients": ["a@example.com"], "content": "x"}),
            "envelope_sender",
        ),
        (
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"]}),
            "content",
        ),
        (
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"],
                   "content": {"subject": "s", "text_body": "t"}}),
            "from",
        ),
        (
            json!({"envelope_sender": "b@yourdomain.com", "recipients": [{"name": "x"}], "content": "x"}),
            "email",
        ),
        (
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"],
                   "content": {"from": "s@yourdomain.com", "text_bdy": "t"}}),
            "text_bdy",
        ),
        (
            json!({"envelope_sender": "b@yourdomain.com", "recipients": [], "content": "x"}),
            "recipients",
        ),
        (
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"],
                   "content": {"from": "s@yourdomain.com"}}),
            "text_body",
        ),
    ];
    for (request, field) in cases {
        let (status, value) = post(&fixture, request.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {value}");
        assert!(error_of(&value).contains(field), "{field} named in {value}");
    }
    fixture.stop_with_nothing_spooled(node).await;
}

#[tokio::test]
async fn crlf_can_never_add_a_header() {
    let (fixture, node) = Fixture::started(44, "").await;
    let mut request = seed_example();
    request["content"]["subject"] = json!("Hello\r\nBcc: victim@example.com");
    let (status, value) = post(&fixture, request.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    assert!(error_of(&value).starts_with("content.subject:"), "{value}");

    for (field, value) in [
        ("headers", json!({"X-Tag": "a\nBcc: victim@example.com"})),
        ("headers", json!({"X-Tag\r\nBcc": "x"})),
        (
            "from",
            json!({"email": "sender@yourdomain.com", "name": "A\r\nBcc: v@example.com"}),
        ),
    ] {
        let mut request = seed_example();
        request["content"][field] = value;
        let (status, body) = post(&fixture, request.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert!(
            error_of(&body).starts_with(&format!("content.{field}")),
            "{body}"
        );
    }

    // Through a substitution: that recipient fails, the other gets mail.
    let request = json!({
        "envelope_sender": "bounces@yourdomain.com",
        "recipients": [
            "ok@example.com",
            {"email": "evil@example.com", "substitutions": {"s": "x\r\nBcc: victim@example.com"}}
        ],
        "substitutions": {"s": "fine"},
        "content": {"from": "sender@yourdomain.com", "subject": "Hi {{s}}", "text_body": "b {{s}}"}
    });
    let (status, body) = post(&fixture, request.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success_count"], 1);
    assert_eq!(body["failed_recipients"], json!(["evil@example.com"]));

    // And into the header section of an RFC 5322 string.
    let request = json!({
        "envelope_sender": "bounces@yourdomain.com",
        "recipients": [{"email": "evil@example.com", "substitutions": {"s": "x\nBcc: victim@example.com"}}],
        "content": "From: sender@yourdomain.com\nSubject: {{s}}\n\nbody\n"
    });
    let (status, body) = post(&fixture, request.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fail_count"], 1);
    node.stop().await;
    let messages = fixture.spooled().await;
    assert_eq!(messages.len(), 1);
    assert!(!String::from_utf8_lossy(&messages[0].data).contains("victim"));
}

#[tokio::test]
async fn a_twenty_megabyte_body_gets_413() {
    let (fixture, node) = Fixture::started(45, "").await;
    let mut request = seed_example();
    request["content"]["text_body"] = json!("x".repeat(20 * 1024 * 1024));
    let (status, value) = post(&fixture, request.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    // A body within the JSON limit whose message is over 10 MB.
    let mut request = seed_example();
    request["content"]["text_body"] = json!("y".repeat(11 * 1024 * 1024));
    let (status, value) = post(&fixture, request.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    // The listener is still fine.
    let (status, _) = post(&fixture, seed_example().to_string()).await;
    assert_eq!(status, StatusCode::OK);
    node.stop().await;
    assert_eq!(fixture.spooled().await.len(), 1);
}

#[tokio::test]
async fn bad_credentials_get_401_with_www_authenticate() {
    let (fixture, node) = Fixture::started(46, "").await;
    for credentials in [
        None,
        Some((USER, "wrong")),
        Some(("nobody", PASSWORD)),
        Some((OTHER_USER, OTHER_PASSWORD)),
    ] {
        let mut request = fixture
            .http()
            .post(fixture.https_url(INJECT))
            .body(seed_example().to_string());
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{credentials:?}"
        );
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
    }
    fixture.stop_with_nothing_spooled(node).await;
}

#[tokio::test]
async fn domain_rules_get_422() {
    let (fixture, node) = Fixture::started(47, "").await;
    let mut sender = seed_example();
    sender["envelope_sender"] = json!("bounces@evil.example");
    let mut from = seed_example();
    from["content"]["from"] = json!("ceo@news.yourdomain.com");
    let raw_no_from = json!({
        "envelope_sender": "bounces@yourdomain.com",
        "recipients": ["a@example.com"],
        "content": "Subject: no from\n\nbody\n"
    });
    let raw_evil_from = json!({
        "envelope_sender": "bounces@yourdomain.com",
        "recipients": ["a@example.com"],
        "content": "From: ceo@evil.example\nSubject: x\n\nbody\n"
    });
    for request in [sender, from, raw_no_from, raw_evil_from] {
        let (status, value) = post(&fixture, request.to_string()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{request}: {value}"
        );
    }
    let raw_ok = json!({
        "envelope_sender": "bounces@yourdomain.com",
        "recipients": ["a@example.com"],
        "content": "From: sender@yourdomain.com\nSubject: raw\n\nbody\n"
    });
    let (status, value) = post(&fixture, raw_ok.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    node.stop().await;
    let messages = fixture.spooled().await;
    assert_eq!(messages.len(), 1);
    let text = String::from_utf8_lossy(&messages[0].data);
    assert!(
        text.contains("Subject: raw\r\n") && text.contains("Message-ID: <"),
        "{text}"
    );
}

#[tokio::test]
async fn live_and_ready_on_the_https_listener() {
    let (fixture, node) = Fixture::started(48, "").await;
    let client = fixture.http();
    let live = client.get(fixture.https_url("/live")).send().await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let ready = client
        .get(fixture.https_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    node.stop().await;
}

#[tokio::test]
async fn an_unwritable_spool_gives_503_ready_503_and_smtp_451() {
    // A read-only bind mount: in a mount namespace of its own.
    fleet::in_own_namespace!();
    let (fixture, node) = Fixture::started(49, "").await;
    let (status, _) = post(&fixture, seed_example().to_string()).await;
    assert_eq!(status, StatusCode::OK);

    let guard = ReadOnly::new(&fixture.spool_dir());
    let client = fixture.http();
    let ready_url = fixture.https_url("/ready");
    fleet::testkit::process::eventually(LIMIT, "/ready turns 503", || {
        let client = client.clone();
        let url = ready_url.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            response.status() == StatusCode::SERVICE_UNAVAILABLE
                && response.text().await.unwrap().contains("spool")
        }
    })
    .await
    .unwrap();
    let (status, value) = post(&fixture, seed_example().to_string()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");

    let mut raw = Raw::authenticated(&fixture).await;
    assert_eq!(raw.cmd("MAIL FROM:<sender@yourdomain.com>").await.code, 250);
    assert_eq!(raw.cmd("RCPT TO:<rcpt@example.com>").await.code, 250);
    let reply = raw.cmd("DATA").await;
    assert_eq!(
        (reply.code, &reply.first()[..5]),
        (451, "4.3.0"),
        "{reply:?}"
    );

    // Writable again: ready again, and mail is taken.
    drop(guard);
    fleet::testkit::process::eventually(LIMIT, "/ready turns 200", || {
        let client = client.clone();
        let url = ready_url.clone();
        async move { client.get(url).send().await.unwrap().status() == StatusCode::OK }
    })
    .await
    .unwrap();
    let reply = transaction(&mut raw, message("after").as_bytes()).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    node.stop().await;
    assert_eq!(fixture.spooled().await.len(), 2);
}

/// Makes a folder unwritable even for root: a read-only bind mount over
/// it (new files fail with EROFS), undone when dropped.
struct ReadOnly {
    dir: std::path::PathBuf,
}

impl ReadOnly {
    fn new(dir: &std::path::Path) -> ReadOnly {
        let path = dir.to_str().expect("a UTF-8 path");
        for args in [
            &["--bind", path, path][..],
            &["-o", "remount,bind,ro", path],
        ] {
            let status = (std::process::Command::new("mount").args(args).status())
                .expect("`mount` runs (Debian package mount)");
            assert!(status.success(), "mount {args:?}: {status}");
        }
        ReadOnly {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}
