//! This replica's member of the Raft group: starting it, forming a fresh
//! group, and getting a command committed from whichever member is asked.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::observer::{self, LastWritable};
use crate::raft::pb::RaftRequest;
use crate::raft::pb::raft_client::RaftClient;
use crate::raft::{self, Forwarded, GrpcNetwork, Node, Raft, RaftService};
use crate::{Command, GroupStatus, MetaError, StateMachine, status};

/// Where this replica stands in the group, from its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    /// This member's Raft id (>= 1).
    pub node_id: u64,
    /// `host:port` other members reach this one at; empty when it has no
    /// listener (a group of one).
    pub advertise: String,
    /// The initial members, this one included; empty for a group of one.
    pub peers: BTreeMap<u64, String>,
    /// Build a snapshot every this many log entries; the log it covers is
    /// then purged, except the newest half, so a member that is briefly
    /// behind still catches up from the log.
    pub snapshot_every: u64,
}

impl GroupSettings {
    /// How many log entries a snapshot covers unless configured otherwise.
    pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;

    /// A group of one with no listener: the embedded default.
    pub fn single() -> GroupSettings {
        GroupSettings {
            node_id: 1,
            advertise: String::new(),
            peers: BTreeMap::new(),
            snapshot_every: Self::DEFAULT_SNAPSHOT_EVERY,
        }
    }

    /// Whether this member forms a fresh group: the lowest listed id does,
    /// or the only member of a group of one.
    fn bootstraps(&self) -> bool {
        self.peers
            .keys()
            .next()
            .is_none_or(|lowest| *lowest == self.node_id)
    }

    fn initial_members(&self) -> BTreeMap<u64, Node> {
        let mut members: BTreeMap<u64, Node> = self
            .peers
            .iter()
            .map(|(id, addr)| (*id, Node { addr: addr.clone() }))
            .collect();
        members.insert(
            self.node_id,
            Node {
                addr: self.advertise.clone(),
            },
        );
        members
    }
}

/// Leader heartbeats; a follower that hears none for an election timeout
/// (600–1200 ms, random per member) stands for election. A leader lost to a
/// crash is replaced in about 1.8–2.4 s: its lease (the maximum election
/// timeout) first, then one election timeout.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_TIMEOUT_MS: (u64, u64) = (600, 1200);

/// Once its lease (the maximum election timeout) has run out without a
/// quorum, a leader stops heartbeating for this long, then probes for as
/// long, and so on: longer than an election timeout, so its followers time
/// out and stop counting on it. openraft requires at least the lease plus
/// the maximum election timeout.
const QUORUM_LOSS_PROBE_MS: u64 = 2 * ELECTION_TIMEOUT_MS.1;

/// How long a stopping leader waits for its successor to take over.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// How long a proposal may wait for a leader and a quorum.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Without a quorum for this long, proposals fail at once instead of
/// waiting [`PROPOSE_TIMEOUT`] each: a normal failover is much shorter.
const FAIL_FAST_AFTER: Duration = Duration::from_secs(5);

/// How long the lowest member of a fresh group waits to be contacted by an
/// existing leader before forming the group itself: when it lost its disk
/// and rejoins a running group, the leader brings it back instead.
const BOOTSTRAP_GRACE: Duration = Duration::from_secs(3);

