//! What an authenticated client may send: the envelope sender's domain and
//! the domains of every originator mailbox (From:, Sender:, Resent-From:,
//! Resent-Sender:) must be among its credential's domains. Headers are read
//! by the one strict reader in [`crate::from_header`], the same one the DKIM
//! signer uses; message data holds no NUL or other C0 control but TAB.

use crate::auth::Principal;
use crate::from_header::{self, FromError, Originators};

pub use crate::from_header::header_section;

/// A message or envelope the credential may not send. SMTP answers
/// `550 5.7.1`, HTTP `422`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the envelope sender must have a domain")]
    NullSender,
    #[error("sender domain `{0}` is not allowed for this credential")]
    SenderDomain(String),
    #[error("{0}")]
    From(#[from] FromError),
    #[error("From: domain `{0}` is not allowed for this credential")]
    FromDomain(String),
    #[error("{field} domain `{domain}` is not allowed for this credential")]
    OriginatorDomain { field: &'static str, domain: String },
    /// SMTP answers this one `550 5.6.0`.
    #[error(
        "the message holds a NUL or another control character (only TAB is allowed), at byte {0}"
    )]
    ControlCharacter(usize),
}

/// The domain of `local@domain`, if there is one.
pub fn domain_of(address: &str) -> Option<&str> {
    let (local, domain) = address.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some(domain)
}

/// Why a recipient is refused before anything is queued for it (SMTP
/// `550 5.1.2`; HTTP lists it among `failed_recipients`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error("the recipient domain `{0}` is reserved (RFC 6761: localhost, *.localhost and *.invalid never reach a real mailbox)")]
    Reserved(String),
    #[error("the recipient `{0}` is an address literal: this node delivers only to domains")]
    Literal(String),
}

/// A recipient this node may deliver to: not `localhost`, `*.localhost`,
/// `*.invalid` or an address literal (`x@[127.0.0.1]`).
pub fn check_recipient(address: &str) -> Result<(), RecipientError> {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return Ok(());
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.starts_with('[') || domain.parse::<std::net::IpAddr>().is_ok() {
        return Err(RecipientError::Literal(address.to_string()));
    }
    let reserved = ["localhost", "invalid"]
        .iter()
        .any(|tld| domain == *tld || domain.ends_with(&format!(".{tld}")));
    if reserved {
        return Err(RecipientError::Reserved(domain));
    }
    Ok(())
}

/// MAIL FROM / `envelope_sender`.
pub fn check_sender(principal: &Principal, sender: &str) -> Result<(), PolicyError> {
    let domain = domain_of(sender).ok_or(PolicyError::NullSender)?;
    if principal.may_send_as(domain) {
        Ok(())
    } else {
        Err(PolicyError::SenderDomain(domain.to_string()))
    }
}

/// What the ingress needs to know of a message's header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFacts {
    /// The address of every From: mailbox (empty when unreadable).
    pub from: Vec<String>,
    pub has_message_id: bool,
    pub has_date: bool,
    /// The strict reading, or why there is none.
    pub originators: Result<Originators, FromError>,
}

impl HeaderFacts {
    /// `message` without its Return-Path: fields (the final MTA adds one).
    pub fn strip_return_path(&self, message: Vec<u8>) -> Vec<u8> {
        match &self.originators {
            Ok(read) => read.strip_return_path(message),
            Err(_) => message,
        }
    }
}

/// Reads the originator fields, Message-ID: and Date: of a message.
pub fn inspect(message: &[u8]) -> HeaderFacts {
    let originators = from_header::read_header_block(header_section(message));
    let (from, has_message_id, has_date) = match &originators {
        Ok(read) => (
            read.from.iter().map(|m| m.address.clone()).collect(),
            read.has_message_id,
            read.has_date,
        ),
        Err(_) => (Vec::new(), false, false),
    };
    HeaderFacts {
        from,
        has_message_id,
        has_date,
        originators,
    }
}

/// The From:, Sender:, Resent-From: and Resent-Sender: rules for one
/// message.
pub fn check_from(principal: &Principal, facts: &HeaderFacts) -> Result<(), PolicyError> {
    let read = facts.originators.as_ref().map_err(|e| e.clone())?;
    for mailbox in &read.from {
        if !principal.may_send_as(&mailbox.domain) {
            return Err(PolicyError::FromDomain(mailbox.domain.clone()));
        }
    }
    let others = read.sender.iter().map(|m| ("Sender:", m)).chain(
        read.resent
            .iter()
            .map(|m| ("Resent-From:/Resent-Sender:", m)),
    );
    for (field, mailbox) in others {
        if !principal.may_send_as(&mailbox.domain) {
            return Err(PolicyError::OriginatorDomain {
                field,
                domain: mailbox.domain.clone(),
            });
        }
    }
    Ok(())
}

