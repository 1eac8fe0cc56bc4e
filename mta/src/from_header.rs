//! The one strict reader of a message's originator fields (RFC 5322 §3.6.2,
//! §3.4): the sender policy and the DKIM signer both read the author's
//! domain here, so what is checked is what is signed, and both are what a
//! receiver (Gmail, Python's `email.policy.default`) reads.
//!
//! Public API:
//! - [`sender_domain`]`(header_block) -> Result<MailboxDomain, FromError>`:
//!   the From: mailbox's address and lower-cased domain (the first one when
//!   a Sender: allows several). This is what DKIM signs for.
//! - [`read_header_block`]`(header_block) -> Result<Originators, FromError>`:
//!   every originator field (From:, Sender:, Resent-From:, Resent-Sender:),
//!   whether Message-ID:/Date: are present, and where Return-Path: fields
//!   are (the ingress removes them). The sender policy uses this.
//! - [`parse_address`]`(field, text)`: one bare `local@domain` (the HTTP
//!   builder's `from.email` and `reply_to.email`), same rules.
//! - [`parse_mailbox`]`(field, value)`: one field value holding exactly one
//!   mailbox (`Name <a@b>` or `a@b`).
//! - [`header_section`]`(message)`: the header block of a message.
//!
//! Rules: exactly one From: field; exactly one mailbox in it (several need
//! a Sender: with one mailbox); a group or an empty list is refused; an
//! addr-spec has exactly one `@` (a quoted local part counts too); no
//! tokens outside the display name, the angle brackets and comments;
//! comments never count as the address; encoded-words (`=?…?=`) are
//! display-name only; the domain is a host name (no address literal); a
//! header line whose name has inner whitespace (`F rom:`) or no colon is
//! malformed, which refuses the message. [`FromError`] displays a sentence
//! naming the problem; SMTP answers it with `550 5.7.1`, HTTP with 422.

use std::ops::Range;

/// A mailbox read from a field: `local@domain` as written, and its domain
/// lower-cased without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxDomain {
    pub address: String,
    pub domain: String,
}

/// The originator fields of a header block, read strictly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Originators {
    /// The From: mailboxes, at least one.
    pub from: Vec<MailboxDomain>,
    pub sender: Option<MailboxDomain>,
    /// Every mailbox of every Resent-From: and Resent-Sender: field.
    pub resent: Vec<MailboxDomain>,
    pub has_message_id: bool,
    pub has_date: bool,
    /// Byte ranges (whole folded fields with their CRLF) of Return-Path:.
    pub return_path: Vec<Range<usize>>,
}

impl Originators {
    /// `message` (whose header block was read) without its Return-Path:
    /// fields.
    pub fn strip_return_path(&self, message: Vec<u8>) -> Vec<u8> {
        if self.return_path.is_empty() {
            return message;
        }
        let mut out = Vec::with_capacity(message.len());
        let mut at = 0;
        for range in &self.return_path {
            out.extend_from_slice(&message[at..range.start]);
            at = range.end;
        }
        out.extend_from_slice(&message[at..]);
        out
    }
}

