//! Every example of KumoMTA's `POST /api/inject/v1` reference (request,
//! recipients, content builder, attachments, templating, dialects), with
//! our own data, sent through the endpoint of a node running in-process,
//! delivered to a sink MX on loopback and parsed back with mail-parser part
//! by part. Each test has its own 127.9.<n>.0/24.

mod ingress_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fleet::testkit::sink::{Received, Sink, SinkConfig};
use ingress_support::*;
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SINK_PORT: u16 = 2525;

/// A node on 127.9.`n`.11 delivering example.com to a sink on 127.9.`n`.25.
async fn node(n: u8) -> (Fixture, Running, Sink) {
    let sink_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 9, n, 25)), SINK_PORT);
    let sink = Sink::start(SinkConfig::accept(sink_addr)).await.unwrap();
    let delivery = Fixture::delivery_to_sink([127, 9, n], sink_addr);
    let fixture = Fixture::at([127, 9, n], "", &delivery);
    let running = fixture.start().await;
    (fixture, running, sink)
}

/// Posts `request`, expects every recipient accepted, and returns the
/// `count` messages the sink then receives.
async fn send(fixture: &Fixture, sink: &Sink, request: Value, count: usize) -> Vec<Received> {
    let before = sink.messages().len();
    let (status, body) = fixture.inject(&request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fail_count"], 0, "{body}");
    let all = sink
        .wait_for(before + count, Duration::from_secs(30))
        .await
        .unwrap();
    all[before..].to_vec()
}

fn parse(received: &Received) -> Message<'_> {
    MessageParser::new().parse(&received.data[..]).unwrap()
}

fn content_type(part: &mail_parser::MessagePart<'_>) -> String {
    let ct = part.content_type().unwrap();
    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
}

#[tokio::test]
async fn the_basic_example_and_its_response() {
    let (fixture, node, sink) = node(10).await;
    // The page's first example, with the From: our rules require.
    let request = json!({
        "envelope_sender": "noreply@yourdomain.com",
        "content": "From: noreply@yourdomain.com\nSubject: hello\n\nHello there",
        "recipients": [{"email": "recipient@example.com"}]
    });
    let (status, body) = fixture.inject(&request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"success_count": 1, "fail_count": 0, "failed_recipients": [], "errors": []})
    );
    let got = sink.wait_for(1, Duration::from_secs(30)).await.unwrap();
    let message = parse(&got[0]);
    // The return path is the cluster's VERP address for bounces.
    assert!(got[0].mail_from.ends_with(HOSTNAME), "{}", got[0].mail_from);
    assert_eq!(got[0].rcpt_to, ["recipient@example.com"]);
    assert_eq!(message.subject(), Some("hello"));
    assert_eq!(message.body_text(0).unwrap().trim_end(), "Hello there");
    // Line endings normalised to CRLF: no bare LF anywhere.
    let raw = &got[0].data;
    assert!(!raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
    node.stop().await;
}

