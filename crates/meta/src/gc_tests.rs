//! Garbage collection in the state machine: the mark on a built state, and
//! passes applied command by command, accesses in between.

use oci::Digest;
use tempfile::TempDir;

use crate::fixtures::{blob, digest, dump, manifest};
use crate::{Command, Entry, GcState, StateDb};

const CUTOFF: u64 = 50;
const IDLE: u64 = 10;
const RECENT: u64 = 100;

/// A state database applying commands with increasing indexes.
struct Db {
    db: StateDb,
    next: u64,
    _dir: TempDir,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = StateDb::open(&dir.path().join("state.redb")).expect("opening the state");
        Db {
            db,
            next: 1,
            _dir: dir,
        }
    }

    fn apply(&mut self, cmd: Command) {
        self.db.apply(self.next, &cmd).expect("applying");
        self.next += 1;
    }

    fn put(&mut self, n: u32, entry: Entry) {
        self.apply(Command::PutEntry {
            digest: digest(n),
            entry,
        });
    }

    fn has(&self, n: u32) -> bool {
        self.db.entry(&digest(n)).expect("reading").is_some()
    }

    fn state(&self) -> GcState {
        self.db.gc_state().expect("reading gc state")
    }

    /// Opens pass `epoch` and condemns what the mark finds.
    fn mark_and_condemn(&mut self, epoch: u64) -> Vec<Digest> {
        let marked = self.db.gc_mark(CUTOFF).expect("marking");
        self.apply(Command::GcStart {
            epoch,
            cutoff: CUTOFF,
        });
        self.apply(Command::GcCondemn {
            epoch,
            digests: marked.clone(),
        });
        marked
    }

    fn touch(&mut self, n: u32) {
        self.apply(Command::Touch {
            accesses: vec![(digest(n), RECENT + 1)],
        });
    }
}

fn with_key(entry: Entry, key: &str) -> Entry {
    Entry {
        object_key: Some(key.to_owned()),
        ..entry
    }
}

/// Manifest 1 (recent) references blobs 11 and 12; manifest 2 (idle)
/// references 12 and 13; blob 14 is idle and referenced by nothing.
fn two_images() -> Db {
    let mut db = Db::new();
    db.put(1, manifest(100, vec![digest(11), digest(12)], RECENT));
    db.put(
        2,
        with_key(manifest(100, vec![digest(12), digest(13)], IDLE), "manifests/2"),
    );
    for n in [11, 12, 13, 14] {
        db.put(n, with_key(blob(1000, IDLE), &format!("blobs/{n}")));
    }
    db
}

#[test]
fn the_mark_takes_idle_content_no_recent_manifest_references() {
    let db = two_images();
    let marked = db.db.gc_mark(CUTOFF).unwrap();
    let mut blobs = [digest(13), digest(14)];
    blobs.sort();
    assert_eq!(marked[0], digest(2), "manifests first");
    assert_eq!(marked[1..], blobs[..]);
}

#[test]
fn an_index_keeps_its_child_manifests_and_their_layers() {
    let mut db = Db::new();
    db.put(1, manifest(100, vec![digest(2)], RECENT));
    db.put(2, manifest(100, vec![digest(3)], IDLE));
    db.put(3, blob(1000, IDLE));
    assert_eq!(db.db.gc_mark(CUTOFF).unwrap(), Vec::<Digest>::new());
}

#[test]
fn a_commit_removes_what_stays_condemned_and_queues_its_objects_for_the_sweep() {
    let mut db = two_images();
    db.mark_and_condemn(1);
    assert_eq!(db.state().condemned, 3);
    assert_eq!(db.state().cutoff, Some(CUTOFF), "the pass is open");
    db.apply(Command::GcCommit { epoch: 1, max: 2 });
    assert_eq!(db.state().condemned, 1, "a chunk at a time");
    db.apply(Command::GcCommit { epoch: 1, max: 2 });
    let state = db.state();
    assert_eq!(
        (state.condemned, state.to_sweep, state.cutoff),
        (0, 3, None),
        "{state:?}"
    );
    for n in [2, 13, 14] {
        assert!(!db.has(n), "{n} stayed");
    }
    for n in [1, 11, 12] {
        assert!(db.has(n), "{n} went");
    }
    let stats = db.db.stats().unwrap();
    assert_eq!((stats.manifests, stats.blobs, stats.blob_bytes), (1, 2, 2000));
    db.apply(Command::Swept {
        keys: vec!["blobs/13".into(), "blobs/14".into(), "manifests/2".into()],
    });
    assert_eq!(db.state().to_sweep, 0);
}

