//! Reading DATA (RFC 5321 4.1.1.4, 4.5.2): lines up to `<CRLF>.<CRLF>`,
//! dot-unstuffed, with the message size, line length and line endings
//! checked on the way. The end is only ever `<CRLF>.<CRLF>`: a bare LF or
//! CR never ends a line (no SMTP smuggling), it fails the message. Past the
//! size limit nothing more is kept; past twice the limit the connection is
//! given up.
//!
//! Memory per connection is bounded by `max_header`, not by the message
//! size: a message that grows past `max_header` with its header section
//! complete is handed back as a [`Stream`], whose rest goes to a [`Sink`]
//! (the spool) in chunks of [`CHUNK`] as it arrives. One whose header
//! section does not end within `max_header` is read to its end and refused.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Conn, ReadError};

#[derive(Debug, Clone, Copy)]
pub struct DataLimits {
    pub max_size: usize,
    pub max_line: usize,
    pub timeout: Duration,
    /// Bytes held in memory before the rest is streamed; the header
    /// section must end within them.
    pub max_header: usize,
}

/// What a streamed message's rest is written in, at most this much at a time.
pub const CHUNK: usize = 32 * 1024;
/// What the buffer of a streamed message may hold: a chunk and one read.
const STREAM_HOLD: usize = CHUNK + 16 * 1024;

/// Where the rest of a streamed message goes.
pub trait Sink {
    /// Takes `chunk`; gives the buffer back (emptied) for the next one.
    fn write(&mut self, chunk: Vec<u8>) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

/// A sink that drops everything (a message already refused).
pub struct Discard;

impl Sink for Discard {
    async fn write(&mut self, mut chunk: Vec<u8>) -> Result<Vec<u8>, String> {
        chunk.clear();
        Ok(chunk)
    }
}

/// How DATA went.
pub enum Received {
    /// The whole message (or why there is none).
    Whole(Data),
    /// Past `max_header` with the header section complete: the caller
    /// reads the rest with [`Stream::rest`].
    Streaming(Stream),
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
    /// The header section did not end within `max_header` octets.
    HeaderTooBig,
    /// The sink failed (the spool could not store the message).
    Unstored(String),
}

/// What happens to the bytes taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Held in memory (up to `max_header`, then [`Received::Streaming`]).
    Memory,
    /// Held until a chunk is full, then written to the sink.
    Stream,
    /// Dropped: the message is refused whatever comes.
    Drop,
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
    keep: Keep,
    header_too_big: bool,
    unstored: Option<String>,
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
            keep: Keep::Memory,
            header_too_big: false,
            unstored: None,
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
        if self.size > self.limits.max_size {
            if !self.body.is_empty() {
                self.body = Vec::new();
            }
            return;
        }
        if self.keep == Keep::Drop {
            return;
        }
        // Grow at most to what the mode holds, not by doubling past it.
        let want = self.body.len() + segment.len();
        if want > self.body.capacity() {
            let hold = match self.keep {
                Keep::Memory => self.limits.max_header.saturating_add(CHUNK),
                _ => STREAM_HOLD,
            };
            let to = (self.body.capacity() * 2).min(hold).max(want);
            self.body.reserve_exact(to - self.body.len());
        }
        self.body.extend_from_slice(segment);
    }

    /// Drops what is held and whatever comes.
    fn drop_rest(&mut self) {
        self.keep = Keep::Drop;
        self.body = Vec::new();
    }

    /// Held in memory past `max_header` without the header section ending
    /// within it.
    fn header_over(&self) -> bool {
        let max = self.limits.max_header;
        self.keep == Keep::Memory
            && self.body.len() > max
            && header_end(&self.body).is_none_or(|end| end > max)
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
        } else if self.header_too_big || self.header_over() {
            Data::HeaderTooBig
        } else if let Some(error) = self.unstored {
            Data::Unstored(error)
        } else {
            Data::Message(self.body)
        }
    }
}

/// Where the header section ends (after its blank line), if it has.
fn header_end(message: &[u8]) -> Option<usize> {
    if message.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr::memmem::find(message, b"\r\n\r\n").map(|at| at + 4)
}

/// Reads a message after `354`: whole if it ends within `max_header`
/// octets, else its header section and a [`Stream`] for the rest.
pub async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    limits: DataLimits,
) -> Result<Received, ReadError> {
    let mut receiver = Receiver::new(limits);
    loop {
        let (used, done) = receiver.feed(conn.buffered());
        conn.consume(used);
        if done {
            return Ok(Received::Whole(receiver.finish()));
        }
        if receiver.abandoned() {
            return Ok(Received::Whole(Data::Abandoned));
        }
        if receiver.keep == Keep::Memory && receiver.body.len() > limits.max_header {
            match header_end(&receiver.body) {
                Some(end) if end <= limits.max_header => {
                    let rest = receiver.body[end..].to_vec();
                    receiver.body.truncate(end);
                    let header = std::mem::replace(&mut receiver.body, rest);
                    receiver.keep = Keep::Stream;
                    return Ok(Received::Streaming(Stream { receiver, header }));
                }
                _ => {
                    receiver.header_too_big = true;
                    receiver.drop_rest();
                }
            }
        }
        conn.read_more(limits.timeout, false).await?;
    }
}

/// A message past `max_header`: its header section, and the rest still to
/// read.
pub struct Stream {
    receiver: Receiver,
    header: Vec<u8>,
}

