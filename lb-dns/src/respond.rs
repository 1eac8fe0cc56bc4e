//! The answer function UDP and TCP share. Synchronous by construction (no
//! future, nothing to wait on), no allocation and no lock: the query is
//! parsed in place (`wire::parse`), the answer looked up in the
//! precomputed zone (`answers`), and the reply written into the caller's
//! buffer as header + the question as asked + the ready sections + OPT.
//!
//! Rules kept here: runts and responses get nothing; a malformed message
//! with a header gets FORMERR; EDNS version > 0 gets BADVERS; an opcode other
//! than QUERY gets NOTIMP; classes other than IN/ANY, AXFR, IXFR and names
//! outside the zone get REFUSED. The OPT is echoed (version 0, payload
//! min(asked, 1232), at least 512) with the query's DO bit (RFC 3225), also
//! on errors; plain UDP replies stay within 512 bytes and EDNS ones within
//! the echoed payload, truncated at whole answer records with TC set and the
//! OPT kept (RFC 6891 section 7).

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::answers::{Answers, Found};
use crate::cookie::CookieSecret;
use crate::rrl::{Rrl, Verdict};
use crate::wire::{self, Edns, Query, Reject, HEADER};

/// The largest UDP payload we announce and use with EDNS (DNS flag day
/// 2020: avoids IP fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The reply buffer every caller gives `respond`.
pub const MAX_MESSAGE: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What one reply was, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub len: usize,
    pub qtype: Option<u16>,
    pub rcode: u16,
    /// TC was set.
    pub truncated: bool,
}

/// Answers queries from the zone in service.
pub struct Responder {
    answers: Arc<ArcSwap<Answers>>,
    cookies: CookieSecret,
    rrl: Option<Rrl>,
}

/// The server cookie to send, and whether the one received was good.
#[derive(Clone, Copy)]
struct CookieReply {
    client: [u8; 8],
    server: [u8; 16],
    valid: bool,
}

fn write_header(out: &mut [u8], q: &Query, aa: bool, tc: bool, rcode: u16, counts: [u16; 4]) {
    out[..2].copy_from_slice(&q.id.to_be_bytes());
    out[2] = 0x80 | (q.opcode << 3) | (u8::from(aa) << 2) | (u8::from(tc) << 1) | u8::from(q.rd);
    out[3] = (u8::from(q.cd) << 4) | (rcode & 0x0f) as u8;
    for (i, count) in counts.iter().enumerate() {
        out[4 + 2 * i..6 + 2 * i].copy_from_slice(&count.to_be_bytes());
    }
}

fn opt_len(cookie: Option<&CookieReply>) -> usize {
    11 + if cookie.is_some() { 4 + 8 + 16 } else { 0 }
}

/// Writes the OPT record at `at`; returns where it ends.
fn write_opt(
    out: &mut [u8],
    at: usize,
    edns: &Edns,
    rcode: u16,
    cookie: Option<&CookieReply>,
) -> usize {
    let payload = edns.payload.clamp(512, EDNS_PAYLOAD);
    let o = &mut out[at..];
    o[0] = 0;
    o[1..3].copy_from_slice(&wire::TYPE_OPT.to_be_bytes());
    o[3..5].copy_from_slice(&payload.to_be_bytes());
    o[5] = (rcode >> 4) as u8;
    o[6] = 0;
    o[7] = if edns.dnssec_ok { 0x80 } else { 0 };
    o[8] = 0;
    match cookie {
        None => {
            o[9..11].copy_from_slice(&0u16.to_be_bytes());
            at + 11
        }
        Some(c) => {
            o[9..11].copy_from_slice(&28u16.to_be_bytes());
            o[11..13].copy_from_slice(&wire::OPTION_COOKIE.to_be_bytes());
            o[13..15].copy_from_slice(&24u16.to_be_bytes());
            o[15..23].copy_from_slice(&c.client);
            o[23..39].copy_from_slice(&c.server);
            at + 39
        }
    }
}

