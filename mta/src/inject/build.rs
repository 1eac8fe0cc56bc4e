//! From a parsed request to messages: validation (400 naming the field),
//! the domain rules (422), then one message per recipient set, built with
//! mail-builder. No header is ever written by string concatenation, and no
//! field or substitution can carry a CR or LF into a header.

use std::borrow::Cow;

use base64::Engine;
use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;

use super::model::{Builder, Content, InjectRequest, Mailbox, Recipient, Substitutions};
use super::subst::Scope;
use crate::auth::Principal;
use crate::from_header;
use crate::ingress::trace_id;
use crate::policy::{self, PolicyError};

/// Why a request as a whole is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the message names the field.
    Invalid(String),
    /// 422.
    Policy(PolicyError),
    /// 413.
    TooLarge(String),
}

fn invalid(field: impl std::fmt::Display, problem: impl std::fmt::Display) -> Refusal {
    Refusal::Invalid(format!("{field}: {problem}"))
}

/// Headers the builder writes itself: set them through their own fields.
const BUILDER_HEADERS: &[&str] = &[
    "From",
    "Subject",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
];

/// Headers whose exact spelling mail-builder looks for.
const CANONICAL: &[&str] = &["Message-ID", "Date"];

/// A request that passed validation, with its attachments decoded.
pub struct Prepared<'r> {
    request: &'r InjectRequest,
    body: Body<'r>,
    max_line: usize,
}

enum Body<'r> {
    /// The RFC 5322 template with CRLF line ends.
    Rfc5322(String),
    Builder {
        builder: &'r Builder,
        headers: Vec<(&'static str, &'r str)>,
        custom: Vec<(&'r str, &'r str)>,
        attachments: Vec<Vec<u8>>,
    },
}

/// Checks everything that does not depend on a recipient.
pub fn prepare<'r>(
    request: &'r InjectRequest,
    principal: &Principal,
    max_line: usize,
) -> Result<Prepared<'r>, Refusal> {
    check_address("envelope_sender", &request.envelope_sender)?;
    if request.recipients.is_empty() {
        return Err(invalid("recipients", "at least one recipient is required"));
    }
    policy::check_sender(principal, &request.envelope_sender).map_err(Refusal::Policy)?;
    let body = match &request.content {
        Content::Rfc5322(text) => {
            if text.trim().is_empty() {
                return Err(invalid("content", "the message is empty"));
            }
            let text = crlf(text);
            if let Some(n) = long_line(&text, max_line) {
                return Err(invalid(
                    "content",
                    format!("line {n} is longer than {} characters", max_line - 2),
                ));
            }
            Body::Rfc5322(text)
        }
        Content::Builder(builder) => prepare_builder(builder, principal)?,
    };
    Ok(Prepared {
        request,
        body,
        max_line,
    })
}

fn prepare_builder<'r>(builder: &'r Builder, principal: &Principal) -> Result<Body<'r>, Refusal> {
    check_mailbox("content.from", &builder.from)?;
    if let Some(reply_to) = &builder.reply_to {
        check_mailbox("content.reply_to", reply_to)?;
    }
    let from = from_header::parse_address("content.from.email", &builder.from.email)
        .map_err(|e| Refusal::Policy(e.into()))?;
    if let Some(reply_to) = &builder.reply_to {
        from_header::parse_address("content.reply_to.email", &reply_to.email)
            .map_err(|e| Refusal::Policy(e.into()))?;
    }
    if !principal.may_send_as(&from.domain) {
        return Err(Refusal::Policy(PolicyError::FromDomain(from.domain)));
    }
    if let Some(subject) = &builder.subject {
        check_header_value("content.subject", subject)?;
    }
    let mut headers = Vec::new();
    let mut custom = Vec::new();
    for (name, value) in &builder.headers {
        let field = format!("content.headers.{name}");
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(invalid(&field, "not a valid header name"));
        }
        if let Some(reserved) = BUILDER_HEADERS
            .iter()
            .find(|h| h.eq_ignore_ascii_case(name))
        {
            return Err(invalid(
                &field,
                format!("{reserved} is written by the builder; use its own field"),
            ));
        }
        check_header_value(&field, value)?;
        match CANONICAL.iter().find(|h| h.eq_ignore_ascii_case(name)) {
            Some(canonical) => headers.push((*canonical, value.as_str())),
            None => custom.push((name.as_str(), value.as_str())),
        }
    }
    if builder.text_body.is_none() && builder.html_body.is_none() && builder.attachments.is_empty()
    {
        return Err(invalid(
            "content",
            "a builder needs text_body, html_body or attachments",
        ));
    }
    let mut attachments = Vec::with_capacity(builder.attachments.len());
    for (i, attachment) in builder.attachments.iter().enumerate() {
        let field = format!("content.attachments[{i}]");
        if !is_mime_type(&attachment.content_type) {
            return Err(invalid(
                format!("{field}.content_type"),
                "must be a MIME type such as image/png",
            ));
        }
        if let Some(name) = &attachment.file_name {
            check_header_value(&format!("{field}.file_name"), name)?;
        }
        if let Some(id) = &attachment.content_id {
            check_header_value(&format!("{field}.content_id"), id)?;
            if id.contains(['<', '>', ' ']) {
                return Err(invalid(
                    format!("{field}.content_id"),
                    "must not contain <, > or spaces",
                ));
            }
        }
        let data = if attachment.base64 {
            let compact: Vec<u8> = attachment
                .data
                .bytes()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| invalid(format!("{field}.data"), format!("not valid base64: {e}")))?
        } else {
            attachment.data.as_bytes().to_vec()
        };
        attachments.push(data);
    }
    Ok(Body::Builder {
        builder,
        headers,
        custom,
        attachments,
    })
}

