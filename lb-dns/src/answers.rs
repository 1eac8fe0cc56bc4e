//! The zone as lb-dns serves it: every answer precomputed in wire format
//! from the fleet file and the merged health, rebuilt whenever either
//! changes. Each (name, type) has its answer sections ready as bytes, one
//! copy per rotation step for the cluster addresses, written for a question
//! of that name's length (names compress against it); a query costs a
//! lookup, an atomic increment and a copy (`respond`).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use fleet::feed::MtaState;
use fleet::{Fleet, WhenAllDown};
use prometheus_client::metrics::counter::Counter;

use crate::health::HealthView;
use crate::wire::{self, name_to_wire, Writer};

/// TTL of the apex NS set and the glue addresses.
pub const NS_TTL: u32 = 3600;
/// TTL of the synthesized RFC 8482 answer to ANY.
pub const ANY_TTL: u32 = 3789;
/// Preference of the cluster's own MX record.
pub const MX_PREFERENCE: u16 = 10;

/// What a cluster answers and why, for logging and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterSummary {
    pub id: String,
    /// MTAs up and not drained.
    pub up: usize,
    /// No MTA up: `when_all_down` decided the answer.
    pub all_down: bool,
    /// Addresses in the A and AAAA answers.
    pub served_v4: usize,
    pub served_v6: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ns(Vec<u8>),
    Soa {
        mname: Vec<u8>,
        rname: Vec<u8>,
        minimum: u32,
    },
    Mx(u16, Vec<u8>),
    Txt(String),
    Hinfo,
}

