//! DNS wire format, both ways, without allocation on the read side:
//! `parse` reads a query (header, one question, the OPT record and its
//! COOKIE option) from the bytes as received; `Writer` renders records with
//! name compression for the precomputed answers in `answers`.

use std::collections::HashMap;

pub const HEADER: usize = 12;
pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_HINFO: u16 = 13;
pub const TYPE_MX: u16 = 15;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;
pub const OPTION_COOKIE: u16 = 10;

pub const RCODE_NOERROR: u16 = 0;
pub const RCODE_FORMERR: u16 = 1;
pub const RCODE_SERVFAIL: u16 = 2;
pub const RCODE_NXDOMAIN: u16 = 3;
pub const RCODE_NOTIMP: u16 = 4;
pub const RCODE_REFUSED: u16 = 5;
pub const RCODE_BADVERS: u16 = 16;
pub const RCODE_BADCOOKIE: u16 = 23;

/// The EDNS part of a query (RFC 6891).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    /// DNSSEC OK (RFC 3225), copied into the response.
    pub dnssec_ok: bool,
    /// The client cookie and the server cookie sent with it (RFC 7873).
    pub cookie: Option<Cookie>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cookie {
    pub client: [u8; 8],
    /// Length 0 when only a client cookie was sent; else 8 to 32.
    pub server_len: u8,
    pub server: [u8; 32],
}

impl Cookie {
    pub fn server(&self) -> &[u8] {
        &self.server[..usize::from(self.server_len)]
    }
}

/// A query as read from the wire; the question is borrowed from the packet.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub id: u16,
    pub opcode: u8,
    /// RD (bit 0) of the third header byte and CD of the fourth, as received.
    pub rd: bool,
    pub cd: bool,
    /// Where the question ends (12 + name + 4), 0 without a question.
    pub question_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// The question name in lower case, wire format.
    pub name: [u8; 255],
    pub name_len: u8,
    pub edns: Option<Edns>,
}

impl Query {
    pub fn lower_name(&self) -> &[u8] {
        &self.name[..usize::from(self.name_len)]
    }
}

/// Why a packet gets no ordinary answer.
#[derive(Debug, Clone, Copy)]
pub enum Reject {
    /// Runts and responses: no answer at all.
    Drop,
    /// FORMERR with the id, and the question if it was read: where it ends
    /// (12 without one) and its type.
    FormErr {
        question_end: usize,
        qtype: Option<u16>,
    },
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Reads the question name at 12 (no compression: a query has nothing to
/// point to), lower-casing it into `out`; returns the offset after it.
fn read_question_name(packet: &[u8], out: &mut [u8; 255]) -> Option<(usize, u8)> {
    let mut at = HEADER;
    let mut len = 0usize;
    loop {
        let label = usize::from(*packet.get(at)?);
        if label > 63 || len + label + 1 > 255 {
            return None;
        }
        out[len] = label as u8;
        len += 1;
        at += 1;
        if label == 0 {
            return Some((at, len as u8));
        }
        let bytes = packet.get(at..at + label)?;
        for (o, b) in out[len..len + label].iter_mut().zip(bytes) {
            *o = b.to_ascii_lowercase();
        }
        len += label;
        at += label;
    }
}

/// Skips a (possibly compressed) name; returns the offset after it.
fn skip_name(packet: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let label = *packet.get(at)?;
        match label {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                packet.get(at + 1)?;
                return Some(at + 2);
            }
            l if l & 0xc0 != 0 => return None,
            l => at += 1 + usize::from(l),
        }
    }
}

/// Reads the COOKIE option (RFC 7873 section 4): 8 bytes, or 16 to 40.
fn read_cookie(data: &[u8]) -> Option<Cookie> {
    if data.len() != 8 && !(16..=40).contains(&data.len()) {
        return None;
    }
    let mut cookie = Cookie::default();
    cookie.client.copy_from_slice(&data[..8]);
    let server = &data[8..];
    cookie.server_len = server.len() as u8;
    cookie.server[..server.len()].copy_from_slice(server);
    Some(cookie)
}

