//! openraft's state machine over the replica's [`StateDb`].
//!
//! The state is persistent: each batch of entries commits in one redb
//! transaction with the last applied log id and membership, so a restart
//! resumes where apply stopped, without a replay. Snapshots are files in the
//! snapshot directory (see [`SnapshotFile`]).

use std::io::{self, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use futures_util::{FutureExt, Stream, StreamExt};
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use tracing::{debug, info};

use super::snapshot_file::{SnapshotDir, SnapshotFile};
use super::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig, blocking};
use crate::{MetaError, StateDb};

/// At most this many entries share one transaction: batching saves fsyncs
/// when entries arrive in bursts, the bound keeps one batch's memory and
/// transaction small.
const MAX_BATCH: usize = 256;

/// The state machine as openraft drives it. Cheap handles: the state and
/// the snapshot directory are shared with the snapshot builder, and the
/// state with [`Meta`](crate::Meta)'s reads.
pub struct StateMachineStore {
    state: Arc<StateDb>,
    snapshots: Arc<SnapshotDir>,
}

impl StateMachineStore {
    /// Wraps `state`, keeping snapshots in `snapshot_dir` (created if
    /// missing; temporary files of an interrupted snapshot are removed).
    pub fn open(state: Arc<StateDb>, snapshot_dir: &Path) -> Result<StateMachineStore, MetaError> {
        let snapshots = Arc::new(SnapshotDir::open(snapshot_dir)?);
        Ok(StateMachineStore { state, snapshots })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = Arc::clone(&self.state);
        let applied = blocking(move || state.raft_applied()).await?;
        Ok((applied.last_log_id, applied.membership))
    }

    /// Applies the entries in batches of those already available (up to
    /// [`MAX_BATCH`]), one transaction each, and answers every entry's
    /// responder once its batch is committed.
    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut entries = entries.fuse();
        while let Some(first) = entries.next().await {
            let mut batch = vec![first?];
            while batch.len() < MAX_BATCH {
                match entries.next().now_or_never() {
                    Some(Some(item)) => batch.push(item?),
                    Some(None) | None => break,
                }
            }
            let (batch, responders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let state = Arc::clone(&self.state);
            let responses = blocking(move || state.apply_entries(&batch)).await?;
            for (responder, response) in responders.into_iter().zip(responses) {
                if let Some(responder) = responder {
                    responder.send(response);
                }
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            state: Arc::clone(&self.state),
            snapshots: Arc::clone(&self.snapshots),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let state = Arc::clone(&self.state);
        let snapshots = Arc::clone(&self.snapshots);
        let meta = meta.clone();
        blocking(move || install(&state, &snapshots, meta, snapshot)).await?;
        crate::telemetry::snapshot_installed();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let snapshots = Arc::clone(&self.snapshots);
        blocking(move || snapshots.current()).await
    }
}

/// Builds a snapshot of the state as of one read transaction; applies go on
/// meanwhile (redb readers do not block the writer).
pub struct SnapshotBuilder {
    state: Arc<StateDb>,
    snapshots: Arc<SnapshotDir>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = Arc::clone(&self.state);
        let snapshots = Arc::clone(&self.snapshots);
        let started = std::time::Instant::now();
        let snapshot = blocking(move || build(&state, &snapshots)).await?;
        crate::telemetry::snapshot_built(started.elapsed());
        Ok(snapshot)
    }
}

/// Writes the snapshot to a temporary file, fsyncs it and publishes it as
/// the current one (unless a newer one was installed meanwhile). The handle
/// returned reads the file built, published or not.
fn build(state: &StateDb, snapshots: &SnapshotDir) -> Result<Snapshot, MetaError> {
    let (temp_path, temp) = snapshots.temp_file("building")?;
    let built = (|| {
        let mut out = BufWriter::new(&temp);
        let (info, raft) = state.write_snapshot(&mut out)?;
        out.flush()?;
        drop(out);
        temp.sync_all()?;
        let meta = SnapshotMeta {
            last_log_id: raft.last_log_id,
            last_membership: raft.membership,
        };
        let published = snapshots.publish(&temp_path, meta.clone(), true)?;
        info!(
            last_log_id = ?meta.last_log_id,
            tags = info.tags,
            entries = info.entries,
            published,
            "built raft snapshot"
        );
        Ok(meta)
    })();
    match built {
        Ok(meta) => {
            // Not published: the handle still reads the file once unlinked.
            remove_if_present(&temp_path);
            Ok(Snapshot {
                meta,
                snapshot: SnapshotFile::from_file(temp),
            })
        }
        Err(e) => {
            remove_if_present(&temp_path);
            Err(e)
        }
    }
}

/// Installs a snapshot received from the leader: copies it into the
/// snapshot directory (fsynced), then replaces the state in one
/// transaction. Just before that commits, the file becomes the current
/// snapshot: a crash in between leaves a snapshot newer than the state,
/// which openraft installs again at start, never a state no snapshot holds.
fn install(
    state: &StateDb,
    snapshots: &SnapshotDir,
    meta: SnapshotMeta,
    snapshot: SnapshotFile,
) -> Result<(), MetaError> {
    let (temp_path, mut temp) = snapshots.temp_file("incoming")?;
    let installed = (|| {
        let mut source = snapshot.into_file()?;
        let bytes = io::copy(&mut source, &mut temp)?;
        temp.sync_all()?;
        temp.seek(SeekFrom::Start(0))?;
        let info = state.install_snapshot_then(BufReader::new(&temp), |raft| {
            if raft.last_log_id != meta.last_log_id || raft.membership != meta.last_membership {
                return Err(MetaError::InvalidSnapshot {
                    line: 1,
                    reason: "header does not match the snapshot's metadata".to_owned(),
                });
            }
            snapshots.publish(&temp_path, meta.clone(), false).map(drop)
        })?;
        debug!(
            bytes,
            tags = info.tags,
            entries = info.entries,
            "snapshot data installed"
        );
        Ok(())
    })();
    if installed.is_err() {
        remove_if_present(&temp_path);
    }
    installed
}

/// Best effort: a temporary file left behind is removed at the next start.
fn remove_if_present(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        debug!(path = %path.display(), error = %e, "cannot remove temporary snapshot file");
    }
}
