//! `fleet vault-import`: copies the secrets a fleet keeps in files into
//! Vault (KV v2), says which reference to write in place of each, and (with
//! [`apply`]) writes them there.
//!
//! What it copies, under `<prefix>`:
//! - the fleet file: every credential hash written in place
//!   (`<cluster>/credentials/<username>#password`) and every account's
//!   `token_sha256` (`accounts/<name>#token_sha256`) and every SOCKS5 egress
//!   source's password (`<cluster>/egress/<source>#password`);
//! - MTA configs: every DKIM key file (`dkim/<domain>`, fields `private_key`
//!   and `selector`; a second key of one domain goes to
//!   `dkim/<domain>/<selector>`), the TLS private key file
//!   (`tls/<file stem>#private_key`) and `admin_token_sha256`
//!   (`mta/admin#token_sha256`);
//! - healthd configs: `admin_token_sha256` (`healthd/admin#token_sha256`),
//!   each follower's (`healthd/followers/<name>#token_sha256`) and the TLS
//!   key file (`tls/<file stem>#private_key`);
//! - lb-dns configs: `healthd_token` (`lb-dns/<file stem>#healthd_token`).
//!
//! One path holds one value: configs that agree share it, configs that
//! disagree are an error naming the file and key.

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

/// The files whose secrets are copied.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub fleet_file: PathBuf,
    pub mta_configs: Vec<PathBuf>,
    pub healthd_configs: Vec<PathBuf>,
    pub lb_dns_configs: Vec<PathBuf>,
}

/// Collects the writes of a plan: where each secret goes.
struct Planner<'a> {
    mount: &'a str,
    prefix: String,
    writes: Vec<Write>,
}

impl Planner<'_> {
    fn reference(&self, path: &str, field: &str) -> Result<VaultRef, String> {
        VaultRef::parse(&format!("vault:{}/data/{path}#{field}", self.mount))
    }

    /// One secret of one field at `<prefix>/<path>` for `file`'s `key`.
    fn single(
        &mut self,
        file: &Path,
        key: &str,
        path: &str,
        field: &str,
        value: &[u8],
    ) -> Result<(), String> {
        let path = format!("{}/{path}", self.prefix);
        let fields = BTreeMap::from([(field.to_string(), SecretBytes::new(value.to_vec()))]);
        let assignment = Assignment {
            file: file.to_path_buf(),
            key: key.to_string(),
            reference: self.reference(&path, field)?,
        };
        if !self.add(&path, &fields, std::slice::from_ref(&assignment)) {
            return Err(format!(
                "{}: {key}: another config has a different value for {path}; \
                 import them one at a time",
                file.display()
            ));
        }
        Ok(())
    }

    /// Adds a write, or joins one of the same path and fields; false when
    /// the path already holds other fields.
    fn add(
        &mut self,
        path: &str,
        fields: &BTreeMap<String, SecretBytes>,
        assignments: &[Assignment],
    ) -> bool {
        match self.writes.iter_mut().find(|w| w.path == path) {
            Some(same) if &same.fields == fields => {
                same.assignments.extend(assignments.iter().cloned());
                true
            }
            Some(_) => false,
            None => {
                self.writes.push(Write {
                    mount: self.mount.to_string(),
                    path: path.to_string(),
                    fields: fields.clone(),
                    assignments: assignments.to_vec(),
                });
                true
            }
        }
    }
}

/// The secrets in files and where they go; nothing is written yet.
pub fn plan(
    fleet_file: &Path,
    mta_configs: &[PathBuf],
    mount: &str,
    prefix: &str,
) -> Result<Vec<Write>, String> {
    plan_sources(
        &Sources {
            fleet_file: fleet_file.to_path_buf(),
            mta_configs: mta_configs.to_vec(),
            ..Sources::default()
        },
        mount,
        prefix,
    )
}

/// As [`plan`], for every kind of config in `sources`.
pub fn plan_sources(sources: &Sources, mount: &str, prefix: &str) -> Result<Vec<Write>, String> {
    let mut planner = Planner {
        mount,
        prefix: prefix.trim_matches('/').to_string(),
        writes: Vec::new(),
    };
    plan_fleet(&sources.fleet_file, &mut planner)?;
    for config in &sources.mta_configs {
        let doc = read_table(config)?;
        plan_dkim(config, &doc, &mut planner)?;
        plan_tls_key(config, &doc, &mut planner)?;
        plan_hash(
            config,
            &doc,
            "admin_token_sha256",
            "mta/admin",
            &mut planner,
        )?;
    }
    for config in &sources.healthd_configs {
        let doc = read_table(config)?;
        plan_healthd(config, &doc, &mut planner)?;
        plan_tls_key(config, &doc, &mut planner)?;
    }
    for config in &sources.lb_dns_configs {
        let doc = read_table(config)?;
        if let Some(token) = doc.get("healthd_token").and_then(|v| v.as_str()) {
            if !VaultRef::is_reference(token) {
                let stem = file_stem(config);
                let path = format!("lb-dns/{stem}");
                planner.single(
                    config,
                    "healthd_token",
                    &path,
                    "healthd_token",
                    token.as_bytes(),
                )?;
            }
        }
    }
    Ok(planner.writes)
}

