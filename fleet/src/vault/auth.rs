//! The token a request carries: read from a file, or from an AppRole login
//! that is renewed at two thirds of its TTL (and logged in afresh when
//! renewal fails or the token nears its maximum TTL).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error_chain;

use super::{vault_errors, VaultClient, VaultConfig, VaultError};

/// How the client got its tokens, for `/status` (never a token).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AuthStats {
    pub method: &'static str,
    pub logins: u64,
    pub renewals: u64,
    /// TTL of the token in use, seconds (0: does not expire).
    pub token_ttl_secs: u64,
    /// When the token in use expires (AppRole; `None`: never or unknown).
    #[serde(skip)]
    pub expires: Option<Instant>,
}

pub(super) struct Lease {
    token: Zeroizing<String>,
    ttl: Duration,
    renew_at: Instant,
    expires: Instant,
    /// Renewal gave less than half the first TTL: log in next time.
    login_next: bool,
}

impl Lease {
    fn new(token: String, ttl: Duration, login_next: bool) -> Lease {
        let now = Instant::now();
        let far = now + Duration::from_secs(10 * 365 * 86_400);
        let (renew_at, expires) = if ttl.is_zero() {
            (far, far)
        } else {
            (now + ttl * 2 / 3, now + ttl)
        };
        Lease {
            token: Zeroizing::new(token),
            ttl,
            renew_at,
            expires,
            login_next,
        }
    }
}

pub(super) enum Auth {
    TokenFile(PathBuf),
    AppRole(Box<AppRole>),
}

pub(super) struct AppRole {
    role_id_file: PathBuf,
    secret_id_file: PathBuf,
    mount: String,
    lease: tokio::sync::Mutex<Option<Lease>>,
    stats: parking_lot::Mutex<AuthStats>,
}

#[derive(Deserialize)]
struct AuthAnswer {
    auth: AuthData,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    lease_duration: u64,
}

fn read_trimmed(path: &PathBuf, key: &str) -> Result<Zeroizing<String>, VaultError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        VaultError::Invalid(
            format!("vault.{key} {}", path.display()),
            format!("cannot be read: {e}"),
        )
    })?);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(VaultError::Invalid(
            format!("vault.{key} {}", path.display()),
            "is empty".to_string(),
        ));
    }
    Ok(Zeroizing::new(trimmed.to_string()))
}

impl Auth {
    pub(super) fn new(config: &VaultConfig) -> Auth {
        match (&config.approle, &config.token_file) {
            (Some(approle), _) => Auth::AppRole(Box::new(AppRole {
                role_id_file: approle.role_id_file.clone(),
                secret_id_file: approle.secret_id_file.clone(),
                mount: approle.mount.clone(),
                lease: tokio::sync::Mutex::new(None),
                stats: parking_lot::Mutex::new(AuthStats {
                    method: "approle",
                    ..AuthStats::default()
                }),
            })),
            (None, file) => Auth::TokenFile(file.clone().unwrap_or_default()),
        }
    }

    pub(super) fn can_login(&self) -> bool {
        matches!(self, Auth::AppRole(_))
    }

    pub(super) fn stats(&self) -> AuthStats {
        match self {
            Auth::TokenFile(_) => AuthStats {
                method: "token",
                ..AuthStats::default()
            },
            Auth::AppRole(approle) => approle.stats.lock().clone(),
        }
    }

