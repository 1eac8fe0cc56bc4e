//! SMTP submission against a node running in-process, with lettre and a
//! scripted raw client. Each test has its own address, 127.1.<n>.11.

mod ingress_support;

use ingress_support::*;
use lettre::message::Mailbox;
use lettre::transport::smtp::client::Tls;
use lettre::transport::smtp::Error as SmtpError;
use lettre::{Address, AsyncTransport, Message};

fn email(from: &str, subject: &str) -> Message {
    Message::builder()
        .from(from.parse::<Mailbox>().unwrap())
        .to("Rcpt <rcpt@example.com>".parse().unwrap())
        .subject(subject)
        .body(format!("Hello, {subject}\n"))
        .unwrap()
}

fn envelope(from: &str) -> lettre::address::Envelope {
    lettre::address::Envelope::new(
        Some(from.parse::<Address>().unwrap()),
        vec!["rcpt@example.com".parse().unwrap()],
    )
    .unwrap()
}

/// The SMTP code of a lettre error.
fn code(error: &SmtpError) -> Option<u16> {
    error.status().map(|c| c.to_string().parse().unwrap())
}

fn spooled_subjects(messages: &[mta::spool::StoredMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

#[tokio::test]
async fn lettre_sends_over_starttls_with_auth_and_the_message_is_spooled() {
    let (fixture, node) = Fixture::started(1, "").await;
    let mailer = fixture.lettre(Some((USER, PASSWORD)));
    let response = mailer
        .send(email("Sender <sender@yourdomain.com>", "first"))
        .await
        .unwrap();
    assert_eq!(response.code().to_string(), "250");
    assert!(response.message().next().unwrap().starts_with("2.0.0 "));
    // A second message on a new connection of the same transport.
    mailer
        .send(email("sender@yourdomain.com", "second"))
        .await
        .unwrap();
    node.stop().await;

    let messages = fixture.spooled().await;
    assert_eq!(spooled_subjects(&messages), ["first", "second"]);
    let first = &messages[0];
    let text = String::from_utf8_lossy(&first.data);
    assert!(
        text.starts_with("Received: from "),
        "Received: first: {text}"
    );
    assert!(text.contains(&format!("by {HOSTNAME} (mta-1) with ESMTPSA")));
    assert_eq!(first.sender, "sender@yourdomain.com");
    assert_eq!(first.recipients, ["rcpt@example.com"]);
    assert_eq!(first.credential, USER);
    assert_eq!(first.cluster, "a1b2c3d4");
    assert_eq!(first.via, mta::message::Protocol::Smtp);
}

#[tokio::test]
async fn message_id_and_date_are_added_only_where_missing() {
    let (fixture, node) = Fixture::started(2, "").await;
    let mut raw = Raw::authenticated(&fixture).await;
    let reply = transaction(&mut raw, message("bare").as_bytes()).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    let given = format!(
        "Message-ID: <given@yourdomain.com>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n{}",
        message("dressed")
    );
    let reply = transaction(&mut raw, given.as_bytes()).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(raw.cmd("QUIT").await.code, 221);
    node.stop().await;

    let messages = fixture.spooled().await;
    assert_eq!(messages.len(), 2);
    let bare = String::from_utf8_lossy(&messages[0].data).to_string();
    let (head, _) = bare.split_once("\r\n\r\n").unwrap();
    assert_eq!(head.matches("\r\nMessage-ID: <").count(), 1, "{head}");
    assert!(head.contains(&format!("@{HOSTNAME}>")), "{head}");
    assert_eq!(head.matches("\r\nDate: ").count(), 1, "{head}");
    assert!(
        head.starts_with("Received: from client.example ("),
        "{head}"
    );
    let dressed = String::from_utf8_lossy(&messages[1].data).to_string();
    assert_eq!(dressed.matches("Message-ID:").count(), 1, "{dressed}");
    assert!(dressed.contains("Message-ID: <given@yourdomain.com>"));
    assert_eq!(dressed.matches("\r\nDate: ").count(), 1, "{dressed}");
}

#[tokio::test]
async fn without_starttls_everything_but_the_basics_gets_530() {
    let (fixture, node) = Fixture::started(3, "").await;

    // lettre without TLS: MAIL is refused.
    let plain = fixture.lettre_with(None, Tls::None);
    let error = plain
        .send(email("sender@yourdomain.com", "plain"))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(530), "{error}");

    let mut raw = Raw::connect(fixture.smtp_addr()).await;
    let banner = raw.reply().await;
    assert_eq!(banner.code, 220);
    assert!(banner.first().starts_with(HOSTNAME));
    let ehlo = raw.cmd("EHLO client.example").await;
    assert_eq!(ehlo.code, 250);
    let text = ehlo.text();
    for extension in [
        "STARTTLS",
        "SIZE 10485760",
        "PIPELINING",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(text.contains(extension), "{extension} in {text}");
    }
    assert!(!text.contains("AUTH"), "no AUTH before TLS: {text}");
    for command in [
        "MAIL FROM:<sender@yourdomain.com>",
        "RCPT TO:<rcpt@example.com>",
        "DATA",
        "VRFY rcpt",
    ] {
        let reply = raw.cmd(command).await;
        assert_eq!(reply.code, 530, "{command}: {reply:?}");
        assert_eq!(reply.first(), "5.7.0 Must issue a STARTTLS command first");
    }
    assert_eq!(raw.cmd("NOOP").await.code, 250);
    assert_eq!(raw.cmd("RSET").await.code, 250);
    assert_eq!(raw.cmd("HELO client.example").await.code, 250);
    let quit = raw.cmd("QUIT").await;
    assert_eq!(quit.code, 221);
    assert!(quit.first().starts_with("2.0.0"));
    assert!(raw.closed().await);
    fixture.stop_with_nothing_spooled(node).await;
}

#[tokio::test]
async fn auth_before_tls_is_refused() {
    let (fixture, node) = Fixture::started(4, "").await;
    let mut raw = Raw::greeted(fixture.smtp_addr()).await;
    raw.cmd("EHLO client.example").await;
    for command in [
        format!("AUTH PLAIN {}", plain(USER, PASSWORD)),
        "AUTH LOGIN".to_string(),
    ] {
        let reply = raw.cmd(&command).await;
        assert_eq!(reply.code, 530, "{reply:?}");
        assert_eq!(reply.first(), "5.7.0 Must issue a STARTTLS command first");
    }
    // lettre with credentials but no TLS finds no mechanism to use.
    let plain_auth = fixture.lettre_with(Some((USER, PASSWORD)), Tls::None);
    assert!(plain_auth
        .send(email("sender@yourdomain.com", "x"))
        .await
        .is_err());
    fixture.stop_with_nothing_spooled(node).await;
}

#[tokio::test]
async fn mail_without_auth_gets_530_no_open_relay() {
    let (fixture, node) = Fixture::started(5, "").await;
    let anonymous = fixture.lettre(None);
    let error = anonymous
        .send(email("sender@yourdomain.com", "relay"))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(530), "{error}");

    let mut raw = Raw::secure(&fixture).await;
    assert!(raw
        .cmd("EHLO client.example")
        .await
        .text()
        .contains("AUTH PLAIN LOGIN"));
    let reply = raw.cmd("MAIL FROM:<sender@yourdomain.com>").await;
    assert_eq!(
        (reply.code, reply.first()),
        (530, "5.7.0 Authentication required")
    );
    assert_eq!(raw.cmd("RCPT TO:<rcpt@example.com>").await.code, 503);
    fixture.stop_with_nothing_spooled(node).await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_535_then_421() {
    let (fixture, node) = Fixture::started(6, "max_auth_failures = 3").await;
    let error = fixture
        .lettre(Some((USER, "wrong")))
        .send(email("sender@yourdomain.com", "x"))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(535), "{error}");

    let mut raw = Raw::secure(&fixture).await;
    let wrong = raw
        .cmd(&format!("AUTH PLAIN {}", plain(USER, "wrong")))
        .await;
    let unknown = raw
        .cmd(&format!("AUTH PLAIN {}", plain("nobody", PASSWORD)))
        .await;
    assert_eq!(wrong.code, 535);
    assert_eq!(wrong.lines, unknown.lines, "no difference between the two");
    assert_eq!(wrong.first(), "5.7.8 Authentication credentials invalid");
    // The third failure closes the connection.
    let third = raw
        .cmd(&format!("AUTH PLAIN {}", plain(USER, "again")))
        .await;
    assert_eq!(third.code, 535);
    let bye = raw.reply().await;
    assert_eq!(bye.code, 421, "{bye:?}");
    assert!(bye.first().starts_with("4.7.0"));
    assert!(raw.closed().await);
    node.stop().await;
}

