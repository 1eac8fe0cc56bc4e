//! The HTTPS probe: `GET /ready` with SNI = the cluster hostname, the
//! certificate verified, `200` before the timeout.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{connect, handshake, until, words, Class, Failure, Kind};

/// The most of an answer read: the status line, headers and a short body.
const MAX_ANSWER: usize = 8 * 1024;

pub struct ReadyCheck<'a> {
    pub tls: &'a TlsConnector,
    pub server_name: ServerName<'static>,
    pub hostname: &'a str,
    pub port: u16,
    pub deadline: Instant,
    pub timeout: Duration,
}

fn fail(class: Class, reason: String) -> Failure {
    Failure {
        kind: Kind::Https,
        class,
        reason,
    }
}

/// An HTTPS connection kept from the last probe of the same target, so a
/// steady probe costs one TLS handshake (SMTP's) instead of two. It is
/// replaced after [`MAX_KEEP`], so a changed certificate shows within that
/// time (the SMTP probe sees it at once).
pub struct Kept {
    stream: TlsStream<TcpStream>,
    opened: std::time::Instant,
}

/// How long one kept connection is used.
pub const MAX_KEEP: Duration = Duration::from_secs(30);

impl ReadyCheck<'_> {
    /// Asks `/ready`, on `kept` if it still works, else on a new
    /// connection; returns the connection to keep, if the server allows.
    /// A pass carries the MTA's degradation note, if it gave one.
    pub async fn run(
        &self,
        addr: SocketAddr,
        kept: Option<Kept>,
    ) -> (Result<Option<String>, Failure>, Option<Kept>) {
        let within = words(self.timeout);
        if let Some(mut kept) = kept.filter(|k| k.opened.elapsed() < MAX_KEEP) {
            let asked = tokio::time::timeout_at(self.deadline, self.ask(&mut kept.stream)).await;
            match asked {
                Ok(Ok(answer)) => return self.judge(answer, kept),
                // Closed or broken since: try a new connection.
                Ok(Err(_)) => {}
                Err(_) => {
                    return (
                        Err(fail(
                            Class::Timeout,
                            format!("https: /ready did not answer within {within}"),
                        )),
                        None,
                    )
                }
            }
        }
        let tcp = connect(addr, self.deadline, Kind::Https, &within).await;
        let tcp = match tcp {
            Ok(tcp) => tcp,
            Err(failure) => return (Err(failure), None),
        };
        let tls = handshake(
            self.tls,
            self.server_name.clone(),
            self.hostname,
            tcp,
            self.deadline,
            Kind::Https,
            &within,
        )
        .await;
        let mut kept = match tls {
            Ok(stream) => Kept {
                stream,
                opened: std::time::Instant::now(),
            },
            Err(failure) => return (Err(failure), None),
        };
        let answer = until(
            self.deadline,
            Kind::Https,
            || format!("https: /ready did not answer within {within}"),
            self.ask(&mut kept.stream),
        )
        .await;
        match answer {
            Ok(answer) => self.judge(answer, kept),
            Err(failure) => (Err(failure), None),
        }
    }

    async fn ask(&self, stream: &mut TlsStream<TcpStream>) -> Result<Answer, Failure> {
        let host = if self.port == 443 {
            self.hostname.to_string()
        } else {
            format!("{}:{}", self.hostname, self.port)
        };
        let request = format!(
            "GET /ready HTTP/1.1\r\nHost: {host}\r\nUser-Agent: unmta-healthd\r\nAccept: */*\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| {
            fail(
                Class::Protocol,
                format!("https: sending the request failed: {e}"),
            )
        })?;
        read_answer(stream).await
    }

    fn judge(&self, answer: Answer, kept: Kept) -> (Result<Option<String>, Failure>, Option<Kept>) {
        let keep = answer.reusable.then_some(kept);
        if answer.status == 200 {
            return (Ok(degradation(&answer.body)), keep);
        }
        let body = answer.body.trim();
        let reason = if body.is_empty() {
            format!("https: /ready answered {}", answer.status)
        } else {
            format!("https: /ready answered {}: {}", answer.status, body)
        };
        (Err(fail(Class::Status, reason)), keep)
    }
}

/// The longest degradation note kept from an answer.
const MAX_NOTE: usize = 512;

/// The note of a `ready, degraded: <note>` body (as `fleet::admin` writes it).
fn degradation(body: &str) -> Option<String> {
    let note = body.trim().strip_prefix("ready, degraded:")?.trim();
    let end = note
        .char_indices()
        .nth(MAX_NOTE)
        .map_or(note.len(), |(i, _)| i);
    Some(note[..end].to_string())
}

