//! `fleet::testkit::namespace`: a test that needs root's powers runs as
//! root of a user, network and mount namespace of its own, whoever runs
//! the suite, and leaves the machine as it was.

use std::net::{TcpListener, TcpStream};

#[test]
fn a_test_in_its_own_namespace_binds_port_587_and_builds_network_namespaces() {
    if !fleet::testkit::namespace::inside() {
        // It ran, and passed, in its namespace; nothing of it is left here.
        assert!(!std::path::Path::new("/run/netns/unmta-namespace-test").exists());
        return;
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:").map(str::to_string))
        .unwrap();
    assert_eq!(uid.split_whitespace().next(), Some("0"), "{uid}");
    // A privileged port on loopback, which is up; nothing else listens here.
    let listener = TcpListener::bind("127.0.0.1:587").unwrap();
    TcpStream::connect("127.0.0.1:587").unwrap();
    drop(listener);
    // `ip netns` works, its names in the namespace's own /run.
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}: {status}");
    };
    ip(&["netns", "add", "unmta-namespace-test"]);
    ip(&[
        "netns",
        "exec",
        "unmta-namespace-test",
        "ip",
        "link",
        "set",
        "lo",
        "up",
    ]);
    ip(&["netns", "del", "unmta-namespace-test"]);
}
