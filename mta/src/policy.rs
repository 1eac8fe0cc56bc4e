//! What an authenticated client may send: the envelope sender's domain and
//! the From: header's domains must be among its credential's domains, and a
//! message carries exactly one From: header. Headers are read with
//! mail-parser, never by hand.

use mail_parser::{HeaderName, MessageParser};

use crate::auth::Principal;

/// A message or envelope the credential may not send. SMTP answers
/// `550 5.7.1`, HTTP `422`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the envelope sender must have a domain")]
    NullSender,
    #[error("sender domain `{0}` is not allowed for this credential")]
    SenderDomain(String),
    #[error("a From: header is required")]
    MissingFrom,
    #[error("a message must have exactly one From: header, not {0}")]
    SeveralFrom(usize),
    #[error("the From: header holds no valid address")]
    BadFrom,
    #[error("From: domain `{0}` is not allowed for this credential")]
    FromDomain(String),
}

/// The domain of `local@domain`, if there is one.
pub fn domain_of(address: &str) -> Option<&str> {
    let (local, domain) = address.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some(domain)
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderFacts {
    /// The address of every mailbox in every From: header.
    pub from: Vec<String>,
    pub from_headers: usize,
    pub has_message_id: bool,
    pub has_date: bool,
}

/// The header section of `message`: up to and including the empty line.
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &message[..2];
    }
    match memchr::memmem::find(message, b"\r\n\r\n") {
        Some(end) => &message[..end + 4],
        None => message,
    }
}

/// Reads From:, Message-ID: and Date: of a message.
pub fn inspect(message: &[u8]) -> HeaderFacts {
    let headers = header_section(message);
    let mut facts = HeaderFacts::default();
    let Some(parsed) = MessageParser::new().parse_headers(headers) else {
        return facts;
    };
    for header in parsed.headers() {
        match header.name {
            HeaderName::From => {
                facts.from_headers += 1;
                if let Some(address) = header.value.as_address() {
                    facts.from.extend(
                        address
                            .iter()
                            .map(|addr| addr.address().unwrap_or_default().to_string()),
                    );
                }
            }
            HeaderName::MessageId => facts.has_message_id = true,
            HeaderName::Date => facts.has_date = true,
            _ => {}
        }
    }
    facts
}

/// The From: rules for one message.
pub fn check_from(principal: &Principal, facts: &HeaderFacts) -> Result<(), PolicyError> {
    match facts.from_headers {
        0 => return Err(PolicyError::MissingFrom),
        1 => {}
        n => return Err(PolicyError::SeveralFrom(n)),
    }
    if facts.from.is_empty() {
        return Err(PolicyError::BadFrom);
    }
    for address in &facts.from {
        let domain = domain_of(address).ok_or(PolicyError::BadFrom)?;
        if !principal.may_send_as(domain) {
            return Err(PolicyError::FromDomain(domain.to_string()));
        }
    }
    Ok(())
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
        assert_eq!(check_from(&p, &missing), Err(PolicyError::MissingFrom));

        let other = inspect(b"From: a@yourdomain.com, b@evil.com\r\n\r\n");
        assert_eq!(
            check_from(&p, &other),
            Err(PolicyError::FromDomain("evil.com".into()))
        );

        let two = inspect(b"From: a@yourdomain.com\r\nFrom: a@yourdomain.com\r\n\r\n");
        assert_eq!(check_from(&p, &two), Err(PolicyError::SeveralFrom(2)));

        let folded = inspect(
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\nFrom:\r\n \"A\"\r\n <a@evil.com>\r\n\r\n",
        );
        assert!(folded.has_date && folded.has_message_id);
        assert_eq!(
            check_from(&p, &folded),
            Err(PolicyError::FromDomain("evil.com".into()))
        );

        let garbage = inspect(b"From: not an address\r\n\r\n");
        assert_eq!(check_from(&p, &garbage), Err(PolicyError::BadFrom));
    }
}
