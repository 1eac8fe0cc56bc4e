//! The first thing a newcomer runs: the cluster resolves through lb-dns,
//! takes mail over SMTP and HTTP on every MTA, delivers it to the sink with
//! a Received: trail (and DKIM), stops cleanly and comes back as it was.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{listening, Cluster};
use integration::info::ProcessRole;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tour_resolve_send_every_way_deliver_stop_and_reuse() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1, &[])?;
    let info = cluster.info.clone();

    // cluster.json names every process and endpoint.
    assert_eq!(info.mtas().count(), 3);
    for role in [
        ProcessRole::LbDns,
        ProcessRole::Healthd,
        ProcessRole::Sink,
        ProcessRole::Dns,
    ] {
        assert!(
            info.processes.iter().any(|p| p.role == role),
            "no {role:?} in cluster.json"
        );
    }
    assert!(
        info.cluster.hostname.starts_with("c-") && info.cluster.hostname.ends_with(".unmta.net")
    );
    assert_eq!(info.cluster.smtp_ports, vec![10587, 10025, 12587]);
    assert_eq!(info.cluster.rate_limit, "unlimited");
    let output = cluster.output();
    fleet::testkit::assert_contains_all(
        &output,
        &[
            "Connection Details",
            "dig @127.5.1.1 -p 5300",
            "swaks --server",
            "curl --cacert",
        ],
    );

    // The hostname resolves through lb-dns to the three MTAs.
    let mut expected = cluster.mta_addresses();
    expected.sort();
    assert_eq!(cluster.resolve().await?, expected);

    // SMTP (STARTTLS + AUTH, verified) and HTTP injection to each MTA.
    let mut tags = Vec::new();
    for address in cluster.mta_addresses() {
        let tag = format!("tour smtp {address}");
        cluster.send_smtp(address, &tag).await?;
        tags.push(tag);
        let tag = format!("tour http {address}");
        let answer = cluster.inject(address, &tag).await?;
        assert_eq!(answer["success_count"], 1, "{answer}");
        tags.push(tag);
    }
    cluster
        .wait_delivered(&tags, Duration::from_secs(60))
        .await?;
    let dkim = std::fs::read_to_string(cluster.state_dir().join("mta-1.toml"))?
        .contains("[[delivery.dkim]]");
    for tag in &tags {
        let message = cluster.sink_message(tag).expect("delivered");
        assert!(
            message.contains("\r\nReceived: from "),
            "no Received: trail in\n{message}"
        );
        assert!(
            message.contains(&info.cluster.hostname),
            "the trail does not name the cluster:\n{message}"
        );
        if dkim {
            assert!(
                message.contains("DKIM-Signature:"),
                "not DKIM-signed:\n{message}"
            );
            assert!(
                message.contains(&format!("d={}", info.sender_domain)),
                "{message}"
            );
        }
    }

    // The daemons' log files are plain text: no terminal colour codes.
    let logs = cluster.state_dir().join("logs");
    let mut read = 0;
    for entry in std::fs::read_dir(&logs)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        assert!(
            !text.contains('\x1b'),
            "{} has ANSI escape codes",
            path.display()
        );
        read += usize::from(!text.is_empty());
    }
    assert!(read >= 3, "too few non-empty logs in {}", logs.display());

    // Ctrl-C / SIGTERM stops everything: nothing is left listening.
    assert!(
        cluster.stop()?,
        "local-cluster did not exit cleanly:\n{}",
        cluster.output()
    );
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    for address in cluster.mta_addresses() {
        for port in info
            .cluster
            .smtp_ports
            .iter()
            .chain([&info.cluster.https_port])
        {
            endpoints.push(SocketAddr::from((address, *port)));
        }
    }
    endpoints.push(SocketAddr::from((info.dns.address, info.dns.port)));
    endpoints.push(SocketAddr::from((info.sink.address, info.sink.port)));
    endpoints.push(info.healthd.url.trim_start_matches("http://").parse()?);
    for endpoint in endpoints {
        assert!(
            !listening(endpoint),
            "{endpoint} still listening after stop"
        );
    }

    // The same state dir again: same cluster, CA and credential.
    let ca = std::fs::read(&info.ca_file)?;
    let dir = cluster.take_dir();
    let again = Cluster::start_in(dir, 1, &[])?;
    assert_eq!(again.info.cluster.id, info.cluster.id);
    assert_eq!(again.info.credential, info.credential);
    assert_eq!(std::fs::read(&again.info.ca_file)?, ca);
    let tag = "tour after restart".to_string();
    again.send_smtp(again.mta_addresses()[0], &tag).await?;
    again
        .wait_delivered(&[tag], Duration::from_secs(60))
        .await?;
    Ok(())
}

/// The dig, swaks and curl lines local-cluster prints work when pasted into
/// a shell (the tools are what CI installs: dnsutils, swaks, curl).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_commands_work_when_pasted() -> anyhow::Result<()> {
    for tool in ["dig", "swaks", "curl", "bash"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .status
            .success();
        anyhow::ensure!(
            found,
            "`{tool}` is not installed (apt-get install dnsutils swaks curl)"
        );
    }
    let cluster = Cluster::start(7, &[])?;
    let output = cluster.output();
    let line = |prefix: &str| -> anyhow::Result<String> {
        output
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no `{prefix}` line printed:\n{output}"))
    };
    let run = |command: &str| -> anyhow::Result<String> {
        let out = std::process::Command::new("bash")
            .args(["-c", command])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(out.status.success(), "`{command}` failed:\n{text}");
        Ok(text)
    };

    let dig = run(&line("dig @")?)?;
    let mut answered: Vec<&str> = dig.split_whitespace().collect();
    answered.sort();
    let mut expected: Vec<String> = cluster
        .mta_addresses()
        .iter()
        .map(|a| a.to_string())
        .collect();
    expected.sort();
    assert_eq!(answered, expected);

    let swaks = run(&line("swaks ")?)?;
    assert!(swaks.contains("<~  250 2.0.0"), "{swaks}");
    let curl = run(&line("curl --cacert")?)?;
    assert!(curl.contains("\"success_count\":1"), "{curl}");

    // The dashboard's "Send a test message" examples work pasted too, with
    // the credential's password in place of `your-password`.
    let info = &cluster.info;
    let page = reqwest::Client::new()
        .get(format!("{}/clusters/{}", info.healthd.url, info.cluster.id))
        .bearer_auth(&info.healthd.api_token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    for (id, answered) in [
        ("swaks-example", "<~  250 2.0.0"),
        ("curl-example", "\"success_count\":1"),
    ] {
        let example = dashboard_example(&page, id)?;
        let out = run(&example.replace("your-password", &info.credential.password))?;
        assert!(out.contains(answered), "{id}: {out}");
    }

    let subjects = [
        "hello from swaks".to_string(),
        "hello from curl".to_string(),
        "Test from swaks".to_string(),
        "Test from curl".to_string(),
    ];
    cluster
        .wait_delivered(&subjects, Duration::from_secs(60))
        .await?;
    Ok(())
}

/// The text of the dashboard's `<code id="{id}">`, unescaped.
fn dashboard_example(page: &str, id: &str) -> anyhow::Result<String> {
    let start = format!("id=\"{id}\">");
    let from = page
        .find(&start)
        .ok_or_else(|| anyhow::anyhow!("no #{id} on the dashboard page:\n{page}"))?
        + start.len();
    let end = page[from..]
        .find("</code>")
        .ok_or_else(|| anyhow::anyhow!("#{id} is not closed"))?;
    Ok(page[from..from + end]
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&"))
}
