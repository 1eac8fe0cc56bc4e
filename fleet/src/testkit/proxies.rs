//! The real egress proxies (and Redis) as child processes for tests:
//! Debian's `danted` (SOCKS5, optionally with RFC 1929 username/password),
//! `haproxy` (PROXY v2 in, `source 0.0.0.0 usesrc clientip` out, as
//! KumoMTA documents it) and `redis-server`. Each runs in its own process
//! group with a config in its own temporary folder, and is stopped (the
//! whole group) when dropped.
//!
//! Dante checks usernames and passwords against the system's password
//! files; the test user exists only in a private mount namespace
//! (`unshare -m`) where copies of `/etc/passwd` and `/etc/shadow` with the
//! user added are bind-mounted over the real ones, so the host is never
//! changed. That, and HAProxy's transparent source, need root: tests that
//! use them run in a namespace of their own ([`super::namespace`]).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A started proxy, killed with its process group when dropped.
pub struct ProxyProcess {
    child: Child,
    pub listen: SocketAddr,
    pub log: PathBuf,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `command` in a new process group, its output in `log`.
    fn spawn(
        mut command: Command,
        listen: SocketAddr,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<ProxyProcess> {
        let log = dir.path().join("output.log");
        let out = std::fs::File::create(&log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        Ok(ProxyProcess {
            child,
            listen,
            log,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the process wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the listener accepts a TCP connection, at most `limit`.
    pub async fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("exited with {status}: {}", self.output());
            }
            if tokio::net::TcpStream::connect(self.listen).await.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < limit,
                "nothing listens on {} after {limit:?}: {}",
                self.listen,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([
                &format!("-{signal}"),
                "--",
                &format!("-{}", self.child.id()),
            ])
            .stderr(Stdio::null())
            .status();
    }

    /// SIGKILL to the whole group (a proxy host dying), and waits.
    pub fn kill(&mut self) {
        self.signal_group("KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM to the whole group, SIGKILL after 5 s, and waits.
    pub fn stop(&mut self) {
        self.signal_group("TERM");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                // Children the leader left behind go too.
                self.signal_group("KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        } else {
            self.signal_group("KILL");
        }
    }
}

/// `danted.conf` for a server on `listen` whose connections leave from
/// `external`; with `username_auth`, RFC 1929 against the system's users.
pub fn dante_config(listen: SocketAddr, external: IpAddr, username_auth: bool) -> String {
    let method = if username_auth { "username" } else { "none" };
    // A user namespace maps root alone: Dante cannot switch to nobody there.
    let unprivileged = if in_user_namespace() {
        "root"
    } else {
        "nobody"
    };
    format!(
        "logoutput: stderr\n\
         internal: {} port = {}\n\
         external: {external}\n\
         socksmethod: {method}\n\
         clientmethod: none\n\
         user.privileged: root\n\
         user.unprivileged: {unprivileged}\n\
         client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n\
         socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect }}\n",
        listen.ip(),
        listen.port(),
    )
}

/// Whether this process runs in a user namespace that maps only some ids
/// (the initial one maps them all).
fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|map| map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}

/// `haproxy.cfg` for PROXY v2 in on `listen`, out to the destination the
/// header names from the source it names.
pub fn haproxy_config(listen: SocketAddr) -> String {
    format!(
        "global\n  log stderr format short local0 info\n\
         defaults\n  mode tcp\n  log global\n  option tcplog\n\
         \x20 timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend egress\n  bind {listen} accept-proxy\n  default_backend out\n\
         backend out\n  source 0.0.0.0 usesrc clientip\n  server destination 0.0.0.0\n"
    )
}

/// A Dante SOCKS5 server on `listen` whose connections leave from
/// `external`; with `auth`, only that username and password get in.
pub fn dante(
    listen: SocketAddr,
    external: IpAddr,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<ProxyProcess> {
    let dir = tempfile::tempdir()?;
    let config = dante_config(listen, external, auth.is_some());
    let config_file = dir.path().join("danted.conf");
    std::fs::write(&config_file, config)?;
    let danted = format!("exec danted -f {} -N 1", config_file.display());
    let command = match auth {
        None => {
            let mut command = Command::new("sh");
            command.args(["-c", &danted]);
            command
        }
        Some((user, password)) => {
            let (passwd, shadow) = password_files(dir.path(), user, password)?;
            let mut command = Command::new("unshare");
            command.args([
                "-m",
                "sh",
                "-c",
                &format!(
                    "mount --bind {} /etc/passwd && mount --bind {} /etc/shadow && {danted}",
                    passwd.display(),
                    shadow.display()
                ),
            ]);
            command
        }
    };
    ProxyProcess::spawn(command, listen, dir)
}

/// Copies of the system's password files with `user` added.
fn password_files(dir: &Path, user: &str, password: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    anyhow::ensure!(
        user.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "test user name `{user}` must be letters, digits, `-` or `_`"
    );
    let hashed = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run openssl passwd")
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .context("openssl's stdin")?
                .write_all(password.as_bytes())?;
            Ok(child.wait_with_output()?)
        })?;
    anyhow::ensure!(hashed.status.success(), "openssl passwd failed");
    let hash = String::from_utf8(hashed.stdout)?.trim().to_string();
    let passwd = dir.join("passwd");
    let shadow = dir.join("shadow");
    let mut passwd_text = std::fs::read_to_string("/etc/passwd")?;
    passwd_text.push_str(&format!(
        "{user}:x:64999:64999::/nonexistent:/usr/sbin/nologin\n"
    ));
    let mut shadow_text = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    shadow_text.push_str(&format!("{user}:{hash}:19000:0:99999:7:::\n"));
    std::fs::write(&passwd, passwd_text)?;
    std::fs::write(&shadow, shadow_text)?;
    Ok((passwd, shadow))
}

/// An HAProxy listening on `listen` for PROXY v2 connections and
/// connecting to the destination the header names, from the source it
/// names (`source 0.0.0.0 usesrc clientip`, `server 0.0.0.0`).
pub fn haproxy(listen: SocketAddr) -> anyhow::Result<ProxyProcess> {
    let dir = tempfile::tempdir()?;
    let config = haproxy_config(listen);
    let config_file = dir.path().join("haproxy.cfg");
    std::fs::write(&config_file, config)?;
    let mut command = Command::new("haproxy");
    command.arg("-f").arg(&config_file).arg("-db");
    ProxyProcess::spawn(command, listen, dir)
}

/// A Redis server on `listen`, nothing saved to disk.
pub fn redis(listen: SocketAddr) -> anyhow::Result<ProxyProcess> {
    let dir = tempfile::tempdir()?;
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", &listen.ip().to_string()])
        .args(["--port", &listen.port().to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir.path());
    ProxyProcess::spawn(command, listen, dir)
}
