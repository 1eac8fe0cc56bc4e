//! The SMTP probe: 220 banner, EHLO, STARTTLS offered, STARTTLS, a verified
//! TLS handshake with SNI = the cluster hostname, EHLO again, QUIT.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use smtp_proto::response::parser::{ResponseReceiver, MAX_RESPONSE_LENGTH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{connect, handshake, until, words, Class, Failure, Kind};

/// One SMTP reply (smtp-proto's): its code and its lines' text, one per
/// line of `message`.
pub type Reply = smtp_proto::Response<String>;

fn first_text(reply: &Reply) -> &str {
    reply.message.lines().next().unwrap_or("")
}

/// Whether an EHLO reply announces `keyword` (`STARTTLS`).
pub fn offers(reply: &Reply, keyword: &str) -> bool {
    reply.message.lines().skip(1).any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
    })
}

/// The most bytes one reply may take on the wire. smtp-proto bounds the
/// text it keeps (`MAX_RESPONSE_LENGTH`) only once the last line arrives,
/// so a server streaming continuation lines is cut here.
const MAX_REPLY: usize = 2 * MAX_RESPONSE_LENGTH;

/// Reads replies with smtp-proto's parser; bytes read past a reply wait in
/// `pending` for the next one.
#[derive(Default)]
pub struct Replies {
    receiver: ResponseReceiver,
    pending: Vec<u8>,
    /// Bytes of the reply being read so far.
    read: usize,
}

impl Replies {
    /// Reads one (possibly multi-line) reply: `250-first`, ..., `250 last`.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Result<Reply, Failure> {
        let mut chunk = [0u8; 1024];
        loop {
            let mut bytes = self.pending.iter();
            let parsed = self.receiver.parse(&mut bytes);
            let consumed = self.pending.len() - bytes.len();
            self.pending.drain(..consumed);
            self.read += consumed;
            let too_long = || {
                fail(
                    Class::Protocol,
                    format!("smtp: reply longer than {MAX_REPLY} bytes"),
                )
            };
            match parsed {
                Ok(_) | Err(smtp_proto::Error::NeedsMoreData { .. }) if self.read > MAX_REPLY => {
                    return Err(too_long())
                }
                Ok(reply) => {
                    self.receiver.reset();
                    self.read = 0;
                    return Ok(reply);
                }
                Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                Err(smtp_proto::Error::ResponseTooLong) => return Err(too_long()),
                Err(e) => {
                    return Err(fail(
                        Class::Protocol,
                        format!("smtp: malformed reply: {e:?}"),
                    ))
                }
            }
            let n = reader
                .read(&mut chunk)
                .await
                .map_err(|e| io_failure("reading a reply", &e))?;
            if n == 0 {
                return Err(fail(
                    Class::Protocol,
                    "smtp: the server closed the connection".into(),
                ));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether bytes past the last reply were read.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

pub struct Conversation<'a> {
    pub tls: &'a TlsConnector,
    pub server_name: ServerName<'static>,
    pub hostname: &'a str,
    pub ehlo: &'a str,
    pub deadline: Instant,
    pub timeout: Duration,
}

fn fail(class: Class, reason: String) -> Failure {
    Failure {
        kind: Kind::Smtp,
        class,
        reason,
    }
}

impl Conversation<'_> {
    pub async fn run(&self, addr: SocketAddr) -> Result<(), Failure> {
        let within = words(self.timeout);
        let mut plain = connect(addr, self.deadline, Kind::Smtp, &within).await?;
        let mut replies = Replies::default();
        let banner = self
            .step(&mut plain, &mut replies, None, || {
                format!("smtp: no 220 banner within {within}")
            })
            .await?;
        expect(&banner, 220, "banner")?;
        let ehlo = format!("EHLO {}\r\n", self.ehlo);
        let answer = self
            .step(&mut plain, &mut replies, Some(&ehlo), || {
                format!("smtp: no answer to EHLO within {within}")
            })
            .await?;
        expect(&answer, 250, "EHLO")?;
        if !offers(&answer, "STARTTLS") {
            return Err(fail(Class::Protocol, "smtp: STARTTLS not offered".into()));
        }
        let go = self
            .step(&mut plain, &mut replies, Some("STARTTLS\r\n"), || {
                format!("smtp: no answer to STARTTLS within {within}")
            })
            .await?;
        expect(&go, 220, "STARTTLS")?;
        // Anything the server sent after its 220 would be read as if it came
        // through TLS (the CVE-2011-0411 class): refuse it.
        if replies.has_pending() {
            return Err(fail(
                Class::Protocol,
                "smtp: data sent before the TLS handshake".into(),
            ));
        }
        let mut secure = handshake(
            self.tls,
            self.server_name.clone(),
            self.hostname,
            plain,
            self.deadline,
            Kind::Smtp,
            &within,
        )
        .await?;
        let mut replies = Replies::default();
        let answer = self
            .step(&mut secure, &mut replies, Some(&ehlo), || {
                format!("smtp: no answer to EHLO after STARTTLS within {within}")
            })
            .await?;
        expect(&answer, 250, "EHLO after STARTTLS")?;
        // QUIT is a courtesy: its answer does not decide the probe.
        let _ = self
            .step(&mut secure, &mut replies, Some("QUIT\r\n"), String::new)
            .await;
        Ok(())
    }

    /// Sends `command` (if any) and reads one reply, before the deadline.
    async fn step<S>(
        &self,
        stream: &mut S,
        replies: &mut Replies,
        command: Option<&str>,
        waiting: impl FnOnce() -> String,
    ) -> Result<Reply, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        until(self.deadline, Kind::Smtp, waiting, async {
            if let Some(command) = command {
                let verb = command.split_whitespace().next().unwrap_or("");
                stream
                    .write_all(command.as_bytes())
                    .await
                    .map_err(|e| io_failure(&format!("sending {verb}"), &e))?;
                stream
                    .flush()
                    .await
                    .map_err(|e| io_failure(&format!("sending {verb}"), &e))?;
            }
            replies.read(stream).await
        })
        .await
    }
}

