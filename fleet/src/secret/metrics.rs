//! The secret store on `/metrics`, computed at each scrape: reads per
//! reference and result, seconds since each reference's last successful
//! read, its KV version, whether Vault is unreachable, and the AppRole
//! token's logins, renewals and remaining TTL. References are paths, never
//! values.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::SecretStore;

type Labels = Vec<(String, String)>;

/// Registers the `vault_*` metrics of `store` in `registry`.
pub fn register_metrics(store: &Arc<SecretStore>, registry: &mut Registry) {
    registry.register_collector(Box::new(VaultMetrics(store.clone())));
}

#[derive(Debug)]
struct VaultMetrics(Arc<SecretStore>);

/// One metric family: name, help, type and its (labels, value) samples.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in samples {
        sample.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn reference_label(reference: &str) -> Labels {
    vec![("reference".to_string(), reference.to_string())]
}

impl Collector for VaultMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.metrics_snapshot();
        let Some(snapshot) = snapshot else {
            return Ok(());
        };
        let mut reads = Vec::new();
        let mut ages = Vec::new();
        let mut versions = Vec::new();
        for entry in &snapshot.entries {
            for (result, count) in [
                ("ok", entry.reads_ok),
                ("unreachable", entry.reads_unreachable),
                ("error", entry.reads_error),
            ] {
                let mut labels = reference_label(&entry.reference);
                labels.push(("result".to_string(), result.to_string()));
                reads.push((labels, ConstCounter::new(count)));
            }
            if let Some(age) = entry.since_success {
                ages.push((reference_label(&entry.reference), ConstGauge::new(age)));
            }
            versions.push((
                reference_label(&entry.reference),
                ConstGauge::new(entry.version as i64),
            ));
        }
        family(
            &mut encoder,
            "vault_secret_reads",
            "Reads of each Vault reference by result (ok, unreachable, error)",
            MetricType::Counter,
            reads,
        )?;
        family(
            &mut encoder,
            "vault_secret_seconds_since_success",
            "Seconds since the last successful read of each Vault reference",
            MetricType::Gauge,
            ages,
        )?;
        family(
            &mut encoder,
            "vault_secret_version",
            "KV version of each Vault reference last read",
            MetricType::Gauge,
            versions,
        )?;
        let degraded = ConstGauge::new(i64::from(snapshot.degraded));
        degraded.encode(encoder.encode_descriptor(
            "vault_degraded",
            "1 while Vault cannot be reached and the last values read serve",
            None,
            MetricType::Gauge,
        )?)?;
        let method = vec![("method".to_string(), snapshot.auth.method.to_string())];
        family(
            &mut encoder,
            "vault_logins",
            "Logins to Vault (AppRole)",
            MetricType::Counter,
            vec![(method.clone(), ConstCounter::new(snapshot.auth.logins))],
        )?;
        family(
            &mut encoder,
            "vault_token_renewals",
            "Renewals of the Vault token (AppRole)",
            MetricType::Counter,
            vec![(method.clone(), ConstCounter::new(snapshot.auth.renewals))],
        )?;
        if let Some(left) = snapshot.token_ttl_left {
            family(
                &mut encoder,
                "vault_token_ttl_seconds",
                "Seconds the Vault token in use has left before it expires",
                MetricType::Gauge,
                vec![(method, ConstGauge::new(left))],
            )?;
        }
        Ok(())
    }
}
