//! A Vault (or OpenBao) client for the KV version 2 API: token or AppRole
//! auth (the AppRole token renewed before its TTL ends, or a new login),
//! TLS with a CA file, and the namespace header.

mod auth;
mod config;
pub mod import;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroize;

use crate::error_chain;
use crate::secret::{SecretBytes, VaultRef};
pub use auth::AuthStats;
pub use config::{AppRoleConfig, VaultConfig};

/// Why a read failed. [`VaultError::Unreachable`] is the one a running
/// daemon rides out with the secrets it already has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("Vault at {0} cannot be reached: {1}")]
    Unreachable(String, String),
    #[error("{0} does not exist in Vault")]
    NotFound(String),
    #[error("{0}: the secret has no field `{1}`")]
    NoField(String, String),
    #[error("{0}: Vault refused access ({1})")]
    Denied(String, String),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// One field of a KV v2 secret and the secret's version.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub value: SecretBytes,
    pub version: u64,
}

pub struct VaultClient {
    config: VaultConfig,
    http: reqwest::Client,
    auth: auth::Auth,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultClient({})", self.config.address)
    }
}

#[derive(Deserialize)]
struct KvRead {
    data: KvData,
}

#[derive(Deserialize)]
struct KvData {
    data: Option<serde_json::Map<String, serde_json::Value>>,
    metadata: KvMetadata,
}

#[derive(Deserialize)]
struct KvMetadata {
    version: u64,
}

#[derive(Deserialize, Default)]
struct VaultErrors {
    #[serde(default)]
    errors: Vec<String>,
}

impl VaultClient {
    /// A client for `config` (paths already resolved); reads the CA file.
    pub fn new(config: VaultConfig) -> Result<VaultClient, String> {
        config.check()?;
        let tls = config::tls_config(&config)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A client may outlive the runtime of the call that made it:
            // no pooled connections to go stale.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("vault: cannot build an HTTP client: {e}"))?;
        let auth = auth::Auth::new(&config);
        Ok(VaultClient { config, http, auth })
    }

    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    pub fn auth_stats(&self) -> AuthStats {
        self.auth.stats()
    }

    fn url(&self, api_path: &str) -> String {
        format!(
            "{}/v1/{}",
            self.config.address.trim_end_matches('/'),
            api_path
        )
    }

