//! The sink's SMTP server side: one task per connection, STARTTLS as a
//! change of stream that drops whatever plaintext was buffered.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{Attempt, Behaviour, Received, Shared, MAX_SIZE};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<Box<dyn Io>>;

const MAX_COMMAND: u64 = 4096;
const MAX_DATA_LINE: u64 = 1024 * 1024;

/// A TLS acceptor for the PEM certificate chain and key.
pub(crate) fn acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("sink: the TLS certificate is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("sink: the TLS key is not a PEM private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("sink: TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("sink: the TLS certificate and key do not fit together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    while let Some((stream, _peer)) =
        crate::accept::next_connection(&listener, "sink", shutdown.cancelled()).await
    {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = session(stream, &shared) => {}
            }
        });
    }
}

struct Transaction {
    mail_from: String,
    rcpt_to: Vec<String>,
}

async fn reply(conn: &mut Conn, text: &str) -> std::io::Result<()> {
    let stream = conn.get_mut();
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

async fn read_line(conn: &mut Conn, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = (&mut *conn)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?;
    Ok((n > 0).then_some(line))
}

/// The address inside `FROM:<...>` / `TO:<...>`, parameters ignored.
fn path(argument: &str, prefix: &str) -> Option<String> {
    let rest = argument.get(..prefix.len())?;
    if !rest.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = argument[prefix.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

async fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut conn: Conn = BufReader::new(Box::new(stream));
    let mut tls = false;
    let mut helo = String::new();
    let mut transaction: Option<Transaction> = None;
    reply(&mut conn, "220 sink.test ESMTP unMTA test sink\r\n").await?;
    loop {
        let Some(line) = read_line(&mut conn, MAX_COMMAND).await? else {
            return Ok(());
        };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, argument) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                helo = argument.trim().to_string();
                transaction = None;
                let text = ehlo_reply(&helo, shared.tls.is_some() && !tls);
                reply(&mut conn, &text).await?;
            }
            "HELO" => {
                helo = argument.trim().to_string();
                transaction = None;
                reply(&mut conn, "250 sink.test\r\n").await?;
            }
            "STARTTLS" => {
                let Some(acceptor) = shared.tls.clone().filter(|_| !tls) else {
                    reply(&mut conn, "502 5.5.1 STARTTLS not available\r\n").await?;
                    continue;
                };
                reply(&mut conn, "220 2.0.0 ready to start TLS\r\n").await?;
                // into_inner drops any plaintext pipelined after STARTTLS.
                let plain = conn.into_inner();
                let secured = acceptor.accept(plain).await?;
                conn = BufReader::new(Box::new(secured));
                tls = true;
                helo.clear();
                transaction = None;
            }
            "MAIL" => match path(argument, "FROM:") {
                _ if helo.is_empty() => reply(&mut conn, "503 5.5.1 EHLO first\r\n").await?,
                Some(mail_from) => {
                    transaction = Some(Transaction {
                        mail_from,
                        rcpt_to: Vec::new(),
                    });
                    reply(&mut conn, "250 2.1.0 sender ok\r\n").await?;
                }
                None => reply(&mut conn, "501 5.5.4 syntax: MAIL FROM:<address>\r\n").await?,
            },
            "RCPT" => {
                let answer = rcpt(shared, transaction.as_mut(), argument);
                reply(&mut conn, &answer).await?;
            }
            "DATA" => {
                let Some(t) = transaction.take().filter(|t| !t.rcpt_to.is_empty()) else {
                    reply(&mut conn, "554 5.5.1 no valid recipients\r\n").await?;
                    continue;
                };
                reply(&mut conn, "354 end with <CRLF>.<CRLF>\r\n").await?;
                let Some(data) = read_data(&mut conn).await? else {
                    return Ok(());
                };
                let answer = finish(shared, t, data, (tls, &helo, peer)).await;
                reply(&mut conn, &answer).await?;
            }
            "RSET" => {
                transaction = None;
                reply(&mut conn, "250 2.0.0 ok\r\n").await?;
            }
            "NOOP" => reply(&mut conn, "250 2.0.0 ok\r\n").await?,
            "QUIT" => {
                reply(&mut conn, "221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => reply(&mut conn, "500 5.5.2 command not recognised\r\n").await?,
        }
    }
}

/// The multi-line EHLO answer, offering STARTTLS when `starttls`.
fn ehlo_reply(helo: &str, starttls: bool) -> String {
    let mut lines = vec![
        format!("sink.test greets {helo}"),
        "PIPELINING".into(),
        "8BITMIME".into(),
        "SMTPUTF8".into(),
        "ENHANCEDSTATUSCODES".into(),
        format!("SIZE {MAX_SIZE}"),
    ];
    if starttls {
        lines.push("STARTTLS".into());
    }
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
        .collect()
}

/// The answer to `RCPT <argument>`; a taken recipient joins `transaction`.
fn rcpt(shared: &Shared, transaction: Option<&mut Transaction>, argument: &str) -> String {
    match (transaction, path(argument, "TO:")) {
        (None, _) => "503 5.5.1 MAIL first\r\n".into(),
        (Some(_), None) => "501 5.5.4 syntax: RCPT TO:<address>\r\n".into(),
        (Some(_), Some(_)) if shared.behaviour == Behaviour::Reject => {
            "550 5.1.1 rejected by the test sink\r\n".into()
        }
        (Some(t), Some(rcpt)) => match shared.recipient_answer(&rcpt) {
            Some(answer) => answer,
            None => {
                t.rcpt_to.push(rcpt);
                "250 2.1.5 recipient ok\r\n".into()
            }
        },
    }
}

/// Reads a DATA body up to the lone dot; `Ok(None)` when the client went
/// away. A body over `MAX_SIZE` is read to its end and returned as `Err`
/// inside `Some` so the session can answer 552.
async fn read_data(conn: &mut Conn) -> std::io::Result<Option<Result<Vec<u8>, usize>>> {
    let mut data = Vec::new();
    let mut size = 0usize;
    loop {
        let Some(line) = read_line(conn, MAX_DATA_LINE).await? else {
            return Ok(None);
        };
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(&line);
        if content == b"." {
            break;
        }
        let content = content.strip_prefix(b".").unwrap_or(content);
        size += content.len() + 2;
        if size <= MAX_SIZE {
            data.extend_from_slice(content);
            data.extend_from_slice(b"\r\n");
        }
    }
    Ok(Some(if size <= MAX_SIZE {
        Ok(data)
    } else {
        Err(size)
    }))
}

/// Decides the answer to the end of DATA and keeps what is accepted.
async fn finish(
    shared: &Shared,
    transaction: Transaction,
    data: Result<Vec<u8>, usize>,
    (tls, helo, peer): (bool, &str, std::net::SocketAddr),
) -> String {
    let data = match data {
        Ok(data) => data,
        Err(size) => return format!("552 5.3.4 {size} bytes is over the limit of {MAX_SIZE}\r\n"),
    };
    let received = Received {
        mail_from: transaction.mail_from,
        rcpt_to: transaction.rcpt_to,
        data,
        arrived_at: Instant::now(),
        file: None,
        tls,
        helo: helo.to_string(),
        peer,
    };
    let message_id = received.header("Message-ID");
    let key = message_id
        .clone()
        .unwrap_or_else(|| hex::encode(sha2::Sha256::digest(&received.data)));
    let (code, answer) = if shared.temp_fail(&key) {
        (
            451,
            "451 4.3.0 temporary failure from the test sink\r\n".to_string(),
        )
    } else {
        if let Behaviour::Slow(delay) = shared.behaviour {
            tokio::time::sleep(delay).await;
        }
        match shared.accept(received.clone()) {
            Ok(()) => (250, "250 2.0.0 queued by the test sink\r\n".to_string()),
            Err(error) => {
                tracing::error!("{error:#}");
                (451, format!("451 4.3.0 {error}\r\n"))
            }
        }
    };
    shared.record_attempt(Attempt {
        mail_from: received.mail_from,
        rcpt_to: received.rcpt_to,
        message_id,
        code,
        at: Instant::now(),
    });
    answer
}
