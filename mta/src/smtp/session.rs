//! One SMTP connection, on any stream, in the order RFC 5321 and
//! submission ask for: EHLO first; before STARTTLS nothing but EHLO, HELO,
//! NOOP, RSET and QUIT, except mail to the node's own bounce domain; AUTH
//! before MAIL for any other recipient; one transaction at a time. The
//! limits and refusals are listed in the README's "Security: what an MTA
//! refuses, and its limits".
//!
//! The plaintext phase and the TLS phase are two [`Session`]s on two stream
//! types: STARTTLS ends the first, takes the bare stream out of its buffer
//! (whatever the client pipelined behind STARTTLS is dropped with it) and
//! starts the second on the TLS stream, with nothing remembered but the
//! connection itself (RFC 3207 4.2).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use smtp_proto::{Request, AUTH_LOGIN, AUTH_PLAIN, MAIL_SMTPUTF8};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::conn::{Conn, Deadline, Line, ReadError};
use super::data::{self, Data, DataLimits, Received};
use crate::auth::Principal;
use crate::config::Settings;
use crate::ingress::{Ingress, Rejected, Submission, Via};
use crate::policy;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What a connection knows of where it is.
pub struct Context {
    pub ingress: Arc<Ingress>,
    /// The settings in service when the connection was accepted.
    pub settings: Arc<Settings>,
    pub peer: SocketAddr,
    pub port: u16,
}

impl Context {
    fn listener(&self) -> String {
        format!("smtp:{}", self.port)
    }
}

/// Serves one connection from the banner to the close.
pub async fn serve<S>(stream: S, ctx: Context)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let shutdown = ctx.ingress.control.shutdown.clone();
    let started = tokio::time::Instant::now();
    let limits = &ctx.settings.node.smtp;
    let mut conn = Conn::new(stream, shutdown.clone());
    conn.set_deadline(started + limits.pre_auth_timeout, Deadline::PreAuth);
    conn.reply(&format!("220 {} ESMTP unMTA", ctx.settings.hostname));
    let mut plain = Session::new(&ctx, false, started);
    let next = plain.commands(&mut conn).await;
    if conn.flush().await.is_err() || next != Next::StartTls {
        let _ = conn.into_stream().shutdown().await;
        return;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(ctx.settings.tls.smtp.clone());
    let timeout = limits.tls_handshake_timeout;
    let stream = conn.into_stream();
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            ctx.ingress.metrics.tls_handshake(&ctx.listener(), false);
            tracing::debug!(peer = %ctx.peer, "TLS handshake failed: {error}");
            return;
        }
        Err(_) => {
            ctx.ingress.metrics.tls_handshake(&ctx.listener(), false);
            tracing::debug!(peer = %ctx.peer, "TLS handshake timed out");
            return;
        }
    };
    ctx.ingress.metrics.tls_handshake(&ctx.listener(), true);
    let mut conn = Conn::new(tls, shutdown);
    conn.set_deadline(started + limits.pre_auth_timeout, Deadline::PreAuth);
    let mut secure = Session::new(&ctx, true, started);
    secure.commands(&mut conn).await;
    if conn.flush().await.is_ok() {
        let _ = conn.into_stream().shutdown().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    StartTls,
    Close,
}

struct Transaction {
    sender: String,
    recipients: Vec<String>,
    smtputf8: bool,
    /// Without AUTH on the bounce port: only the bounce domain may receive.
    bounce: bool,
}

struct Session<'a> {
    ctx: &'a Context,
    tls: bool,
    helo: Option<String>,
    principal: Option<Principal>,
    transaction: Option<Transaction>,
    auth_failures: u32,
    errors: u32,
    started: tokio::time::Instant,
}

impl<'a> Session<'a> {
    fn new(ctx: &'a Context, tls: bool, started: tokio::time::Instant) -> Self {
        Session {
            ctx,
            tls,
            helo: None,
            principal: None,
            transaction: None,
            auth_failures: 0,
            errors: 0,
            started,
        }
    }

    /// Records a Rejection event for `reply`.
    fn refused(&self, credential: Option<&str>, sender: &str, recipient: &str, reply: &str) {
        self.ctx.ingress.rejection(crate::ingress::Refused {
            peer: self.ctx.peer,
            helo: self.helo.as_deref().unwrap_or_default(),
            protocol: "ESMTP",
            credential,
            sender,
            recipient,
            reply,
        });
    }

