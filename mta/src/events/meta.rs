//! An event's `meta` from the message itself: From:, Subject:, and the
//! customer's `X-Meta-<name>: <value>` headers.

use std::collections::BTreeMap;

use fleet::event::Meta;

/// At most this many metadata entries and this long a value are kept.
const MAX_METADATA: usize = 32;
const MAX_VALUE: usize = 1024;

/// `meta` for a message of `cluster` submitted with `credential`.
pub fn of_message(data: &[u8], cluster: &str, credential: &str) -> Meta {
    let head = header_block(data);
    let mut meta = Meta {
        cluster: cluster.to_string(),
        credential: (!credential.is_empty()).then(|| credential.to_string()),
        ..Meta::default()
    };
    if let Some(message) = mail_parser::MessageParser::default().parse_headers(head) {
        meta.from = message
            .from()
            .and_then(|from| from.first())
            .and_then(|addr| addr.address())
            .map(str::to_string);
        meta.subject = message.subject().map(|s| clip(s.trim()));
    }
    meta.metadata = x_meta(head);
    meta
}

/// The message's header section (up to and including the blank line).
fn header_block(data: &[u8]) -> &[u8] {
    memchr::memmem::find(data, b"\r\n\r\n")
        .map(|at| &data[..at + 4])
        .unwrap_or(&data[..data.len().min(64 << 10)])
}

fn clip(text: &str) -> String {
    text.chars().take(MAX_VALUE).collect()
}

/// Every `X-Meta-<name>` field, unfolded, name lower-cased without prefix.
fn x_meta(head: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_string(), value.trim().to_string()));
        }
    }
    fields
        .into_iter()
        .filter_map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            let key = lower.strip_prefix("x-meta-")?;
            (!key.is_empty()).then(|| (key.to_string(), clip(&value)))
        })
        .take(MAX_METADATA)
        .collect()
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
}