#[tokio::test]
async fn a_credential_of_another_cluster_is_refused() {
    let (fixture, node) = Fixture::started(7, "").await;
    let error = fixture
        .lettre(Some((OTHER_USER, OTHER_PASSWORD)))
        .send(email("someone@beta.example.org", "x"))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(535), "{error}");
    fixture.stop_with_nothing_spooled(node).await;
}

#[tokio::test]
async fn auth_login_works_and_verified_credentials_follow_reloads() {
    let (fixture, node) = Fixture::started(8, "").await;
    let mut raw = Raw::secure(&fixture).await;
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(raw.cmd("AUTH LOGIN").await.lines, ["334 VXNlcm5hbWU6"]);
    assert_eq!(raw.cmd(&b64(USER)).await.lines, ["334 UGFzc3dvcmQ6"]);
    assert_eq!(raw.cmd(&b64(PASSWORD)).await.code, 235);
    assert_eq!(
        raw.cmd("AUTH PLAIN").await.code,
        503,
        "already authenticated"
    );
    let reply = transaction(&mut raw, message("login").as_bytes()).await;
    assert_eq!(reply.code, 250);

    // The password changes in the fleet file; after the reload the old one,
    // verified and cached a moment ago, no longer works.
    let fleet = fixture.dir.path().join("fleet.toml");
    let text = std::fs::read_to_string(&fleet).unwrap();
    let old = text
        .lines()
        .find(|l| l.trim_start().starts_with("password"))
        .unwrap()
        .to_string();
    let new_hash = fleet::password::hash_password("changed").unwrap();
    std::fs::write(
        &fleet,
        text.replacen(&old, &format!("  password = \"{new_hash}\""), 1),
    )
    .unwrap();
    node.reload();
    let mut attempts = 0;
    loop {
        let mut fresh = Raw::secure(&fixture).await;
        let reply = fresh
            .cmd(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
            .await;
        if reply.code == 535 {
            break;
        }
        attempts += 1;
        assert!(
            attempts < 200,
            "the old password still works after the reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut fresh = Raw::secure(&fixture).await;
    assert_eq!(
        fresh
            .cmd(&format!("AUTH PLAIN {}", plain(USER, "changed")))
            .await
            .code,
        235
    );
    node.stop().await;
}

#[tokio::test]
async fn disallowed_sender_domains_get_550() {
    let (fixture, node) = Fixture::started(9, "").await;
    let mailer = fixture.lettre(Some((USER, PASSWORD)));
    // MAIL FROM in another domain, and in a cluster domain this credential
    // may not use.
    for from in ["sender@evil.example", "sender@news.yourdomain.com"] {
        let error = mailer
            .send_raw(&envelope(from), message("x").as_bytes())
            .await
            .unwrap_err();
        assert_eq!(code(&error), Some(550), "{from}: {error}");
        assert!(error.to_string().contains("5.7.1"), "{error}");
    }
    // Allowed envelope, From: header in another domain.
    let error = mailer
        .send(email("Evil <ceo@evil.example>", "spoof"))
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(550), "{error}");
    assert!(error.to_string().contains("5.7.1"), "{error}");

    let mut raw = Raw::authenticated(&fixture).await;
    let reply = raw.cmd("MAIL FROM:<>").await;
    assert_eq!(reply.code, 550, "{reply:?}");
    let reply = raw.cmd("MAIL FROM:<x@evil.example>").await;
    assert_eq!(
        reply.lines,
        ["550 5.7.1 sender domain `evil.example` is not allowed for this credential"]
    );
    fixture.stop_with_nothing_spooled(node).await;
}

#[tokio::test]
async fn a_message_without_from_is_refused() {
    let (fixture, node) = Fixture::started(10, "").await;
    let mailer = fixture.lettre(Some((USER, PASSWORD)));
    let error = mailer
        .send_raw(
            &envelope("sender@yourdomain.com"),
            b"To: rcpt@example.com\r\nSubject: no from\r\n\r\nbody\r\n",
        )
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(550), "{error}");
    assert!(
        error.to_string().contains("From: header is required"),
        "{error}"
    );
    fixture.stop_with_nothing_spooled(node).await;
}

#[tokio::test]
async fn ten_megabytes_pass_and_one_byte_more_gets_552() {
    let (fixture, node) = Fixture::started(11, "").await;
    const MAX: usize = 10 * 1024 * 1024;
    let mut raw = Raw::authenticated(&fixture).await;
    assert!(raw
        .cmd("EHLO client.example")
        .await
        .text()
        .contains(&format!("SIZE {MAX}")));

    let reply = raw
        .cmd(&format!(
            "MAIL FROM:<sender@yourdomain.com> SIZE={}",
            MAX + 1
        ))
        .await;
    assert_eq!(
        (reply.code, &reply.first()[..5]),
        (552, "5.3.4"),
        "{reply:?}"
    );

    // Exactly the limit, in 100-octet lines.
    let exact = sized_message(MAX);
    assert_eq!(exact.len(), MAX);
    let reply = transaction(&mut raw, &exact).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    // One octet more.
    let over = sized_message(MAX + 1);
    assert_eq!(over.len(), MAX + 1);
    let reply = transaction(&mut raw, &over).await;
    assert_eq!(
        (reply.code, &reply.first()[..5]),
        (552, "5.3.4"),
        "{reply:?}"
    );
    // The connection goes on.
    let reply = transaction(&mut raw, message("after").as_bytes()).await;
    assert_eq!(reply.code, 250);

    // lettre with 11 MB.
    let big = Message::builder()
        .from("sender@yourdomain.com".parse().unwrap())
        .to("rcpt@example.com".parse().unwrap())
        .subject("big")
        .body("y".repeat(76).repeat(11 * 1024 * 1024 / 76))
        .unwrap();
    let error = fixture
        .lettre(Some((USER, PASSWORD)))
        .send(big)
        .await
        .unwrap_err();
    assert_eq!(code(&error), Some(552), "{error}");
    node.stop().await;
    let messages = fixture.spooled().await;
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().any(|m| m.data.len() > MAX));
}

