//! The `Meta` handle end to end, offline (local order): propose, read back,
//! reopen, access flushing. tests/group.rs runs it as a Raft group.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{blob, digest, key, manifest, record};
use meta::{Command, Meta, MetaStats};

fn open(dir: &tempfile::TempDir) -> Meta {
    Meta::open_offline(&dir.path().join("meta")).expect("open meta offline")
}

#[tokio::test]
async fn set_tag_is_readable_and_refreshable() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open(&dir);
    let k = key("docker.io", "library/alpine", "latest");
    assert_eq!(meta.tag(&k).unwrap(), None);

    meta.propose(Command::SetTag {
        key: k.clone(),
        record: record(1, 100),
    })
    .await
    .unwrap();
    assert_eq!(meta.tag(&k).unwrap(), Some(record(1, 100)));

    meta.propose(Command::SetTag {
        key: k.clone(),
        record: record(2, 200),
    })
    .await
    .unwrap();
    assert_eq!(meta.tag(&k).unwrap(), Some(record(2, 200)));
    assert_eq!(meta.stats().unwrap().tags, 1);
}

#[tokio::test]
async fn tags_of_lists_one_repository_only() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open(&dir);
    let keys = [
        key("docker.io", "library/alpine", "3.20"),
        key("docker.io", "library/alpine", "latest"),
        key("docker.io", "library/alpine-x", "latest"),
        key("docker.io", "library/alpine/sub", "latest"),
        key("quay.io", "library/alpine", "latest"),
    ];
    for (n, k) in keys.iter().enumerate() {
        let n = u32::try_from(n).unwrap();
        meta.propose(Command::SetTag {
            key: k.clone(),
            record: record(n, 1),
        })
        .await
        .unwrap();
    }
    let tags = meta.tags_of("docker.io", "library/alpine").unwrap();
    assert_eq!(
        tags,
        vec![("3.20".into(), record(0, 1)), ("latest".into(), record(1, 1))]
    );
    assert!(meta.tags_of("docker.io", "nothing").unwrap().is_empty());
}

#[tokio::test]
async fn nul_in_a_tag_key_is_refused_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open(&dir);
    let bad = key("docker.io", "library/alpine\0x", "latest");
    let err = meta
        .propose(Command::SetTag {
            key: bad.clone(),
            record: record(1, 1),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nul"), "{err}");
    assert_eq!(meta.stats().unwrap().last_applied, None);
    assert!(meta.tag(&bad).is_err());
}

#[tokio::test]
async fn put_entry_is_idempotent_and_keeps_newest_access() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open(&dir);
    let d = digest(7);
    let mut first = blob(1000, 50);
    first.object_key = Some("blobs/sha256/x-1".into());
    meta.propose(Command::PutEntry {
        digest: d.clone(),
        entry: first.clone(),
    })
    .await
    .unwrap();
    meta.propose(Command::PutEntry {
        digest: d.clone(),
        entry: first.clone(),
    })
    .await
    .unwrap();
    assert_eq!(meta.entry(&d).unwrap(), Some(first.clone()));

    // An older access time and no object key: neither goes backwards.
    meta.propose(Command::PutEntry {
        digest: d.clone(),
        entry: blob(1000, 10),
    })
    .await
    .unwrap();
    assert_eq!(meta.entry(&d).unwrap(), Some(first.clone()));

    meta.propose(Command::PutEntry {
        digest: d.clone(),
        entry: blob(1000, 90),
    })
    .await
    .unwrap();
    let got = meta.entry(&d).unwrap().unwrap();
    assert_eq!(got.last_access, 90);
    assert_eq!(got.object_key, first.object_key);

    let stats = meta.stats().unwrap();
    assert_eq!((stats.blobs, stats.blob_bytes), (1, 1000));
}

#[tokio::test]
async fn touch_only_moves_forward_and_ignores_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open(&dir);
    let (a, b, unknown) = (digest(1), digest(2), digest(3));
    meta.propose(Command::PutEntry {
        digest: a.clone(),
        entry: blob(1, 100),
    })
    .await
    .unwrap();
    meta.propose(Command::PutEntry {
        digest: b.clone(),
        entry: blob(2, 100),
    })
    .await
    .unwrap();

    let accesses = vec![
        (a.clone(), 150),
        (b.clone(), 40),
        (unknown.clone(), 999),
        (a.clone(), 120),
    ];
    meta.propose(Command::Touch { accesses }).await.unwrap();

    assert_eq!(meta.entry(&a).unwrap().unwrap().last_access, 150);
    assert_eq!(meta.entry(&b).unwrap().unwrap().last_access, 100);
    assert_eq!(meta.entry(&unknown).unwrap(), None);
    assert_eq!(meta.stats().unwrap().entries(), 2);
}

