//! How the state is laid out in redb: table definitions, key encodings, value
//! codecs, and the running totals kept next to `last_applied`.
//!
//! Values are JSON: records are small, JSON needs no new dependency, and serde
//! defaults let later issues add fields without a migration.

use oci::Digest;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::RaftApplied;
use crate::{Entry, EntryKind, MetaError, TagKey, TagRecord};

/// "upstream\0repo\0tag" -> JSON `TagRecord`: NUL sorts first, so all tags of
/// one repository are one contiguous key range.
pub(crate) const TAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("tags");
/// Digest string -> JSON `Entry`.
pub(crate) const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// Garbage collection: `"state"` -> JSON `GcPass` (the open pass, if any).
pub(crate) const GC: TableDefinition<&str, &[u8]> = TableDefinition::new("gc");
/// Digests the open GC pass condemned, removed by its commit.
pub(crate) const CONDEMNED: TableDefinition<&str, ()> = TableDefinition::new("gc_condemned");
/// Digests served (or newly referenced) while the open pass runs: never
/// condemned by it.
pub(crate) const RESCUED: TableDefinition<&str, ()> = TableDefinition::new("gc_rescued");
/// Object keys of entries a commit removed, until a sweeper deleted them.
pub(crate) const SWEEP: TableDefinition<&str, ()> = TableDefinition::new("gc_sweep");
/// Small named integers: the last applied log index and the entry totals.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Raft's bookkeeping about the state, written in the same transaction as
/// the state it describes: `"applied"` -> JSON `RaftApplied`.
pub(crate) const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");

/// The group's own settings: `"owner_key"` -> the key of the ownership hash
/// (crates/peer), set once by the first leader.
pub(crate) const CLUSTER: TableDefinition<&str, &[u8]> = TableDefinition::new("cluster");

/// Calls `$txn.$method(TABLE)?` for every table of the state: the one list
/// of them, so a table added above is created, cleared and replaced by a
/// snapshot alike.
macro_rules! every_table {
    ($txn:expr, $method:ident) => {{
        $txn.$method(TAGS)?;
        $txn.$method(ENTRIES)?;
        $txn.$method(GC)?;
        $txn.$method(CONDEMNED)?;
        $txn.$method(RESCUED)?;
        $txn.$method(SWEEP)?;
        $txn.$method(META)?;
        $txn.$method(RAFT)?;
        $txn.$method(CLUSTER)?;
    }};
}

/// Creates every table (reads may then assume they exist).
pub(crate) fn create_all(txn: &WriteTransaction) -> Result<(), MetaError> {
    every_table!(txn, open_table);
    Ok(())
}

/// Deletes every table, and so everything the state holds.
pub(crate) fn delete_all(txn: &WriteTransaction) -> Result<(), MetaError> {
    every_table!(txn, delete_table);
    Ok(())
}

const OWNER_KEY: &str = "owner_key";
const LAST_APPLIED: &str = "last_applied";
const MANIFESTS: &str = "manifests";
const MANIFEST_BYTES: &str = "manifest_bytes";
const BLOBS: &str = "blobs";
const BLOB_BYTES: &str = "blob_bytes";
const RAFT_APPLIED: &str = "applied";

pub(crate) fn tag_key(key: &TagKey) -> Result<String, MetaError> {
    for part in [&key.upstream, &key.repo, &key.tag] {
        check_part(part)?;
    }
    Ok(format!("{}\0{}\0{}", key.upstream, key.repo, key.tag))
}

/// The half-open key range `[start, end)` holding every tag of one repository.
pub(crate) fn repo_range(upstream: &str, repo: &str) -> Result<(String, String), MetaError> {
    check_part(upstream)?;
    check_part(repo)?;
    let start = format!("{upstream}\0{repo}\0");
    // "\u{1}" is the smallest string greater than every "\0..." suffix.
    let end = format!("{upstream}\0{repo}\u{1}");
    Ok((start, end))
}

