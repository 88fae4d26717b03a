//! The disk tier under the cache: a `disk_bytes` lowered between two runs
//! applies at start, and the index forgets what that evicts.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use common::{cache_with, drain, remote, scripted_upstream};
use meta::{GroupSettings, Meta};
use oci::{Digest, RepoName};
use store::DiskStore;

const SIZE: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_disk_budget_applies_at_start_and_the_index_forgets_what_went() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(
        Meta::start(&dir.path().join("meta"), &GroupSettings::single())
            .await
            .expect("starting meta"),
    );
    let repo: RepoName = "library/x".parse().unwrap();
    let disk = DiskStore::open(dir.path(), 1 << 30).unwrap();
    let cache = cache_with(disk.clone(), None, Arc::clone(&meta));
    let mut digests: Vec<Digest> = Vec::new();
    for fill in 0..3u8 {
        // One scripted upstream per blob: each serves its own bytes.
        let body = vec![fill; SIZE];
        let digest = Digest::sha256_of(&body);
        let url = scripted_upstream(body.clone(), Arc::new(AtomicUsize::new(0))).await;
        let hit = cache.blob(&remote(&url), &repo, &digest, None).await.unwrap();
        assert_eq!(drain(hit.body).await.unwrap(), body);
        for _ in 0..500 {
            if meta.entry(&digest).unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            meta.entry(&digest).unwrap().is_some(),
            "blob {fill} never indexed"
        );
        digests.push(digest);
        // Distinct modification times, so the restart orders them.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(cache);
    drop(disk);

    // The next run allows one and a half blobs.
    let smaller = DiskStore::open(dir.path(), SIZE as u64 * 3 / 2).unwrap();
    let cache = cache_with(smaller.clone(), None, Arc::clone(&meta));
    cache.trim_disk().await;
    assert_eq!(smaller.used_bytes(), SIZE as u64);
    for gone in &digests[..2] {
        assert_eq!(smaller.size_of(gone), None);
        assert!(
            meta.entry(gone).unwrap().is_none(),
            "the index still names {gone}"
        );
    }
    assert_eq!(smaller.size_of(&digests[2]), Some(SIZE as u64));
    assert!(meta.entry(&digests[2]).unwrap().is_some());
    meta.shutdown().await;
}