/// Why the originator fields cannot be read unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromError {
    #[error("a From: header is required")]
    Missing,
    #[error("a message must have exactly one {field} header field, not {count}")]
    SeveralFields { field: &'static str, count: usize },
    #[error("header line {line} (`{text}`) is not a header field: a field name is printable ASCII without spaces, followed by a colon")]
    MalformedField { line: usize, text: String },
    #[error("the {field} field is a group (`name: …;`), not a mailbox")]
    Group { field: &'static str },
    #[error("the {field} field holds no mailbox")]
    Empty { field: &'static str },
    #[error("the From: field names {count} mailboxes: several need a Sender: field naming one allowed mailbox")]
    SeveralMailboxes { count: usize },
    #[error("the {field} field must hold exactly one mailbox, not {count}")]
    NotOneMailbox { field: &'static str, count: usize },
    #[error("the address in the {field} field must have exactly one @, not {count}")]
    AtSigns { field: &'static str, count: usize },
    #[error(
        "the {field} field has `{text}` outside the display name, the angle brackets and comments"
    )]
    Outside { field: &'static str, text: String },
    #[error("the address in the {field} field contains an encoded-word (=?…?=): those may only be a display name")]
    EncodedWord { field: &'static str },
    #[error("the {field} field cannot be read: {problem}")]
    Syntax {
        field: &'static str,
        problem: &'static str,
    },
}

/// The header section of `message`: up to and including the empty line.
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &message[..2];
    }
    // Built once: building a searcher costs more than a short search, and
    // every message passes here (policy, DKIM, event meta).
    static BLANK_LINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    match BLANK_LINE.find(message) {
        Some(end) => &message[..end + 4],
        None => message,
    }
}

/// The From: mailbox of a header block: its address and domain.
pub fn sender_domain(header_block: &[u8]) -> Result<MailboxDomain, FromError> {
    let mut originators = read_header_block(header_block)?;
    Ok(originators.from.swap_remove(0))
}

/// One header field: its name and its value's range in the block.
struct Field<'a> {
    name: &'a [u8],
    value: Range<usize>,
    whole: Range<usize>,
}

/// Every field of a header block, refusing malformed lines.
fn fields(block: &[u8]) -> Result<Vec<Field<'_>>, FromError> {
    let mut fields: Vec<Field> = Vec::new();
    let mut at = 0;
    let mut line_no = 0;
    while at < block.len() {
        line_no += 1;
        let end = memchr::memmem::find(&block[at..], b"\r\n").map_or(block.len(), |i| at + i + 2);
        let line = &block[at..end];
        let text = line.strip_suffix(b"\r\n").unwrap_or(line);
        if text.is_empty() {
            break;
        }
        if matches!(text[0], b' ' | b'\t') {
            let Some(field) = fields.last_mut() else {
                return Err(malformed(line_no, text));
            };
            field.value.end = at + text.len();
            field.whole.end = end;
        } else {
            let colon = memchr::memchr(b':', text).ok_or_else(|| malformed(line_no, text))?;
            let name = &text[..colon];
            if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
                return Err(malformed(line_no, text));
            }
            fields.push(Field {
                name,
                value: at + colon + 1..at + text.len(),
                whole: at..end,
            });
        }
        at = end;
    }
    Ok(fields)
}

fn malformed(line: usize, text: &[u8]) -> FromError {
    let shown: String = String::from_utf8_lossy(text)
        .chars()
        .take(60)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    FromError::MalformedField { line, text: shown }
}

/// Reads every originator field of `block` (see the module's rules).
pub fn read_header_block(block: &[u8]) -> Result<Originators, FromError> {
    let mut out = Originators::default();
    let mut from = Vec::new();
    let mut senders = Vec::new();
    for field in fields(block)? {
        let value = &block[field.value.clone()];
        let is = |name: &str| field.name.eq_ignore_ascii_case(name.as_bytes());
        if is("From") {
            from.push(value);
        } else if is("Sender") {
            senders.push(value);
        } else if is("Resent-From") {
            out.resent
                .extend(parse_mailbox_list("Resent-From:", value)?);
        } else if is("Resent-Sender") {
            out.resent.push(parse_mailbox("Resent-Sender:", value)?);
        } else if is("Message-ID") {
            out.has_message_id = true;
        } else if is("Date") {
            out.has_date = true;
        } else if is("Return-Path") {
            out.return_path.push(field.whole.clone());
        }
    }
    let from = match from.as_slice() {
        [] => return Err(FromError::Missing),
        [one] => *one,
        many => return Err(several("From:", many.len())),
    };
    out.from = parse_mailbox_list("From:", from)?;
    out.sender = match senders.as_slice() {
        [] => None,
        [one] => Some(parse_mailbox("Sender:", one)?),
        many => return Err(several("Sender:", many.len())),
    };
    if out.from.len() > 1 && out.sender.is_none() {
        return Err(FromError::SeveralMailboxes {
            count: out.from.len(),
        });
    }
    Ok(out)
}

