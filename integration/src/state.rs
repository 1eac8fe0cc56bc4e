//! The state dir's files: the CA and cluster certificate, the fleet file
//! with its credential, and one config per daemon. A state dir that already
//! has them keeps its CA, certificate, credential, MTAs and spools.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;
use sha2::Digest;
use toml_edit::{value, Array, DocumentMut};

use crate::plan::{write_private, Layout, Plan, CERT_ADDRESSES, DKIM_RSA_SELECTOR, DKIM_SELECTOR};

/// One MTA of the fleet file.
#[derive(Debug, Clone, PartialEq)]
pub struct MtaEntry {
    pub name: String,
    pub ipv4: Ipv4Addr,
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Writes whatever the state dir lacks and refreshes what follows from the
/// options: the fleet file's ports (and rate limit when `rate_given`), and
/// every daemon config. Returns the MTAs of the fleet file.
pub fn prepare(layout: &Layout, plan: &Plan, rate_given: bool) -> anyhow::Result<Vec<MtaEntry>> {
    for dir in [
        layout.root.clone(),
        layout.tls_dir(),
        layout.root.join("logs"),
        layout.root.join("var"),
        layout.sink_dir(),
        layout.requests_dir(),
    ] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if certificates_need_renewal(layout) {
        write_certificates(layout, plan)?;
    }
    if !layout.dkim_key().exists() {
        write_dkim_key(layout)?;
    }
    if !layout.dkim_rsa_key().exists() {
        let (pem, txt) = mta::dkim::generate_rsa_2048()
            .map_err(|e| anyhow::anyhow!("cannot generate the RSA DKIM key: {e}"))?;
        write_private(&layout.dkim_rsa_key(), &pem)?;
        write_private(&layout.dkim_rsa_txt(), &txt)?;
    }
    if layout.fleet_file().exists() {
        update_fleet(layout, plan, rate_given)?;
    } else {
        write_fleet(layout, plan)?;
    }
    let mtas = fleet_mtas(layout)?;
    write_lb_dns_config(layout, plan)?;
    write_healthd_config(layout, plan)?;
    for mta in &mtas {
        write_mta_config(layout, plan, mta)?;
    }
    // The daemons' own loaders judge what was written, before any starts.
    lb_dns::config::Settings::load(&layout.config("lb-dns"))
        .map_err(|e| anyhow::anyhow!("lb-dns refuses the config local-cluster wrote: {e}"))?;
    healthd::config::Settings::load(&layout.config("healthd"))
        .map_err(|e| anyhow::anyhow!("healthd refuses the config local-cluster wrote: {e}"))?;
    Ok(mtas)
}

/// A leaf this close to expiry is renewed at the next start.
const RENEW_WITHIN_SECS: i64 = 30 * 86_400;

/// Whether the state dir lacks its certificates, or keeps a leaf that
/// strict clients refuse (one from before the RFC 5280 profile, valid for
/// more than 398 days) or that expires within 30 days. The CA's key is not
/// kept, so a renewal makes a new CA too.
fn certificates_need_renewal(layout: &Layout) -> bool {
    if !layout.ca_file().exists() {
        return true;
    }
    match fleet::certificate::CertificateInfo::from_pem_file(&layout.cluster_cert()) {
        Ok(leaf) => {
            leaf.lifetime() > fleet::testkit::pki::MAX_LEAF_VALIDITY
                || leaf.seconds_left(fleet::certificate::now()) < RENEW_WITHIN_SECS
        }
        Err(_) => true,
    }
}

fn write_certificates(layout: &Layout, plan: &Plan) -> anyhow::Result<()> {
    let ca = fleet::testkit::pki::LocalCa::new(&format!(
        "unMTA local-cluster CA {} (not for production)",
        plan.cluster_id
    ))?;
    let hostname = plan.hostname();
    let mut names = vec![hostname, "localhost".to_string()];
    for index in 0..CERT_ADDRESSES as usize {
        if let Ok(address) = plan.mta_address(index) {
            names.push(address.to_string());
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    ca.write_bundle(&layout.tls_dir(), "cluster", &names)
        .with_context(|| {
            format!(
                "cannot write certificates in {}",
                layout.tls_dir().display()
            )
        })
}

/// An Ed25519 DKIM key for the sender domain (RFC 8463), PKCS#8 PEM, and
/// its public half as the DNS TXT text.
fn write_dkim_key(layout: &Layout) -> anyhow::Result<()> {
    use base64::Engine;
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).context("cannot generate a DKIM key")?;
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key_raw());
    write_private(&layout.dkim_key(), &key.serialize_pem())?;
    write_private(
        &layout.dkim_txt(),
        &format!("v=DKIM1; k=ed25519; p={public}"),
    )
}

/// The DKIM TXT records (selector, text) from the state dir: ed25519 and
/// RSA-2048, both signing every message.
pub fn dkim_records(layout: &Layout) -> Vec<(&'static str, String)> {
    [
        (DKIM_SELECTOR, layout.dkim_txt()),
        (DKIM_RSA_SELECTOR, layout.dkim_rsa_txt()),
    ]
    .into_iter()
    .filter_map(|(selector, path)| {
        let text = std::fs::read_to_string(path).ok()?;
        Some((selector, text.trim().to_string()))
    })
    .collect()
}

/// The ed25519 DKIM TXT record's text, from the state dir.
pub fn dkim_txt(layout: &Layout) -> anyhow::Result<String> {
    let path = layout.dkim_txt();
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .with_context(|| format!("cannot read {}", path.display()))
}

fn write_fleet(layout: &Layout, plan: &Plan) -> anyhow::Result<()> {
    let hash = fleet::password::hash_password(&plan.password)
        .map_err(|e| anyhow::anyhow!("cannot hash the credential's password: {e}"))?;
    let smtp = plan
        .ports
        .smtp
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        r#"# The fleet file of this local cluster, written by local-cluster.
# Edit it, then `local-cluster reload --state-dir <this folder>` (or kill -HUP
# lb-dns, healthd and every MTA): drain an MTA, change the rate limit, ...

[zone]
origin = "{origin}"
ttl = 5                         # short, so failover shows quickly
max_answers = 8
when_all_down = "serve_all"
primary_ns = "ns1.{origin}"
hostmaster = "hostmaster.{origin}"
nameservers = [ {{ name = "ns1.{origin}", ipv4 = "{address}" }} ]

[ports]
smtp = [{smtp}]
https = {https}

[[clusters]]
id = "{id}"
rate_limit = "{rate}"           # per MTA
domains = ["{domain}"]

  [[clusters.credentials]]
  username = "{username}"
  password = "{hash}"
"#,
        origin = plan.origin,
        address = plan.address,
        https = plan.ports.https,
        id = plan.cluster_id,
        rate = plan.rate_limit,
        domain = plan.sender_domain,
        username = plan.username,
    );
    for index in 0..plan.mtas {
        text.push_str(&format!(
            "\n  [[clusters.mtas]]\n  name = \"mta-{}\"\n  ipv4 = \"{}\"\n",
            index + 1,
            plan.mta_address(index)?
        ));
    }
    text.push_str(&format!(
        "\n# The Clusters API token (cluster.json has it in the clear).\n[[accounts]]\nname = \"local\"\ntoken_sha256 = \"{}\"\nclusters = [\"{}\"]\n",
        sha256_hex(&plan.api_token),
        plan.cluster_id
    ));
    fleet::parse_fleet(&text, "generated fleet.toml")
        .map_err(|e| anyhow::anyhow!("local-cluster wrote an invalid fleet file: {e}"))?;
    write_private(&layout.fleet_file(), &text)
}