fn check_part(part: &str) -> Result<(), MetaError> {
    if part.contains('\0') {
        return Err(MetaError::InvalidTagKey(part.to_owned()));
    }
    Ok(())
}

pub(crate) fn decode_tag_key(stored: &str) -> Result<TagKey, MetaError> {
    let mut parts = stored.split('\0');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(upstream), Some(repo), Some(tag), None) => Ok(TagKey {
            upstream: upstream.to_owned(),
            repo: repo.to_owned(),
            tag: tag.to_owned(),
        }),
        _ => Err(corrupt("tags", stored, "key is not upstream\\0repo\\0tag")),
    }
}

pub(crate) fn decode_digest(stored: &str) -> Result<Digest, MetaError> {
    stored
        .parse()
        .map_err(|e: oci::DigestError| corrupt("entries", stored, &e.to_string()))
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, MetaError> {
    serde_json::to_vec(value).map_err(|source| MetaError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(table, key, &e.to_string()))
}

pub(crate) fn corrupt(table: &'static str, key: &str, reason: &str) -> MetaError {
    MetaError::Corrupt {
        table,
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Reads and decodes one record of `table` (named `what` in errors).
fn get_record<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    what: &'static str,
    key: &str,
) -> Result<Option<T>, MetaError> {
    match table.get(key)? {
        Some(guard) => decode(what, key, guard.value()).map(Some),
        None => Ok(None),
    }
}

fn put_record<T: Serialize>(
    table: &mut Table<&'static str, &'static [u8]>,
    what: &'static str,
    key: &str,
    record: &T,
) -> Result<(), MetaError> {
    table.insert(key, encode(what, record)?.as_slice())?;
    Ok(())
}

/// Reads and decodes one entry; `key` is the digest string.
pub(crate) fn get_entry(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Entry>, MetaError> {
    get_record(table, "entries", key)
}

pub(crate) fn put_entry(
    table: &mut Table<&'static str, &'static [u8]>,
    key: &str,
    entry: &Entry,
) -> Result<(), MetaError> {
    put_record(table, "entry", key, entry)
}

/// Reads and decodes one tag record; `key` is the stored tag key.
pub(crate) fn get_tag(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<TagRecord>, MetaError> {
    get_record(table, "tags", key)
}

pub(crate) fn put_tag(
    table: &mut Table<&'static str, &'static [u8]>,
    key: &str,
    record: &TagRecord,
) -> Result<(), MetaError> {
    put_record(table, "tag record", key, record)
}

pub(crate) fn last_applied(meta: &impl ReadableTable<&'static str, u64>) -> Result<Option<u64>, MetaError> {
    Ok(meta.get(LAST_APPLIED)?.map(|guard| guard.value()))
}

pub(crate) fn set_last_applied(
    meta: &mut Table<&'static str, u64>,
    index: Option<u64>,
) -> Result<(), MetaError> {
    match index {
        Some(index) => meta.insert(LAST_APPLIED, index)?,
        None => meta.remove(LAST_APPLIED)?,
    };
    Ok(())
}

/// The last applied log id and membership; the default (nothing applied
/// through Raft) when absent.
pub(crate) fn raft_applied(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<RaftApplied, MetaError> {
    match table.get(RAFT_APPLIED)? {
        Some(guard) => decode("raft", RAFT_APPLIED, guard.value()),
        None => Ok(RaftApplied::default()),
    }
}

pub(crate) fn set_raft_applied(
    table: &mut Table<&'static str, &'static [u8]>,
    applied: &RaftApplied,
) -> Result<(), MetaError> {
    table.insert(RAFT_APPLIED, encode("raft applied", applied)?.as_slice())?;
    Ok(())
}

/// Totals of the content index, kept up to date by every apply so that stats
/// never scan the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub manifests: u64,
    pub manifest_bytes: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
}

impl Totals {
    pub(crate) fn load(meta: &impl ReadableTable<&'static str, u64>) -> Result<Totals, MetaError> {
        let get =
            |name: &str| -> Result<u64, MetaError> { Ok(meta.get(name)?.map_or(0, |guard| guard.value())) };
        Ok(Totals {
            manifests: get(MANIFESTS)?,
            manifest_bytes: get(MANIFEST_BYTES)?,
            blobs: get(BLOBS)?,
            blob_bytes: get(BLOB_BYTES)?,
        })
    }

    pub(crate) fn store(&self, meta: &mut Table<&'static str, u64>) -> Result<(), MetaError> {
        meta.insert(MANIFESTS, self.manifests)?;
        meta.insert(MANIFEST_BYTES, self.manifest_bytes)?;
        meta.insert(BLOBS, self.blobs)?;
        meta.insert(BLOB_BYTES, self.blob_bytes)?;
        Ok(())
    }

    pub(crate) fn add(&mut self, entry: &Entry) {
        let (count, bytes) = self.slot(entry.kind);
        *count += 1;
        *bytes = bytes.saturating_add(entry.size);
    }

    /// Underflow means the totals and the index disagree: report it rather
    /// than silently wrapping.
    pub(crate) fn sub(&mut self, entry: &Entry) -> Result<(), MetaError> {
        let (count, bytes) = self.slot(entry.kind);
        match (count.checked_sub(1), bytes.checked_sub(entry.size)) {
            (Some(c), Some(b)) => {
                *count = c;
                *bytes = b;
                Ok(())
            }
            _ => Err(corrupt("meta", "totals", "totals fall below zero")),
        }
    }

    pub(crate) fn entries(&self) -> u64 {
        self.manifests + self.blobs
    }

    fn slot(&mut self, kind: EntryKind) -> (&mut u64, &mut u64) {
        match kind {
            EntryKind::Manifest => (&mut self.manifests, &mut self.manifest_bytes),
            EntryKind::Blob => (&mut self.blobs, &mut self.blob_bytes),
        }
    }
}

pub(crate) fn owner_key(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<Vec<u8>>, MetaError> {
    Ok(table.get(OWNER_KEY)?.map(|v| v.value().to_vec()))
}

/// Sets the owner key unless one is set: the first committed wins.
pub(crate) fn set_owner_key_once(
    table: &mut Table<&'static str, &'static [u8]>,
    key: &[u8],
) -> Result<(), MetaError> {
    if table.get(OWNER_KEY)?.is_none() {
        table.insert(OWNER_KEY, key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(upstream: &str, repo: &str, tag: &str) -> TagKey {
        TagKey {
            upstream: upstream.into(),
            repo: repo.into(),
            tag: tag.into(),
        }
    }

    #[test]
    fn tag_key_roundtrips() {
        let k = key("docker.io", "library/alpine", "3.20");
        let stored = tag_key(&k).unwrap();
        assert_eq!(decode_tag_key(&stored).unwrap(), k);
    }

    #[test]
    fn nul_in_a_part_is_refused() {
        assert!(matches!(
            tag_key(&key("a\0b", "r", "t")),
            Err(MetaError::InvalidTagKey(_))
        ));
        assert!(repo_range("a", "r\0").is_err());
    }

    #[test]
    fn repo_range_holds_its_tags_only() {
        let (start, end) = repo_range("u", "lib/a").unwrap();
        let inside = tag_key(&key("u", "lib/a", "latest")).unwrap();
        let empty_tag = tag_key(&key("u", "lib/a", "")).unwrap();
        let longer_repo = tag_key(&key("u", "lib/ab", "latest")).unwrap();
        let sub_repo = tag_key(&key("u", "lib/a/b", "latest")).unwrap();
        for k in [&inside, &empty_tag] {
            assert!(start <= *k && *k < end, "{k:?}");
        }
        for k in [&longer_repo, &sub_repo] {
            assert!(!(start <= *k && *k < end), "{k:?}");
        }
    }

    #[test]
    fn malformed_stored_keys_are_errors() {
        assert!(decode_tag_key("only\0two").is_err());
        assert!(decode_tag_key("a\0b\0c\0d").is_err());
        assert!(decode_digest("sha256:nothex").is_err());
    }
}
