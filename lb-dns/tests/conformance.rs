//! lb-dns as outside checkers see it: the ISC EDNS compliance set run with
//! `dig` and judged as BIND's `genreport` judges it, DNS cookies (RFC 7873,
//! RFC 9018), the DO bit (RFC 3225), and the mail records at every cluster
//! hostname (MX to itself, SPF with every MTA address) checked by `dig` and
//! by pyspf (Debian `python3-spf`).

mod common;

use std::time::Duration;

use common::*;
use fleet::feed::MtaState;
use fleet::testkit::process::eventually;
use hickory_proto::rr::RecordType;

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
}

/// The `; EDNS:` line of dig's output, if the reply had an OPT.
fn edns_line(out: &str) -> Option<&str> {
    out.lines().find(|l| l.starts_with("; EDNS:"))
}

fn flags(out: &str) -> &str {
    out.split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
}

/// One genreport check: dig arguments, and what genreport requires of the
/// reply.
struct Check {
    name: &'static str,
    args: &'static [&'static str],
    qtype: &'static str,
    status: &'static str,
    /// Some(true): an OPT version 0 must be there; Some(false): no OPT.
    opt: Option<bool>,
    /// The SOA must be in the answer.
    soa_answer: bool,
    /// Extra requirement on the whole output.
    extra: fn(&str) -> Result<(), String>,
}

fn ok(_: &str) -> Result<(), String> {
    Ok(())
}

