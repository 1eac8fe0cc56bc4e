//! Dashboard sessions: signing in keeps the viewer's token here, server
//! side, under an opaque random id; the cookie holds only that id. Signing
//! out ends the session, a session lasts at most [`TTL`], and a token that
//! leaves the fleet file stops opening anything at once (the token is
//! checked against the live fleet on every request).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The longest a dashboard session lasts.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; past it the oldest go first.
const MAX_SESSIONS: usize = 10_000;

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

struct Session {
    token: String,
    started: Instant,
}

impl Sessions {
    /// A new session for `token`; returns its id (64 hex digits, 256 random
    /// bits).
    pub fn open(&self, token: &str) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let mut sessions = self.by_id.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.started.elapsed() < TTL);
            if sessions.len() >= MAX_SESSIONS {
                let oldest = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.started)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    sessions.remove(&oldest);
                }
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                token: token.to_string(),
                started: Instant::now(),
            },
        );
        id
    }

    /// The token of a live session.
    pub fn token(&self, id: &str) -> Option<String> {
        let mut sessions = self.by_id.lock();
        match sessions.get(id) {
            Some(s) if s.started.elapsed() < TTL => Some(s.token.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session (sign-out).
    pub fn close(&self, id: &str) {
        self.by_id.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_opaque_and_sign_out_ends_them() {
        let sessions = Sessions::default();
        let a = sessions.open("acme-token");
        let b = sessions.open("acme-token");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(!a.contains(&hex::encode("acme-token")));
        assert_eq!(sessions.token(&a).as_deref(), Some("acme-token"));
        sessions.close(&a);
        assert_eq!(sessions.token(&a), None);
        assert_eq!(sessions.token(&b).as_deref(), Some("acme-token"));
        assert_eq!(sessions.token("not-a-session"), None);
    }
}
