//! Forming a fresh group, and keeping this member's address current.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::{ChangeMembers, ServerState};
use tracing::{info, warn};

use super::{BOOTSTRAP_GRACE, GroupSettings, PROPOSE_TIMEOUT};
use crate::MetaError;
use crate::raft::{Node, Raft};

/// Forms a fresh group when this member should (see [`GroupSettings`]);
/// otherwise waits to be contacted. `outside_raft`: the state holds records
/// made without Raft (an index rebuild, an older version), which the log
/// does not carry, so a snapshot replaces the log that would miss them.
pub(super) async fn bootstrap(raft: Raft, settings: GroupSettings, outside_raft: bool) {
    if !settings.bootstraps() {
        info!(
            node_id = settings.node_id,
            "waiting for the group's leader to contact this member"
        );
        return;
    }
    if settings.has_peers() {
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
pub(super) async fn refresh_own_address(raft: Raft, node_id: u64, advertise: String) {
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
        .map_err(MetaError::raft)?
        .last_applied;
    raft.trigger().snapshot().await.map_err(MetaError::raft)?;
    let built = raft
        .wait(Some(PROPOSE_TIMEOUT))
        .metrics(
            |m| m.snapshot.is_some() && m.snapshot >= applied,
            "snapshot built",
        )
        .await
        .map_err(MetaError::raft)?;
    if let Some(upto) = built.snapshot {
        raft.trigger()
            .purge_log(upto.index)
            .await
            .map_err(MetaError::raft)?;
    }
    Ok(())
}