impl Stream {
    /// The header section, its blank line included.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Takes the header section out (it is not kept while the rest streams).
    pub fn take_header(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.header)
    }

    /// Reads the rest up to `<CRLF>.<CRLF>`, writing it to `sink` in chunks
    /// of [`CHUNK`]; `Data::Message` then holds nothing (it is all in the
    /// sink). A failing sink drops the rest: `Data::Unstored`.
    pub async fn rest<S: AsyncRead + AsyncWrite + Unpin, K: Sink>(
        mut self,
        conn: &mut Conn<S>,
        sink: &mut K,
    ) -> Result<Data, ReadError> {
        let receiver = &mut self.receiver;
        let timeout = receiver.limits.timeout;
        loop {
            let (used, done) = receiver.feed(conn.buffered());
            conn.consume(used);
            let full = receiver.body.len() >= CHUNK;
            if receiver.keep == Keep::Stream && (full || (done && !receiver.body.is_empty())) {
                let chunk = std::mem::take(&mut receiver.body);
                match sink.write(chunk).await {
                    Ok(mut empty) => {
                        // The first chunk may have been large (what was
                        // held with the header): keep no more than a chunk.
                        empty.shrink_to(STREAM_HOLD);
                        receiver.body = empty;
                    }
                    Err(error) => {
                        receiver.unstored = Some(error);
                        receiver.drop_rest();
                    }
                }
            }
            if done {
                return Ok(self.receiver.finish());
            }
            if receiver.abandoned() {
                return Ok(Data::Abandoned);
            }
            conn.read_more(timeout, false).await?;
        }
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
            max_header: 1 << 20,
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

    /// Collects what is streamed, in the chunks it came in.
    struct Collect(Vec<usize>, Vec<u8>);

    impl Sink for Collect {
        async fn write(&mut self, mut chunk: Vec<u8>) -> Result<Vec<u8>, String> {
            self.0.push(chunk.len());
            self.1.extend_from_slice(&chunk);
            chunk.clear();
            Ok(chunk)
        }
    }

    /// Sends `input` to [`receive`] and [`Stream::rest`] with `max_header`.
    async fn stream(input: Vec<u8>, max_size: usize, max_header: usize) -> (Received, Collect) {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::new(server, tokio_util::sync::CancellationToken::new());
        let writer = tokio::spawn(async move {
            let mut client = client;
            let _ = client.write_all(&input).await;
            client
        });
        let limits = DataLimits {
            max_size,
            max_line: 1000,
            timeout: Duration::from_secs(5),
            max_header,
        };
        let received = receive(&mut conn, limits).await.unwrap();
        let mut sink = Collect(Vec::new(), Vec::new());
        let received = match received {
            Received::Streaming(mut stream) => {
                let header = stream.take_header();
                sink.1.extend_from_slice(&header);
                let data = stream.rest(&mut conn, &mut sink).await.unwrap();
                Received::Whole(data)
            }
            whole => whole,
        };
        drop(writer.await.unwrap());
        (received, sink)
    }

    /// A message of `fields` header fields and `lines` body lines: as sent, as meant.
    fn message(fields: usize, lines: usize) -> (Vec<u8>, Vec<u8>) {
        let mut plain = Vec::new();
        for i in 0..fields {
            plain.extend_from_slice(format!("X-F{i}: {}\r\n", "h".repeat(60)).as_bytes());
        }
        plain.extend_from_slice(b"\r\n");
        for i in 0..lines {
            plain.extend_from_slice(format!("line {i} {}\r\n", "b".repeat(70)).as_bytes());
        }
        plain.extend_from_slice(b".leading dot\r\n");
        let mut wire = plain.replace_dots();
        wire.extend_from_slice(b".\r\n");
        (wire, plain)
    }

    trait Stuff {
        fn replace_dots(&self) -> Vec<u8>;
    }

    impl Stuff for Vec<u8> {
        fn replace_dots(&self) -> Vec<u8> {
            let mut out = Vec::new();
            for line in self.split_inclusive(|b| *b == b'\n') {
                if line.starts_with(b".") {
                    out.push(b'.');
                }
                out.extend_from_slice(line);
            }
            out
        }
    }

    #[tokio::test]
    async fn a_large_message_streams_in_bounded_chunks() {
        let (wire, plain) = message(10, 20_000);
        let (received, sink) = stream(wire, 10 << 20, 4096).await;
        assert!(matches!(received, Received::Whole(Data::Message(ref m)) if m.is_empty()));
        assert_eq!(sink.1, plain, "the stream is the unstuffed message");
        assert!(sink.0.len() > 10, "{:?}", sink.0);
        // A chunk, plus at most one read of the pipe.
        assert!(
            sink.0.iter().all(|n| *n < CHUNK + 64 * 1024),
            "{:?}",
            sink.0
        );
        // Small messages stay whole.
        let (wire, plain) = message(10, 10);
        let (received, sink) = stream(wire, 10 << 20, 4096).await;
        assert!(matches!(received, Received::Whole(Data::Message(ref m)) if *m == plain));
        assert!(sink.0.is_empty());
    }

    #[tokio::test]
    async fn streaming_keeps_the_size_and_header_limits() {
        let (wire, _) = message(10, 20_000);
        let (received, _) = stream(wire, 1 << 20, 4096).await;
        assert!(matches!(received, Received::Whole(Data::TooBig)));
        let (wire, _) = message(200, 200);
        let (received, sink) = stream(wire, 10 << 20, 4096).await;
        assert!(
            matches!(received, Received::Whole(Data::HeaderTooBig)),
            "{:?}",
            match received {
                Received::Whole(d) => format!("{d:?}"),
                _ => "streaming".into(),
            }
        );
        assert!(sink.0.is_empty());
    }
}