fn several(field: &'static str, count: usize) -> FromError {
    FromError::SeveralFields { field, count }
}

/// A field value holding exactly one mailbox.
pub fn parse_mailbox(field: &'static str, value: &[u8]) -> Result<MailboxDomain, FromError> {
    let mut list = parse_mailbox_list(field, value)?;
    match list.len() {
        1 => Ok(list.swap_remove(0)),
        count => Err(FromError::NotOneMailbox { field, count }),
    }
}

/// A bare `local@domain`, as the HTTP builder's address fields hold.
pub fn parse_address(field: &'static str, text: &str) -> Result<MailboxDomain, FromError> {
    let tokens = tokenize(field, text.as_bytes())?;
    if tokens
        .iter()
        .any(|t| matches!(t, Tok::Space | Tok::Special(b'<')))
    {
        return Err(FromError::Outside {
            field,
            text: text.to_string(),
        });
    }
    addr_spec(field, &tokens)
}

/// A mailbox-list (RFC 5322 §3.4): mailboxes separated by commas.
pub fn parse_mailbox_list(
    field: &'static str,
    value: &[u8],
) -> Result<Vec<MailboxDomain>, FromError> {
    let tokens = tokenize(field, value)?;
    let group = tokens
        .iter()
        .position(|t| matches!(t, Tok::Special(b':' | b';')));
    let angle = tokens.iter().position(|t| *t == Tok::Special(b'<'));
    if let Some(at) = group {
        if angle.is_none_or(|angle| at < angle) {
            return Err(FromError::Group { field });
        }
    }
    if tokens.iter().all(|t| *t == Tok::Space) {
        return Err(FromError::Empty { field });
    }
    tokens
        .split(|t| *t == Tok::Special(b','))
        .map(|part| mailbox(field, trim(part)))
        .collect()
}

fn trim(mut tokens: &[Tok]) -> &[Tok] {
    while let [Tok::Space, rest @ ..] = tokens {
        tokens = rest;
    }
    while let [rest @ .., Tok::Space] = tokens {
        tokens = rest;
    }
    tokens
}

/// name-addr or addr-spec.
fn mailbox(field: &'static str, tokens: &[Tok]) -> Result<MailboxDomain, FromError> {
    if tokens.is_empty() {
        return Err(FromError::Syntax {
            field,
            problem: "an empty entry between commas",
        });
    }
    let Some(open) = tokens.iter().position(|t| *t == Tok::Special(b'<')) else {
        return addr_spec(field, tokens);
    };
    let close = tokens.iter().position(|t| *t == Tok::Special(b'>'));
    let Some(close) = close.filter(|c| *c > open) else {
        return Err(FromError::Syntax {
            field,
            problem: "an angle bracket is not closed",
        });
    };
    if close + 1 != tokens.len() {
        return Err(outside(field, &tokens[close + 1..]));
    }
    let display = &tokens[..open];
    if display.iter().any(|t| {
        !matches!(
            t,
            Tok::Atom(_) | Tok::Quoted(_) | Tok::Space | Tok::Special(b'.')
        )
    }) {
        return Err(outside(field, display));
    }
    let inner = trim(&tokens[open + 1..close]);
    if inner
        .iter()
        .any(|t| matches!(t, Tok::Special(b'<' | b'>' | b':' | b';')))
    {
        return Err(outside(field, inner));
    }
    addr_spec(field, inner)
}

fn outside(field: &'static str, tokens: &[Tok]) -> FromError {
    let text: String = tokens.iter().map(Tok::text).collect();
    FromError::Outside {
        field,
        text: text.trim().chars().take(80).collect(),
    }
}

