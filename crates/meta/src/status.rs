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

/// Whether a proposal made now can commit, by the rule openraft applies
/// before it accepts one: a leader that is the only voter commits alone and
/// needs no acknowledgement (openraft never refreshes `last_quorum_acked`
/// for it, so that timestamp only ages); any other leader needs a quorum's
/// acknowledgement within `lease`. A follower or learner can while it knows
/// a leader to forward to; one whose leader lost its quorum stops hearing
/// from it (see `quorum_loss_probe_interval`) and soon knows none.
pub(crate) fn writable(metrics: &RaftMetrics<TypeConfig>, lease: Duration) -> bool {
    match metrics.state {
        ServerState::Leader => {
            sole_voter(metrics)
                || metrics
                    .last_quorum_acked
                    .as_ref()
                    .is_some_and(|acked| acked.elapsed() < lease)
        }
        ServerState::Follower | ServerState::Learner => {
            metrics.current_leader.is_some_and(|leader| leader != metrics.id)
        }
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}

/// Whether this member is the group's only voter, in every configuration
/// of a joint membership: its own vote is then a quorum.
fn sole_voter(metrics: &RaftMetrics<TypeConfig>) -> bool {
    let mut voters = metrics.membership_config.membership().voter_ids();
    voters.next() == Some(metrics.id) && voters.next().is_none()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::Duration;

    use openraft::Instant as _;
    use openraft::alias::SerdeInstantOf;
    use openraft::metrics::SerdeInstant;
    use openraft::{RaftMetrics, ServerState};

    use super::writable;
    use openraft::Membership;

    use crate::raft::{Node, StoredMembership, TypeConfig};

    const LEASE: Duration = Duration::from_millis(1200);

    /// Member 1's metrics in state `state`, with `voters` as the voters.
    fn metrics(state: ServerState, voters: &[u64]) -> RaftMetrics<TypeConfig> {
        let voter_set: BTreeSet<u64> = voters.iter().copied().collect();
        let nodes: BTreeMap<u64, Node> = voters.iter().map(|id| (*id, Node::default())).collect();
        let membership = Membership::new(vec![voter_set], nodes).expect("a valid membership");
        let mut m = RaftMetrics::new_initial(1);
        m.state = state;
        m.current_leader = (state == ServerState::Leader).then_some(1);
        m.membership_config = Arc::new(StoredMembership::new(None, membership));
        m
    }

    fn acked(ago: Duration) -> Option<SerdeInstantOf<TypeConfig>> {
        Some(SerdeInstant::new(openraft::TokioInstant::now() - ago))
    }

    #[test]
    fn a_sole_voter_leader_is_writable_however_old_its_last_acknowledgement() {
        let mut m = metrics(ServerState::Leader, &[1]);
        assert!(writable(&m, LEASE), "never acknowledged");
        m.last_quorum_acked = acked(Duration::from_secs(3600));
        assert!(writable(&m, LEASE), "acknowledged an hour ago");
    }

    #[test]
    fn a_leader_among_voters_is_writable_only_within_its_lease() {
        let mut m = metrics(ServerState::Leader, &[1, 2, 3]);
        assert!(!writable(&m, LEASE), "never acknowledged");
        m.last_quorum_acked = acked(Duration::from_millis(100));
        assert!(writable(&m, LEASE));
        m.last_quorum_acked = acked(LEASE + Duration::from_millis(100));
        assert!(!writable(&m, LEASE), "lease expired");
    }

    #[test]
    fn a_leader_that_is_not_a_voter_needs_a_quorum() {
        // Being removed: the remaining voter set no longer holds it.
        let mut m = metrics(ServerState::Leader, &[2]);
        assert!(!writable(&m, LEASE));
        m.last_quorum_acked = acked(Duration::from_millis(100));
        assert!(writable(&m, LEASE));
    }

    #[test]
    fn a_follower_is_writable_while_it_knows_another_leader() {
        let mut m = metrics(ServerState::Follower, &[1, 2, 3]);
        assert!(!writable(&m, LEASE), "no leader known");
        m.current_leader = Some(2);
        assert!(writable(&m, LEASE));
        m.state = ServerState::Learner;
        assert!(writable(&m, LEASE));
        m.state = ServerState::Candidate;
        assert!(!writable(&m, LEASE));
        m.state = ServerState::Shutdown;
        assert!(!writable(&m, LEASE));
    }
}
