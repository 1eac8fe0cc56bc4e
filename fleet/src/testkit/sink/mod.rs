//! A sink MX for tests and the local cluster: an SMTP server on loopback that
//! keeps (and optionally stores as files) every message it accepts.
//!
//! It offers STARTTLS when given a certificate (opportunistic TLS clients
//! such as lettre use it), PIPELINING, 8BITMIME, SMTPUTF8 and SIZE, and it can
//! accept, reject, or temporarily fail the first attempts of each message.

mod session;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The largest message the sink takes (announced in EHLO SIZE).
pub const MAX_SIZE: usize = 64 * 1024 * 1024;

/// How the sink answers delivery attempts.
///
/// Whatever the behaviour, a recipient whose local part starts with
/// `reject-` is refused at RCPT with `550 5.1.1 … User unknown`, and one
/// starting with `tempfail-` gets `451 4.7.1 … try again later` at its first
/// two RCPTs (then the behaviour applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// `250` for every recipient and message.
    Accept,
    /// `550` for every recipient (so `DATA` never starts).
    Reject,
    /// `451` after `DATA` for the first `n` attempts of each message (keyed by
    /// its Message-ID, or by its bytes when it has none), then `250`.
    TempFailFirst(u32),
    /// Accepts, but waits this long before answering the end of `DATA`.
    Slow(Duration),
}

pub struct SinkConfig {
    pub listen: SocketAddr,
    /// Where each accepted message is written as `<n>-<millis>.eml`.
    pub maildir: Option<PathBuf>,
    pub behaviour: Behaviour,
    /// PEM certificate chain and PEM private key: offers STARTTLS.
    pub tls: Option<(String, String)>,
}

impl SinkConfig {
    /// Accepts everything on `listen`, no TLS, nothing on disk.
    pub fn accept(listen: SocketAddr) -> SinkConfig {
        SinkConfig {
            listen,
            maildir: None,
            behaviour: Behaviour::Accept,
            tls: None,
        }
    }
}

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as received, dot-unstuffed, CRLF line ends.
    pub data: Vec<u8>,
    pub arrived_at: Instant,
    /// The file it was stored in, when the sink has a maildir.
    pub file: Option<PathBuf>,
    /// Whether the transaction ran over TLS.
    pub tls: bool,
    pub helo: String,
    /// The address the message came from (a proxy's, through one).
    pub peer: SocketAddr,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The unfolded values of every header field called `name`, in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        let text = self.text();
        let head = match text.find("\r\n\r\n") {
            Some(end) => &text[..end + 2],
            None => &text[..],
        };
        let mut fields: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.push(' ');
                    last.push_str(line.trim());
                }
            } else if !line.is_empty() {
                fields.push(line.to_string());
            }
        }
        fields
            .into_iter()
            .filter_map(|field| {
                let (key, value) = field.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
            .collect()
    }

    /// The first header field called `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
}

/// One end of `DATA` the sink answered, whatever the answer.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub message_id: Option<String>,
    /// The reply code given: 250, 451, 550, ...
    pub code: u16,
    pub at: Instant,
}

#[derive(Default)]
pub(crate) struct Store {
    messages: Vec<Received>,
    attempts: Vec<Attempt>,
    /// Attempts so far per message key, for `TempFailFirst`.
    tries: HashMap<String, u32>,
    sequence: u64,
}

pub(crate) struct Shared {
    pub(crate) behaviour: Behaviour,
    pub(crate) maildir: Option<PathBuf>,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) store: Mutex<Store>,
    pub(crate) count: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Store> {
        self.store.lock()
    }

    /// Counts an attempt of the message with `key` and says whether the
    /// behaviour fails it temporarily.
    pub(crate) fn temp_fail(&self, key: &str) -> bool {
        let Behaviour::TempFailFirst(n) = self.behaviour else {
            return false;
        };
        let mut store = self.lock();
        let tries = store.tries.entry(key.to_string()).or_default();
        *tries += 1;
        *tries <= n
    }

    /// The per-recipient answer at RCPT, when the address asks for one.
    pub(crate) fn recipient_answer(&self, rcpt: &str) -> Option<String> {
        let local = rcpt
            .split('@')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if local.starts_with("reject-") {
            return Some(format!(
                "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in the test sink\r\n"
            ));
        }
        if local.starts_with("tempfail-") {
            let mut store = self.lock();
            let tries = store.tries.entry(format!("rcpt:{rcpt}")).or_default();
            *tries += 1;
            if *tries <= 2 {
                return Some(format!(
                    "451 4.7.1 <{rcpt}>: greylisted by the test sink, try again later\r\n"
                ));
            }
        }
        None
    }

    pub(crate) fn record_attempt(&self, attempt: Attempt) {
        self.lock().attempts.push(attempt);
    }

    /// Keeps an accepted message (and writes it to the maildir first).
    pub(crate) fn accept(&self, mut received: Received) -> anyhow::Result<()> {
        let sequence = {
            let mut store = self.lock();
            store.sequence += 1;
            store.sequence
        };
        if let Some(dir) = &self.maildir {
            let millis = crate::clock::unix_millis();
            let name = format!("{millis}-{sequence:06}.eml");
            let tmp = dir.join(format!(".{name}.tmp"));
            let path = dir.join(&name);
            // X-Sink-Peer: the address the message came from (an egress
            // proxy's, when the sender used one).
            let mut body = format!(
                "Return-Path: <{}>\r\nDelivered-To: {}\r\nX-Sink-Peer: {}\r\n",
                received.mail_from,
                received.rcpt_to.join(", "),
                received.peer.ip()
            )
            .into_bytes();
            body.extend_from_slice(&received.data);
            std::fs::write(&tmp, &body)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .with_context(|| format!("sink: cannot store a message in {}", dir.display()))?;
            received.file = Some(path);
        }
        let count = {
            let mut store = self.lock();
            store.messages.push(received);
            store.messages.len()
        };
        self.count.send_replace(count);
        Ok(())
    }
}

/// A running sink; it stops when dropped.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Sink {
    pub async fn start(config: SinkConfig) -> anyhow::Result<Sink> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(session::acceptor(cert, key)?),
            None => None,
        };
        if let Some(dir) = &config.maildir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("sink: cannot create the maildir {}", dir.display()))?;
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("sink: cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behaviour: config.behaviour,
            maildir: config.maildir,
            tls,
            store: Mutex::default(),
            count: watch::channel(0).0,
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(session::accept_loop(
            listener,
            shared.clone(),
            shutdown.clone(),
        ));
        Ok(Sink {
            addr,
            shared,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message accepted so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.lock().messages.clone()
    }

    /// Every end of `DATA` answered so far, accepted or not.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared.lock().attempts.clone()
    }

    /// Waits until at least `n` messages have arrived, at most `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        let mut count = self.shared.count.subscribe();
        let waited = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await;
        match waited {
            Ok(Ok(_)) => Ok(self.messages()),
            _ => anyhow::bail!(
                "sink {}: {} of {n} messages arrived within {timeout:?}",
                self.addr,
                self.messages().len()
            ),
        }
    }

    /// Stops accepting connections (open sessions end at their next read).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests;
