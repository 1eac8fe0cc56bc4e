//! The fleet file and the example configs, through the library and the
//! `fleet` CLI.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use fleet::testkit::example_configs::repo_configs;

/// Three mistakes: a bad rate limit (line 10), a misspelt key (line 15), a
/// duplicate MTA name (line 18, first at 13).
fn bad_fleet() -> String {
    fleet::testkit::FleetToml::new("192.0.2.53")
        .cluster("a1b2c3d4", &["yourdomain.com"])
        .set("rate_limit = \"500/fortnight\"")
        .mta("mta-1", "203.0.113.11")
        .set("  wieght = 2")
        .mta("mta-1", "203.0.113.12")
        .to_string()
}

/// Each case is the example with one change and fails naming it (and the
/// file with its line).
fn assert_each_fails(example: &str, cases: &[(String, &str)]) {
    for (text, expected) in cases {
        assert_ne!(
            text, example,
            "the case for {expected:?} did not change the file"
        );
        let err = fleet::parse_fleet(text, "fleet.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
        assert!(err.contains("fleet.toml:"), "{err}");
    }
}

fn fleet_cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleet"))
}

#[test]
fn every_example_config_loads() {
    let dir = repo_configs();
    let fleet = fleet::load_fleet(&dir.join("fleet.toml")).expect("configs/fleet.toml is valid");
    assert_eq!(fleet.clusters.len(), 2);
    let limited = fleet.cluster("a1b2c3d4").unwrap();
    assert_eq!(limited.mtas.len(), 3);
    assert_eq!(limited.rate_limit.to_string(), "500/hr");
    assert!(limited.rate_limit.quota().is_some());

    // Each daemon's config in configs/ must parse as TOML and name the fleet
    // file (the daemons' own tests load them through their `--check`; the
    // bounce rule table is the mta's, checked by its own tests).
    for name in ["mta.toml", "healthd.toml", "lb-dns.toml"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            doc["fleet_file"].as_str(),
            Some("fleet.toml"),
            "{}",
            path.display()
        );
    }
}

#[test]
fn one_run_names_every_problem_with_its_line() {
    let err = fleet::parse_fleet(&bad_fleet(), "bad.toml").unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 3, "{text}");
    assert!(
        text.contains("bad.toml:10: clusters[0].rate_limit: invalid rate limit `500/fortnight`"),
        "{text}"
    );
    assert!(
        text.contains("bad.toml:15: clusters[0].mtas[0].wieght: unknown field `wieght`"),
        "{text}"
    );
    assert!(text.contains("bad.toml:18: clusters[0].mtas[1].name: duplicate MTA name `mta-1` (first used at line 13)"), "{text}");
}

#[test]
fn cross_field_rules_are_enforced() {
    let example = std::fs::read_to_string(repo_configs().join("fleet.toml")).unwrap();
    let cases = [
        (example.replace("ipv4 = \"127.0.0.12\"", "ipv4 = \"127.0.0.11\""), "duplicate MTA address `127.0.0.11`"),
        (example.replace("id = \"e5f6a7b8\"", "id = \"a1b2c3d4\""), "duplicate cluster id `a1b2c3d4`"),
        (example.replace("domains = [\"yourdomain.com\"]", "domains = [\"other.com\"]"), "`other.com` is not one of cluster a1b2c3d4's domains"),
        (example.replace("$argon2id$v=19$m=19456,t=2,p=1$yw4bAan1Mey1iY0TE9I9dA$fdKnZB0OonMxEd2gF3FC9/y9B4D0t/9tSPrpCSZzbkM", "hunter2"), "never plaintext"),
        (example.replace("origin = \"unmta.net\"", "origin = \"un mta..net\""), "is not a valid DNS name"),
        (example.replace("clusters = [\"a1b2c3d4\"]", "clusters = [\"ffffffff\"]"), "no cluster has id `ffffffff`"),
        (example.replace("ttl = 30 ", "ttl = 0 "), "ttl must be between 1 and 86400"),
        (example.replace("[[clusters.mtas]]\n  name = \"beta-1\"\n  ipv4 = \"127.0.0.21\"\n", ""), "cluster e5f6a7b8 has no MTA"),
    ];
    assert_each_fails(&example, &cases);
}

