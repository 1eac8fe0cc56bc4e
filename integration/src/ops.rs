//! Operating a running local cluster from another terminal: add an MTA,
//! restart a process, reload the fleet file. The command leaves a request
//! file in `<state-dir>/requests/` and wakes the supervising local-cluster
//! with SIGUSR1, which owns every child and answers in `<request>.done`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::info::ClusterInfo;
use crate::plan::{Layout, Plan};
use crate::supervisor::send_signal;

/// What a request asks the supervisor to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Start a process the fleet file has and the supervisor does not run.
    Start(String),
    Restart(String),
    Reload,
}

impl Request {
    pub fn file_name(&self) -> String {
        match self {
            Request::Start(name) => format!("start-{name}"),
            Request::Restart(name) => format!("restart-{name}"),
            Request::Reload => "reload".to_string(),
        }
    }

    pub fn parse(file_name: &str) -> Option<Request> {
        if file_name == "reload" {
            return Some(Request::Reload);
        }
        if let Some(name) = file_name.strip_prefix("start-") {
            return Some(Request::Start(name.to_string()));
        }
        file_name
            .strip_prefix("restart-")
            .map(|name| Request::Restart(name.to_string()))
    }
}

/// Sends `request` to the local-cluster supervising `state_dir` and waits
/// for its answer.
pub fn send(state_dir: &Path, request: &Request) -> anyhow::Result<String> {
    let info = ClusterInfo::load(state_dir)?;
    // Signal 0 only checks that the process exists.
    anyhow::ensure!(
        send_signal(info.supervisor_pid, 0),
        "the local-cluster of {} (pid {}) is not running",
        state_dir.display(),
        info.supervisor_pid
    );
    let layout = Layout::new(state_dir);
    let path = layout.requests_dir().join(request.file_name());
    let done = path.with_extension("done");
    let _ = std::fs::remove_file(&done);
    std::fs::write(&path, b"").with_context(|| format!("cannot write {}", path.display()))?;
    send_signal(info.supervisor_pid, libc::SIGUSR1);
    let limit = Duration::from_secs(60);
    let started = Instant::now();
    loop {
        if let Ok(answer) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            return match answer.strip_prefix("error: ") {
                Some(error) => Err(anyhow::anyhow!("{}", error.trim_end())),
                None => Ok(answer.trim_end().to_string()),
            };
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "local-cluster (pid {}) did not answer {} within {limit:?}",
            info.supervisor_pid,
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--add-mta`: the next MTA goes into the fleet file with its config,
/// then the supervisor starts it and SIGHUPs lb-dns, healthd and the MTAs.
pub fn add_mta(state_dir: &Path) -> anyhow::Result<String> {
    let plan = Plan::load(state_dir)?
        .with_context(|| format!("{} holds no local cluster", state_dir.display()))?;
    // Fails early when nothing is running, before the fleet file changes.
    let info = ClusterInfo::load(state_dir)?;
    anyhow::ensure!(
        send_signal(info.supervisor_pid, 0),
        "the local-cluster of {} is not running",
        state_dir.display()
    );
    let layout = Layout::new(state_dir);
    let entry = crate::state::add_mta(&layout, &plan)?;
    let answer = send(state_dir, &Request::Start(entry.name.clone()))?;
    Ok(format!(
        "{} ({}) added to {}; {answer}; it joins the DNS answers once healthd has seen it pass its probes",
        entry.name,
        entry.ipv4,
        layout.fleet_file().display()
    ))
}

/// The requests waiting in `state_dir`, oldest first.
pub fn pending(layout: &Layout) -> Vec<(std::path::PathBuf, Request)> {
    let Ok(entries) = std::fs::read_dir(layout.requests_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let request = Request::parse(&name).filter(|_| !name.ends_with(".done"))?;
            let modified = e.metadata().and_then(|m| m.modified()).ok();
            Some((modified, e.path(), request))
        })
        .collect();
    found.sort_by_key(|(modified, _, _)| *modified);
    found.into_iter().map(|(_, path, r)| (path, r)).collect()
}

/// Answers a request: the text goes to `<request>.done`.
pub fn answer(path: &Path, result: &anyhow::Result<String>) {
    let text = match result {
        Ok(text) => text.clone(),
        Err(error) => format!("error: {error:#}"),
    };
    let _ = std::fs::remove_file(path);
    let _ = std::fs::write(path.with_extension("done"), text);
}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn request_names_round_trip() {
        for request in [
            Request::Start("mta-4".into()),
            Request::Restart("healthd".into()),
            Request::Reload,
        ] {
            assert_eq!(Request::parse(&request.file_name()), Some(request));
        }
        assert_eq!(Request::parse("something-else"), None);
    }
}
