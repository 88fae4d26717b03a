//! `Meta` as a serving replica runs it: a Raft group of one, records made
//! offline adopted by a new group, and three members over loopback gRPC
//! where followers forward to the leader and a member without a quorum
//! keeps serving reads while its proposals fail fast.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::group::{group, id_of, leader, start, tag, voters, wait_for_status};
use common::{blob, digest, record, set_tag};
use meta::{Command, GroupSettings, Meta, MetaError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_one_commits_and_keeps_its_log_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let meta = start(dir.path(), &GroupSettings::single()).await;
    meta.propose(set_tag("latest", 1)).await.unwrap();
    assert_eq!(tag(&meta, "latest"), Some(record(1, 1)));
    assert!(meta.writable());
    meta.shutdown().await;
    drop(meta);

    let meta = reopen(dir.path(), &GroupSettings::single()).await;
    assert_eq!(tag(&meta, "latest"), Some(record(1, 1)));
    meta.propose(set_tag("latest", 2)).await.unwrap();
    assert_eq!(tag(&meta, "latest"), Some(record(2, 2)));
    let status = meta.status().expect("a raft group");
    assert_eq!(status.leader, Some(1));
    assert_eq!(voters(&status), [1], "restarting re-initialized nothing");
    meta.shutdown().await;
    drop(meta);
    assert!(
        matches!(Meta::open_offline(dir.path()), Err(MetaError::RaftOwned(_))),
        "offline tools must not write a state raft owns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_one_records_its_address_when_it_gets_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    let meta = start(dir.path(), &GroupSettings::single()).await;
    meta.propose(set_tag("latest", 1)).await.unwrap();
    meta.shutdown().await;
    drop(meta);

    let settings = GroupSettings {
        advertise: "127.0.0.1:5001".into(),
        ..GroupSettings::single()
    };
    let meta = reopen(dir.path(), &settings).await;
    wait_for_status(&meta, "the new address recorded", |s| {
        s.members.iter().any(|m| m.id == 1 && m.addr == "127.0.0.1:5001")
    })
    .await;
    meta.shutdown().await;
}

/// openraft's workers release the storage a moment after `shutdown`.
async fn reopen(dir: &Path, settings: &GroupSettings) -> Meta {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Meta::start(dir, settings).await {
            Ok(meta) => return meta,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "storage still open");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopening metadata: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_made_offline_are_adopted_and_snapshotted_by_a_new_group() {
    let dir = tempfile::tempdir().unwrap();
    {
        let offline = Meta::open_offline(dir.path()).unwrap();
        for n in 1..=3 {
            offline
                .propose(Command::PutEntry {
                    digest: digest(n),
                    entry: blob(10, 1),
                })
                .await
                .unwrap();
        }
    }
    let meta = start(dir.path(), &GroupSettings::single()).await;
    meta.propose(set_tag("latest", 1)).await.unwrap();
    assert_eq!(meta.stats().unwrap().entries(), 3, "offline records kept");
    // The log does not carry them, so a snapshot stands in for it: a member
    // added later is sent the snapshot, not a log that lacks them.
    wait_for_status(&meta, "a snapshot replacing the log", |s| {
        s.snapshot_index.is_some() && s.purged_index.is_some()
    })
    .await;
    meta.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_and_a_member_without_quorum_fails_fast_but_reads() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut members = group(&dirs).await;

    let leader = leader(&members[0]).await;
    let follower = members.iter().find(|m| id_of(m) != leader).expect("a follower");

    let started = Instant::now();
    follower.propose(set_tag("latest", 1)).await.unwrap();
    println!(
        "forwarded proposal committed and applied in {:?}",
        started.elapsed()
    );
    assert_eq!(
        tag(follower, "latest"),
        Some(record(1, 1)),
        "a follower reads its own write"
    );
    assert!(matches!(
        follower.propose(set_tag("bad\0tag", 1)).await,
        Err(MetaError::InvalidTagKey(_))
    ));

    // Stop two members: the third cannot commit, but still reads, once it
    // has applied the tag.
    let survivor = members.pop().expect("three members");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tag(&survivor, "latest").is_none() {
        assert!(
            Instant::now() < deadline,
            "the tag never reached member {}",
            id_of(&survivor)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for meta in &members {
        meta.shutdown().await;
    }
    let started = Instant::now();
    let err = survivor.propose(set_tag("latest", 2)).await.unwrap_err();
    assert!(matches!(err, MetaError::NoQuorum), "{err}");
    println!(
        "first proposal without quorum failed after {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = Instant::now();
        let err = survivor.propose(set_tag("latest", 3)).await.unwrap_err();
        assert!(matches!(err, MetaError::NoQuorum), "{err}");
        if started.elapsed() < Duration::from_millis(100) {
            break;
        }
        assert!(Instant::now() < deadline, "proposals never failed fast");
    }
    assert!(!survivor.writable());
    assert_eq!(tag(&survivor, "latest"), Some(record(1, 1)), "reads go on");
    survivor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_made_offline_reach_every_member_of_a_new_group() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    {
        let offline = Meta::open_offline(dirs[0].path()).unwrap();
        offline
            .propose(Command::PutEntry {
                digest: digest(1),
                entry: blob(10, 1),
            })
            .await
            .unwrap();
    }
    let members = group(&dirs).await;
    members[0].propose(set_tag("latest", 1)).await.unwrap();
    for meta in &members {
        wait_for_status(meta, "three voters", |s| voters(s).len() == 3).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for meta in &members {
        while meta.entry(&digest(1)).unwrap().is_none() || tag(meta, "latest").is_none() {
            assert!(
                Instant::now() < deadline,
                "a member never received the offline record"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for meta in &members {
        meta.shutdown().await;
    }
}

/// The key of the digest-ownership hash: set once by the first leader,
/// the same on every member, kept across restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_sets_one_owner_key_every_member_applies() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let members = group(&dirs).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while members.iter().any(|m| m.owner_key().is_none()) {
        assert!(Instant::now() < deadline, "a member never applied an owner key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key = members[0].owner_key();
    assert_eq!(key.as_ref().map(Vec::len), Some(32));
    assert!(members.iter().all(|m| m.owner_key() == key));
    for meta in &members {
        meta.shutdown().await;
    }
}