#[tokio::test]
async fn remove_entries_drops_them_and_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let meta = open(&dir);
    let (m, b1, b2) = (digest(1), digest(2), digest(3));
    let entry = manifest(300, vec![b1.clone(), b2.clone()], 1);
    meta.propose(Command::PutEntry {
        digest: m.clone(),
        entry: entry.clone(),
    })
    .await
    .unwrap();
    meta.propose(Command::PutEntry {
        digest: b1.clone(),
        entry: blob(1000, 1),
    })
    .await
    .unwrap();
    meta.propose(Command::PutEntry {
        digest: b2.clone(),
        entry: blob(2000, 1),
    })
    .await
    .unwrap();
    assert_eq!(meta.entry(&m).unwrap(), Some(entry));

    let digests = vec![b1.clone(), digest(99)];
    meta.propose(Command::RemoveEntries { digests }).await.unwrap();
    assert_eq!(meta.entry(&b1).unwrap(), None);
    assert!(meta.entry(&b2).unwrap().is_some());
    let stats = meta.stats().unwrap();
    assert_eq!(
        stats,
        MetaStats {
            tags: 0,
            manifests: 1,
            manifest_bytes: 300,
            blobs: 1,
            blob_bytes: 2000,
            last_applied: Some(4),
        }
    );
}

#[tokio::test]
async fn state_and_index_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("docker.io", "library/alpine", "latest");
    {
        let meta = open(&dir);
        meta.propose(Command::SetTag {
            key: k.clone(),
            record: record(1, 1),
        })
        .await
        .unwrap();
        meta.propose(Command::PutEntry {
            digest: digest(1),
            entry: blob(5, 1),
        })
        .await
        .unwrap();
        // A non-durable Touch is persisted by the clean close.
        meta.propose(Command::Touch {
            accesses: vec![(digest(1), 9)],
        })
        .await
        .unwrap();
        assert_eq!(meta.stats().unwrap().last_applied, Some(3));
    }
    let meta = open(&dir);
    assert_eq!(meta.tag(&k).unwrap(), Some(record(1, 1)));
    assert_eq!(meta.entry(&digest(1)).unwrap().unwrap().last_access, 9);
    assert_eq!(meta.stats().unwrap().last_applied, Some(3));

    meta.propose(Command::RemoveEntries {
        digests: vec![digest(1)],
    })
    .await
    .unwrap();
    assert_eq!(meta.stats().unwrap().last_applied, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_proposes_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(open(&dir));
    let tasks: Vec<_> = (0..64u32)
        .map(|n| {
            let meta = Arc::clone(&meta);
            tokio::spawn(async move {
                let k = key("docker.io", "many", &format!("t{n}"));
                meta.propose(Command::SetTag {
                    key: k,
                    record: record(n, 1),
                })
                .await?;
                meta.propose(Command::PutEntry {
                    digest: digest(n),
                    entry: blob(10, 1),
                })
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = meta.stats().unwrap();
    assert_eq!((stats.tags, stats.blobs, stats.blob_bytes), (64, 64, 640));
    assert_eq!(stats.last_applied, Some(128));
    assert_eq!(meta.tags_of("docker.io", "many").unwrap().len(), 64);
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[tokio::test]
async fn flusher_proposes_one_touch_with_latest_times() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(open(&dir));
    let (a, b) = (digest(1), digest(2));
    meta.propose(Command::PutEntry {
        digest: a.clone(),
        entry: blob(1, 0),
    })
    .await
    .unwrap();
    meta.propose(Command::PutEntry {
        digest: b.clone(),
        entry: blob(1, 0),
    })
    .await
    .unwrap();
    let before = meta.stats().unwrap().last_applied.unwrap();

    let flusher = meta.spawn_access_flusher(Duration::from_millis(50));
    let start = now_secs();
    for _ in 0..100 {
        meta.record_access(&a);
        meta.record_access(&b);
    }
    meta.record_access(&digest(3)); // unknown: ignored by apply
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while meta.entry(&b).unwrap().unwrap().last_access == 0 {
        assert!(tokio::time::Instant::now() < deadline, "flusher never flushed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flusher.shutdown().await.unwrap();

    assert_eq!(meta.stats().unwrap().last_applied, Some(before + 1), "one touch");
    for d in [&a, &b] {
        let at = meta.entry(d).unwrap().unwrap().last_access;
        assert!(at >= start && at <= now_secs(), "{at}");
    }
}

#[tokio::test]
async fn shutdown_flushes_what_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(open(&dir));
    let a = digest(1);
    meta.propose(Command::PutEntry {
        digest: a.clone(),
        entry: blob(1, 0),
    })
    .await
    .unwrap();
    let flusher = meta.spawn_access_flusher(Duration::from_secs(3600));
    meta.record_access(&a);
    flusher.shutdown().await.unwrap();
    assert!(meta.entry(&a).unwrap().unwrap().last_access > 0);
    assert_eq!(meta.stats().unwrap().last_applied, Some(2));
    // Nothing pending: no empty Touch is proposed.
    assert_eq!(meta.flush_accesses().await.unwrap(), 0);
    assert_eq!(meta.stats().unwrap().last_applied, Some(2));
}