#[test]
fn serving_a_condemned_manifest_rescues_it_and_what_it_references() {
    let mut db = two_images();
    db.mark_and_condemn(1);
    db.touch(2);
    assert_eq!(db.state().condemned, 1, "manifest 2 and blob 13 rescued");
    db.apply(Command::GcCommit { epoch: 1, max: 100 });
    assert!(db.has(2) && db.has(13) && !db.has(14));
}

#[test]
fn an_access_before_the_condemn_applies_keeps_the_digest_and_its_references() {
    let mut db = two_images();
    let marked = db.db.gc_mark(CUTOFF).unwrap();
    db.apply(Command::GcStart {
        epoch: 1,
        cutoff: CUTOFF,
    });
    // Served after the leader's mark, before its condemn applies.
    db.touch(2);
    db.touch(14);
    db.apply(Command::GcCondemn {
        epoch: 1,
        digests: marked,
    });
    assert_eq!(db.state().condemned, 0, "{:?}", db.state());
}

#[test]
fn a_manifest_indexed_during_a_pass_keeps_the_content_it_references() {
    let mut db = two_images();
    db.mark_and_condemn(1);
    // A new image sharing blob 14 is pulled while the pass is open.
    db.put(3, manifest(100, vec![digest(14)], RECENT));
    db.apply(Command::GcCommit { epoch: 1, max: 100 });
    assert!(db.has(14), "a layer of a manifest just pulled went");
    assert!(!db.has(2) && !db.has(13));
}

#[test]
fn stale_or_foreign_epochs_change_nothing_and_a_new_pass_abandons_the_open_one() {
    let mut db = two_images();
    db.mark_and_condemn(1);
    db.apply(Command::GcStart { epoch: 1, cutoff: 0 });
    assert_eq!(db.state().cutoff, Some(CUTOFF), "a repeated start is ignored");
    db.apply(Command::GcCommit { epoch: 7, max: 100 });
    assert_eq!(db.state().condemned, 3, "another epoch's commit is ignored");
    db.apply(Command::GcStart { epoch: 2, cutoff: 5 });
    let state = db.state();
    assert_eq!((state.epoch, state.cutoff, state.condemned), (2, Some(5), 0));
    db.apply(Command::GcCondemn {
        epoch: 2,
        digests: vec![digest(14)],
    });
    assert_eq!(db.state().condemned, 0, "not idle by the new cutoff");
}

#[test]
fn members_applying_one_log_agree_and_a_snapshot_carries_an_open_pass() {
    let run = || {
        let mut db = two_images();
        db.mark_and_condemn(1);
        db.touch(2);
        db.apply(Command::GcCommit { epoch: 1, max: 0 });
        db
    };
    let (a, b) = (run(), run());
    assert_eq!(dump(&a.db), dump(&b.db));
    assert_eq!(a.state().condemned, 1);

    let mut joined = Db::new();
    let snapshot = dump(&a.db);
    joined
        .db
        .install_snapshot_then(snapshot.as_slice(), |_| Ok(()))
        .expect("installing");
    assert_eq!(dump(&joined.db), snapshot);
    assert_eq!(joined.state(), a.state());
    // The pass goes on from the snapshot exactly as on the others.
    joined.next = a.next;
    joined.apply(Command::GcCommit { epoch: 1, max: 100 });
    assert!(!joined.has(14) && joined.has(2));
    assert_eq!(joined.state().to_sweep, 1);
}

/// Manifest 1 (accessed at 100) references blobs 11 and 12 (10); manifest
/// 2 (60) references blob 13 (5); blobs 14 (80) and 15 (90) stand alone.
/// 5,200 bytes in all.
fn by_recency() -> Db {
    let mut db = Db::new();
    db.put(1, manifest(100, vec![digest(11), digest(12)], 100));
    db.put(2, manifest(100, vec![digest(13)], 60));
    for (n, at) in [(11, 10), (12, 10), (13, 5), (14, 80), (15, 90)] {
        db.put(n, with_key(blob(1000, at), &format!("blobs/{n}")));
    }
    db
}

