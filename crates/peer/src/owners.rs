//! Which member owns a digest: rendezvous (highest random weight) hashing
//! over the voting members' ids. Every member ranks the members the same
//! way from the same membership, so they agree on the owner without asking
//! each other; a member that comes or goes moves only the digests it
//! ranks first for.
//!
//! The hash is keyed with the cluster's secret ([`meta::Meta::owner_key`]):
//! a client choosing what to pull cannot aim many digests at one member.

use sha2::{Digest as _, Sha256};

/// The members in the order they own `subject`: the first one that can be
/// reached owns it, the next ones take over in turn.
pub fn ranked(key: &[u8], subject: &[u8], members: &[u64]) -> Vec<u64> {
    let mut scored: Vec<(u64, u64)> = members
        .iter()
        .map(|id| (weight(key, subject, *id), *id))
        .collect();
    // Ties (astronomically rare) break by id, so every member still agrees.
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, id)| id).collect()
}

/// SHA-256 over the key, the member and the subject, each length-prefixed
/// so no two inputs share an encoding.
fn weight(key: &[u8], subject: &[u8], member: u64) -> u64 {
    let mut hash = Sha256::new();
    hash.update((key.len() as u64).to_be_bytes());
    hash.update(key);
    hash.update(member.to_be_bytes());
    hash.update(subject);
    let out = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(key: &[u8], subject: usize, members: &[u64]) -> u64 {
        ranked(key, format!("sha256:{subject:064x}").as_bytes(), members)[0]
    }

    #[test]
    fn every_member_owns_a_fair_share() {
        let members = [1, 2, 3];
        let mut owned = [0usize; 4];
        for subject in 0..3000 {
            owned[owner(b"k", subject, &members) as usize] += 1;
        }
        for id in members {
            assert!((800..1200).contains(&owned[id as usize]), "{owned:?}");
        }
    }

    #[test]
    fn a_member_joining_takes_digests_only_for_itself() {
        let (before, after) = ([1, 2, 3], [1, 2, 3, 4]);
        let mut moved = 0;
        for subject in 0..2000 {
            let (old, new) = (owner(b"k", subject, &before), owner(b"k", subject, &after));
            if old != new {
                assert_eq!(new, 4, "digest {subject} moved between old members");
                moved += 1;
            }
        }
        assert!(
            (350..650).contains(&moved),
            "{moved} of 2000 moved to the new member"
        );
    }

    #[test]
    fn a_member_leaving_gives_away_only_its_own_digests() {
        let (before, after) = ([1, 2, 3], [1, 3]);
        for subject in 0..2000 {
            let (old, new) = (owner(b"k", subject, &before), owner(b"k", subject, &after));
            if old != 2 {
                assert_eq!(old, new, "digest {subject} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn the_key_changes_who_owns_what() {
        let members = [1, 2, 3];
        let differ = (0..300)
            .filter(|s| owner(b"one key", *s, &members) != owner(b"another", *s, &members))
            .count();
        assert!(differ > 100, "only {differ} of 300 owners changed with the key");
    }

    #[test]
    fn the_ranking_is_the_order_of_succession() {
        let members = [1, 2, 3];
        for subject in 0..100 {
            let subject = format!("s{subject}");
            let all = ranked(b"k", subject.as_bytes(), &members);
            let without_first: Vec<u64> = members.iter().copied().filter(|m| *m != all[0]).collect();
            assert_eq!(ranked(b"k", subject.as_bytes(), &without_first), all[1..]);
        }
    }
}
