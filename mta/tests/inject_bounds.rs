//! One HTTP request cannot exhaust a node: the worst requests we could
//! think of, sent to the real `mta` binary (127.9.20.11, delivery on hold),
//! each answered as it must be, with the node's peak RSS measured per
//! request (`/proc/<pid>/clear_refs` resets the peak, `VmHWM` reads it).
//!
//! Run as the benchmark with the figures printed:
//! `cargo test --release -p mta --test inject_bounds -- --nocapture`

mod ingress_support;

use fleet::testkit::process::DaemonProcess;
use ingress_support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const MTA: &str = env!("CARGO_BIN_EXE_mta");
/// The bound: peak RSS above idle per worst request.
const BOUND_MB: f64 = 64.0;
/// `[smtp] max_message_size` (the default).
const MAX_MESSAGE: usize = 10 * 1024 * 1024;

fn status_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn builder(text_body: &str) -> Value {
    json!({"from": "news@yourdomain.com", "subject": "Hi {{ name }}", "text_body": text_body})
}

/// The worst requests: (name, request, expected status, what the answer
/// must say).
fn worst_requests() -> Vec<(&'static str, Value, StatusCode, &'static str)> {
    let big = "x".repeat(4 * 1024 * 1024);
    let mid = "y".repeat(9 * 1024);
    let many: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"email": format!("r{i}@example.com"), "name": format!("R {i}"),
                        "substitutions": {"own": mid, "i": i}})
        })
        .collect();
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!(format!("r{i}@example.com")))
        .collect();
    let attachment = "QUFB".repeat(MAX_MESSAGE / 4 * 3 / 4 - 4096);
    vec![
        (
            "a 4 MB value printed 1,000 times",
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"],
                   "substitutions": {"big": big},
                   "content": builder(&"{{ big }}".repeat(1000))}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "a 4 MB value in a loop of 100,000",
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"],
                   "substitutions": {"big": big},
                   "content": builder("{% for i in range(100000) %}{{ big }}{{ big|upper }}{% endfor %}")}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "a 4 MB value replaced into itself and joined with itself",
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"],
                   "substitutions": {"big": big, "l": ["a", "b", "c", "d", "e", "f", "g", "h"]},
                   "content": builder("{{ big|replace('x', big) }}{{ l|join(big) }}")}),
            StatusCode::OK,
            "larger than the message size limit",
        ),
        (
            "nested placeholders: values that are templates",
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com"],
                   "substitutions": {"a": "{{ b }}{{ b }}", "b": "{{ a }}{{ a }}"},
                   "content": builder("{{ a }}{{ b }}")}),
            StatusCode::OK,
            "",
        ),
        (
            "1,000 recipients with 9 KB of their own values, each printed 3 times",
            json!({"envelope_sender": "b@yourdomain.com", "recipients": many,
                   "content": builder("{{ own }}\n{{ own }}\n{{ own }}\n{{ name }} {{ i }}")}),
            StatusCode::OK,
            "",
        ),
        (
            "1,001 recipients",
            json!({"envelope_sender": "b@yourdomain.com", "recipients": too_many,
                   "content": builder("x")}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "1001 recipients, more than the 1000 allowed",
        ),
        (
            "a 5.6 MB attachment (7.5 MB of base64) with a templated body, 2 recipients",
            json!({"envelope_sender": "b@yourdomain.com", "recipients": ["a@example.com", "b@example.com"],
                   "content": {"from": "news@yourdomain.com", "text_body": "{{ email }}",
                               "attachments": [{"data": attachment, "base64": true,
                                                "content_type": "application/pdf", "file_name": "a.pdf"}]}}),
            StatusCode::OK,
            "",
        ),
    ]
}

/// A fresh node on the fixture, warmed up by one ordinary request.
async fn start(fixture: &Fixture) -> DaemonProcess {
    let node = DaemonProcess::start(MTA.as_ref(), &fixture.config()).unwrap();
    fixture.wait_ready().await;
    ordinary(fixture).await;
    node
}

async fn ordinary(fixture: &Fixture) {
    let request = json!({"envelope_sender": "b@yourdomain.com",
        "recipients": ["a@example.com"], "content": builder("hello")});
    let (status, body) = fixture.inject(&request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worst_requests_stay_within_64_mb_above_idle() {
    let delivery = "[delivery]\nhold = true\nnameservers = [\"127.9.20.53:53\"]\ndsn = false\n";
    let fixture = Fixture::at([127, 9, 20], "", delivery);
    let mut worst: f64 = 0.0;
    for (name, request, expected, says) in worst_requests() {
        // Each request on a fresh node: what one request costs, not what
        // the allocator kept from the one before.
        let mut node = start(&fixture).await;
        let pid = node.pid();
        let idle = status_kb(pid, "VmRSS:");
        let started = std::time::Instant::now();
        reset_peak(pid);
        let (status, body) = fixture.inject(&request).await;
        let peak = status_kb(pid, "VmHWM:");
        let above = peak.saturating_sub(idle) as f64 / 1024.0;
        worst = worst.max(above);
        println!(
            "{name}: {status} in {:.2} s, idle {:.1} MB, peak {:.1} MB above idle",
            started.elapsed().as_secs_f64(),
            idle as f64 / 1024.0,
            above
        );
        assert_eq!(status, expected, "{name}: {body:.300}");
        let text = body.to_string();
        assert!(text.contains(says), "{name}: {text:.500}");
        if status == StatusCode::OK && says.is_empty() {
            assert_eq!(body["fail_count"], 0, "{name}: {text:.500}");
        }
        assert!(above < BOUND_MB, "{name}: {above:.1} MB above idle");
        // Still serving.
        ordinary(&fixture).await;
        node.signal("TERM").unwrap();
        node.wait_exit(LIMIT).await.unwrap();
    }
    println!("worst request: {worst:.1} MB above idle (bound {BOUND_MB} MB)");
}
