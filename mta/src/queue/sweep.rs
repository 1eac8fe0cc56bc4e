//! Admin bounces: orders to take queued recipients out of the queue by
//! cluster, recipient domain or message id, handed to the scheduler, which
//! passes the candidates to the delivery engine to bounce or put back.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::spool::Job;

/// What an admin bounce applies to; every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BounceSelector {
    /// The cluster the messages were submitted under.
    pub cluster: Option<String>,
    /// The recipient domain.
    pub domain: Option<String>,
    /// The message id.
    pub id: Option<String>,
}

impl BounceSelector {
    pub fn is_empty(&self) -> bool {
        self.cluster.is_none() && self.domain.is_none() && self.id.is_none()
    }

    /// Whether the job may match without reading its message.
    pub fn may_match(&self, job: &Job) -> bool {
        self.id
            .as_deref()
            .is_none_or(|id| id.eq_ignore_ascii_case(&job.id().0))
    }

    pub fn matches(&self, job: &Job, cluster: &str, recipient: &str) -> bool {
        self.may_match(job)
            && self.cluster.as_deref().is_none_or(|c| c == cluster)
            && self.domain.as_deref().is_none_or(|d| {
                recipient
                    .rsplit_once('@')
                    .is_some_and(|(_, domain)| domain.eq_ignore_ascii_case(d))
            })
    }
}

/// One admin bounce: what, why, and where to report how many were bounced.
pub struct BounceOrder {
    pub selector: BounceSelector,
    pub reason: String,
    pub done: oneshot::Sender<usize>,
}

/// Orders waiting for the scheduler.
#[derive(Clone, Default)]
pub struct Sweeps {
    inner: Arc<(Mutex<Vec<BounceOrder>>, Notify)>,
}

impl Sweeps {
    pub fn push(&self, order: BounceOrder) {
        self.inner.0.lock().push(order);
        self.inner.1.notify_one();
    }

    pub fn take(&self) -> Vec<BounceOrder> {
        std::mem::take(&mut *self.inner.0.lock())
    }

    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.1.notified()
    }
}