#[tokio::test]
async fn the_content_builder_example_part_by_part() {
    let (fixture, node, sink) = node(11).await;
    let gif = "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7";
    let request = json!({
        "envelope_sender": "noreply@yourdomain.com",
        "content": {
            "text_body": "This is the plain text part",
            "html_body": "<p>This is the <b>HTML</b> part</p><img src=\"cid:my-image\">",
            "amp_html_body": "<!doctype html><html ⚡4email><body>AMP</body></html>",
            "attachments": [
                {"data": gif, "base64": true, "content_type": "image/gif",
                 "content_id": "my-image", "file_name": "pixel.gif"},
                {"data": "a,b\n1,2\n", "content_type": "text/csv", "file_name": "report.csv"},
                {"data": "caf\u{e9}", "base64": false, "content_type": "text/plain; charset=utf-8", "file_name": "note.txt"}
            ],
            "headers": {"X-Something": "Some value", "X-Campaign": "c-{{ campaign }}"},
            "from": {"email": "someone@yourdomain.com", "name": "Some One"},
            "subject": "This is the subject",
            "reply_to": {"email": "help@yourdomain.com", "name": "Help Desk"}
        },
        "substitutions": {"campaign": 7},
        "recipients": [{"email": "recipient@example.com", "name": "John Smith"}]
    });
    let got = send(&fixture, &sink, request, 1).await;
    let m = parse(&got[0]);
    assert_eq!(m.subject(), Some("This is the subject"));
    let from = m.from().unwrap().first().unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("Some One"), Some("someone@yourdomain.com"))
    );
    let to = m.to().unwrap().first().unwrap();
    assert_eq!(
        (to.name(), to.address()),
        (Some("John Smith"), Some("recipient@example.com"))
    );
    let reply = m.reply_to().unwrap().first().unwrap();
    assert_eq!(
        (reply.name(), reply.address()),
        (Some("Help Desk"), Some("help@yourdomain.com"))
    );
    assert!(
        m.message_id().unwrap().ends_with("@yourdomain.com"),
        "{:?}",
        m.message_id()
    );
    assert!(m.date().is_some());
    assert_eq!(m.header_raw("MIME-Version").map(str::trim), Some("1.0"));
    assert_eq!(
        m.header_raw("X-Something").map(str::trim),
        Some("Some value")
    );
    assert_eq!(m.header_raw("X-Campaign").map(str::trim), Some("c-7"));

    // mixed [ alternative [ text, amp, related [ html, gif ] ], csv, txt ]
    let root = &m.parts[0];
    assert_eq!(content_type(root), "multipart/mixed");
    let PartType::Multipart(children) = &root.body else {
        panic!("mixed")
    };
    assert_eq!(children.len(), 3);
    let alternative = &m.parts[children[0] as usize];
    assert_eq!(content_type(alternative), "multipart/alternative");
    let PartType::Multipart(alts) = &alternative.body else {
        panic!("alternative")
    };
    let kinds: Vec<String> = alts
        .iter()
        .map(|i| content_type(&m.parts[*i as usize]))
        .collect();
    assert_eq!(
        kinds,
        ["text/plain", "text/x-amp-html", "multipart/related"]
    );
    assert_eq!(
        m.parts[alts[0] as usize].text_contents(),
        Some("This is the plain text part")
    );
    assert!(m.parts[alts[1] as usize]
        .text_contents()
        .unwrap()
        .contains("⚡4email"));
    let PartType::Multipart(related) = &m.parts[alts[2] as usize].body else {
        panic!("related")
    };
    let html = &m.parts[related[0] as usize];
    assert_eq!(content_type(html), "text/html");
    assert!(html.text_contents().unwrap().contains("<b>HTML</b>"));
    let image = &m.parts[related[1] as usize];
    assert_eq!(content_type(image), "image/gif");
    assert_eq!(image.content_id(), Some("my-image"));
    assert_eq!(image.attachment_name(), Some("pixel.gif"));
    assert_eq!(image.content_disposition().unwrap().ctype(), "inline");
    use base64::Engine;
    assert_eq!(
        image.contents(),
        base64::engine::general_purpose::STANDARD
            .decode(gif)
            .unwrap()
    );
    let csv = &m.parts[children[1] as usize];
    assert_eq!(content_type(csv), "text/csv");
    assert_eq!(csv.attachment_name(), Some("report.csv"));
    assert_eq!(csv.content_disposition().unwrap().ctype(), "attachment");
    assert_eq!(
        csv.content_type().unwrap().attribute("charset"),
        Some("utf-8")
    );
    let txt = &m.parts[children[2] as usize];
    assert_eq!(
        txt.content_type().unwrap().attribute("charset"),
        Some("utf-8")
    );
    assert_eq!(txt.text_contents(), Some("café"));
    node.stop().await;
}