impl Data {
    fn rtype(&self) -> u16 {
        match self {
            Data::A(_) => wire::TYPE_A,
            Data::Aaaa(_) => wire::TYPE_AAAA,
            Data::Ns(_) => wire::TYPE_NS,
            Data::Soa { .. } => wire::TYPE_SOA,
            Data::Mx(..) => wire::TYPE_MX,
            Data::Txt(_) => wire::TYPE_TXT,
            Data::Hinfo => wire::TYPE_HINFO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Rec {
    owner: Vec<u8>,
    ttl: u32,
    data: Data,
}

impl Rec {
    fn write(&self, w: &mut Writer, serial: u32) {
        w.record(&self.owner, self.data.rtype(), self.ttl, |w| {
            match &self.data {
                Data::A(ip) => w.raw(&ip.octets()),
                Data::Aaaa(ip) => w.raw(&ip.octets()),
                Data::Ns(name) => w.name(name),
                Data::Soa {
                    mname,
                    rname,
                    minimum,
                } => {
                    w.name(mname);
                    w.name(rname);
                    for n in [serial, 3600, 600, 604_800, *minimum] {
                        w.raw(&n.to_be_bytes());
                    }
                }
                Data::Mx(preference, name) => {
                    w.raw(&preference.to_be_bytes());
                    w.name(name);
                }
                Data::Txt(text) => w.strings(text.as_bytes()),
                Data::Hinfo => {
                    w.strings(b"RFC8482");
                    w.strings(b"");
                }
            }
        });
    }
}

/// One ready answer: the sections after the question.
#[derive(Debug)]
pub struct Wire {
    pub rcode: u16,
    /// Answer, authority and additional record counts.
    pub counts: [u16; 3],
    pub body: Box<[u8]>,
    /// Where each answer record ends in `body` (truncation keeps whole
    /// answer records and drops the other sections).
    pub answer_ends: Box<[u16]>,
}

impl Wire {
    fn render(qname: Option<&[u8]>, rcode: u16, sections: [&[Rec]; 3], serial: u32) -> Wire {
        let mut w = match qname {
            Some(q) => Writer::new(q),
            None => Writer::detached(),
        };
        let mut answer_ends = Vec::with_capacity(sections[0].len());
        for record in sections[0] {
            record.write(&mut w, serial);
            answer_ends.push(w.bytes.len() as u16);
        }
        for record in sections[1].iter().chain(sections[2]) {
            record.write(&mut w, serial);
        }
        Wire {
            rcode,
            counts: sections.map(|s| s.len() as u16),
            body: w.bytes.into_boxed_slice(),
            answer_ends: answer_ends.into_boxed_slice(),
        }
    }
}

/// The answer to one (name, type): fixed, or rotating over precomputed steps.
pub struct Answer {
    steps: Vec<Wire>,
    next: AtomicUsize,
    /// `lb_dns_answers_total{cluster}` for a cluster's addresses.
    served: Option<Counter>,
}

impl Answer {
    fn pick(&self) -> &Wire {
        if self.steps.len() == 1 {
            return &self.steps[0];
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.steps.len();
        &self.steps[n]
    }
}

/// Smooth weighted round robin (nginx's): a wheel of `sum(weights)` slots
/// (after dividing by the gcd) in which each index appears `weight` times,
/// spread out. Each slot's rotation starts with that slot's index and goes on
/// with the distinct indices that follow it on the wheel.
fn rotations(weights: &[u32], max_answers: usize) -> Vec<Box<[u16]>> {
    let n = weights.len();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from((*w / g).max(1))).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; n];
    let mut wheel = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..n)
            .max_by_key(|&i| (current[i], -(i as i64)))
            .unwrap_or(0);
        current[best] -= total;
        wheel.push(best as u16);
    }
    let take = max_answers.min(n);
    (0..wheel.len())
        .map(|start| {
            let mut seen = vec![false; n];
            let mut order = Vec::with_capacity(take);
            for k in 0..wheel.len() {
                let i = wheel[(start + k) % wheel.len()];
                if !seen[i as usize] {
                    seen[i as usize] = true;
                    order.push(i);
                    if order.len() == take {
                        break;
                    }
                }
            }
            order.into_boxed_slice()
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// An RRset before rendering.
#[derive(Debug, Default, Hash)]
struct SetModel {
    records: Vec<Rec>,
    /// Rotated by these weights (cluster addresses).
    weights: Option<Vec<u32>>,
    additional: Vec<Rec>,
    /// Index into `Model::clusters` whose answer counter counts it.
    cluster: Option<usize>,
}

/// The zone before rendering; its hash decides whether the serial moves.
#[derive(Debug, Default, Hash)]
struct Model {
    /// Every owner name (lower-case wire) and its RRsets by type; empty
    /// non-terminals have none.
    names: BTreeMap<Vec<u8>, BTreeMap<u16, SetModel>>,
    clusters: Vec<ClusterSummary>,
    max_answers: usize,
}

/// Looked up answers for one question.
pub enum Found<'a> {
    Answer {
        wire: &'a Wire,
        served: Option<&'a Counter>,
    },
    /// Not our zone.
    Refused,
}

struct Node {
    by_type: Vec<(u16, Answer)>,
    nodata: Wire,
    any: Wire,
}

/// The whole zone, immutable once built; swapped whole on change.
pub struct Answers {
    origin: Vec<u8>,
    pub serial: u32,
    /// What the answers hold, serial excluded: the serial moves only when
    /// this changes.
    pub content_hash: u64,
    names: HashMap<Box<[u8]>, Node>,
    nxdomain: Wire,
    pub clusters: Vec<ClusterSummary>,
}

fn cluster_model(
    fleet: &Fleet,
    cluster: &fleet::Cluster,
    health: &HealthView,
    model: &mut Model,
) -> Result<(), String> {
    let zone = &fleet.zone;
    let name = name_to_wire(&fleet.hostname(cluster))?;
    let candidates =
        |mta: &&fleet::Mta| !mta.drain && !matches!(health.state(&mta.name), MtaState::Drain);
    let up: Vec<&fleet::Mta> = cluster
        .mtas
        .iter()
        .filter(candidates)
        .filter(|mta| health.state(&mta.name) == MtaState::Up)
        .collect();
    let all_down = up.is_empty();
    let serving: Vec<&fleet::Mta> = if !all_down {
        up.clone()
    } else {
        match zone.when_all_down {
            WhenAllDown::ServeAll => cluster.mtas.iter().filter(candidates).collect(),
            WhenAllDown::Empty => Vec::new(),
        }
    };
    let rec = |data| Rec {
        owner: name.clone(),
        ttl: zone.ttl,
        data,
    };
    let index = model.clusters.len();
    let sets = model.names.entry(name.clone()).or_default();
    let v4: Vec<&fleet::Mta> = serving.clone();
    let v6: Vec<&fleet::Mta> = serving
        .iter()
        .copied()
        .filter(|m| m.ipv6.is_some())
        .collect();
    for (rtype, mtas) in [(wire::TYPE_A, &v4), (wire::TYPE_AAAA, &v6)] {
        if mtas.is_empty() {
            continue;
        }
        let records = mtas
            .iter()
            .map(|m| match (rtype, m.ipv6) {
                (wire::TYPE_AAAA, Some(ip)) => rec(Data::Aaaa(ip)),
                _ => rec(Data::A(m.ipv4)),
            })
            .collect();
        sets.insert(
            rtype,
            SetModel {
                records,
                weights: Some(mtas.iter().map(|m| m.weight).collect()),
                additional: Vec::new(),
                cluster: Some(index),
            },
        );
    }
    sets.entry(wire::TYPE_MX).or_default().records =
        vec![rec(Data::Mx(MX_PREFERENCE, name.clone()))];
    sets.entry(wire::TYPE_TXT).or_default().records =
        vec![rec(Data::Txt(spf(&cluster.mail_source_addresses())))];
    model.clusters.push(ClusterSummary {
        id: cluster.id.clone(),
        up: up.len(),
        all_down,
        served_v4: v4.len(),
        served_v6: v6.len(),
    });
    Ok(())
}

/// The SPF record (RFC 7208) naming every address mail leaves from.
pub fn spf(addresses: &[IpAddr]) -> String {
    let mut text = String::from("v=spf1");
    for ip in addresses.iter().filter(|ip| ip.is_ipv4()) {
        text.push_str(&format!(" ip4:{ip}"));
    }
    for ip in addresses.iter().filter(|ip| ip.is_ipv6()) {
        text.push_str(&format!(" ip6:{ip}"));
    }
    text.push_str(" -all");
    text
}

/// The apex (SOA, NS with glue) and the in-zone name servers' addresses.
fn apex_model(fleet: &Fleet, origin: &[u8], model: &mut Model) -> Result<Rec, String> {
    let zone = &fleet.zone;
    let soa = Rec {
        owner: origin.to_vec(),
        ttl: zone.ttl,
        data: Data::Soa {
            mname: name_to_wire(&zone.primary_ns)?,
            rname: name_to_wire(&zone.hostmaster)?,
            minimum: zone.ttl,
        },
    };
    let mut ns = Vec::new();
    let mut glue = Vec::new();
    for server in &zone.nameservers {
        let name = name_to_wire(&server.name)?;
        ns.push(Rec {
            owner: origin.to_vec(),
            ttl: NS_TTL,
            data: Data::Ns(name.clone()),
        });
        if !wire::in_zone(&name, origin) {
            continue;
        }
        let host = model.names.entry(name.clone()).or_default();
        let addresses = [server.ipv4.map(Data::A), server.ipv6.map(Data::Aaaa)];
        for data in addresses.into_iter().flatten() {
            let record = Rec {
                owner: name.clone(),
                ttl: NS_TTL,
                data,
            };
            glue.push(record.clone());
            host.entry(record.data.rtype())
                .or_default()
                .records
                .push(record);
        }
    }
    let apex = model.names.entry(origin.to_vec()).or_default();
    apex.entry(wire::TYPE_SOA).or_default().records = vec![soa.clone()];
    if !ns.is_empty() {
        let set = apex.entry(wire::TYPE_NS).or_default();
        set.records = ns;
        set.additional = glue;
    }
    Ok(soa)
}

fn render_set(qname: &[u8], set: &SetModel, max_answers: usize, serial: u32) -> Answer {
    fn sections<'a>(answers: &'a [Rec], set: &'a SetModel) -> [&'a [Rec]; 3] {
        [answers, &[], &set.additional]
    }
    let steps = match &set.weights {
        None => vec![Wire::render(
            Some(qname),
            wire::RCODE_NOERROR,
            sections(&set.records, set),
            serial,
        )],
        Some(weights) => rotations(weights, max_answers)
            .iter()
            .map(|order| {
                let records: Vec<Rec> = order
                    .iter()
                    .map(|&i| set.records[usize::from(i)].clone())
                    .collect();
                Wire::render(
                    Some(qname),
                    wire::RCODE_NOERROR,
                    sections(&records, set),
                    serial,
                )
            })
            .collect(),
    };
    Answer {
        steps,
        next: AtomicUsize::new(0),
        served: None,
    }
}

impl Model {
    /// The zone's names and RRsets from the fleet file and the health, and
    /// the SOA record (the authority section of negative answers).
    fn of(fleet: &Fleet, health: &HealthView, origin: &[u8]) -> Result<(Model, Rec), String> {
        let mut model = Model {
            max_answers: fleet.zone.max_answers,
            ..Model::default()
        };
        let soa = apex_model(fleet, origin, &mut model)?;
        for cluster in &fleet.clusters {
            cluster_model(fleet, cluster, health, &mut model)?;
        }
        model.add_empty_non_terminals(origin);
        Ok((model, soa))
    }

