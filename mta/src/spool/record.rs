//! The on-disk formats of the spool, in one place.
//!
//! A segment file (`seg-<n>.dat`) is a sequence of message records:
//!
//! ```text
//! magic u32 "UMS1" | payload length u32 | crc32 of the payload u32 | payload
//! payload: seq u64 | received unix ms u64 | sender | cluster | credential | via | peer
//!          | recipient count u32 | recipients… | body (the rest)
//! strings: length u32 | UTF-8 bytes; all integers little-endian
//! ```
//!
//! Its companion (`seg-<n>.ack`) holds fixed-size state records for the
//! recipients of that segment's messages: done (delivered, bounced or
//! expired) or rescheduled (attempts, next due time).

use std::net::SocketAddr;

use bytes::Bytes;

use crate::message::{NewMessage, Protocol};

pub const MAGIC: u32 = u32::from_le_bytes(*b"UMS1");
pub const HEADER_LEN: usize = 12;
/// No record is larger than this (the ingress caps messages at 10 MB).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// A message as read back from the spool.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: u64,
    pub received_ms: u64,
    pub sender: String,
    pub cluster: String,
    pub credential: String,
    pub via: Protocol,
    pub peer: String,
    pub recipients: Vec<String>,
    pub data: Bytes,
}

impl StoredMessage {
    pub fn id(&self) -> crate::message::MessageId {
        message_id(self.seq)
    }
}

pub fn message_id(seq: u64) -> crate::message::MessageId {
    crate::message::MessageId(format!("{seq:016x}"))
}

pub fn parse_message_id(id: &str) -> Option<u64> {
    if id.len() != 16 {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The whole record (header included) for `message`.
pub fn encode(seq: u64, received_ms: u64, message: &NewMessage) -> Vec<u8> {
    let mut out = encode_open(seq, received_ms, message, message.data.len());
    out.extend_from_slice(&message.data);
    let payload_len = (out.len() - HEADER_LEN) as u32;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[..HEADER_LEN].copy_from_slice(&header_bytes(payload_len, crc));
    out
}

/// A record's start: a zeroed header (see [`header_bytes`]) and the fields,
/// without the message data; `data_len` only sizes the buffer.
pub fn encode_open(seq: u64, received_ms: u64, message: &NewMessage, data_len: usize) -> Vec<u8> {
    let peer = message.peer.to_string();
    let strings: usize = [
        &message.sender,
        &message.cluster,
        &message.credential,
        message.via.as_str(),
        &peer,
    ]
    .iter()
    .map(|s| s.len() + 4)
    .sum::<usize>()
        + message
            .recipients
            .iter()
            .map(|r| r.len() + 4)
            .sum::<usize>();
    let mut out = Vec::with_capacity(HEADER_LEN + 20 + strings + data_len);
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&received_ms.to_le_bytes());
    put_str(&mut out, &message.sender);
    put_str(&mut out, &message.cluster);
    put_str(&mut out, &message.credential);
    put_str(&mut out, message.via.as_str());
    put_str(&mut out, &peer);
    out.extend_from_slice(&(message.recipients.len() as u32).to_le_bytes());
    for rcpt in &message.recipients {
        put_str(&mut out, rcpt);
    }
    out
}

/// A record's header for a payload of `payload_len` bytes with `crc`.
pub fn header_bytes(payload_len: u32, crc: u32) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&payload_len.to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Where a record's header says its payload is, if the header is sane.
pub fn header(bytes: &[u8]) -> Option<(usize, u32)> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let len = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    (magic == MAGIC && (20..=MAX_PAYLOAD).contains(&len)).then_some((len, crc))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Option<u32> {
        let v = u32::from_le_bytes(self.bytes.get(self.pos..self.pos + 4)?.try_into().ok()?);
        self.pos += 4;
        Some(v)
    }
    fn u64(&mut self) -> Option<u64> {
        let v = u64::from_le_bytes(self.bytes.get(self.pos..self.pos + 8)?.try_into().ok()?);
        self.pos += 8;
        Some(v)
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        let s = std::str::from_utf8(self.bytes.get(self.pos..self.pos.checked_add(len)?)?).ok()?;
        self.pos += len;
        Some(s)
    }
}

/// The fields recovery needs, without copying the body.
pub struct Summary {
    pub seq: u64,
    pub received_ms: u64,
    pub recipients: u32,
}

/// Parses a checked payload's leading fields.
pub fn summarize(payload: &[u8]) -> Option<Summary> {
    let mut r = Reader {
        bytes: payload,
        pos: 0,
    };
    let seq = r.u64()?;
    let received_ms = r.u64()?;
    for _ in 0..5 {
        r.str()?;
    }
    let recipients = r.u32()?;
    Some(Summary {
        seq,
        received_ms,
        recipients,
    })
}

