//! Metadata's metric names and how each is recorded, in one place so docs
//! and dashboards have one place to look.

use std::time::Duration;

use openraft::{RaftMetrics, ServerState};

use crate::raft::{LogId, TypeConfig};

const PROPOSAL_SECONDS: &str = "regcache_meta_proposal_seconds";
const TERM: &str = "regcache_raft_term";
const LAST_LOG_INDEX: &str = "regcache_raft_last_log_index";
const COMMIT_INDEX: &str = "regcache_raft_commit_index";
const APPLIED_INDEX: &str = "regcache_raft_applied_index";
const SNAPSHOT_INDEX: &str = "regcache_raft_snapshot_index";
const IS_LEADER: &str = "regcache_raft_is_leader";
const WRITABLE: &str = "regcache_raft_writable";
const MEMBERS: &str = "regcache_raft_members";
const LEADER_CHANGES: &str = "regcache_raft_leader_changes_total";
const SNAPSHOTS_INSTALLED: &str = "regcache_raft_snapshots_installed_total";
const SNAPSHOT_BUILD_SECONDS: &str = "regcache_raft_snapshot_build_seconds";

/// One proposal made here: its command, whether it committed, how long it
/// took.
pub(crate) fn proposal(command: &'static str, ok: bool, elapsed: Duration) {
    let outcome = if ok { "ok" } else { "failed" };
    metrics::histogram!(PROPOSAL_SECONDS, "command" => command, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// Raft's view from this member as gauges.
pub(crate) fn raft_view(metrics: &RaftMetrics<TypeConfig>, writable: bool) {
    let index = |log_id: Option<&LogId>| log_id.map_or(0.0, |l| l.index as f64);
    let flag = |set: bool| if set { 1.0 } else { 0.0 };
    metrics::gauge!(TERM).set(metrics.current_term as f64);
    metrics::gauge!(LAST_LOG_INDEX).set(metrics.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!(COMMIT_INDEX).set(index(metrics.local_committed.as_ref()));
    metrics::gauge!(APPLIED_INDEX).set(index(metrics.last_applied.as_ref()));
    metrics::gauge!(SNAPSHOT_INDEX).set(index(metrics.snapshot.as_ref()));
    metrics::gauge!(IS_LEADER).set(flag(metrics.state == ServerState::Leader));
    metrics::gauge!(WRITABLE).set(flag(writable));
    metrics::gauge!(MEMBERS).set(metrics.membership_config.membership().nodes().count() as f64);
}

pub(crate) fn leader_changed() {
    metrics::counter!(LEADER_CHANGES).increment(1);
}

pub(crate) fn snapshot_installed() {
    metrics::counter!(SNAPSHOTS_INSTALLED).increment(1);
}

pub(crate) fn snapshot_built(elapsed: Duration) {
    metrics::histogram!(SNAPSHOT_BUILD_SECONDS).record(elapsed.as_secs_f64());
}
