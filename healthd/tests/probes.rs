//! Probes against scripted fake MTAs: each way an MTA can be unhealthy is
//! found and named, and a healthy one is not flapped.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleet::feed::MtaState;
use fleet::testkit::process::eventually;

const HOST: &str = "c-p1.unmta.net";

/// healthd at default probe settings watching one fake MTA `mta-1`.
async fn one_mta(test: u8, script: impl FnOnce(&mut Script)) -> (Bed, Fake, Healthd) {
    let one = OneFake::new(test, "p1", script).await;
    let healthd = one.start("", "").await;
    (one.bed, one.fake, healthd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_mta_is_down_within_3s_and_up_again_after_rise_passes() {
    let (_bed, mut fake, healthd) = one_mta(1, |_| {}).await;
    let up = healthd.wait_up("mta-1").await;
    assert!(up.latency_ms.is_some_and(|l| l > 0.0), "{up:?}");
    assert_eq!(up.reason, None);

    // Every round opens an SMTP connection; /ready rides a kept connection.
    let rounds = fake.smtp_connections();
    eventually(Duration::from_secs(5), "more rounds", || async {
        fake.smtp_connections() >= rounds + 2
    })
    .await
    .unwrap();
    assert!(fake.https_requests() >= fake.smtp_connections() - 1);
    assert!(
        fake.https_connections() < fake.https_requests(),
        "no HTTPS connection reuse"
    );

    fake.kill();
    let (down, took) = healthd
        .wait_down_timed("mta-1", Duration::from_secs(3))
        .await;
    assert!(took <= Duration::from_secs(3), "down after {took:?}");
    assert_eq!(down.reason.as_deref(), Some("smtp: connection refused"));

    let before = fake.smtp_connections();
    fake.resume().await;
    let up = healthd.wait_up("mta-1").await;
    let passes = fake.smtp_connections() - before;
    assert!(passes >= 2, "up after {passes} probes; rise is 2");
    assert_eq!(up.reason, None);

    // Metrics: the gauge, a transition each way, failures by class.
    let (status, metrics) = healthd.text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"healthd_mta_up{cluster="p1",mta="mta-1"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"healthd_transitions_total{from="up",to="down"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"healthd_probe_failures_total{kind="smtp",class="connect"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"healthd_probe_duration_seconds_count{kind="https"}"#),
        "{metrics}"
    );
    healthd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mta_that_goes_silent_is_down_within_3s() {
    let (_bed, fake, healthd) = one_mta(12, |_| {}).await;
    healthd.wait_up("mta-1").await;
    // Connections are still accepted but nothing is ever said: every probe
    // runs into the timeout, the slowest way to fail.
    fake.set(|s| s.no_banner = true);
    let (down, took) = healthd
        .wait_down_timed("mta-1", Duration::from_secs(4))
        .await;
    assert!(took <= Duration::from_secs(3), "down after {took:?}");
    assert_eq!(
        down.reason.as_deref(),
        Some("smtp: no 220 banner within 900ms")
    );
    healthd.stop().await;
}

async fn down_with(test: u8, script: impl FnOnce(&mut Script), reason: &str) {
    let (_bed, _fake, healthd) = one_mta(test, script).await;
    let down = healthd
        .wait_state("mta-1", MtaState::Down, Duration::from_secs(5))
        .await;
    assert_eq!(down.reason.as_deref(), Some(reason));
    healthd.stop().await;
}

/// Each way an MTA's answers can fail is down with its reason: no banner,
/// no STARTTLS, `/ready` 503 (one fake MTA each, side by side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failing_answer_is_down_with_its_reason() {
    let ready_503 = |s: &mut Script| {
        s.ready_status = 503;
        s.ready_body = "not ready: spool unhealthy".into();
    };
    tokio::join!(
        down_with(
            2,
            |s| s.no_banner = true,
            "smtp: no 220 banner within 900ms"
        ),
        down_with(
            3,
            |s| s.offer_starttls = false,
            "smtp: STARTTLS not offered"
        ),
        down_with(
            5,
            ready_503,
            "https: /ready answered 503: not ready: spool unhealthy"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_down() {
    let (bed, fake, healthd) = one_mta(4, |_| {}).await;
    healthd.wait_up("mta-1").await;
    fake.set_tls(bed.pki.server(&["c-other.unmta.net"]));
    let down = healthd
        .wait_state("mta-1", MtaState::Down, Duration::from_secs(5))
        .await;
    assert_eq!(
        down.reason.as_deref(),
        Some(format!("tls: certificate not valid for {HOST}").as_str())
    );
    healthd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_down() {
    let (_bed, fake, healthd) = one_mta(11, |_| {}).await;
    healthd.wait_up("mta-1").await;
    let stranger = fleet::testkit::pki::LocalCa::new("another CA").unwrap();
    let issued = stranger.issue(&[HOST]).unwrap();
    fake.set_tls(fake::server_config(&issued.cert_pem, &issued.key_pem));
    let down = healthd
        .wait_state("mta-1", MtaState::Down, Duration::from_secs(5))
        .await;
    assert_eq!(
        down.reason.as_deref(),
        Some("tls: certificate not issued by the configured CA")
    );
    healthd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_probes_under_the_timeout_do_not_flap() {
    let (_bed, fake, healthd) = one_mta(6, |_| {}).await;
    healthd.wait_up("mta-1").await;
    let generation = healthd.feed().await.generation;
    // 500 ms before the banner and before /ready's answer: slow, yet under
    // the 900 ms timeout, for three rounds.
    fake.set(|s| s.delay = Duration::from_millis(500));
    let before = fake.smtp_connections();
    let start = Instant::now();
    while fake.smtp_connections() < before + 4 {
        let now = healthd.mta("mta-1").await.unwrap();
        assert_eq!(now.state, MtaState::Up, "flapped: {now:?}");
        assert!(start.elapsed() < Duration::from_secs(10), "probes stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.set(|s| s.delay = Duration::ZERO);
    let slow = healthd
        .wait_for("mta-1", Duration::from_secs(3), "slow", |m| {
            m.latency_ms.is_some_and(|l| l >= 500.0)
        })
        .await;
    assert_eq!(slow.state, MtaState::Up);
    assert_eq!(
        healthd.feed().await.generation,
        generation,
        "latency alone moved the generation"
    );
    healthd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_changes_start_and_stop_probes() {
    let bed = Bed::new(7);
    let a = bed.fake(10, &[HOST]).await;
    let b = bed.fake(11, &[HOST]).await;
    let c = bed.fake(12, &[HOST]).await;
    let moved = bed.fake(13, &[HOST]).await;
    let mtas = vec![mta("mta-a", bed.ip(10)), mta("mta-b", bed.ip(11))];
    let config = bed.configs(&fleet_toml(&[("p1", "unlimited", mtas)]), "", "");
    let healthd = Healthd::start(&config).await;
    healthd.wait_up("mta-a").await;
    healthd.wait_up("mta-b").await;
    assert_eq!(c.smtp_connections(), 0);

    // mta-b leaves, mta-c joins, mta-a moves to another address.
    let mtas = vec![mta("mta-a", bed.ip(13)), mta("mta-c", bed.ip(12))];
    bed.rewrite_fleet(&fleet_toml(&[("p1", "unlimited", mtas)]));
    let generation = healthd.feed().await.generation;
    healthd.reload();
    let start = Instant::now();
    let feed = loop {
        let feed = healthd.feed().await;
        if find(&feed, "mta-c").is_some() {
            break feed;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "reload not applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(feed.generation > generation);
    assert!(find(&feed, "mta-b").is_none());
    let fresh = find(&feed, "mta-a").unwrap();
    assert_eq!(fresh.ipv4, bed.ip(13));
    assert_ne!(fresh.state, MtaState::Down);
    // The new MTA and the moved one are probed at once and come up.
    healthd
        .wait_state("mta-c", MtaState::Up, Duration::from_secs(3))
        .await;
    healthd
        .wait_state("mta-a", MtaState::Up, Duration::from_secs(3))
        .await;
    // Counted only now: a probe already in flight at the reload may still
    // land on the old targets, but none starts after it.
    let b_count = b.smtp_connections() + b.https_requests();
    let a_old_count = a.smtp_connections() + a.https_requests();
    // Several more rounds go by; the removed MTA and the old address see none.
    let seen = c.smtp_connections();
    eventually(Duration::from_secs(10), "three more rounds", || async {
        c.smtp_connections() >= seen + 3
    })
    .await
    .unwrap();
    assert_eq!(
        b.smtp_connections() + b.https_requests(),
        b_count,
        "removed MTA still probed"
    );
    assert_eq!(
        a.smtp_connections() + a.https_requests(),
        a_old_count,
        "old address still probed"
    );
    assert!(moved.smtp_connections() >= 2);
    healthd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_address_that_does_not_answer_is_down() {
    // The fake answers on IPv4 only; nothing listens on [::1] at the SMTP
    // port, and lb-dns would hand that address out as AAAA.
    let bed = Bed::new(20);
    let _fake = bed.fake(10, &[HOST]).await;
    let mut spec = mta("mta-1", bed.ip(10));
    spec.ipv6 = Some(std::net::Ipv6Addr::LOCALHOST);
    let config = bed.configs(&fleet_toml(&[("p1", "unlimited", vec![spec])]), "", "");
    let healthd = Healthd::start(&config).await;
    let down = healthd
        .wait_state("mta-1", MtaState::Down, Duration::from_secs(5))
        .await;
    let reason = down.reason.unwrap_or_default();
    assert!(
        reason.starts_with("smtp: connection refused")
            && reason.ends_with(&format!("(over IPv6, [::1]:{SMTP_PORT})")),
        "{reason}"
    );
    healthd.stop().await;
}

/// hyper's HTTP/1.1 client keeps one connection to `/ready` across rounds
/// while the server allows it, and opens a new one when the server closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_rides_one_kept_connection_across_rounds() {
    let (_bed, fake, healthd) = one_mta(40, |_| {}).await;
    healthd
        .wait_state("mta-1", MtaState::Up, Duration::from_secs(5))
        .await;
    let (connections, requests) = (fake.https_connections(), fake.https_requests());
    eventually(
        Duration::from_secs(10),
        "five more /ready rounds",
        || async { fake.https_requests() >= requests + 5 },
    )
    .await
    .unwrap();
    assert_eq!(
        fake.https_connections(),
        connections,
        "a steady MTA's /ready opened new connections"
    );
    assert!(connections <= 2, "{connections} connections to come up");

    // A server that closes after each answer: every round a new connection,
    // and the MTA stays up.
    fake.set(|s| s.ready_close = true);
    let (connections, requests) = (fake.https_connections(), fake.https_requests());
    eventually(Duration::from_secs(10), "three closing rounds", || async {
        fake.https_requests() >= requests + 3
    })
    .await
    .unwrap();
    assert!(fake.https_connections() >= connections + 2);
    assert_eq!(healthd.mta("mta-1").await.unwrap().state, MtaState::Up);
    healthd.stop().await;
}

/// A chunked, oversized failing answer is read only up to the bound; its
/// first line is the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_oversized_ready_answer_is_read_bounded() {
    down_with(
        41,
        |s| {
            s.ready_status = 503;
            s.ready_chunked = true;
            s.ready_body = format!("not ready: spool unhealthy\n{}", "x".repeat(1 << 20));
        },
        "https: /ready answered 503: not ready: spool unhealthy",
    )
    .await;
}

/// A passing chunked `/ready` with a degradation note: up, the note shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degradation_note_in_a_chunked_ready_is_shown() {
    let (_bed, _fake, healthd) = one_mta(42, |s| {
        s.ready_chunked = true;
        s.ready_body = "ready, degraded: webhook w failing".into();
    })
    .await;
    let up = healthd
        .wait_for("mta-1", Duration::from_secs(5), "up with its note", |m| {
            m.state == MtaState::Up && m.reason.is_some()
        })
        .await;
    assert_eq!(up.reason.as_deref(), Some("degraded: webhook w failing"));
    healthd.stop().await;
}

/// `/ready` slower than the timeout (SMTP fine): down, named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_slower_than_the_timeout_is_down() {
    down_with(
        43,
        |s| s.ready_delay = Duration::from_millis(1500),
        "https: /ready did not answer within 900ms",
    )
    .await;
}

/// Something that is not HTTP on the HTTPS port is a protocol failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_answer_that_is_not_http_is_down() {
    let (_bed, _fake, healthd) = one_mta(44, |s| s.ready_status = 0).await;
    let down = healthd
        .wait_state("mta-1", MtaState::Down, Duration::from_secs(5))
        .await;
    let reason = down.reason.unwrap_or_default();
    assert!(
        reason.starts_with("https: not a valid HTTP answer"),
        "{reason}"
    );
    healthd.stop().await;
}