/// `local@domain` from tokens: words joined by dots, one `@`, a host name.
fn addr_spec(field: &'static str, tokens: &[Tok]) -> Result<MailboxDomain, FromError> {
    let tokens = trim(tokens);
    let quoted_at = tokens
        .iter()
        .filter(|t| matches!(t, Tok::Quoted(q) if q.contains('@')))
        .count();
    let ats: Vec<usize> = (0..tokens.len())
        .filter(|i| tokens[*i] == Tok::Special(b'@'))
        .collect();
    if ats.len() + quoted_at != 1 {
        return Err(FromError::AtSigns {
            field,
            count: ats.len() + quoted_at,
        });
    }
    if tokens.iter().any(|t| t.text().contains("=?")) {
        return Err(FromError::EncodedWord { field });
    }
    let (local, domain) = (&tokens[..ats[0]], &tokens[ats[0] + 1..]);
    let local = dotted(field, local, true)?;
    let domain = dotted(field, domain, false)?;
    if !domain
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(FromError::Syntax {
            field,
            problem: "the domain is not a host name",
        });
    }
    Ok(MailboxDomain {
        address: format!("{local}@{domain}"),
        domain: domain.to_ascii_lowercase(),
    })
}

/// Words separated by dots (spaces and comments allowed around them, never
/// between two words); quoted strings only in a local part.
fn dotted(field: &'static str, tokens: &[Tok], local: bool) -> Result<String, FromError> {
    let mut out = String::new();
    let mut want_word = true;
    for token in tokens {
        match token {
            Tok::Space => {}
            Tok::Atom(word) if want_word => {
                out.push_str(word);
                want_word = false;
            }
            Tok::Quoted(word) if want_word && local => {
                out.push('"');
                out.push_str(word);
                out.push('"');
                want_word = false;
            }
            Tok::Special(b'.') if !want_word => {
                out.push('.');
                want_word = true;
            }
            Tok::Special(b'[') if !local => {
                return Err(FromError::Syntax {
                    field,
                    problem: "an address literal is not allowed as the domain",
                })
            }
            _ if want_word => {
                return Err(FromError::Syntax {
                    field,
                    problem: if local {
                        "the local part of the address is empty or malformed"
                    } else {
                        "the domain of the address is empty or malformed"
                    },
                })
            }
            _ => return Err(outside(field, tokens)),
        }
    }
    if want_word {
        return Err(FromError::Syntax {
            field,
            problem: if local {
                "the local part of the address is empty or ends with a dot"
            } else {
                "the domain of the address is empty or ends with a dot"
            },
        });
    }
    Ok(out)
}

/// A lexical token of a structured field; comments and folding whitespace
/// are one `Space`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Atom(String),
    Quoted(String),
    Special(u8),
    Space,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Atom(a) => a.clone(),
            Tok::Quoted(q) => format!("\"{q}\""),
            Tok::Special(s) => char::from(*s).to_string(),
            Tok::Space => " ".to_string(),
        }
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Tokens of an unfolded field value; comments become spaces.
fn tokenize(field: &'static str, value: &[u8]) -> Result<Vec<Tok>, FromError> {
    let syntax = |problem| FromError::Syntax { field, problem };
    let text = std::str::from_utf8(value).map_err(|_| syntax("it is not UTF-8"))?;
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                if matches!(c, '\r' | '\n') && !folding(c, &mut chars) {
                    return Err(syntax("it holds a bare CR or LF"));
                }
                space(&mut tokens);
            }
            '(' => {
                comment(&mut chars).ok_or(syntax("a comment is not closed"))?;
                space(&mut tokens);
            }
            '"' => tokens.push(Tok::Quoted(
                quoted(&mut chars).ok_or(syntax("a quoted string is not closed"))?,
            )),
            '<' | '>' | '[' | ']' | ':' | ';' | '@' | '\\' | ',' | '.' | ')' => {
                tokens.push(Tok::Special(c as u8))
            }
            c if is_atext(c) => {
                let mut atom = String::from(c);
                while let Some(next) = chars.next_if(|n| is_atext(*n)) {
                    atom.push(next);
                }
                tokens.push(Tok::Atom(atom));
            }
            _ => return Err(syntax("it holds a control character")),
        }
    }
    Ok(tokens)
}