/// Who gets one message, and the recipient values it is rendered with.
pub struct Group<'r> {
    pub recipients: Vec<&'r Recipient>,
    pub own: Option<&'r Substitutions>,
}

/// Recipients without their own substitutions share messages (at most
/// `max_recipients` each); each recipient with its own gets a message.
/// Recipients whose address is not valid come back apart.
pub fn plan(recipients: &[Recipient], max_recipients: usize) -> (Vec<Group<'_>>, Vec<&Recipient>) {
    let mut shared = Vec::new();
    let mut groups = Vec::new();
    let mut bad = Vec::new();
    for recipient in recipients {
        if check_address("recipient", &recipient.email).is_err()
            || policy::check_recipient(&recipient.email).is_err()
        {
            bad.push(recipient);
        } else if recipient.substitutions.is_empty() {
            shared.push(recipient);
        } else {
            groups.push(Group {
                recipients: vec![recipient],
                own: Some(&recipient.substitutions),
            });
        }
    }
    for chunk in shared.chunks(max_recipients.max(1)) {
        groups.push(Group {
            recipients: chunk.to_vec(),
            own: None,
        });
    }
    (groups, bad)
}

/// One built message.
pub struct Rendered {
    pub data: Vec<u8>,
    pub has_message_id: bool,
    pub has_date: bool,
}

/// Why one message could not be built; only its recipients fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// A substitution would put CR or LF into this header.
    HeaderBreak(String),
    LineTooLong(usize),
    Policy(PolicyError),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::HeaderBreak(field) => write!(
                f,
                "a substitution would put CR or LF into the {field} header"
            ),
            RenderError::LineTooLong(max) => {
                write!(
                    f,
                    "a substitution makes a line longer than {max} characters"
                )
            }
            RenderError::Policy(error) => write!(f, "{error}"),
        }
    }
}

impl Prepared<'_> {
    /// The message for `group`.
    pub fn render(
        &self,
        group: &Group<'_>,
        principal: &Principal,
        hostname: &str,
    ) -> Result<Rendered, RenderError> {
        let scope = Scope {
            recipient: group.own,
            global: &self.request.substitutions,
        };
        match &self.body {
            Body::Rfc5322(template) => self.render_rfc5322(template, scope, principal),
            Body::Builder {
                builder,
                headers,
                custom,
                attachments,
            } => render_builder(builder, headers, custom, attachments, scope, hostname),
        }
    }

    fn render_rfc5322(
        &self,
        template: &str,
        scope: Scope<'_>,
        principal: &Principal,
    ) -> Result<Rendered, RenderError> {
        let split = template.find("\r\n\r\n").map(|i| i + 2);
        let (head, body) = match split {
            Some(i) => template.split_at(i),
            None => (template, ""),
        };
        let mut data = String::with_capacity(template.len() + 256);
        for line in head.split_inclusive("\r\n") {
            let (text, end) = line
                .strip_suffix("\r\n")
                .map_or((line, ""), |t| (t, "\r\n"));
            let name = text.split(':').next().unwrap_or_default().trim();
            let rendered = scope
                .render_header(text)
                .ok_or_else(|| RenderError::HeaderBreak(name.to_string()))?;
            data.push_str(&rendered);
            data.push_str(end);
        }
        data.push_str(&crlf(&scope.render(body)));
        if long_line(&data, self.max_line).is_some() {
            return Err(RenderError::LineTooLong(self.max_line - 2));
        }
        let data = data.into_bytes();
        if let Some(at) = policy::control_character(&data) {
            return Err(RenderError::Policy(PolicyError::ControlCharacter(at)));
        }
        let facts = policy::inspect(&data);
        policy::check_from(principal, &facts).map_err(RenderError::Policy)?;
        let data = facts.strip_return_path(data);
        Ok(Rendered {
            has_message_id: facts.has_message_id,
            has_date: facts.has_date,
            data,
        })
    }
}

