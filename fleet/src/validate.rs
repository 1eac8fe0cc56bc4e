//! Cross-field checks of a parsed fleet: duplicates, references, names.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::load::Problem;
use crate::locate::{KeyPath, Locator};
use crate::model::{Cluster, Fleet};

mod egress;

struct Checker<'a> {
    locator: &'a Locator<'a>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.problems.push(Problem {
            line: self.locator.line(path),
            key: path.to_string(),
            message: message.into(),
        });
    }

    /// `value` must be a [`Token`] of its kind; `what` names it in the error.
    fn token(&mut self, path: &KeyPath, kind: Token, what: &str, value: &str) {
        if !kind.accepts(value) {
            self.report(
                path,
                format!(
                    "{what} `{value}` must be 1 to {} {}",
                    kind.max(),
                    kind.words()
                ),
            );
        }
    }

    /// [`Checker::token`], and `value` not used before in `seen`.
    fn unique_token(
        &mut self,
        seen: &mut HashMap<String, KeyPath>,
        path: &KeyPath,
        kind: Token,
        what: &str,
        value: &str,
    ) {
        self.token(path, kind, what, value);
        self.unique(seen, &value.to_string(), path.clone(), what);
    }

    fn dns_name(&mut self, path: &KeyPath, name: &str) {
        if let Err(why) = check_dns_name(name) {
            self.report(path, format!("`{name}` is not a valid DNS name: {why}"));
        }
    }

    /// Reports `value` if an earlier entry had it; remembers where it was.
    fn unique<T: std::hash::Hash + Eq + Clone + std::fmt::Display>(
        &mut self,
        seen: &mut HashMap<T, KeyPath>,
        value: &T,
        path: KeyPath,
        what: &str,
    ) {
        if let Some(first) = seen.get(value) {
            let first_place = match self.locator.line(first) {
                Some(line) => format!("line {line}"),
                None => first.to_string(),
            };
            self.report(
                &path,
                format!("duplicate {what} `{value}` (first used at {first_place})"),
            );
        } else {
            seen.insert(value.clone(), path);
        }
    }
}

/// Every cross-field problem in `fleet`, located in its source text.
pub fn validate(fleet: &Fleet, locator: &Locator<'_>) -> Vec<Problem> {
    let mut c = Checker {
        locator,
        problems: Vec::new(),
    };
    check_zone(&mut c, fleet);
    check_ports(&mut c, fleet);
    check_clusters(&mut c, fleet);
    check_accounts(&mut c, fleet);
    c.problems
}

/// `[zone]`: its names, TTL and answer count, and its name servers (one at
/// least, with a glue address when inside the zone).
fn check_zone(c: &mut Checker<'_>, fleet: &Fleet) {
    let zone = KeyPath::root().key("zone");
    let origin = fleet.zone.origin.trim_end_matches('.').to_ascii_lowercase();
    c.dns_name(&zone.key("origin"), &fleet.zone.origin);
    c.dns_name(&zone.key("primary_ns"), &fleet.zone.primary_ns);
    c.dns_name(&zone.key("hostmaster"), &fleet.zone.hostmaster);
    if !(1..=86_400).contains(&fleet.zone.ttl) {
        c.report(&zone.key("ttl"), "ttl must be between 1 and 86400 seconds");
    }
    if !(1..=64).contains(&fleet.zone.max_answers) {
        c.report(
            &zone.key("max_answers"),
            "max_answers must be between 1 and 64",
        );
    }
    if fleet.zone.nameservers.is_empty() {
        c.report(
            &zone.key("nameservers"),
            "at least one name server is needed for the apex NS set",
        );
    }
    for (i, ns) in fleet.zone.nameservers.iter().enumerate() {
        let path = zone.key("nameservers").index(i);
        c.dns_name(&path.key("name"), &ns.name);
        let in_zone = in_zone(&ns.name, &origin);
        if in_zone && ns.ipv4.is_none() && ns.ipv6.is_none() {
            c.report(
                &path,
                format!(
                    "`{}` is inside the zone and needs a glue address (ipv4 or ipv6)",
                    ns.name
                ),
            );
        }
    }
}

/// `[ports]`: one SMTP port at least, none 0, none used twice.
fn check_ports(c: &mut Checker<'_>, fleet: &Fleet) {
    let ports = KeyPath::root().key("ports");
    if fleet.ports.smtp.is_empty() {
        c.report(&ports.key("smtp"), "at least one SMTP port is needed");
    }
    let mut seen_ports = HashMap::new();
    for (i, port) in fleet
        .ports
        .smtp
        .iter()
        .chain([&fleet.ports.https])
        .enumerate()
    {
        let path = if i < fleet.ports.smtp.len() {
            ports.key("smtp").index(i)
        } else {
            ports.key("https")
        };
        if *port == 0 {
            c.report(&path, "port 0 is not a port");
        }
        c.unique(&mut seen_ports, port, path, "port");
    }
}

