//! A stopping leader hands leadership to the most up-to-date voter, so
//! writes pause for a round trip instead of a lease and an election.

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use tracing::{info, warn};

use crate::raft::{Raft, TypeConfig};

/// How long a stopping leader waits for its successor to take over.
const HAND_OVER_WAIT: Duration = Duration::from_secs(2);

/// Hands leadership over if this member leads and another voter can take
/// it; waits up to [`HAND_OVER_WAIT`] for the successor.
pub(super) async fn hand_over(raft: &Raft) {
    let metrics = raft.metrics().borrow_watched().clone();
    let Some(successor) = successor(&metrics) else {
        return;
    };
    let me = metrics.id;
    if raft.trigger().transfer_leader(successor).await.is_err() {
        return;
    }
    let handed = raft
        .wait(Some(HAND_OVER_WAIT))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != me),
            "leadership handed over",
        )
        .await;
    match handed {
        Ok(m) => info!(leader = ?m.current_leader, "handed leadership over before stopping"),
        Err(e) => warn!(successor, error = %e, "handing leadership over failed; the others will elect one"),
    }
}

/// The voter whose log matches the leader's furthest, when this member
/// leads; learners cannot lead.
fn successor(metrics: &RaftMetrics<TypeConfig>) -> Option<u64> {
    if metrics.state != ServerState::Leader {
        return None;
    }
    let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
    metrics
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != metrics.id && voters.contains(id))
        .max_by_key(|(_, matched)| matched.as_ref().map(|l| l.index))
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use super::*;
    use openraft::Membership;

    use crate::raft::{LogId, Node, StoredMembership};

    /// Member 1 as leader, with `voters` and `learners`, and how far each
    /// other member's log matches.
    fn leader(voters: &[u64], learners: &[u64], matched: &[(u64, Option<u64>)]) -> RaftMetrics<TypeConfig> {
        let all = voters.iter().chain(learners);
        let nodes: BTreeMap<u64, Node> = all.map(|id| (*id, Node::default())).collect();
        let voter_set: BTreeSet<u64> = voters.iter().copied().collect();
        let membership = Membership::new(vec![voter_set], nodes).expect("a valid membership");
        let mut m = RaftMetrics::new_initial(1);
        m.state = ServerState::Leader;
        m.membership_config = Arc::new(StoredMembership::new(None, membership));
        let leader_id = openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 };
        let log_id = |index| LogId::new(leader_id, index);
        m.replication = Some(
            matched
                .iter()
                .map(|(id, index)| (*id, index.map(log_id)))
                .collect(),
        );
        m
    }

    #[test]
    fn the_most_up_to_date_voter_takes_over() {
        let m = leader(&[1, 2, 3], &[], &[(2, Some(40)), (3, Some(42))]);
        assert_eq!(successor(&m), Some(3));
        let m = leader(&[1, 2, 3], &[], &[(2, Some(40)), (3, None)]);
        assert_eq!(successor(&m), Some(2));
    }

    #[test]
    fn a_learner_never_takes_over() {
        let m = leader(&[1, 2], &[4], &[(2, Some(10)), (4, Some(50))]);
        assert_eq!(successor(&m), Some(2));
    }

    #[test]
    fn a_group_of_one_or_a_follower_hands_nothing_over() {
        assert_eq!(successor(&leader(&[1], &[], &[])), None);
        let mut follower = leader(&[1, 2, 3], &[], &[(2, Some(40))]);
        follower.state = ServerState::Follower;
        follower.replication = None;
        assert_eq!(successor(&follower), None);
    }
}
