//! An event's `meta` from the message itself: From:, Subject:, and the
//! customer's `X-Meta-<name>: <value>` headers.

use std::sync::LazyLock;

use fleet::event::Meta;
use memchr::memmem::Finder;

/// The searcher, built once (building one costs more than a short search).
static CRLF: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n"));

/// At most this many metadata entries and this long a value are kept.
const MAX_METADATA: usize = 32;
const MAX_VALUE: usize = 1024;

/// `meta` for a message of `cluster` submitted with `credential`.
///
/// One pass over the header section: only the From: and Subject: fields
/// are read, and only when they are not written plainly (RFC 2047 words,
/// quoting, comments, folds) do they go through mail-parser, so a message's
/// Received:, Date: and other fields cost nothing here.
pub fn of_message(data: &[u8], cluster: &str, credential: &str) -> Meta {
    let mut meta = Meta {
        cluster: cluster.to_string(),
        credential: (!credential.is_empty()).then(|| credential.to_string()),
        ..Meta::default()
    };
    let (mut picked, mut x_metas) = (Vec::new(), 0);
    for field in fields(header_block(data)) {
        let name = field.name();
        if name.eq_ignore_ascii_case(b"from") || name.eq_ignore_ascii_case(b"subject") {
            picked.push(field);
        } else if x_metas < MAX_METADATA {
            // The first MAX_METADATA such fields; a repeated name, the last.
            if let Some((key, value)) = x_meta(&field) {
                x_metas += 1;
                meta.metadata.insert(key, value);
            }
        }
    }
    (meta.from, meta.subject) = plain(&picked).unwrap_or_else(|| parsed(&picked));
    meta
}

/// From:'s address and the Subject: through mail-parser.
fn parsed(picked: &[Field<'_>]) -> (Option<String>, Option<String>) {
    let mut head = Vec::new();
    for field in picked {
        head.extend_from_slice(field.raw);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let Some(message) = mail_parser::MessageParser::default().parse_headers(&head[..]) else {
        return (None, None);
    };
    let from = message
        .from()
        .and_then(|from| from.first())
        .and_then(|addr| addr.address())
        .map(str::to_string);
    (from, message.subject().map(|s| clip(s.trim())))
}

/// From:'s address and the Subject: when each is there at most once and
/// written plainly, as mail-parser would read them; else `None`.
fn plain(picked: &[Field<'_>]) -> Option<(Option<String>, Option<String>)> {
    let (mut from, mut subject) = (None, None);
    for field in picked {
        let value = plain_value(field)?;
        if field.name().eq_ignore_ascii_case(b"from") {
            if from.replace(plain_address(value)?).is_some() {
                return None;
            }
        } else if subject.replace(clip(value)).is_some() {
            return None;
        }
    }
    Some((from, subject))
}

/// A field's value when it is one line of printable ASCII without an
/// encoded word, trimmed and not empty.
fn plain_value<'a>(field: &Field<'a>) -> Option<&'a str> {
    let raw = field.raw;
    let value = &raw[memchr::memchr(b':', raw)? + 1..];
    let printable = value.iter().all(|b| (0x20..0x7f).contains(b));
    if !printable || value.windows(2).any(|w| w == b"=?") {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?.trim();
    (!value.is_empty()).then_some(value)
}

/// The address of a From: holding one mailbox, read by the strict reader
/// the sender policy and DKIM use; anything it refuses (groups, several
/// mailboxes, stray tokens) is left to mail-parser.
fn plain_address(value: &str) -> Option<String> {
    crate::from_header::parse_mailbox("From", value.as_bytes())
        .ok()
        .map(|mailbox| mailbox.address)
}

/// The message's header section (up to and including the blank line), as
/// the sender policy reads it; without a blank line, its first 64 KiB.
fn header_block(data: &[u8]) -> &[u8] {
    let head = crate::from_header::header_section(data);
    if head.ends_with(b"\r\n\r\n") || head.len() == 2 {
        head
    } else {
        &head[..head.len().min(64 << 10)]
    }
}

fn clip(text: &str) -> String {
    text.chars().take(MAX_VALUE).collect()
}

/// One header field as written: its lines, folds included, without the
/// last CRLF.
struct Field<'a> {
    raw: &'a [u8],
}

impl<'a> Field<'a> {
    fn name(&self) -> &'a [u8] {
        let raw = self.raw;
        memchr::memchr(b':', raw).map_or(raw, |at| &raw[..at])
    }

    /// The value unfolded: continuation lines joined by one space, trimmed.
    fn value(&self) -> String {
        let raw = self.raw;
        let value = memchr::memchr(b':', raw).map_or(&raw[..0], |at| &raw[at + 1..]);
        let text = String::from_utf8_lossy(value);
        let mut out = String::with_capacity(text.len());
        for (i, line) in text.split("\r\n").enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(line.trim());
        }
        out.trim().to_string()
    }
}