/// Decodes a whole record (header included), checking its checksum.
pub fn decode(record: &[u8]) -> Result<StoredMessage, String> {
    let (len, crc) = header(record).ok_or("the record header is damaged")?;
    let payload = record
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or("the record is shorter than its header says")?;
    if crc32fast::hash(payload) != crc {
        return Err("the record's checksum does not match".into());
    }
    let mut r = Reader {
        bytes: payload,
        pos: 0,
    };
    let bad = || "the record's fields are damaged".to_string();
    let seq = r.u64().ok_or_else(bad)?;
    let received_ms = r.u64().ok_or_else(bad)?;
    let sender = r.str().ok_or_else(bad)?.to_string();
    let cluster = r.str().ok_or_else(bad)?.to_string();
    let credential = r.str().ok_or_else(bad)?.to_string();
    let via = Protocol::from_record(r.str().ok_or_else(bad)?);
    let peer = r.str().ok_or_else(bad)?.to_string();
    let count = r.u32().ok_or_else(bad)?;
    let mut recipients = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        recipients.push(r.str().ok_or_else(bad)?.to_string());
    }
    let data = Bytes::copy_from_slice(&payload[r.pos..]);
    Ok(StoredMessage {
        seq,
        received_ms,
        sender,
        cluster,
        credential,
        via,
        peer,
        recipients,
        data,
    })
}

/// Kinds of state record in a segment's `.ack` file.
pub const ACK_DONE: u8 = 1;
pub const ACK_RETRY: u8 = 2;
pub const ACK_LEN: usize = 25;

/// One state record: kind, recipient index, attempts, seq, due (unix ms), crc.
pub fn encode_ack(kind: u8, seq: u64, rcpt: u16, attempts: u16, due_ms: u64) -> [u8; ACK_LEN] {
    let mut out = [0u8; ACK_LEN];
    out[0] = kind;
    out[1..3].copy_from_slice(&rcpt.to_le_bytes());
    out[3..5].copy_from_slice(&attempts.to_le_bytes());
    out[5..13].copy_from_slice(&seq.to_le_bytes());
    out[13..21].copy_from_slice(&due_ms.to_le_bytes());
    let crc = crc32fast::hash(&out[..21]);
    out[21..25].copy_from_slice(&crc.to_le_bytes());
    out
}

pub struct Ack {
    pub kind: u8,
    pub seq: u64,
    pub rcpt: u16,
    pub attempts: u16,
    pub due_ms: u64,
}

pub fn decode_ack(bytes: &[u8]) -> Option<Ack> {
    let crc = u32::from_le_bytes(bytes.get(21..25)?.try_into().ok()?);
    if crc32fast::hash(&bytes[..21]) != crc {
        return None;
    }
    Some(Ack {
        kind: bytes[0],
        rcpt: u16::from_le_bytes(bytes[1..3].try_into().ok()?),
        attempts: u16::from_le_bytes(bytes[3..5].try_into().ok()?),
        seq: u64::from_le_bytes(bytes[5..13].try_into().ok()?),
        due_ms: u64::from_le_bytes(bytes[13..21].try_into().ok()?),
    })
}

/// A peer address for messages that carry none (bounces generated here).
pub fn local_peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_detects_damage() {
        let msg = NewMessage {
            sender: "a@example.com".into(),
            recipients: vec!["b@example.net".into(), "c@example.org".into()],
            data: Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n"),
            cluster: "a1b2c3d4".into(),
            credential: "cred".into(),
            via: Protocol::Smtp,
            peer: "127.2.0.1:2525".parse().unwrap(),
        };
        let mut rec = encode(42, 1000, &msg);
        let back = decode(&rec).unwrap();
        assert_eq!(back.seq, 42);
        assert_eq!(back.recipients, msg.recipients);
        assert_eq!(back.data, msg.data);
        assert_eq!(back.peer, "127.2.0.1:2525");
        let (len, _) = header(&rec).unwrap();
        let s = summarize(&rec[HEADER_LEN..HEADER_LEN + len]).unwrap();
        assert_eq!((s.seq, s.received_ms, s.recipients), (42, 1000, 2));
        let last = rec.len() - 3;
        rec[last] ^= 0xff;
        assert!(decode(&rec).unwrap_err().contains("checksum"));
    }

    #[test]
    fn ack_records_round_trip() {
        let a = encode_ack(ACK_RETRY, 7, 3, 2, 99);
        let back = decode_ack(&a).unwrap();
        assert_eq!(
            (back.kind, back.seq, back.rcpt, back.attempts, back.due_ms),
            (ACK_RETRY, 7, 3, 2, 99)
        );
        let mut bad = a;
        bad[6] ^= 1;
        assert!(decode_ack(&bad).is_none());
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_message_id(&message_id(0xabc).0), Some(0xabc));
    }
}
