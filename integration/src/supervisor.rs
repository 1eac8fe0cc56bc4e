//! The child processes of a local cluster: each daemon is `local-cluster`
//! itself re-executed with a hidden subcommand, its output in
//! `<state-dir>/logs/<name>.log`. A child that dies is reported, never
//! restarted behind the operator's back.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::info::ProcessRole;
use crate::plan::Layout;

/// How to start one child.
#[derive(Debug, Clone)]
pub struct Spec {
    pub role: ProcessRole,
    pub name: String,
    pub address: Ipv4Addr,
    pub admin_url: Option<String>,
    pub args: Vec<OsString>,
}

#[derive(Debug)]
pub struct Child {
    pub spec: Spec,
    pub pid: u32,
    pub running: bool,
    pub last_exit: Option<String>,
}

#[derive(Debug)]
pub struct Exit {
    pub name: String,
    pub pid: u32,
    pub status: String,
}

pub struct Supervisor {
    pub layout: Layout,
    exe: PathBuf,
    pub children: Vec<Child>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    stopping: bool,
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => status.to_string(),
        },
        Err(e) => format!("unknown status ({e})"),
    }
}

/// Sends `signal` to `pid`; false when there is no such process.
pub fn send_signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, signal) == 0 }
}

impl Supervisor {
    pub fn new(layout: Layout) -> anyhow::Result<Supervisor> {
        let exe = std::env::current_exe().context("cannot find the local-cluster executable")?;
        let (exits_tx, exits) = mpsc::unbounded_channel();
        Ok(Supervisor {
            layout,
            exe,
            children: Vec::new(),
            exits_tx,
            exits,
            stopping: false,
        })
    }

    pub fn child(&self, name: &str) -> Option<&Child> {
        self.children.iter().find(|c| c.spec.name == name)
    }

    /// Starts (or starts again) the child `spec` describes.
    ///
    /// Call it from the thread that runs the supervisor for the cluster's
    /// lifetime: children get SIGTERM when that thread ends.
    pub fn start(&mut self, spec: Spec) -> anyhow::Result<u32> {
        let log_path = self.layout.log(&spec.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open the log {}", log_path.display()))?;
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false);
        // SAFETY: prctl and setpgid are async-signal-safe; nothing else runs
        // in the child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // The child stops when local-cluster is gone, however it went.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Its own process group: Ctrl-C in the terminal reaches only
                // local-cluster, which stops the children in order.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {} ({})", spec.name, self.exe.display()))?;
        let pid = child.id().context("a child exited before it had a pid")?;
        let tx = self.exits_tx.clone();
        let name = spec.name.clone();
        tokio::spawn(async move {
            let status = describe(child.wait().await);
            let _ = tx.send(Exit { name, pid, status });
        });
        let entry = Child {
            spec,
            pid,
            running: true,
            last_exit: None,
        };
        match self
            .children
            .iter_mut()
            .find(|c| c.spec.name == entry.spec.name)
        {
            Some(existing) => *existing = entry,
            None => self.children.push(entry),
        }
        Ok(pid)
    }

    pub fn signal(&self, name: &str, signal: i32) -> bool {
        self.child(name)
            .filter(|c| c.running)
            .is_some_and(|c| send_signal(c.pid, signal))
    }

    /// SIGHUP to lb-dns, healthd and every MTA: reload the fleet file.
    pub fn reload_daemons(&self) -> Vec<String> {
        self.children
            .iter()
            .filter(|c| c.running && c.spec.role.is_daemon())
            .filter(|c| send_signal(c.pid, libc::SIGHUP))
            .map(|c| c.spec.name.clone())
            .collect()
    }

    /// Stops `name` if it runs (SIGTERM, SIGKILL after `grace`), then starts
    /// it again. Other children's exits seen meanwhile are handled too.
    pub async fn restart(&mut self, name: &str, grace: Duration) -> anyhow::Result<u32> {
        let child = self
            .child(name)
            .with_context(|| format!("no process named `{name}` in this cluster"))?;
        let spec = child.spec.clone();
        if child.running {
            let pid = child.pid;
            send_signal(pid, libc::SIGTERM);
            let mut deadline = tokio::time::Instant::now() + grace;
            let mut killed = false;
            while self.child(name).is_some_and(|c| c.running) {
                match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                    Ok(Some(exit)) => {
                        let expected = exit.name == name;
                        self.handle_exit(&exit, expected);
                    }
                    Ok(None) => break,
                    Err(_) if !killed => {
                        send_signal(pid, libc::SIGKILL);
                        killed = true;
                        deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    }
                    Err(_) => anyhow::bail!("{name} (pid {pid}) did not exit even after SIGKILL"),
                }
            }
        }
        self.start(spec)
    }

    /// The next child exit, `None` never (the supervisor holds a sender).
    pub async fn next_exit(&mut self) -> Option<Exit> {
        self.exits.recv().await
    }

    /// Records an exit and, unless it was `expected` or the cluster is
    /// stopping, reports it with the command that starts the child again.
    pub fn handle_exit(&mut self, exit: &Exit, expected: bool) {
        let stopping = self.stopping;
        let root = self.layout.root.clone();
        let Some(child) = self
            .children
            .iter_mut()
            .find(|c| c.spec.name == exit.name && c.pid == exit.pid)
        else {
            return;
        };
        child.running = false;
        child.last_exit = Some(exit.status.clone());
        if !expected && !stopping {
            eprintln!(
                "local-cluster: {} (pid {}) exited unexpectedly: {}; it stays down until \
                 `local-cluster restart {} --state-dir {}`",
                exit.name,
                exit.pid,
                exit.status,
                exit.name,
                root.display()
            );
        }
    }

    pub fn running(&self) -> usize {
        self.children.iter().filter(|c| c.running).count()
    }

    /// SIGTERM to every child, MTAs first; SIGKILL to what is left after
    /// `grace`. Returns the names that had to be killed.
    pub async fn stop_all(&mut self, grace: Duration) -> Vec<String> {
        self.stopping = true;
        let order = [
            ProcessRole::Mta,
            ProcessRole::Healthd,
            ProcessRole::LbDns,
            ProcessRole::Sink,
            ProcessRole::Dns,
        ];
        for role in order {
            for child in self
                .children
                .iter()
                .filter(|c| c.running && c.spec.role == role)
            {
                send_signal(child.pid, libc::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.running() > 0 {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some(exit)) => self.handle_exit(&exit, true),
                _ => break,
            }
        }
        let mut killed = Vec::new();
        for child in self.children.iter().filter(|c| c.running) {
            send_signal(child.pid, libc::SIGKILL);
            killed.push(child.spec.name.clone());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.running() > 0 {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some(exit)) => self.handle_exit(&exit, true),
                _ => break,
            }
        }
        killed
    }

    /// The last lines of a child's log, for error messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.layout.log(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}
