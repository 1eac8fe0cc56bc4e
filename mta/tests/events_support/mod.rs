//! What the events tests share: a node from a relocated `configs/` on
//! 127.6.N.0/24 whose cluster has a webhook, the test sink as every
//! recipient's MX, a webhook receiver in Python that checks the signature
//! with its own hmac module, and SMTP helpers.
#![allow(dead_code)]

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet::event::{Event, EventType};
use fleet::testkit::example_configs::ExampleConfigs;
use fleet::testkit::process::{eventually, DaemonProcess};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::Digest;
use toml_edit::{value, Array, ArrayOfTables, Item, Table};

pub use fleet::testkit::example_configs::EXAMPLE_HOSTNAME as HOSTNAME;
pub const USER: &str = "your-credential";
pub const PASSWORD: &str = "example-password";
pub const SECRET: &str = "test-webhook-secret-0123";
pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const SINK_PORT: u16 = 2525;
pub const HOOK_PORT: u16 = 18080;
pub const SUBMISSION: u16 = 10587;
pub const BOUNCE_PORT: u16 = 10025;
pub const LIMIT: Duration = Duration::from_secs(40);

pub fn ip(net: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 6, net, last)
}

/// The example configs on 127.6.`net`, the cluster unlimited and with a
/// webhook to the receiver's address, `delivery` lines added to
/// `[delivery]`: example.test and yourdomain.com go to the sink at .25,
/// busy.test and held.test to .26 where nothing listens.
pub fn node_configs(net: u8, delivery: &[(&str, Item)]) -> ExampleConfigs {
    let configs = ExampleConfigs::relocated([127, 6, net]).expect("configs copy");
    configs
        .edit("fleet.toml", |doc| {
            let cluster = &mut doc["clusters"][0];
            cluster["rate_limit"] = value("unlimited");
            let mut hook = Table::new();
            hook["name"] = value("test");
            hook["url"] = value(format!("http://{}:{HOOK_PORT}/events", ip(net, 2)));
            hook["secret"] = value(SECRET);
            hook["batch_size"] = value(50);
            hook["linger"] = value("100ms");
            let mut hooks = ArrayOfTables::new();
            hooks.push(hook);
            cluster["webhooks"] = Item::ArrayOfTables(hooks);
        })
        .unwrap();
    configs
        .edit("mta.toml", |doc| {
            doc["admin_token_sha256"] =
                value(hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes())));
            doc["events"]["webhook_retry_initial"] = value("100ms");
            doc["events"]["webhook_retry_max"] = value("1s");
            doc["bounces"]["port"] = value(BOUNCE_PORT as i64);
            let d = &mut doc["delivery"];
            d["nameservers"] = value(Array::from_iter([format!("{}:53", ip(net, 54))]));
            d["port"] = value(SINK_PORT as i64);
            d["timeout"] = value("5s");
            d["dsn"] = value(true);
            // The sink is on loopback, which delivery refuses unless allowed.
            d["allow_networks"] = value(Array::from_iter(["127.0.0.0/8"]));
            let sink = format!("{}:{SINK_PORT}", ip(net, 25));
            let nowhere = format!("{}:{SINK_PORT}", ip(net, 26));
            let mut routes = Table::new();
            routes["example.test"] = value(sink.clone());
            routes["yourdomain.com"] = value(sink);
            routes["busy.test"] = value(nowhere.clone());
            routes["held.test"] = value(nowhere);
            d["routes"] = Item::Table(routes);
            for (key, item) in delivery {
                d[*key] = item.clone();
            }
        })
        .unwrap();
    configs
}

/// The real `mta` binary on `configs`, ready.
pub async fn start_node(configs: &ExampleConfigs, net: u8) -> DaemonProcess {
    let binary = Path::new(env!("CARGO_BIN_EXE_mta"));
    let node = DaemonProcess::start(binary, &configs.path("mta.toml")).unwrap();
    let ready = format!("http://{}:9110/ready", ip(net, 1));
    eventually(LIMIT, "the mta is ready", || {
        let ready = ready.clone();
        async move {
            fleet::testkit::process::http_get(&ready)
                .await
                .is_some_and(|(code, _)| code == 200)
        }
    })
    .await
    .unwrap();
    node
}

/// The webhook receiver (python3), killed when dropped.
pub struct Receiver {
    child: Child,
    pub out: PathBuf,
}

impl Receiver {
    pub fn start(net: u8, out: &Path) -> Receiver {
        Receiver::spawn(net, out, &[])
    }

    /// The receiver over https with `cert` and `key` (PEM files).
    pub fn start_tls(net: u8, out: &Path, cert: &Path, key: &Path) -> Receiver {
        Receiver::spawn(net, out, &[cert, key])
    }

