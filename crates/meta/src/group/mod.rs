//! This replica's member of the Raft group: starting it, and stopping it
//! cleanly. Each of its jobs has a module: forming a fresh group
//! ([`bootstrap`]), getting commands committed ([`propose`]), handing
//! leadership over when stopping ([`hand_over`]), and watching writability
//! ([`observer`]).

mod bootstrap;
mod hand_over;
mod observer;
mod owner_key;
mod propose;
mod settings;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ServerState, SnapshotPolicy};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use settings::GroupSettings;

use crate::raft::{self, GrpcNetwork, Raft, RaftService};
use crate::{Command, GroupStatus, MetaError, StateDb};
use observer::LastWritable;
use propose::Proposer;

/// Leader heartbeats; a follower that hears none for an election timeout
/// (600–1200 ms, random per member) stands for election. A leader lost to a
/// crash is replaced in 1.8–2.4 s: its lease (the maximum election
/// timeout, 1.2 s) first, then one election timeout (docs/architecture.md,
/// "Timing").
const HEARTBEAT_MS: u64 = 100;
const ELECTION_TIMEOUT_MS: (u64, u64) = (600, 1200);

/// Once its lease (the maximum election timeout) has run out without a
/// quorum, a leader stops heartbeating for this long, then probes for as
/// long, and so on: longer than an election timeout, so its followers time
/// out and stop counting on it. openraft requires at least the lease plus
/// the maximum election timeout.
const QUORUM_LOSS_PROBE_MS: u64 = 2 * ELECTION_TIMEOUT_MS.1;

/// How long a proposal may wait for a leader and a quorum.
pub(super) const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Without a quorum for this long, proposals fail at once instead of
/// waiting [`PROPOSE_TIMEOUT`] each: a normal failover is much shorter.
pub(super) const FAIL_FAST_AFTER: Duration = Duration::from_secs(5);

/// How long the lowest member of a fresh group waits to be contacted by an
/// existing leader before forming the group itself: when it lost its disk
/// and rejoins a running group, the leader brings it back instead.
pub(super) const BOOTSTRAP_GRACE: Duration = Duration::from_secs(3);

/// One member of the group. Dropping it does not stop Raft: call
/// [`Group::shutdown`].
pub(crate) struct Group {
    raft: Raft,
    service: RaftService,
    proposer: Proposer,
    tasks: Vec<JoinHandle<()>>,
}

impl Group {
    /// Starts Raft over the storage under `dir` and, on a fresh group, forms
    /// it in the background (see [`GroupSettings`]). `state` is the state
    /// database the reads use.
    pub(crate) async fn start(
        dir: &Path,
        state: Arc<StateDb>,
        settings: &GroupSettings,
    ) -> Result<Group, MetaError> {
        debug_assert!(settings.node_id >= 1, "node ids start at 1");
        let outside_raft = state.adopt_for_raft()?;
        let (log, sm) = raft::open_storage(dir, Arc::clone(&state))?;
        let node_id = settings.node_id;
        let raft = Raft::new(node_id, config(settings)?, GrpcNetwork::new(node_id), log, sm)
            .await
            .map_err(MetaError::raft)?;
        let initialized = raft.is_initialized().await.map_err(MetaError::raft)?;
        if outside_raft && !initialized && !settings.bootstraps() {
            // The group's leader will send the state; what this member
            // recorded on its own would only diverge from it.
            info!("dropping metadata recorded outside raft; the leader sends the group's state");
            state.clear()?;
        }
        let service = RaftService::new(raft.clone(), &dir.join("incoming")).map_err(MetaError::SnapshotIo)?;
        let last_writable = LastWritable::now();
        let mut tasks = vec![
            tokio::spawn(observer::observe(
                raft.clone(),
                last_writable.clone(),
                FAIL_FAST_AFTER,
            )),
            tokio::spawn(owner_key::ensure(raft.clone(), Arc::clone(&state))),
        ];
        if !initialized {
            let settings = settings.clone();
            tasks.push(tokio::spawn(bootstrap::bootstrap(
                raft.clone(),
                settings,
                outside_raft,
            )));
        } else if !settings.advertise.is_empty() {
            let advertise = settings.advertise.clone();
            tasks.push(tokio::spawn(bootstrap::refresh_own_address(
                raft.clone(),
                node_id,
                advertise,
            )));
        }
        Ok(Group {
            proposer: Proposer::new(raft.clone(), node_id, last_writable),
            raft,
            service,
            tasks,
        })
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The gRPC service peers call.
    pub(crate) fn service(&self) -> RaftService {
        self.service.clone()
    }

    /// This member's view of the group.
    pub(crate) fn status(&self) -> GroupStatus {
        GroupStatus::of(&self.raft)
    }

    pub(crate) fn node_id(&self) -> u64 {
        self.raft.metrics().borrow_watched().id
    }

    /// The voters and their addresses, by id.
    pub(crate) fn voters(&self) -> Vec<(u64, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let mut voters: Vec<(u64, String)> = membership
            .voter_ids()
            .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
            .collect();
        voters.sort_unstable_by_key(|(id, _)| *id);
        voters
    }

    /// Whether this member is the group's leader right now.
    pub(crate) fn leads(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Whether a proposal made now can commit, as far as this member knows.
    pub(crate) fn writable(&self) -> bool {
        self.proposer.writable()
    }

    /// Commits `cmd` through the leader; see [`Proposer::propose`].
    pub(crate) async fn propose(&self, cmd: &Command) -> Result<(), MetaError> {
        self.proposer.propose(cmd).await
    }

    /// Stops Raft and the background tasks. A leader first hands over to
    /// the most up-to-date voter, so writes pause for a round trip instead
    /// of a lease and an election.
    pub(crate) async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        hand_over::hand_over(&self.raft).await;
        // After the hand-over (whose successor answers over RPC, and may
        // send this member a last heartbeat): the others are told it stops.
        self.service.stop();
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "stopping raft failed");
        }
    }
}

/// openraft's settings for this member.
fn config(settings: &GroupSettings) -> Result<Arc<openraft::Config>, MetaError> {
    let config = openraft::Config {
        cluster_name: "regcache".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
        max_in_snapshot_log_to_keep: settings.snapshot_every / 2,
        // A leader that lost its quorum goes quiet for a while, so its
        // followers stop following it and say they are read-only.
        quorum_loss_probe_interval: Some(QUORUM_LOSS_PROBE_MS),
        ..Default::default()
    };
    Ok(Arc::new(config.validate().map_err(MetaError::raft)?))
}