    /// Every name between a record's owner and the apex exists (RFC 8020).
    fn add_empty_non_terminals(&mut self, origin: &[u8]) {
        let owners: Vec<Vec<u8>> = self.names.keys().cloned().collect();
        for owner in owners {
            let mut at = 0;
            while owner[at] != 0 {
                at += 1 + usize::from(owner[at]);
                let parent = &owner[at..];
                if parent.len() <= origin.len() || !wire::in_zone(parent, origin) {
                    break;
                }
                self.names.entry(parent.to_vec()).or_default();
            }
        }
    }

    /// The hash of everything the model holds (derived `Hash`, so every
    /// field counts): the serial moves only when it changes.
    fn content_hash(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
}

/// The ready answers of one name: each RRset (rotated where weighted), the
/// NODATA answer for other types and the RFC 8482 answer to ANY.
fn render_node(
    name: &[u8],
    sets: &BTreeMap<u16, SetModel>,
    model: &Model,
    served: &[Counter],
    authority: &[Rec],
    serial: u32,
) -> Node {
    let by_type = sets
        .iter()
        .map(|(&rtype, set)| {
            let mut answer = render_set(name, set, model.max_answers, serial);
            answer.served = set.cluster.map(|i| served[i].clone());
            (rtype, answer)
        })
        .collect();
    let any = Rec {
        owner: name.to_vec(),
        ttl: ANY_TTL,
        data: Data::Hinfo,
    };
    Node {
        by_type,
        nodata: Wire::render(
            Some(name),
            wire::RCODE_NOERROR,
            [&[], authority, &[]],
            serial,
        ),
        any: Wire::render(
            Some(name),
            wire::RCODE_NOERROR,
            [std::slice::from_ref(&any), &[], &[]],
            serial,
        ),
    }
}

impl Answers {
    /// Builds the zone: the model, its content hash, then every name's
    /// ready answers. `served` gives each cluster's answer counter.
    pub fn build(
        fleet: &Fleet,
        health: &HealthView,
        serial: u32,
        served: impl Fn(&str) -> Counter,
    ) -> Result<Answers, String> {
        let origin = name_to_wire(&fleet.zone.origin)?;
        let (model, soa) = Model::of(fleet, health, &origin)?;
        let served: Vec<Counter> = model.clusters.iter().map(|c| served(&c.id)).collect();
        let authority = std::slice::from_ref(&soa);
        let names = model
            .names
            .iter()
            .map(|(name, sets)| {
                let node = render_node(name, sets, &model, &served, authority, serial);
                (name.clone().into_boxed_slice(), node)
            })
            .collect();
        Ok(Answers {
            nxdomain: Wire::render(None, wire::RCODE_NXDOMAIN, [&[], authority, &[]], serial),
            origin,
            serial,
            content_hash: model.content_hash(),
            names,
            clusters: model.clusters,
        })
    }