fn read_fleet_doc(layout: &Layout) -> anyhow::Result<DocumentMut> {
    let path = layout.fleet_file();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.parse::<DocumentMut>()
        .with_context(|| format!("{}: not valid TOML", path.display()))
}

fn write_fleet_doc(layout: &Layout, doc: &DocumentMut) -> anyhow::Result<()> {
    let text = doc.to_string();
    fleet::parse_fleet(&text, &layout.fleet_file().display().to_string())
        .map_err(|e| anyhow::anyhow!("the edited fleet file would be invalid: {e}"))?;
    write_private(&layout.fleet_file(), &text)
}

/// Ports (and the rate limit, when given) follow the options on a restart.
fn update_fleet(layout: &Layout, plan: &Plan, rate_given: bool) -> anyhow::Result<()> {
    let mut doc = read_fleet_doc(layout)?;
    doc["ports"]["smtp"] = value(Array::from_iter(
        plan.ports.smtp.iter().map(|p| i64::from(*p)),
    ));
    doc["ports"]["https"] = value(i64::from(plan.ports.https));
    if rate_given {
        doc["clusters"][0]["rate_limit"] = value(plan.rate_limit.clone());
    }
    write_fleet_doc(layout, &doc)
}

/// `--vault` keeps the fleet file's credential hash and API token hash in
/// an in-memory OpenBao: a new start writes them in place again, to be
/// imported afresh (the other configs are rewritten at every start).
pub fn restore_fleet_secrets(layout: &Layout, plan: &Plan) -> anyhow::Result<()> {
    let mut doc = read_fleet_doc(layout)?;
    let is_reference = |item: &toml_edit::Item| {
        item.as_str()
            .is_some_and(fleet::secret::VaultRef::is_reference)
    };
    let mut changed = false;
    if is_reference(&doc["clusters"][0]["credentials"][0]["password"]) {
        let hash = fleet::password::hash_password(&plan.password)
            .map_err(|e| anyhow::anyhow!("cannot hash the credential's password: {e}"))?;
        doc["clusters"][0]["credentials"][0]["password"] = value(hash);
        changed = true;
    }
    if is_reference(&doc["accounts"][0]["token_sha256"]) {
        doc["accounts"][0]["token_sha256"] = value(sha256_hex(&plan.api_token));
        changed = true;
    }
    if changed {
        write_fleet_doc(layout, &doc)?;
    }
    Ok(())
}

