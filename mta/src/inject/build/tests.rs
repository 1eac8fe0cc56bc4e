use super::super::model::parse;
use super::*;

fn principal() -> Principal {
    Principal {
        username: "u".into(),
        cluster: "c".into(),
        domains: vec!["yourdomain.com".to_string()].into(),
    }
}

const LIMITS: Limits = Limits {
    max_line: 1000,
    max_message_size: 100_000,
    fuel: 100_000,
};

fn req(content: &str) -> InjectRequest {
    parse(
        format!(
            r#"{{"envelope_sender": "b@yourdomain.com",
                "recipients": ["a@example.com", {{"email": "b@example.com", "name": "Bee", "substitutions": {{"who": "Bob"}}}}],
                "substitutions": {{"who": "all"}},
                "content": {content}}}"#
        )
        .as_bytes(),
    )
    .unwrap()
}

fn texts(request: &mut InjectRequest) -> Vec<Result<String, RenderError>> {
    let p = principal();
    let prepared = prepare(request, &p, LIMITS).unwrap();
    let (groups, bad) = prepared.plan(100);
    assert!(bad.is_empty());
    groups
        .iter()
        .map(|g| {
            prepared
                .render(g, &p)
                .map(|r| String::from_utf8(r.data).unwrap())
        })
        .collect()
}

#[test]
fn builder_messages_per_recipient() {
    let mut request = req(
        r#"{"from": {"email": "me@yourdomain.com", "name": "Me"}, "subject": "Hi {{who}}",
            "text_body": "Hello {{who}} {{ email }}", "headers": {"X-Tag": "t-{{who}}", "message-id": "<given@x>"},
            "attachments": [{"data": "aGVsbG8=", "base64": true, "content_type": "text/plain; charset=iso-8859-1", "file_name": "a.txt"}]}"#,
    );
    let texts: Vec<String> = texts(&mut request)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(texts.len(), 2);
    assert!(texts[0].contains("Subject: Hi all") && texts[0].contains("To: <a@example.com>"));
    assert!(texts[1].contains("Subject: Hi Bob") && texts[1].contains("X-Tag: t-Bob"));
    assert!(
        texts[1].contains("To: \"Bee\" <b@example.com>"),
        "{}",
        texts[1]
    );
    assert!(texts[1].contains("Hello Bob b@example.com"));
    for text in &texts {
        assert_eq!(text.matches("Message-ID:").count(), 1, "{text}");
        assert!(text.contains("Message-ID: <given@x>"));
        assert!(text.contains("Date: ") && text.contains("MIME-Version: 1.0"));
        assert!(text.contains("multipart/mixed"), "{text}");
        assert!(
            text.contains("charset=iso-8859-1") || text.contains("charset=\"iso-8859-1\""),
            "{text}"
        );
        let facts = policy::inspect(text.as_bytes());
        assert_eq!(facts.from, vec!["me@yourdomain.com".to_string()]);
    }
}

#[test]
fn message_id_is_at_the_sending_domain() {
    let mut request = req(
        r#"{"from": "me@yourdomain.com", "text_body": "x", "amp_html_body": "<p>a</p>", "html_body": "<p>h</p>"}"#,
    );
    let text = texts(&mut request).remove(0).unwrap();
    assert!(text.contains("@yourdomain.com>"), "{text}");
    let alt = text.find("multipart/alternative").unwrap();
    let (t, a, h) = (
        text.find("text/plain").unwrap(),
        text.find("text/x-amp-html").unwrap(),
        text.find("text/html").unwrap(),
    );
    assert!(alt < t && t < a && a < h, "{text}");
}

#[test]
fn crlf_in_fields_is_refused_and_substitutions_cannot_add_headers() {
    let mut request =
        req(r#"{"from": "me@yourdomain.com", "subject": "a\r\nBcc: x@y", "text_body": "b"}"#);
    let refusal = prepare(&mut request, &principal(), LIMITS).err().unwrap();
    assert!(matches!(&refusal, Refusal::Invalid(m) if m.starts_with("content.subject:")));

    let mut request = parse(
        br#"{"envelope_sender": "b@yourdomain.com",
            "recipients": [{"email": "b@example.com", "substitutions": {"s": "x\r\nBcc: v@example.com"}}],
            "content": "From: me@yourdomain.com\nSubject: {{s}}\n\nbody {{s}}\n"}"#,
    )
    .unwrap();
    let err = texts(&mut request).remove(0).unwrap_err();
    assert!(
        err.to_string().starts_with("content (header) line 2:")
            && err.to_string().contains("CR or LF"),
        "{err}"
    );
}

