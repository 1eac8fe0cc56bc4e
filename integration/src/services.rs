//! The two helpers of a local cluster, each its own process: the sink MX
//! that stores what the MTAs deliver, and the static DNS that sends the
//! recipient domains' MX lookups to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use fleet::testkit::dns::{Record, StaticDns};
use fleet::testkit::sink::{Behaviour, Sink, SinkConfig};
use tokio::signal::unix::{signal, SignalKind};

use crate::plan::SINK_HOST;

/// Resolves on SIGTERM or SIGINT.
async fn terminated() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

pub async fn sink(listen: SocketAddr, maildir: PathBuf) -> anyhow::Result<()> {
    // STARTTLS as a real MX offers it; the MTAs' opportunistic TLS does not
    // verify it (as MTAs do without MTA-STS or DANE), so a throwaway CA will do.
    let ca = fleet::testkit::pki::LocalCa::new("local-cluster sink CA")?;
    let issued = ca.issue(&[SINK_HOST])?;
    let sink = Sink::start(SinkConfig {
        listen,
        maildir: Some(maildir.clone()),
        behaviour: Behaviour::Accept,
        tls: Some((issued.cert_pem, issued.key_pem)),
    })
    .await?;
    println!(
        "sink: listening on {}, storing mail in {}",
        sink.addr(),
        maildir.display()
    );
    let stop = terminated();
    tokio::pin!(stop);
    let mut seen = 0;
    loop {
        tokio::select! {
            result = &mut stop => {
                result?;
                println!("sink: stopping");
                return Ok(());
            }
            arrived = sink.wait_for(seen + 1, Duration::from_secs(3600)) => {
                let Ok(messages) = arrived else { continue };
                for message in &messages[seen..] {
                    println!(
                        "sink: from <{}> to {:?}{} -> {}",
                        message.mail_from,
                        message.rcpt_to,
                        if message.tls { " over TLS" } else { "" },
                        message.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default()
                    );
                }
                seen = messages.len();
            }
        }
    }
}

fn pair<'a>(flag: &str, text: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    text.split_once('=')
        .with_context(|| format!("--{flag} `{text}`: expected NAME=VALUE"))
}

pub async fn dns(
    listen: SocketAddr,
    mx: Vec<String>,
    a: Vec<String>,
    txt: Vec<String>,
) -> anyhow::Result<()> {
    let mut records = Vec::new();
    for entry in &mx {
        let (domain, host) = pair("mx", entry)?;
        records.push(Record::mx(domain, 10, host));
    }
    for entry in &a {
        let (host, address) = pair("a", entry)?;
        let address = address
            .parse()
            .with_context(|| format!("--a `{entry}`: `{address}` is not an IPv4 address"))?;
        records.push(Record::a(host, address));
    }
    for entry in &txt {
        let (name, text) = pair("txt", entry)?;
        records.push(Record::txt(name, text));
    }
    let dns = StaticDns::start(listen, records).await?;
    println!(
        "dns: answering on {} (UDP and TCP): MX {mx:?}, A {a:?}",
        dns.addr()
    );
    terminated().await?;
    println!("dns: stopping");
    dns.stop().await
}