/// A CR must be followed by LF and then a space or tab (folding).
fn folding(c: char, chars: &mut std::iter::Peekable<std::str::Chars>) -> bool {
    if c == '\n' {
        return false;
    }
    chars.next_if_eq(&'\n').is_some() && matches!(chars.peek(), Some(' ' | '\t'))
}

fn space(tokens: &mut Vec<Tok>) {
    if tokens.last() != Some(&Tok::Space) {
        tokens.push(Tok::Space);
    }
}

/// Skips a (possibly nested) comment after its `(`.
fn comment(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<()> {
    let mut depth = 1;
    while depth > 0 {
        match chars.next()? {
            '\\' => {
                chars.next()?;
            }
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c.is_control() && !matches!(c, '\t' | '\r' | '\n') => return None,
            _ => {}
        }
    }
    Some(())
}

/// A quoted string's content after its `"`, quoted-pairs resolved.
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<String> {
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            '\r' | '\n' => {}
            c if c.is_control() && c != '\t' => return None,
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(value: &str) -> Result<String, FromError> {
        sender_domain(format!("From:{value}\r\n\r\n").as_bytes()).map(|m| m.domain)
    }

    #[test]
    fn valid_forms() {
        for (value, expected) in [
            (" a@Example.COM", "example.com"),
            (" <a@b.example>", "b.example"),
            (" \"Boss, Big\" <a@b.example>", "b.example"),
            (" \"boss@evil.example\" <a@b.example>", "b.example"),
            (" Boss (x@evil.example) <a@b.example>", "b.example"),
            (" a@b.example (boss@evil.example)", "b.example"),
            (" =?utf-8?q?a=40evil.example?= <a@b.example>", "b.example"),
            (" John Q. Public <john.q@b.example>", "b.example"),
            ("\r\n  a@b.example", "b.example"),
        ] {
            assert_eq!(domain(value).as_deref(), Ok(expected), "{value}");
        }
    }

    #[test]
    fn hostile_forms() {
        for value in [
            " <boss@other.example> you@b.example",
            " boss@other.example you@b.example",
            " <a@other.example@b.example>",
            " boss@other.example: you@b.example;",
            " undisclosed:;",
            " ",
            " a@b.example, c@b.example",
            " =?utf-8?q?boss?=@b.example",
            " \"boss@other.example\"@b.example",
            " a@[127.0.0.1]",
            " <a@b.example",
            " a@b.example.",
            " a(@b.example",
            " a@b.example <c@d.example>",
            " <@relay.example:a@b.example>",
            " a@b_c.example",
            " =?utf-8?q?a@evil.example?= <a@b.example>",
        ] {
            assert!(domain(value).is_err(), "{value} was accepted");
        }
        let msg = |block: &[u8]| sender_domain(block).unwrap_err().to_string();
        assert!(msg(b"F rom: a@b.example\r\n\r\n").contains("line 1"));
        assert!(msg(b"From: a@b.example\r\nfrom: a@b.example\r\n\r\n").contains("not 2"));
        assert!(msg(b"Subject: x\r\n\r\n").contains("required"));
    }

    #[test]
    fn sender_allows_several_and_return_path_is_found() {
        let block = b"Return-Path: <x@y.example>\r\nFrom: a@b.example, c@d.example\r\nSender: a@b.example\r\nReturn-Path:\r\n <z@y>\r\n\r\n";
        let read = read_header_block(block).unwrap();
        assert_eq!(read.from.len(), 2);
        assert_eq!(read.sender.as_ref().unwrap().domain, "b.example");
        let stripped = read.strip_return_path(block.to_vec());
        assert_eq!(
            stripped,
            b"From: a@b.example, c@d.example\r\nSender: a@b.example\r\n\r\n"
        );
        assert!(parse_address("from.email", "a@b.example").is_ok());
        assert!(parse_address("from.email", "a@b.example x@y.example").is_err());
        assert!(parse_address("from.email", "<a@b.example>").is_err());
    }
}
