//! `regcache cluster …`: status and membership changes over any member's
//! cluster port (membership changes find the leader by themselves).

use std::fmt::Write as _;

use meta::GroupStatus;
use meta::admin::{self, AddNode, RemoveNode};

use crate::cli::ClusterCommand;

pub async fn execute(command: &ClusterCommand) -> anyhow::Result<String> {
    let (status, json) = match command {
        ClusterCommand::Status { cluster, json } => (admin::status(cluster).await?, *json),
        ClusterCommand::AddNode { cluster, id, addr } => {
            let add = AddNode {
                id: *id,
                addr: addr.clone(),
            };
            (admin::add_node(cluster, &add).await?, false)
        }
        ClusterCommand::RemoveNode { cluster, id } => {
            (admin::remove_node(cluster, RemoveNode { id: *id }).await?, false)
        }
    };
    if json {
        return Ok(serde_json::to_string_pretty(&status)? + "\n");
    }
    Ok(render(&status))
}

/// One line for the member asked, one per member it knows of.
fn render(status: &GroupStatus) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut out = format!(
        "node {} ({}), leader {}, term {}, commit {}, applied {}, snapshot {}, {}\n",
        status.node_id,
        status.state,
        show(status.leader),
        status.term,
        show(status.commit_index),
        show(status.applied_index),
        show(status.snapshot_index),
        if status.writable {
            "writable"
        } else {
            "read-only: no quorum"
        },
    );
    let _ = writeln!(
        out,
        "{:>4}  {:<7}  {:<30}  {:>8}  {:>6}",
        "id", "role", "addr", "matched", "lag"
    );
    for member in &status.members {
        let role = match (member.voter, status.leader == Some(member.id)) {
            (true, true) => "leader",
            (true, false) => "voter",
            (false, _) => "learner",
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<7}  {:<30}  {:>8}  {:>6}",
            member.id,
            role,
            member.addr,
            show(member.matched),
            show(member.lag)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use meta::MemberStatus;

    use super::*;

    #[test]
    fn renders_members_with_their_roles_and_lag() {
        let status = GroupStatus {
            node_id: 1,
            state: "leader".into(),
            leader: Some(1),
            term: 3,
            last_log_index: Some(57),
            commit_index: Some(57),
            applied_index: Some(57),
            snapshot_index: None,
            purged_index: None,
            writable: true,
            members: vec![
                MemberStatus {
                    id: 1,
                    addr: "10.0.0.1:5001".into(),
                    voter: true,
                    matched: Some(57),
                    lag: Some(0),
                },
                MemberStatus {
                    id: 4,
                    addr: "10.0.0.4:5001".into(),
                    voter: false,
                    matched: Some(50),
                    lag: Some(7),
                },
            ],
        };
        let text = render(&status);
        assert!(
            text.starts_with(
                "node 1 (leader), leader 1, term 3, commit 57, applied 57, snapshot -, writable\n"
            ),
            "{text}"
        );
        assert!(text.contains("   1  leader   10.0.0.1:5001"), "{text}");
        assert!(text.contains("   4  learner  10.0.0.4:5001"), "{text}");
        assert!(text.trim_end().ends_with("50       7"), "{text}");
    }
}
