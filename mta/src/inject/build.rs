//! From a parsed request to messages: validation (400 naming the field),
//! the domain rules and templates that cannot compile (422), then one
//! message per recipient (or per set of recipients sharing one raw
//! message), rendered within its bounds and built with mail-builder. No
//! header is ever written by string concatenation, and no field or
//! substitution can carry a CR or LF into a header.

use base64::Engine;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;

use super::model::{Attachment, Builder, Content, InjectRequest, Mailbox, Recipient};
use super::template::{self, Bounds, MessageRender, Templates};
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
    /// 422: a template that cannot compile, a header only MTAs write.
    Unprocessable(String),
    /// 413.
    TooLarge(String),
}

fn invalid(field: impl std::fmt::Display, problem: impl std::fmt::Display) -> Refusal {
    Refusal::Invalid(format!("{field}: {problem}"))
}

/// Headers the builder writes itself: set them through their own fields.
const BUILDER_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
];

/// Headers only MTAs write: a JSON request may not (422).
const MTA_HEADERS: &[&str] = &[
    "Return-Path",
    "Received",
    "DKIM-Signature",
    "Authentication-Results",
];

/// Headers whose exact spelling mail-builder looks for.
const CANONICAL: &[&str] = &["Message-ID", "Date", "To", "Subject"];

/// Template names of a raw `content` string.
const RAW_HEAD: &str = "content (header)";
const RAW_BODY: &str = "content (body)";

/// The limits a request is prepared and rendered within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_line: usize,
    pub max_message_size: usize,
    pub fuel: u64,
}

/// A request that passed validation, with its templates compiled and its
/// attachments decoded.
pub struct Prepared<'r> {
    request: &'r InjectRequest,
    templates: Templates,
    body: Body<'r>,
    limits: Limits,
}

enum Body<'r> {
    Rfc5322,
    Builder {
        builder: &'r Builder,
        /// (header name, template name), in request order.
        headers: Vec<(String, String)>,
        attachments: Vec<Part<'r>>,
        from_domain: String,
    },
}

/// One decoded attachment.
struct Part<'r> {
    attachment: &'r Attachment,
    content_type: (String, Vec<(String, String)>),
    data: Vec<u8>,
}

/// Checks everything that does not depend on a recipient.
///
/// Attachments are decoded here and their data taken out of the request,
/// so a request never holds an attachment twice.
pub fn prepare<'r>(
    request: &'r mut InjectRequest,
    principal: &Principal,
    limits: Limits,
) -> Result<Prepared<'r>, Refusal> {
    let decoded = match &mut request.content {
        Content::Builder(builder) => decode_attachments(builder)?,
        Content::Rfc5322(_) => Vec::new(),
    };
    let request: &'r InjectRequest = request;
    check_address("envelope_sender", &request.envelope_sender)?;
    if request.recipients.is_empty() {
        return Err(invalid("recipients", "at least one recipient is required"));
    }
    policy::check_sender(principal, &request.envelope_sender).map_err(Refusal::Policy)?;
    let mut fixed = 0usize;
    let (body, fields) = match &request.content {
        Content::Rfc5322(text) => {
            if text.trim().is_empty() {
                return Err(invalid("content", "the message is empty"));
            }
            let text = crlf(text);
            if let Some(n) = long_line(&text, limits.max_line) {
                return Err(invalid(
                    "content",
                    format!("line {n} is longer than {} characters", limits.max_line - 2),
                ));
            }
            let (head, body) = match text.find("\r\n\r\n") {
                Some(i) => text.split_at(i + 2),
                None => (text.as_str(), ""),
            };
            let fields = vec![
                (RAW_HEAD.to_string(), head.to_string()),
                (RAW_BODY.to_string(), body.to_string()),
            ];
            (Body::Rfc5322, fields)
        }
        Content::Builder(builder) => prepare_builder(builder, principal, decoded, &mut fixed)?,
    };
    if fixed > limits.max_message_size {
        return Err(Refusal::TooLarge(format!(
            "the attachments alone are {fixed} bytes encoded, more than the {} allowed",
            limits.max_message_size
        )));
    }
    let bounds = Bounds {
        fuel: limits.fuel,
        max_output: limits.max_message_size - fixed,
    };
    let templates = Templates::compile(request.template_dialect, fields, bounds)
        .map_err(|e| Refusal::Unprocessable(e.0))?;
    Ok(Prepared {
        request,
        templates,
        body,
        limits,
    })
}

type Fields = Vec<(String, String)>;