fn io_failure(doing: &str, error: &std::io::Error) -> Failure {
    let class = if error.get_ref().is_some_and(|e| e.is::<rustls::Error>()) {
        Class::Tls
    } else {
        Class::Protocol
    };
    fail(
        class,
        format!("smtp: connection failed while {doing}: {error}"),
    )
}

fn expect(reply: &Reply, code: u16, after: &str) -> Result<(), Failure> {
    if reply.code == code {
        return Ok(());
    }
    let what = if after == "banner" {
        "banner".to_string()
    } else {
        format!("answer to {after}")
    };
    let got = match truncate(first_text(reply), 80) {
        "" => reply.code.to_string(),
        text => format!("{} {text}", reply.code),
    };
    Err(fail(
        Class::Protocol,
        format!("smtp: {what} was {got}, not {code}"),
    ))
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(text: &str) -> Result<Reply, Failure> {
        Replies::default().read(&mut text.as_bytes()).await
    }

    #[tokio::test]
    async fn reads_multiline_replies_and_offers() {
        let reply = parse("250-mta.example\r\n250-SIZE 10485760\r\n250 STARTTLS\r\n")
            .await
            .unwrap();
        assert_eq!(reply.code, 250);
        assert!(offers(&reply, "starttls"));
        assert!(!offers(&reply, "SIZE 10485760x"));
        let plain = parse("250-mta.example\r\n250 PIPELINING\r\n")
            .await
            .unwrap();
        assert!(!offers(&plain, "STARTTLS"));
        let refused = parse("554 5.7.1 no thanks\r\n").await.unwrap();
        assert_eq!((refused.code, first_text(&refused)), (554, "no thanks"));
    }

    #[tokio::test]
    async fn refuses_malformed_cut_and_oversized_replies() {
        for bad in ["hello\r\n", "250-a\r\n", "25\r\n", ""] {
            assert!(parse(bad).await.is_err(), "{bad:?} should fail");
        }
        let long = format!("250 {}\r\n", "x".repeat(MAX_RESPONSE_LENGTH + 100));
        assert!(parse(&long).await.unwrap_err().reason.contains("longer"));
        // Continuation lines past the bound fail before the last one comes.
        let many = "250-x\r\n".repeat(3_000);
        let error = parse(&many).await.unwrap_err().reason;
        assert!(error.contains("longer"), "{error}");
    }

    /// Replies arriving together are read one at a time; what follows the
    /// last one read stays pending (the STARTTLS injection check).
    #[tokio::test]
    async fn pipelined_bytes_stay_pending() {
        let mut replies = Replies::default();
        let mut wire = "220 go ahead\r\n250 injected\r\n".as_bytes();
        let go = replies.read(&mut wire).await.unwrap();
        assert_eq!(go.code, 220);
        assert!(replies.has_pending());
        assert_eq!(replies.read(&mut wire).await.unwrap().code, 250);
        assert!(!replies.has_pending());
    }
}