/// One member of the group. Dropping it does not stop Raft: call
/// [`Group::shutdown`].
pub(crate) struct Group {
    raft: Raft,
    node_id: u64,
    service: RaftService,
    /// The last time this member could commit.
    last_writable: LastWritable,
    /// The forwarding client for the current leader, by address.
    leader_client: Mutex<Option<(String, RaftClient<Channel>)>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Group {
    /// Starts Raft over the storage under `dir` and, on a fresh group, forms
    /// it in the background (see [`GroupSettings`]). `state` is the state
    /// database the reads use.
    pub(crate) async fn start(
        dir: &Path,
        state: Arc<StateMachine>,
        settings: &GroupSettings,
    ) -> Result<Group, MetaError> {
        debug_assert!(settings.node_id >= 1, "node ids start at 1");
        let outside_raft = state.adopt_for_raft()?;
        let (log, sm) = raft::open_storage(dir, Arc::clone(&state))?;
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
        let config = Arc::new(config.validate().map_err(|e| MetaError::Raft(e.to_string()))?);
        let node_id = settings.node_id;
        let raft = Raft::new(node_id, config, GrpcNetwork::new(node_id), log, sm)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        if outside_raft && !initialized && !settings.bootstraps() {
            // The group's leader will send the state; what this member
            // recorded on its own would only diverge from it.
            info!("dropping metadata recorded outside raft; the leader sends the group's state");
            state.clear()?;
        }
        let service = RaftService::new(raft.clone(), &dir.join("incoming")).map_err(MetaError::SnapshotIo)?;
        let last_writable = LastWritable::now();
        let mut tasks = vec![tokio::spawn(observer::observe(
            raft.clone(),
            last_writable.clone(),
            FAIL_FAST_AFTER,
        ))];
        if !initialized {
            let settings = settings.clone();
            tasks.push(tokio::spawn(bootstrap(raft.clone(), settings, outside_raft)));
        } else if !settings.advertise.is_empty() {
            let advertise = settings.advertise.clone();
            tasks.push(tokio::spawn(refresh_own_address(
                raft.clone(),
                node_id,
                advertise,
            )));
        }
        Ok(Group {
            raft,
            node_id,
            service,
            last_writable,
            leader_client: Mutex::new(None),
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

    /// Whether a proposal made now can commit, as far as this member knows.
    pub(crate) fn writable(&self) -> bool {
        status::writable(&self.raft.metrics().borrow_watched(), status::lease(&self.raft))
    }

    /// Commits `cmd` through the leader and returns once this member has
    /// applied it, so the proposer reads its own write. A follower forwards
    /// to the leader. Every command is idempotent, so a proposal whose fate
    /// a leader change left unknown is simply made again.
    pub(crate) async fn propose(&self, cmd: &Command) -> Result<(), MetaError> {
        let started = Instant::now();
        if !self.writable() && self.unwritable_for() > FAIL_FAST_AFTER {
            return Err(MetaError::NoQuorum);
        }
        let deadline = started + PROPOSE_TIMEOUT;
        loop {
            let retry = match tokio::time::timeout_at(deadline, self.propose_once(cmd, deadline)).await {
                Err(_elapsed) => return Err(MetaError::NoQuorum),
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Attempt::Failed(e))) => return Err(e),
                Ok(Err(Attempt::Retry)) => Duration::from_millis(20),
            };
            tokio::time::sleep(retry).await;
            if Instant::now() >= deadline {
                return Err(MetaError::NoQuorum);
            }
        }
    }

    async fn propose_once(&self, cmd: &Command, deadline: Instant) -> Result<(), Attempt> {
        let forward = match self.raft.client_write(cmd.clone()).await {
            Ok(response) => return refused(response.data.refused),
            Err(RaftError::Fatal(e)) => return Err(Attempt::Failed(MetaError::Raft(e.to_string()))),
            Err(RaftError::APIError(
                ClientWriteError::ForwardToLeader(forward) | ClientWriteError::LogEntryDiscarded(forward),
            )) => forward,
            Err(RaftError::APIError(e)) => return Err(Attempt::Failed(MetaError::Raft(e.to_string()))),
        };
        let (Some(leader), Some(node)) = (forward.leader_id, forward.leader_node) else {
            return Err(Attempt::Retry);
        };
        if leader == self.node_id {
            return Err(Attempt::Retry);
        }
        let index = self.forward(&node.addr, cmd).await?;
        self.raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .applied_index_at_least(Some(index), "forwarded proposal applied here")
            .await
            .map_err(|_| Attempt::Retry)?;
        Ok(())
    }

    /// Sends `cmd` to the leader at `addr`; the log index it committed at.
    async fn forward(&self, addr: &str, cmd: &Command) -> Result<u64, Attempt> {
        let mut client = self.leader_client(addr)?;
        let json = serde_json::to_vec(cmd).map_err(|source| {
            Attempt::Failed(MetaError::Encode {
                what: "forwarded command",
                source,
            })
        })?;
        let reply = match client.propose(RaftRequest { json }).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                return Err(Attempt::Failed(MetaError::Refused(status.message().to_owned())));
            }
            Err(status) => {
                tracing::debug!(leader = addr, error = %status, "forwarding a proposal failed; retrying");
                return Err(Attempt::Retry);
            }
        };
        let forwarded: Forwarded = serde_json::from_slice(&reply.json).map_err(|e| {
            warn!(leader = addr, error = %e, "undecodable reply from the leader");
            Attempt::Retry
        })?;
        Ok(forwarded.log_index)
    }

    fn leader_client(&self, addr: &str) -> Result<RaftClient<Channel>, Attempt> {
        let mut cached = self.leader_client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached_addr, client)) = cached.as_ref()
            && cached_addr == addr
        {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
            warn!(leader = addr, error = %e, "leader address does not parse");
            Attempt::Retry
        })?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = RaftClient::new(channel);
        *cached = Some((addr.to_owned(), client.clone()));
        Ok(client)
    }

    fn unwritable_for(&self) -> Duration {
        self.last_writable.elapsed()
    }

    async fn hand_over(&self) {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return;
        }
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        let successor = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.node_id && voters.contains(id))
            .max_by_key(|(_, matched)| matched.as_ref().map(|l| l.index))
            .map(|(id, _)| *id);
        let Some(successor) = successor else {
            return;
        };
        if self.raft.trigger().transfer_leader(successor).await.is_err() {
            return;
        }
        let handed = self
            .raft
            .wait(Some(HAND_OVER_WAIT))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != self.node_id),
                "leadership handed over",
            )
            .await;
        match handed {
            Ok(m) => info!(leader = ?m.current_leader, "handed leadership over before stopping"),
            Err(e) => {
                warn!(successor, error = %e, "handing leadership over failed; the others will elect one")
            }
        }
    }

    /// Stops Raft and the background tasks. A leader first hands over to
    /// the most up-to-date voter, so writes pause for a round trip instead
    /// of a lease and an election.
    pub(crate) async fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.hand_over().await;
        if let Err(e) = self.raft.shutdown().await {
            warn!(error = %e, "stopping raft failed");
        }
    }
}

