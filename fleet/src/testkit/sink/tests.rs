use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use rustls_pki_types::pem::PemObject;

use super::*;
use crate::testkit::pki::LocalCa;

fn message(id: &str) -> Message {
    Message::builder()
        .from("Sender <sender@yourdomain.test>".parse().unwrap())
        .to("rcpt@example.com".parse().unwrap())
        .subject("sink test")
        .message_id(Some(format!("<{id}@yourdomain.test>")))
        .header(ContentType::TEXT_PLAIN)
        .body(String::from("hello\r\n.leading dot\r\n"))
        .unwrap()
}

/// Reads lines up to and including the last line of a `code` reply.
async fn until_reply(
    stream: &mut (impl tokio::io::AsyncBufRead + Unpin),
    code: &str,
) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let last = format!("{code} ");
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        assert!(!line.is_empty(), "closed before a {code} reply: {lines:?}");
        let done = line.starts_with(&last);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

fn transport(addr: SocketAddr, tls: Tls) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(tls)
        .timeout(Some(Duration::from_secs(5)))
        .build()
}

#[tokio::test]
async fn accepts_over_starttls_and_stores_files() {
    let ca = LocalCa::new("sink test CA").unwrap();
    let leaf = ca.issue(&["mx.sink.test"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkConfig {
        listen: "127.5.0.25:0".parse().unwrap(),
        maildir: Some(dir.path().join("sink")),
        behaviour: Behaviour::Accept,
        tls: Some((leaf.cert_pem, leaf.key_pem)),
    })
    .await
    .unwrap();
    let parameters = TlsParameters::builder("mx.sink.test".into())
        .add_root_certificate(Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let client = transport(sink.addr(), Tls::Required(parameters));
    client.send(message("one")).await.unwrap();
    client.send(message("two")).await.unwrap();

    let got = sink.wait_for(2, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.tls));
    assert_eq!(got[0].mail_from, "sender@yourdomain.test");
    assert_eq!(got[0].rcpt_to, vec!["rcpt@example.com".to_string()]);
    assert_eq!(got[0].header("subject").as_deref(), Some("sink test"));
    assert!(got[0].text().contains("\r\n.leading dot\r\n"));
    let file = got[1].file.clone().expect("stored as a file");
    let stored = std::fs::read_to_string(file).unwrap();
    assert!(stored.starts_with("Return-Path: <sender@yourdomain.test>\r\n"));
    let peer = format!("\r\nX-Sink-Peer: {}\r\n", got[1].peer.ip());
    assert!(stored.contains(&peer), "{stored}");
    assert!(stored.contains("<two@yourdomain.test>"));
    assert_eq!(sink.attempts().len(), 2);
}

#[tokio::test]
async fn opportunistic_client_works_without_tls() {
    let sink = Sink::start(SinkConfig::accept("127.5.0.26:0".parse().unwrap()))
        .await
        .unwrap();
    let parameters = TlsParameters::new("mx.sink.test".into()).unwrap();
    let client = transport(sink.addr(), Tls::Opportunistic(parameters));
    client.send(message("plain")).await.unwrap();
    let got = sink.wait_for(1, Duration::from_secs(10)).await.unwrap();
    assert!(!got[0].tls);
    assert!(got[0].file.is_none());
}

#[tokio::test]
async fn rejects_recipients_permanently() {
    let sink = Sink::start(SinkConfig {
        behaviour: Behaviour::Reject,
        ..SinkConfig::accept("127.5.0.27:0".parse().unwrap())
    })
    .await
    .unwrap();
    let client = transport(sink.addr(), Tls::None);
    let error = client.send(message("no")).await.unwrap_err();
    assert!(error.is_permanent(), "{error}");
    assert!(sink.messages().is_empty());
    assert!(sink.wait_for(1, Duration::from_millis(100)).await.is_err());
}

#[tokio::test]
async fn temp_fails_the_first_attempts_of_each_message() {
    let sink = Sink::start(SinkConfig {
        behaviour: Behaviour::TempFailFirst(2),
        ..SinkConfig::accept("127.5.0.28:0".parse().unwrap())
    })
    .await
    .unwrap();
    let client = transport(sink.addr(), Tls::None);
    for _ in 0..2 {
        let error = client.send(message("retry")).await.unwrap_err();
        assert!(error.is_transient(), "{error}");
    }
    client.send(message("retry")).await.unwrap();
    // Another message has its own count.
    assert!(client.send(message("other")).await.is_err());
    let codes: Vec<u16> = sink.attempts().iter().map(|a| a.code).collect();
    assert_eq!(codes, vec![451, 451, 250, 451]);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn speaks_pipelined_smtp_and_drops_plaintext_after_starttls() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let ca = LocalCa::new("sink test CA").unwrap();
    let leaf = ca.issue(&["mx.sink.test"]).unwrap();
    let sink = Sink::start(SinkConfig {
        tls: Some((leaf.cert_pem, leaf.key_pem)),
        ..SinkConfig::accept("127.5.0.29:0".parse().unwrap())
    })
    .await
    .unwrap();
    let stream = tokio::net::TcpStream::connect(sink.addr()).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "));
    stream
        .get_mut()
        .write_all(b"EHLO t\r\nMAIL FROM:<a@b.test> SIZE=10\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        .await
        .unwrap();
    let mut replies = Vec::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        replies.push(line.clone());
        if line.starts_with("354") {
            break;
        }
    }
    assert!(replies.iter().any(|l| l.contains("PIPELINING")));
    assert!(replies.iter().any(|l| l.contains("STARTTLS")));
    assert!(replies
        .iter()
        .any(|l| l.starts_with("250-SIZE") || l.starts_with("250 SIZE")));
    stream
        .get_mut()
        .write_all(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    line.clear();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("250 "), "{line}");
    let got = sink.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].text(), "Subject: x\r\n\r\n.dot\r\n");

    // STARTTLS with a command pipelined behind it: the command is dropped.
    let stream = tokio::net::TcpStream::connect(sink.addr()).await.unwrap();
    let mut stream = BufReader::new(stream);
    line.clear();
    stream.read_line(&mut line).await.unwrap();
    stream
        .get_mut()
        .write_all(b"EHLO t\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
        .await
        .unwrap();
    until_reply(&mut stream, "220").await;
    // Finish the handshake: the pipelined MAIL must have been dropped, so
    // RCPT gets "MAIL first".
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("mx.sink.test").unwrap();
    let tls = connector.connect(name, stream.into_inner()).await.unwrap();
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"EHLO t\r\nRCPT TO:<c@d.test>\r\n")
        .await
        .unwrap();
    let ehlo = until_reply(&mut tls, "250").await;
    assert!(
        !ehlo.iter().any(|l| l.contains("STARTTLS")),
        "STARTTLS offered twice: {ehlo:?}"
    );
    line.clear();
    tls.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("503 "), "{line}");
}
