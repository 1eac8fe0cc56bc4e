//! Process control every daemon shares: SIGTERM/SIGINT start a graceful
//! shutdown, SIGHUP asks for a reload. A daemon that takes planned stops
//! (the MTA) turns SIGTERM into a stop request first: it leaves service
//! its own way, then shuts down; a second SIGTERM or a SIGINT shuts down
//! at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shutdown and reload requests, cloned into every task that needs them.
#[derive(Clone, Default)]
pub struct Control {
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Cancelled by SIGTERM when planned stops are on (see
    /// [`Control::take_planned_stops`]).
    pub stop_requested: CancellationToken,
    planned_stops: Arc<AtomicBool>,
    reload: Arc<Notify>,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a reload; requests made while one is pending coalesce.
    pub fn request_reload(&self) {
        self.reload.notify_one();
    }

    pub async fn reload_requested(&self) {
        self.reload.notified().await
    }

    /// From now on the first SIGTERM cancels `stop_requested` only; the
    /// daemon cancels `shutdown` when it has left service.
    pub fn take_planned_stops(&self) {
        self.planned_stops.store(true, Ordering::SeqCst);
    }

    /// What SIGTERM does: a planned stop the first time when they are on,
    /// else (and the second time) a shutdown.
    pub fn terminate(&self) {
        if self.planned_stops.load(Ordering::SeqCst) && !self.stop_requested.is_cancelled() {
            tracing::info!("SIGTERM received: planned stop (a second SIGTERM stops at once)");
            self.stop_requested.cancel();
        } else {
            tracing::info!("SIGTERM received: shutting down");
            self.stop_requested.cancel();
            self.shutdown.cancel();
        }
    }

    /// Turns SIGTERM and SIGINT into a shutdown, and SIGHUP into a reload.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let control = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => control.terminate(),
                    _ = int.recv() => {
                        tracing::info!("SIGINT received: shutting down");
                        control.shutdown.cancel();
                    }
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: reloading configuration");
                        control.request_reload();
                    }
                }
            }
        });
        Ok(())
    }

    /// Waits for shutdown, then up to `grace` for tracked tasks to finish.
    /// Returns false if some task was still running when the grace ran out.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.shutdown.cancelled().await;
        self.tasks.close();
        match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => true,
            Err(_) => {
                tracing::warn!(
                    grace_secs = grace.as_secs_f64(),
                    remaining = self.tasks.len(),
                    "grace time over; stopping with tasks still running"
                );
                false
            }
        }
    }
}
