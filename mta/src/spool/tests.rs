use std::collections::HashSet;

use bytes::Bytes;

use super::*;

fn message(n: usize, recipients: usize) -> NewMessage {
    NewMessage {
        sender: "sender@example.com".into(),
        recipients: (0..recipients)
            .map(|r| format!("r{r}@example.net"))
            .collect(),
        data: Bytes::from(format!("Subject: {n}\r\n\r\n{}\r\n", "x".repeat(n % 700))),
        cluster: "a1b2c3d4".into(),
        credential: "cred".into(),
        via: crate::message::Protocol::Smtp,
        peer: "127.2.0.1:4000".parse().unwrap(),
    }
}

#[tokio::test]
async fn concurrent_accepts_share_commits_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), 64 << 10).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..400 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(
            async move { spool.accept(message(n, 1)).await },
        ));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 400);
    let jobs = spool.take_arrivals();
    assert_eq!(jobs.len(), 400);
    // Several segments of 64 KiB, and fewer commits than messages.
    assert!(spool.stats().segments > 1, "{:?}", spool.stats());
    let loaded = spool.load(&jobs[7]).await.unwrap();
    assert_eq!(loaded.id(), jobs[7].id());
    assert_eq!(loaded.recipients, vec!["r0@example.net".to_string()]);
    drop(spool);

    let spool = Spool::open_with(dir.path(), 64 << 10).await.unwrap();
    let recovered = spool.take_arrivals();
    let back: HashSet<_> = recovered.iter().map(|j| j.id()).collect();
    assert_eq!(back, ids);
    // New ids never repeat recovered ones.
    let id = spool.accept(message(1, 1)).await.unwrap();
    assert!(!ids.contains(&id));
}

#[tokio::test]
async fn done_recipients_stay_done_and_empty_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), 1 << 10).await.unwrap();
    for n in 0..30 {
        spool.accept(message(n, 2)).await.unwrap();
    }
    let jobs = spool.take_arrivals();
    assert_eq!(jobs.len(), 60);
    let segments_before = spool.stats().segments;
    // Finish every recipient of the first 20 messages, and the first
    // recipient of the rest; reschedule one.
    let mut kept = Vec::new();
    for job in &jobs {
        if job.seq < jobs[40].seq || job.rcpt == 0 {
            spool.done(job);
        } else {
            kept.push(*job);
        }
    }
    let mut retry = kept[0];
    retry.attempts = 3;
    retry.due_ms = 12345;
    spool.reschedule(&retry);
    spool.sync().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while spool.stats().segments >= segments_before {
        assert!(Instant::now() < deadline, "no segment was deleted");
        tokio::task::yield_now().await;
        spool.sync().await.unwrap();
    }
    drop(spool);

    let spool = Spool::open_with(dir.path(), 1 << 10).await.unwrap();
    let mut back = spool.take_arrivals();
    back.sort_by_key(|j| (j.seq, j.rcpt));
    kept.sort_by_key(|j| (j.seq, j.rcpt));
    kept[0] = retry;
    kept.sort_by_key(|j| (j.seq, j.rcpt));
    assert_eq!(back, kept);
    assert_eq!(spool.stats().queued, kept.len() as u64);
}

#[tokio::test]
async fn a_torn_tail_and_a_damaged_record_lose_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    for n in 0..10 {
        spool.accept(message(n, 1)).await.unwrap();
    }
    let jobs = spool.take_arrivals();
    drop(spool);
    let path = segment_path(dir.path(), jobs[0].segment);
    let mut bytes = std::fs::read(&path).unwrap();
    // Damage the fourth record's body, then add half a record at the end.
    let j = jobs[3];
    bytes[(j.offset + j.len - 2) as usize] ^= 0x55;
    let tail = bytes[..100].to_vec();
    bytes.extend_from_slice(&tail);
    std::fs::write(&path, &bytes).unwrap();

    let spool = Spool::open(dir.path()).await.unwrap();
    let back: Vec<u64> = spool.take_arrivals().iter().map(|j| j.seq).collect();
    let expected: Vec<u64> = jobs
        .iter()
        .filter(|x| x.seq != j.seq)
        .map(|x| x.seq)
        .collect();
    assert_eq!(back, expected);
    // Both are moved aside with their bytes and listed, the tail is cut.
    let quarantined = spool.quarantined();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    assert_eq!(quarantined[0].offset, u64::from(j.offset));
    assert_eq!(quarantined[0].len, u64::from(j.len));
    assert_eq!(quarantined[1].len, 100);
    let moved = std::fs::read(&quarantined[0].path).unwrap();
    assert_eq!(moved.len(), j.len as usize);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        bytes.len() - 100
    );
}

