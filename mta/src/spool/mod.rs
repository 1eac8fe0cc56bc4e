//! The durable spool. `accept` returns only once the message is on disk.
//!
//! PLACEHOLDER: one file per message with fsync; the store work replaces the
//! inside (group commit, recovery, the queue) and keeps this interface.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::message::{MessageId, NewMessage};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool cannot store messages: {0}")]
    Unavailable(String),
}

pub struct Spool {
    dir: PathBuf,
    next: AtomicU64,
}

impl Spool {
    pub async fn open(dir: &Path) -> Result<Arc<Spool>, SpoolError> {
        tokio::fs::create_dir_all(dir).await.map_err(|e| {
            SpoolError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        Ok(Arc::new(Spool {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(0),
        }))
    }

    /// Stores `message` durably and returns its id.
    pub async fn accept(&self, message: NewMessage) -> Result<MessageId, SpoolError> {
        let id = MessageId(format!(
            "{:016x}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        let path = self.dir.join(format!("{id}.eml"));
        let data = message.data.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&data)?;
            file.sync_all()
        })
        .await
        .map_err(|e| SpoolError::Unavailable(e.to_string()))?
        .map_err(|e| SpoolError::Unavailable(e.to_string()))?;
        Ok(id)
    }

    /// `Err` with the reason when the spool cannot take mail.
    pub fn health(&self) -> Result<(), String> {
        Ok(())
    }
}