/// A message of exactly `size` octets (size >= 200), CRLF lines.
fn sized_message(size: usize) -> Vec<u8> {
    let mut data = message("sized").into_bytes();
    let line = [b'z'; 98];
    while data.len() + 100 <= size {
        data.extend_from_slice(&line);
        data.extend_from_slice(b"\r\n");
    }
    let rest = size - data.len();
    if rest >= 2 {
        data.extend(std::iter::repeat_n(b'z', rest - 2));
        data.extend_from_slice(b"\r\n");
    } else {
        // Lengthen one line.
        let at = data.len() - 2;
        data.splice(at..at, std::iter::repeat_n(b'z', rest));
    }
    data
}

#[tokio::test]
async fn bare_lf_and_overlong_lines_are_refused_clearly() {
    let (fixture, node) = Fixture::started(12, "").await;
    let mut raw = Raw::authenticated(&fixture).await;

    // A bare LF in DATA, shaped like SMTP smuggling: it ends nothing.
    let smuggle = format!(
        "{}\n.\r\nMAIL FROM:<sender@yourdomain.com>\r\n",
        message("lf")
    );
    let reply = transaction(&mut raw, smuggle.as_bytes()).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.first().starts_with("5.6.0") && reply.text().contains("bare CR or LF"));

    // A 1001-octet line, then a 1000-octet one.
    let long = format!("{}{}\r\n", message("long"), "x".repeat(999));
    let reply = transaction(&mut raw, long.as_bytes()).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.text().contains("longer than 1000"));
    let fits = format!("{}{}\r\n", message("fits"), "x".repeat(998));
    assert_eq!(transaction(&mut raw, fits.as_bytes()).await.code, 250);

    // Commands: bare LF and an overlong line.
    raw.send(b"NOOP\n").await;
    let reply = raw.reply().await;
    assert_eq!(
        (reply.code, &reply.first()[..5]),
        (500, "5.5.2"),
        "{reply:?}"
    );
    let reply = raw.cmd(&format!("NOOP {}", "y".repeat(2000))).await;
    assert_eq!(
        (reply.code, &reply.first()[..5]),
        (500, "5.5.2"),
        "{reply:?}"
    );
    assert!(reply.text().contains("too long"));
    assert_eq!(raw.cmd("NOOP").await.code, 250);
    node.stop().await;
    assert_eq!(spooled_subjects(&fixture.spooled().await), ["fits"]);
}