fn prepare_builder<'r>(
    builder: &'r Builder,
    principal: &Principal,
    decoded: Vec<Decoded>,
    fixed: &mut usize,
) -> Result<(Body<'r>, Fields), Refusal> {
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
    let domain = from.domain.as_str();
    let mut fields: Fields = Vec::new();
    let mut body_field = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            fields.push((format!("content.{name}"), value.clone()));
        }
    };
    body_field("text_body", &builder.text_body);
    body_field("amp_html_body", &builder.amp_html_body);
    body_field("html_body", &builder.html_body);
    if let Some(subject) = &builder.subject {
        check_header_value("content.subject", subject)?;
        fields.push(("content.subject".into(), subject.clone()));
    }
    let headers = prepare_headers(builder, &mut fields)?;
    if builder.text_body.is_none()
        && builder.html_body.is_none()
        && builder.amp_html_body.is_none()
        && builder.attachments.is_empty()
    {
        return Err(invalid(
            "content",
            "a builder needs text_body, html_body, amp_html_body or attachments",
        ));
    }
    let mut attachments = Vec::with_capacity(builder.attachments.len());
    for (attachment, (content_type, data)) in builder.attachments.iter().zip(decoded) {
        *fixed = fixed.saturating_add(data.len() / 3 * 4 + data.len() / 38 + 256);
        attachments.push(Part {
            attachment,
            content_type,
            data,
        });
    }
    let body = Body::Builder {
        builder,
        headers,
        attachments,
        from_domain: domain.to_string(),
    };
    Ok((body, fields))
}

/// The `headers` map: names checked, values compiled as templates.
fn prepare_headers(
    builder: &Builder,
    fields: &mut Fields,
) -> Result<Vec<(String, String)>, Refusal> {
    let mut headers = Vec::new();
    for (name, value) in &builder.headers {
        let field = format!("content.headers.{name}");
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(invalid(&field, "not a valid header name"));
        }
        let is = |h: &&&str| h.eq_ignore_ascii_case(name);
        if let Some(reserved) = BUILDER_HEADERS.iter().find(is) {
            return Err(invalid(
                &field,
                format!("{reserved} is written by the builder; use its own field"),
            ));
        }
        let arc = name.len() > 4 && name[..4].eq_ignore_ascii_case("ARC-");
        if let Some(reserved) = MTA_HEADERS
            .iter()
            .find(is)
            .copied()
            .or(arc.then_some(name.as_str()))
        {
            return Err(Refusal::Unprocessable(format!(
                "{field}: {reserved} is written by MTAs, not by a request"
            )));
        }
        if name.eq_ignore_ascii_case("Subject") && builder.subject.is_some() {
            return Err(invalid(
                &field,
                "the subject is given twice (content.subject)",
            ));
        }
        check_header_value(&field, value)?;
        let canonical = CANONICAL
            .iter()
            .find(is)
            .map_or(name.as_str(), |c| c)
            .to_string();
        let template = if canonical == "Subject" {
            "content.subject".to_string()
        } else {
            field
        };
        fields.push((template.clone(), value.clone()));
        headers.push((canonical, template));
    }
    Ok(headers)
}

/// An attachment's parsed content type and its bytes.
type Decoded = ((String, Vec<(String, String)>), Vec<u8>);

/// Checks and decodes every attachment, taking its data out of the
/// request (the base64 text is freed as soon as it is decoded).
fn decode_attachments(builder: &mut Builder) -> Result<Vec<Decoded>, Refusal> {
    let mut decoded = Vec::with_capacity(builder.attachments.len());
    for (i, attachment) in builder.attachments.iter_mut().enumerate() {
        let field = format!("content.attachments[{i}]");
        decoded.push(decode_attachment(&field, attachment)?);
    }
    Ok(decoded)
}

fn decode_attachment(field: &str, attachment: &mut Attachment) -> Result<Decoded, Refusal> {
    let Some((kind, mut params)) = parse_content_type(&attachment.content_type) else {
        return Err(invalid(
            format!("{field}.content_type"),
            "must be a MIME type such as image/png or text/plain; charset=iso-8859-1",
        ));
    };
    if let Some(name) = &attachment.file_name {
        check_header_value(&format!("{field}.file_name"), name)?;
    }
    if let Some(id) = &attachment.content_id {
        check_header_value(&format!("{field}.content_id"), id)?;
        if id.is_empty() || id.contains(['<', '>', ' ']) {
            return Err(invalid(
                format!("{field}.content_id"),
                "must be non-empty, without <, > or spaces",
            ));
        }
    }
    let text = std::mem::take(&mut attachment.data);
    let data = if attachment.base64 {
        let engine = &base64::engine::general_purpose::STANDARD;
        let result = if text.bytes().any(|b| b.is_ascii_whitespace()) {
            let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
            drop(text);
            engine.decode(compact)
        } else {
            engine.decode(text)
        };
        result.map_err(|e| invalid(format!("{field}.data"), format!("not valid base64: {e}")))?
    } else {
        text.into_bytes()
    };
    let has_charset = params
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("charset"));
    if kind.starts_with("text/") && !has_charset && !attachment.base64 {
        // Text given as a JSON string is UTF-8.
        params.push(("charset".into(), "utf-8".into()));
    }
    Ok(((kind, params), data))
}