#[test]
fn a_budget_takes_the_least_recently_used_first_counting_what_a_manifest_keeps() {
    let mut db = by_recency();
    assert_eq!(db.db.gc_budget_cutoff(5200).unwrap(), None, "within the budget");
    // 4,000 bytes: down to 3,600. Manifest 2 and blob 13 go (60, the
    // manifest's recency: the blob's own 5 does not count), then blob 14
    // (80); blobs 11 and 12 are as recent as manifest 1 that keeps them.
    let cutoff = db.db.gc_budget_cutoff(4000).unwrap().expect("over the budget");
    assert_eq!(cutoff, 81);
    let mut expected = vec![digest(2)];
    let mut blobs = vec![digest(13), digest(14)];
    blobs.sort();
    expected.extend(blobs);
    assert_eq!(db.db.gc_mark(cutoff).unwrap(), expected);

    db.apply(Command::GcStart { epoch: 1, cutoff });
    db.apply(Command::GcCondemn {
        epoch: 1,
        digests: expected,
    });
    db.apply(Command::GcCommit { epoch: 1, max: 100 });
    assert_eq!(
        db.db.gc_budget_cutoff(4000).unwrap(),
        None,
        "3,100 bytes are left"
    );
    assert!(db.has(11) && db.has(12) && db.has(15));
}

#[test]
fn a_budget_reaches_through_an_index_and_takes_whole_seconds() {
    let mut db = Db::new();
    db.put(1, manifest(100, vec![digest(2)], 100));
    db.put(2, manifest(100, vec![digest(3)], 10));
    db.put(3, blob(1000, 10));
    for n in [4, 5] {
        db.put(n, blob(1000, 50));
    }
    // 3,200 bytes, 2,000 allowed: one blob of second 50 would do, but a
    // cutoff takes the whole second, and nothing the index keeps.
    let cutoff = db.db.gc_budget_cutoff(2000).unwrap().expect("over the budget");
    assert_eq!(cutoff, 51);
    assert_eq!(db.db.gc_mark(cutoff).unwrap(), [digest(4), digest(5)]);
}

#[test]
fn tags_not_requested_since_the_cutoff_are_dropped() {
    use crate::TagRecord;
    use crate::fixtures::{key as tag_key, record};
    let mut db = Db::new();
    // Checked (and so requested) at 10 s, at 100 s; the first then
    // requested again at 60 s through a batched TouchTags.
    for (tag, checked_at) in [("old", 10), ("new", 100), ("touched", 10)] {
        db.apply(Command::SetTag {
            key: tag_key("docker.io", "library/app", tag),
            record: record(1, checked_at * 1000),
        });
    }
    db.apply(Command::TouchTags {
        tags: vec![
            (tag_key("docker.io", "library/app", "touched"), 60),
            (tag_key("docker.io", "library/app", "unknown"), 60),
        ],
    });
    // A revalidation keeps the newer request time it replaces.
    db.apply(Command::SetTag {
        key: tag_key("docker.io", "library/app", "touched"),
        record: TagRecord {
            requested_at: 0,
            ..record(2, 20_000)
        },
    });
    assert_eq!(db.db.gc_idle_tags(CUTOFF).unwrap(), 1);
    db.apply(Command::DropIdleTags { cutoff: CUTOFF });
    let kept: Vec<String> = db
        .db
        .tags_of("docker.io", "library/app")
        .unwrap()
        .into_iter()
        .map(|(tag, _)| tag)
        .collect();
    assert_eq!(kept, ["new", "touched"]);
    let touched = db
        .db
        .tag(&tag_key("docker.io", "library/app", "touched"))
        .unwrap()
        .unwrap();
    assert_eq!((touched.digest, touched.requested_at), (digest(2), 60));
}

#[test]
fn a_tag_record_from_before_request_times_counts_its_check_as_a_request() {
    let json = r#"{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","media_type":"m","checked_at_ms":70500}"#;
    let record: crate::TagRecord = serde_json::from_str(json).unwrap();
    assert_eq!((record.requested_at, record.last_requested()), (0, 70));
}

#[test]
fn an_access_from_before_the_cutoff_flushed_late_rescues_nothing() {
    let mut db = two_images();
    db.mark_and_condemn(1);
    db.apply(Command::Touch {
        accesses: vec![(digest(14), IDLE + 1), (digest(13), CUTOFF)],
    });
    db.apply(Command::GcCommit { epoch: 1, max: 100 });
    assert!(!db.has(14), "an old access kept idle content");
    assert!(db.has(13), "an access at the cutoff is recent");
}