/// The MTAs of the state dir's fleet file, checked the way the daemons do.
pub fn fleet_mtas(layout: &Layout) -> anyhow::Result<Vec<MtaEntry>> {
    let fleet = fleet::load_fleet(&layout.fleet_file())
        .map_err(|e| anyhow::anyhow!("the fleet file is invalid: {e}"))?;
    Ok(fleet
        .clusters
        .iter()
        .flat_map(|c| c.mtas.iter())
        .map(|m| MtaEntry {
            name: m.name.clone(),
            ipv4: m.ipv4,
        })
        .collect())
}

/// Appends the next MTA (name and address after the last ones) to the fleet
/// file and writes its config. The daemons still need a SIGHUP.
pub fn add_mta(layout: &Layout, plan: &Plan) -> anyhow::Result<MtaEntry> {
    let existing = fleet_mtas(layout)?;
    let number = (1..)
        .find(|n| !existing.iter().any(|m| m.name == format!("mta-{n}")))
        .unwrap_or(1);
    let ipv4 = (0..254)
        .filter_map(|i| plan.mta_address(i).ok())
        .find(|a| !existing.iter().any(|m| m.ipv4 == *a))
        .context("no free MTA address is left after --mta-base")?;
    let entry = MtaEntry {
        name: format!("mta-{number}"),
        ipv4,
    };
    let mut doc = read_fleet_doc(layout)?;
    let mtas = doc["clusters"][0]["mtas"]
        .as_array_of_tables_mut()
        .context("the fleet file's first cluster has no [[clusters.mtas]]")?;
    let mut table = toml_edit::Table::new();
    table["name"] = value(entry.name.clone());
    table["ipv4"] = value(entry.ipv4.to_string());
    mtas.push(table);
    write_fleet_doc(layout, &doc)?;
    write_mta_config(layout, plan, &entry)?;
    Ok(entry)
}

fn quoted(path: &Path) -> String {
    toml_edit::Value::from(path.display().to_string()).to_string()
}

fn write_lb_dns_config(layout: &Layout, plan: &Plan) -> anyhow::Result<()> {
    let text = format!(
        r#"# lb-dns of the local cluster, written by local-cluster.
fleet_file = "fleet.toml"
listen = ["{dns}"]
admin_listen = "{admin}"
healthd = ["{healthd}"]
healthd_token = "{token}"
state_file = "var/lb-dns/state.json"
"#,
        dns = plan.dns_addr(),
        admin = plan.lb_dns_admin_addr(),
        healthd = plan.healthd_url(),
        token = plan.feed_token,
    );
    write_private(&layout.config("lb-dns"), &text)
}

