//! The HTTPS probe: `GET /ready` with SNI = the cluster hostname, the
//! certificate verified, `200` before the timeout. HTTP/1.1 is hyper's
//! client connection over the probe's TLS stream; the connection is kept
//! for the next round while the server allows.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ACCEPT, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::{connect, handshake, until, words, Class, Failure, Kind};

/// The most of an answer's head read (hyper's smallest read buffer), and the
/// most of its body: a longer body is cut and its connection not kept.
const MAX_HEAD: usize = 8 * 1024;
const MAX_BODY: usize = 8 * 1024;
/// The longest reason kept from a failing answer's first body line.
const MAX_REASON: usize = 200;

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
/// time (the SMTP probe sees it at once). Dropping it closes the connection
/// (its hyper task ends with it).
pub struct Kept {
    sender: SendRequest<Empty<Bytes>>,
    opened: std::time::Instant,
}

/// How long one kept connection is used.
pub const MAX_KEEP: Duration = Duration::from_secs(30);

/// What `/ready` answered: its status, the body read (at most
/// [`MAX_BODY`]) and whether it was read whole.
struct Answer {
    status: u16,
    body: String,
    whole: bool,
}

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
        let no_answer = || format!("https: /ready did not answer within {within}");
        if let Some(mut kept) = kept.filter(|k| k.opened.elapsed() < MAX_KEEP) {
            let asked = tokio::time::timeout_at(self.deadline, async {
                // A connection the server closed since is not an error:
                // the probe opens a new one.
                kept.sender.ready().await.ok()?;
                Some(self.ask(&mut kept.sender).await)
            })
            .await;
            match asked {
                Ok(Some(Ok(answer))) => return self.judge(answer, kept),
                Ok(None | Some(Err(_))) => {}
                Err(_) => return (Err(fail(Class::Timeout, no_answer())), None),
            }
        }
        let mut kept = match self.open(addr, &within).await {
            Ok(kept) => kept,
            Err(failure) => return (Err(failure), None),
        };
        let answer = until(
            self.deadline,
            Kind::Https,
            no_answer,
            self.ask(&mut kept.sender),
        )
        .await;
        match answer {
            Ok(answer) => self.judge(answer, kept),
            Err(failure) => (Err(failure), None),
        }
    }

    /// A new verified TLS connection with hyper's HTTP/1.1 client on it.
    async fn open(&self, addr: SocketAddr, within: &str) -> Result<Kept, Failure> {
        let tcp = connect(addr, self.deadline, Kind::Https, within).await?;
        let tls = handshake(
            self.tls,
            self.server_name.clone(),
            self.hostname,
            tcp,
            self.deadline,
            Kind::Https,
            within,
        )
        .await?;
        let waiting = || format!("https: no HTTP connection within {within}");
        let (sender, connection) = until(self.deadline, Kind::Https, waiting, async {
            http1::Builder::new()
                .max_buf_size(MAX_HEAD)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| answer_failure(&e))
        })
        .await?;
        // Ends when the server closes or `Kept` (the sender) is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Kept {
            sender,
            opened: std::time::Instant::now(),
        })
    }

    async fn ask(&self, sender: &mut SendRequest<Empty<Bytes>>) -> Result<Answer, Failure> {
        let host = if self.port == 443 {
            self.hostname.to_string()
        } else {
            format!("{}:{}", self.hostname, self.port)
        };
        let request = Request::get("/ready")
            .header(HOST, host)
            .header(USER_AGENT, "unmta-healthd")
            .header(ACCEPT, "*/*")
            .body(Empty::new())
            .map_err(|e| fail(Class::Protocol, format!("https: invalid request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| answer_failure(&e))?;
        let status = response.status().as_u16();
        let (body, whole) = read_bounded(response.into_body())
            .await
            .map_err(|e| answer_failure(&e))?;
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            whole,
        })
    }

    fn judge(&self, answer: Answer, kept: Kept) -> (Result<Option<String>, Failure>, Option<Kept>) {
        // A body cut short leaves the rest on the wire: that connection goes.
        let keep = (answer.whole && !kept.sender.is_closed()).then_some(kept);
        let first = answer.body.lines().next().unwrap_or("").trim();
        if answer.status == 200 {
            return (Ok(degradation(first)), keep);
        }
        let first = truncate(first, MAX_REASON);
        let reason = if first.is_empty() {
            format!("https: /ready answered {}", answer.status)
        } else {
            format!("https: /ready answered {}: {first}", answer.status)
        };
        (Err(fail(Class::Status, reason)), keep)
    }
}

/// Reads `body` up to [`MAX_BODY`] bytes; `true` when it was read whole.
async fn read_bounded(mut body: Incoming) -> Result<(Vec<u8>, bool), hyper::Error> {
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let room = MAX_BODY - read.len();
        if data.len() > room {
            read.extend_from_slice(&data[..room]);
            return Ok((read, false));
        }
        read.extend_from_slice(&data);
    }
    Ok((read, true))
}

/// A failed exchange, in words.
fn answer_failure(error: &hyper::Error) -> Failure {
    let reason = if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        "https: the server closed the connection before answering".to_string()
    } else if error.is_parse() {
        format!("https: not a valid HTTP answer: {error}")
    } else {
        match std::error::Error::source(error) {
            Some(cause) => format!("https: reading the answer failed: {error}: {cause}"),
            None => format!("https: reading the answer failed: {error}"),
        }
    };
    fail(Class::Protocol, reason)
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The longest degradation note kept from an answer.
const MAX_NOTE: usize = 512;

/// The note of a `ready, degraded: <note>` body (as `fleet::admin` writes it).
fn degradation(body: &str) -> Option<String> {
    let note = body.trim().strip_prefix("ready, degraded:")?.trim();
    Some(truncate(note, MAX_NOTE).to_string())
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
}
