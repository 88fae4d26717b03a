//! Cluster metadata: tags and the content index, changed only by [`Command`]s
//! applied in order to a [`StateMachine`] persisted in redb.
//!
//! Callers only [`Meta::propose`] commands and read the local state. Today a
//! local counter orders the commands; later the Raft log does, behind the
//! same methods, and the state machine stays as it is. [`raft`] holds the
//! storage openraft needs for that (not wired into `propose` yet).

mod access;
mod command;
mod error;
pub mod raft;
mod snapshot;
mod state;
mod tables;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci::Digest;
use tracing::info;

pub use access::AccessFlusher;
pub use command::{Command, Entry, EntryKind, TagKey, TagRecord};
pub use error::MetaError;
pub use snapshot::SnapshotInfo;
pub use state::{MetaStats, RaftApplied, StateMachine};

use access::PendingAccesses;

/// A replica's handle on the metadata. Share it as `Arc<Meta>`.
pub struct Meta {
    state: Arc<StateMachine>,
    /// Stand-in for the Raft log: the next index to assign. Held while a
    /// command applies, so indexes and applies happen in the same order.
    next_index: Arc<Mutex<u64>>,
    accesses: PendingAccesses,
}

impl Meta {
    /// Opens (creates) the redb file at `path` (e.g.
    /// `<data_dir>/meta/state.redb`), creating its directory. Indexes
    /// continue after the last one applied before.
    pub fn open(path: &Path) -> Result<Meta, MetaError> {
        let state = StateMachine::open(path)?;
        let last_applied = state.last_applied()?;
        info!(path = %path.display(), ?last_applied, "opened metadata");
        Ok(Meta {
            state: Arc::new(state),
            next_index: Arc::new(Mutex::new(last_applied.map_or(1, |i| i + 1))),
            accesses: PendingAccesses::default(),
        })
    }

    /// Orders and applies one command: one redb write transaction on tokio's
    /// blocking pool, durable on return (except `Touch`, see
    /// [`StateMachine::apply`]). Later: a Raft proposal, returning once
    /// committed and applied locally. If the future is dropped early the
    /// command may still be applied.
    pub async fn propose(&self, cmd: Command) -> Result<(), MetaError> {
        let state = Arc::clone(&self.state);
        let next_index = Arc::clone(&self.next_index);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means an apply panicked; its transaction
            // was dropped uncommitted and the index not consumed.
            let mut next = next_index.lock().unwrap_or_else(PoisonError::into_inner);
            state.apply(*next, &cmd)?;
            *next += 1;
            Ok(())
        })
        .await?
    }

    /// The tag as this replica last applied it. A follower may lag the leader
    /// by the commands it has not applied yet.
    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, MetaError> {
        self.state.tag(key)
    }

    /// The index entry as this replica last applied it (a follower may lag).
    pub fn entry(&self, digest: &Digest) -> Result<Option<Entry>, MetaError> {
        self.state.entry(digest)
    }

    /// Every tag of one repository, by name, from the local state (a follower
    /// may lag). For tools and the status page.
    pub fn tags_of(&self, upstream: &str, repo: &str) -> Result<Vec<(String, TagRecord)>, MetaError> {
        self.state.tags_of(upstream, repo)
    }

    /// Counts and bytes of the local state (a follower may lag).
    pub fn stats(&self) -> Result<MetaStats, MetaError> {
        self.state.stats()
    }

    /// Notes that `digest` was served now, without a write: the flusher
    /// proposes all noted accesses as one `Touch` per interval. Memory is
    /// one map slot per distinct digest served since the last flush.
    pub fn record_access(&self, digest: &Digest) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.accesses.record(digest, now);
    }

    /// Proposes the accesses noted so far as one `Touch`, now; returns how
    /// many digests it carried. On failure they stay pending for the next try.
    pub async fn flush_accesses(&self) -> Result<usize, MetaError> {
        let accesses = self.accesses.take();
        if accesses.is_empty() {
            return Ok(0);
        }
        let count = accesses.len();
        let cmd = Command::Touch {
            accesses: accesses.clone(),
        };
        if let Err(error) = self.propose(cmd).await {
            self.accesses.restore(accesses);
            return Err(error);
        }
        Ok(count)
    }

    /// Spawns the task that flushes noted accesses every `interval` (e.g.
    /// 5s). Must be called inside a tokio runtime.
    pub fn spawn_access_flusher(self: &Arc<Self>, interval: Duration) -> AccessFlusher {
        AccessFlusher::spawn(Arc::clone(self), interval)
    }
}
