//! Delivery status notifications (RFC 3464) to the envelope sender after a
//! bounce or an expiry, built with mail-builder, sent from the null sender.

use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

use crate::events::EventKind;
use crate::message::NewMessage;
use crate::spool::{record, Job, StoredMessage};

/// The first `x.y.z` enhanced status code in `text`.
fn enhanced_code(text: &str) -> Option<&str> {
    text.split(|c: char| c.is_whitespace() || c == ':' || c == '(' || c == ')')
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn original_headers(data: &[u8]) -> &[u8] {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(data.len().min(64 * 1024));
    &data[..end]
}

/// One line, no CR/LF, for a DSN field.
fn field(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .take(900)
        .collect()
}

pub fn build(
    message: &StoredMessage,
    job: &Job,
    kind: EventKind,
    why: &str,
    reporting_mta: &str,
) -> NewMessage {
    let recipient = message
        .recipients
        .get(job.rcpt as usize)
        .cloned()
        .unwrap_or_default();
    let (status, what) = match kind {
        EventKind::Expiration => (
            enhanced_code(why)
                .filter(|c| c.starts_with('4'))
                .unwrap_or("4.4.7")
                .to_string(),
            "could not be delivered in time and has expired",
        ),
        _ => (
            enhanced_code(why)
                .filter(|c| c.starts_with('5'))
                .unwrap_or("5.0.0")
                .to_string(),
            "was refused permanently",
        ),
    };
    let human = format!(
        "This is the mail system at {reporting_mta}.\r\n\r\n\
         Your message {id} to <{rcpt}> {what}.\r\n\r\n\
         The reason: {why}\r\n",
        id = job.id(),
        rcpt = field(&recipient),
        why = field(why),
    );
    let status_part = format!(
        "Reporting-MTA: dns; {reporting_mta}\r\n\
         X-Queue-ID: {id}\r\n\
         \r\n\
         Final-Recipient: rfc822; {rcpt}\r\n\
         Action: failed\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; {why}\r\n",
        id = job.id(),
        rcpt = field(&recipient),
        why = field(why),
    );
    let headers = String::from_utf8_lossy(original_headers(&message.data)).into_owned();
    let body = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new("message/delivery-status", status_part),
            MimePart::new("text/rfc822-headers", headers),
        ],
    );
    let daemon = format!("mailer-daemon@{reporting_mta}");
    let data = MessageBuilder::new()
        .from(("Mail Delivery System", daemon.as_str()))
        .to(message.sender.as_str())
        .subject("Undelivered Mail Returned to Sender")
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .message_id(format!("{}.dsn@{reporting_mta}", job.id()))
        .body(body)
        .write_to_vec()
        .unwrap_or_default();
    NewMessage {
        sender: String::new(),
        recipients: vec![message.sender.clone()],
        data: data.into(),
        cluster: message.cluster.clone(),
        credential: String::new(),
        via: crate::message::Protocol::Dsn,
        peer: record::local_peer(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_enhanced_codes() {
        assert_eq!(
            enhanced_code("permanent error (550): 5.1.1 no such user"),
            Some("5.1.1")
        );
        assert_eq!(enhanced_code("451 4.4.3 MX lookup failed"), Some("4.4.3"));
        assert_eq!(enhanced_code("connection refused at 127.2.0.1"), None);
    }

    #[test]
    fn a_dsn_names_the_recipient_and_status() {
        let message = StoredMessage {
            seq: 5,
            received_ms: 0,
            sender: "app@example.com".into(),
            cluster: "c".into(),
            credential: "u".into(),
            via: crate::message::Protocol::Smtp,
            peer: "127.2.0.1:1".into(),
            recipients: vec!["gone@example.net".into()],
            data: bytes::Bytes::from_static(
                b"Subject: hi\r\nFrom: app@example.com\r\n\r\nbody\r\n",
            ),
        };
        let job = Job {
            seq: 5,
            due_ms: 0,
            segment: 0,
            offset: 0,
            len: 0,
            rcpt: 0,
            attempts: 1,
        };
        let dsn = build(
            &message,
            &job,
            EventKind::Bounce,
            "permanent error (550): 5.1.1 no such user",
            "c-1.unmta.net",
        );
        assert_eq!(dsn.sender, "");
        assert_eq!(dsn.recipients, vec!["app@example.com".to_string()]);
        let text = String::from_utf8_lossy(&dsn.data);
        assert!(text.contains("multipart/report"), "{text}");
        assert!(
            text.contains("Final-Recipient: rfc822; gone@example.net"),
            "{text}"
        );
        assert!(text.contains("Status: 5.1.1"), "{text}");
        assert!(text.contains("Subject: hi"), "{text}");
    }
}