#[tokio::test]
async fn recipients_substitutions_and_dialects() {
    let (fixture, node, sink) = node(12).await;
    let request = json!({
        "envelope_sender": "noreply@yourdomain.com",
        "content": {
            "from": "news@yourdomain.com",
            "subject": "Hello {{ name }}, {{ greeting }}",
            "text_body": "{{ greeting }} {{ name }} <{{ email }}>{% for item in items %} [{{ item.sku }}]{% endfor %}",
            "html_body": "<p>{{ greeting }} {{ name }}</p>",
            "headers": {"X-Who": "{{ to_header }}"}
        },
        "substitutions": {"greeting": "Hi", "name": "friend", "items": []},
        "recipients": [
            {"email": "ann@example.com", "name": "Ann <A&B>",
             "substitutions": {"greeting": "Welcome", "items": [{"sku": "X1"}, {"sku": "Y2"}]}},
            {"email": "bob@example.com"}
        ]
    });
    let mut got = send(&fixture, &sink, request, 2).await;
    got.sort_by(|a, b| a.rcpt_to.cmp(&b.rcpt_to));
    let ann = parse(&got[0]);
    assert_eq!(ann.subject(), Some("Hello Ann <A&B>, Welcome"));
    assert_eq!(
        ann.body_text(0).unwrap().trim_end(),
        "Welcome Ann <A&B> <ann@example.com> [X1] [Y2]"
    );
    // HTML bodies escape what they print.
    assert!(ann
        .body_html(0)
        .unwrap()
        .contains("Welcome Ann &lt;A&amp;B&gt;"));
    assert_eq!(
        ann.header_raw("X-Who").map(str::trim),
        Some("\"Ann <A&B>\" <ann@example.com>")
    );
    let bob = parse(&got[1]);
    assert_eq!(bob.subject(), Some("Hello friend, Hi"));
    assert_eq!(
        bob.body_text(0).unwrap().trim_end(),
        "Hi friend <bob@example.com>"
    );

    // Static: no templating at all.
    let request = json!({
        "envelope_sender": "noreply@yourdomain.com",
        "template_dialect": "Static",
        "content": "From: noreply@yourdomain.com\nSubject: {{ literally }}\n\n{% raw %}",
        "recipients": ["one@example.com", "two@example.com"]
    });
    let got = send(&fixture, &sink, request, 2).await;
    let mut to: Vec<_> = got.iter().flat_map(|r| r.rcpt_to.clone()).collect();
    to.sort();
    assert_eq!(to, ["one@example.com", "two@example.com"]);
    let m = parse(&got[0]);
    assert_eq!(m.subject(), Some("{{ literally }}"));
    assert_eq!(m.body_text(0).unwrap().trim_end(), "{% raw %}");
    node.stop().await;
}

#[tokio::test]
async fn template_failures_are_per_recipient_or_422() {
    let (fixture, node, sink) = node(13).await;
    let request = json!({
        "envelope_sender": "noreply@yourdomain.com",
        "content": {"from": "news@yourdomain.com", "subject": "Hi {{ first }}",
                    "text_body": "line 1\n{{ code }}"},
        "recipients": [
            {"email": "ok@example.com", "substitutions": {"first": "Ok", "code": 1}},
            {"email": "nocode@example.com", "substitutions": {"first": "No"}},
            {"email": "evil@example.com", "substitutions": {"first": "x\r\nBcc: v@example.com", "code": 2}}
        ]
    });
    let (status, body) = fixture.inject(&request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success_count"], 1, "{body}");
    assert_eq!(body["fail_count"], 2);
    let errors = body["errors"].to_string();
    assert!(
        errors.contains("nocode@example.com: content.text_body line 2: undefined value"),
        "{errors}"
    );
    assert!(
        errors.contains("evil@example.com: content.subject line 1:") && errors.contains("CR or LF"),
        "{errors}"
    );
    let got = sink.wait_for(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got[0].rcpt_to, ["ok@example.com"]);

    let request = json!({
        "envelope_sender": "noreply@yourdomain.com",
        "content": {"from": "news@yourdomain.com", "text_body": "ok\n{% for x in %}"},
        "recipients": ["a@example.com"]
    });
    let (status, body) = fixture.inject(&request).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("content.text_body line 2: syntax error"),
        "{error}"
    );
    node.stop().await;
    assert_eq!(sink.messages().len(), 1, "nothing more was delivered");
}