    fn limits(&self) -> &crate::config::SmtpConfig {
        &self.ctx.settings.node.smtp
    }

    fn hostname(&self) -> &str {
        &self.ctx.settings.hostname
    }

    /// Reads and answers commands until the client leaves, STARTTLS, or a
    /// limit closes the connection.
    async fn commands<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> Next {
        loop {
            let limits = self.limits();
            let line = match conn
                .read_line(limits.max_line_length, limits.command_timeout)
                .await
            {
                Ok(line) => line,
                Err(error) => {
                    self.farewell(conn, &error);
                    return Next::Close;
                }
            };
            let next = match line {
                Line::Ok(line) => self.command(conn, line).await,
                Line::BareLf => self.error(
                    conn,
                    "500 5.5.2 Syntax error: a command line must end with CRLF, not a bare LF",
                ),
                Line::TooLong => {
                    let max = self.limits().max_line_length;
                    self.error(
                        conn,
                        &format!("500 5.5.2 Line too long: at most {max} octets with CRLF"),
                    )
                }
            };
            if next != Next::Continue {
                return next;
            }
        }
    }

    /// The last word when reading ended: 421 where the client may still hear it.
    fn farewell<S: AsyncRead + AsyncWrite + Unpin>(&self, conn: &mut Conn<S>, error: &ReadError) {
        match error {
            ReadError::Timeout(_) => conn.reply(&format!(
                "421 4.4.2 {} Timeout waiting for a command, closing connection",
                self.hostname()
            )),
            ReadError::Shutdown => conn.reply(&format!(
                "421 4.3.2 {} Service shutting down, closing connection",
                self.hostname()
            )),
            ReadError::Deadline(Deadline::PreAuth) => conn.reply(&format!(
                "421 4.4.2 {} No successful AUTH within {:?}, closing connection",
                self.hostname(),
                self.limits().pre_auth_timeout
            )),
            ReadError::Deadline(Deadline::Session) => conn.reply(&format!(
                "421 4.4.2 {} Session time limit of {:?} reached, closing connection",
                self.hostname(),
                self.limits().session_timeout
            )),
            ReadError::Closed | ReadError::Io(_) => {}
        }
    }

