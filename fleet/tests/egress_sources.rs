//! Egress sources and pools in the fleet file: the documented example
//! loads, every rule names its file, line and key, and the addresses mail
//! leaves from are the sources' when a cluster has them.

use std::net::IpAddr;

use fleet::testkit::example_configs::repo_configs;
use fleet::EgressRoute;

fn example() -> String {
    std::fs::read_to_string(repo_configs().join("fleet.toml")).unwrap()
}

/// configs/fleet.toml with its commented egress block switched on.
fn example_with_egress() -> String {
    let text = example();
    let mut out = String::new();
    let mut in_block = false;
    for line in text.lines() {
        if line == "  # [[clusters.egress_sources]]" {
            in_block = true;
        }
        if in_block && !line.starts_with("  #") {
            in_block = false;
        }
        match line.strip_prefix("  # ") {
            // Continuation comments (`#      # text`) stay comments.
            Some(rest) if in_block && !rest.trim_start().starts_with('#') => {
                out.push_str("  ");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    assert_ne!(
        out, text,
        "configs/fleet.toml has no commented egress block"
    );
    out
}

#[test]
fn the_documented_egress_example_is_valid() {
    let fleet =
        fleet::parse_fleet(&example_with_egress(), "fleet.toml").unwrap_or_else(|e| panic!("{e}"));
    let cluster = fleet.cluster("a1b2c3d4").unwrap();
    assert_eq!(cluster.egress_sources.len(), 3);
    let routes: Vec<EgressRoute> = cluster.egress_sources.iter().map(|s| s.route()).collect();
    assert!(
        matches!(
            routes[0],
            EgressRoute::Socks5 {
                proxy: "10.0.5.10:1080",
                auth: Some(("unmta", "proxy-password"))
            }
        ),
        "{routes:?}"
    );
    assert!(matches!(
        routes[1],
        EgressRoute::HaProxy {
            proxy: "10.0.5.11:5000",
            ..
        }
    ));
    assert!(matches!(routes[2], EgressRoute::Direct { .. }));
    assert_eq!(cluster.egress_sources[0].rate_limit.to_string(), "1000/hr");
    let pool = cluster.effective_egress_pool().unwrap();
    assert_eq!(pool.name, "shared");
    assert_eq!(
        pool.entries.iter().map(|e| e.weight).collect::<Vec<_>>(),
        vec![2, 1, 0]
    );
    // SPF: the sources' addresses, not the MTAs'.
    let expected: Vec<IpAddr> = ["203.0.113.10", "203.0.113.11", "127.0.0.11"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(cluster.mail_source_addresses(), expected);
    // The password never shows in debug output.
    assert!(!format!("{cluster:?}").contains("proxy-password"));
}

#[test]
fn without_sources_mail_leaves_from_the_mtas_directly() {
    let fleet = fleet::parse_fleet(&example(), "fleet.toml").unwrap();
    let cluster = fleet.cluster("a1b2c3d4").unwrap();
    assert!(cluster.egress_sources.is_empty());
    assert!(cluster.effective_egress_pool().is_none());
    let addresses: Vec<String> = cluster
        .mail_source_addresses()
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(addresses, ["127.0.0.11", "::1", "127.0.0.12", "127.0.0.13"]);
}

#[test]
fn a_pool_defaults_to_every_source_with_weight_one() {
    let text = example_with_egress().replace("  [clusters.egress_pool]\n", "  [clusters.unused]\n");
    // The pool's lines are now an unknown table: cut them off.
    let cut = text.find("  [clusters.unused]").unwrap();
    let end = text[cut..].find("\n\n").unwrap() + cut;
    let text = format!("{}{}", &text[..cut], &text[end..]);
    let fleet = fleet::parse_fleet(&text, "fleet.toml").unwrap_or_else(|e| panic!("{e}"));
    let pool = fleet.clusters[0].effective_egress_pool().unwrap();
    assert_eq!(pool.name, "default");
    assert_eq!(pool.entries.len(), 3);
    assert!(pool.entries.iter().all(|e| e.weight == 1));
}

/// Each case: a change to the enabled example, the key and the words its
/// problem must name; the problem's line is the first line of the change.
#[test]
fn every_egress_rule_names_its_line_and_key() {
    let good = example_with_egress();
    let long_user = format!("username = \"{}\"", "u".repeat(256));
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        (
            "name = \"haproxy-b\"",
            "name = \"proxy-a\"",
            "clusters[0].egress_sources[1].name",
            "duplicate source name `proxy-a`",
        ),
        (
            "name = \"local-c\"",
            "name = \"local c\"",
            "clusters[0].egress_sources[2].name",
            "must be 1 to 63 letters",
        ),
        (
            "socks5 = \"10.0.5.10:1080\"",
            "socks5 = \"10.0.5.10\"",
            "clusters[0].egress_sources[0].socks5",
            "should be host:port",
        ),
        (
            "ha_proxy = \"10.0.5.11:5000\"",
            "ha_proxy = \"10.0.5.11:0\"",
            "clusters[0].egress_sources[1].ha_proxy",
            "is not a port",
        ),
        (
            "ha_proxy = \"10.0.5.11:5000\"",
            "ha_proxy = \"10.0.5.11:5000\"\n  socks5 = \"10.0.5.10:1080\"",
            "clusters[0].egress_sources[1].ha_proxy",
            "not both",
        ),
        (
            "password = \"proxy-password\"",
            "passwort = \"proxy-password\"",
            "clusters[0].egress_sources[0].passwort",
            "unknown field `passwort`",
        ),
        (
            "source_address = \"127.0.0.11\"",
            "username = \"u\"\n  source_address = \"127.0.0.11\"",
            "clusters[0].egress_sources[2].username",
            "this source has no `socks5`",
        ),
        (
            "username = \"unmta\"",
            &long_user,
            "clusters[0].egress_sources[0].username",
            "1 to 255 bytes",
        ),
        (
            "source_address = \"203.0.113.11\"",
            "source_address = \"0.0.0.0\"",
            "clusters[0].egress_sources[1].source_address",
            "is not an address mail can leave from",
        ),
        (
            "source_address = \"203.0.113.11\"",
            "source_address = \"mail.example\"",
            "clusters[0].egress_sources[1].source_address",
            "invalid IP address",
        ),
        (
            "ehlo_name = \"mail-b.yourdomain.com\"",
            "ehlo_name = \"mail b\"",
            "clusters[0].egress_sources[1].ehlo_name",
            "is not a valid DNS name",
        ),
        (
            "rate_limit = \"1000/hr\"",
            "rate_limit = \"1000/fortnight\"",
            "clusters[0].egress_sources[0].rate_limit",
            "unknown period",
        ),
        (
            "{ name = \"haproxy-b\" }",
            "{ name = \"haproxy-z\" }",
            "clusters[0].egress_pool.entries[1].name",
            "no egress source named `haproxy-z`",
        ),
        (
            "{ name = \"haproxy-b\" }",
            "{ name = \"proxy-a\" }",
            "clusters[0].egress_pool.entries[1].name",
            "duplicate pool entry `proxy-a`",
        ),
        (
            "{ name = \"haproxy-b\" }",
            "{ name = \"haproxy-b\", weight = 101 }",
            "clusters[0].egress_pool.entries[1].weight",
            "between 0 and 100",
        ),
        (
            "{ name = \"haproxy-b\" }",
            "{ name = \"haproxy-b\", wieght = 1 }",
            "clusters[0].egress_pool.entries[1].wieght",
            "unknown field `wieght`",
        ),
        (
            "name = \"local-c\"",
            "name = \"local-c\"\n  proxy = \"x:1\"",
            "clusters[0].egress_sources[2].proxy",
            "unknown field `proxy`",
        ),
    ];
    for (from, to, key, words) in cases {
        let at = good
            .find(from)
            .unwrap_or_else(|| panic!("{from} not in the example"));
        let text = good.replacen(from, to, 1);
        let err = fleet::parse_fleet(&text, "fleet.toml").unwrap_err();
        let problem = err
            .problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem at {key} for {to:?}:\n{err}"));
        assert!(
            problem.message.contains(words),
            "{key}: {}",
            problem.message
        );
        // The changed key is on the line of the change, or the one after
        // when a line was inserted before it.
        let first_line = good[..at].matches('\n').count() + 1;
        let last_line = first_line + to.matches('\n').count();
        let line = problem
            .line
            .unwrap_or_else(|| panic!("{key} has no line: {err}"));
        assert!(
            (first_line..=last_line).contains(&line),
            "{key}: line {line}, the change is on {first_line}..={last_line}"
        );
    }

    // A username without a password: the password is missing, named at
    // the source.
    let text: String = good
        .lines()
        .filter(|line| !line.starts_with("  password = \"proxy-password\""))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_ne!(text, good, "the example's SOCKS5 password line is gone");
    assert_refused(
        &text,
        "clusters[0].egress_sources[0].password: a SOCKS5 username needs a password",
    );
}

#[test]
fn weights_of_zero_only_or_a_pool_without_sources_are_refused() {
    let good = example_with_egress();
    let all_zero = good
        .replace(
            "{ name = \"proxy-a\", weight = 2 }",
            "{ name = \"proxy-a\", weight = 0 }",
        )
        .replace(
            "{ name = \"haproxy-b\" }",
            "{ name = \"haproxy-b\", weight = 0 }",
        );
    assert_refused(
        &all_zero,
        "clusters[0].egress_pool.entries: the pool needs at least one entry with a weight above 0",
    );

    // The pool alone, its sources removed.
    let start = good.find("  [[clusters.egress_sources]]").unwrap();
    let pool = good.find("  [clusters.egress_pool]").unwrap();
    let text = format!("{}{}", &good[..start], &good[pool..]);
    assert_refused(
        &text,
        "has an egress_pool but no [[clusters.egress_sources]]",
    );
}

/// `text` does not load, and the error names `expected`.
fn assert_refused(text: &str, expected: &str) {
    let err = fleet::parse_fleet(text, "fleet.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
}
