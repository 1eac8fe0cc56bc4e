//! Checks of a cluster's `egress_sources` and `egress_pool`.

use std::collections::HashMap;

use super::{Checker, Token};
use crate::egress::{parse_proxy_address, EgressSource};
use crate::locate::KeyPath;
use crate::model::Cluster;

pub(super) fn check_cluster(c: &mut Checker<'_>, cluster: &Cluster, cpath: &KeyPath) {
    let mut names = HashMap::new();
    for (si, source) in cluster.egress_sources.iter().enumerate() {
        let path = cpath.key("egress_sources").index(si);
        c.token(&path.key("name"), Token::Name, "source name", &source.name);
        c.unique(&mut names, &source.name, path.key("name"), "source name");
        check_source(c, source, &path);
    }
    let Some(pool) = &cluster.egress_pool else {
        return;
    };
    let ppath = cpath.key("egress_pool");
    if cluster.egress_sources.is_empty() {
        c.report(
            &ppath,
            format!(
                "cluster {} has an egress_pool but no [[clusters.egress_sources]]",
                cluster.id
            ),
        );
        return;
    }
    c.token(&ppath.key("name"), Token::Name, "pool name", &pool.name);
    let mut listed = HashMap::new();
    for (ei, entry) in pool.entries.iter().enumerate() {
        let path = ppath.key("entries").index(ei);
        if !names.contains_key(&entry.name) {
            c.report(
                &path.key("name"),
                format!(
                    "no egress source named `{}` in cluster {}",
                    entry.name, cluster.id
                ),
            );
        }
        c.unique(&mut listed, &entry.name, path.key("name"), "pool entry");
        if entry.weight > 100 {
            c.report(&path.key("weight"), "weight must be between 0 and 100");
        }
    }
    if pool.entries.iter().all(|entry| entry.weight == 0) {
        c.report(
            &ppath.key("entries"),
            "the pool needs at least one entry with a weight above 0",
        );
    }
}

fn check_source(c: &mut Checker<'_>, source: &EgressSource, path: &KeyPath) {
    let ip = source.source_address;
    if ip.is_unspecified() || ip.is_multicast() {
        c.report(
            &path.key("source_address"),
            format!("`{ip}` is not an address mail can leave from"),
        );
    }
    if source.socks5.is_some() && source.ha_proxy.is_some() {
        c.report(
            &path.key("ha_proxy"),
            "a source goes through one proxy: set `socks5` or `ha_proxy`, not both",
        );
    }
    for (key, proxy) in [("socks5", &source.socks5), ("ha_proxy", &source.ha_proxy)] {
        if let Some(Err(why)) = proxy.as_deref().map(parse_proxy_address) {
            c.report(&path.key(key), why);
        }
    }
    let credentials = [
        ("username", source.username.as_deref()),
        ("password", source.password.as_ref().map(|p| p.expose())),
    ];
    for (key, value) in credentials {
        let Some(value) = value else { continue };
        if key == "password" && crate::secret::VaultRef::is_reference(value) {
            // Read (and its length checked) by the MTA that uses it.
            if let Err(message) = crate::secret::VaultRef::parse(value) {
                c.report(&path.key(key), message);
            }
        }
        if source.socks5.is_none() {
            c.report(
                &path.key(key),
                format!("`{key}` is for a SOCKS5 proxy; this source has no `socks5`"),
            );
        } else if value.is_empty() || value.len() > 255 {
            c.report(
                &path.key(key),
                format!("the SOCKS5 {key} must be 1 to 255 bytes (RFC 1929)"),
            );
        }
    }
    if source.username.is_some() != source.password.is_some() {
        let missing = if source.username.is_some() {
            "password"
        } else {
            "username"
        };
        c.report(
            &path.key(missing),
            format!("a SOCKS5 username needs a password and the other way round; `{missing}` is missing"),
        );
    }
    if let Some(name) = &source.ehlo_name {
        c.dns_name(&path.key("ehlo_name"), name);
    }
}