    fn spawn(net: u8, out: &Path, tls: &[&Path]) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/events_support/receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(ip(net, 2).to_string())
            .arg(HOOK_PORT.to_string())
            .arg(SECRET)
            .arg(out)
            .args(tls)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
        Receiver {
            child,
            out: out.to_path_buf(),
        }
    }

    /// Every event received so far, in arrival order.
    pub fn events(&self) -> Vec<Event> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// Batches refused for a bad signature.
    pub fn bad_signatures(&self) -> usize {
        std::fs::read_to_string(self.out.with_extension("bad"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Waits until `found` holds for the events received.
    pub async fn wait_until(&self, what: &str, found: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let out = self.out.clone();
        let read = || Receiver::read(&out);
        eventually(LIMIT, what, || {
            let ok = found(&read());
            async move { ok }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; received: {:#?}", summary(&read())));
        read()
    }

    fn read(out: &Path) -> Vec<Event> {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{} {} {} {}", e.kind, e.id, e.recipient, e.response.content))
        .collect()
}

/// The event of `kind` for `recipient`, if received.
pub fn find<'a>(events: &'a [Event], kind: EventType, recipient: &str) -> Option<&'a Event> {
    events
        .iter()
        .find(|e| e.kind == kind && e.recipient == recipient)
}

fn tls() -> Tls {
    let ca =
        std::fs::read(fleet::testkit::example_configs::repo_configs().join("tls/ca.pem")).unwrap();
    Tls::Required(
        TlsParameters::builder(HOSTNAME.to_string())
            .add_root_certificate(Certificate::from_pem(&ca).unwrap())
            .build_rustls()
            .unwrap(),
    )
}

/// lettre to the node on `port`, STARTTLS with the example CA.
pub fn smtp(
    net: u8,
    port: u16,
    credentials: Option<(&str, &str)>,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(ip(net, 11).to_string())
            .port(port)
            .tls(tls())
            .timeout(Some(LIMIT));
    if let Some((user, password)) = credentials {
        builder = builder
            .credentials(Credentials::new(user.to_string(), password.to_string()))
            .authentication(vec![Mechanism::Plain]);
    }
    builder.build()
}

/// Submits a message to `recipients` with AUTH; returns its id.
pub async fn submit(net: u8, recipients: &[&str], subject: &str) -> String {
    let to: Vec<_> = recipients.iter().map(|r| r.parse().unwrap()).collect();
    let envelope = Envelope::new(Some("app@yourdomain.com".parse().unwrap()), to).unwrap();
    let data = format!(
        "From: App <app@yourdomain.com>\r\nTo: {}\r\nSubject: {subject}\r\n\
         X-Meta-Campaign: spring\r\n\r\nHello.\r\n",
        recipients.join(", ")
    );
    let response = smtp(net, SUBMISSION, Some((USER, PASSWORD)))
        .send_raw(&envelope, data.as_bytes())
        .await
        .expect("the node accepts the message");
    let text: String = response.message().collect::<Vec<_>>().join(" ");
    text.rsplit(' ').next().unwrap().to_string()
}

/// Sends raw `data` from the null sender to `to` on the bounce port, no AUTH.
pub async fn send_to_bounce_port(net: u8, to: &str, data: &str) -> Result<(), String> {
    let envelope = Envelope::new(None, vec![to.parse().unwrap()]).unwrap();
    smtp(net, BOUNCE_PORT, None)
        .send_raw(&envelope, data.as_bytes())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// An RFC 3464 DSN for `recipient`, as a receiving MTA sends it.
pub fn dsn(verp: &str, recipient: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.test\r\nTo: {verp}\r\nSubject: Undelivered Mail\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nThe mailbox is gone.\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.example.test\r\n\r\n\
         Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: mailbox unavailable\r\n\
         --b--\r\n"
    )
}

/// An RFC 5965 ARF complaint about the message sent with return path `verp`.
pub fn arf(verp: &str, recipient: &str) -> String {
    format!(
        "From: fbl@isp.example\r\nTo: {verp}\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"p\"\r\n\r\n\
         --p\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n\
         --p\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: TestFBL/1.0\r\nVersion: 1\r\n\
         Original-Mail-From: <{verp}>\r\nOriginal-Rcpt-To: <{recipient}>\r\n\
         Reporting-MTA: dns; mx.isp.example\r\n\r\n\
         --p\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: app@yourdomain.com\r\nSubject: hi\r\n\r\n\
         --p--\r\n"
    )
}

/// The admin listener's base URL.
pub fn admin(net: u8) -> String {
    format!("http://{}:9110", ip(net, 1))
}

pub async fn status(net: u8) -> serde_json::Value {
    let (_, body) = fleet::testkit::process::http_get(&format!("{}/status", admin(net)))
        .await
        .expect("the admin listener answers");
    serde_json::from_str(&body).unwrap()
}

/// The first webhook's entry in the node's `/status` (null without one).
pub async fn webhook_status(net: u8) -> serde_json::Value {
    let status = status(net).await;
    status
        .pointer("/service/webhooks/0")
        .cloned()
        .unwrap_or_default()
}

/// Waits (up to [`LIMIT`]) until the first webhook's `/status` entry
/// `shows` what the test waits for, `what` in words.
pub async fn until_webhook(net: u8, what: &str, shows: impl Fn(&serde_json::Value) -> bool) {
    let shows = &shows;
    eventually(
        LIMIT,
        what,
        || async move { shows(&webhook_status(net).await) },
    )
    .await
    .unwrap();
}
