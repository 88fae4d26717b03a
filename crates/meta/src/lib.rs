//! Cluster metadata: tags and the content index, changed only by [`Command`]s
//! applied in order to a [`StateDb`] persisted in redb.
//!
//! Callers only [`Meta::propose`] commands and read the local state. A
//! serving replica orders commands through its Raft group ([`Meta::start`],
//! a group of one by default); offline tools order them with a local counter
//! ([`Meta::open_offline`]) on a state no group owns.

mod access;
mod command;
mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;
mod gc;
mod gc_control;
#[cfg(test)]
mod gc_tests;
mod group;
mod raft;
mod state;
mod state_dump;
#[cfg(test)]
mod state_dump_tests;
mod status;
mod tables;
mod telemetry;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oci::Digest;
use tonic::transport::server::TcpIncoming;
use tracing::info;

pub use access::{ACCESS_FLUSH_INTERVAL, AccessFlusher};
pub use command::{Command, Entry, EntryKind, TagKey, TagRecord};
pub use error::MetaError;
pub use gc::{GcState, LOW_WATERMARK};
pub use gc_control::{GcControl, GcFuture, GcPlan, GcReport, GcRound, GcRunOutcome};
pub use group::GroupSettings;
pub use state::MetaStats;
pub(crate) use state::StateDb;
pub use state_dump::SnapshotInfo;
pub use status::{GroupStatus, MemberStatus};

/// Every client of another member's cluster port dials it through this, so
/// keepalives and timeouts (and later transport security) are one setting.
pub use raft::peer_endpoint as cluster_endpoint;

/// The client of the cluster port's Admin service, for `regcache cluster`.
pub mod admin {
    pub use crate::raft::admin::{
        AddNode, AdminError, RemoveNode, add_node, gc_run, gc_status, remove_node, status,
    };
}

use access::PendingAccesses;
use group::Group;

/// A replica's handle on the metadata. Share it as `Arc<Meta>`.
pub struct Meta {
    state: Arc<StateDb>,
    order: Order,
    accesses: PendingAccesses,
}

/// Who decides the order commands apply in.
enum Order {
    /// The Raft log of the group this replica belongs to.
    Raft(Box<Group>),
    /// A local counter: the next index to assign, held while a command
    /// applies so indexes and applies happen in the same order.
    Offline(Arc<Mutex<u64>>),
}

impl Meta {
    /// Opens the state under `dir` (`state.redb`, Raft's storage in
    /// `raft/`, both created if missing) and starts this replica's member of
    /// the Raft group. Must be called inside a tokio runtime; serve
    /// [`Meta::raft_service`] to peers when the group has more than one
    /// member.
    pub async fn start(dir: &Path, settings: &GroupSettings) -> Result<Meta, MetaError> {
        let state = Arc::new(StateDb::open(&dir.join("state.redb"))?);
        let group = Group::start(&dir.join("raft"), Arc::clone(&state), settings).await?;
        info!(dir = %dir.display(), node_id = settings.node_id, "started metadata");
        Ok(Meta {
            state,
            order: Order::Raft(Box::new(group)),
            accesses: PendingAccesses::default(),
        })
    }

    /// Opens the state under `dir` for an offline tool (e.g. an index
    /// rebuild): commands apply locally, in call order. Refused when a Raft
    /// group owns the state, whose log alone may order its changes.
    pub fn open_offline(dir: &Path) -> Result<Meta, MetaError> {
        let raft_dir = dir.join("raft");
        if raft_dir.exists() {
            return Err(MetaError::RaftOwned(raft_dir));
        }
        let state = StateDb::open(&dir.join("state.redb"))?;
        let last_applied = state.last_applied()?;
        info!(dir = %dir.display(), ?last_applied, "opened metadata offline");
        Ok(Meta {
            state: Arc::new(state),
            order: Order::Offline(Arc::new(Mutex::new(last_applied.map_or(1, |i| i + 1)))),
            accesses: PendingAccesses::default(),
        })
    }

    /// Orders and applies one command; on return it is committed and
    /// applied here, so this replica reads its own write. Through Raft it
    /// waits for a leader and a quorum for a few seconds, and fails at once
    /// with [`MetaError::NoQuorum`] while the group has long been without
    /// one. If the future is dropped early the command may still apply.
    pub async fn propose(&self, cmd: Command) -> Result<(), MetaError> {
        StateDb::validate(&cmd)?;
        let started = Instant::now();
        let result = match &self.order {
            Order::Raft(group) => group.propose(&cmd).await,
            Order::Offline(next_index) => self.apply_offline(next_index, cmd.clone()).await,
        };
        telemetry::proposal(cmd.name(), result.is_ok(), started.elapsed());
        result
    }

