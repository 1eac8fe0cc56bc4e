//! `local-cluster --vault`: an OpenBao dev server next to the fleet keeps
//! every secret. At each start the secrets local-cluster writes (the
//! credential hash, the API token's hash, the feed and admin token hashes,
//! the DKIM keys, the TLS key) are copied into it by `fleet vault-import`'s
//! code, the configs get `vault:` references in their place and a `[vault]`
//! section, and the DKIM key files are deleted: they live only in OpenBao.
//!
//! The dev server keeps nothing on disk: a restart imports afresh (with new
//! DKIM keys, whose TXT records the local DNS serves). The cluster's TLS
//! key file stays in `tls/` because the certificate outlives a restart; the
//! MTAs read it from OpenBao all the same.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fleet::testkit::Bao;
use fleet::vault::import::{self, Assignment, Sources};
use fleet::vault::{VaultClient, VaultConfig};
use serde::{Deserialize, Serialize};
use toml_edit::{value, DocumentMut};

use crate::plan::{write_private, Layout, Plan};
use crate::state::MtaEntry;

/// The KV v2 mount of the dev server and the path under it.
pub const MOUNT: &str = "secret";
pub const PREFIX: &str = "unmta";
/// How often the daemons read their references again.
pub const REFRESH: &str = "30s";

/// One MTA config key and its reference, to give a later MTA the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyReference {
    key: String,
    reference: String,
}

/// Starts the dev server and moves the state dir's secrets into it.
pub async fn start(layout: &Layout, plan: &Plan, mtas: &[MtaEntry]) -> anyhow::Result<Bao> {
    let url = plan.vault_url().context("the plan has no Vault port")?;
    let port = plan.vault_port.unwrap_or(crate::plan::VAULT_PORT);
    let bao = Bao::start_attached(&plan.address.to_string(), port)
        .await
        .with_context(|| format!("cannot start the OpenBao dev server on {url}"))?;
    std::fs::create_dir_all(layout.vault_dir())?;
    write_private(&layout.vault_token_file(), bao.root_token())?;
    let client = VaultClient::new(VaultConfig::with_token_file(
        bao.address(),
        layout.vault_token_file(),
    ))
    .map_err(anyhow::Error::msg)?;
    let mta_configs: Vec<PathBuf> = mtas.iter().map(|m| layout.config(&m.name)).collect();
    let sources = Sources {
        fleet_file: layout.fleet_file(),
        mta_configs: mta_configs.clone(),
        healthd_configs: vec![layout.config("healthd")],
        lb_dns_configs: vec![layout.config("lb-dns")],
    };
    let writes =
        import::plan_sources(&sources, MOUNT, PREFIX).map_err(|e| anyhow::anyhow!("{e}"))?;
    let assignments = import::import(&client, &writes)
        .await
        .context("cannot import the secrets into OpenBao")?;
    import::apply(&assignments).map_err(anyhow::Error::msg)?;
    if let Some(first) = mta_configs.first() {
        save_mta_references(layout, first, &assignments)?;
    }
    let mut configs = mta_configs;
    configs.extend([layout.config("healthd"), layout.config("lb-dns")]);
    for config in &configs {
        add_vault_section(config, layout, &url)?;
    }
    for key in [layout.dkim_key(), layout.dkim_rsa_key()] {
        std::fs::remove_file(&key)
            .with_context(|| format!("cannot remove {} (now in OpenBao)", key.display()))?;
    }
    println!(
        "local-cluster: OpenBao dev server on {url} holds {} secrets; every daemon reads them \
         through vault: references",
        writes.len()
    );
    Ok(bao)
}

/// The references the first MTA config got, for MTAs added later.
fn save_mta_references(
    layout: &Layout,
    config: &Path,
    assignments: &[Assignment],
) -> anyhow::Result<()> {
    let references: Vec<KeyReference> = assignments
        .iter()
        .filter(|a| a.file == config)
        .map(|a| KeyReference {
            key: a.key.clone(),
            reference: a.reference.to_string(),
        })
        .collect();
    write_private(
        &layout.vault_mta_references(),
        &serde_json::to_string_pretty(&references)?,
    )
}

/// A new MTA's config (written with files, like every other at start)
/// gets the references the others have.
pub fn configure_new_mta(layout: &Layout, plan: &Plan, config: &Path) -> anyhow::Result<()> {
    let url = plan.vault_url().context("the plan has no Vault port")?;
    let path = layout.vault_mta_references();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let references: Vec<KeyReference> =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid", path.display()))?;
    let assignments = references
        .into_iter()
        .map(|r| {
            Ok(Assignment {
                file: config.to_path_buf(),
                key: r.key,
                reference: fleet::secret::VaultRef::parse(&r.reference)
                    .map_err(anyhow::Error::msg)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    import::apply(&assignments).map_err(anyhow::Error::msg)?;
    add_vault_section(config, layout, &url)
}

/// `[vault]`: the dev server, its root token file, a short refresh.
fn add_vault_section(config: &Path, layout: &Layout, url: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let mut doc: DocumentMut = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", config.display()))?;
    let mut table = toml_edit::Table::new();
    table
        .decor_mut()
        .set_prefix("\n# Secrets are read from the OpenBao dev server local-cluster started.\n");
    table["address"] = value(url);
    table["token_file"] = value(layout.vault_token_file().display().to_string());
    table["refresh_interval"] = value(REFRESH);
    doc["vault"] = toml_edit::Item::Table(table);
    write_private(config, &doc.to_string())
}
