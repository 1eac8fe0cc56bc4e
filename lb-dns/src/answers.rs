//! The zone as lb-dns serves it: every answer precomputed from the fleet file
//! and the merged health, rebuilt whenever either changes. A query only looks
//! its name up, picks the next rotation and borrows the records.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use fleet::feed::MtaState;
use fleet::{Fleet, WhenAllDown};
use hickory_proto::rr::rdata::{A, AAAA, HINFO, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use prometheus_client::metrics::counter::Counter;

use crate::health::HealthView;

/// TTL of the apex NS set and the glue addresses.
pub const NS_TTL: u32 = 3600;
/// TTL of the synthesized RFC 8482 answer to ANY.
pub const ANY_TTL: u32 = 3789;

/// What a cluster answers and why, for logging and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// One RRset with its precomputed rotations: `rotations[i]` lists indices
/// into `records`, at most `max_answers` of them, starting with the MTA that
/// position `i` of the weighted wheel names.
pub struct RRset {
    records: Vec<Record>,
    rotations: Vec<Box<[u16]>>,
    next: AtomicUsize,
}

impl RRset {
    fn new(records: Vec<Record>, weights: &[u32], max_answers: usize) -> RRset {
        let rotations = if records.is_empty() {
            Vec::new()
        } else {
            rotations(weights, max_answers)
        };
        RRset {
            records,
            rotations,
            next: AtomicUsize::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The next rotation of this RRset.
    fn pick(&self) -> Picked<'_> {
        if self.rotations.is_empty() {
            return Picked::Slice([].iter());
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.rotations.len();
        Picked::Rotation {
            records: &self.records,
            order: self.rotations[n].iter(),
        }
    }

    /// Every record, in fleet order (for tests and `/status`).
    pub fn records(&self) -> &[Record] {
        &self.records
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

pub struct ClusterAnswers {
    pub summary: ClusterSummary,
    pub a: RRset,
    pub aaaa: RRset,
    /// `lb_dns_answers_total{cluster}`: answers served for this cluster.
    pub served: Counter,
}

enum Node {
    Apex,
    /// An in-zone name server: its glue addresses.
    Host {
        a: Vec<Record>,
        aaaa: Vec<Record>,
    },
    Cluster(Box<ClusterAnswers>),
    /// An empty non-terminal: exists, has no records.
    Empty,
}

/// The records of one answer, borrowed from `Answers`.
pub enum Picked<'a> {
    Slice(std::slice::Iter<'a, Record>),
    Rotation {
        records: &'a [Record],
        order: std::slice::Iter<'a, u16>,
    },
}

impl Picked<'_> {
    /// Records left.
    pub fn len(&self) -> usize {
        match self {
            Picked::Slice(it) => it.len(),
            Picked::Rotation { order, .. } => order.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> Iterator for Picked<'a> {
    type Item = &'a Record;

    fn next(&mut self) -> Option<&'a Record> {
        match self {
            Picked::Slice(it) => it.next(),
            Picked::Rotation { records, order } => order.next().map(|&i| &records[i as usize]),
        }
    }
}

/// How to answer one question.
pub enum Lookup<'a> {
    /// NOERROR with records (and additionals: glue for NS).
    Answer {
        answers: Picked<'a>,
        additionals: &'a [Record],
        cluster: Option<&'a ClusterAnswers>,
    },
    /// NOERROR, no records, SOA in authority.
    NoData,
    /// NXDOMAIN, SOA in authority.
    NxDomain,
    /// The name exists and the question is ANY: RFC 8482.
    Any,
    /// Not our zone.
    Refused,
}

fn slice(records: &[Record]) -> Lookup<'_> {
    if records.is_empty() {
        Lookup::NoData
    } else {
        Lookup::Answer {
            answers: Picked::Slice(records.iter()),
            additionals: &[],
            cluster: None,
        }
    }
}

/// The whole zone, immutable once built; swapped whole on change.
pub struct Answers {
    origin: LowerName,
    pub serial: u32,
    /// What the answers hold, serial excluded: the serial moves only when
    /// this changes.
    pub content_hash: u64,
    pub soa: Record,
    ns: Vec<Record>,
    glue: Vec<Record>,
    names: HashMap<LowerName, Node>,
    pub clusters: Vec<ClusterSummary>,
}

fn fqdn(name: &str) -> Result<Name, String> {
    let trimmed = name.trim_end_matches('.');
    Name::from_ascii(format!("{trimmed}."))
        .map(|n| n.to_lowercase())
        .map_err(|e| format!("`{name}` is not a valid DNS name: {e}"))
}

impl Answers {
    /// Builds the zone. `served` gives each cluster's answer counter.
    pub fn build(
        fleet: &Fleet,
        health: &HealthView,
        serial: u32,
        served: impl Fn(&str) -> Counter,
    ) -> Result<Answers, String> {
        let zone = &fleet.zone;
        let origin_name = fqdn(&zone.origin)?;
        let origin = LowerName::new(&origin_name);
        let mut hasher = DefaultHasher::new();
        zone.origin.to_ascii_lowercase().hash(&mut hasher);
        zone.ttl.hash(&mut hasher);
        zone.max_answers.hash(&mut hasher);
        zone.primary_ns.hash(&mut hasher);
        zone.hostmaster.hash(&mut hasher);

        let soa = Record::from_rdata(
            origin_name.clone(),
            zone.ttl,
            RData::SOA(SOA::new(
                fqdn(&zone.primary_ns)?,
                fqdn(&zone.hostmaster)?,
                serial,
                3600,
                600,
                604_800,
                zone.ttl,
            )),
        );

        let mut names: HashMap<LowerName, Node> = HashMap::new();
        let mut ns = Vec::new();
        let mut glue = Vec::new();
        for server in &zone.nameservers {
            let name = fqdn(&server.name)?;
            server.name.to_ascii_lowercase().hash(&mut hasher);
            ns.push(Record::from_rdata(
                origin_name.clone(),
                NS_TTL,
                RData::NS(NS(name.clone())),
            ));
            let lower = LowerName::new(&name);
            if !origin.zone_of(&lower) {
                continue;
            }
            let a: Vec<Record> = server
                .ipv4
                .map(|ip| Record::from_rdata(name.clone(), NS_TTL, RData::A(A(ip))))
                .into_iter()
                .collect();
            let aaaa: Vec<Record> = server
                .ipv6
                .map(|ip| Record::from_rdata(name.clone(), NS_TTL, RData::AAAA(AAAA(ip))))
                .into_iter()
                .collect();
            server.ipv4.hash(&mut hasher);
            server.ipv6.hash(&mut hasher);
            glue.extend(a.iter().cloned());
            glue.extend(aaaa.iter().cloned());
            match names.get_mut(&lower) {
                Some(Node::Host { a: a0, aaaa: a6 }) => {
                    a0.extend(a);
                    a6.extend(aaaa);
                }
                _ => {
                    names.insert(lower, Node::Host { a, aaaa });
                }
            }
        }

        let mut clusters = Vec::new();
        for cluster in &fleet.clusters {
            let name = fqdn(&fleet.hostname(cluster))?;
            let candidates = |mta: &&fleet::Mta| {
                !mta.drain && !matches!(health.state(&mta.name), MtaState::Drain)
            };
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
            let v4: Vec<(Ipv4Addr, u32)> = serving.iter().map(|m| (m.ipv4, m.weight)).collect();
            let v6: Vec<(Ipv6Addr, u32)> = serving
                .iter()
                .filter_map(|m| m.ipv6.map(|ip| (ip, m.weight)))
                .collect();
            cluster.id.hash(&mut hasher);
            up.len().hash(&mut hasher);
            all_down.hash(&mut hasher);
            v4.hash(&mut hasher);
            v6.hash(&mut hasher);
            let a = RRset::new(
                v4.iter()
                    .map(|(ip, _)| Record::from_rdata(name.clone(), zone.ttl, RData::A(A(*ip))))
                    .collect(),
                &v4.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
                zone.max_answers,
            );
            let aaaa = RRset::new(
                v6.iter()
                    .map(|(ip, _)| {
                        Record::from_rdata(name.clone(), zone.ttl, RData::AAAA(AAAA(*ip)))
                    })
                    .collect(),
                &v6.iter().map(|(_, w)| *w).collect::<Vec<_>>(),
                zone.max_answers,
            );
            let summary = ClusterSummary {
                id: cluster.id.clone(),
                up: up.len(),
                all_down,
                served_v4: v4.len(),
                served_v6: v6.len(),
            };
            clusters.push(summary.clone());
            names.insert(
                LowerName::new(&name),
                Node::Cluster(Box::new(ClusterAnswers {
                    summary,
                    a,
                    aaaa,
                    served: served(&cluster.id),
                })),
            );
        }

        // Every name between a record's owner and the apex exists (RFC 8020).
        let owners: Vec<LowerName> = names.keys().cloned().collect();
        for owner in owners {
            let mut name = owner.base_name();
            while origin.zone_of(&name) && name != origin {
                names.entry(name.clone()).or_insert(Node::Empty);
                name = name.base_name();
            }
        }
        names.insert(origin.clone(), Node::Apex);

        Ok(Answers {
            origin,
            serial,
            content_hash: hasher.finish(),
            soa,
            ns,
            glue,
            names,
            clusters,
        })
    }

    /// Gives the zone its serial (in the SOA record too).
    pub fn set_serial(&mut self, serial: u32) {
        self.serial = serial;
        if let RData::SOA(soa) = &mut self.soa.data {
            soa.serial = serial;
        }
    }

    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// The answer to `name`/`qtype` (class IN).
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        let Some(node) = self.names.get(name) else {
            return if self.origin.zone_of(name) {
                Lookup::NxDomain
            } else {
                Lookup::Refused
            };
        };
        if qtype == RecordType::ANY {
            return Lookup::Any;
        }
        match (node, qtype) {
            (Node::Apex, RecordType::SOA) => slice(std::slice::from_ref(&self.soa)),
            (Node::Apex, RecordType::NS) => Lookup::Answer {
                answers: Picked::Slice(self.ns.iter()),
                additionals: &self.glue,
                cluster: None,
            },
            (Node::Host { a, .. }, RecordType::A) => slice(a),
            (Node::Host { aaaa, .. }, RecordType::AAAA) => slice(aaaa),
            (Node::Cluster(c), RecordType::A | RecordType::AAAA) => {
                let set = if qtype == RecordType::A {
                    &c.a
                } else {
                    &c.aaaa
                };
                if set.is_empty() {
                    Lookup::NoData
                } else {
                    Lookup::Answer {
                        answers: set.pick(),
                        additionals: &[],
                        cluster: Some(c),
                    }
                }
            }
            _ => Lookup::NoData,
        }
    }

    /// The RFC 8482 answer for ANY at `name`.
    pub fn any_record(name: &LowerName) -> Record {
        Record::from_rdata(
            Name::from(name.clone()),
            ANY_TTL,
            RData::HINFO(HINFO::new("RFC8482".to_string(), String::new())),
        )
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
}
