//! `fleet vault-import`: copies the secrets a fleet keeps in files into
//! Vault (KV v2) and says which reference to write in place of each.
//!
//! What it copies: every credential hash of the fleet file written in place
//! (to `<prefix>/<cluster>/credentials/<username>`, field `password`), and
//! every DKIM key file of the MTA configs given (to `<prefix>/dkim/<domain>`,
//! fields `private_key` and `selector`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::secret::{SecretBytes, VaultRef};

use super::{VaultClient, VaultError};

/// One config key and the reference to write there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub file: PathBuf,
    pub key: String,
    pub reference: VaultRef,
}

/// One KV secret to write and the keys that will name its fields.
#[derive(Debug)]
pub struct Write {
    pub mount: String,
    pub path: String,
    pub fields: BTreeMap<String, SecretBytes>,
    pub assignments: Vec<Assignment>,
}

fn reference(mount: &str, path: &str, field: &str) -> Result<VaultRef, String> {
    VaultRef::parse(&format!("vault:{mount}/data/{path}#{field}"))
}

/// The secrets in files and where they go; nothing is written yet.
pub fn plan(
    fleet_file: &Path,
    mta_configs: &[PathBuf],
    mount: &str,
    prefix: &str,
) -> Result<Vec<Write>, String> {
    let prefix = prefix.trim_matches('/');
    let fleet = crate::load_fleet(fleet_file).map_err(|e| e.to_string())?;
    let mut writes: Vec<Write> = Vec::new();
    for (c, cluster) in fleet.clusters.iter().enumerate() {
        for (n, credential) in cluster.credentials.iter().enumerate() {
            let (None, Some(hash)) = (credential.password.vault_ref(), credential.password.value())
            else {
                continue;
            };
            let path = format!(
                "{prefix}/{}/credentials/{}",
                cluster.id, credential.username
            );
            let password = reference(mount, &path, "password")?;
            writes.push(Write {
                mount: mount.to_string(),
                path,
                fields: BTreeMap::from([(
                    "password".to_string(),
                    SecretBytes::new(hash.as_str().as_bytes().to_vec()),
                )]),
                assignments: vec![Assignment {
                    file: fleet_file.to_path_buf(),
                    key: format!("clusters[{c}].credentials[{n}].password"),
                    reference: password,
                }],
            });
        }
    }
    for config in mta_configs {
        plan_dkim(config, mount, prefix, &mut writes)?;
    }
    Ok(writes)
}

/// `[[delivery.dkim]]` entries of an MTA config whose key is a file.
fn plan_dkim(
    config: &Path,
    mount: &str,
    prefix: &str,
    writes: &mut Vec<Write>,
) -> Result<(), String> {
    let place = config.display();
    let text =
        std::fs::read_to_string(config).map_err(|e| format!("{place}: cannot be read: {e}"))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{place}: {e}"))?;
    let entries = doc
        .get("delivery")
        .and_then(|d| d.get("dkim"))
        .and_then(|d| d.as_array())
        .cloned()
        .unwrap_or_default();
    for (n, entry) in entries.iter().enumerate() {
        let text_of = |name: &str| entry.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(domain), Some(selector), Some(key)) =
            (text_of("domain"), text_of("selector"), text_of("key"))
        else {
            return Err(format!(
                "{place}: delivery.dkim[{n}] needs domain, selector and key"
            ));
        };
        if VaultRef::is_reference(&key) {
            continue;
        }
        let file = crate::config::resolve(config, Path::new(&key));
        let pem = std::fs::read(&file)
            .map_err(|e| format!("{place}: delivery.dkim[{n}].key {}: {e}", file.display()))?;
        let path = format!("{prefix}/dkim/{}", domain.to_ascii_lowercase());
        let fields = BTreeMap::from([
            ("private_key".to_string(), SecretBytes::new(pem)),
            (
                "selector".to_string(),
                SecretBytes::new(selector.into_bytes()),
            ),
        ]);
        let assignments = vec![
            Assignment {
                file: config.to_path_buf(),
                key: format!("delivery.dkim[{n}].key"),
                reference: reference(mount, &path, "private_key")?,
            },
            Assignment {
                file: config.to_path_buf(),
                key: format!("delivery.dkim[{n}].selector"),
                reference: reference(mount, &path, "selector")?,
            },
        ];
        match writes.iter_mut().find(|w| w.path == path) {
            Some(same) if same.fields == fields => same.assignments.extend(assignments),
            Some(_) => {
                return Err(format!(
                    "{place}: delivery.dkim[{n}]: another config has a different key or \
                     selector for {domain}; import them one at a time"
                ))
            }
            None => writes.push(Write {
                mount: mount.to_string(),
                path,
                fields,
                assignments,
            }),
        }
    }
    Ok(())
}

/// Writes every planned secret; returns the references to put in the
/// configs.
pub async fn import(client: &VaultClient, writes: &[Write]) -> Result<Vec<Assignment>, VaultError> {
    let mut done = Vec::new();
    for write in writes {
        client
            .write(&write.mount, &write.path, &write.fields)
            .await?;
        done.extend(write.assignments.iter().cloned());
    }
    Ok(done)
}
