//! Where this replica stands in the group, and what that decides at start.

use std::collections::BTreeMap;

use crate::raft::Node;

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
    pub(super) fn bootstraps(&self) -> bool {
        self.peers
            .keys()
            .next()
            .is_none_or(|lowest| *lowest == self.node_id)
    }

    /// Whether other members are listed, so an existing group may contact
    /// this one before it forms a new group.
    pub(super) fn has_peers(&self) -> bool {
        self.peers.keys().any(|id| *id != self.node_id)
    }

    /// The members a fresh group starts with: the listed peers, and this
    /// member at its advertised address.
    pub(super) fn initial_members(&self) -> BTreeMap<u64, Node> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node_id: u64, peers: &[(u64, &str)]) -> GroupSettings {
        GroupSettings {
            node_id,
            advertise: format!("n{node_id}:5001"),
            peers: peers.iter().map(|(id, a)| (*id, (*a).to_owned())).collect(),
            snapshot_every: 100,
        }
    }

    const THREE: [(u64, &str); 3] = [(1, "n1:5001"), (2, "n2:5001"), (3, "n3:5001")];

    #[test]
    fn the_lowest_listed_id_forms_the_group() {
        assert!(member(1, &THREE).bootstraps());
        assert!(!member(2, &THREE).bootstraps());
        assert!(!member(3, &THREE).bootstraps());
        // Ids need not start at 1.
        assert!(member(4, &[(4, "n4:5001"), (7, "n7:5001")]).bootstraps());
    }

    #[test]
    fn a_group_of_one_forms_itself_without_waiting() {
        let single = GroupSettings::single();
        assert!(single.bootstraps());
        assert!(!single.has_peers());
        assert!(!member(5, &[(5, "n5:5001")]).has_peers());
        assert!(member(1, &THREE).has_peers());
    }

    #[test]
    fn a_new_member_listed_above_the_others_waits_to_be_added() {
        let joining = member(
            4,
            &[(1, "n1:5001"), (2, "n2:5001"), (3, "n3:5001"), (4, "n4:5001")],
        );
        assert!(!joining.bootstraps());
    }

    #[test]
    fn the_initial_members_are_the_peers_with_this_member_at_its_address() {
        let mut settings = member(2, &THREE);
        settings.advertise = "lb.example:6001".into();
        let members = settings.initial_members();
        let addrs: Vec<(u64, &str)> = members.iter().map(|(id, n)| (*id, n.addr.as_str())).collect();
        assert_eq!(addrs, [(1, "n1:5001"), (2, "lb.example:6001"), (3, "n3:5001")]);
        let single = GroupSettings::single().initial_members();
        assert_eq!(single.keys().copied().collect::<Vec<_>>(), [1]);
    }
}
