//! The last known health, kept on disk so a restart without any reachable
//! healthd still answers from it. Written atomically
//! ([`fleet::fs::replace_file`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fleet::feed::MtaState;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SavedHealthError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedHealth {
    /// Format version.
    pub version: u32,
    /// Unix seconds: when this file was written.
    pub saved_at: u64,
    /// Unix seconds: when a fresh healthd feed last confirmed this state.
    pub confirmed_at: u64,
    /// Merged state per MTA name.
    pub mtas: BTreeMap<String, MtaState>,
}

impl SavedHealth {
    pub fn new(confirmed_at: SystemTime, mtas: BTreeMap<String, MtaState>) -> SavedHealth {
        SavedHealth {
            version: 1,
            saved_at: fleet::clock::unix_secs(),
            confirmed_at: fleet::clock::secs_of(confirmed_at),
            mtas,
        }
    }
}

/// The saved state; `Ok(None)` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<SavedHealth>, SavedHealthError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SavedHealthError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| SavedHealthError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Replaces the file with `state`, atomically.
pub fn save(path: &Path, state: &SavedHealth) -> Result<(), SavedHealthError> {
    let write_err = |source| SavedHealthError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut body = serde_json::to_vec_pretty(state).map_err(|e| write_err(e.into()))?;
    body.push(b'\n');
    fleet::fs::replace_file(path, &body).map_err(write_err)
}

/// Writes the latest state handed over on `latest`, one write at a time
/// (coalescing states that arrive meanwhile), until the sender is gone.
pub async fn writer(
    mut latest: tokio::sync::watch::Receiver<Option<(PathBuf, SavedHealth)>>,
    on_error: impl Fn(&SavedHealthError) + Send + Sync + 'static,
) {
    let on_error = std::sync::Arc::new(on_error);
    while latest.changed().await.is_ok() {
        let Some((path, state)) = latest.borrow_and_update().clone() else {
            continue;
        };
        let on_error = on_error.clone();
        let result = tokio::task::spawn_blocking(move || {
            if let Err(error) = save(&path, &state) {
                on_error(&error);
            }
        })
        .await;
        if let Err(error) = result {
            tracing::error!("the state file writer failed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert_eq!(load(&path).unwrap(), None);
        let mut mtas = BTreeMap::new();
        mtas.insert("mta-1".to_string(), MtaState::Up);
        mtas.insert("mta-2".to_string(), MtaState::Drain);
        let state = SavedHealth::new(SystemTime::now(), mtas);
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("state.json"), "{error}");
    }
}