fn write_healthd_config(layout: &Layout, plan: &Plan) -> anyhow::Result<()> {
    let text = format!(
        r#"# healthd of the local cluster, written by local-cluster.
fleet_file = "fleet.toml"
listen = "{listen}"
ca_file = "tls/ca.pem"
admin_token_sha256 = "{admin}"
state_file = "var/healthd/state.json"

# The dashboard's examples resolve through lb-dns and trust the local CA.
[dashboard]
dns = "{dns}"
ca_file = "tls/ca.pem"

# The feed answers only its followers (and the admin token).
[[followers]]
name = "lb-dns"
token_sha256 = "{feed}"
"#,
        listen = plan.healthd_addr(),
        dns = plan.dns_addr(),
        admin = sha256_hex(&plan.admin_token),
        feed = sha256_hex(&plan.feed_token),
    );
    write_private(&layout.config("healthd"), &text)
}

pub fn write_mta_config(layout: &Layout, plan: &Plan, mta: &MtaEntry) -> anyhow::Result<()> {
    let path = layout.config(&mta.name);
    write_private(&path, &mta_config(layout, plan, mta, true))?;
    // An MTA build without `[delivery]` yet: keep what it understands.
    if let Err(e) = mta::config::Settings::load(&path) {
        if e.to_string().contains("delivery") {
            write_private(&path, &mta_config(layout, plan, mta, false))?;
        } else {
            anyhow::bail!("local-cluster wrote an MTA config the MTA refuses: {e}");
        }
    }
    Ok(())
}

