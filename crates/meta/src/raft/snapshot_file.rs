//! Snapshot files: the data openraft hands between the state machine and the
//! network, and the directory that keeps the current one.
//!
//! A snapshot is a file, never a buffer: the state machine writes it line by
//! line, the network streams it in chunks, a receiver writes it to a
//! file again and the state machine installs it line by line. Memory stays
//! bounded by one line whatever the size of the index.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tracing::{info, warn};

use super::{Snapshot, SnapshotMeta};
use crate::MetaError;
use crate::state_dump::read_raft_header;

/// The snapshot's file name in its directory. Only ever replaced by rename,
/// so a reader sees the old or the new file, never half of one.
const CURRENT: &str = "current.jsonl";

/// A snapshot's bytes, as an open file (openraft's `SnapshotData`).
///
/// An open handle rather than a path: a newer snapshot may replace the
/// current file while this one is still being sent, and the handle keeps
/// reading the file it was opened on.
pub struct SnapshotFile {
    file: File,
}

impl SnapshotFile {
    /// Wraps a file holding a snapshot, e.g. one a follower received from
    /// the leader (write it to a temporary file, then call
    /// `Raft::install_full_snapshot` with this and the leader's metadata).
    /// It is read from its start, and copied into the snapshot directory on
    /// install, so the file can live anywhere and be deleted afterwards.
    pub fn from_file(file: File) -> SnapshotFile {
        SnapshotFile { file }
    }

    /// The open file, rewound to its start, for the network to stream.
    pub fn into_file(mut self) -> io::Result<File> {
        self.file.seek(SeekFrom::Start(0))?;
        Ok(self.file)
    }

    /// Size in bytes.
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("len", &self.len().ok())
            .finish()
    }
}

/// The snapshot directory: the current snapshot and temporary files of
/// snapshots being built or received.
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    /// Metadata of the current file, `None` while there is none. Publishing
    /// and opening both hold this lock, so an opened file always matches the
    /// metadata handed out with it.
    current: Mutex<Option<SnapshotMeta>>,
    next_temp: AtomicU64,
}

impl SnapshotDir {
    /// Opens (creates) `dir`, removes temporary files a crash left behind,
    /// and reads the current snapshot's metadata from its header. A current
    /// file that does not parse is an error, not something to delete: it may
    /// be the only copy of state whose log is purged.
    pub(crate) fn open(dir: &Path) -> Result<SnapshotDir, MetaError> {
        fs::create_dir_all(dir).map_err(|source| MetaError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        for item in fs::read_dir(dir)? {
            let path = item?.path();
            if path.extension().is_some_and(|ext| ext == "tmp") {
                warn!(path = %path.display(), "removing an unfinished snapshot file");
                fs::remove_file(&path)?;
            }
        }
        let path = dir.join(CURRENT);
        let current = match File::open(&path) {
            Ok(file) => {
                let raft = read_raft_header(BufReader::new(file))?;
                let meta = SnapshotMeta {
                    last_log_id: raft.last_log_id,
                    last_membership: raft.membership,
                };
                info!(path = %path.display(), last_log_id = ?meta.last_log_id, "found raft snapshot");
                Some(meta)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        Ok(SnapshotDir {
            dir: dir.to_owned(),
            current: Mutex::new(current),
            next_temp: AtomicU64::new(0),
        })
    }

    /// A new, empty temporary file (read and write) for a snapshot being
    /// built or received; `kind` names which in the file name.
    pub(crate) fn temp_file(&self, kind: &str) -> Result<(PathBuf, File), MetaError> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{kind}-{}-{n}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    /// Makes `temp` (written and fsynced by the caller) the current snapshot
    /// and fsyncs the directory, so the rename survives a crash. With
    /// `only_if_newer`, a snapshot older than the current one is not
    /// published (a slow build finishing after a newer install); returns
    /// whether it was.
    pub(crate) fn publish(
        &self,
        temp: &Path,
        meta: SnapshotMeta,
        only_if_newer: bool,
    ) -> Result<bool, MetaError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if only_if_newer
            && let Some(existing) = current.as_ref()
            && existing.last_log_id > meta.last_log_id
        {
            return Ok(false);
        }
        fs::rename(temp, self.dir.join(CURRENT))?;
        File::open(&self.dir)?.sync_all()?;
        *current = Some(meta);
        Ok(true)
    }

    /// The current snapshot, opened, with its metadata.
    pub(crate) fn current(&self) -> Result<Option<Snapshot>, MetaError> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(meta) = current.as_ref() else {
            return Ok(None);
        };
        let file = File::open(self.dir.join(CURRENT))?;
        Ok(Some(Snapshot {
            meta: meta.clone(),
            snapshot: SnapshotFile::from_file(file),
        }))
    }
}