/// Reads an OPT record's fields at `at` (after its name).
fn read_opt(packet: &[u8], at: usize, rdata: &[u8]) -> Option<Edns> {
    let payload = u16_at(packet, at + 2)?;
    let version = *packet.get(at + 5)?;
    let flags = u16_at(packet, at + 6)?;
    let mut edns = Edns {
        payload,
        version,
        dnssec_ok: flags & 0x8000 != 0,
        cookie: None,
    };
    let mut o = 0;
    while o < rdata.len() {
        let code = u16_at(rdata, o)?;
        let len = usize::from(u16_at(rdata, o + 2)?);
        let data = rdata.get(o + 4..o + 4 + len)?;
        if code == OPTION_COOKIE {
            if edns.cookie.is_some() {
                return None;
            }
            edns.cookie = Some(read_cookie(data)?);
        }
        o += 4 + len;
    }
    Some(edns)
}

/// Reads the records after the question and returns the OPT record, if any;
/// `None` when they are malformed (FORMERR).
fn read_records(packet: &[u8], mut at: usize, counts: [u16; 3]) -> Option<Option<Edns>> {
    let mut edns = None;
    for (section, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let name_at = at;
            at = skip_name(packet, at)?;
            let rtype = u16_at(packet, at)?;
            let rdlen = usize::from(u16_at(packet, at + 8)?);
            let rdata = packet.get(at + 10..at + 10 + rdlen)?;
            if rtype == TYPE_OPT {
                // One OPT, with the root name, in the additional section.
                if section != 2 || edns.is_some() || packet[name_at] != 0 {
                    return None;
                }
                edns = Some(read_opt(packet, at, rdata)?);
            }
            at += 10 + rdlen;
        }
    }
    Some(edns)
}

const NO_QUESTION: Reject = Reject::FormErr {
    question_end: HEADER,
    qtype: None,
};

/// Reads a query. Runts and responses are dropped; anything else that is
/// not one well-formed question (with at most one OPT) is FORMERR.
pub fn parse(packet: &[u8]) -> Result<Query, Reject> {
    if packet.len() < HEADER || packet[2] & 0x80 != 0 {
        return Err(Reject::Drop);
    }
    let mut query = Query {
        id: u16::from_be_bytes([packet[0], packet[1]]),
        opcode: (packet[2] >> 3) & 0x0f,
        rd: packet[2] & 0x01 != 0,
        cd: packet[3] & 0x10 != 0,
        question_end: 0,
        qtype: 0,
        qclass: 0,
        name: [0; 255],
        name_len: 0,
        edns: None,
    };
    let qdcount = u16::from_be_bytes([packet[4], packet[5]]);
    if qdcount != 1 {
        return Err(NO_QUESTION);
    }
    let Some((after, len)) = read_question_name(packet, &mut query.name) else {
        return Err(NO_QUESTION);
    };
    let (Some(qtype), Some(qclass)) = (u16_at(packet, after), u16_at(packet, after + 2)) else {
        return Err(NO_QUESTION);
    };
    query.name_len = len;
    query.qtype = qtype;
    query.qclass = qclass;
    query.question_end = after + 4;
    let counts = [6, 8, 10].map(|i| u16::from_be_bytes([packet[i], packet[i + 1]]));
    match read_records(packet, query.question_end, counts) {
        Some(edns) => {
            query.edns = edns;
            Ok(query)
        }
        None => Err(Reject::FormErr {
            question_end: query.question_end,
            qtype: Some(qtype),
        }),
    }
}

/// Whether `name` (lower-case wire format) is `zone` or below it.
pub fn in_zone(name: &[u8], zone: &[u8]) -> bool {
    let mut at = 0;
    loop {
        if name.len() - at == zone.len() {
            return &name[at..] == zone;
        }
        match name.get(at) {
            Some(&l) if l != 0 && name.len() - at > zone.len() => at += 1 + usize::from(l),
            _ => return false,
        }
    }
}

/// A dotted name (`c-1.example.`) in lower-case wire format.
pub fn name_to_wire(name: &str) -> Result<Vec<u8>, String> {
    let trimmed = name.trim_end_matches('.');
    let mut wire = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!(
                    "`{name}` is not a valid DNS name: bad label length"
                ));
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    wire.push(0);
    if wire.len() > 255 {
        return Err(format!(
            "`{name}` is not a valid DNS name: longer than 255 bytes"
        ));
    }
    Ok(wire)
}