fn file_stem(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".to_string())
}

fn read_table(config: &Path) -> Result<toml::Table, String> {
    let place = config.display();
    let text =
        std::fs::read_to_string(config).map_err(|e| format!("{place}: cannot be read: {e}"))?;
    toml::from_str(&text).map_err(|e| format!("{place}: {e}"))
}

/// Credential hashes and account token hashes written in place.
fn plan_fleet(fleet_file: &Path, planner: &mut Planner) -> Result<(), String> {
    let fleet = crate::load_fleet(fleet_file).map_err(|e| e.to_string())?;
    for (c, cluster) in fleet.clusters.iter().enumerate() {
        for (n, credential) in cluster.credentials.iter().enumerate() {
            let (None, Some(hash)) = (credential.password.vault_ref(), credential.password.value())
            else {
                continue;
            };
            planner.single(
                fleet_file,
                &format!("clusters[{c}].credentials[{n}].password"),
                &format!("{}/credentials/{}", cluster.id, credential.username),
                "password",
                hash.as_str().as_bytes(),
            )?;
        }
    }
    for (c, cluster) in fleet.clusters.iter().enumerate() {
        for (n, source) in cluster.egress_sources.iter().enumerate() {
            let Some(password) = source.password.as_ref().filter(|p| !p.is_reference()) else {
                continue;
            };
            planner.single(
                fleet_file,
                &format!("clusters[{c}].egress_sources[{n}].password"),
                &format!("{}/egress/{}", cluster.id, source.name),
                "password",
                password.expose().as_bytes(),
            )?;
        }
    }
    for (n, account) in fleet.accounts.iter().enumerate() {
        if VaultRef::is_reference(&account.token_sha256) {
            continue;
        }
        planner.single(
            fleet_file,
            &format!("accounts[{n}].token_sha256"),
            &format!("accounts/{}", account.name),
            "token_sha256",
            account.token_sha256.as_bytes(),
        )?;
    }
    Ok(())
}

/// `[[delivery.dkim]]` entries of an MTA config whose key is a file.
fn plan_dkim(config: &Path, doc: &toml::Table, planner: &mut Planner) -> Result<(), String> {
    let place = config.display();
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
        let fields = BTreeMap::from([
            ("private_key".to_string(), SecretBytes::new(pem)),
            (
                "selector".to_string(),
                SecretBytes::new(selector.clone().into_bytes()),
            ),
        ]);
        let domain = domain.to_ascii_lowercase();
        let prefix = planner.prefix.clone();
        // The domain's first key at dkim/<domain>, a second one (another
        // algorithm, an overlap during rotation) at dkim/<domain>/<selector>.
        let candidates = [
            format!("{prefix}/dkim/{domain}"),
            format!("{prefix}/dkim/{domain}/{selector}"),
        ];
        let mut placed = false;
        for path in candidates {
            let assignments = [
                Assignment {
                    file: config.to_path_buf(),
                    key: format!("delivery.dkim[{n}].key"),
                    reference: planner.reference(&path, "private_key")?,
                },
                Assignment {
                    file: config.to_path_buf(),
                    key: format!("delivery.dkim[{n}].selector"),
                    reference: planner.reference(&path, "selector")?,
                },
            ];
            if planner.add(&path, &fields, &assignments) {
                placed = true;
                break;
            }
        }
        if !placed {
            return Err(format!(
                "{place}: delivery.dkim[{n}]: another config has a different key for \
                 {domain} selector {selector}; import them one at a time"
            ));
        }
    }
    Ok(())
}

/// `[tls] key`: the TLS private key file (an MTA's, healthd's).
fn plan_tls_key(config: &Path, doc: &toml::Table, planner: &mut Planner) -> Result<(), String> {
    let Some(key) = doc
        .get("tls")
        .and_then(|t| t.get("key"))
        .and_then(|k| k.as_str())
    else {
        return Ok(());
    };
    if VaultRef::is_reference(key) {
        return Ok(());
    }
    let file = crate::config::resolve(config, Path::new(key));
    let pem = std::fs::read(&file)
        .map_err(|e| format!("{}: tls.key {}: {e}", config.display(), file.display()))?;
    let path = format!("tls/{}", file_stem(&file));
    planner.single(config, "tls.key", &path, "private_key", &pem)
}