#[tokio::test]
async fn commands_pipelined_behind_starttls_are_discarded() {
    let (fixture, node) = Fixture::started(13, "").await;
    let mut raw = Raw::greeted(fixture.smtp_addr()).await;
    // The CVE-2011-0411 shape: plaintext commands after STARTTLS, in the
    // same packet, that a careless server would run inside TLS.
    raw.send(
        format!(
            "EHLO client.example\r\nSTARTTLS\r\nAUTH PLAIN {}\r\nMAIL FROM:<sender@yourdomain.com>\r\n",
            plain(USER, PASSWORD)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw.reply().await.code, 250);
    assert_eq!(raw.reply().await.code, 220);
    let mut raw = raw.tls(&fixture.ca_pem).await;
    // Not authenticated, no transaction: the injected commands never ran.
    assert_eq!(raw.cmd("EHLO client.example").await.code, 250);
    let reply = raw.cmd("MAIL FROM:<sender@yourdomain.com>").await;
    assert_eq!(reply.code, 530, "{reply:?}");
    assert_eq!(raw.cmd("STARTTLS").await.code, 503);
    node.stop().await;
}

#[tokio::test]
async fn pipelining_rset_and_several_transactions_per_connection() {
    let (fixture, node) = Fixture::started(14, "").await;
    let mut raw = Raw::authenticated(&fixture).await;
    for marker in ["one", "two"] {
        raw.send(
            b"MAIL FROM:<sender@yourdomain.com> BODY=8BITMIME\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
        )
        .await;
        for expected in [250, 250, 250, 354] {
            assert_eq!(raw.reply().await.code, expected);
        }
        raw.send(format!("{}.\r\n", message(marker)).as_bytes())
            .await;
        assert_eq!(raw.reply().await.code, 250);
    }
    // RSET drops a transaction half way.
    assert_eq!(raw.cmd("MAIL FROM:<sender@yourdomain.com>").await.code, 250);
    assert_eq!(raw.cmd("RSET").await.code, 250);
    assert_eq!(raw.cmd("DATA").await.code, 503);
    // SMTPUTF8: a UTF-8 address needs it.
    assert_eq!(raw.cmd("MAIL FROM:<sender@yourdomain.com>").await.code, 250);
    assert_eq!(raw.cmd("RCPT TO:<josé@example.com>").await.code, 553);
    assert_eq!(raw.cmd("RSET").await.code, 250);
    assert_eq!(
        raw.cmd("MAIL FROM:<sender@yourdomain.com> SMTPUTF8")
            .await
            .code,
        250
    );
    assert_eq!(raw.cmd("RCPT TO:<josé@example.com>").await.code, 250);
    assert_eq!(raw.cmd("DATA").await.code, 354);
    raw.send(format!("{}.\r\n", message("utf8 ünïcode")).as_bytes())
        .await;
    assert_eq!(raw.reply().await.code, 250);
    node.stop().await;
    let messages = fixture.spooled().await;
    assert_eq!(spooled_subjects(&messages), ["one", "two", "utf8 ünïcode"]);
    assert_eq!(messages[0].recipients, ["a@example.com", "b@example.com"]);
}

#[tokio::test]
async fn too_many_recipients_get_452() {
    let (fixture, node) = Fixture::started(15, "max_recipients = 2").await;
    let mut raw = Raw::authenticated(&fixture).await;
    assert_eq!(raw.cmd("MAIL FROM:<sender@yourdomain.com>").await.code, 250);
    assert_eq!(raw.cmd("RCPT TO:<a@example.com>").await.code, 250);
    assert_eq!(raw.cmd("RCPT TO:<b@example.com>").await.code, 250);
    let reply = raw.cmd("RCPT TO:<c@example.com>").await;
    assert_eq!((reply.code, &reply.first()[..5]), (452, "4.5.3"));
    node.stop().await;
}

#[tokio::test]
async fn connection_caps_answer_421_and_close() {
    let (fixture, node) = Fixture::started(16, "max_connections_per_ip = 2").await;
    let mut first = Raw::connect(fixture.smtp_addr()).await;
    let mut second = Raw::connect(fixture.smtp_addr()).await;
    assert_eq!(first.reply().await.code, 220);
    assert_eq!(second.reply().await.code, 220);
    let mut third = Raw::connect(fixture.smtp_addr()).await;
    let reply = third.reply().await;
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.first().starts_with("4.7.0"));
    assert!(third.closed().await);
    // A slot frees when a client leaves.
    first.cmd("QUIT").await;
    assert!(first.closed().await);
    fleet::testkit::process::eventually(LIMIT, "the slot is freed for a new client", || async {
        Raw::connect(fixture.smtp_addr()).await.reply().await.code == 220
    })
    .await
    .unwrap();
    node.stop().await;
}