/// FORMERR to a message that could not be read: the question only when it
/// was read, no OPT.
fn formerr(packet: &[u8], question_end: usize, qtype: Option<u16>, out: &mut [u8]) -> Reply {
    let q = Query {
        id: u16::from_be_bytes([packet[0], packet[1]]),
        opcode: (packet[2] >> 3) & 0x0f,
        rd: packet[2] & 1 != 0,
        cd: packet[3] & 0x10 != 0,
        question_end,
        qtype: 0,
        qclass: 0,
        name: [0; 255],
        name_len: 0,
        edns: None,
    };
    let qd = u16::from(question_end > HEADER);
    write_header(out, &q, false, false, wire::RCODE_FORMERR, [qd, 0, 0, 0]);
    out[HEADER..question_end].copy_from_slice(&packet[HEADER..question_end]);
    Reply {
        len: question_end,
        qtype,
        rcode: wire::RCODE_FORMERR,
        truncated: false,
    }
}

impl Responder {
    pub fn new(
        answers: Arc<ArcSwap<Answers>>,
        cookies: CookieSecret,
        rrl: Option<Rrl>,
    ) -> Responder {
        Responder {
            answers,
            cookies,
            rrl,
        }
    }

    fn cookie(&self, q: &Query, src: IpAddr) -> Option<CookieReply> {
        let cookie = q.edns?.cookie?;
        let now = fleet::clock::unix_secs() as u32;
        Some(CookieReply {
            client: cookie.client,
            server: self.cookies.make(&cookie.client, src, now),
            valid: cookie.server_len > 0 && self.cookies.valid(&cookie, src, now),
        })
    }

    /// Writes the reply to `packet` (from `src`) into `out` (at least
    /// `MAX_MESSAGE` bytes); `None` when it deserves no reply (or RRL
    /// dropped it).
    pub fn respond(
        &self,
        packet: &[u8],
        src: IpAddr,
        transport: Transport,
        out: &mut [u8],
    ) -> Option<Reply> {
        let q = match wire::parse(packet) {
            Ok(q) => q,
            Err(Reject::Drop) => return None,
            Err(Reject::FormErr {
                question_end,
                qtype,
            }) => return Some(formerr(packet, question_end, qtype, out)),
        };
        let cookie = self.cookie(&q, src);
        let reply = self.answer(packet, &q, transport, cookie.as_ref(), out);
        let limited = match &self.rrl {
            Some(rrl) if transport == Transport::Udp && !cookie.is_some_and(|c| c.valid) => {
                rrl.check(src, answer_key(&q, reply.rcode))
            }
            _ => Verdict::Answer,
        };
        match limited {
            Verdict::Answer => Some(reply),
            Verdict::Drop => None,
            Verdict::Slip => Some(header_only(
                packet,
                &q,
                reply.rcode,
                Bare::Slip,
                cookie.as_ref(),
                out,
            )),
        }
    }

