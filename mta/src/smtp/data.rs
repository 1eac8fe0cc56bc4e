//! Reading DATA (RFC 5321 4.1.1.4, 4.5.2): lines up to `<CRLF>.<CRLF>`,
//! dot-unstuffed, with the message size, line length and line endings
//! checked on the way. The end is only ever `<CRLF>.<CRLF>`: a bare LF or
//! CR never ends a line (no SMTP smuggling), it fails the message. Past the
//! size limit nothing more is kept; past twice the limit the connection is
//! given up.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Conn, ReadError};

#[derive(Debug, Clone, Copy)]
pub struct DataLimits {
    pub max_size: usize,
    pub max_line: usize,
    pub timeout: Duration,
}

/// What DATA delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    /// The whole message, CRLF line ends, unstuffed.
    Message(Vec<u8>),
    /// Over the size limit; the rest was read and dropped.
    TooBig,
    /// Far over the size limit: the client is still sending, give up.
    Abandoned,
    /// A line longer than the limit.
    LineTooLong,
    /// A CR or LF that is not part of a CRLF.
    BareNewline,
    /// A NUL or another C0 control other than TAB, at this offset.
    Control(usize),
}

/// The state between chunks of input.
struct Receiver {
    limits: DataLimits,
    body: Vec<u8>,
    size: usize,
    at_line_start: bool,
    line_len: usize,
    /// The last byte taken was a CR (a line end may straddle two reads).
    after_cr: bool,
    bare_newline: bool,
    long_line: bool,
    /// The offset of the first NUL or C0 control other than TAB.
    control: Option<usize>,
}

impl Receiver {
    fn new(limits: DataLimits) -> Self {
        Receiver {
            limits,
            body: Vec::with_capacity(8 * 1024),
            size: 0,
            at_line_start: true,
            line_len: 0,
            after_cr: false,
            bare_newline: false,
            long_line: false,
            control: None,
        }
    }

    /// Takes what it can from `input`; returns the bytes consumed and
    /// whether the end of data was seen. Leaves bytes it cannot judge yet
    /// (a "." or ".\r" at a line start) for the next call.
    fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            if self.at_line_start && rest[0] == b'.' {
                match rest {
                    [b'.', b'\r', b'\n', ..] => return (used + 3, true),
                    [b'.'] | [b'.', b'\r'] => return (used, false),
                    _ => {
                        // A stuffed dot: drop it, count it as sent.
                        used += 1;
                        self.line_len += 1;
                        self.at_line_start = false;
                        continue;
                    }
                }
            }
            let (segment, line_ends) = match memchr::memchr(b'\n', rest) {
                Some(pos) => (&rest[..=pos], true),
                None => (rest, false),
            };
            let crlf = self.check(segment, line_ends);
            self.keep(segment);
            used += segment.len();
            if crlf {
                self.line_len = 0;
                self.at_line_start = true;
                self.after_cr = false;
            } else {
                self.at_line_start = false;
                self.after_cr = segment.last() == Some(&b'\r');
            }
        }
        (used, false)
    }

    /// Checks a segment (a line's end, or a piece of a line); true when it
    /// ends the line with CRLF. A bare LF ends no line.
    fn check(&mut self, segment: &[u8], line_ends: bool) -> bool {
        self.line_len += segment.len();
        if self.line_len > self.limits.max_line {
            self.long_line = true;
        }
        if self.after_cr && segment.first() != Some(&b'\n') {
            self.bare_newline = true;
        }
        let (body, crlf) = if line_ends {
            let lf = segment.len() - 1;
            let crlf = match lf {
                0 => self.after_cr,
                _ => segment[lf - 1] == b'\r',
            };
            (&segment[..lf - usize::from(crlf && lf > 0)], crlf)
        } else {
            // A CR last may be followed by LF in the next read.
            (&segment[..segment.len().saturating_sub(1)], false)
        };
        if line_ends && !crlf {
            self.bare_newline = true;
        }
        // Every other CR is bare.
        if memchr::memchr(b'\r', body).is_some() {
            self.bare_newline = true;
        }
        crlf
    }

    fn keep(&mut self, segment: &[u8]) {
        if self.control.is_none() {
            self.control = crate::policy::control_character(segment).map(|at| self.size + at);
        }
        self.size += segment.len();
        if self.size <= self.limits.max_size {
            self.body.extend_from_slice(segment);
        } else if !self.body.is_empty() {
            self.body = Vec::new();
        }
    }

    fn abandoned(&self) -> bool {
        self.size > self.limits.max_size.saturating_mul(2)
    }

    fn finish(self) -> Data {
        if self.size > self.limits.max_size {
            Data::TooBig
        } else if self.bare_newline {
            Data::BareNewline
        } else if self.long_line {
            Data::LineTooLong
        } else if let Some(at) = self.control {
            Data::Control(at)
        } else {
            Data::Message(self.body)
        }
    }
}

