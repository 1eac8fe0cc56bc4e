//! The DNS request handler: hickory-server's low-level entry, answering from
//! the precomputed `Answers`. Per query: one hash lookup, one atomic for the
//! rotation, the encoding. hickory's `Server` does the framing, drops
//! responses sent to us, answers FORMERR to undecodable messages and caps
//! plain-UDP answers at 512 bytes (TC) and EDNS ones at the payload size we
//! echo.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::answers::{Answers, Lookup, Picked};
use crate::metrics::Metrics;

/// The largest UDP payload we announce and use with EDNS (DNS flag day
/// 2020: avoids IP fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

#[derive(Clone)]
pub struct Handler {
    answers: Arc<ArcSwap<Answers>>,
    metrics: Arc<Metrics>,
}

impl Handler {
    pub fn new(answers: Arc<ArcSwap<Answers>>, metrics: Arc<Metrics>) -> Handler {
        Handler { answers, metrics }
    }

    /// Counts a FORMERR answered before the handler saw the message.
    pub fn count_formerr(&self) {
        self.metrics.query(None, ResponseCode::FormErr);
    }

    async fn error<R: ResponseHandler>(
        &self,
        request: &Request,
        rcode: ResponseCode,
        edns: Option<&Edns>,
        mut response_handle: R,
    ) -> ResponseInfo {
        let qtype = request.queries.queries().first().map(|q| q.query_type());
        let response =
            MessageResponseBuilder::new(&request.queries, edns).error_msg(&request.metadata, rcode);
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "cannot send a DNS error response");
                return failed(request);
            }
        };
        self.metrics.query(qtype, rcode);
        info
    }
}

/// How many A or AAAA records of a cluster fit in an EDNS UDP answer of
/// `payload` bytes with the OPT record still in it (RFC 6891 section 7: a
/// truncated answer keeps its OPT; hickory's encoder would cut the OPT
/// last). `question` is the question section as received.
fn fits_with_opt(question: &[u8], qtype: RecordType, payload: u16) -> usize {
    let rdlen = if qtype == RecordType::A { 4 } else { 16 };
    let name_len = question.len().saturating_sub(4);
    // hickory 0.26.3 records the question for compression together with its
    // type and class, so no owner name ever points into the question: the
    // first record carries the whole name, the others point to it.
    let first_owner_extra = name_len.saturating_sub(2);
    const HEADER: usize = 12;
    const OPT: usize = 11;
    let fixed = HEADER + question.len() + OPT + first_owner_extra;
    (usize::from(payload).saturating_sub(fixed)) / (2 + 10 + rdlen)
}

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    hickory_proto::op::Header {
        metadata,
        counts: Default::default(),
    }
    .into()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // EDNS (RFC 6891): echo an OPT record, version 0 only.
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().clamp(512, EDNS_PAYLOAD));
            edns.set_version(0);
            edns.set_dnssec_ok(false);
            edns
        });
        if let (Some(req), Some(resp)) = (&request.edns, &response_edns) {
            if req.version() > 0 {
                return self
                    .error(request, ResponseCode::BADVERS, Some(resp), response_handle)
                    .await;
            }
        }
        let edns = response_edns.as_ref();
        if request.metadata.op_code != OpCode::Query {
            return self
                .error(request, ResponseCode::NotImp, edns, response_handle)
                .await;
        }
        let [query] = request.queries.queries() else {
            return self
                .error(request, ResponseCode::FormErr, edns, response_handle)
                .await;
        };
        let qtype = query.query_type();
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY)
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return self
                .error(request, ResponseCode::Refused, edns, response_handle)
                .await;
        }

        let answers = self.answers.load();
        let any_record: Record;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let (answer_records, soa, additionals, cluster) = match answers.lookup(query.name(), qtype)
        {
            Lookup::Refused => {
                return self
                    .error(request, ResponseCode::Refused, edns, response_handle)
                    .await;
            }
            Lookup::Answer {
                answers: records,
                additionals,
                cluster,
            } => (records, None, additionals, cluster),
            Lookup::NoData => (Picked::Slice([].iter()), Some(&answers.soa), &[][..], None),
            Lookup::NxDomain => {
                metadata.response_code = ResponseCode::NXDomain;
                (Picked::Slice([].iter()), Some(&answers.soa), &[][..], None)
            }
            Lookup::Any => {
                any_record = Answers::any_record(query.name());
                (
                    Picked::Slice(std::slice::from_ref(&any_record).iter()),
                    None,
                    &[][..],
                    None,
                )
            }
        };
        let limit = match (request.protocol(), edns, cluster) {
            (Protocol::Udp, Some(edns), Some(_)) => {
                let fit = fits_with_opt(request.queries.as_bytes(), qtype, edns.max_payload());
                if answer_records.len() > fit {
                    metadata.truncation = true;
                }
                fit
            }
            _ => usize::MAX,
        };
        let rcode = metadata.response_code;
        let response = MessageResponseBuilder::new(&request.queries, edns).build(
            metadata,
            answer_records.take(limit),
            std::iter::empty(),
            soa,
            additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => {
                self.metrics.query(Some(qtype), rcode);
                if let Some(cluster) = cluster {
                    cluster.served.inc();
                }
                info
            }
            Err(error) => {
                tracing::debug!(%error, "cannot send a DNS response");
                failed(request)
            }
        }
    }
}
