//! Snapshots of the state database: what Raft ships to a member that lags or
//! joins.

use std::path::Path;

use crate::fixtures::{blob, digest, dump, key, manifest, record};
use crate::{Command, MetaError, StateDb};

fn populated(path: &Path) -> StateDb {
    let sm = StateDb::open(path).expect("open");
    let cmds = [
        Command::SetTag {
            key: key("docker.io", "library/alpine", "latest"),
            record: record(1, 5),
        },
        Command::SetTag {
            key: key("quay.io", "prometheus/node-exporter", "v1"),
            record: record(2, 6),
        },
        Command::PutEntry {
            digest: digest(1),
            entry: manifest(500, vec![digest(10)], 3),
        },
        Command::PutEntry {
            digest: digest(10),
            entry: blob(4096, 3),
        },
        Command::PutEntry {
            digest: digest(11),
            entry: blob(1, 3),
        },
        Command::RemoveEntries {
            digests: vec![digest(11)],
        },
        Command::Touch {
            accesses: vec![(digest(10), 8)],
        },
        Command::SetOwnerKey { key: vec![7; 32] },
    ];
    for (index, cmd) in (10..).zip(&cmds) {
        sm.apply(index, cmd).expect("apply");
    }
    sm
}

#[test]
fn snapshot_installs_into_a_fresh_store_as_equal_state() {
    let dir = tempfile::tempdir().unwrap();
    let source = populated(&dir.path().join("a.redb"));
    let bytes = dump(&source);

    let target = StateDb::open(&dir.path().join("b.redb")).unwrap();
    let info = target
        .install_snapshot_then(bytes.as_slice(), |_| Ok(()))
        .unwrap();
    assert_eq!((info.last_applied, info.tags, info.entries), (Some(17), 2, 2));

    assert_eq!(target.stats().unwrap(), source.stats().unwrap());
    assert_eq!(dump(&target), bytes, "a re-dump is byte-identical");
    let k = key("docker.io", "library/alpine", "latest");
    assert_eq!(target.tag(&k).unwrap(), Some(record(1, 5)));
    assert_eq!(target.entry(&digest(10)).unwrap().unwrap().last_access, 8);
    assert_eq!(target.entry(&digest(11)).unwrap(), None);
    assert_eq!(target.owner_key().unwrap(), Some(vec![7; 32]));

    // Applying continues after the snapshot's index, not before it.
    let old = Command::Touch { accesses: vec![] };
    assert!(matches!(
        target.apply(17, &old),
        Err(MetaError::IndexNotAfterLastApplied {
            index: 17,
            last_applied: 17
        })
    ));
    target.apply(18, &old).unwrap();
}

#[test]
fn install_replaces_existing_state() {
    let dir = tempfile::tempdir().unwrap();
    let empty = StateDb::open(&dir.path().join("empty.redb")).unwrap();
    let full = populated(&dir.path().join("full.redb"));
    full.install_snapshot_then(dump(&empty).as_slice(), |_| Ok(()))
        .unwrap();
    assert_eq!(full.stats().unwrap(), empty.stats().unwrap());
    assert_eq!(full.last_applied().unwrap(), None);
    assert!(full.tags_of("docker.io", "library/alpine").unwrap().is_empty());
    assert_eq!(full.owner_key().unwrap(), None);
}

#[test]
fn the_first_owner_key_stays_and_a_malformed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDb::open(&dir.path().join("s.redb")).unwrap();
    assert_eq!(state.owner_key().unwrap(), None);
    state
        .apply(1, &Command::SetOwnerKey { key: vec![1; 32] })
        .unwrap();
    state
        .apply(2, &Command::SetOwnerKey { key: vec![2; 32] })
        .unwrap();
    assert_eq!(state.owner_key().unwrap(), Some(vec![1; 32]));
    assert!(matches!(
        StateDb::validate(&Command::SetOwnerKey { key: vec![3; 4] }),
        Err(MetaError::Refused(_))
    ));
}

#[test]
fn truncated_or_damaged_snapshot_leaves_state_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let source = populated(&dir.path().join("a.redb"));
    let bytes = dump(&source);
    let text = String::from_utf8(bytes.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    let target = populated(&dir.path().join("b.redb"));
    let before = target.stats().unwrap();

    let truncated = lines[..lines.len() - 1].join("\n");
    let duplicated = format!("{}\n{}", lines[..2].join("\n"), lines[1..].join("\n"));
    let after_end = format!("{text}{}\n", lines[1]);
    let headless = lines[1..].join("\n");
    for bad in [truncated, duplicated, after_end, headless, "{not json".to_owned()] {
        let err = target
            .install_snapshot_then(bad.as_bytes(), |_| Ok(()))
            .unwrap_err();
        assert!(matches!(err, MetaError::InvalidSnapshot { .. }), "{err}");
        assert_eq!(target.stats().unwrap(), before);
    }
}
