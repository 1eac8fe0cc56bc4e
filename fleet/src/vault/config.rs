//! `[vault]` in a daemon's config: where Vault is and how to log in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200` (or `http://` on loopback).
    pub address: String,
    /// A file holding a Vault token (read at every use, so an agent may
    /// rotate it). Exactly one of `token_file` and `[vault.approle]`.
    pub token_file: Option<PathBuf>,
    pub approle: Option<AppRoleConfig>,
    /// PEM CA certificate(s) Vault's certificate is verified against;
    /// default: the Mozilla roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
    /// Sent as `X-Vault-Namespace` when set.
    pub namespace: Option<String>,
    /// Every referenced secret is read again this often; a new version
    /// reloads the configuration.
    #[serde(default = "default_refresh", with = "crate::config::duration")]
    pub refresh_interval: Duration,
    /// Limit on each request to Vault.
    #[serde(default = "default_timeout", with = "crate::config::duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleConfig {
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
    /// Where the AppRole auth method is mounted.
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_approle_mount() -> String {
    "approle".to_string()
}

impl VaultConfig {
    /// A config for `address` with a token file and the defaults.
    pub fn with_token_file(address: impl Into<String>, token_file: PathBuf) -> VaultConfig {
        VaultConfig {
            address: address.into(),
            token_file: Some(token_file),
            approle: None,
            ca_file: None,
            namespace: None,
            refresh_interval: default_refresh(),
            timeout: default_timeout(),
        }
    }

    /// Takes the files it names relative to `config_file`.
    pub fn resolve_paths(&mut self, config_file: &Path) {
        let resolve = |path: &mut PathBuf| *path = crate::config::resolve(config_file, path);
        if let Some(path) = &mut self.token_file {
            resolve(path);
        }
        if let Some(path) = &mut self.ca_file {
            resolve(path);
        }
        if let Some(approle) = &mut self.approle {
            resolve(&mut approle.role_id_file);
            resolve(&mut approle.secret_id_file);
        }
    }

    /// What serde cannot check; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.address)
            .map_err(|e| format!("vault.address `{}` is not a URL: {e}", self.address))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!(
                "vault.address `{}` must be http(s)://host[:port]",
                self.address
            ));
        }
        match (&self.token_file, &self.approle) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(
                    "vault: set exactly one of `token_file` and `[vault.approle]`".to_string(),
                )
            }
        }
        if self.refresh_interval < Duration::from_secs(1) || self.timeout.is_zero() {
            return Err(
                "vault.refresh_interval must be at least 1s and vault.timeout above zero"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// rustls (ring) trusting `ca_file`, or the Mozilla roots without one.
pub(super) fn tls_config(config: &VaultConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(file) => {
            let certificates =
                crate::tls::read_certificates(file).map_err(|e| format!("vault.ca_file: {e}"))?;
            for certificate in certificates {
                roots.add(certificate).map_err(|e| {
                    format!(
                        "vault.ca_file {}: not a usable CA certificate: {e}",
                        file.display()
                    )
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("vault: TLS set-up failed: {e}"))
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}