/// The offset of the first NUL or C0 control other than TAB, CR and LF
/// (CR and LF are judged by the line rules).
pub fn control_character(data: &[u8]) -> Option<usize> {
    let control = |b: u8| b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n');
    // A chunk is judged whole, without an early exit, so the compiler
    // vectorizes it (every byte of every message passes here); the offset
    // is looked for only in a chunk that has one.
    let mut offset = 0;
    for chunk in data.chunks(64) {
        if chunk.iter().fold(false, |any, &b| any | control(b)) {
            return chunk.iter().position(|&b| control(b)).map(|at| offset + at);
        }
        offset += chunk.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            username: "u".into(),
            cluster: "c".into(),
            domains: vec!["yourdomain.com".to_string()].into(),
        }
    }

    #[test]
    fn sender_domains() {
        let p = principal();
        assert_eq!(check_sender(&p, "a@yourdomain.com"), Ok(()));
        assert_eq!(check_sender(&p, "a@YourDomain.COM"), Ok(()));
        assert_eq!(check_sender(&p, ""), Err(PolicyError::NullSender));
        assert_eq!(
            check_sender(&p, "a@news.yourdomain.com"),
            Err(PolicyError::SenderDomain("news.yourdomain.com".into()))
        );
        assert_eq!(
            check_sender(&p, "a@evil.com"),
            Err(PolicyError::SenderDomain("evil.com".into()))
        );
    }

    #[test]
    fn from_header_rules() {
        let p = principal();
        let ok = inspect(b"From: \"Me\" <me@yourdomain.com>\r\nSubject: x\r\n\r\nbody\r\n");
        assert_eq!(check_from(&p, &ok), Ok(()));
        assert!(!ok.has_date && !ok.has_message_id);

        let missing = inspect(b"Subject: x\r\n\r\nFrom: me@yourdomain.com\r\n");
        assert_eq!(
            check_from(&p, &missing),
            Err(PolicyError::From(FromError::Missing))
        );

        let other =
            inspect(b"From: a@yourdomain.com, b@evil.com\r\nSender: a@yourdomain.com\r\n\r\n");
        assert_eq!(
            check_from(&p, &other),
            Err(PolicyError::FromDomain("evil.com".into()))
        );

        let two = inspect(b"From: a@yourdomain.com\r\nFrom: a@yourdomain.com\r\n\r\n");
        assert_eq!(
            check_from(&p, &two),
            Err(PolicyError::From(FromError::SeveralFields {
                field: "From:",
                count: 2
            }))
        );

        let folded = inspect(
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\nFrom:\r\n \"A\"\r\n <a@evil.com>\r\n\r\n",
        );
        assert!(folded.has_date && folded.has_message_id);
        assert_eq!(
            check_from(&p, &folded),
            Err(PolicyError::FromDomain("evil.com".into()))
        );

        let garbage = inspect(b"From: not an address\r\n\r\n");
        assert!(matches!(
            check_from(&p, &garbage),
            Err(PolicyError::From(FromError::AtSigns { .. }))
        ));
        let resent = inspect(b"From: a@yourdomain.com\r\nResent-From: x@evil.com\r\n\r\n");
        assert!(matches!(
            check_from(&p, &resent),
            Err(PolicyError::OriginatorDomain { .. })
        ));
        assert_eq!(control_character(b"a\tb\r\nc\0"), Some(6));
        for bad in [
            "a@localhost",
            "a@x.LOCALHOST.",
            "a@host.invalid",
            "a@[127.0.0.1]",
            "a@[IPv6:::1]",
        ] {
            assert!(check_recipient(bad).is_err(), "{bad}");
        }
        assert_eq!(check_recipient("a@example.com"), Ok(()));
        assert_eq!(check_recipient("a@localhost.example.com"), Ok(()));
        assert_eq!(control_character(b"a\tb\r\n"), None);
    }

    #[test]
    fn the_first_control_character_is_found_wherever_it_falls() {
        let text = b"line of text\twith a tab\r\n".repeat(20);
        assert_eq!(control_character(&text), None);
        for at in [0, 1, 63, 64, 65, 127, 128, 300, text.len() - 1] {
            for control in [0u8, 0x01, 0x0b, 0x0c, 0x1b, 0x1f] {
                let mut data = text.clone();
                data[at] = control;
                data[text.len() - 1] = 0; // a later one is not the first
                assert_eq!(control_character(&data), Some(at), "{control:#x} at {at}");
            }
        }
    }
}