#[tokio::test]
async fn idle_clients_time_out_with_421() {
    let (fixture, node) = Fixture::started(17, "command_timeout = \"300ms\"").await;
    let mut raw = Raw::greeted(fixture.smtp_addr()).await;
    let reply = raw.reply().await;
    assert_eq!((reply.code, &reply.first()[..5]), (421, "4.4.2"));
    assert!(raw.closed().await);
    node.stop().await;
}

#[tokio::test]
async fn shutdown_tells_connected_clients_421() {
    let (fixture, node) = Fixture::started(18, "").await;
    let mut plain = Raw::greeted(fixture.smtp_addr()).await;
    let mut secure = Raw::authenticated(&fixture).await;
    node.shutdown();
    for raw in [&mut plain, &mut secure] {
        let reply = raw.reply().await;
        assert_eq!(
            (reply.code, &reply.first()[..5]),
            (421, "4.3.2"),
            "{reply:?}"
        );
        assert!(raw.closed().await);
    }
    node.stop().await;
}

#[tokio::test]
async fn every_smtp_port_serves() {
    let (fixture, node) = Fixture::started(19, "").await;
    for port in SMTP_PORTS {
        let mut raw = Raw::connect(std::net::SocketAddr::new(fixture.ip.into(), port)).await;
        assert_eq!(raw.reply().await.code, 220, "port {port}");
        assert!(raw.cmd("EHLO x").await.text().contains("STARTTLS"));
    }
    node.stop().await;
}

