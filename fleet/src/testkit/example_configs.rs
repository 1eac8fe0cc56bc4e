//! A private copy of `configs/` for a test, moved onto the test's own
//! loopback address and ports so suites can run in parallel.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use toml_edit::{value, Array, DocumentMut};

/// The hostname of the example fleet's first cluster (`a1b2c3d4`), which
/// the example credential sends through.
pub const EXAMPLE_HOSTNAME: &str = "c-a1b2c3d4.unmta.net";

/// `configs/` copied into a temporary folder.
pub struct ExampleConfigs {
    pub dir: tempfile::TempDir,
}

/// The repository's `configs/` folder.
pub fn repo_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

impl ExampleConfigs {
    /// [`ExampleConfigs::relocated`], with the daemon config `file`
    /// reading its secrets from `bao` (`[vault]` with the root token).
    pub fn relocated_with_vault(
        base: [u8; 3],
        bao: &super::Bao,
        file: &str,
    ) -> anyhow::Result<ExampleConfigs> {
        let configs = Self::relocated(base)?;
        let vault = bao.vault_table()?;
        configs.edit(file, |doc| doc["vault"] = vault)?;
        Ok(configs)
    }

    /// Copies `configs/` (files and `tls/`) and rewrites every address to
    /// `base.x` (MTAs from `.11`, DNS on `.53`, admin and HTTP listeners on
    /// `.1`) and every port to an unprivileged one. `tls/` gets a fresh
    /// cluster certificate from the example CA (its key is
    /// `tls/ca-key.pem`) for the clusters' hostnames and the new addresses:
    /// the committed leaf expires within 398 days, a test's copy does not.
    pub fn relocated(base: [u8; 3]) -> anyhow::Result<ExampleConfigs> {
        let dir = tempfile::tempdir()?;
        copy_dir(&repo_configs(), dir.path())?;
        let configs = ExampleConfigs { dir };
        let host = |last: u8| Ipv4Addr::new(base[0], base[1], base[2], last).to_string();
        let mut names = vec!["localhost".to_string()];

        configs.edit("fleet.toml", |doc| {
            let origin = doc["zone"]["origin"]
                .as_str()
                .unwrap_or("unmta.net")
                .to_string();
            doc["ports"]["smtp"] = value(Array::from_iter([10587i64, 10025, 12587]));
            doc["ports"]["https"] = value(10443i64);
            doc["zone"]["nameservers"][0]["ipv4"] = value(host(53));
            let mut last = 11u8;
            if let Some(clusters) = doc["clusters"].as_array_of_tables_mut() {
                for cluster in clusters.iter_mut() {
                    if let Some(id) = cluster["id"].as_str() {
                        names.push(crate::model::cluster_hostname(id, &origin));
                    }
                    if let Some(mtas) = cluster["mtas"].as_array_of_tables_mut() {
                        for mta in mtas.iter_mut() {
                            mta["ipv4"] = value(host(last));
                            names.push(host(last));
                            mta.remove("ipv6");
                            last += 1;
                        }
                    }
                }
            }
        })?;
        configs.edit("mta.toml", |doc| {
            doc["admin_listen"] = value(format!("{}:9110", host(1)));
        })?;
        configs.edit("healthd.toml", |doc| {
            doc["listen"] = value(format!("{}:9200", host(1)));
        })?;
        configs.edit("lb-dns.toml", |doc| {
            doc["listen"] = value(Array::from_iter([format!("{}:5300", host(53))]));
            doc["admin_listen"] = value(format!("{}:9300", host(1)));
            doc["healthd"] = value(Array::from_iter([format!("http://{}:9200", host(1))]));
        })?;
        names.push(host(1));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let ca_key = std::fs::read_to_string(configs.path("tls/ca-key.pem"))?;
        super::LocalCa::from_key(super::pki::EXAMPLE_CA, &ca_key)?.write_leaf(
            &configs.path("tls"),
            "cluster",
            &names,
        )?;
        Ok(configs)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Rewrites one file through `change`, keeping its comments.
    pub fn edit(&self, name: &str, change: impl FnOnce(&mut DocumentMut)) -> anyhow::Result<()> {
        let path = self.path(name);
        let mut doc: DocumentMut = std::fs::read_to_string(&path)?.parse()?;
        change(&mut doc);
        std::fs::write(&path, doc.to_string())?;
        Ok(())
    }

    /// A value of a node config, as text (for addresses the test connects to).
    pub fn get(&self, name: &str, key: &str) -> anyhow::Result<String> {
        let doc: DocumentMut = std::fs::read_to_string(self.path(name))?.parse()?;
        doc.get(key)
            .and_then(|item| item.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("{name} has no string key {key}"))
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            if entry.file_name() != "var" {
                copy_dir(&entry.path(), &target)?;
            }
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