    async fn apply_offline(&self, next_index: &Arc<Mutex<u64>>, cmd: Command) -> Result<(), MetaError> {
        let state = Arc::clone(&self.state);
        let next_index = Arc::clone(next_index);
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

    /// Serves the cluster port on `listener` until `shutdown` resolves:
    /// Raft RPCs and forwarded proposals for peers, membership and status
    /// for `regcache cluster`, and the `services` of other crates (blob
    /// streaming between members). The future owns what it serves; refused
    /// offline, where there is no group.
    pub fn serve_cluster(
        &self,
        listener: tokio::net::TcpListener,
        gc: Option<Arc<dyn GcControl>>,
        services: tonic::service::Routes,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<impl Future<Output = Result<(), MetaError>> + Send + 'static, MetaError> {
        let Order::Raft(group) = &self.order else {
            return Err(MetaError::Offline);
        };
        let raft = group.service().into_server();
        let admin = raft::admin::AdminService::new(group.raft().clone(), gc).into_server();
        Ok(async move {
            tonic::transport::Server::builder()
                .add_routes(services)
                .add_service(raft)
                .add_service(admin)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
                .await
                .map_err(MetaError::ClusterPort)
        })
    }

    /// The Raft group as this member sees it; `None` offline.
    pub fn status(&self) -> Option<GroupStatus> {
        match &self.order {
            Order::Raft(group) => Some(group.status()),
            Order::Offline(_) => None,
        }
    }

    /// This member's node id; `None` offline.
    pub fn node_id(&self) -> Option<u64> {
        match &self.order {
            Order::Raft(group) => Some(group.node_id()),
            Order::Offline(_) => None,
        }
    }

    /// The voting members and their cluster addresses, by id, as this
    /// member last applied the membership; empty offline.
    pub fn voters(&self) -> Vec<(u64, String)> {
        match &self.order {
            Order::Raft(group) => group.voters(),
            Order::Offline(_) => Vec::new(),
        }
    }

    /// Whether a change proposed now can commit (offline: always). Reads
    /// are served either way.
    pub fn writable(&self) -> bool {
        match &self.order {
            Order::Raft(group) => group.writable(),
            Order::Offline(_) => true,
        }
    }

    /// Stops this replica's Raft member (nothing to do offline).
    pub async fn shutdown(&self) {
        if let Order::Raft(group) = &self.order {
            group.shutdown().await;
        }
    }

    /// The tag as this replica last applied it. A follower may lag the leader
    /// by the commands it has not applied yet.
    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, MetaError> {
        self.state.tag(key)
    }

    /// The key of the digest-ownership hash, once the group's first leader
    /// set it; `None` before, and offline.
    pub fn owner_key(&self) -> Option<Vec<u8>> {
        match &self.order {
            Order::Raft(_) => self.state.owner_key().ok().flatten(),
            Order::Offline(_) => None,
        }
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

    /// Where garbage collection stands, as this replica applied it.
    pub fn gc_state(&self) -> Result<GcState, MetaError> {
        self.state.gc_state()
    }

    /// What a GC pass with `cutoff` (unix seconds) would condemn, read from
    /// the local state while applies go on: manifests first, then blobs.
    pub fn gc_mark(&self, cutoff: u64) -> Result<Vec<Digest>, MetaError> {
        self.state.gc_mark(cutoff)
    }

    /// The bytes the open pass's condemned entries describe.
    pub fn gc_condemned_bytes(&self) -> Result<u64, MetaError> {
        self.state.gc_condemned_bytes()
    }

    /// How many tags no replica served since `cutoff` (unix seconds).
    pub fn gc_idle_tags(&self, cutoff: u64) -> Result<usize, MetaError> {
        self.state.gc_idle_tags(cutoff)
    }

    /// The cutoff that brings the index under `budget` bytes (see
    /// [`LOW_WATERMARK`]); `None` while it is within.
    pub fn gc_budget_cutoff(&self, budget: u64) -> Result<Option<u64>, MetaError> {
        self.state.gc_budget_cutoff(budget)
    }

    /// Up to `limit` object keys GC removed from the index and no sweeper
    /// deleted yet; `Command::Swept` forgets them once deleted.
    pub fn gc_sweep_keys(&self, limit: usize) -> Result<Vec<String>, MetaError> {
        self.state.gc_sweep_keys(limit)
    }

    /// Whether this replica leads the group (offline: it is the only one).
    pub fn leads(&self) -> bool {
        match &self.order {
            Order::Raft(group) => group.leads(),
            Order::Offline(_) => true,
        }
    }

    /// Counts and bytes of the local state (a follower may lag).
    pub fn stats(&self) -> Result<MetaStats, MetaError> {
        self.state.stats()
    }

    /// Notes that `digest` was served now, without a write: the flusher
    /// proposes all noted accesses as one `Touch` per interval, or at once
    /// when a GC pass condemned `digest` (the access rescues it). Memory is
    /// one map slot per distinct digest served since the last flush.
    pub fn record_access(&self, digest: &Digest) {
        self.accesses.digests.record(digest, now_secs());
        if self.state.is_condemned(digest).unwrap_or(false) {
            self.accesses.flush_soon();
        }
    }

    /// Notes that a tag was served now, batched like [`Meta::record_access`]:
    /// a tag nobody requested since a GC pass's cutoff is dropped.
    pub fn record_tag_request(&self, key: &TagKey) {
        self.accesses.tags.record(key, now_secs());
    }

    /// Proposes the accesses noted so far as one `Touch` and the tag
    /// requests as one `TouchTags`, now; returns how many digests and tags
    /// they carried. On failure they stay pending for the next try.
    pub async fn flush_accesses(&self) -> Result<usize, MetaError> {
        let digests = self
            .flush(&self.accesses.digests, |accesses| Command::Touch { accesses })
            .await?;
        let tags = self
            .flush(&self.accesses.tags, |tags| Command::TouchTags { tags })
            .await?;
        Ok(digests + tags)
    }

    /// Proposes what `pending` holds as one `command`, if anything; puts it
    /// back when that fails.
    async fn flush<K: Clone + Eq + std::hash::Hash + Ord>(
        &self,
        pending: &access::Latest<K>,
        command: fn(Vec<(K, u64)>) -> Command,
    ) -> Result<usize, MetaError> {
        let batch = pending.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let count = batch.len();
        if let Err(error) = self.propose(command(batch.clone())).await {
            pending.restore(batch);
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