/// Who gets one message, and the recipient it is rendered for (`None`
/// for a shared raw message whose template names no recipient value).
pub struct Group<'r> {
    pub recipients: Vec<&'r Recipient>,
    pub own: Option<&'r Recipient>,
}

impl<'r> Prepared<'r> {
    /// The envelope sender of every message.
    pub fn sender(&self) -> &'r str {
        &self.request.envelope_sender
    }

    /// A message per recipient (the builder writes each one's `To:`); a raw
    /// message whose template uses no recipient value is shared by the
    /// recipients without their own substitutions (at most
    /// `max_recipients` each). Recipients whose address is not valid come
    /// back apart.
    pub fn plan(&self, max_recipients: usize) -> (Vec<Group<'r>>, Vec<&'r Recipient>) {
        let shareable = matches!(self.body, Body::Rfc5322)
            && !self.templates.uses_recipient(RAW_HEAD)
            && !self.templates.uses_recipient(RAW_BODY);
        let mut shared = Vec::new();
        let mut groups = Vec::new();
        let mut bad = Vec::new();
        for recipient in &self.request.recipients {
            if check_address("recipient", &recipient.email).is_err()
                || policy::check_recipient(&recipient.email).is_err()
            {
                bad.push(recipient);
            } else if shareable && recipient.substitutions.is_empty() {
                shared.push(recipient);
            } else {
                groups.push(Group {
                    recipients: vec![recipient],
                    own: Some(recipient),
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
    /// A template failed: the sentence names the field and line.
    Template(String),
    /// Larger than the message size limit.
    TooLarge(usize),
    LineTooLong(usize),
    Policy(PolicyError),
}

impl From<template::RenderError> for RenderError {
    fn from(e: template::RenderError) -> Self {
        match e {
            template::RenderError::Failed(message) => RenderError::Template(message),
            template::RenderError::TooLarge(_) => RenderError::TooLarge(0),
        }
    }
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Template(message) => f.write_str(message),
            RenderError::TooLarge(limit) => {
                write!(
                    f,
                    "the message would be larger than the {limit} bytes allowed"
                )
            }
            RenderError::LineTooLong(max) => {
                write!(f, "a line of the message is longer than {max} characters")
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
    ) -> Result<Rendered, RenderError> {
        let mut render = self
            .templates
            .message(&self.request.substitutions, group.own);
        let result = match &self.body {
            Body::Rfc5322 => self.render_rfc5322(&mut render, principal),
            Body::Builder {
                builder,
                headers,
                attachments,
                from_domain,
            } => render_builder(
                builder,
                headers,
                attachments,
                from_domain,
                group.own,
                &mut render,
            ),
        };
        let max = self.limits.max_message_size;
        match result {
            Err(RenderError::TooLarge(_)) => Err(RenderError::TooLarge(max)),
            Ok(rendered) if rendered.data.len() > max => Err(RenderError::TooLarge(max)),
            other => other,
        }
    }

    fn render_rfc5322(
        &self,
        render: &mut MessageRender<'_>,
        principal: &Principal,
    ) -> Result<Rendered, RenderError> {
        let mut text = render.render(RAW_HEAD)?;
        text.push_str(&render.render(RAW_BODY)?);
        let text = crlf(&text);
        if long_line(&text, self.limits.max_line).is_some() {
            return Err(RenderError::LineTooLong(self.limits.max_line - 2));
        }
        let data = text.into_bytes();
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

/// Renders a header template; the value is one line.
fn header(render: &mut MessageRender<'_>, template: &str) -> Result<String, RenderError> {
    let value = render.render(template)?;
    if value.contains(['\r', '\n']) {
        return Err(RenderError::Template(format!(
            "{template}: the value would put CR or LF into a header"
        )));
    }
    Ok(value)
}

fn render_builder(
    builder: &Builder,
    headers: &[(String, String)],
    attachments: &[Part<'_>],
    from_domain: &str,
    recipient: Option<&Recipient>,
    render: &mut MessageRender<'_>,
) -> Result<Rendered, RenderError> {
    let mut message = MessageBuilder::new().from(address(&builder.from));
    let has = |name: &str| headers.iter().any(|(h, _)| h == name);
    if let (Some(recipient), false) = (recipient, has("To")) {
        message = message.to(Address::new_address(
            recipient.name.as_deref().filter(|n| !n.is_empty()),
            recipient.email.as_str(),
        ));
    }
    if let Some(reply_to) = &builder.reply_to {
        message = message.reply_to(address(reply_to));
    }
    if builder.subject.is_some() && !has("Subject") {
        message = message.subject(Text::new(header(render, "content.subject")?));
    }
    for (name, template) in headers {
        let value = header(render, template)?;
        message = match name.as_str() {
            "To" => message.header("To", Raw::new(value)),
            _ => message.header(name.clone(), Text::new(value)),
        };
    }
    if !has("Message-ID") {
        message = message.message_id(MessageId::new(format!("{}@{from_domain}", trace_id())));
    }
    if !has("Date") {
        message = message.date(Date::now());
    }
    let text = |name: &str, render: &mut MessageRender<'_>| render.render(name);
    let text_body = builder
        .text_body
        .as_ref()
        .map(|_| text("content.text_body", render))
        .transpose()?;
    let amp = builder
        .amp_html_body
        .as_ref()
        .map(|_| text("content.amp_html_body", render))
        .transpose()?;
    let html = builder
        .html_body
        .as_ref()
        .map(|_| text("content.html_body", render))
        .transpose()?;
    if let Some(body) = mime_tree(text_body, amp, html, attachments) {
        message = message.body(body);
    }
    let mut data = Vec::new();
    message.serialize(&mut data);
    Ok(Rendered {
        data,
        has_message_id: true,
        has_date: true,
    })
}

/// multipart/mixed [ multipart/alternative [ text, x-amp-html,
/// multipart/related [ html, inline parts ] ], attachments ], each level
/// only when it has more than one part.
fn mime_tree<'x>(
    text: Option<String>,
    amp: Option<String>,
    html: Option<String>,
    attachments: &'x [Part<'_>],
) -> Option<MimePart<'x>> {
    let (inline, attached): (Vec<&Part>, Vec<&Part>) = attachments
        .iter()
        .partition(|p| p.attachment.content_id.is_some());
    let mut html_part = html.map(|h| MimePart::new("text/html", h));
    if !inline.is_empty() {
        let mut related: Vec<MimePart> = html_part.take().into_iter().collect();
        related.extend(inline.into_iter().map(attachment_part));
        html_part = Some(multipart("multipart/related", related));
    }
    let alternatives: Vec<MimePart> = [
        text.map(|t| MimePart::new("text/plain", t)),
        amp.map(|a| MimePart::new("text/x-amp-html", a)),
        html_part,
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut body = match alternatives.len() {
        0 => None,
        1 => alternatives.into_iter().next(),
        _ => Some(multipart("multipart/alternative", alternatives)),
    };
    if !attached.is_empty() {
        let mut mixed: Vec<MimePart> = body.take().into_iter().collect();
        mixed.extend(attached.into_iter().map(attachment_part));
        body = Some(multipart("multipart/mixed", mixed));
    }
    body
}

fn multipart<'x>(kind: &'static str, parts: Vec<MimePart<'x>>) -> MimePart<'x> {
    MimePart::new(ContentType::new(kind), BodyPart::Multipart(parts))
}

fn attachment_part<'x>(part: &'x Part<'_>) -> MimePart<'x> {
    let (kind, params) = &part.content_type;
    let mut content_type = ContentType::new(kind.as_str());
    for (key, value) in params {
        content_type = content_type.attribute(key.as_str(), value.as_str());
    }
    let mut disposition = ContentType::new(match part.attachment.content_id {
        Some(_) => "inline",
        None => "attachment",
    });
    let file_name = part.attachment.file_name.as_deref();
    if let Some(name) = file_name.or(part.attachment.content_id.is_none().then_some("attachment")) {
        disposition = disposition.attribute("filename", name);
    }
    let mut mime = MimePart::new(content_type, BodyPart::Binary(part.data.as_slice().into()))
        .header("Content-Disposition", disposition);
    if let Some(cid) = &part.attachment.content_id {
        mime = mime.cid(cid.as_str());
    }
    mime
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

/// `type/subtype; key=value; key="value"`, the type lowercased; `None`
/// when it is not one.
fn parse_content_type(text: &str) -> Option<(String, Vec<(String, String)>)> {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let mut pieces = text.split(';');
    let kind = pieces.next()?.trim();
    let (main, sub) = kind.split_once('/')?;
    if !token(main) || !token(sub) {
        return None;
    }
    let mut params = Vec::new();
    for piece in pieces {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        let (key, value) = piece.split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if !token(key) || value.is_empty() || value.chars().any(|c| c.is_control() || c == '"') {
            return None;
        }
        params.push((key.to_ascii_lowercase(), value.to_string()));
    }
    Some((kind.to_ascii_lowercase(), params))
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
mod tests;
