//! The SMTP probe: 220 banner, EHLO, STARTTLS offered, STARTTLS, a verified
//! TLS handshake with SNI = the cluster hostname, EHLO again, QUIT.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{connect, handshake, until, words, Class, Failure, Kind};

/// The longest reply line accepted, and the most lines in one reply.
const MAX_LINE: usize = 1024;
const MAX_LINES: usize = 64;

/// One SMTP reply: its code and its lines' text.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    fn first_text(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    /// Whether an EHLO reply announces `keyword` (`STARTTLS`).
    pub fn offers(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
        })
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
        let tcp = connect(addr, self.deadline, Kind::Smtp, &within).await?;
        let mut plain = BufReader::new(tcp);

        let banner = self
            .step(&mut plain, None, || {
                format!("smtp: no 220 banner within {within}")
            })
            .await?;
        expect(&banner, 220, "banner")?;
        let ehlo = self
            .step(&mut plain, Some(format!("EHLO {}\r\n", self.ehlo)), || {
                format!("smtp: no answer to EHLO within {within}")
            })
            .await?;
        expect(&ehlo, 250, "EHLO")?;
        if !ehlo.offers("STARTTLS") {
            return Err(fail(Class::Protocol, "smtp: STARTTLS not offered".into()));
        }
        let go = self
            .step(&mut plain, Some("STARTTLS\r\n".into()), || {
                format!("smtp: no answer to STARTTLS within {within}")
            })
            .await?;
        expect(&go, 220, "STARTTLS")?;
        // Anything the server sent after its 220 would be read as if it came
        // through TLS (the CVE-2011-0411 class): refuse it.
        if !plain.buffer().is_empty() {
            return Err(fail(
                Class::Protocol,
                "smtp: data sent before the TLS handshake".into(),
            ));
        }
        let tcp = plain.into_inner();
        let tls = handshake(
            self.tls,
            self.server_name.clone(),
            self.hostname,
            tcp,
            self.deadline,
            Kind::Smtp,
            &within,
        )
        .await?;
        let mut secure = BufReader::new(tls);
        let ehlo = self
            .step(&mut secure, Some(format!("EHLO {}\r\n", self.ehlo)), || {
                format!("smtp: no answer to EHLO after STARTTLS within {within}")
            })
            .await?;
        expect(&ehlo, 250, "EHLO after STARTTLS")?;
        // QUIT is a courtesy: its answer does not decide the probe.
        let _ = self
            .step(&mut secure, Some("QUIT\r\n".into()), String::new)
            .await;
        Ok(())
    }

    /// Sends `command` (if any) and reads one reply, before the deadline.
    async fn step<S>(
        &self,
        stream: &mut BufReader<S>,
        command: Option<String>,
        waiting: impl FnOnce() -> String,
    ) -> Result<Reply, Failure>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Unpin,
    {
        until(self.deadline, Kind::Smtp, waiting, async {
            if let Some(command) = command {
                let verb = command.split_whitespace().next().unwrap_or("").to_string();
                stream
                    .get_mut()
                    .write_all(command.as_bytes())
                    .await
                    .map_err(|e| io_failure(&format!("sending {verb}"), &e))?;
                stream
                    .get_mut()
                    .flush()
                    .await
                    .map_err(|e| io_failure(&format!("sending {verb}"), &e))?;
            }
            read_reply(stream).await
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
    Err(fail(
        Class::Protocol,
        format!(
            "smtp: {what} was {} {}, not {code}",
            reply.code,
            reply.first_text()
        )
        .trim_end()
        .to_string(),
    ))
}

/// Reads one (possibly multi-line) reply: `250-first`, ..., `250 last`.
pub async fn read_reply<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Reply, Failure> {
    let mut lines = Vec::new();
    let mut code = None;
    let mut buf = Vec::with_capacity(128);
    loop {
        buf.clear();
        let n = (&mut *reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| io_failure("reading a reply", &e))?;
        if n == 0 {
            return Err(fail(
                Class::Protocol,
                "smtp: the server closed the connection".into(),
            ));
        }
        if buf.last() != Some(&b'\n') {
            return Err(fail(
                Class::Protocol,
                format!("smtp: reply line longer than {MAX_LINE} bytes"),
            ));
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\r', '\n']);
        let parsed = line
            .get(..3)
            .and_then(|digits| digits.parse::<u16>().ok())
            .filter(|_| matches!(line.as_bytes().get(3), None | Some(b' ') | Some(b'-')));
        let Some(this) = parsed else {
            return Err(fail(
                Class::Protocol,
                format!("smtp: malformed reply line `{}`", truncate(line, 80)),
            ));
        };
        if *code.get_or_insert(this) != this {
            return Err(fail(
                Class::Protocol,
                "smtp: reply lines with different codes".into(),
            ));
        }
        lines.push(line.get(4..).unwrap_or("").to_string());
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(Reply { code: this, lines });
        }
        if lines.len() >= MAX_LINES {
            return Err(fail(
                Class::Protocol,
                format!("smtp: reply longer than {MAX_LINES} lines"),
            ));
        }
    }
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
        read_reply(&mut text.as_bytes()).await
    }

    #[tokio::test]
    async fn reads_multiline_replies_and_offers() {
        let reply = parse("250-mta.example\r\n250-SIZE 10485760\r\n250 STARTTLS\r\n")
            .await
            .unwrap();
        assert_eq!(reply.code, 250);
        assert!(reply.offers("starttls"));
        assert!(!reply.offers("SIZE 10485760x"));
        let plain = parse("250-mta.example\r\n250 PIPELINING\r\n")
            .await
            .unwrap();
        assert!(!plain.offers("STARTTLS"));
    }

    #[tokio::test]
    async fn refuses_malformed_replies() {
        for bad in ["hello\r\n", "250-a\r\n251 b\r\n", "250-a\r\n", "25\r\n"] {
            assert!(parse(bad).await.is_err(), "{bad:?} should fail");
        }
        let long = format!("250 {}\r\n", "x".repeat(2000));
        assert!(parse(&long).await.unwrap_err().reason.contains("longer"));
    }
}
