//! Records for tests, shared by meta's unit tests and its integration tests
//! (with the `test-util` feature).

use oci::Digest;

use crate::{Command, Entry, TagKey, TagRecord};

/// A digest numbered `n`.
pub fn digest(n: u32) -> Digest {
    Digest::sha256_of(&n.to_be_bytes())
}

pub fn key(upstream: &str, repo: &str, tag: &str) -> TagKey {
    TagKey {
        upstream: upstream.into(),
        repo: repo.into(),
        tag: tag.into(),
    }
}

/// A tag record pointing at digest `n`.
pub fn record(n: u32, checked_at_ms: u64) -> TagRecord {
    TagRecord {
        digest: digest(n),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        checked_at_ms,
        requested_at: checked_at_ms / 1000,
    }
}

pub fn blob(size: u64, last_access: u64) -> Entry {
    Entry::blob(size, last_access, None)
}

pub fn manifest(size: u64, refs: Vec<Digest>, last_access: u64) -> Entry {
    let media_type = "application/vnd.oci.image.manifest.v1+json".into();
    Entry::manifest(size, media_type, refs, last_access, None)
}

/// The whole state, as a snapshot writes it: equal dumps, equal states.
#[cfg(test)]
pub(crate) fn dump(db: &crate::StateDb) -> Vec<u8> {
    let mut out = Vec::new();
    db.write_snapshot(&mut out).expect("snapshot");
    out
}

/// Sets `library/alpine:TAG` on docker.io to record `n`.
pub fn set_tag(tag: &str, n: u32) -> Command {
    Command::SetTag {
        key: key("docker.io", "library/alpine", tag),
        record: record(n, u64::from(n)),
    }
}

/// Writes a synthetic index under `dir` (as `state.redb`, for
/// [`Meta::open_offline`](crate::Meta::open_offline)): `images` images of a
/// manifest, a config and four layers each, every tenth sharing the layers
/// of the one before; images with an even number were last accessed at
/// `recent`, the others at 1. Streams through a snapshot file, so memory
/// stays flat however large.
pub fn synthetic_index(dir: &std::path::Path, images: u32, recent: u64) -> Result<(), crate::MetaError> {
    use std::io::{BufReader, BufWriter, Seek, Write};

    use crate::state::RaftApplied;

    let line = |value: serde_json::Value| format!("{value}\n");
    let mut file = BufWriter::new(tempfile::tempfile()?);
    let header =
        serde_json::json!({"header": {"format": 3, "last_applied": 1, "raft": RaftApplied::default()}});
    file.write_all(line(header).as_bytes())?;
    let mut entries = 0u64;
    let layer = |image: u32, n: u32| digest(image * 8 + n);
    for image in 0..images {
        let access = if image % 2 == 0 { recent } else { 1 };
        let owner = if image % 10 == 9 { image - 1 } else { image };
        let mut refs: Vec<Digest> = (1..=4).map(|n| layer(owner, n)).collect();
        refs.push(layer(image, 5));
        let manifest_entry = manifest(2000, refs.clone(), access);
        let own: Vec<Digest> = if owner == image {
            refs
        } else {
            vec![layer(image, 5)]
        };
        let mut write_entry = |digest: Digest, entry: Entry| -> Result<(), crate::MetaError> {
            let value = serde_json::json!({"entry": {"digest": digest, "entry": entry}});
            file.write_all(line(value).as_bytes())?;
            entries += 1;
            Ok(())
        };
        write_entry(layer(image, 0), manifest_entry)?;
        for digest in own {
            write_entry(digest, blob(1 << 20, access))?;
        }
    }
    let end = serde_json::json!({"end": {"tags": 0, "entries": entries, "gc": 0}});
    file.write_all(line(end).as_bytes())?;
    let mut file = file.into_inner().map_err(|e| e.into_error())?;
    file.rewind()?;
    let state = crate::StateDb::open(&dir.join("state.redb"))?;
    state.install_snapshot_then(BufReader::new(file), |_| Ok(()))?;
    Ok(())
}
