//! A message whose body embeds a well-formed spool record (forged sender
//! and recipient), written by a process that is then killed with SIGKILL,
//! and its segment cut inside that message as a torn write leaves it: after
//! recovery the embedded record is not a message, every acknowledged
//! message before it is, and the torn bytes are quarantined.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use mta::message::NewMessage;
use mta::spool::{record, Spool};

const CHILD: &str = "UNMTA_SPOOL_CHILD";

fn message(sender: &str, recipient: &str, data: Vec<u8>) -> NewMessage {
    NewMessage {
        sender: sender.into(),
        recipients: vec![recipient.into()],
        data: Bytes::from(data),
        cluster: "a1b2c3d4".into(),
        credential: "sender".into(),
        via: mta::message::Protocol::Smtp,
        peer: "127.1.91.1:4000".parse().unwrap(),
    }
}

/// The forged message, encoded as the spool would write it.
fn forged_record() -> Vec<u8> {
    let forged = message(
        "ceo@victim.example",
        "target@example.net",
        b"From: ceo@victim.example\r\nSubject: forged\r\n\r\nwire the money\r\n".to_vec(),
    );
    record::encode(u64::MAX / 2, 1, &forged)
}

/// Runs only as the child of the test below: spools three messages and the
/// carrier, prints where the carrier is, then waits to be killed.
#[test]
#[ignore = "the child process of an_embedded_record_is_never_resurrected"]
fn spool_writer_child() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let spool = Spool::open(std::path::Path::new(&dir)).await.unwrap();
        for n in 0..3 {
            let data = format!("From: a@yourdomain.com\r\nSubject: acked {n}\r\n\r\nhi\r\n");
            spool
                .accept(message(
                    "a@yourdomain.com",
                    "r@example.com",
                    data.into_bytes(),
                ))
                .await
                .unwrap();
        }
        let mut body = b"From: a@yourdomain.com\r\nSubject: carrier\r\n\r\n".to_vec();
        let embedded_at = body.len();
        body.extend_from_slice(&forged_record());
        body.extend_from_slice(&[b'x'; 4000]);
        let id = spool
            .accept(message("a@yourdomain.com", "r@example.com", body))
            .await
            .unwrap();
        let carrier = spool
            .take_arrivals()
            .into_iter()
            .find(|job| job.id() == id)
            .unwrap();
        println!("acked {} {} {embedded_at}", carrier.offset, carrier.segment);
        std::thread::sleep(std::time::Duration::from_secs(600));
    });
}

#[tokio::test]
async fn an_embedded_record_is_never_resurrected() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "spool_writer_child", "--nocapture"])
        .env(CHILD, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("acked ")))
        .expect("the child acknowledged its messages");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let numbers: Vec<usize> = line[6..].split(' ').map(|n| n.parse().unwrap()).collect();
    let (offset, segment, embedded_at) = (numbers[0], numbers[1], numbers[2]);

    // Cut the segment inside the carrier, after the embedded record, as a
    // torn write of it would.
    let path = dir.path().join(format!("seg-{segment:08}.dat"));
    let bytes = std::fs::read(&path).unwrap();
    let forged = forged_record();
    let record_start = memchr::memmem::find(&bytes[offset + 12..], &forged).unwrap() + offset + 12;
    assert!(record_start > offset + embedded_at);
    let cut = record_start + forged.len() + 100;
    assert!(cut < bytes.len());
    std::fs::write(&path, &bytes[..cut]).unwrap();

    let spool = Spool::open(dir.path()).await.unwrap();
    let jobs = spool.take_arrivals();
    let mut subjects = Vec::new();
    for job in &jobs {
        let stored = spool.load(job).await.unwrap();
        assert_eq!(stored.sender, "a@yourdomain.com");
        assert_eq!(stored.recipients, vec!["r@example.com".to_string()]);
        let text = String::from_utf8_lossy(&stored.data).into_owned();
        subjects.push(text.lines().nth(1).unwrap_or_default().to_string());
    }
    assert_eq!(
        subjects,
        ["Subject: acked 0", "Subject: acked 1", "Subject: acked 2"]
    );
    let quarantined = spool.quarantined();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].offset as usize, offset);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, offset);
}