/// A token hash at the top of a node config, to `<path>#token_sha256`.
fn plan_hash(
    config: &Path,
    doc: &toml::Table,
    key: &str,
    path: &str,
    planner: &mut Planner,
) -> Result<(), String> {
    match doc.get(key).and_then(|v| v.as_str()) {
        Some(hash) if !VaultRef::is_reference(hash) => {
            planner.single(config, key, path, "token_sha256", hash.as_bytes())
        }
        _ => Ok(()),
    }
}

/// healthd's admin token hash and its followers' token hashes.
fn plan_healthd(config: &Path, doc: &toml::Table, planner: &mut Planner) -> Result<(), String> {
    plan_hash(config, doc, "admin_token_sha256", "healthd/admin", planner)?;
    let followers = doc
        .get("followers")
        .and_then(|f| f.as_array())
        .cloned()
        .unwrap_or_default();
    for (n, follower) in followers.iter().enumerate() {
        let name = follower.get("name").and_then(|v| v.as_str());
        let hash = follower.get("token_sha256").and_then(|v| v.as_str());
        let (Some(name), Some(hash)) = (name, hash) else {
            continue;
        };
        if VaultRef::is_reference(hash) {
            continue;
        }
        planner.single(
            config,
            &format!("followers[{n}].token_sha256"),
            &format!("healthd/followers/{name}"),
            "token_sha256",
            hash.as_bytes(),
        )?;
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

/// Writes each reference in place of the value or file its key held, file
/// by file (comments and layout kept); a key that is not there is an error.
pub fn apply(assignments: &[Assignment]) -> Result<(), String> {
    let mut files: BTreeMap<&Path, Vec<&Assignment>> = BTreeMap::new();
    for assignment in assignments {
        files
            .entry(assignment.file.as_path())
            .or_default()
            .push(assignment);
    }
    for (file, assignments) in files {
        let place = file.display();
        let text =
            std::fs::read_to_string(file).map_err(|e| format!("{place}: cannot be read: {e}"))?;
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e| format!("{place}: not valid TOML: {e}"))?;
        for assignment in assignments {
            let item = item_at(doc.as_item_mut(), &assignment.key)
                .ok_or_else(|| format!("{place}: no key {}", assignment.key))?;
            let mut value = toml_edit::Value::from(assignment.reference.to_string());
            if let Some(old) = item.as_value() {
                *value.decor_mut() = old.decor().clone();
            }
            *item = toml_edit::Item::Value(value);
        }
        crate::fs::replace_file(file, doc.to_string().as_bytes())
            .map_err(|e| format!("{place}: cannot be written: {e}"))?;
    }
    Ok(())
}

/// The item at `a.b[2].c`, if every step exists.
fn item_at<'a>(mut item: &'a mut toml_edit::Item, key: &str) -> Option<&'a mut toml_edit::Item> {
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (part, None),
        };
        item = item.get_mut(name)?;
        if let Some(index) = index {
            item = item.get_mut(index)?;
        }
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_writes_references_at_nested_keys_and_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.toml");
        std::fs::write(
            &file,
            "# top\n[[clusters]]\nid = \"a\"\n  [[clusters.credentials]]\n  username = \"u\"\n  \
             password = \"hash\" # the hash\n[tls]\nkey = \"k.pem\"\n",
        )
        .unwrap();
        let reference = |text: &str| VaultRef::parse(text).unwrap();
        let assignments = [
            Assignment {
                file: file.clone(),
                key: "clusters[0].credentials[0].password".into(),
                reference: reference("vault:secret/data/p#password"),
            },
            Assignment {
                file: file.clone(),
                key: "tls.key".into(),
                reference: reference("vault:secret/data/t#private_key"),
            },
        ];
        apply(&assignments).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("# top"), "{text}");
        assert!(
            text.contains("password = \"vault:secret/data/p#password\" # the hash"),
            "{text}"
        );
        assert!(
            text.contains("key = \"vault:secret/data/t#private_key\""),
            "{text}"
        );
        let missing = Assignment {
            file: file.clone(),
            key: "clusters[3].credentials[0].password".into(),
            reference: reference("vault:secret/data/p#password"),
        };
        assert!(apply(&[missing])
            .unwrap_err()
            .contains("no key clusters[3]"));
    }
}