#[test]
fn reserved_headers() {
    let p = principal();
    for name in [
        "Return-Path",
        "received",
        "DKIM-Signature",
        "ARC-Seal",
        "Authentication-Results",
    ] {
        let mut request = req(&format!(
            r#"{{"from": "me@yourdomain.com", "headers": {{"{name}": "x"}}, "text_body": "b"}}"#
        ));
        let refusal = prepare(&mut request, &p, LIMITS).err().unwrap();
        assert!(
            matches!(&refusal, Refusal::Unprocessable(m) if m.contains(name) && m.contains("written by MTAs")),
            "{refusal:?}"
        );
    }
}

#[test]
fn policy_validation_and_templates() {
    let p = principal();
    let mut request = req(r#"{"from": "me@evil.com", "text_body": "b"}"#);
    assert_eq!(
        prepare(&mut request, &p, LIMITS).err(),
        Some(Refusal::Policy(PolicyError::FromDomain("evil.com".into())))
    );
    let mut request = req(r#""Subject: no from\n\nbody""#);
    assert_eq!(
        texts(&mut request)[0].clone().err(),
        Some(RenderError::Policy(PolicyError::From(
            from_header::FromError::Missing
        )))
    );
    let mut request =
        req(r#"{"from": "me@yourdomain.com", "headers": {"Bad Name": "x"}, "text_body": "b"}"#);
    assert!(
        matches!(prepare(&mut request, &p, LIMITS), Err(Refusal::Invalid(m)) if m.starts_with("content.headers.Bad Name"))
    );
    let mut request = req(r#"{"from": "me@yourdomain.com"}"#);
    assert!(
        matches!(prepare(&mut request, &p, LIMITS), Err(Refusal::Invalid(m)) if m.starts_with("content:"))
    );
    let mut request = req(r#"{"from": "me@yourdomain.com", "text_body": "{% if %}"}"#);
    assert!(
        matches!(prepare(&mut request, &p, LIMITS), Err(Refusal::Unprocessable(m)) if m.starts_with("content.text_body line 1: syntax error")),
    );
}

#[test]
fn rfc5322_string_gets_crlf_and_is_shared() {
    let p = principal();
    let mut request = req(r#""From: me@yourdomain.com\nSubject: {{who}}\n\nHi\n""#);
    let prepared = prepare(&mut request, &p, LIMITS).unwrap();
    let (groups, _) = prepared.plan(100);
    assert_eq!(groups.len(), 2);
    let r = prepared.render(&groups[1], &p).unwrap();
    assert_eq!(
        r.data,
        b"From: me@yourdomain.com\r\nSubject: all\r\n\r\nHi\r\n"
    );
    assert!(!r.has_date && !r.has_message_id);
    let mut request = req(r#""From: me@yourdomain.com\nSubject: {{email}}\n\nHi\n""#);
    let prepared = prepare(&mut request, &p, LIMITS).unwrap();
    assert_eq!(prepared.plan(100).0.len(), 2);
    let mut request = parse(
        br#"{"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com", "c@example.com"],
            "content": "From: me@yourdomain.com\nSubject: {{who}}\n\nHi\n"}"#,
    )
    .unwrap();
    let prepared = prepare(&mut request, &p, LIMITS).unwrap();
    assert_eq!(prepared.plan(100).0.len(), 1);
}

#[test]
fn rendered_size_is_bounded() {
    let mut request = parse(
        format!(
            r#"{{"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"],
                "substitutions": {{"big": "{}"}},
                "content": {{"from": "me@yourdomain.com", "text_body": "{{% for i in range(1000) %}}{{{{ big }}}}{{% endfor %}}"}}}}"#,
            "x".repeat(900)
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        texts(&mut request)[0].clone().err(),
        Some(RenderError::TooLarge(100_000))
    );
}