/// What must be unique across every cluster: MTA names and addresses.
#[derive(Default)]
struct FleetWide {
    mta_names: HashMap<String, KeyPath>,
    addresses: HashMap<IpAddr, KeyPath>,
}

/// Every `[[clusters]]`: its id, domains, credentials, MTAs, events and
/// egress.
fn check_clusters(c: &mut Checker<'_>, fleet: &Fleet) {
    let mut cluster_ids = HashMap::new();
    let mut fleet_wide = FleetWide::default();
    for (ci, cluster) in fleet.clusters.iter().enumerate() {
        let cpath = KeyPath::root().key("clusters").index(ci);
        let id = cpath.key("id");
        c.unique_token(
            &mut cluster_ids,
            &id,
            Token::ClusterId,
            "cluster id",
            &cluster.id,
        );
        let domains = check_domains(c, cluster, &cpath);
        check_credentials(c, cluster, &cpath, &domains);
        if cluster.mtas.is_empty() {
            c.report(
                &cpath,
                format!(
                    "cluster {} has no MTA; add at least one [[clusters.mtas]]",
                    cluster.id
                ),
            );
        }
        check_events(c, cluster, &cpath);
        check_mtas(c, cluster, &cpath, &mut fleet_wide);
        egress::check_cluster(c, cluster, &cpath);
    }
}

/// A cluster's sending domains (one at least, valid, none twice); the set
/// of them, lower-cased.
fn check_domains(c: &mut Checker<'_>, cluster: &Cluster, cpath: &KeyPath) -> HashSet<String> {
    if cluster.domains.is_empty() {
        c.report(
            &cpath.key("domains"),
            "a cluster needs at least one sending domain",
        );
    }
    let mut domains = HashMap::new();
    for (di, domain) in cluster.domains.iter().enumerate() {
        let path = cpath.key("domains").index(di);
        c.dns_name(&path, domain);
        c.unique(&mut domains, &domain.to_ascii_lowercase(), path, "domain");
    }
    domains.into_keys().collect()
}

/// A cluster's credentials: usernames well-formed and unique, their
/// domains among the cluster's `domains`.
fn check_credentials(
    c: &mut Checker<'_>,
    cluster: &Cluster,
    cpath: &KeyPath,
    domains: &HashSet<String>,
) {
    let mut usernames = HashMap::new();
    for (ki, cred) in cluster.credentials.iter().enumerate() {
        let path = cpath.key("credentials").index(ki);
        if cred.username.is_empty() || cred.username.chars().any(|ch| ch.is_control() || ch == ':')
        {
            c.report(
                &path.key("username"),
                "username must be non-empty, without control characters or `:`",
            );
        }
        c.unique(
            &mut usernames,
            &cred.username,
            path.key("username"),
            "username",
        );
        for (di, domain) in cred.domains.iter().flatten().enumerate() {
            if !domains.contains(&domain.to_ascii_lowercase()) {
                c.report(
                    &path.key("domains").index(di),
                    format!("`{domain}` is not one of cluster {}'s domains", cluster.id),
                );
            }
        }
    }
}

/// A cluster's MTAs: names and addresses unique in the whole fleet, a
/// weight from 1 to 100.
fn check_mtas(c: &mut Checker<'_>, cluster: &Cluster, cpath: &KeyPath, fleet_wide: &mut FleetWide) {
    for (mi, mta) in cluster.mtas.iter().enumerate() {
        let path = cpath.key("mtas").index(mi);
        let name = path.key("name");
        c.unique_token(
            &mut fleet_wide.mta_names,
            &name,
            Token::Name,
            "MTA name",
            &mta.name,
        );
        let addresses = &mut fleet_wide.addresses;
        c.unique(
            addresses,
            &IpAddr::V4(mta.ipv4),
            path.key("ipv4"),
            "MTA address",
        );
        if let Some(v6) = mta.ipv6 {
            c.unique(addresses, &IpAddr::V6(v6), path.key("ipv6"), "MTA address");
        }
        if mta.weight == 0 || mta.weight > 100 {
            c.report(
                &path.key("weight"),
                "weight must be between 1 and 100 (use drain = true to stop serving an MTA)",
            );
        }
    }
}