fn mta_config(layout: &Layout, plan: &Plan, mta: &MtaEntry, delivery: bool) -> String {
    let spool = layout.root.join("var").join(&mta.name).join("spool");
    let mut text = format!(
        r#"# MTA {name} of the local cluster, written by local-cluster.
fleet_file = "fleet.toml"
node = "{name}"
spool_dir = {spool}
admin_listen = "{admin}"

[tls]
certificate = "tls/cluster.pem"
key = "tls/cluster-key.pem"

[events]
dir = {events}

# Bounces and complaints to the cluster hostname come in on the port that
# stands for 25 here.
[bounces]
port = {bounce_port}
"#,
        name = mta.name,
        spool = quoted(&spool),
        events = quoted(&layout.root.join("var").join(&mta.name).join("events")),
        bounce_port = plan
            .ports
            .smtp
            .iter()
            .copied()
            .find(|p| *p % 1000 == 25)
            .or(plan.ports.smtp.first().copied())
            .unwrap_or(25),
        admin = plan.mta_admin_addr(mta.ipv4),
    );
    if delivery {
        text.push_str(&format!(
            r#"
# Recipient domains resolve through the local cluster's DNS: example.com and
# example.net have the sink as their MX. Retries are quick for local use.
[delivery]
nameservers = ["{resolver}"]
port = {sink_port}
# The sink is on loopback, which delivery refuses unless allowed.
allow_networks = ["127.0.0.0/8", "::1/128"]
timeout = "10s"
retry_initial = "2s"
retry_max = "30s"
max_age = "1h"
"#,
            resolver = plan.resolver_addr(),
            sink_port = plan.ports.sink,
        ));
        // Both keys sign: Ed25519 and RSA.
        for (selector, algorithm) in [
            (DKIM_SELECTOR, "ed25519-sha256"),
            (DKIM_RSA_SELECTOR, "rsa-sha256"),
        ] {
            text.push_str(&format!(
                "\n[[delivery.dkim]]\ndomain = \"{}\"\nselector = \"{selector}\"\n\
                 key = \"tls/dkim-{selector}.pem\"\nalgorithm = \"{algorithm}\"\n",
                plan.sender_domain
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::StartArgs;

    fn plan(args: &StartArgs) -> Plan {
        let mut plan = Plan::fresh(args);
        plan.address = "127.5.200.1".parse().unwrap();
        plan.mta_base = "127.5.200.11".parse().unwrap();
        plan
    }

    /// A fresh state dir prepared with the default plan; its MTAs.
    fn prepared() -> (tempfile::TempDir, Layout, Plan, Vec<MtaEntry>) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let plan = plan(&StartArgs::default());
        let mtas = prepare(&layout, &plan, false).unwrap();
        (dir, layout, plan, mtas)
    }

    /// The cluster's certificate chains to its CA under strict checks.
    fn assert_chain_verifies(layout: &Layout) {
        fleet::testkit::pki::openssl_verify_strict(&layout.ca_file(), &layout.cluster_cert())
            .unwrap();
    }

    #[test]
    fn a_fresh_state_dir_gets_files_every_daemon_accepts() {
        let (_dir, layout, plan, mtas) = prepared();
        let names: Vec<_> = mtas
            .iter()
            .map(|m| (m.name.as_str(), m.ipv4.to_string()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("mta-1", "127.5.200.11".to_string()),
                ("mta-2", "127.5.200.12".to_string()),
                ("mta-3", "127.5.200.13".to_string())
            ]
        );
        for mta in &mtas {
            let settings = mta::config::Settings::load(&layout.config(&mta.name)).unwrap();
            assert_eq!(settings.node.node, mta.name);
        }
        let fleet = fleet::load_fleet(&layout.fleet_file()).unwrap();
        let cluster = &fleet.clusters[0];
        assert_eq!(fleet.hostname(cluster), plan.hostname());
        assert_eq!(fleet.ports.smtp, vec![10587, 10025, 12587]);
        assert_eq!(cluster.rate_limit.to_string(), "unlimited");
        let credential = &cluster.credentials[0];
        assert!(fleet::password::verify_password(
            credential.password.value().unwrap().as_str(),
            &plan.password
        ));
        assert_eq!(fleet.accounts[0].token_sha256, sha256_hex(&plan.api_token));
        assert!(dkim_txt(&layout)
            .unwrap()
            .starts_with("v=DKIM1; k=ed25519; p="));
        let records = dkim_records(&layout);
        assert_eq!(records.len(), 2);
        assert!(records[1].1.starts_with("v=DKIM1; k=rsa; p="));
        assert_chain_verifies(&layout);
    }

    #[test]
    fn a_leaf_near_expiry_is_renewed_with_its_ca_and_a_fresh_one_is_kept() {
        let (_dir, layout, plan, _) = prepared();
        let ca = std::fs::read(layout.ca_file()).unwrap();
        prepare(&layout, &plan, false).unwrap();
        assert_eq!(std::fs::read(layout.ca_file()).unwrap(), ca);

        let old = fleet::testkit::LocalCa::new("old CA").unwrap();
        let expiring = old
            .issue_valid_for(&["localhost"], std::time::Duration::from_secs(5 * 86_400))
            .unwrap();
        std::fs::write(layout.cluster_cert(), expiring.cert_pem).unwrap();
        prepare(&layout, &plan, false).unwrap();
        assert_ne!(std::fs::read(layout.ca_file()).unwrap(), ca);
        let leaf =
            fleet::certificate::CertificateInfo::from_pem_file(&layout.cluster_cert()).unwrap();
        assert!(leaf.seconds_left(fleet::certificate::now()) > 390 * 86_400);
        assert_chain_verifies(&layout);
    }

    #[test]
    fn a_reused_state_dir_keeps_its_ca_and_mtas_and_takes_a_new_rate() {
        let (_dir, layout, mut plan, _) = prepared();
        let ca = std::fs::read(layout.ca_file()).unwrap();
        let added = add_mta(&layout, &plan).unwrap();
        assert_eq!(added.name, "mta-4");
        assert_eq!(added.ipv4.to_string(), "127.5.200.14");

        plan.apply(&StartArgs {
            rate_limit: Some("60/min,max_burst=1".into()),
            https_port: Some(11443),
            ..StartArgs::default()
        });
        let mtas = prepare(&layout, &plan, true).unwrap();
        assert_eq!(mtas.len(), 4);
        assert_eq!(std::fs::read(layout.ca_file()).unwrap(), ca);
        let fleet = fleet::load_fleet(&layout.fleet_file()).unwrap();
        assert_eq!(
            fleet.clusters[0].rate_limit.to_string(),
            "60/min,max_burst=1"
        );
        assert_eq!(fleet.ports.https, 11443);
        assert!(std::fs::read_to_string(layout.fleet_file())
            .unwrap()
            .contains("# The fleet file of this local cluster"));
    }
}
