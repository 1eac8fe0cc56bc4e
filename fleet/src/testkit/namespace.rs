//! Tests that need what only root may do (listen below port 1024, bind
//! mounts, network namespaces, HAProxy's transparent source, Dante's
//! password files) run in a user, network and mount namespace of their
//! own, where they are root and the machine is not touched: the test runs
//! its own executable again for just itself under `unshare --user
//! --map-root-user --net --mount`, with loopback up and a private `/run`
//! (where `ip netns` keeps its names). A developer who is not root runs
//! them the same way CI does; nothing they start outlives the namespace.
//!
//! ```ignore
//! #[tokio::test]
//! async fn binds_port_587() {
//!     fleet::in_own_namespace!(); // returns once it passed in its namespace
//!     // ... the test, as root of its own network
//! }
//! ```

use std::process::Command;

/// The guard a test that needs root's powers starts with:
/// `fleet::in_own_namespace!();` returns from the test once its run in a
/// namespace of its own has passed, and lets that run go on ([`inside`]).
#[macro_export]
macro_rules! in_own_namespace {
    () => {
        if !$crate::testkit::namespace::inside() {
            return;
        }
    };
}

/// Set in the environment of the re-run test; its value is the test's name.
pub const MARKER: &str = "UNMTA_TEST_NAMESPACE";

/// What the re-run does before the test starts: loopback up, `/run` private.
const SETUP: &str = "PATH=$PATH:/usr/sbin:/sbin; ip link set lo up && \
                     mount -t tmpfs -o mode=0755 tmpfs /run && exec \"$@\"";

/// `true` when the calling test runs in its own namespace: go on with the
/// test. Otherwise runs this test again in one, panics if it failed there,
/// and returns `false`: the caller returns at once. Call it first, before
/// the test starts anything.
pub fn inside() -> bool {
    let thread = std::thread::current();
    let test = thread
        .name()
        .filter(|name| *name != "main")
        .expect("namespace::inside() is called on the test's own thread (libtest names it)")
        .to_string();
    if std::env::var(MARKER).is_ok_and(|marker| marker == test) {
        return true;
    }
    run_in_namespace(&test);
    false
}

/// Runs `test` of this test executable under `unshare`; panics naming the
/// test, with its output, if it fails or cannot start.
fn run_in_namespace(test: &str) {
    for (tool, package) in [
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("mount", "mount"),
    ] {
        assert!(
            on_path(tool),
            "{test} runs in its own namespace and needs `{tool}` (Debian package {package})"
        );
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let output = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", SETUP, "sh"])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(MARKER, test)
        .output()
        .unwrap_or_else(|e| panic!("{test}: cannot run `unshare`: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Shown with the parent's output (libtest shows it when a test fails).
    print!("{said}");
    assert!(
        output.status.success(),
        "{test} failed in its own user and network namespace ({}):\n{said}\n\
         If `unshare` itself was refused, this kernel does not allow unprivileged user \
         namespaces (sysctl kernel.unprivileged_userns_clone=1, or AppArmor's \
         kernel.apparmor_restrict_unprivileged_userns=0).",
        output.status
    );
}

/// `tool` on `PATH` or in the sbin folders a non-root `PATH` may lack.
fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| dir.join(tool).is_file())
}
