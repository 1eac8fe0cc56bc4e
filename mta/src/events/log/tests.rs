use std::os::unix::fs::PermissionsExt;

use fleet::event::EventType;

use super::*;

fn settings(segment_bytes: u64) -> LogSettings {
    LogSettings {
        node: "mta-t".into(),
        retention: Duration::from_secs(3600),
        segment_bytes,
    }
}

fn event(n: usize) -> Event {
    let mut event = Event::new(EventType::Delivery);
    event.id = format!("m{n}");
    event.recipient = format!("r{n}@example.com");
    event
}

fn read_all(log: &EventLog, after: u64) -> Vec<(u64, Event)> {
    let mut reader = LogReader::new(log, after);
    let mut all = Vec::new();
    loop {
        let batch = reader.read(7).unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn committed_at_least(log: &EventLog, n: u64, start: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while *log.committed().borrow() < start + n - 1 {
        assert!(Instant::now() < deadline, "events not committed in time");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn events_survive_a_reopen_in_order_with_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), settings(1 << 20)).unwrap();
    let start = *log.committed().borrow() + 1;
    for n in 0..50 {
        log.append(event(n));
    }
    committed_at_least(&log, 50, start);
    let first_read = read_all(&log, start - 1);
    log.close();
    drop(log);
    let log = EventLog::open(dir.path(), settings(1 << 20)).unwrap();
    let again = read_all(&log, start - 1);
    assert_eq!(first_read.len(), 50);
    assert_eq!(first_read, again);
    for (i, (seq, event)) in again.iter().enumerate() {
        assert_eq!(*seq, start + i as u64);
        assert_eq!(event.id, format!("m{i}"));
        assert_eq!(event.event_id, format!("mta-t-{seq:016x}"));
    }
    // Numbering goes on after the last committed event.
    log.append(event(50));
    committed_at_least(&log, 51, start);
    let last = read_all(&log, start + 49);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].0, start + 50);
}

#[test]
fn a_torn_tail_is_cut_and_nothing_committed_is_lost_or_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), settings(1 << 20)).unwrap();
    let start = *log.committed().borrow() + 1;
    for n in 0..10 {
        log.append(event(n));
    }
    committed_at_least(&log, 10, start);
    log.close();
    drop(log);
    // What a kill -9 in the middle of a write leaves: half a line, and a
    // line whose checksum does not match.
    let (_, path) = segments(dir.path()).pop().unwrap();
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(format!("{:016x} 00000000 {{\"type\":\"Deliv", start + 10).as_bytes())
        .unwrap();
    drop(file);
    let log = EventLog::open(dir.path(), settings(1 << 20)).unwrap();
    assert_eq!(*log.committed().borrow(), start + 9);
    log.append(event(10));
    committed_at_least(&log, 11, start);
    let all = read_all(&log, start - 1);
    let ids: Vec<&str> = all.iter().map(|(_, e)| e.id.as_str()).collect();
    let expected: Vec<String> = (0..11).map(|n| format!("m{n}")).collect();
    assert_eq!(ids, expected);
}

#[test]
fn segments_rotate_are_private_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), settings(4096)).unwrap();
    let start = *log.committed().borrow() + 1;
    for n in 0..200 {
        log.append(event(n));
        if n % 20 == 19 {
            committed_at_least(&log, n as u64 + 1, start);
        }
    }
    committed_at_least(&log, 200, start);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    for (_, path) in &segs {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    // A reader crosses every segment, in order.
    let all = read_all(&log, start - 1);
    assert_eq!(all.len(), 200);
    assert!(all.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    log.close();
    drop(log);
    // Closed segments older than the retention go; the newest stays.
    let old = SystemTime::now() - Duration::from_secs(7200);
    for (_, path) in &segs {
        File::options()
            .append(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let log = EventLog::open(dir.path(), settings(4096)).unwrap();
    log.append(event(200));
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments(dir.path()).len() > 2 {
        assert!(Instant::now() < deadline, "old segments were not deleted");
        log.append(event(201));
        std::thread::sleep(Duration::from_millis(50));
    }
}
