//! The group as one member sees it, for `/status.json`, `regcache cluster
//! status` and the Prometheus gauges.

use std::time::Duration;

use openraft::Instant as _;
use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use openraft::async_runtime::watch::WatchReceiver;

use crate::raft::{Raft, TypeConfig};

/// One member's view of the group. Only a leader knows how far each
/// member's log matches its own; elsewhere `matched` and `lag` are empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// The last log index this member knows is committed.
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The last log index the newest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// The last log index removed from the log: a member further behind
    /// can only catch up by snapshot.
    pub purged_index: Option<u64>,
    /// Whether a change proposed here now can commit.
    pub writable: bool,
    pub members: Vec<MemberStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    /// Voters elect the leader and count towards the quorum; learners only
    /// receive the log (a member being added).
    pub voter: bool,
    /// The last log index the leader knows this member holds.
    pub matched: Option<u64>,
    /// Log entries this member is behind the leader.
    pub lag: Option<u64>,
}

impl GroupStatus {
    /// The group as `raft` sees it now.
    pub(crate) fn of(raft: &Raft) -> GroupStatus {
        let metrics = raft.metrics().borrow_watched().clone();
        GroupStatus::from_metrics(&metrics, lease(raft))
    }

    /// `lease`: how long a leader counts as acknowledged by a quorum.
    fn from_metrics(metrics: &RaftMetrics<TypeConfig>, lease: Duration) -> GroupStatus {
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let last_log_index = metrics.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = if *id == metrics.id && metrics.state == ServerState::Leader {
                    last_log_index
                } else {
                    let replication = metrics.replication.as_ref();
                    replication.and_then(|r| r.get(id)?.as_ref()).map(|l| l.index)
                };
                let lag = (metrics.state == ServerState::Leader)
                    .then(|| last_log_index.unwrap_or(0).saturating_sub(matched.unwrap_or(0)));
                MemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    matched,
                    lag,
                }
            })
            .collect();
        GroupStatus {
            node_id: metrics.id,
            state: format!("{:?}", metrics.state).to_lowercase(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index,
            commit_index: metrics.local_committed.as_ref().map(|l| l.index),
            applied_index: metrics.last_applied.as_ref().map(|l| l.index),
            snapshot_index: metrics.snapshot.as_ref().map(|l| l.index),
            purged_index: metrics.purged.as_ref().map(|l| l.index),
            writable: writable(metrics, lease),
            members,
        }
    }
}

/// How long a leader counts as acknowledged by a quorum: its lease, the
/// longest election timeout.
pub(crate) fn lease(raft: &Raft) -> Duration {
    Duration::from_millis(raft.config().election_timeout_max)
}

/// A leader that a quorum acknowledged within `lease`, or a follower that
/// knows a leader: a proposal made now can commit.
pub(crate) fn writable(metrics: &RaftMetrics<TypeConfig>, lease: Duration) -> bool {
    match metrics.state {
        ServerState::Leader => metrics
            .last_quorum_acked
            .as_ref()
            .is_some_and(|acked| acked.elapsed() <= lease),
        ServerState::Follower | ServerState::Learner => metrics.current_leader.is_some(),
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}