/// Renders records after a question, compressing names against the
/// question and each other. Offsets are those of the whole message.
pub struct Writer {
    pub bytes: Vec<u8>,
    /// Offset in the message where `bytes` starts.
    base: usize,
    names: HashMap<Vec<u8>, u16>,
}

impl Writer {
    /// For a message whose question name is `qname` (lower-case wire).
    pub fn new(qname: &[u8]) -> Writer {
        let mut writer = Writer {
            bytes: Vec::with_capacity(256),
            base: HEADER + qname.len() + 4,
            names: HashMap::new(),
        };
        writer.remember(qname, HEADER);
        writer
    }

    /// Without a question to compress against (its length varies).
    pub fn detached() -> Writer {
        Writer {
            bytes: Vec::with_capacity(128),
            base: usize::MAX / 2,
            names: HashMap::new(),
        }
    }

    fn remember(&mut self, name: &[u8], at: usize) {
        let mut i = 0;
        while name[i] != 0 && at + i < 0x3fff {
            self.names
                .entry(name[i..].to_vec())
                .or_insert((at + i) as u16);
            i += 1 + usize::from(name[i]);
        }
    }

    pub fn name(&mut self, name: &[u8]) {
        let mut i = 0;
        while name[i] != 0 {
            if let Some(&pointer) = self.names.get(&name[i..]) {
                self.remember_prefix(name, i);
                self.bytes.extend_from_slice(&name[..i]);
                self.bytes
                    .extend_from_slice(&(0xc000 | pointer).to_be_bytes());
                return;
            }
            i += 1 + usize::from(name[i]);
        }
        self.remember_prefix(name, i);
        self.bytes.extend_from_slice(name);
    }

    /// Remembers the labels of `name` before `end`, about to be written here.
    fn remember_prefix(&mut self, name: &[u8], end: usize) {
        let at = self.base.saturating_add(self.bytes.len());
        let mut i = 0;
        while i < end && at + i < 0x3fff {
            self.names
                .entry(name[i..].to_vec())
                .or_insert((at + i) as u16);
            i += 1 + usize::from(name[i]);
        }
    }

    /// One record: owner, type, class IN, TTL, and rdata written by `rdata`.
    pub fn record(&mut self, owner: &[u8], rtype: u16, ttl: u32, rdata: impl FnOnce(&mut Writer)) {
        self.name(owner);
        self.bytes.extend_from_slice(&rtype.to_be_bytes());
        self.bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.bytes.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0, 0]);
        rdata(self);
        let len = (self.bytes.len() - len_at - 2) as u16;
        self.bytes[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Character-strings of at most 255 bytes each (TXT, HINFO).
    pub fn strings(&mut self, text: &[u8]) {
        if text.is_empty() {
            self.bytes.push(0);
        }
        for chunk in text.chunks(255) {
            self.bytes.push(chunk.len() as u8);
            self.bytes.extend_from_slice(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_membership_follows_labels() {
        let zone = name_to_wire("unmta.test").unwrap();
        assert!(in_zone(&name_to_wire("unmta.test").unwrap(), &zone));
        assert!(in_zone(&name_to_wire("a.b.unmta.test").unwrap(), &zone));
        assert!(!in_zone(&name_to_wire("xunmta.test").unwrap(), &zone));
        assert!(!in_zone(&name_to_wire("test").unwrap(), &zone));
        assert!(in_zone(
            &name_to_wire("x.test").unwrap(),
            &name_to_wire(".").unwrap()
        ));
    }

    #[test]
    fn names_are_compressed_against_the_question() {
        let q = name_to_wire("c-1.unmta.test").unwrap();
        let mut w = Writer::new(&q);
        w.name(&q);
        assert_eq!(w.bytes, [0xc0, 12]);
        w.name(&name_to_wire("ns1.unmta.test").unwrap());
        assert_eq!(&w.bytes[2..], &[3, b'n', b's', b'1', 0xc0, 16]);
    }
}