    /// A 5xx for a bad or misplaced command; too many of them close.
    fn error<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        reply: &str,
    ) -> Next {
        self.errors += 1;
        conn.reply(reply);
        if self.errors >= self.limits().max_command_errors {
            conn.reply(&format!(
                "421 4.7.0 {} Too many errors, closing connection",
                self.hostname()
            ));
            return Next::Close;
        }
        Next::Continue
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        mut line: Vec<u8>,
    ) -> Next {
        line.extend_from_slice(b"\r\n");
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(error) => return self.error(conn, &syntax_reply(error)),
        };
        if self.needs_tls_first(&request) {
            return self.error(conn, "530 5.7.0 Must issue a STARTTLS command first");
        }
        match request {
            Request::Ehlo { host } => {
                self.ehlo(conn, &host);
                Next::Continue
            }
            Request::Helo { host } => {
                self.helo = Some(host.into_owned());
                self.transaction = None;
                conn.reply(&format!("250 {}", self.hostname()));
                Next::Continue
            }
            Request::StartTls if self.tls => self.error(conn, "503 5.5.1 TLS is already active"),
            Request::StartTls => {
                conn.reply("220 2.0.0 Ready to start TLS");
                Next::StartTls
            }
            Request::Noop { .. } => {
                conn.reply("250 2.0.0 OK");
                Next::Continue
            }
            Request::Rset => {
                self.transaction = None;
                conn.reply("250 2.0.0 OK");
                Next::Continue
            }
            Request::Quit => {
                conn.reply(&format!("221 2.0.0 {} closing connection", self.hostname()));
                Next::Close
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                let initial = initial_response.into_owned();
                self.auth(conn, mechanism, initial).await
            }
            Request::Mail { from } => {
                let (address, size, flags) = (from.address.into_owned(), from.size, from.flags);
                self.mail(conn, address, size, flags)
            }
            Request::Rcpt { to } => {
                let address = to.address.into_owned();
                self.rcpt(conn, address)
            }
            Request::Data => self.data(conn).await,
            Request::Vrfy { .. } => {
                conn.reply("252 2.5.0 Cannot VRFY user, but will accept the message");
                Next::Continue
            }
            Request::Help { .. } => {
                conn.reply("214 2.0.0 See RFC 5321");
                Next::Continue
            }
            _ => self.error(conn, "502 5.5.1 Command not implemented"),
        }
    }

    /// Before STARTTLS only the greeting, STARTTLS itself, NOOP, RSET and
    /// QUIT are taken (and a bounce's transaction where
    /// `bounces.allow_plaintext` lets it in on the bounce port).
    fn needs_tls_first(&self, request: &Request<std::borrow::Cow<'_, str>>) -> bool {
        let plaintext_bounce = self.on_bounce_port()
            && self.ctx.settings.node.bounces.allow_plaintext
            && matches!(
                request,
                Request::Mail { .. } | Request::Rcpt { .. } | Request::Data
            );
        !self.tls
            && !plaintext_bounce
            && !matches!(
                request,
                Request::Ehlo { .. }
                    | Request::Helo { .. }
                    | Request::StartTls
                    | Request::Noop { .. }
                    | Request::Rset
                    | Request::Quit
            )
    }

    fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>, host: &str) {
        self.helo = Some(host.to_string());
        self.transaction = None;
        let ip = self.ctx.peer.ip();
        conn.reply(&format!("250-{} Hello {host} [{ip}]", self.hostname()));
        conn.reply(&format!("250-SIZE {}", self.limits().max_message_size));
        conn.reply("250-PIPELINING");
        conn.reply("250-8BITMIME");
        conn.reply("250-SMTPUTF8");
        if self.tls {
            conn.reply("250-AUTH PLAIN LOGIN");
        } else {
            conn.reply("250-STARTTLS");
        }
        conn.reply("250 ENHANCEDSTATUSCODES");
    }

    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        mechanism: u64,
        initial: String,
    ) -> Next {
        if let Some(reply) = self.auth_out_of_sequence() {
            return self.error(conn, reply);
        }
        let (username, password) = match self.credentials(conn, mechanism, initial).await {
            Ok(credentials) => credentials,
            Err(next) => return next,
        };
        let client = crate::anvil::client_key(self.ctx.peer.ip(), self.limits().ipv6_client_prefix);
        let anvil = self.limits().anvil_limits();
        if let Err(blocked) = self.ctx.ingress.anvil.check(client, &username, anvil) {
            self.ctx.ingress.metrics.auth_blocked(&self.ctx.listener());
            tracing::info!(peer = %self.ctx.peer, "AUTH refused: {blocked}");
            conn.reply(&format!("454 4.7.0 {blocked}"));
            return Next::Continue;
        }
        match self.ctx.ingress.auth.verify(&username, &password).await {
            Ok(principal) => {
                tracing::debug!(peer = %self.ctx.peer, credential = %principal.username, "authenticated");
                self.principal = Some(principal);
                conn.set_deadline(
                    self.started + self.limits().session_timeout,
                    Deadline::Session,
                );
                conn.reply("235 2.7.0 Authentication successful");
                Next::Continue
            }
            Err(_) => self.auth_failed(conn, &username, (client, anvil)).await,
        }
    }

    /// Why AUTH cannot be taken now, as the reply.
    fn auth_out_of_sequence(&self) -> Option<&'static str> {
        if self.helo.is_none() {
            Some("503 5.5.1 Send EHLO first")
        } else if self.principal.is_some() {
            Some("503 5.5.1 Already authenticated")
        } else if self.transaction.is_some() {
            Some("503 5.5.1 AUTH is not allowed during a mail transaction")
        } else {
            None
        }
    }

    /// The username and password by PLAIN or LOGIN (asking for them when
    /// the command did not carry them); else what the session does next.
    async fn credentials<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        mechanism: u64,
        initial: String,
    ) -> Result<(String, String), Next> {
        let initial = if initial == "=" {
            String::new()
        } else {
            initial
        };
        let credentials = match mechanism {
            AUTH_PLAIN => {
                let response = match initial.is_empty() {
                    true => self.challenge(conn, "334 ").await,
                    false => Ok(initial),
                };
                response.map(|r| decode_plain(&r))
            }
            AUTH_LOGIN => self.login(conn, initial).await,
            _ => {
                return Err(self.error(
                    conn,
                    "504 5.5.4 Unrecognized authentication type: PLAIN and LOGIN are offered",
                ))
            }
        };
        match credentials {
            Ok(Some(credentials)) => Ok(credentials),
            Ok(None) => {
                Err(self.error(conn, "501 5.5.2 Cannot decode the authentication response"))
            }
            Err(Challenge::Cancelled) => {
                Err(self.error(conn, "501 5.7.0 Authentication cancelled"))
            }
            Err(Challenge::Gone(error)) => {
                self.farewell(conn, &error);
                Err(Next::Close)
            }
        }
    }

    /// Counts a failed AUTH (here and across connections), answers it after
    /// `auth_failure_delay`, and closes past `max_auth_failures`.
    async fn auth_failed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        username: &str,
        (client, anvil): (std::net::IpAddr, crate::anvil::Limits),
    ) -> Next {
        self.ctx.ingress.metrics.auth_failure(&self.ctx.listener());
        self.refused(
            Some(username),
            "",
            "",
            "535 5.7.8 Authentication credentials invalid",
        );
        self.ctx.ingress.anvil.failed(client, username, anvil);
        self.auth_failures += 1;
        tracing::info!(peer = %self.ctx.peer, failures = self.auth_failures, "authentication failed");
        tokio::time::sleep(self.limits().auth_failure_delay).await;
        if self.auth_failures >= self.limits().max_auth_failures {
            conn.reply("535 5.7.8 Authentication credentials invalid");
            conn.reply(&format!(
                "421 4.7.0 {} Too many authentication failures, closing connection",
                self.hostname()
            ));
            return Next::Close;
        }
        conn.reply("535 5.7.8 Authentication credentials invalid");
        Next::Continue
    }

    async fn login<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        initial: String,
    ) -> Result<Option<(String, String)>, Challenge> {
        let username = match initial.is_empty() {
            true => self.challenge(conn, "334 VXNlcm5hbWU6").await?,
            false => initial,
        };
        let Some(username) = decode_text(&username) else {
            return Ok(None);
        };
        let password = self.challenge(conn, "334 UGFzc3dvcmQ6").await?;
        Ok(decode_text(&password).map(|password| (username, password)))
    }

    /// Sends a 334 and reads the client's answer line.
    async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        prompt: &str,
    ) -> Result<String, Challenge> {
        conn.reply(prompt);
        let limits = self.limits();
        match conn
            .read_line(limits.max_line_length, limits.command_timeout)
            .await
        {
            Ok(Line::Ok(line)) if line == b"*" => Err(Challenge::Cancelled),
            Ok(Line::Ok(line)) => Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => Err(Challenge::Cancelled),
            Err(error) => Err(Challenge::Gone(error)),
        }
    }

    fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        sender: String,
        size: usize,
        flags: u64,
    ) -> Next {
        if self.helo.is_none() {
            return self.error(conn, "503 5.5.1 Send EHLO first");
        }
        if self.principal.is_none() && self.on_bounce_port() {
            return self.bounce_mail(conn, sender, flags);
        }
        let Some(principal) = &self.principal else {
            return self.error(conn, "530 5.7.0 Authentication required");
        };
        if self.transaction.is_some() {
            return self.error(conn, "503 5.5.1 Nested MAIL command");
        }
        let max = self.limits().max_message_size;
        if size > max {
            conn.reply(&format!(
                "552 5.3.4 Message size exceeds fixed maximum message size ({max} octets)"
            ));
            return Next::Continue;
        }
        let smtputf8 = flags & MAIL_SMTPUTF8 != 0;
        if !sender.is_ascii() && !smtputf8 {
            return self.error(conn, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        if let Err(error) = policy::check_sender(principal, &sender) {
            self.ctx
                .ingress
                .metrics
                .rejected(&self.ctx.listener(), Rejected::Policy);
            let reply = format!("550 5.7.1 {error}");
            let credential = principal.username.clone();
            self.refused(Some(&credential), &sender, "", &reply);
            conn.reply(&reply);
            return Next::Continue;
        }
        self.transaction = Some(Transaction {
            sender,
            recipients: Vec::new(),
            smtputf8,
            bounce: false,
        });
        conn.reply("250 2.1.0 Sender OK");
        Next::Continue
    }

    fn on_bounce_port(&self) -> bool {
        self.ctx.port == self.ctx.settings.node.bounces.port
    }

    /// MAIL without AUTH on the bounce port: a transaction whose recipients
    /// must all be at the cluster's bounce domain.
    fn bounce_mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        sender: String,
        flags: u64,
    ) -> Next {
        if self.transaction.is_some() {
            return self.error(conn, "503 5.5.1 Nested MAIL command");
        }
        self.transaction = Some(Transaction {
            sender,
            recipients: Vec::new(),
            smtputf8: flags & MAIL_SMTPUTF8 != 0,
            bounce: true,
        });
        conn.reply("250 2.1.0 Sender OK");
        Next::Continue
    }

    fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        recipient: String,
    ) -> Next {
        let max = self.limits().max_recipients;
        let Some(transaction) = &mut self.transaction else {
            return self.error(conn, "503 5.5.1 Need MAIL command first");
        };
        if policy::domain_of(&recipient).is_none() {
            return self.error(conn, "501 5.1.3 Bad recipient address syntax");
        }
        if !recipient.is_ascii() && !transaction.smtputf8 {
            return self.error(conn, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        if let Err(error) = policy::check_recipient(&recipient) {
            conn.reply(&format!("550 5.1.2 {error}"));
            return Next::Continue;
        }
        if transaction.recipients.len() >= max {
            conn.reply(&format!("452 4.5.3 Too many recipients: at most {max}"));
            return Next::Continue;
        }
        if transaction.bounce {
            let domain = self.ctx.settings.bounce_domain();
            if !crate::bounces::is_bounce_address(&recipient, &domain) {
                let reply = format!(
                    "550 5.7.1 Relaying denied: without AUTH only mail to @{domain} is accepted"
                );
                let sender = transaction.sender.clone();
                self.ctx
                    .ingress
                    .metrics
                    .rejected(&self.ctx.listener(), Rejected::Relay);
                self.refused(None, &sender, &recipient, &reply);
                conn.reply(&reply);
                return Next::Continue;
            }
        }
        transaction.recipients.push(recipient);
        conn.reply("250 2.1.5 Recipient OK");
        Next::Continue
    }

    async fn data<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> Next {
        let Some(transaction) = &self.transaction else {
            return self.error(conn, "503 5.5.1 Need MAIL command first");
        };
        if transaction.recipients.is_empty() {
            return self.error(conn, "554 5.5.1 No valid recipients");
        }
        if let Err(reason) = self.ctx.ingress.spool_health() {
            tracing::warn!(peer = %self.ctx.peer, "DATA refused, the spool cannot take mail: {reason}");
            self.transaction = None;
            conn.reply("451 4.3.0 Temporary failure: the spool cannot take mail, try again later");
            return Next::Continue;
        }
        conn.reply("354 Start mail input; end with <CRLF>.<CRLF>");
        let limits = self.limits();
        let max_size = match transaction.bounce {
            true => self.ctx.settings.node.bounces.max_size,
            false => limits.max_message_size,
        };
        let data_limits = DataLimits {
            max_size,
            max_line: limits.max_line_length,
            timeout: limits.data_timeout,
            // Bounce reports are read whole (they are small).
            max_header: match transaction.bounce {
                true => max_size,
                false => limits.max_header_size,
            },
        };
        let received = data::receive(conn, data_limits).await;
        // Whatever happens, the transaction is over.
        let Some(transaction) = self.transaction.take() else {
            return Next::Close;
        };
        let message = match received {
            Ok(Received::Whole(Data::Message(message))) => message,
            Ok(Received::Whole(refused)) => return self.refuse_data(conn, refused, max_size),
            Ok(Received::Streaming(stream)) => {
                return self.streamed(conn, &transaction, stream, max_size).await
            }
            Err(error) => {
                self.farewell(conn, &error);
                return Next::Close;
            }
        };
        if transaction.bounce {
            self.bounce_report(&transaction, &message);
            conn.reply("250 2.0.0 OK report taken");
            return Next::Continue;
        }
        let Some(principal) = &self.principal else {
            return Next::Close;
        };
        let facts = policy::inspect(&message);
        if let Err(error) = policy::check_from(principal, &facts) {
            self.refuse_from(conn, &transaction, error);
            return Next::Continue;
        }
        let message = facts.strip_return_path(message);
        let submission = self.submission(principal, &transaction, &message, &facts);
        let submitted = self.ctx.ingress.submit(submission).await;
        self.queued(conn, submitted);
        Next::Continue
    }

    /// A message past `max_header_size`: judged by its header section,
    /// then its rest written to the spool as it arrives.
    async fn streamed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        transaction: &Transaction,
        mut stream: data::Stream,
        max_size: usize,
    ) -> Next {
        let Some(principal) = &self.principal else {
            return Next::Close;
        };
        let facts = policy::inspect(stream.header());
        let refusal = policy::check_from(principal, &facts).err();
        let mut incoming = None;
        let mut unstored = None;
        if refusal.is_none() {
            let header = facts.strip_return_path(stream.take_header());
            let submission = self.submission(principal, transaction, &header, &facts);
            match self.ctx.ingress.stage(&submission).await {
                Ok(staged) => incoming = Some(staged),
                Err(error) => unstored = Some(error),
            }
        }
        let rest = match &mut incoming {
            Some(incoming) => stream.rest(conn, incoming).await,
            None => stream.rest(conn, &mut data::Discard).await,
        };
        let data = match rest {
            Ok(data) => data,
            Err(error) => {
                self.farewell(conn, &error);
                return Next::Close;
            }
        };
        if !matches!(data, Data::Message(_)) {
            return self.refuse_data(conn, data, max_size);
        }
        if let Some(error) = refusal {
            self.refuse_from(conn, transaction, error);
            return Next::Continue;
        }
        let submitted = match incoming {
            Some(incoming) => {
                let submission = self.submission(principal, transaction, &[], &facts);
                self.ctx.ingress.submit_staged(submission, incoming).await
            }
            None => Err(unstored.unwrap_or_else(|| {
                crate::spool::SpoolError::Unavailable("the message was not staged".into())
            })),
        };
        self.queued(conn, submitted);
        Next::Continue
    }

    fn submission<'s>(
        &'s self,
        principal: &'s Principal,
        transaction: &'s Transaction,
        data: &'s [u8],
        facts: &policy::HeaderFacts,
    ) -> Submission<'s> {
        Submission {
            principal,
            sender: &transaction.sender,
            recipients: &transaction.recipients,
            data,
            has_message_id: facts.has_message_id,
            has_date: facts.has_date,
            via: Via::Smtp {
                port: self.ctx.port,
                helo: self.helo.as_deref().unwrap_or_default(),
            },
            peer: self.ctx.peer,
        }
    }

    fn queued<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
        submitted: Result<crate::message::MessageId, crate::spool::SpoolError>,
    ) {
        match submitted {
            Ok(id) => conn.reply(&format!("250 2.0.0 OK queued as {id}")),
            Err(_) => conn.reply(
                "451 4.3.0 Temporary failure: the message could not be stored, try again later",
            ),
        }
    }

    /// `550 5.7.1` for a From: (or other originator) the credential may not use.
    fn refuse_from<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
        transaction: &Transaction,
        error: policy::PolicyError,
    ) {
        self.ctx
            .ingress
            .metrics
            .rejected(&self.ctx.listener(), Rejected::Policy);
        let reply = format!("550 5.7.1 {error}");
        let rcpt = transaction.recipients.first().map_or("", String::as_str);
        let credential = self.principal.as_ref().map(|p| p.username.as_str());
        self.refused(credential, &transaction.sender, rcpt, &reply);
        conn.reply(&reply);
    }

    fn bounce_report(&self, transaction: &Transaction, message: &[u8]) {
        let settings = &self.ctx.settings;
        crate::bounces::receive(
            &self.ctx.ingress.events,
            &self.ctx.ingress.metrics.bounces,
            crate::bounces::Inbound {
                peer: self.ctx.peer,
                helo: self.helo.as_deref().unwrap_or_default(),
                recipients: &transaction.recipients,
                data: message,
                cluster: &settings.cluster_id,
                bounce_domain: &settings.bounce_domain(),
            },
        );
    }

    /// The reply for a message DATA did not deliver whole.
    fn refuse_data<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut Conn<S>,
        data: Data,
        max_size: usize,
    ) -> Next {
        let listener = self.ctx.listener();
        let metrics = &self.ctx.ingress.metrics;
        let too_big = format!(
            "552 5.3.4 Message size exceeds fixed maximum message size ({max_size} octets)"
        );
        let (reason, reply) = match data {
            Data::Message(_) => return Next::Continue,
            Data::TooBig => (Rejected::Size, too_big),
            Data::Abandoned => {
                metrics.rejected(&listener, Rejected::Size);
                conn.reply(&too_big);
                conn.reply(&format!("421 4.7.0 {} closing connection", self.hostname()));
                return Next::Close;
            }
            Data::HeaderTooBig => (
                Rejected::Size,
                format!(
                    "552 5.3.4 Message header section exceeds the maximum of {} octets",
                    self.limits().max_header_size
                ),
            ),
            Data::LineTooLong => (
                Rejected::Syntax,
                format!(
                    "550 5.6.0 Message has a line longer than {} octets (RFC 5321 4.5.3.1.6)",
                    self.limits().max_line_length
                ),
            ),
            Data::BareNewline => (
                Rejected::Syntax,
                "550 5.6.0 Message has a bare CR or LF: lines must end with CRLF (RFC 5321 2.3.8)"
                    .to_string(),
            ),
            Data::Control(at) => (
                Rejected::Syntax,
                format!("550 5.6.0 Message has a NUL or another control character at byte {at}: only TAB is allowed"),
            ),
            Data::Unstored(error) => {
                metrics.rejected(&listener, Rejected::Spool);
                tracing::error!(peer = %self.ctx.peer, "spool refused a message: {error}");
                conn.reply("451 4.3.0 Temporary failure: the message could not be stored, try again later");
                return Next::Continue;
            }
        };
        metrics.rejected(&listener, reason);
        conn.reply(&reply);
        Next::Continue
    }
}