/// The fields of a header section, in order.
fn fields(head: &[u8]) -> impl Iterator<Item = Field<'_>> {
    let mut rest = head;
    std::iter::from_fn(move || loop {
        if rest.is_empty() || rest.starts_with(b"\r\n") {
            return None;
        }
        // A field ends at a CRLF not followed by a space or tab.
        let mut end = 0;
        let found = loop {
            match CRLF.find(&rest[end..]) {
                Some(at) => {
                    end += at;
                    if !matches!(rest.get(end + 2), Some(b' ' | b'\t')) {
                        break true;
                    }
                    end += 2;
                }
                None => break false,
            }
        };
        let end = if found { end } else { rest.len() };
        let raw = &rest[..end];
        rest = rest.get(end + 2..).unwrap_or_default();
        // A line without a colon (not a field) is skipped.
        if memchr::memchr(b':', raw).is_some() {
            return Some(Field { raw });
        }
    })
}

/// An `X-Meta-<name>` field: the name lower-cased without prefix, the
/// value unfolded and clipped.
fn x_meta(field: &Field<'_>) -> Option<(String, String)> {
    let name = field.name();
    let prefix = b"x-meta-";
    if name.len() <= prefix.len() || !name[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let key = String::from_utf8_lossy(&name[prefix.len()..]).to_ascii_lowercase();
    Some((key, clip(&field.value())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_subject_and_x_meta_headers() {
        let data = b"Received: from x\r\nFrom: \"App\" <app@example.com>\r\n\
            Subject: =?utf-8?q?caf=C3=A9?=\r\nX-Meta-Campaign: spring\r\n\
            X-META-User-Id: 42\r\n  and more\r\n\r\nX-Meta-Body: no\r\n";
        let meta = of_message(data, "abc", "user");
        assert_eq!(meta.from.as_deref(), Some("app@example.com"));
        assert_eq!(meta.subject.as_deref(), Some("café"));
        assert_eq!(meta.cluster, "abc");
        assert_eq!(meta.credential.as_deref(), Some("user"));
        assert_eq!(
            meta.metadata.get("campaign").map(String::as_str),
            Some("spring")
        );
        assert_eq!(
            meta.metadata.get("user-id").map(String::as_str),
            Some("42 and more")
        );
        assert!(!meta.metadata.contains_key("body"));
    }

    #[test]
    fn plain_fields_read_as_mail_parser_reads_them() {
        let cases = [
            "From: App <app@example.com>\r\nSubject: bench 12\r\n",
            "From: app@example.com\r\nSubject:   two  spaces  inside \r\n",
            "From: <a.b+c@sub.example.com>\r\n",
            "Subject: only a subject\r\n",
            "From: Jane_Doe-2 <j@example.org>\r\nSubject:\r\n",
            "From: \"Quoted, Name\" <q@example.com>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n",
            "From: a@example.com (comment)\r\n",
            "From: a@example.com, b@example.com\r\n",
            "From: Group: a@example.com;\r\n",
            "From: App <app@example.com>\r\nFrom: Other <o@example.com>\r\n",
            "From: no-at-sign\r\nSubject: tab\there\r\n",
            "From: App <app@example.com> trailing\r\n",
            "From: Mixed.Case@Example.COM\r\n",
            "From: \"Jane Q. Doe\" <jane@example.com> (work)\r\nSubject: hi\r\n",
            "From: <a@b@example.com>\r\n",
        ];
        for case in cases {
            let data = format!("{case}\r\nbody\r\n");
            let picked: Vec<Field<'_>> = fields(header_block(data.as_bytes()))
                .filter(|f| {
                    let name = f.name();
                    name.eq_ignore_ascii_case(b"from") || name.eq_ignore_ascii_case(b"subject")
                })
                .collect();
            let meta = of_message(data.as_bytes(), "c", "");
            assert_eq!((meta.from, meta.subject), parsed(&picked), "{case:?}");
        }
        // The bench's and most messages' fields take the plain path.
        let plain_case = "From: App <app@example.com>\r\nSubject: bench 12\r\n\r\n";
        let picked: Vec<Field<'_>> = fields(header_block(plain_case.as_bytes())).collect();
        assert!(plain(&picked).is_some());
    }

    #[test]
    fn folded_from_repeated_and_bounded_x_meta() {
        let mut data =
            String::from("From: App\r\n <app@example.com>\r\nSubject: two\r\n\tlines\r\n");
        for n in 0..40 {
            data.push_str(&format!("X-Meta-K{n}: v{n}\r\n"));
        }
        data.push_str("x-meta-k0: again\r\nnot a field\r\n\r\nbody\r\n");
        let meta = of_message(data.as_bytes(), "c", "");
        assert_eq!(meta.from.as_deref(), Some("app@example.com"));
        assert_eq!(meta.subject.as_deref(), Some("two lines"));
        assert_eq!(meta.credential, None);
        assert_eq!(meta.metadata.len(), MAX_METADATA);
        assert_eq!(meta.metadata.get("k31").map(String::as_str), Some("v31"));
        assert!(!meta.metadata.contains_key("k32"));
        // An empty header section: the body's field-like lines are not read.
        let meta = of_message(b"\r\nFrom: b@example.com\r\nX-Meta-k: v\r\n\r\n", "c", "u");
        assert_eq!(meta.from, None);
        assert!(meta.metadata.is_empty());
        // No header section at all: nothing read, nothing broken.
        let meta = of_message(b"just text without fields", "c", "u");
        assert_eq!(meta.from, None);
        assert!(meta.metadata.is_empty());
    }
}