#[tokio::test]
async fn the_session_runs_on_an_in_memory_pipe() {
    // No listener, no socket: the state machine on a duplex pipe, STARTTLS
    // included, with the real spool behind it.
    let fixture = Fixture::new(20, "");
    let settings = std::sync::Arc::new(mta::Settings::load(&fixture.config()).unwrap());
    let spool = mta::spool::Spool::open(&fixture.spool_dir()).await.unwrap();
    let control = fleet::Control::new();
    let ingress = mta::ingress::Ingress::new(
        fleet::Live::new((*settings).clone()),
        spool.clone(),
        fleet::admin::Readiness::new(),
        mta::ingress::IngressMetrics::default(),
        control.clone(),
        mta::events::Events::open(&settings.node.events, "pipe").unwrap(),
    );
    let (client, server) = tokio::io::duplex(64 * 1024);
    let ctx = mta::smtp::session::Context {
        ingress,
        settings,
        peer: "192.0.2.7:40000".parse().unwrap(),
        port: 587,
    };
    let session = tokio::spawn(mta::smtp::session::serve(server, ctx));
    let mut raw = Raw::over(client);
    assert_eq!(raw.reply().await.code, 220);
    assert_eq!(raw.cmd("EHLO pipe.example").await.code, 250);
    assert_eq!(raw.cmd("MAIL FROM:<sender@yourdomain.com>").await.code, 530);
    assert_eq!(raw.cmd("STARTTLS").await.code, 220);
    let mut raw = raw.tls(&fixture.ca_pem).await;
    assert_eq!(raw.cmd("EHLO pipe.example").await.code, 250);
    let reply = raw
        .cmd(&format!("AUTH PLAIN {}", plain(USER, PASSWORD)))
        .await;
    assert_eq!(reply.code, 235);
    let reply = transaction(&mut raw, message("piped").as_bytes()).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(raw.cmd("QUIT").await.code, 221);
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    spool.close();
    drop(spool);
    let messages = fixture.spooled().await;
    assert_eq!(spooled_subjects(&messages), ["piped"]);
    let text = String::from_utf8_lossy(&messages[0].data);
    assert!(
        text.starts_with("Received: from pipe.example ([192.0.2.7])"),
        "{text}"
    );
}

