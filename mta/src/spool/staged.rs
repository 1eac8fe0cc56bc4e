//! A message written to the spool while it arrives, as Postfix writes its
//! queue file while receiving: memory holds one chunk, never the message.
//!
//! The file is a segment of one record, in the format of every other
//! segment ([`super::record`]): it is written in `incoming/` with a zeroed
//! record header, its checksum computed on the way; once the message is
//! complete the header is filled in, the file synced, and the writer thread
//! renames it into the spool as a sealed segment of its own (one directory
//! sync for every file renamed in the same group). Only then is the message
//! acknowledged. Recovery reads it like any segment; whatever is still in
//! `incoming/` at start was never acknowledged and is deleted.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::record::{self, HEADER_LEN, MAX_PAYLOAD};
use super::{now_ms, writer, Spool, SpoolError, Stored, WriteError};
use crate::message::{MessageId, NewMessage};

/// The folder of messages still arriving, inside the spool.
pub(crate) fn incoming_dir(spool: &Path) -> PathBuf {
    spool.join("incoming")
}

/// Deletes what a previous run left in `incoming/` (never acknowledged)
/// and makes sure the folder exists (mode 0700). Best effort: a spool that
/// cannot be written (a read-only copy) is still read.
pub(crate) fn clear_incoming(spool: &Path) {
    let dir = incoming_dir(spool);
    let left = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) if left > 0 => tracing::info!(
            "spool {}: deleted {left} message(s) that were still arriving when the node stopped (never acknowledged)",
            dir.display()
        ),
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot clear {}: {e}", dir.display()),
    }
    if let Err(e) = super::create_private_dir(&dir) {
        tracing::warn!(
            "cannot create {}: {e}; messages larger than smtp.max_header_size cannot be received",
            dir.display()
        );
    }
}

/// A message being written to its own file; dropped before
/// [`Spool::commit_staged`], the file is deleted.
pub struct Staged {
    file: Option<File>,
    path: PathBuf,
    crc: crc32fast::Hasher,
    /// Bytes written, record header included.
    len: u64,
    /// Bytes of message data written.
    data_len: u64,
    seq: u64,
    received_ms: u64,
    recipients: u16,
    committed: bool,
}

fn unavailable(path: &Path, what: &str, e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Unavailable(format!("cannot {what} {}: {e}", path.display()))
}

impl Staged {
    /// Bytes of message data written so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Appends `chunk` to the message; gives the buffer back emptied.
    pub async fn append(&mut self, chunk: Vec<u8>) -> Result<Vec<u8>, SpoolError> {
        if self.len - HEADER_LEN as u64 + chunk.len() as u64 > MAX_PAYLOAD as u64 {
            return Err(SpoolError::Unavailable(format!(
                "a spool record holds at most {MAX_PAYLOAD} bytes"
            )));
        }
        let mut file = self.file.take().ok_or_else(|| {
            SpoolError::Unavailable("an earlier write to this message failed".into())
        })?;
        self.crc.update(&chunk);
        let path = self.path.clone();
        let (file, mut chunk, result) = tokio::task::spawn_blocking(move || {
            let result = file.write_all(&chunk);
            (file, chunk, result)
        })
        .await
        .map_err(|e| unavailable(&path, "write", e))?;
        result.map_err(|e| unavailable(&path, "write", e))?;
        self.file = Some(file);
        self.len += chunk.len() as u64;
        self.data_len += chunk.len() as u64;
        chunk.clear();
        Ok(chunk)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Spool {
    /// Starts a message whose data begins with `message.data` and goes on
    /// with [`Staged::append`]; [`Spool::commit_staged`] makes it durable.
    pub async fn stage(&self, message: NewMessage) -> Result<Staged, SpoolError> {
        self.check_acceptable(&message)?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let received_ms = now_ms();
        let mut start = record::encode_open(seq, received_ms, &message, message.data.len());
        start.extend_from_slice(&message.data);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&start[HEADER_LEN..]);
        let len = start.len() as u64;
        let path = incoming_dir(&self.shared.dir).join(format!("{seq:016x}.msg"));
        let file = {
            let into = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut file = super::private_file()
                    .write(true)
                    .create_new(true)
                    .open(&into)?;
                let written = file.write_all(&start);
                if written.is_err() {
                    let _ = std::fs::remove_file(&into);
                }
                written.map(|()| file)
            })
            .await
            .map_err(|e| unavailable(&path, "create", e))?
            .map_err(|e| unavailable(&path, "create", e))?
        };
        Ok(Staged {
            file: Some(file),
            len,
            data_len: message.data.len() as u64,
            path,
            crc,
            seq,
            received_ms,
            recipients: message.recipients.len() as u16,
            committed: false,
        })
    }

    /// Completes the record, syncs it and moves it into the spool; returns
    /// the message's id once it is durable.
    pub async fn commit_staged(&self, mut staged: Staged) -> Result<MessageId, SpoolError> {
        let file = staged.file.take().ok_or_else(|| {
            SpoolError::Unavailable("an earlier write to this message failed".into())
        })?;
        let payload = staged.len - HEADER_LEN as u64;
        let header = record::header_bytes(payload as u32, staged.crc.clone().finalize());
        let path = staged.path.clone();
        tokio::task::spawn_blocking(move || {
            file.write_all_at(&header, 0)?;
            file.sync_data()
        })
        .await
        .map_err(|e| unavailable(&path, "sync", e))?
        .map_err(|e| unavailable(&path, "sync", e))?;
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(writer::Op::Adopt {
            path: staged.path.clone(),
            len: staged.len,
            jobs: staged.recipients as u64,
            reply,
        })?;
        // From here the writer owns the file (renamed, or deleted on failure).
        staged.committed = true;
        let (segment, offset) = done
            .await
            .map_err(|_| SpoolError::from(WriteError::Stopped))??;
        Ok(self.arrive(Stored {
            seq: staged.seq,
            received_ms: staged.received_ms,
            segment,
            offset,
            len: staged.len as u32,
            recipients: staged.recipients,
        }))
    }
}
