//! Watches this member's view of the group: when it was last writable (so
//! proposals fail fast through a long outage), the group's changes told in
//! regcache's own log lines, and Raft's view as Prometheus gauges.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::RaftMetrics;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::raft::{Raft, TypeConfig};
use crate::{status, telemetry};

/// How often the view is sampled between changes: writability also changes
/// with time alone (a leader's lease runs out), which no change announces.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// When this member was last writable, shared between the observer that
/// records it and the proposer that fails fast on it.
#[derive(Clone, Debug)]
pub(crate) struct LastWritable(Arc<Mutex<Instant>>);

impl LastWritable {
    pub(crate) fn now() -> LastWritable {
        LastWritable(Arc::new(Mutex::new(Instant::now())))
    }

    fn mark(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// How long since this member was last writable.
    pub(crate) fn elapsed(&self) -> Duration {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).elapsed()
    }
}

/// What the observer last reported, to log changes only.
#[derive(Debug, Default)]
struct Reported {
    leader: Option<u64>,
    members: Option<Members>,
    /// Whether the last writability line said writable; a loss is reported
    /// only once it outlasts `report_loss_after`.
    writable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Members {
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
}

impl Members {
    fn of(metrics: &RaftMetrics<TypeConfig>) -> Members {
        let membership = metrics.membership_config.membership();
        Members {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }
    }
}

/// Samples `raft` until it stops. A loss of writability shorter than
/// `report_loss_after` (a normal failover) is not logged.
pub(crate) async fn observe(raft: Raft, last_writable: LastWritable, report_loss_after: Duration) {
    let mut reported = Reported {
        writable: true,
        ..Reported::default()
    };
    let mut changes = raft.metrics();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        // Every change (a member added and removed within one tick is still
        // told), and the ticks in between.
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let metrics = changes.borrow_watched().clone();
        if metrics.running_state.is_err() {
            return;
        }
        let writable = status::writable(&metrics, status::lease(&raft));
        if writable {
            last_writable.mark();
        }
        telemetry::raft_view(&metrics, writable);
        report_leader(&metrics, &mut reported);
        report_members(&metrics, &mut reported);
        if writable != reported.writable && (writable || last_writable.elapsed() > report_loss_after) {
            if writable {
                info!(leader = ?metrics.current_leader, term = metrics.current_term, "raft quorum regained: metadata writable again");
            } else {
                warn!(
                    state = ?metrics.state,
                    leader = ?metrics.current_leader,
                    "no raft quorum: serving cached content, metadata changes fail until it returns"
                );
            }
            reported.writable = writable;
        }
    }
}

/// Logs a newly known leader and counts leader changes. An election in
/// progress (no leader) is not logged: a long one shows as a lost quorum.
fn report_leader(metrics: &RaftMetrics<TypeConfig>, reported: &mut Reported) {
    let Some(leader) = metrics.current_leader else {
        return;
    };
    if reported.leader == Some(leader) {
        return;
    }
    if reported.leader.is_some() {
        telemetry::leader_changed();
    }
    if leader == metrics.id {
        info!(
            node_id = leader,
            term = metrics.current_term,
            "this member leads the raft group"
        );
    } else {
        info!(leader, term = metrics.current_term, "raft leader elected");
    }
    reported.leader = Some(leader);
}

/// Logs the membership when first known, then each member added or removed.
fn report_members(metrics: &RaftMetrics<TypeConfig>, reported: &mut Reported) {
    let members = Members::of(metrics);
    if members.voters.is_empty() && members.learners.is_empty() {
        return; // not part of a group yet
    }
    match &reported.members {
        Some(before) if *before == members => return,
        Some(before) => {
            for id in members.voters.difference(&before.voters) {
                info!(node_id = id, voters = ?members.voters, "raft member added as a voter");
            }
            for id in members.learners.difference(&before.learners) {
                info!(node_id = id, "raft member added as a learner, catching up");
            }
            let now_known: BTreeSet<u64> = members.voters.union(&members.learners).copied().collect();
            for id in before.voters.union(&before.learners) {
                if !now_known.contains(id) {
                    info!(node_id = id, voters = ?members.voters, "raft member removed");
                }
            }
        }
        None => info!(voters = ?members.voters, learners = ?members.learners, "raft group members"),
    }
    reported.members = Some(members);
}