fn render_builder(
    builder: &Builder,
    headers: &[(&'static str, &str)],
    custom: &[(&str, &str)],
    attachments: &[Vec<u8>],
    scope: Scope<'_>,
    hostname: &str,
) -> Result<Rendered, RenderError> {
    let header = |name: &str, value: &str| {
        scope
            .render_header(value)
            .map(Cow::into_owned)
            .ok_or_else(|| RenderError::HeaderBreak(name.to_string()))
    };
    let mut message = MessageBuilder::new().from(address(&builder.from));
    if let Some(reply_to) = &builder.reply_to {
        message = message.reply_to(address(reply_to));
    }
    if let Some(subject) = &builder.subject {
        message = message.subject(Text::new(header("Subject", subject)?));
    }
    for (name, value) in headers.iter().chain(custom) {
        message = message.header(name.to_string(), Text::new(header(name, value)?));
    }
    if !headers.iter().any(|(name, _)| *name == "Message-ID") {
        message = message.message_id(MessageId::new(format!("{}@{hostname}", trace_id())));
    }
    if !headers.iter().any(|(name, _)| *name == "Date") {
        message = message.date(Date::now());
    }
    if let Some(text) = &builder.text_body {
        message = message.text_body(scope.render(text).into_owned());
    }
    if let Some(html) = &builder.html_body {
        message = message.html_body(scope.render(html).into_owned());
    }
    for (attachment, data) in builder.attachments.iter().zip(attachments) {
        let content_type = attachment.content_type.as_str();
        message = match &attachment.content_id {
            Some(cid) => message.inline(content_type, cid.as_str(), data.as_slice()),
            None => message.attachment(
                content_type,
                attachment.file_name.as_deref().unwrap_or("attachment"),
                data.as_slice(),
            ),
        };
    }
    let mut data = Vec::new();
    message.serialize(&mut data);
    Ok(Rendered {
        data,
        has_message_id: true,
        has_date: true,
    })
}

fn address(mailbox: &Mailbox) -> Address<'_> {
    Address::new_address(mailbox.name.as_deref(), mailbox.email.as_str())
}

fn check_address(field: &str, address: &str) -> Result<(), Refusal> {
    let plain = !address.is_empty()
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | '"' | ','));
    if plain && policy::domain_of(address).is_some() {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("`{address}` is not an email address"),
        ))
    }
}

fn check_mailbox(field: &str, mailbox: &Mailbox) -> Result<(), Refusal> {
    check_address(&format!("{field}.email"), &mailbox.email)?;
    if let Some(name) = &mailbox.name {
        check_header_value(&format!("{field}.name"), name)?;
    }
    Ok(())
}

fn check_header_value(field: &str, value: &str) -> Result<(), Refusal> {
    if value.contains(['\r', '\n']) {
        Err(invalid(
            field,
            "must not contain CR or LF (a header value is one line)",
        ))
    } else if value.chars().any(|c| c.is_control() && c != '\t') {
        Err(invalid(field, "must not contain control characters"))
    } else {
        Ok(())
    }
}

fn is_mime_type(text: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(text.split_once('/'), Some((kind, sub)) if token(kind) && token(sub))
}