enum Attempt {
    Retry,
    Failed(MetaError),
}

fn refused(reason: Option<String>) -> Result<(), Attempt> {
    reason.map_or(Ok(()), |r| Err(Attempt::Failed(MetaError::Refused(r))))
}

/// Forms a fresh group when this member should (see [`GroupSettings`]);
/// otherwise waits to be contacted. `outside_raft`: the state holds records
/// made without Raft (an index rebuild, an older version), which the log
/// does not carry, so a snapshot replaces the log that would miss them.
async fn bootstrap(raft: Raft, settings: GroupSettings, outside_raft: bool) {
    if !settings.bootstraps() {
        info!(
            node_id = settings.node_id,
            "waiting for the group's leader to contact this member"
        );
        return;
    }
    if settings.peers.len() > 1 {
        let contacted = raft
            .wait(Some(BOOTSTRAP_GRACE))
            .metrics(|m| m.current_leader.is_some() || m.current_term > 0, "contacted")
            .await;
        if contacted.is_ok() {
            info!("an existing group contacted this member; not forming a new one");
            return;
        }
    }
    let members = settings.initial_members();
    // Records made outside Raft are not in the log: the group starts as
    // this member alone, a snapshot replaces the log, and only then do the
    // others join, so they receive the snapshot rather than a log that
    // lacks those records.
    let first = if outside_raft {
        members
            .iter()
            .filter(|(id, _)| **id == settings.node_id)
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    } else {
        members.clone()
    };
    match raft.initialize(first).await {
        Ok(()) => info!(members = ?members.keys().collect::<Vec<_>>(), "forming a new raft group"),
        Err(e) => {
            // A peer formed it first, or this member learned of the group
            // meanwhile: both are fine, Raft goes on as a member.
            info!(error = %e, "not forming a raft group");
            return;
        }
    }
    if !outside_raft {
        return;
    }
    if let Err(e) = snapshot_and_purge(&raft).await {
        warn!(error = %e, "snapshot after adopting the local metadata failed; new members may miss it");
    }
    let others: BTreeMap<u64, Node> = members
        .into_iter()
        .filter(|(id, _)| *id != settings.node_id)
        .collect();
    if others.is_empty() {
        return;
    }
    let ids: Vec<u64> = others.keys().copied().collect();
    match raft
        .change_membership(ChangeMembers::AddVoters(others), false)
        .await
    {
        Ok(_) => info!(members = ?ids, "the other initial members joined"),
        Err(e) => warn!(
            members = ?ids,
            error = %e,
            "adding the other initial members failed; add them with `regcache cluster add-node`"
        ),
    }
}

/// Records this member's new address once it leads, e.g. a group of one
/// that ran without a listener and is being prepared to grow. Only a
/// leader changes the membership, and it only ever rewrites its own entry.
async fn refresh_own_address(raft: Raft, node_id: u64, advertise: String) {
    let led = raft
        .wait(Some(Duration::from_secs(60)))
        .metrics(|m| m.state == ServerState::Leader, "leading")
        .await;
    let Ok(metrics) = led else {
        return;
    };
    let membership = metrics.membership_config.membership();
    if membership
        .get_node(&node_id)
        .is_none_or(|node| node.addr == advertise)
    {
        return;
    }
    let nodes = BTreeMap::from([(
        node_id,
        Node {
            addr: advertise.clone(),
        },
    )]);
    match raft
        .change_membership(ChangeMembers::SetNodes(nodes), false)
        .await
    {
        Ok(_) => info!(addr = advertise, "recorded this member's new address"),
        Err(e) => warn!(addr = advertise, error = %e, "recording this member's new address failed"),
    }
}

async fn snapshot_and_purge(raft: &Raft) -> Result<(), MetaError> {
    let applied = raft
        .wait(Some(PROPOSE_TIMEOUT))
        .metrics(|m| m.last_applied.is_some(), "initial membership applied")
        .await
        .map_err(|e| MetaError::Raft(e.to_string()))?
        .last_applied;
    raft.trigger()
        .snapshot()
        .await
        .map_err(|e| MetaError::Raft(e.to_string()))?;
    let built = raft
        .wait(Some(PROPOSE_TIMEOUT))
        .metrics(
            |m| m.snapshot.is_some() && m.snapshot >= applied,
            "snapshot built",
        )
        .await
        .map_err(|e| MetaError::Raft(e.to_string()))?;
    if let Some(upto) = built.snapshot {
        raft.trigger()
            .purge_log(upto.index)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
    }
    Ok(())
}