    fn answer(
        &self,
        packet: &[u8],
        q: &Query,
        transport: Transport,
        cookie: Option<&CookieReply>,
        out: &mut [u8],
    ) -> Reply {
        let limit = match (transport, q.edns) {
            (Transport::Tcp, _) => out.len().min(MAX_MESSAGE),
            (Transport::Udp, None) => 512,
            (Transport::Udp, Some(e)) => usize::from(e.payload.clamp(512, EDNS_PAYLOAD)),
        };
        let mut error = |rcode| header_only(packet, q, rcode, Bare::Error, cookie, out);
        if q.edns.is_some_and(|e| e.version > 0) {
            return error(wire::RCODE_BADVERS);
        }
        if q.opcode != 0 {
            return error(wire::RCODE_NOTIMP);
        }
        if !matches!(q.qclass, wire::CLASS_IN | wire::CLASS_ANY)
            || matches!(q.qtype, wire::TYPE_AXFR | wire::TYPE_IXFR)
        {
            return error(wire::RCODE_REFUSED);
        }
        // RFC 7873 section 5.2.3: a server cookie that is not ours gets
        // BADCOOKIE (with a fresh one) over UDP; TCP needs no cookie.
        if let (Some(c), Some(e)) = (cookie, q.edns) {
            let sent_server = e.cookie.is_some_and(|c| c.server_len > 0);
            if sent_server && !c.valid && transport == Transport::Udp {
                return error(wire::RCODE_BADCOOKIE);
            }
        }
        let answers = self.answers.load();
        let (wire, served) = match answers.lookup(q.lower_name(), q.qtype) {
            Found::Refused => return error(wire::RCODE_REFUSED),
            Found::Answer { wire, served } => (wire, served),
        };
        let question = q.question_end - HEADER;
        let opt = if q.edns.is_some() { opt_len(cookie) } else { 0 };
        let fixed = HEADER + question + opt;
        let (body, counts, truncated) = fit(wire, limit.saturating_sub(fixed));
        let ar = counts[2] + u16::from(q.edns.is_some());
        write_header(
            out,
            q,
            true,
            truncated,
            wire.rcode,
            [1, counts[0], counts[1], ar],
        );
        out[HEADER..q.question_end].copy_from_slice(&packet[HEADER..q.question_end]);
        let mut end = q.question_end + body;
        out[q.question_end..end].copy_from_slice(&wire.body[..body]);
        if let Some(edns) = &q.edns {
            end = write_opt(out, end, edns, wire.rcode, cookie);
        }
        if let Some(served) = served {
            if counts[0] > 0 {
                served.inc();
            }
        }
        Reply {
            len: end,
            qtype: Some(q.qtype),
            rcode: wire.rcode,
            truncated,
        }
    }
}

/// How much of `wire` fits in `room` bytes: all of it, or the answer
/// records that fit (the other sections dropped) with TC.
fn fit(wire: &crate::answers::Wire, room: usize) -> (usize, [u16; 3], bool) {
    if wire.body.len() <= room {
        return (wire.body.len(), wire.counts, false);
    }
    let fit = wire
        .answer_ends
        .iter()
        .take_while(|&&end| usize::from(end) <= room)
        .count();
    let len = fit
        .checked_sub(1)
        .map_or(0, |i| usize::from(wire.answer_ends[i]));
    (len, [fit as u16, 0, 0], true)
}

/// What makes two replies "identical" for RRL: the name and type of a
/// NOERROR reply; every NXDOMAIN together; each error code together.
fn answer_key(q: &Query, rcode: u16) -> u64 {
    use std::hash::{Hash, Hasher};
    if rcode != wire::RCODE_NOERROR {
        return u64::from(rcode) << 48;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    q.lower_name().hash(&mut h);
    q.qtype.hash(&mut h);
    h.finish() | 1
}

/// A reply of the question alone (and the OPT if the query had one).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bare {
    /// An error reply: the question as asked.
    Error,
    /// RRL's slip: the question and TC, nothing else, so a real client
    /// retries over TCP.
    Slip,
}

fn header_only(
    packet: &[u8],
    q: &Query,
    rcode: u16,
    bare: Bare,
    cookie: Option<&CookieReply>,
    out: &mut [u8],
) -> Reply {
    let tc = bare == Bare::Slip;
    let ar = u16::from(q.edns.is_some());
    let aa = tc && matches!(rcode, wire::RCODE_NOERROR | wire::RCODE_NXDOMAIN);
    write_header(out, q, aa, tc, rcode, [1, 0, 0, ar]);
    out[HEADER..q.question_end].copy_from_slice(&packet[HEADER..q.question_end]);
    let len = match &q.edns {
        Some(edns) => write_opt(out, q.question_end, edns, rcode, cookie),
        None => q.question_end,
    };
    Reply {
        len,
        qtype: Some(q.qtype),
        rcode,
        truncated: tc,
    }
}
