//! A connection's bytes: buffered input read in lines or raw, and replies
//! queued until the client's pipelined input is used up (RFC 2920).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the client closed the connection")]
    Closed,
    #[error("no input within {0:?}")]
    Timeout(Duration),
    #[error("the server is shutting down")]
    Shutdown,
    #[error("the session deadline passed")]
    Deadline(Deadline),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One line from the client, CRLF removed.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Ok(Vec<u8>),
    /// Ended by LF alone.
    BareLf,
    /// Longer than the limit; read and dropped up to its end.
    TooLong,
}

/// Which session deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// `pre_auth_timeout`: no successful AUTH yet.
    PreAuth,
    /// `session_timeout`: the whole session.
    Session,
}

/// A stream with its input buffer and queued replies.
pub struct Conn<S> {
    stream: S,
    input: BytesMut,
    output: Vec<u8>,
    shutdown: CancellationToken,
    deadline: Option<(tokio::time::Instant, Deadline)>,
}

const READ_CHUNK: usize = 16 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, shutdown: CancellationToken) -> Self {
        Conn {
            stream,
            input: BytesMut::with_capacity(READ_CHUNK),
            output: Vec::with_capacity(512),
            shutdown,
            deadline: None,
        }
    }

    /// No read waits past `at`: then reading fails with `Deadline(what)`.
    pub fn set_deadline(&mut self, at: tokio::time::Instant, what: Deadline) {
        self.deadline = Some((at, what));
    }

    /// The stream alone. Whatever input was buffered is dropped: after
    /// STARTTLS nothing sent in plaintext may be taken as a command.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Queues one reply line (CRLF added).
    pub fn reply(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        self.stream.flush().await
    }

    /// Buffered input not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.input
    }

    pub fn consume(&mut self, n: usize) {
        self.input.advance(n);
    }

    /// Sends the queued replies, then waits for more input. With
    /// `interruptible`, a shutdown ends the wait.
    pub async fn read_more(
        &mut self,
        timeout: Duration,
        interruptible: bool,
    ) -> Result<(), ReadError> {
        self.flush().await?;
        self.input.reserve(READ_CHUNK);
        let shutdown = self.shutdown.clone();
        let now = tokio::time::Instant::now();
        let (wait, late) = match self.deadline {
            Some((at, what)) if at <= now + timeout => {
                (at.saturating_duration_since(now), Some(what))
            }
            _ => (timeout, None),
        };
        let read = tokio::time::timeout(wait, self.stream.read_buf(&mut self.input));
        let n = tokio::select! {
            _ = shutdown.cancelled(), if interruptible => return Err(ReadError::Shutdown),
            read = read => match (read, late) {
                (Ok(read), _) => read?,
                (Err(_), Some(what)) => return Err(ReadError::Deadline(what)),
                (Err(_), None) => return Err(ReadError::Timeout(timeout)),
            },
        };
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Ok(())
    }

    /// The next line, at most `max` octets with its CRLF.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, ReadError> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.input) {
                let line = self.input.split_to(pos + 1);
                return Ok(if line.len() > max {
                    Line::TooLong
                } else if pos == 0 || line[pos - 1] != b'\r' {
                    Line::BareLf
                } else {
                    Line::Ok(line[..pos - 1].to_vec())
                });
            }
            if self.input.len() >= max {
                return self.skip_line(timeout).await.map(|()| Line::TooLong);
            }
            // Shutdown interrupts only between commands.
            let idle = self.input.is_empty();
            self.read_more(timeout, idle).await?;
        }
    }

    /// Drops input up to and including the next LF.
    async fn skip_line(&mut self, timeout: Duration) -> Result<(), ReadError> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.input) {
                self.input.advance(pos + 1);
                return Ok(());
            }
            self.input.clear();
            self.read_more(timeout, false).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_bare_lf_and_overlong() {
        let (client, server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(server, CancellationToken::new());
        let (_read, mut write) = tokio::io::split(client);
        let t = Duration::from_secs(5);
        let long = "x".repeat(300);
        write
            .write_all(format!("EHLO a\r\nNOOP\n{long}\r\nQUIT\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            conn.read_line(100, t).await.unwrap(),
            Line::Ok(b"EHLO a".to_vec())
        );
        assert_eq!(conn.read_line(100, t).await.unwrap(), Line::BareLf);
        assert_eq!(conn.read_line(100, t).await.unwrap(), Line::TooLong);
        assert_eq!(
            conn.read_line(100, t).await.unwrap(),
            Line::Ok(b"QUIT".to_vec())
        );
        write.shutdown().await.unwrap();
        assert!(matches!(
            conn.read_line(100, t).await,
            Err(ReadError::Closed)
        ));
    }

    #[tokio::test]
    async fn shutdown_interrupts_an_idle_read() {
        let (_client, server) = tokio::io::duplex(1024);
        let shutdown = CancellationToken::new();
        let mut conn = Conn::new(server, shutdown.clone());
        shutdown.cancel();
        assert!(matches!(
            conn.read_line(100, Duration::from_secs(5)).await,
            Err(ReadError::Shutdown)
        ));
    }
}
