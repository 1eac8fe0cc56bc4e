//! The fleet on several hosts (network namespaces, documentation prefixes,
//! the real ports): 2 lb-dns, 2 healthd (HTTPS feeds with follower
//! tokens), 3 MTAs, the recipients' MX and DNS "on the internet", and a
//! client host. Each scenario asserts what the client sees and prints its
//! figures. Needs root and `ip`; skipped, saying so, without them.

mod hosts_common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use fleet::testkit::process::output_of;
use hosts_common::{healthd_state, wait_healthd_state, Load, Setup};
use integration::hosts::impair;
use integration::hosts::inside;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_resolves_through_either_lb_dns_and_sends_over_smtp_and_http() {
    let Some(setup) = Setup::start("resolve_and_send").await else {
        return;
    };
    let fleet = &setup.fleet;
    let hostname = fleet.secrets.hostname();
    let ca = fleet.files.ca().display().to_string();
    let v4: BTreeSet<String> = (fleet.topology.mtas().iter())
        .map(|m| m.ipv4.to_string())
        .collect();
    let v6: BTreeSet<String> = (fleet.topology.mtas().iter())
        .map(|m| m.ipv6.to_string())
        .collect();
    let mut first = Vec::new();
    for lb in fleet.topology.lb_dns() {
        let server = format!("@{}", lb.ipv4);
        let dig = |qtype: &str| {
            let out = setup
                .on_client("dig", &[&server, &hostname, qtype, "+short", "+tries=3"])
                .unwrap_or_else(|e| setup.fail(e));
            out.lines().map(str::to_string).collect::<Vec<_>>()
        };
        let a = dig("A");
        assert_eq!(
            a.iter().cloned().collect::<BTreeSet<_>>(),
            v4,
            "A from {}",
            lb.name
        );
        let aaaa = dig("AAAA");
        assert_eq!(
            aaaa.into_iter().collect::<BTreeSet<_>>(),
            v6,
            "AAAA from {}",
            lb.name
        );
        println!("dig @{} {hostname} A: {a:?}", lb.ipv4);
        first.push(a[0].clone());
    }
    // swaks through lb-dns-2's first answer, curl through lb-dns-1's.
    let tag_smtp = "hosts-tour-smtp";
    setup
        .on_client(
            "swaks",
            &[
                "--server",
                &first[1],
                "--port",
                "587",
                "-tls",
                "--tls-verify",
                "--tls-ca-path",
                &ca,
                "--tls-sni",
                &hostname,
                "--auth",
                "PLAIN",
                "--auth-user",
                &fleet.secrets.username,
                "--auth-password",
                &fleet.secrets.password,
                "--from",
                "hello@yourdomain.test",
                "--to",
                "someone@example.com",
                "--header",
                &format!("Subject: {tag_smtp}"),
            ],
        )
        .unwrap_or_else(|e| setup.fail(e));
    let tag_http = "hosts-tour-http";
    let body = format!(
        "{{\"envelope_sender\":\"hello@yourdomain.test\",\"recipients\":[\"someone@example.net\"],\
         \"content\":{{\"from\":\"hello@yourdomain.test\",\"subject\":\"{tag_http}\",\
         \"text_body\":\"over HTTP\"}}}}"
    );
    let answer = setup
        .on_client(
            "curl",
            &[
                "-sS",
                "--fail",
                "--cacert",
                &ca,
                "--resolve",
                &format!("{hostname}:443:{}", first[0]),
                "-u",
                &format!("{}:{}", fleet.secrets.username, fleet.secrets.password),
                "-H",
                "Content-Type: application/json",
                "-d",
                &body,
                &format!("https://{hostname}/api/inject/v1"),
            ],
        )
        .unwrap_or_else(|e| setup.fail(e));
    assert!(answer.contains("\"success_count\":1"), "{answer}");
    // And once over IPv6, SMTP port 2587.
    let client = setup.client();
    let v6_address: IpAddr = fleet.host("mta-3").ipv6.into();
    let tag_v6 = "hosts-tour-smtp-v6".to_string();
    let sent_tag = tag_v6.clone();
    inside::run_in(&setup.client_ns(), move || async move {
        client.send_smtp(v6_address, 2587, &sent_tag).await
    })
    .await
    .unwrap_or_else(|e| setup.fail(e));
    let tags = [tag_smtp.to_string(), tag_http.to_string(), tag_v6];
    let counts = setup
        .wait_delivered("hosts-tour", &tags, Duration::from_secs(60))
        .await;
    println!("delivered at the sink (198.51.100.25:25): {counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    // The sink saw the proxies' addresses, never an MTA's; the events
    // name the sources.
    let proxies: BTreeSet<IpAddr> = (fleet.topology.proxies().iter())
        .map(|h| IpAddr::V4(h.ipv4))
        .collect();
    for arrival in setup.arrivals("hosts-tour") {
        assert!(
            proxies.contains(&arrival.peer),
            "{arrival:?} not from a proxy"
        );
    }
    // The event log is written just after the MX's 250: poll for it.
    let named = || {
        let sources = setup.delivery_sources();
        let named: usize = (fleet.topology.proxies().iter())
            .map(|h| sources.get(&h.name).copied().unwrap_or(0))
            .sum();
        (named, sources)
    };
    let logged = fleet::testkit::process::eventually(
        Duration::from_secs(20),
        "3 events name a source",
        || {
            let done = named().0 == 3;
            async move { done }
        },
    )
    .await;
    println!("delivery events per egress source: {:?}", named().1);
    logged.unwrap_or_else(|e| setup.fail(e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partitioned_healthd_keeps_an_mta_answered_both_remove_it() {
    let Some(setup) = Setup::start("partition").await else {
        return;
    };
    let fleet = &setup.fleet;
    let mta1 = fleet.host("mta-1").clone();
    let all = fleet.addresses_of(&["mta-1", "mta-2", "mta-3"]);
    let rest = fleet.addresses_of(&["mta-2", "mta-3"]);
    for to in [IpAddr::V4(mta1.ipv4), IpAddr::V6(mta1.ipv6)] {
        fleet.network.blackhole("healthd-1", to).unwrap();
    }
    let cut = Instant::now();
    wait_healthd_state(&setup, "healthd-1", "mta-1", "down").await;
    println!(
        "healthd-1 sees mta-1 down {:.1?} after the partition",
        cut.elapsed()
    );
    assert_eq!(
        healthd_state(&setup, "healthd-2", "mta-1").await.as_deref(),
        Some("up")
    );
    // For a few seconds, both lb-dns keep answering mta-1.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        for lb in ["lb-dns-1", "lb-dns-2"] {
            assert_eq!(
                fleet.answers(lb).await.as_ref(),
                Some(&all),
                "{lb} dropped mta-1"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("with one healthd partitioned from mta-1, both lb-dns still answer it");
    for to in [IpAddr::V4(mta1.ipv4), IpAddr::V6(mta1.ipv6)] {
        fleet.network.blackhole("healthd-2", to).unwrap();
    }
    let took = fleet
        .wait_answers(&rest, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| setup.fail(e));
    println!("with both partitioned, mta-1 left DNS after {took:.1?}");
    for hd in ["healthd-1", "healthd-2"] {
        for to in [IpAddr::V4(mta1.ipv4), IpAddr::V6(mta1.ipv6)] {
            fleet.network.heal(hd, to).unwrap();
        }
    }
    let back = fleet
        .wait_answers(&all, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| setup.fail(e));
    println!("healed: mta-1 answered again after {back:.1?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_slow_lb_dns_links_still_resolve_correctly() {
    let Some(setup) = Setup::start("lossy_links").await else {
        return;
    };
    let fleet = &setup.fleet;
    let client = fleet.topology.client();
    let lbs: Vec<(&str, std::net::Ipv4Addr)> = (fleet.topology.lb_dns().iter())
        .map(|h| (h.name.as_str(), h.ipv4))
        .collect();
    let impairment = impair::impair(
        &fleet.network,
        (&client.name, client.ipv4),
        &lbs,
        0.20,
        Duration::from_millis(100),
    )
    .unwrap_or_else(|e| setup.fail(e));
    println!("20% loss and 100 ms: {}", impairment.describe());
    let hostname = fleet.secrets.hostname();
    let expected: BTreeSet<String> = (fleet.topology.mtas().iter())
        .map(|m| m.ipv4.to_string())
        .collect();
    let (mut ok, mut retries, mut times) = (0, 0, Vec::new());
    let rounds = 15;
    for round in 0..rounds {
        for (_, lb) in &lbs {
            let server = format!("@{lb}");
            let start = Instant::now();
            let out = setup.on_client(
                "dig",
                &[&server, &hostname, "A", "+short", "+tries=8", "+timeout=1"],
            );
            times.push(start.elapsed());
            let text = out.as_deref().unwrap_or_default();
            // dig reports each retry as a `;;` comment line.
            retries += text.lines().filter(|l| l.starts_with(";;")).count();
            let answer: BTreeSet<String> = (text.lines())
                .filter(|l| !l.starts_with(";;"))
                .map(str::to_string)
                .collect();
            assert_eq!(answer, expected, "round {round} via {lb}: {out:?}");
            ok += 1;
        }
    }
    times.sort();
    let slow = times
        .iter()
        .filter(|t| **t >= Duration::from_millis(100))
        .count();
    println!(
        "{ok} of {} resolutions correct through the lossy links ({retries} retries after a lost packet); \
         median {:.0?}, max {:.0?}; {slow} took ≥ 100 ms",
        rounds * lbs.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(
        slow > 0,
        "no resolution was slowed: the impairment is not in place"
    );
    drop(impairment);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mta_host_killed_under_load_delivers_every_acknowledged_message() {
    let Some(setup) = Setup::start("kill_under_load").await else {
        return;
    };
    let fleet = &setup.fleet;
    let load = Load::start(&setup, "hosts-kill", 3, 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = fleet.kill_host("mta-2");
    let at = Instant::now();
    println!("kill -9 of mta-2's {killed} processes under load");
    let rest = fleet.addresses_of(&["mta-1", "mta-3"]);
    let out_of_dns = fleet
        .wait_answers(&rest, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| setup.fail(e));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.finish();
    let last_error = report.errors.iter().map(|(t, _)| *t).max();
    let failover = last_error.map(|t| t.saturating_duration_since(at));
    fleet.start_host("mta-2").unwrap();
    let counts = setup
        .wait_delivered("hosts-kill", &report.acked, Duration::from_secs(120))
        .await;
    let delivered: usize = counts.values().sum();
    let twice = counts.values().filter(|&&n| n > 1).count();
    println!(
        "acknowledged {} (per MTA {:?}), failed attempts {}, mta-2 out of DNS {out_of_dns:.1?} after the kill, \
         client errors until {failover:.1?} after it; delivered {delivered} (every acknowledged one; {twice} twice)",
        report.acked.len(),
        report.per_address,
        report.errors.len(),
    );
    if let Some((_, first)) = report.errors.first() {
        println!("first client error: {first}");
    }
    assert!(report.acked.len() >= 10, "too little load: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_costs_the_clients_nothing() {
    let Some(setup) = Setup::start("rolling_restart").await else {
        return;
    };
    let fleet = &setup.fleet;
    let all = fleet.addresses_of(&["mta-1", "mta-2", "mta-3"]);
    let load = Load::start(&setup, "hosts-roll", 3, 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut stops = Vec::new();
    for mta in ["mta-1", "mta-2", "mta-3"] {
        let (took, clean) = fleet
            .stop_host(mta, Duration::from_secs(40))
            .unwrap_or_else(|e| setup.fail(e));
        assert!(clean, "{mta} did not exit 0 after SIGTERM");
        fleet.start_host(mta).unwrap();
        let back = fleet
            .wait_answers(&all, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| setup.fail(e));
        println!("{mta}: SIGTERM to exit {took:.1?}, answered again {back:.1?} after its start");
        stops.push(took);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish();
    let counts = setup
        .wait_delivered("hosts-roll", &report.acked, Duration::from_secs(120))
        .await;
    println!(
        "rolling restart under load: acknowledged {} (per MTA {:?}), client errors {}, delivered {}",
        report.acked.len(),
        report.per_address,
        report.errors.len(),
        counts.values().sum::<usize>()
    );
    for (_, error) in report.errors.iter().take(5) {
        println!("client error: {error}");
    }
    assert!(report.errors.is_empty(), "the clients saw errors");
    assert!(report.acked.len() >= 10, "too little load");
}

/// A SOCKS5 proxy host dies (`kill -9` of Dante in its namespace) under
/// load: every acknowledged message is delivered, over the other proxies
/// from then on. A message whose 250 died with the proxy may arrive twice
/// (RFC 1047): at least once is what SMTP guarantees, and a duplicate's
/// first copy must have gone over the dead proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_host_dies_under_load_and_mail_goes_on_over_the_others() {
    let Some(setup) = Setup::start("proxy_dies").await else {
        return;
    };
    let fleet = &setup.fleet;
    let load = Load::start(&setup, "hosts-proxy", 2, 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let dead = IpAddr::V4(fleet.host("socks-1").ipv4);
    let killed = fleet.kill_host("socks-1");
    let killed_at = fleet::clock::unix_millis();
    println!("kill -9 of socks-1's {killed} processes under load");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let report = load.finish();
    let counts = setup
        .wait_delivered("hosts-proxy", &report.acked, Duration::from_secs(120))
        .await;
    let arrivals = setup.arrivals("hosts-proxy");
    let mut first_peer = std::collections::BTreeMap::new();
    for arrival in &arrivals {
        first_peer
            .entry(arrival.subject.clone())
            .or_insert(arrival.peer);
    }
    let twice: Vec<&String> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(t, _)| t)
        .collect();
    for tag in &twice {
        assert_eq!(
            first_peer[*tag], dead,
            "{tag}: a duplicate not caused by the dead proxy"
        );
    }
    // A second after the kill, nothing comes over the dead proxy and both
    // others carry mail.
    let after: Vec<&hosts_common::Arrival> = arrivals
        .iter()
        .filter(|a| a.millis > killed_at + 1000)
        .collect();
    let mut per_proxy = std::collections::BTreeMap::<IpAddr, (usize, usize)>::new();
    for arrival in &arrivals {
        let entry = per_proxy.entry(arrival.peer).or_default();
        if arrival.millis > killed_at + 1000 {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }
    println!(
        "acknowledged {}, delivered {} ({} twice, RFC 1047), client errors {}; \
         per proxy at the sink (before, after the kill): {per_proxy:?}",
        report.acked.len(),
        arrivals.len(),
        twice.len(),
        report.errors.len(),
    );
    assert!(report.acked.len() >= 10, "too little load: {report:?}");
    assert!(
        after.iter().all(|a| a.peer != dead),
        "mail over the dead proxy after it died"
    );
    for name in ["socks-2", "haproxy-1"] {
        let ip = IpAddr::V4(fleet.host(name).ipv4);
        assert!(
            after.iter().any(|a| a.peer == ip),
            "nothing over {name} after the kill: {per_proxy:?}"
        );
    }
}

#[test]
fn local_cluster_hosts_prints_connection_details_that_work_when_pasted() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let _serial = hosts_common::serial();
    fleet::in_own_namespace!();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(hosts_common::BIN)
        .args(["--hosts", "--state-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut text = String::new();
    while !text.contains("Ctrl-C stops everything") {
        match printed.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => text.push_str(&(line + "\n")),
            Err(e) => {
                let _ = child.kill();
                panic!("local-cluster --hosts printed no details ({e}):\n{text}");
            }
        }
    }
    println!("{text}");
    assert!(text.contains("Connection Details"), "{text}");
    // The printed commands, pasted into a shell: dig, swaks, curl.
    let paragraphs: Vec<&str> = text.split("\n\n").collect();
    let command = |starts: &str| -> String {
        (paragraphs.iter())
            .find(|p| p.starts_with("ip netns exec") && p.contains(starts))
            .unwrap_or_else(|| panic!("no {starts} command in:\n{text}"))
            .to_string()
    };
    for tool in [" dig ", " swaks ", " curl "] {
        let stdout = output_of(Command::new("sh").arg("-c").arg(command(tool)));
        if tool == " dig " {
            assert_eq!(stdout.lines().count(), 3, "{stdout}");
        }
        if tool == " curl " {
            assert!(stdout.contains("\"success_count\":1"), "{stdout}");
        }
    }
    // SIGTERM stops everything and removes the namespaces.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = integration::hosts::netns::run("ip", &["netns", "list"]).unwrap();
    let prefix = format!("{}{pid}n", integration::hosts::netns::NAME_PREFIX);
    assert!(!left.contains(&prefix), "namespaces left behind:\n{left}");
}
