//! Garbage collection through a running group: serving content a pass
//! condemned rescues it at once, not at the next access flush.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::group::start;
use common::{blob, digest};
use meta::{Command, GroupSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_condemned_content_rescues_it_before_the_next_flush() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(start(dir.path(), &GroupSettings::single()).await);
    for n in [1, 2] {
        meta.propose(Command::PutEntry {
            digest: digest(n),
            entry: blob(10, 1),
        })
        .await
        .unwrap();
    }
    // Accesses are batched for a minute: only an urgent flush is in time.
    let flusher = meta.spawn_access_flusher(Duration::from_secs(60));
    meta.propose(Command::GcStart { epoch: 1, cutoff: 50 })
        .await
        .unwrap();
    let marked = meta.gc_mark(50).unwrap();
    assert_eq!(marked.len(), 2);
    meta.propose(Command::GcCondemn {
        epoch: 1,
        digests: marked,
    })
    .await
    .unwrap();
    assert_eq!(meta.gc_state().unwrap().condemned, 2);

    meta.record_access(&digest(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while meta.gc_state().unwrap().condemned != 1 {
        assert!(Instant::now() < deadline, "never rescued: {:?}", meta.gc_state());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    meta.propose(Command::GcCommit { epoch: 1, max: 100 })
        .await
        .unwrap();
    assert!(meta.entry(&digest(1)).unwrap().is_some(), "the served blob went");
    assert!(meta.entry(&digest(2)).unwrap().is_none());
    let state = meta.gc_state().unwrap();
    assert_eq!((state.cutoff, state.condemned), (None, 0), "the pass closed");
    flusher.shutdown().await.unwrap();
    meta.shutdown().await;
}