    /// The answer to `name` (lower-case wire format) and `qtype`, class IN.
    pub fn lookup(&self, name: &[u8], qtype: u16) -> Found<'_> {
        let Some(node) = self.names.get(name) else {
            return if wire::in_zone(name, &self.origin) {
                Found::Answer {
                    wire: &self.nxdomain,
                    served: None,
                }
            } else {
                Found::Refused
            };
        };
        if qtype == wire::TYPE_ANY {
            return Found::Answer {
                wire: &node.any,
                served: None,
            };
        }
        match node.by_type.iter().find(|(t, _)| *t == qtype) {
            Some((_, answer)) => Found::Answer {
                wire: answer.pick(),
                served: answer.served.as_ref(),
            },
            None => Found::Answer {
                wire: &node.nodata,
                served: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firsts(weights: &[u32]) -> Vec<usize> {
        let mut count = vec![0; weights.len()];
        for r in rotations(weights, 8) {
            count[r[0] as usize] += 1;
        }
        count
    }

    #[test]
    fn equal_weights_rotate_evenly() {
        let r = rotations(&[1, 1, 1], 8);
        assert_eq!(r.len(), 3);
        assert_eq!(&*r[0], &[0, 1, 2]);
        assert_eq!(&*r[1], &[1, 2, 0]);
        assert_eq!(&*r[2], &[2, 0, 1]);
    }

    #[test]
    fn weights_set_the_share_of_first_places() {
        assert_eq!(firsts(&[3, 1, 1]), vec![3, 1, 1]);
        assert_eq!(firsts(&[20, 10]), vec![2, 1]);
        assert_eq!(firsts(&[100, 1]), vec![100, 1]);
    }

    #[test]
    fn rotations_hold_at_most_max_answers_distinct_entries() {
        for r in rotations(&[5, 1, 2, 7, 1], 3) {
            assert_eq!(r.len(), 3);
            let mut v = r.to_vec();
            v.sort();
            v.dedup();
            assert_eq!(v.len(), 3);
        }
    }

    #[test]
    fn spf_lists_ipv4_then_ipv6() {
        let ips: Vec<IpAddr> = ["192.0.2.1", "2001:db8::1", "192.0.2.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            spf(&ips),
            "v=spf1 ip4:192.0.2.1 ip4:192.0.2.2 ip6:2001:db8::1 -all"
        );
    }
}
