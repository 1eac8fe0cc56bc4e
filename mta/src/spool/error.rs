//! Why the spool's writer could not write: each a sentence for the operator
//! naming the segment, state file or directory.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// The I/O error behind a [`WriteError`], shared by every sender of a group
/// that failed together.
pub type IoCause = Arc<io::Error>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("cannot start the spool writer thread: {0}")]
    Thread(#[source] IoCause),
    #[error("cannot create spool segment {}: {source}", path.display())]
    CreateSegment { path: PathBuf, source: IoCause },
    #[error("cannot write spool segment {}: {source}", path.display())]
    WriteSegment { path: PathBuf, source: IoCause },
    #[error("cannot move {} into the spool as {}: {source}", from.display(), to.display())]
    Adopt {
        from: PathBuf,
        to: PathBuf,
        source: IoCause,
    },
    #[error("cannot sync the spool directory {}: {source}", dir.display())]
    SyncDir { dir: PathBuf, source: IoCause },
    #[error("cannot sync spool state file {}: {source}", path.display())]
    SyncState { path: PathBuf, source: IoCause },
    #[error("the spool directory {} cannot be written: {source}", dir.display())]
    Unwritable { dir: PathBuf, source: IoCause },
    #[error("no spool segment is open to write into (creating the last one failed)")]
    NoSegment,
    #[error("the spool is closed")]
    Closed,
    #[error("the spool writer has stopped")]
    Stopped,
}