enum Challenge {
    Cancelled,
    Gone(ReadError),
}

/// SASL PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`; an authzid, if
/// given, must be the authcid.
fn decode_plain(response: &str) -> Option<(String, String)> {
    let decoded = BASE64.decode(response.trim()).ok()?;
    let mut parts = decoded.split(|&b| b == 0);
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || authcid.is_empty() {
        return None;
    }
    if !authzid.is_empty() && authzid != authcid {
        return None;
    }
    Some((
        String::from_utf8(authcid.to_vec()).ok()?,
        String::from_utf8(password.to_vec()).ok()?,
    ))
}

fn decode_text(response: &str) -> Option<String> {
    String::from_utf8(BASE64.decode(response.trim()).ok()?).ok()
}

fn syntax_reply(error: smtp_proto::Error) -> String {
    use smtp_proto::Error;
    match error {
        Error::UnknownCommand => "500 5.5.1 Unrecognized command".to_string(),
        Error::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax".to_string(),
        Error::InvalidRecipientAddress => "501 5.1.3 Bad recipient address syntax".to_string(),
        Error::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}"),
        Error::InvalidParameter { param } => format!("501 5.5.4 Invalid parameter {param}"),
        Error::UnsupportedParameter { param } => {
            format!("555 5.5.4 Unsupported parameter {param}")
        }
        Error::ResponseTooLong => "500 5.5.2 Line too long".to_string(),
        Error::NeedsMoreData { .. } | Error::InvalidResponse { .. } => {
            "500 5.5.2 Syntax error".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_plain() {
        let enc = |s: &[u8]| BASE64.encode(s);
        assert_eq!(
            decode_plain(&enc(b"\0user\0pass")),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(
            decode_plain(&enc(b"user\0user\0pass")),
            Some(("user".into(), "pass".into()))
        );
        assert_eq!(decode_plain(&enc(b"other\0user\0pass")), None);
        assert_eq!(decode_plain(&enc(b"\0user")), None);
        assert_eq!(decode_plain("not base64!"), None);
    }
}