    /// The token for the next request: renewed or replaced when due.
    pub(super) async fn token(
        &self,
        client: &VaultClient,
        force_login: bool,
    ) -> Result<Zeroizing<String>, VaultError> {
        let AppRole {
            role_id_file,
            secret_id_file,
            mount,
            lease,
            stats,
        } = match self {
            Auth::TokenFile(path) => return read_trimmed(path, "token_file"),
            Auth::AppRole(approle) => approle.as_ref(),
        };
        let mut lease = lease.lock().await;
        let now = Instant::now();
        let due = match lease.as_ref() {
            None => true,
            Some(current) => force_login || now >= current.expires || current.login_next,
        };
        if !due && lease.as_ref().is_some_and(|l| now >= l.renew_at) {
            let current = lease.as_ref().expect("checked above");
            match renew(client, &current.token).await {
                Ok(ttl) => {
                    let login_next = ttl < current.ttl / 2;
                    let first_ttl = current.ttl;
                    let token = std::mem::take(&mut *lease.as_mut().expect("checked").token);
                    let mut renewed = Lease::new(token, ttl, login_next);
                    renewed.ttl = first_ttl;
                    *lease = Some(renewed);
                    let mut stats = stats.lock();
                    stats.renewals += 1;
                    stats.token_ttl_secs = ttl.as_secs();
                    stats.expires = (!ttl.is_zero()).then(|| Instant::now() + ttl);
                    tracing::debug!(ttl_secs = ttl.as_secs(), "vault: token renewed");
                }
                Err(error) => {
                    tracing::warn!("vault: token renewal failed, logging in again: {error}");
                    *lease = None;
                }
            }
        }
        if due || lease.is_none() {
            let (token, ttl) = login(client, role_id_file, secret_id_file, mount).await?;
            *lease = Some(Lease::new(token, ttl, false));
            let mut stats = stats.lock();
            stats.logins += 1;
            stats.token_ttl_secs = ttl.as_secs();
            stats.expires = (!ttl.is_zero()).then(|| Instant::now() + ttl);
            tracing::info!(ttl_secs = ttl.as_secs(), "vault: AppRole login");
        }
        Ok(lease.as_ref().expect("set above").token.clone())
    }

    /// When the token should next be renewed, if it expires.
    pub(super) async fn renew_at(&self) -> Option<Instant> {
        match self {
            Auth::TokenFile(_) => None,
            Auth::AppRole(approle) => approle
                .lease
                .lock()
                .await
                .as_ref()
                .filter(|l| !l.ttl.is_zero())
                .map(|l| l.renew_at),
        }
    }
}

async fn login(
    client: &VaultClient,
    role_id_file: &PathBuf,
    secret_id_file: &PathBuf,
    mount: &str,
) -> Result<(String, Duration), VaultError> {
    let role_id = read_trimmed(role_id_file, "approle.role_id_file")?;
    let secret_id = read_trimmed(secret_id_file, "approle.secret_id_file")?;
    let mut body = serde_json::to_vec(&AppRoleLogin {
        role_id: &role_id,
        secret_id: &secret_id,
    })
    .map_err(|e| VaultError::Invalid("vault.approle".into(), e.to_string()))?;
    let sent = client
        .request(reqwest::Method::POST, &format!("auth/{mount}/login"))
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await;
    body.zeroize();
    let answer = auth_answer(client, sent, &format!("AppRole login at auth/{mount}")).await?;
    Ok((
        answer.client_token,
        Duration::from_secs(answer.lease_duration),
    ))
}

async fn renew(client: &VaultClient, token: &str) -> Result<Duration, VaultError> {
    let sent = client
        .request(reqwest::Method::POST, "auth/token/renew-self")
        .header("X-Vault-Token", token)
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await;
    let mut answer = auth_answer(client, sent, "token renewal").await?;
    answer.client_token.zeroize();
    Ok(Duration::from_secs(answer.lease_duration))
}

async fn auth_answer(
    client: &VaultClient,
    sent: reqwest::Result<reqwest::Response>,
    what: &str,
) -> Result<AuthData, VaultError> {
    let response = sent.map_err(|e| client.unreachable(error_chain(&e)))?;
    let status = response.status();
    let mut body = response
        .bytes()
        .await
        .map_err(|e| client.unreachable(error_chain(&e)))?
        .to_vec();
    let result = if status.is_success() {
        serde_json::from_slice::<AuthAnswer>(&body)
            .map(|a| a.auth)
            .map_err(|e| VaultError::Invalid(what.to_string(), format!("unexpected answer: {e}")))
    } else if status.is_server_error() || status.as_u16() == 429 {
        Err(client.unreachable(vault_errors(status, &body)))
    } else {
        Err(VaultError::Denied(
            what.to_string(),
            vault_errors(status, &body),
        ))
    };
    body.zeroize();
    result
}

/// The body of an AppRole login.
#[derive(serde::Serialize)]
struct AppRoleLogin<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}