#[tokio::test]
async fn spool_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("spool");
    let spool = Spool::open(&root).await.unwrap();
    spool.accept(message(1, 2)).await.unwrap();
    let job = spool.take_arrivals()[0];
    spool.done(&job);
    spool.sync().await.unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "{}", path.display());
        files += 1;
    }
    assert!(files >= 2, "a segment and its state file");
}

#[tokio::test]
async fn an_unwritable_spool_is_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    spool.health().unwrap();
    spool.accept(message(1, 1)).await.unwrap();
    // Replace the directory by a file: nothing can be created in it. (Tests
    // run as root, so permissions alone would not stop a write.)
    let gone = dir.path().with_extension("moved");
    std::fs::rename(dir.path(), &gone).unwrap();
    std::fs::write(dir.path(), b"not a directory").unwrap();
    *spool.probe.lock() = None;
    let reason = spool.health().unwrap_err().to_string();
    assert!(
        reason.contains("cannot be written") && reason.contains(&dir.path().display().to_string()),
        "{reason}"
    );
    std::fs::remove_file(dir.path()).unwrap();
    std::fs::rename(&gone, dir.path()).unwrap();
    *spool.probe.lock() = None;
    spool.health().unwrap();
}

#[tokio::test]
async fn a_failed_write_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny segments: every accept opens a new segment file.
    let spool = Spool::open_with(dir.path(), 1).await.unwrap();
    spool.accept(message(1, 1)).await.unwrap();
    let gone = dir.path().with_extension("moved2");
    std::fs::rename(dir.path(), &gone).unwrap();
    let err = spool.accept(message(2, 1)).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot create spool segment"),
        "{err}"
    );
    assert!(spool.health().is_err());
    std::fs::rename(&gone, dir.path()).unwrap();
    *spool.probe.lock() = None;
    spool.health().unwrap();
    spool.accept(message(3, 1)).await.unwrap();
}

#[tokio::test]
async fn staged_messages_are_segments_of_their_own_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    spool.accept(message(1, 1)).await.unwrap();
    let mut staged = spool.stage(message(2, 2)).await.unwrap();
    let mut chunk = Vec::new();
    for i in 0..40u8 {
        chunk.extend(std::iter::repeat_n(b'a' + i % 26, 50_000));
        chunk = staged.append(chunk).await.unwrap();
    }
    assert_eq!(
        staged.data_len(),
        2_000_000 + message(2, 2).data.len() as u64
    );
    let id = spool.commit_staged(staged).await.unwrap();
    // One that never completes leaves nothing behind.
    let mut dropped = spool.stage(message(3, 1)).await.unwrap();
    dropped.append(vec![b'z'; 1000]).await.unwrap();
    drop(dropped);
    let incoming = dir.path().join("incoming");
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
    let jobs = spool.take_arrivals();
    assert_eq!(jobs.len(), 3);
    let big = jobs.iter().find(|j| j.id() == id).unwrap();
    let loaded = spool.load(big).await.unwrap();
    assert_eq!(loaded.recipients.len(), 2);
    assert!(loaded.data.starts_with(&message(2, 2).data));
    assert_eq!(loaded.data.len(), 2_000_000 + message(2, 2).data.len());
    spool.sync().await.unwrap();
    drop(spool);
    // A leftover in incoming/ (a message arriving when the node stopped).
    std::fs::write(incoming.join("0000000000000001.msg"), b"partial").unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let jobs = spool.take_arrivals();
    assert_eq!(jobs.len(), 3);
    let big = jobs.iter().find(|j| j.id() == id).unwrap();
    assert_eq!(spool.load(big).await.unwrap().data, loaded.data);
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 0);
    // Done: its segment goes.
    let segments = spool.stats().segments;
    for job in jobs.iter().filter(|j| j.id() == id) {
        spool.done(job);
    }
    spool.sync().await.unwrap();
    fleet::testkit::process::eventually(Duration::from_secs(10), "the segment is deleted", || {
        let now = spool.stats().segments;
        async move { now < segments }
    })
    .await
    .unwrap();
}
