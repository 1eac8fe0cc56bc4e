//! Credentials: who may submit through this node.
//!
//! A credential is looked up in this node's own cluster of the fleet in
//! service (so a credential of another cluster is simply unknown here), its
//! argon2 hash verified on the blocking pool, a bounded number at a time.
//! Verified (username, hash, password) triples are remembered under a keyed
//! digest: a busy client does not pay argon2 per connection, and a password
//! changed on reload has another hash, so the old entry no longer matches
//! (the old password is refused at once; a removed credential is not found).
//! An unknown user costs the same argon2 work as a wrong password, and both
//! get the same answer.
//!
//! Why the cache is safe: an entry is SHA-256 over a random per-process
//! secret, the username, the stored hash and the password. It only ever
//! says "this exact triple verified before"; a wrong password, or the right
//! one against a changed hash, gives another digest and pays argon2 in
//! full, so the cache never makes guessing cheaper. Without the secret
//! (never written anywhere) a digest cannot be tested against guesses, and
//! with it (a memory dump) a digest is a fast hash of the password: the
//! cache is therefore bounded ([`CACHE_LIMIT`] entries) and each entry
//! lives at most [`CACHE_TTL`], after which argon2 runs again.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet::Live;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::Settings;

/// The identity a message is submitted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub cluster: String,
    /// The domains this credential may send as, lower case.
    pub domains: Arc<[String]>,
}

impl Principal {
    /// True when `domain` (any case, trailing dot ignored) is one of ours.
    pub fn may_send_as(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// "No such user" and "wrong password" are one and the same failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication credentials invalid")]
pub struct AuthFailed;

/// Verifies credentials against the live fleet.
pub struct Authenticator {
    live: Arc<Live<Settings>>,
    /// Digest of a verified triple, and when it was verified.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// Per-process key of the cache digests: no plain hash of a password is
    /// kept in memory.
    secret: [u8; 32],
    /// argon2 uses ~19 MiB and tens of ms per verification: bound how many
    /// run at once so a flood of AUTH cannot exhaust memory or the pool.
    argon2_slots: Semaphore,
}

/// Verified entries kept at most; when full, expired ones go, and if none
/// has expired the cache starts afresh.
pub const CACHE_LIMIT: usize = 10_000;
/// How long a verified entry saves argon2.
pub const CACHE_TTL: Duration = Duration::from_secs(15 * 60);

/// Hash of a random string, verified in place of a missing user's hash.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$zrhvWrUeOfCwG471RK+nww$ipDpZFmXY3/T8bF6T1bUUo55COeBfA8Fg3UKLZZJBEo";

impl Authenticator {
    pub fn new(live: Arc<Live<Settings>>) -> Arc<Authenticator> {
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Arc::new(Authenticator {
            live,
            verified: Mutex::new(HashMap::new()),
            secret: rand::random(),
            argon2_slots: Semaphore::new(parallel * 2),
        })
    }

    /// The principal for `username` / `password` in this node's cluster.
    pub async fn verify(&self, username: &str, password: &str) -> Result<Principal, AuthFailed> {
        let settings = self.live.get();
        let found = settings.cluster().and_then(|cluster| {
            cluster
                .credentials
                .iter()
                .find(|c| c.username == username)
                .map(|credential| (cluster, credential))
        });
        // A hash still unresolved cannot match anything.
        let found = found.and_then(|(cluster, credential)| {
            credential
                .password
                .value()
                .map(|phc| (cluster, credential, phc))
        });
        let Some((cluster, credential, phc)) = found else {
            // Same work as a real check, so timing tells nothing.
            self.argon2(DUMMY_HASH, password).await;
            return Err(AuthFailed);
        };
        let phc = phc.as_str();
        let key = self.cache_key(username, phc, password);
        let cached = self
            .lock()
            .get(&key)
            .is_some_and(|at| at.elapsed() < CACHE_TTL);
        if !cached {
            if !self.argon2(phc, password).await {
                return Err(AuthFailed);
            }
            let mut verified = self.lock();
            if verified.len() >= CACHE_LIMIT {
                verified.retain(|_, at| at.elapsed() < CACHE_TTL);
                if verified.len() >= CACHE_LIMIT {
                    verified.clear();
                }
            }
            verified.insert(key, Instant::now());
        }
        Ok(Principal {
            username: username.to_string(),
            cluster: cluster.id.clone(),
            domains: cluster
                .allowed_domains(credential)
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        })
    }

    async fn argon2(&self, phc: &str, password: &str) -> bool {
        let Ok(_slot) = self.argon2_slots.acquire().await else {
            return false;
        };
        let (phc, password) = (phc.to_string(), password.to_string());
        tokio::task::spawn_blocking(move || fleet::password::verify_password(&phc, &password))
            .await
            .unwrap_or(false)
    }

    fn cache_key(&self, username: &str, phc: &str, password: &str) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.secret);
        for part in [username, phc, password] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
        digest.finalize().into()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.verified.lock()
    }
}
