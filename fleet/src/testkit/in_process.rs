//! A daemon's `run(settings, listeners, control)` on a task of the test's
//! runtime, driven through the [`Control`] its signals would drive.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::Control;

/// A daemon running in this process.
pub struct InProcess {
    control: Control,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Spawns `run` with a fresh control (as `main` would).
    pub fn spawn<F>(run: impl FnOnce(Control) -> F) -> InProcess
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let control = Control::new();
        let task = tokio::spawn(run(control.clone()));
        InProcess { control, task }
    }

    /// What SIGHUP does.
    pub fn reload(&self) {
        self.control.request_reload();
    }

    /// Starts the shutdown SIGTERM starts, without waiting for it.
    pub fn shutdown(&self) {
        self.control.shutdown.cancel();
    }

    /// Shuts down and waits, at most `limit`, for `run` to return `Ok`;
    /// panics otherwise.
    pub async fn stop(self, limit: Duration) {
        self.control.shutdown.cancel();
        tokio::time::timeout(limit, self.task)
            .await
            .unwrap_or_else(|_| panic!("the daemon did not stop within {limit:?}"))
            .expect("the daemon's task did not panic")
            .expect("the daemon's run returned Ok");
    }
}