/// `text` with every line ending as CRLF (JSON clients often send LF).
fn crlf(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// The 1-based number of the first line longer than `max` octets with its
/// CRLF, if any.
fn long_line(text: &str, max: usize) -> Option<usize> {
    text.split("\r\n")
        .position(|line| line.len() + 2 > max)
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::super::model::parse;
    use super::*;

    fn principal() -> Principal {
        Principal {
            username: "u".into(),
            cluster: "c".into(),
            domains: vec!["yourdomain.com".to_string()].into(),
        }
    }

    fn req(content: &str) -> InjectRequest {
        parse(
            format!(
                r#"{{"envelope_sender": "b@yourdomain.com",
                    "recipients": ["a@example.com", {{"email": "b@example.com", "substitutions": {{"who": "Bob"}}}}],
                    "substitutions": {{"who": "all"}},
                    "content": {content}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn builder_messages_per_recipient_set() {
        let request = req(
            r#"{"from": {"email": "me@yourdomain.com", "name": "Me"}, "subject": "Hi {{who}}",
                "text_body": "Hello {{who}}", "headers": {"X-Tag": "t-{{who}}", "message-id": "<given@x>"},
                "attachments": [{"data": "aGVsbG8=", "base64": true, "content_type": "text/plain", "file_name": "a.txt"}]}"#,
        );
        let p = principal();
        let prepared = prepare(&request, &p, 1000).unwrap();
        let (groups, bad) = plan(&request.recipients, 100);
        assert!(bad.is_empty());
        assert_eq!(groups.len(), 2);
        let texts: Vec<String> = groups
            .iter()
            .map(|g| {
                let r = prepared.render(g, &p, "c-x.example").unwrap();
                String::from_utf8(r.data).unwrap()
            })
            .collect();
        assert!(texts[0].contains("Subject: Hi Bob") && texts[0].contains("X-Tag: t-Bob"));
        assert!(texts[1].contains("Subject: Hi all"));
        for text in &texts {
            assert_eq!(text.matches("Message-ID:").count(), 1, "{text}");
            assert!(text.contains("Message-ID: <given@x>"));
            assert!(text.contains("Date: "));
            assert!(text.contains("a.txt"), "{text}");
            let facts = policy::inspect(text.as_bytes());
            assert_eq!(facts.from, vec!["me@yourdomain.com".to_string()]);
        }
    }

    #[test]
    fn crlf_in_fields_is_refused_and_substitutions_cannot_add_headers() {
        let request =
            req(r#"{"from": "me@yourdomain.com", "subject": "a\r\nBcc: x@y", "text_body": "b"}"#);
        let refusal = prepare(&request, &principal(), 1000).err().unwrap();
        assert!(matches!(&refusal, Refusal::Invalid(m) if m.starts_with("content.subject:")));

        let request = request_with_evil();
        let p = principal();
        let prepared = prepare(&request, &p, 1000).unwrap();
        let (groups, _) = plan(&request.recipients, 100);
        let errors: Vec<_> = groups
            .iter()
            .map(|g| prepared.render(g, &p, "h").err())
            .collect();
        assert_eq!(errors[0], Some(RenderError::HeaderBreak("Subject".into())));
    }

    fn request_with_evil() -> InjectRequest {
        parse(
            br#"{"envelope_sender": "b@yourdomain.com",
                "recipients": [{"email": "b@example.com", "substitutions": {"s": "x\r\nBcc: v@example.com"}}],
                "content": "From: me@yourdomain.com\nSubject: {{s}}\n\nbody {{s}}\n"}"#,
        )
        .unwrap()
    }

    #[test]
    fn policy_and_validation() {
        let p = principal();
        let request = req(r#"{"from": "me@evil.com", "text_body": "b"}"#);
        assert_eq!(
            prepare(&request, &p, 1000).err(),
            Some(Refusal::Policy(PolicyError::FromDomain("evil.com".into())))
        );
        let request = req(r#""Subject: no from\n\nbody""#);
        let prepared = prepare(&request, &p, 1000).unwrap();
        let (groups, _) = plan(&request.recipients, 100);
        assert_eq!(
            prepared.render(&groups[0], &p, "h").err(),
            Some(RenderError::Policy(PolicyError::From(
                crate::from_header::FromError::Missing
            )))
        );
        let request =
            req(r#"{"from": "me@yourdomain.com", "headers": {"Bad Name": "x"}, "text_body": "b"}"#);
        assert!(
            matches!(prepare(&request, &p, 1000), Err(Refusal::Invalid(m)) if m.starts_with("content.headers.Bad Name"))
        );
        let request = req(r#"{"from": "me@yourdomain.com"}"#);
        assert!(
            matches!(prepare(&request, &p, 1000), Err(Refusal::Invalid(m)) if m.starts_with("content:"))
        );
    }

    #[test]
    fn rfc5322_string_gets_crlf() {
        let p = principal();
        let request = req(r#""From: me@yourdomain.com\nSubject: {{who}}\n\nHi\n""#);
        let prepared = prepare(&request, &p, 1000).unwrap();
        let (groups, _) = plan(&request.recipients, 100);
        let r = prepared.render(&groups[1], &p, "h").unwrap();
        assert_eq!(
            r.data,
            b"From: me@yourdomain.com\r\nSubject: all\r\n\r\nHi\r\n"
        );
        assert!(!r.has_date && !r.has_message_id);
    }
}
