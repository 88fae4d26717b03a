//! Writability once the timers have run: every test idles past the leader's
//! lease (the 1.2 s maximum election timeout) and the 5 s fail-fast window
//! before it asserts. A group of one, and a group whose quorum is up, stay
//! writable for as long as they run; members cut off from the majority,
//! a leader and its follower among them, say they are read-only.

mod common;

use std::time::{Duration, Instant};

use common::group::{group, id_of, leader, start, tag};
use common::{blob, digest, record, set_tag};
use meta::{Command, GroupSettings, Meta, MetaError};

/// Longer than the lease and the fail-fast window together.
const IDLE: Duration = Duration::from_secs(10);

/// Waits until `digest`'s last access is past `before`.
async fn wait_for_access_after(meta: &Meta, digest: &oci::Digest, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = meta.entry(digest).expect("reading").expect("an entry");
        if entry.last_access > before {
            return;
        }
        assert!(Instant::now() < deadline, "the access was never flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_one_stays_writable_past_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let meta = std::sync::Arc::new(start(dir.path(), &GroupSettings::single()).await);
    meta.propose(Command::PutEntry {
        digest: digest(1),
        entry: blob(10, 1),
    })
    .await
    .unwrap();
    let flusher = meta.spawn_access_flusher(Duration::from_secs(1));

    tokio::time::sleep(IDLE).await;
    assert!(meta.writable(), "{:?}", meta.status());
    let status = meta.status().expect("a raft group");
    assert!(status.writable && status.state == "leader", "{status:?}");
    meta.propose(set_tag("latest", 1))
        .await
        .expect("a tag recorded after the idle");
    assert_eq!(tag(&meta, "latest"), Some(record(1, 1)));
    meta.record_access(&digest(1));
    wait_for_access_after(&meta, &digest(1), 1).await;

    // Idle again, now with an access pending across the idle.
    tokio::time::sleep(IDLE).await;
    meta.propose(set_tag("latest", 2)).await.expect("still writable");
    flusher.shutdown().await.expect("the last flush");
    meta.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_stay_writable_past_their_leases() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let members = group(&dirs).await;
    leader(&members[0]).await;
    members[0]
        .propose(Command::PutEntry {
            digest: digest(1),
            entry: blob(10, 1),
        })
        .await
        .unwrap();

    tokio::time::sleep(IDLE).await;
    for (n, meta) in (1..).zip(&members) {
        assert!(meta.writable(), "{:?}", meta.status());
        meta.propose(set_tag("latest", n))
            .await
            .expect("a tag recorded after the idle");
        assert_eq!(tag(meta, "latest"), Some(record(n, u64::from(n))));
        meta.record_access(&digest(1));
        meta.flush_accesses().await.expect("flushing accesses");
        assert!(meta.entry(&digest(1)).unwrap().unwrap().last_access > 1);
    }
    for meta in &members {
        meta.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_and_its_follower_cut_off_from_the_majority_are_read_only() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut members = group(&dirs).await;
    let leader = leader(&members[0]).await;
    members[0].propose(set_tag("latest", 1)).await.unwrap();
    let follower = members
        .iter()
        .map(id_of)
        .find(|id| *id != leader)
        .expect("a follower");
    let (minority, majority): (Vec<Meta>, Vec<Meta>) = members
        .drain(..)
        .partition(|m| [leader, follower].contains(&id_of(m)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while minority.iter().any(|m| tag(m, "latest").is_none()) {
        assert!(Instant::now() < deadline, "the tag never reached the minority");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for meta in &majority {
        meta.shutdown().await;
    }

    // Both lose writability once the leader's lease runs out and the
    // follower stops hearing from it...
    let deadline = Instant::now() + Duration::from_secs(15);
    while minority.iter().any(Meta::writable) {
        assert!(
            Instant::now() < deadline,
            "still writable: {:?}",
            minority.iter().map(Meta::status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and stay read-only, past the leader's quiet and probing phases.
    let until = Instant::now() + IDLE;
    while Instant::now() < until {
        for meta in &minority {
            assert!(!meta.writable(), "writable again: {:?}", meta.status());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for meta in &minority {
        let err = meta.propose(set_tag("latest", 2)).await.unwrap_err();
        assert!(matches!(err, MetaError::NoQuorum), "{err}");
        assert_eq!(tag(meta, "latest"), Some(record(1, 1)), "reads go on");
        meta.shutdown().await;
    }
}