    fn request(&self, method: reqwest::Method, api_path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, self.url(api_path));
        if let Some(namespace) = &self.config.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        request
    }

    fn unreachable(&self, error: impl std::fmt::Display) -> VaultError {
        VaultError::Unreachable(self.config.address.clone(), error.to_string())
    }

    /// Sends `request` with the current token; on 403 with AppRole, logs in
    /// again once (the token may have been revoked or expired).
    async fn send_authed(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), VaultError> {
        let mut fresh_login = false;
        loop {
            let token = self.auth.token(self, fresh_login).await?;
            let response = build()
                .header("X-Vault-Token", token.as_str())
                .send()
                .await
                .map_err(|e| self.unreachable(error_chain(&e)))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| self.unreachable(error_chain(&e)))?
                .to_vec();
            if status == reqwest::StatusCode::FORBIDDEN && self.auth.can_login() && !fresh_login {
                fresh_login = true;
                continue;
            }
            return Ok((status, body));
        }
    }

    /// Reads one field of a KV v2 secret.
    pub async fn read(&self, reference: &VaultRef) -> Result<Versioned, VaultError> {
        let api_path = format!("{}/data/{}", reference.mount, reference.path);
        let (status, mut body) = self
            .send_authed(|| self.request(reqwest::Method::GET, &api_path))
            .await?;
        let named = reference.to_string();
        let result = self.parse_read(status, &body, reference, &named);
        body.zeroize();
        result
    }

    fn parse_read(
        &self,
        status: reqwest::StatusCode,
        body: &[u8],
        reference: &VaultRef,
        named: &str,
    ) -> Result<Versioned, VaultError> {
        match status.as_u16() {
            200 => {}
            404 => return Err(VaultError::NotFound(named.to_string())),
            401 | 403 => {
                return Err(VaultError::Denied(
                    named.to_string(),
                    vault_errors(status, body),
                ))
            }
            // Sealed, standby without forwarding, rate limited, overloaded.
            429 | 500..=599 => return Err(self.unreachable(vault_errors(status, body))),
            _ => {
                return Err(VaultError::Invalid(
                    named.to_string(),
                    vault_errors(status, body),
                ))
            }
        }
        let read: KvRead = serde_json::from_slice(body).map_err(|e| {
            VaultError::Invalid(
                named.to_string(),
                format!(
                    "not a KV version 2 answer (is `{}` a KV v2 mount?): {e}",
                    reference.mount
                ),
            )
        })?;
        let Some(mut data) = read.data.data else {
            // A deleted latest version reads as 404 or with null data.
            return Err(VaultError::NotFound(named.to_string()));
        };
        let found = data.remove(&reference.field);
        scrub(&mut data);
        match found {
            Some(serde_json::Value::String(mut text)) => {
                let value = SecretBytes::new(text.as_bytes().to_vec());
                text.zeroize();
                Ok(Versioned {
                    value,
                    version: read.data.metadata.version,
                })
            }
            Some(_) => Err(VaultError::Invalid(
                named.to_string(),
                format!("field `{}` is not a string", reference.field),
            )),
            None => Err(VaultError::NoField(
                named.to_string(),
                reference.field.clone(),
            )),
        }
    }

    /// Writes `fields` as a new version of the KV v2 secret at `path`.
    pub async fn write(
        &self,
        mount: &str,
        path: &str,
        fields: &BTreeMap<String, SecretBytes>,
    ) -> Result<u64, VaultError> {
        let mut data = serde_json::Map::new();
        for (name, value) in fields {
            let text = value.as_str().map_err(|_| {
                VaultError::Invalid(
                    format!("{mount}/data/{path}"),
                    format!("`{name}` is not UTF-8"),
                )
            })?;
            data.insert(name.clone(), serde_json::Value::String(text.to_string()));
        }
        let mut body = serde_json::to_vec(&KvWrite { data: &data })
            .map_err(|e| VaultError::Invalid(path.to_string(), e.to_string()))?;
        scrub(&mut data);
        let api_path = format!("{mount}/data/{path}");
        let result = self
            .send_authed(|| {
                self.request(reqwest::Method::POST, &api_path)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
            })
            .await;
        body.zeroize();
        let (status, answer) = result?;
        let named = format!("{mount}/data/{path}");
        if !status.is_success() {
            return Err(match status.as_u16() {
                401 | 403 => VaultError::Denied(named, vault_errors(status, &answer)),
                429 | 500..=599 => self.unreachable(vault_errors(status, &answer)),
                _ => VaultError::Invalid(named, vault_errors(status, &answer)),
            });
        }
        #[derive(Deserialize)]
        struct Written {
            data: KvMetadata,
        }
        serde_json::from_slice::<Written>(&answer)
            .map(|w| w.data.version)
            .map_err(|e| VaultError::Invalid(named, format!("unexpected answer to a write: {e}")))
    }

    /// When an AppRole token should next be renewed.
    pub async fn renew_at(&self) -> Option<std::time::Instant> {
        self.auth.renew_at().await
    }

    /// Renews (or replaces) the token now if it is due.
    pub async fn renew_now(&self) -> Result<(), VaultError> {
        self.auth.token(self, false).await.map(drop)
    }

    /// How long the client waits for Vault.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }
}

/// Zeroizes every string left in a JSON map before it is dropped.
fn scrub(map: &mut serde_json::Map<String, serde_json::Value>) {
    for (_, value) in map.iter_mut() {
        if let serde_json::Value::String(text) = value {
            text.zeroize();
        }
    }
}

/// `HTTP 403: permission denied` from Vault's `{"errors": [...]}`.
fn vault_errors(status: reqwest::StatusCode, body: &[u8]) -> String {
    let errors = serde_json::from_slice::<VaultErrors>(body).unwrap_or_default();
    if errors.errors.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {}", status.as_u16(), errors.errors.join("; "))
    }
}

/// The body of a KV version 2 write.
#[derive(serde::Serialize)]
struct KvWrite<'a> {
    data: &'a serde_json::Map<String, serde_json::Value>,
}
