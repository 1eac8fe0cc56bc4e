//! One delivery attempt, step by step: the envelope checked, the route
//! planned, the message signed, then the route's hosts tried in order.

use bytes::Bytes;
use lettre::address::{Address, Envelope};

use super::config::StartTls;
use super::egress::Via;
use super::route::{NoRoute, Target};
use super::smtp::Reply;
use super::{Engine, Outcome, Reached, Setup};
use crate::spool::{Job, StoredMessage};

impl Engine {
    /// Sends `message` to `job`'s recipient over `via` (when the cluster
    /// has egress sources); what came of it.
    pub(super) async fn attempt(
        &self,
        setup: &Setup,
        message: &StoredMessage,
        job: &Job,
        via: Option<&Via>,
    ) -> Outcome {
        let (domain, envelope) = match self.envelope(message, job) {
            Ok(found) => found,
            Err(text) => return Outcome::Permanent(Reached::here(text)),
        };
        let targets = match setup.router.plan(domain).await {
            Ok(targets) => targets,
            Err(NoRoute::Permanent(text)) => return Outcome::Permanent(Reached::here(text)),
            Err(NoRoute::Transient(text)) => return Outcome::Transient(Reached::here(text)),
        };
        let data = signed(setup, message, job).await;
        let tls = setup
            .config
            .route_starttls
            .get(&domain.to_ascii_lowercase())
            .copied()
            .unwrap_or(setup.config.starttls);
        self.try_targets(setup, &targets, &envelope, &data, via, tls)
            .await
    }

    /// The recipient's domain and the envelope on the wire, or why the
    /// spool record cannot be sent (a permanent failure).
    fn envelope<'m>(
        &self,
        message: &'m StoredMessage,
        job: &Job,
    ) -> Result<(&'m str, Envelope), String> {
        let Some(recipient) = message.recipients.get(job.rcpt as usize) else {
            return Err("the spool record has no such recipient".into());
        };
        let Some(domain) = crate::policy::domain_of(recipient) else {
            return Err(format!("550 5.1.3 `{recipient}` has no domain"));
        };
        let Ok(to) = recipient.parse::<Address>() else {
            return Err(format!("550 5.1.3 `{recipient}` is not a valid address"));
        };
        let return_path = self.return_path(message, job);
        let from = if return_path.is_empty() {
            None
        } else {
            Some(return_path.parse::<Address>().map_err(|_| {
                format!(
                    "550 5.1.7 the envelope sender `{}` is not a valid address",
                    message.sender
                )
            })?)
        };
        let envelope = Envelope::new(from, vec![to]).map_err(|e| format!("550 5.1.3 {e}"))?;
        Ok((domain, envelope))
    }

    /// Tries the targets' addresses in order until one answers; an
    /// unreachable one passes to the next.
    async fn try_targets(
        &self,
        setup: &Setup,
        targets: &[Target],
        envelope: &Envelope,
        data: &[u8],
        via: Option<&Via>,
        tls: StartTls,
    ) -> Outcome {
        let mut last = None;
        for target in targets {
            for addr in &target.addrs {
                let reply = setup
                    .connector
                    .send(*addr, &target.host, envelope, data, via, tls)
                    .await;
                if let Some(via) = via {
                    if !matches!(reply, Reply::SourceDown(_)) {
                        self.egress.source_worked(via);
                    }
                }
                let reached = |code, text| Reached {
                    host: Some(target.host.clone()),
                    peer: Some(addr.to_string()),
                    code,
                    text,
                    egress_pool: via.map(|v| v.pool.to_string()),
                    egress_source: via.map(|v| v.source.name.to_string()),
                };
                match reply {
                    Reply::Accepted { code, text } => {
                        return Outcome::Delivered(reached(code, text))
                    }
                    Reply::Permanent { code, text } => {
                        return Outcome::Permanent(reached(code, text))
                    }
                    Reply::Transient { code, text } => {
                        return Outcome::Transient(reached(code, text))
                    }
                    Reply::Unreachable(text) => {
                        tracing::debug!(host = %target.host, %addr, "unreachable: {text}");
                        last = Some(reached(0, text));
                    }
                    Reply::SourceDown(text) => return Outcome::SourceDown(text),
                }
            }
        }
        Outcome::Transient(
            last.unwrap_or_else(|| Reached::here("no address to deliver to".to_string())),
        )
    }
}

/// The message as sent: behind its DKIM signature when its From: domain
/// has a key; unsigned (and logged) when signing fails. Signing (RSA above
/// all) takes a millisecond of CPU: off the async workers.
async fn signed(setup: &Setup, message: &StoredMessage, job: &Job) -> Bytes {
    if setup.dkim.is_empty() {
        return message.data.clone();
    }
    let (dkim, body) = (setup.dkim.clone(), message.data.clone());
    let signature = tokio::task::spawn_blocking(move || dkim.sign(&body))
        .await
        .unwrap_or_else(|e| Some(Err(format!("the signing task failed: {e}"))));
    match signature {
        None => message.data.clone(),
        Some(Ok(header)) => {
            let mut with = Vec::with_capacity(header.len() + message.data.len());
            with.extend_from_slice(header.as_bytes());
            with.extend_from_slice(&message.data);
            with.into()
        }
        Some(Err(error)) => {
            tracing::warn!(id = %job.id(), "DKIM signing failed, sending unsigned: {error}");
            message.data.clone()
        }
    }
}
