//! What the UDP and TCP paths share: the synchronous `Responder` and the
//! counters. Each path owns its receive loop and its buffers; a query costs
//! the work in `respond` and one increment of the caller's `Tally` (one per
//! UDP thread, one per TCP connection), added to the shared counters when
//! the caller has nothing queued.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::answers::Answers;
use crate::cookie::CookieSecret;
use crate::metrics::{Metrics, Tally};
use crate::respond::{Reply, Responder, Transport};
use crate::rrl::Rrl;

pub struct Handler {
    responder: Responder,
    pub metrics: Arc<Metrics>,
}

impl Handler {
    /// With a cookie secret of this process only and no RRL (tests).
    pub fn new(answers: Arc<ArcSwap<Answers>>, metrics: Arc<Metrics>) -> Handler {
        Handler::configured(answers, metrics, CookieSecret::random(), None)
    }

    /// With RRL (its counters registered in `metrics`' registry by the
    /// caller).
    pub fn configured(
        answers: Arc<ArcSwap<Answers>>,
        metrics: Arc<Metrics>,
        cookies: CookieSecret,
        rrl: Option<Rrl>,
    ) -> Handler {
        Handler {
            responder: Responder::new(answers, cookies, rrl),
            metrics,
        }
    }

    /// Answers `packet` into `out` and counts it in `tally`.
    pub fn handle(
        &self,
        packet: &[u8],
        src: IpAddr,
        transport: Transport,
        out: &mut [u8],
        tally: &mut Tally,
    ) -> Option<Reply> {
        let reply = self.responder.respond(packet, src, transport, out)?;
        tally.add(reply.qtype, reply.rcode, &self.metrics);
        Some(reply)
    }
}