/// `[[accounts]]`: names unique, a token's sha256 (or a Vault reference
/// to it), clusters that exist.
fn check_accounts(c: &mut Checker<'_>, fleet: &Fleet) {
    let mut account_names = HashMap::new();
    for (ai, account) in fleet.accounts.iter().enumerate() {
        let path = KeyPath::root().key("accounts").index(ai);
        c.unique(
            &mut account_names,
            &account.name,
            path.key("name"),
            "account name",
        );
        // A Vault reference is read by healthd when it loads.
        let token = &account.token_sha256;
        if crate::secret::VaultRef::is_reference(token) {
            if let Err(message) = crate::secret::VaultRef::parse(token) {
                c.report(&path.key("token_sha256"), message);
            }
        } else if !crate::secret::is_sha256_hex(token) || token.trim() != token {
            c.report(
                &path.key("token_sha256"),
                "token_sha256 must be 64 hex digits (sha256 of the token)",
            );
        }
        for (i, id) in account.clusters.iter().enumerate() {
            if fleet.cluster(id).is_none() {
                c.report(
                    &path.key("clusters").index(i),
                    format!("no cluster has id `{id}`"),
                );
            }
        }
    }
}

/// A cluster's `bounce_domain` and `[[clusters.webhooks]]`.
fn check_events(c: &mut Checker<'_>, cluster: &Cluster, cpath: &KeyPath) {
    if let Some(domain) = &cluster.bounce_domain {
        c.dns_name(&cpath.key("bounce_domain"), domain);
    }
    let mut names = HashMap::new();
    for (wi, hook) in cluster.webhooks.iter().enumerate() {
        let path = cpath.key("webhooks").index(wi);
        let name = path.key("name");
        c.unique_token(
            &mut names,
            &name,
            Token::WebhookName,
            "webhook name",
            &hook.name,
        );
        if let Err(why) = check_webhook_url(&hook.url) {
            c.report(&path.key("url"), why);
        }
        if crate::secret::VaultRef::is_reference(&hook.secret) {
            // Read (and its length checked) by the cluster's MTAs.
            if let Err(message) = crate::secret::VaultRef::parse(&hook.secret) {
                c.report(&path.key("secret"), message);
            }
        } else if hook.secret.len() < 16 {
            c.report(
                &path.key("secret"),
                "the signing secret must be at least 16 characters",
            );
        }
        if !(1..=10_000).contains(&hook.batch_size) {
            c.report(
                &path.key("batch_size"),
                "batch_size must be between 1 and 10000",
            );
        }
        if hook.linger > std::time::Duration::from_secs(60) {
            c.report(&path.key("linger"), "linger must be at most 60s");
        }
        if hook.events.as_ref().is_some_and(|e| e.is_empty()) {
            c.report(
                &path.key("events"),
                "an empty event list sends nothing: leave `events` out to send every type",
            );
        }
    }
}

/// `https://host[:port]/path`, or `http://` to a loopback host.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a URL (https://host/path)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            if port.parse::<u16>().is_err() && !authority.ends_with(']') {
                return Err(format!("`{url}` has a bad port `{port}`"));
            }
            host
        }
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || authority.contains('@') {
        return Err(format!("`{url}` needs a host and no user info"));
    }
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "`{url}`: webhooks use https (http only to a loopback host, for tests)"
        )),
        other => Err(format!("`{url}`: unknown scheme `{other}` (use https)")),
    }
}

fn in_zone(name: &str, origin: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == origin || name.ends_with(&format!(".{origin}"))
}

/// Checks host-name syntax (RFC 1035 letters, digits and hyphens, RFC 1123
/// leading digits); a trailing dot is allowed.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with `-`"));
        }
        if let Some(bad) = label
            .chars()
            .find(|ch| !(ch.is_ascii_alphanumeric() || *ch == '-'))
        {
            return Err(format!(
                "`{bad}` is not allowed (letters, digits and `-` only)"
            ));
        }
    }
    Ok(())
}

/// The kinds of identifier the fleet file holds, each with its own rule.
#[derive(Debug, Clone, Copy)]
enum Token {
    /// Part of the cluster hostname: lowercase letters and digits.
    ClusterId,
    /// MTAs, egress sources and pools (in events, metrics and Redis keys).
    Name,
    /// Webhook names (in the cursor file's name).
    WebhookName,
}

impl Token {
    fn max(self) -> usize {
        match self {
            Token::ClusterId => 61,
            Token::Name | Token::WebhookName => 63,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Token::ClusterId => "lowercase letters or digits",
            Token::Name => "letters, digits, `-`, `_` or `.`",
            Token::WebhookName => "letters, digits, `-` or `_`",
        }
    }

    fn allows(self, b: u8) -> bool {
        match self {
            Token::ClusterId => b.is_ascii_lowercase() || b.is_ascii_digit(),
            Token::Name => b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'),
            Token::WebhookName => b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'),
        }
    }

    fn accepts(self, value: &str) -> bool {
        !value.is_empty() && value.len() <= self.max() && value.bytes().all(|b| self.allows(b))
    }
}