/// A parsed answer: its status and the first line of its body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The whole answer was read, by its length, and the server keeps the
    /// connection open: it may carry the next probe.
    pub reusable: bool,
}

/// Reads until the headers and as much of the body as is announced (or the
/// connection closes), at most [`MAX_ANSWER`] bytes.
async fn read_answer<R: tokio::io::AsyncRead + Unpin>(reader: &mut R) -> Result<Answer, Failure> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(answer) = parse_answer(&buf, false)? {
            return Ok(answer);
        }
        if buf.len() >= MAX_ANSWER {
            return parse_answer(&buf, true)?
                .ok_or_else(|| fail(Class::Protocol, "https: answer headers too long".into()));
        }
        let n = match reader.read(&mut chunk).await {
            Ok(n) => n,
            // A peer that closes without close_notify has still answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => {
                return Err(fail(
                    Class::Protocol,
                    format!("https: reading the answer failed: {e}"),
                ))
            }
        };
        if n == 0 {
            return parse_answer(&buf, true)?.ok_or_else(|| {
                fail(
                    Class::Protocol,
                    "https: the server closed the connection before answering".into(),
                )
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `Ok(None)`: more bytes are needed (unless `complete`).
pub fn parse_answer(buf: &[u8], complete: bool) -> Result<Option<Answer>, Failure> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let (true, Some(status)) = (version.starts_with("HTTP/1."), status) else {
        return Err(fail(
            Class::Protocol,
            format!(
                "https: not an HTTP answer: `{}`",
                status_line.chars().take(80).collect::<String>()
            ),
        ));
    };
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.to_ascii_lowercase().contains("close");
            }
        }
    }
    let rest = &buf[end + 4..];
    let body: &[u8] = if chunked {
        // The first chunk is enough for a reason.
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(line_end) => {
                let size = std::str::from_utf8(&rest[..line_end]).ok().and_then(|s| {
                    usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok()
                });
                match size {
                    Some(size) if rest.len() >= line_end + 2 + size => {
                        &rest[line_end + 2..line_end + 2 + size]
                    }
                    _ if complete => &rest[line_end + 2..],
                    _ => return Ok(None),
                }
            }
            None if complete => rest,
            None => return Ok(None),
        }
    } else {
        match length {
            Some(length) if rest.len() >= length => &rest[..length],
            Some(_) if !complete => return Ok(None),
            None if !complete && status != 204 && status != 304 => return Ok(None),
            _ => rest,
        }
    };
    let reusable = !close && !chunked && length.is_some_and(|l| rest.len() == l);
    let body = String::from_utf8_lossy(body);
    let first = body.lines().next().unwrap_or("").trim();
    Ok(Some(Answer {
        status,
        body: first.chars().take(200).collect(),
        reusable,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MTA's degradation note is kept only from a `ready, degraded:`
    /// body, trimmed, and cut at `MAX_NOTE` characters (multi-byte safe).
    #[test]
    fn a_degradation_note_is_read_bounded() {
        assert_eq!(degradation("ready\n"), None);
        assert_eq!(degradation("not ready: spool\n"), None);
        assert_eq!(degradation("degraded: x"), None);
        assert_eq!(
            degradation("ready, degraded:  webhook w failing \n").as_deref(),
            Some("webhook w failing")
        );
        let long = format!("ready, degraded: {}", "é".repeat(10_000));
        let note = degradation(&long).unwrap();
        assert_eq!(note.chars().count(), MAX_NOTE);
        assert!(note.chars().all(|c| c == 'é'));
    }

    #[test]
    fn parses_length_chunked_and_close_delimited_answers() {
        let ok = parse_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nready\n",
            false,
        )
        .unwrap();
        assert_eq!(
            ok,
            Some(Answer {
                status: 200,
                body: "ready".into(),
                reusable: true,
            })
        );
        let partial = parse_answer(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 30\r\n\r\nnot",
            false,
        )
        .unwrap();
        assert_eq!(partial, None);
        let chunked = parse_answer(
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nspool unhealthy\n\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            chunked,
            Some(Answer {
                status: 503,
                body: "spool unhealthy".into(),
                reusable: false,
            })
        );
        let closed = parse_answer(b"HTTP/1.0 503 X\r\n\r\nnot ready: draining\n", true).unwrap();
        let closed = closed.unwrap();
        assert_eq!(closed.body, "not ready: draining");
        assert!(!closed.reusable);
        let told = parse_answer(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!told.unwrap().reusable);
        assert!(parse_answer(b"SSH-2.0-x\r\n\r\n", false).is_err());
    }
}