/// Reads a message after `354`.
pub async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    limits: DataLimits,
) -> Result<Data, ReadError> {
    let mut receiver = Receiver::new(limits);
    loop {
        let (used, done) = receiver.feed(conn.buffered());
        conn.consume(used);
        if done {
            return Ok(receiver.finish());
        }
        if receiver.abandoned() {
            return Ok(Data::Abandoned);
        }
        conn.read_more(limits.timeout, false).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DataLimits {
        DataLimits {
            max_size: 64,
            max_line: 20,
            timeout: Duration::from_secs(1),
        }
    }

    /// Feeds `chunks` one after another as separate reads.
    fn run(chunks: &[&[u8]]) -> (Data, Vec<u8>) {
        let mut receiver = Receiver::new(limits());
        let mut pending = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            let (used, done) = receiver.feed(&pending);
            pending.drain(..used);
            if done {
                return (receiver.finish(), pending);
            }
        }
        panic!("no end of data");
    }

    #[test]
    fn unstuffs_and_ends_at_crlf_dot_crlf() {
        let (data, rest) = run(&[b"a\r\n..b\r\n.c\r\n.\r\nQUIT\r\n"]);
        assert_eq!(data, Data::Message(b"a\r\n.b\r\nc\r\n".to_vec()));
        assert_eq!(rest, b"QUIT\r\n");
        assert_eq!(run(&[b".\r\n"]).0, Data::Message(Vec::new()));
    }

    #[test]
    fn end_marker_split_across_reads() {
        let (data, _) = run(&[b"a\r", b"\n", b".", b"\r", b"\n"]);
        assert_eq!(data, Data::Message(b"a\r\n".to_vec()));
        let (data, _) = run(&[b"a\r\n.", b".\r\n.\r\n"]);
        assert_eq!(data, Data::Message(b"a\r\n.\r\n".to_vec()));
    }

    #[test]
    fn bare_lf_never_ends_data() {
        // The smuggling shapes: none of them ends the message early.
        for input in [
            &b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n"[..],
            b"a\r\n.\nRSET\r\n.\r\n",
            b"a\r.\r\nb\r\n.\r\n",
        ] {
            let (data, rest) = run(&[input]);
            assert_eq!(data, Data::BareNewline, "{input:?}");
            assert!(rest.is_empty(), "{input:?}");
        }
        let (data, _) = run(&[b"a\r", b"b\r\n.\r\n"]);
        assert_eq!(data, Data::BareNewline);
    }

    #[test]
    fn long_lines_and_size() {
        let (data, _) = run(&[b"0123456789012345678\r\n.\r\n"]);
        assert_eq!(data, Data::LineTooLong);
        let (data, _) = run(&[b"012345678901234567\r\n.\r\n"]);
        assert!(matches!(data, Data::Message(_)));
        let line = b"0123456789\r\n";
        let mut big = Vec::new();
        for _ in 0..6 {
            big.extend_from_slice(line);
        }
        // 72 bytes > 64.
        big.extend_from_slice(b".\r\n");
        assert_eq!(run(&[&big]).0, Data::TooBig);
        // Exactly 64 is fine.
        let mut exact = big[..60].to_vec();
        exact.extend_from_slice(b"ab\r\n.\r\n");
        assert_eq!(run(&[&exact]).0, Data::Message(exact[..64].to_vec()));
    }

    #[test]
    fn control_characters_are_refused() {
        assert_eq!(run(&[b"a\tb\r\nc\0d\r\n.\r\n"]).0, Data::Control(6));
        assert_eq!(run(&[b"a\r\n", b"\x1b$B\r\n.\r\n"]).0, Data::Control(3));
        assert!(matches!(run(&[b"a\tb\r\n.\r\n"]).0, Data::Message(_)));
    }
}
