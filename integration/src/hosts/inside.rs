//! Running Rust clients inside a host's namespace: a thread joins the
//! namespace (`setns`), and every socket its single-threaded runtime opens
//! lives there. Connect to addresses, never names (no resolver threads).

use std::future::Future;
use std::os::fd::AsRawFd;

use anyhow::Context;

/// Runs `make()`'s future to completion on a thread inside namespace `ns`.
pub fn block_on_in<F, Fut, T>(ns: &str, make: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    let thread = std::thread::Builder::new().name(format!("in-{ns}")).spawn(
        move || -> anyhow::Result<T> {
            enter(&path)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(make())
        },
    )?;
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread in {ns} panicked"))?
}

/// The same, awaited from async code without blocking its runtime.
pub async fn run_in<F, Fut, T>(ns: &str, make: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || block_on_in(&ns, make)).await?
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: a valid namespace fd; setns affects only this thread.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    anyhow::ensure!(
        result == 0,
        "setns({path}) failed: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}
