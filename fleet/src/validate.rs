//! Cross-field checks of a parsed fleet: duplicates, references, names.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::load::Problem;
use crate::locate::{KeyPath, Locator};
use crate::model::Fleet;

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
    let root = KeyPath::root();
    let zone = root.key("zone");
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

    let ports = root.key("ports");
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

    let mut cluster_ids = HashMap::new();
    let mut mta_names = HashMap::new();
    let mut addresses: HashMap<IpAddr, KeyPath> = HashMap::new();
    for (ci, cluster) in fleet.clusters.iter().enumerate() {
        let cpath = root.key("clusters").index(ci);
        c.token(
            &cpath.key("id"),
            Token::ClusterId,
            "cluster id",
            &cluster.id,
        );
        c.unique(&mut cluster_ids, &cluster.id, cpath.key("id"), "cluster id");
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
        let cluster_domains: HashSet<String> = domains.into_keys().collect();
        let mut usernames = HashMap::new();
        for (ki, cred) in cluster.credentials.iter().enumerate() {
            let path = cpath.key("credentials").index(ki);
            if cred.username.is_empty()
                || cred.username.chars().any(|ch| ch.is_control() || ch == ':')
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
                if !cluster_domains.contains(&domain.to_ascii_lowercase()) {
                    c.report(
                        &path.key("domains").index(di),
                        format!("`{domain}` is not one of cluster {}'s domains", cluster.id),
                    );
                }
            }
        }
        if cluster.mtas.is_empty() {
            c.report(
                &cpath,
                format!(
                    "cluster {} has no MTA; add at least one [[clusters.mtas]]",
                    cluster.id
                ),
            );
        }
        check_events(&mut c, cluster, &cpath);
        for (mi, mta) in cluster.mtas.iter().enumerate() {
            let path = cpath.key("mtas").index(mi);
            c.token(&path.key("name"), Token::Name, "MTA name", &mta.name);
            c.unique(&mut mta_names, &mta.name, path.key("name"), "MTA name");
            c.unique(
                &mut addresses,
                &IpAddr::V4(mta.ipv4),
                path.key("ipv4"),
                "MTA address",
            );
            if let Some(v6) = mta.ipv6 {
                c.unique(
                    &mut addresses,
                    &IpAddr::V6(v6),
                    path.key("ipv6"),
                    "MTA address",
                );
            }
            if mta.weight == 0 || mta.weight > 100 {
                c.report(
                    &path.key("weight"),
                    "weight must be between 1 and 100 (use drain = true to stop serving an MTA)",
                );
            }
        }
        egress::check_cluster(&mut c, cluster, &cpath);
    }

    let mut account_names = HashMap::new();
    for (ai, account) in fleet.accounts.iter().enumerate() {
        let path = root.key("accounts").index(ai);
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
    c.problems
}

/// A cluster's `bounce_domain` and `[[clusters.webhooks]]`.
fn check_events(c: &mut Checker<'_>, cluster: &crate::model::Cluster, cpath: &KeyPath) {
    if let Some(domain) = &cluster.bounce_domain {
        c.dns_name(&cpath.key("bounce_domain"), domain);
    }
    let mut names = HashMap::new();
    for (wi, hook) in cluster.webhooks.iter().enumerate() {
        let path = cpath.key("webhooks").index(wi);
        c.token(
            &path.key("name"),
            Token::WebhookName,
            "webhook name",
            &hook.name,
        );
        c.unique(&mut names, &hook.name, path.key("name"), "webhook name");
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
