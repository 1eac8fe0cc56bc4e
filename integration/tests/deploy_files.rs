//! The deployment files in configs/deploy: hardened systemd units (checked
//! by `systemd-analyze verify` where it is installed), and the compose
//! sample's node configs, which every daemon must accept as they are.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/deploy")
}

const DAEMONS: [&str; 3] = ["mta", "healthd", "lb-dns"];

fn unit(daemon: &str) -> String {
    let path = deploy().join(format!("systemd/unmta-{daemon}.service"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every value of `key` in the unit.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_systemd_units_are_hardened_and_reload_with_sighup() {
    for daemon in DAEMONS {
        let unit = unit(daemon);
        let one = |key: &str| -> &str {
            let found = values(&unit, key);
            assert_eq!(found.len(), 1, "{daemon}: {key} {found:?}");
            found[0]
        };
        assert_eq!(one("DynamicUser"), "yes", "{daemon}");
        assert_eq!(one("ProtectSystem"), "strict", "{daemon}");
        assert_eq!(
            one("AmbientCapabilities"),
            "CAP_NET_BIND_SERVICE",
            "{daemon}"
        );
        assert_eq!(
            one("CapabilityBoundingSet"),
            "CAP_NET_BIND_SERVICE",
            "{daemon}"
        );
        assert_eq!(one("NoNewPrivileges"), "yes", "{daemon}");
        assert_eq!(one("Restart"), "on-failure", "{daemon}");
        assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID", "{daemon}");
        assert_eq!(
            one("ExecStart"),
            format!("/usr/local/bin/{daemon} --config /etc/unmta/{daemon}.toml")
        );
        assert_eq!(one("StateDirectory"), format!("unmta-{daemon}"));
    }
    // The MTA's planned stop needs more time than the others' shutdown.
    assert_eq!(values(&unit("mta"), "TimeoutStopSec"), ["90s"]);
}

#[test]
fn systemd_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed; the units' keys are checked above");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for daemon in DAEMONS {
        // The binaries are not installed here: any executable will do.
        let text = unit(daemon).replace(&format!("/usr/local/bin/{daemon}"), "/bin/true");
        std::fs::write(dir.path().join(format!("unmta-{daemon}.service")), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(DAEMONS.map(|d| dir.path().join(format!("unmta-{d}.service"))))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

/// The compose sample's configs with the example certificates beside them,
/// as the compose file mounts them.
fn compose_configs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(deploy().join("compose")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/tls");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tls.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn every_daemon_accepts_the_compose_samples_configs() {
    let dir = compose_configs();
    let compose = std::fs::read_to_string(deploy().join("compose.yaml")).unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".toml") || name == "fleet.toml" {
            continue;
        }
        let error = if name.starts_with("mta-") {
            mta::Settings::load(&path).err().map(|e| e.to_string())
        } else if name.starts_with("healthd-") {
            healthd::Settings::load(&path).err().map(|e| e.to_string())
        } else {
            lb_dns::config::Settings::load(&path)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(error, None, "{name}");
        assert!(
            compose.contains(&format!("/etc/unmta/{name}\"]")),
            "compose.yaml runs no service with {name}"
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
    let mta = mta::Settings::load(&dir.path().join("mta-1.toml")).unwrap();
    assert!(
        mta.node.planned_stop.max_wait < std::time::Duration::from_secs(90),
        "the planned stop must end within compose's stop_grace_period"
    );
}

#[test]
fn the_images_entrypoint_names_its_roles() {
    let script = deploy().join("unmta-entrypoint");
    let out = Command::new("sh")
        .arg(&script)
        .arg("sendmail")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mta|healthd|lb-dns|fleet"));
    let containerfile = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    assert!(containerfile.contains("ENTRYPOINT [\"/usr/local/bin/unmta-entrypoint\"]"));
}