#[tokio::test]
async fn a_new_certificate_is_served_after_a_reload() {
    let (fixture, node) = Fixture::started(21, "").await;
    let old_ca = fixture.ca_pem.clone();
    // A new CA and certificate in place of the old files, then SIGHUP.
    let ca = fleet::testkit::LocalCa::new("second test CA").unwrap();
    let issued = ca.issue(&[HOSTNAME]).unwrap();
    std::fs::write(fixture.dir.path().join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(fixture.dir.path().join("key.pem"), &issued.key_pem).unwrap();
    node.reload();
    let new_ca = ca.cert_pem();
    let mut attempts = 0;
    loop {
        let mut raw = Raw::greeted(fixture.smtp_addr()).await;
        raw.cmd("EHLO x").await;
        assert_eq!(raw.cmd("STARTTLS").await.code, 220);
        if raw.try_tls(&new_ca).await.is_some() {
            break;
        }
        attempts += 1;
        assert!(attempts < 200, "the new certificate is never served");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The old CA no longer verifies it.
    let mut raw = Raw::greeted(fixture.smtp_addr()).await;
    raw.cmd("EHLO x").await;
    raw.cmd("STARTTLS").await;
    assert!(raw.try_tls(&old_ca).await.is_none());
    node.stop().await;
}

#[tokio::test]
async fn ingress_metrics_on_the_admin_listener() {
    let (fixture, node) = Fixture::started(22, "").await;
    // Before any traffic every labelled counter whose labels are known is
    // there at 0, on every listener.
    let mut listeners = SMTP_PORTS.map(|port| format!("smtp:{port}")).to_vec();
    listeners.push(format!("https:{HTTPS_PORT}"));
    let mut zeros = Vec::new();
    for listener in &listeners {
        for family in [
            "connections",
            "auth_failures",
            "auth_blocked",
            "messages",
            "bytes",
        ] {
            zeros.push(format!(
                "mta_ingress_{family}_total{{listener=\"{listener}\"}} 0"
            ));
        }
        for cap in ["max_connections", "max_connections_per_ip"] {
            zeros.push(format!(
                "mta_ingress_connections_refused_total{{listener=\"{listener}\",cap=\"{cap}\"}} 0"
            ));
        }
        for result in ["ok", "error"] {
            zeros.push(format!(
                "mta_ingress_tls_handshakes_total{{listener=\"{listener}\",result=\"{result}\"}} 0"
            ));
        }
        let reasons: &[&str] = if listener.starts_with("smtp") {
            &["policy", "relay", "size", "spool", "syntax"]
        } else {
            &["policy", "size", "spool"]
        };
        for reason in reasons {
            zeros.push(format!(
                "mta_ingress_messages_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}} 0"
            ));
        }
    }
    let zeros: Vec<&str> = zeros.iter().map(String::as_str).collect();
    fleet::testkit::assert_contains_all(&node.metrics().await, &zeros);
    let mut raw = Raw::authenticated(&fixture).await;
    assert_eq!(
        transaction(&mut raw, message("m").as_bytes()).await.code,
        250
    );
    let metrics = node.metrics().await;
    fleet::testkit::assert_contains_all(
        &metrics,
        &[
            "mta_ingress_messages_total{listener=\"smtp:10587\"} 1",
            "mta_ingress_connections_total{listener=\"smtp:10587\"} 1",
            "mta_ingress_tls_handshakes_total{listener=\"smtp:10587\",result=\"ok\"} 1",
        ],
    );
    let bytes =
        fleet::testkit::sample(&metrics, "mta_ingress_bytes_total{listener=\"smtp:10587\"}");
    assert!(bytes > 0.0, "{bytes} bytes");
    node.stop().await;
}
