//! The object-tier and disk-fill paths in process: two replicas' caches
//! over their own disk tiers share one metadata group and one object tier
//! (objstore's real `fs` store on a temp dir). Replica A fetches a blob from
//! a scripted upstream and stores it; replica B then streams it straight
//! from the object tier, checked, and copies it to its disk afterwards.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cache::{Cache, ObjectTier, Remote, Tier};
use common::{drain, replica, scripted_upstream};
use meta::{GroupSettings, Meta};
use objstore::{FsStore, ObjectStore};
use oci::{ByteRange, Digest, RepoName};
use store::DiskStore;

/// Larger than one write batch, so a copy takes several steps.
const SIZE: usize = 3 << 20;

struct Replica {
    cache: Cache,
    remote: Remote,
    disk: DiskStore,
}

struct Pair {
    a: Replica,
    b: Replica,
    meta: Arc<Meta>,
    content: Vec<u8>,
    digest: Digest,
    repo: RepoName,
    upstream_hits: Arc<AtomicUsize>,
    objects_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Two replicas; A has fetched the blob, which is now in the object
    /// tier and its index entry.
    async fn with_stored_blob() -> Pair {
        let content: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
        let digest = Digest::sha256_of(&content);
        let upstream_hits = Arc::new(AtomicUsize::new(0));
        let url = scripted_upstream(content.clone(), Arc::clone(&upstream_hits)).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let objects_dir = dir.path().join("objects");
        let store = FsStore::new(&objects_dir).expect("object store");
        let objects = Arc::new(ObjectTier::new(ObjectStore::Fs(store)));
        let meta = Meta::start(&dir.path().join("meta"), &GroupSettings::single())
            .await
            .expect("starting meta");
        let meta = Arc::new(meta);
        let replica_at = |name: &str| {
            let (cache, remote, disk) = replica(
                &dir.path().join(name),
                &url,
                Some(Arc::clone(&objects)),
                Arc::clone(&meta),
            );
            Replica { cache, remote, disk }
        };
        let pair = Pair {
            a: replica_at("a"),
            b: replica_at("b"),
            meta,
            content,
            digest,
            repo: "library/x".parse().expect("repo"),
            upstream_hits,
            objects_dir,
            _dir: dir,
        };
        let hit = pair.get(&pair.a, None).await;
        assert_eq!(hit.1, Tier::Upstream);
        assert_eq!(hit.0.expect("a's download"), pair.content);
        pair.wait_until(|p| {
            p.meta
                .entry(&p.digest)
                .expect("reading the index")
                .is_some_and(|e| e.object_key.is_some())
        })
        .await;
        pair
    }

    /// One request through `replica`: the whole body (or the error that
    /// ended it) and the tier that answered.
    async fn get(&self, replica: &Replica, range: Option<ByteRange>) -> (std::io::Result<Vec<u8>>, Tier) {
        let hit = replica
            .cache
            .blob(&replica.remote, &self.repo, &self.digest, range)
            .await
            .expect("a blob hit");
        (drain(hit.body).await, hit.tier)
    }

    async fn wait_until(&self, done: impl Fn(&Pair) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_for_disk_copy(&self, replica: &Replica) {
        self.wait_until(|p| replica.disk.size_of(&p.digest) == Some(p.content.len() as u64))
            .await;
    }

    fn object_files(&self) -> Vec<PathBuf> {
        testkit::files_under(&self.objects_dir.join("blobs"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_only_in_the_object_tier_streams_from_it_then_reaches_the_disk() {
    let pair = Pair::with_stored_blob().await;
    assert_eq!(pair.b.disk.size_of(&pair.digest), None);

    let (body, tier) = pair.get(&pair.b, None).await;
    assert_eq!(tier, Tier::Object);
    assert_eq!(body.expect("the whole blob"), pair.content);
    pair.wait_for_disk_copy(&pair.b).await;
    let (body, tier) = pair.get(&pair.b, None).await;
    assert_eq!(
        (body.expect("the blob"), tier),
        (pair.content.clone(), Tier::Disk)
    );
    assert_eq!(
        pair.upstream_hits.load(Ordering::SeqCst),
        1,
        "only A asked the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_an_object_tier_blob_is_read_from_the_store() {
    let pair = Pair::with_stored_blob().await;
    let hit = pair
        .b
        .cache
        .blob(
            &pair.b.remote,
            &pair.repo,
            &pair.digest,
            Some(ByteRange::FromTo(1000, 1999)),
        )
        .await
        .expect("a blob hit");
    assert_eq!(
        (hit.tier, hit.span, hit.size),
        (Tier::Object, Some((1000, 2000)), SIZE as u64)
    );
    assert_eq!(
        drain(hit.body).await.expect("the range"),
        &pair.content[1000..2000]
    );
    assert_eq!(pair.upstream_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_meanwhile_starts_the_disk_copy_and_follows_it() {
    let pair = Pair::with_stored_blob().await;
    let first = pair
        .b
        .cache
        .blob(&pair.b.remote, &pair.repo, &pair.digest, None)
        .await
        .expect("a blob hit");
    assert_eq!(first.tier, Tier::Object);

    // The first response is still open: the second request copies the
    // object to disk now rather than opening a stream of its own.
    let (body, _) = pair.get(&pair.b, None).await;
    assert_eq!(body.expect("the whole blob"), pair.content);
    pair.wait_for_disk_copy(&pair.b).await;
    assert_eq!(drain(first.body).await.expect("the first response"), pair.content);
    assert_eq!(pair.upstream_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_object_never_completes_a_response_and_is_deleted() {
    let pair = Pair::with_stored_blob().await;
    let files = pair.object_files();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut corrupt = pair.content.clone();
    corrupt[SIZE / 2] ^= 0xff;
    std::fs::write(&files[0], &corrupt).expect("corrupting the object");

    let (body, tier) = pair.get(&pair.b, None).await;
    assert_eq!(tier, Tier::Object);
    assert!(body.is_err(), "a corrupt object completed a response");
    pair.wait_until(|p| p.object_files().is_empty()).await;
    assert_eq!(
        pair.b.disk.size_of(&pair.digest),
        None,
        "nothing corrupt was kept"
    );

    // The next request fetches the blob again, whole and right.
    let (body, tier) = pair.get(&pair.b, None).await;
    assert_eq!(tier, Tier::Upstream);
    assert_eq!(body.expect("the blob from upstream"), pair.content);
    assert_eq!(pair.upstream_hits.load(Ordering::SeqCst), 2);
}