fn require(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

fn no_option_100(out: &str) -> Result<(), String> {
    require(
        !out.contains("OPT=100"),
        "unknown option 100 must not be echoed",
    )
}

fn do_echoed(out: &str) -> Result<(), String> {
    require(
        edns_line(out).is_some_and(|l| l.contains("flags: do")),
        "the DO bit must be copied into the reply",
    )
}

fn do_and_no_option(out: &str) -> Result<(), String> {
    do_echoed(out).and(no_option_100(out))
}

fn no_mbz(out: &str) -> Result<(), String> {
    require(
        !out.contains("MBZ"),
        "undefined (must-be-zero) flags must be clear",
    )
}

fn cookie_good(out: &str) -> Result<(), String> {
    let line = out.lines().find(|l| l.starts_with("; COOKIE:"));
    require(
        line.is_some_and(|l| {
            l.contains("(good)") && l.split_whitespace().nth(2).is_some_and(|c| c.len() == 48)
        }),
        "a client cookie gets the client cookie back with a 16-byte server cookie",
    )
}

fn cookie_and_udp_512(out: &str) -> Result<(), String> {
    require(
        edns_line(out).is_some_and(|l| l.contains("udp: 512")),
        "payload 512",
    )
}

fn ad_clear(out: &str) -> Result<(), String> {
    require(!flags(out).split(' ').any(|f| f == "ad"), "AD clear")?;
    require(flags(out).split(' ').any(|f| f == "aa"), "AA set")
}

fn cd_copied(out: &str) -> Result<(), String> {
    require(flags(out).split(' ').any(|f| f == "cd"), "CD copied")
}

fn no_data(out: &str) -> Result<(), String> {
    require(
        out.contains("ANSWER: 0, AUTHORITY: 1"),
        "NODATA with the SOA",
    )
}

const CHECKS: &[Check] = &[
    Check {
        name: "dns",
        args: &["+noedns"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(false),
        soa_answer: true,
        extra: ok,
    },
    Check {
        name: "edns",
        args: &["+edns=0", "+nocookie"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(true),
        soa_answer: true,
        extra: ok,
    },
    Check {
        name: "edns1",
        args: &["+edns=1", "+noednsneg", "+nocookie"],
        qtype: "SOA",
        status: "BADVERS",
        opt: Some(true),
        soa_answer: false,
        extra: ok,
    },
    Check {
        name: "ednsopt",
        args: &["+edns=0", "+nocookie", "+ednsopt=100"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(true),
        soa_answer: true,
        extra: no_option_100,
    },
    Check {
        name: "edns1opt",
        args: &["+edns=1", "+noednsneg", "+nocookie", "+ednsopt=100"],
        qtype: "SOA",
        status: "BADVERS",
        opt: Some(true),
        soa_answer: false,
        extra: no_option_100,
    },
    Check {
        name: "do",
        args: &["+edns=0", "+nocookie", "+dnssec"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(true),
        soa_answer: true,
        extra: do_echoed,
    },
    Check {
        name: "edns1do",
        args: &[
            "+edns=1",
            "+noednsneg",
            "+nocookie",
            "+dnssec",
            "+ednsopt=100",
        ],
        qtype: "SOA",
        status: "BADVERS",
        opt: Some(true),
        soa_answer: false,
        extra: do_and_no_option,
    },
    Check {
        name: "ednsflags",
        args: &["+edns=0", "+nocookie", "+ednsflags=0x80"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(true),
        soa_answer: true,
        extra: no_mbz,
    },
    Check {
        name: "optlist",
        args: &[
            "+edns=0",
            "+nsid",
            "+subnet=0.0.0.0/0",
            "+expire",
            "+cookie",
        ],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(true),
        soa_answer: true,
        extra: cookie_good,
    },
    Check {
        name: "edns512",
        args: &["+edns=0", "+nocookie", "+dnssec", "+bufsize=512", "+ignore"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(true),
        soa_answer: true,
        extra: cookie_and_udp_512,
    },
    Check {
        name: "ednstcp",
        args: &["+edns=0", "+nocookie", "+tcp"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(true),
        soa_answer: true,
        extra: ok,
    },
    Check {
        name: "cookie",
        args: &["+edns=0", "+cookie"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(true),
        soa_answer: true,
        extra: cookie_good,
    },
    Check {
        name: "type666",
        args: &["+noedns"],
        qtype: "TYPE666",
        status: "NOERROR",
        opt: Some(false),
        soa_answer: false,
        extra: no_data,
    },
    Check {
        name: "aflag",
        args: &["+noedns", "+aaflag"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(false),
        soa_answer: true,
        extra: ok,
    },
    Check {
        name: "adflag",
        args: &["+noedns", "+adflag"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(false),
        soa_answer: true,
        extra: ad_clear,
    },
    Check {
        name: "cdflag",
        args: &["+noedns", "+cdflag"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(false),
        soa_answer: true,
        extra: cd_copied,
    },
    Check {
        name: "zflag",
        args: &["+noedns", "+zflag"],
        qtype: "SOA",
        status: "NOERROR",
        opt: Some(false),
        soa_answer: true,
        extra: no_mbz,
    },
];

fn judge(check: &Check, out: &str) -> Result<(), String> {
    require(
        status(out) == check.status,
        &format!("status {} (want {})", status(out), check.status),
    )?;
    match (check.opt, edns_line(out)) {
        (Some(true), None) => return Err("no OPT in the reply".into()),
        (Some(true), Some(l)) if !l.contains("version: 0") => {
            return Err(format!("OPT not version 0: {l}"))
        }
        (Some(false), Some(l)) => return Err(format!("an OPT without one asked: {l}")),
        _ => {}
    }
    require(flags(out).contains("qr"), "QR set")?;
    if check.soa_answer {
        require(
            out.contains("ANSWER: 1,") && out.contains("\tSOA\t"),
            "the SOA in the answer",
        )?;
    } else if check.status != "NOERROR" {
        require(out.contains("ANSWER: 0,"), "no answer with an error")?;
    }
    (check.extra)(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_isc_edns_compliance_checks_pass_as_genreport_judges_them() {
    let spec = FleetSpec::standard();
    let lb = LbDns::start("127.4.40.1", &spec, &[]).await;
    let zone = format!("{ORIGIN}.");
    let mut failures = Vec::new();
    for check in CHECKS {
        let mut args: Vec<&str> = check.args.to_vec();
        args.extend([zone.as_str(), check.qtype]);
        let out = dig(lb.dns, &args).await;
        if let Err(why) = judge(check, &out) {
            failures.push(format!("{}: {why}\n{out}", check.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    lb.stop().await;
}

/// The query `m` with an OPT carrying `cookie` (RFC 7873 option 10).
fn with_cookie(name: &str, cookie: &[u8]) -> Vec<u8> {
    let mut b = query(name, RecordType::SOA).to_vec().unwrap();
    b[11] = 1;
    b.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    b.extend_from_slice(&((4 + cookie.len()) as u16).to_be_bytes());
    b.extend_from_slice(&[0, 10]);
    b.extend_from_slice(&(cookie.len() as u16).to_be_bytes());
    b.extend_from_slice(cookie);
    b
}

/// The extended response code and the COOKIE option of a reply whose OPT
/// is its last record.
fn rcode_and_cookie(raw: &[u8]) -> (u16, Option<Vec<u8>>) {
    let message = hickory_proto::op::Message::from_vec(raw).unwrap();
    assert!(message.edns.is_some(), "an OPT in the reply");
    let low = u16::from(raw[3] & 0x0f);
    let tail = &raw[raw.len().saturating_sub(39)..];
    if tail.len() == 39 && tail[..3] == [0, 0, 41] && tail[11..15] == [0, 10, 0, 24] {
        let ext = u16::from(tail[5]);
        return ((ext << 4) | low, Some(tail[15..].to_vec()));
    }
    let opt = &raw[raw.len() - 11..];
    ((u16::from(opt[5]) << 4) | low, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_answered_and_a_forged_server_cookie_gets_badcookie() {
    let spec = FleetSpec::standard();
    let lb = LbDns::start("127.4.41.1", &spec, &[]).await;
    let zone = format!("{ORIGIN}.");
    let client = [1u8, 2, 3, 4, 5, 6, 7, 8];

    // A client cookie alone: the answer, with our server cookie.
    let raw = udp_raw(lb.dns, &with_cookie(&zone, &client)).await.unwrap();
    let (rcode, cookie) = rcode_and_cookie(&raw);
    assert_eq!(rcode, 0);
    let cookie = cookie.expect("a COOKIE option in the reply");
    assert_eq!(&cookie[..8], &client, "the client cookie echoed");
    assert_eq!(cookie[8], 1, "RFC 9018 version 1");

    // Sent back: valid, answered.
    let raw = udp_raw(lb.dns, &with_cookie(&zone, &cookie)).await.unwrap();
    assert_eq!(rcode_and_cookie(&raw).0, 0);
    assert_eq!(
        hickory_proto::op::Message::from_vec(&raw)
            .unwrap()
            .answers
            .len(),
        1
    );

    // Forged or from another client: BADCOOKIE over UDP, with a fresh one.
    let mut forged = cookie.clone();
    forged[20] ^= 0xff;
    let raw = udp_raw(lb.dns, &with_cookie(&zone, &forged)).await.unwrap();
    let (rcode, fresh) = rcode_and_cookie(&raw);
    assert_eq!(rcode, 23, "BADCOOKIE");
    assert!(hickory_proto::op::Message::from_vec(&raw)
        .unwrap()
        .answers
        .is_empty());
    assert_eq!(&fresh.unwrap()[..8], &client);
    let mut other = cookie.clone();
    other[0] ^= 1;
    let raw = udp_raw(lb.dns, &with_cookie(&zone, &other)).await.unwrap();
    assert_eq!(rcode_and_cookie(&raw).0, 23);

    // Over TCP the source is proven: answered.
    let bytes = with_cookie(&zone, &forged);
    let mut stream = tokio::net::TcpStream::connect(lb.dns).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut raw = vec![0u8; u16::from_be_bytes(len).into()];
    stream.read_exact(&mut raw).await.unwrap();
    assert_eq!(rcode_and_cookie(&raw).0, 0);

    // A malformed cookie (too short): FORMERR.
    let raw = udp_raw(lb.dns, &with_cookie(&zone, &client[..5]))
        .await
        .unwrap();
    assert_eq!(raw[3] & 0x0f, 1, "FORMERR");

    // dig sends a client cookie and says the reply's is good.
    let out = dig(lb.dns, &["+cookie", &zone, "SOA"]).await;
    assert!(out.contains("(good)"), "{out}");
    assert!(lb.queries("SOA", "BADCOOKIE").await >= 2.0);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_do_bit_is_copied_also_on_badvers() {
    let spec = FleetSpec::standard();
    let lb = LbDns::start("127.4.42.1", &spec, &[]).await;
    let name = cluster("a1b2c3d4");
    let out = dig(lb.dns, &["+dnssec", "+nocookie", &name, "A"]).await;
    assert!(edns_line(&out).unwrap().contains("flags: do"), "{out}");
    let out = dig(lb.dns, &["+nocookie", &name, "A"]).await;
    assert!(!edns_line(&out).unwrap().contains("do"), "{out}");
    let out = dig(
        lb.dns,
        &["+edns=1", "+noednsneg", "+dnssec", "+nocookie", &name, "A"],
    )
    .await;
    assert_eq!(status(&out), "BADVERS", "{out}");
    assert!(edns_line(&out).unwrap().contains("flags: do"), "{out}");
    lb.stop().await;
}

/// pyspf's verdict for each address, asking only lb-dns.
async fn pyspf(lb: &LbDns, host: &str, ips: &[&str]) -> Vec<String> {
    const SCRIPT: &str = r#"
import sys, dns.resolver, spf
r = dns.resolver.Resolver(configure=False)
r.nameservers = [sys.argv[1]]
r.port = int(sys.argv[2])
dns.resolver.default_resolver = r
host = sys.argv[3]
for ip in sys.argv[4:]:
    print(spf.check2(i=ip, s="bounce@" + host, h=host)[0])
"#;
    // Debian's python3 has python3-spf; a python3 of another prefix does not.
    let out = tokio::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(lb.dns.ip().to_string())
        .arg(lb.dns.port().to_string())
        .arg(host)
        .args(ips)
        .output()
        .await
        .expect("/usr/bin/python3 with python3-spf");
    assert!(
        out.status.success(),
        "pyspf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cluster_hostname_has_an_mx_to_itself_and_spf_with_every_mta() {
    let mut spec = FleetSpec::standard();
    spec.clusters[0]
        .1
        .push(mta("mta-4", "192.0.2.14").drained());
    let feed = FakeHealthd::start("127.4.43.2", spec.feed(MtaState::Up)).await;
    feed.set("mta-3", MtaState::Down);
    let lb = LbDns::start("127.4.43.1", &spec, std::slice::from_ref(&feed.url)).await;
    let host = cluster("a1b2c3d4");
    let bare = host.trim_end_matches('.');
    eventually(
        Duration::from_secs(5),
        "mta-3 out of the answers",
        || async { lb.a(&host).await.len() == 2 },
    )
    .await
    .unwrap();

    let out = dig(lb.dns, &["+short", &host, "MX"]).await;
    assert_eq!(out.trim(), format!("10 {host}"));
    let out = dig(lb.dns, &["+short", &host, "TXT"]).await;
    assert_eq!(
        out.trim(),
        "\"v=spf1 ip4:192.0.2.11 ip4:192.0.2.12 ip4:192.0.2.13 ip4:192.0.2.14 \
         ip6:2001:db8::11 ip6:2001:db8::12 -all\"",
        "every MTA, down (mta-3) and drained (mta-4) too"
    );
    let out = dig(lb.dns, &["+short", &cluster("e5f6"), "TXT"]).await;
    assert_eq!(out.trim(), "\"v=spf1 ip4:192.0.2.21 -all\"");

    let verdicts = pyspf(
        &lb,
        bare,
        &[
            "192.0.2.11",
            "192.0.2.12",
            "192.0.2.13",
            "192.0.2.14",
            "2001:db8::11",
            "2001:db8::12",
            "192.0.2.99",
            "2001:db8::99",
        ],
    )
    .await;
    assert_eq!(
        verdicts,
        ["pass", "pass", "pass", "pass", "pass", "pass", "fail", "fail"],
        "pyspf"
    );

    // A new MTA in the fleet file: the SPF record and the serial change.
    let soa = || async {
        soa_serial(&udp(lb.dns, &query(&format!("{ORIGIN}."), RecordType::SOA)).await).unwrap()
    };
    let before = soa().await;
    spec.clusters[0].1.push(mta("mta-5", "192.0.2.15"));
    std::fs::write(lb.dir.join("fleet.toml"), spec.toml()).unwrap();
    lb.reload();
    eventually(
        Duration::from_secs(5),
        "mta-5 in the SPF record",
        || async {
            dig(lb.dns, &["+short", &host, "TXT"])
                .await
                .contains("ip4:192.0.2.15")
        },
    )
    .await
    .unwrap();
    let after = soa().await;
    assert!(after.wrapping_sub(before) > 0 && after.wrapping_sub(before) < 1 << 31);
    assert_eq!(pyspf(&lb, bare, &["192.0.2.15"]).await, ["pass"]);
    lb.stop().await;
}
