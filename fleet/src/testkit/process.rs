//! Driving a daemon's real binary in a test: start it, wait for its admin
//! endpoints, signal it, and wait for its exit - every wait bounded.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Polls `condition` every 20 ms until it holds, checking once more when
/// `limit` has passed; the error says `what` was not true. The one polling
/// helper of every test.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < limit, "{what}: not true within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A daemon process, killed when dropped.
pub struct DaemonProcess {
    child: Child,
}

impl DaemonProcess {
    pub fn start(binary: &Path, config: &Path) -> anyhow::Result<DaemonProcess> {
        let child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        Ok(DaemonProcess { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {} failed", self.pid());
        Ok(())
    }

    /// SIGTERM, then [`DaemonProcess::wait_exit`]: `Ok` only for exit 0.
    pub async fn terminate(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.signal("TERM")?;
        let status = self.wait_exit(limit).await?;
        anyhow::ensure!(
            status.success(),
            "process {} exited {status} after SIGTERM",
            self.pid()
        );
        Ok(())
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                start.elapsed() < limit,
                "process {} still running after {limit:?}",
                self.pid()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `command` to its end and returns its standard output; panics with
/// both outputs if it cannot start or exits unsuccessfully.
pub fn output_of(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// GETs `url` and returns the status and body, or `None` if nothing answers.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The standard lifecycle every daemon must pass, run against its binary
/// with a relocated copy of `configs/`: answers `/live`, reloads a good
/// fleet edit on SIGHUP, names a changed start-up-only key in `/status`,
/// refuses a broken edit while the old keeps serving, and exits 0 on
/// SIGTERM within its grace time.
pub async fn check_lifecycle(
    binary: &Path,
    config_name: &str,
    base: [u8; 3],
) -> anyhow::Result<()> {
    let configs = super::example_configs::ExampleConfigs::relocated(base)?;
    // healthd serves its admin endpoints on its one HTTP listener.
    let admin = configs
        .get(config_name, "admin_listen")
        .or_else(|_| configs.get(config_name, "listen"))?;
    let status_url = format!("http://{admin}/status");
    let mut daemon = DaemonProcess::start(binary, &configs.path(config_name))?;

    let live_url = format!("http://{admin}/live");
    eventually(Duration::from_secs(20), "GET /live answers 200", || async {
        matches!(http_get(&live_url).await, Some((200, _)))
    })
    .await?;
    let config_status = || async {
        let (_, body) = http_get(&status_url).await?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(status["config"].clone())
    };
    let version = || async {
        let config = config_status().await?;
        Some((
            config["version"].as_u64()?,
            config["last_error"].as_str().map(str::to_string),
        ))
    };
    anyhow::ensure!(
        version().await == Some((0, None)),
        "fresh daemon reports {:?}",
        version().await
    );

    // A good edit: a second MTA for the single-MTA cluster.
    let fleet = configs.path("fleet.toml");
    let text = std::fs::read_to_string(&fleet)?;
    // Inserted before [[accounts]] so it belongs to the last cluster.
    let at = text
        .find("[[accounts]]")
        .ok_or_else(|| anyhow::anyhow!("the example fleet has no [[accounts]]"))?;
    let beta2 = format!(
        "[[clusters.mtas]]\nname = \"beta-2\"\nipv4 = \"{}.{}.{}.99\"\n\n",
        base[0], base[1], base[2]
    );
    let added = format!("{}{beta2}{}", &text[..at], &text[at..]);
    std::fs::write(&fleet, &added)?;
    daemon.signal("HUP")?;
    eventually(
        Duration::from_secs(10),
        "the good edit is loaded",
        || async { version().await == Some((1, None)) },
    )
    .await?;

    // A start-up-only setting (every daemon has log_format): the rest of
    // the reload applies, and /status names what needs a restart.
    configs.edit(config_name, |doc| {
        doc["log_format"] = toml_edit::value("json")
    })?;
    daemon.signal("HUP")?;
    eventually(
        Duration::from_secs(10),
        "the reload names log_format as needing a restart",
        || async {
            config_status().await.is_some_and(|config| {
                config["version"] == 2
                    && config["last_error"].is_null()
                    && config["restart_required"] == serde_json::json!(["log_format"])
            })
        },
    )
    .await?;

    // A broken edit is refused and the previous fleet keeps serving.
    std::fs::write(&fleet, added.replace("500/hr", "500/fortnight"))?;
    daemon.signal("HUP")?;
    eventually(
        Duration::from_secs(10),
        "the broken edit is refused",
        || async {
            matches!(version().await, Some((2, Some(error))) if error.contains("fortnight"))
        },
    )
    .await?;
    anyhow::ensure!(
        matches!(http_get(&live_url).await, Some((200, _))),
        "daemon stopped answering /live"
    );

    daemon.signal("TERM")?;
    let status = daemon.wait_exit(Duration::from_secs(15)).await?;
    anyhow::ensure!(status.success(), "exit after SIGTERM was {status}");
    Ok(())
}

/// `<binary> --check --config configs/<config_name>` exits 0 and says so.
pub fn check_accepts_example_config(binary: &Path, config_name: &str) -> anyhow::Result<()> {
    let config = super::example_configs::repo_configs().join(config_name);
    let out = Command::new(binary)
        .arg("--check")
        .arg("--config")
        .arg(&config)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(said.contains("is valid"), "--check said: {said}");
    Ok(())
}

/// The binary started from a relocated copy of `configs/`, reloaded once so
/// that its reload counter has a sample: its `/metrics` passes
/// [`super::promtool::check_daemon_metrics`] with `prefix`.
pub async fn check_example_metrics(
    binary: &Path,
    config_name: &str,
    base: [u8; 3],
    prefix: &str,
) -> anyhow::Result<()> {
    let configs = super::example_configs::ExampleConfigs::relocated(base)?;
    let admin = configs
        .get(config_name, "admin_listen")
        .or_else(|_| configs.get(config_name, "listen"))?;
    let daemon = DaemonProcess::start(binary, &configs.path(config_name))?;
    let status_url = format!("http://{admin}/status");
    eventually(Duration::from_secs(20), "GET /status answers", || async {
        matches!(http_get(&status_url).await, Some((200, _)))
    })
    .await?;
    daemon.signal("HUP")?;
    eventually(Duration::from_secs(10), "the reload is counted", || async {
        let Some((_, body)) = http_get(&status_url).await else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|status| status["config"]["version"] == 1)
    })
    .await?;
    super::promtool::check_daemon_metrics(&format!("http://{admin}/metrics"), prefix).await
}

/// The tests every daemon's `tests/lifecycle.rs` holds, run against its
/// binary from a relocated copy of `configs/`: [`check_lifecycle`] on
/// `base`, [`check_accepts_example_config`], and [`check_example_metrics`]
/// on `metrics_base` with the daemon's metric `prefix`.
#[macro_export]
macro_rules! daemon_binary_tests {
    (binary: $binary:expr, config: $config:literal, prefix: $prefix:literal, base: $base:expr, metrics_base: $metrics_base:expr $(,)?) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn starts_reloads_and_stops_from_the_example_configs() {
            $crate::testkit::process::check_lifecycle(
                std::path::Path::new($binary),
                $config,
                $base,
            )
            .await
            .unwrap();
        }

        #[test]
        fn check_accepts_the_example_config() {
            $crate::testkit::process::check_accepts_example_config(
                std::path::Path::new($binary),
                $config,
            )
            .unwrap();
        }

        /// Its real `/metrics` passes `promtool check metrics`, every family
        /// named with its prefix, and Prometheus's `Accept` gets OpenMetrics.
        #[tokio::test(flavor = "multi_thread")]
        async fn metrics_pass_promtool() {
            $crate::testkit::process::check_example_metrics(
                std::path::Path::new($binary),
                $config,
                $metrics_base,
                $prefix,
            )
            .await
            .unwrap();
        }
    };
}