#[test]
fn fleet_check_exit_codes_and_output() {
    let ok = fleet_cli()
        .arg("check")
        .arg(repo_configs().join("fleet.toml"))
        .output()
        .unwrap();
    assert!(ok.status.success());
    let summary = String::from_utf8_lossy(&ok.stdout);
    assert!(summary.contains("2 clusters, 4 MTAs"), "{summary}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, bad_fleet()).unwrap();
    let out = fleet_cli().arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stderr);
    for line in [
        ":10: clusters[0].rate_limit",
        ":15: clusters[0].mtas[0].wieght",
        ":18: clusters[0].mtas[1].name",
    ] {
        assert!(report.contains(line), "missing {line:?} in:\n{report}");
    }

    let missing = fleet_cli()
        .arg("check")
        .arg(Path::new("/nonexistent/fleet.toml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot be read"));
}

#[test]
fn hash_password_prints_a_verifiable_argon2id_hash() {
    let mut child = fleet_cli()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap();
    let phc = phc.trim();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    assert!(fleet::password::verify_password(phc, "correct horse"));
    assert!(!fleet::password::verify_password(phc, "correct horse\n"));
}

#[test]
fn webhooks_and_bounce_domains_are_checked_with_their_place() {
    let example = std::fs::read_to_string(repo_configs().join("fleet.toml")).unwrap();
    let hook = |url: &str, extra: &str| {
        example.replace(
            "# A single-MTA cluster without a rate limit.",
            &format!(
                "  [[clusters.webhooks]]\n  name = \"app\"\n  url = \"{url}\"\n  \
                 secret = \"0123456789abcdef\"\n{extra}\n# A single-MTA cluster without a rate limit."
            ),
        )
    };
    let good = fleet::parse_fleet(
        &hook(
            "https://hooks.example.com/x",
            "  events = [\"Delivery\", \"OOB\"]",
        ),
        "fleet.toml",
    )
    .expect("a good webhook loads");
    let webhook = &good.clusters[0].webhooks[0];
    assert!(webhook.wants(fleet::event::EventType::Oob));
    assert!(!webhook.wants(fleet::event::EventType::Reception));
    assert_eq!(webhook.batch_size, 100);
    fleet::parse_fleet(&hook("http://127.0.0.1:8080/x", ""), "fleet.toml")
        .expect("http to loopback loads");
    let cases = [
        (hook("http://hooks.example.com/x", ""), "clusters[0].webhooks[0].url: `http://hooks.example.com/x`: webhooks use https"),
        (hook("ftp://x/y", ""), "unknown scheme `ftp`"),
        (hook("https:///nohost", ""), "needs a host"),
        (hook("https://h.example/x", "  batch_size = 0"), "batch_size must be between 1 and 10000"),
        (hook("https://h.example/x", "  events = [\"Sent\"]"), "unknown variant `Sent`"),
        (hook("https://h.example/x", "  events = []"), "an empty event list sends nothing"),
        (hook("https://h.example/x", "").replace("secret = \"0123456789abcdef\"", "secret = \"short\""), "at least 16 characters"),
        (hook("https://h.example/x", "\n  [[clusters.webhooks]]\n  name = \"app\"\n  url = \"https://h.example/y\"\n  secret = \"0123456789abcdef\""), "duplicate webhook name `app`"),
        (example.replace("# bounce_domain = \"c-a1b2c3d4.unmta.net\"", "bounce_domain = \"not a domain\""), "clusters[0].bounce_domain: `not a domain` is not a valid DNS name"),
    ];
    assert_each_fails(&example, &cases);
}
