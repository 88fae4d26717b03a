//! The state database ([`StateDb`]): applies commands, in log order, to the
//! redb tables. `raft::StateMachineStore` drives it for openraft: the log
//! hands it entries and asks for snapshots. Apply is a pure function of the
//! current state and the command (no clock, no randomness), so every replica
//! that applies the same log holds the same state.

use std::path::Path;

use oci::Digest;
use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::gc;
use crate::raft::{EntryPayload, LogEntry, LogId, Response, StoredMembership};
use crate::tables::{self, CLUSTER, ENTRIES, META, RAFT, TAGS, Totals};
use crate::{Command, Entry, MetaError, TagKey, TagRecord};

/// Counts for tools and the status page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaStats {
    pub tags: u64,
    pub manifests: u64,
    pub manifest_bytes: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// The log index of the last applied command; `None` before the first.
    pub last_applied: Option<u64>,
}

impl MetaStats {
    pub fn entries(&self) -> u64 {
        self.manifests + self.blobs
    }
}

/// Raft's view of the state, stored with it: the log id of the last entry
/// applied and the last membership applied. Both are part of every snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftApplied {
    pub last_log_id: Option<LogId>,
    pub membership: StoredMembership,
}

/// Opens (creates) the redb database at `path`, and its directory.
pub(crate) fn create_database(path: &Path) -> Result<Database, MetaError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| MetaError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    Database::create(path).map_err(|source| MetaError::Open {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Tags and the content index in one redb file, plus the last applied index,
/// all changed together so a crash never separates them.
pub struct StateDb {
    pub(crate) db: Database,
}

impl StateDb {
    /// Opens (creates) the database, and its directory, at `path`.
    pub fn open(path: &Path) -> Result<StateDb, MetaError> {
        let db = create_database(path)?;
        // Creating the tables up front lets reads assume they exist.
        let txn = db.begin_write()?;
        tables::create_all(&txn)?;
        txn.commit()?;
        Ok(StateDb { db })
    }

    /// Applies `cmd` as log entry `index` in one write transaction that also
    /// records `index` as last applied. Indexes must increase; re-applying an
    /// old one is refused, so a replayed log cannot apply a command twice.
    ///
    /// Durable on return, except `Touch`: it commits with
    /// `Durability::None` (no fsync), since access times are coarse and a
    /// crash that loses a few seconds of them costs nothing. The next durable
    /// commit, or a clean close, persists it; a crash rolls it back together
    /// with its index, so state and index never disagree.
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<(), MetaError> {
        let mut txn = self.db.begin_write()?;
        if cmd.is_touch() {
            txn.set_durability(Durability::None)?;
        }
        apply_in(&txn, index, Some(cmd))?;
        txn.commit()?;
        debug!(index, command = cmd.name(), "applied");
        Ok(())
    }

    /// Prepares a state for Raft to own. Records applied outside Raft (by an
    /// index rebuild, or before Raft) are kept, but their indexes belong to
    /// no Raft log, so the last applied index is reset for Raft's to follow.
    /// Returns whether there were such records; a no-op for a state Raft
    /// already owns.
    pub(crate) fn adopt_for_raft(&self) -> Result<bool, MetaError> {
        if self.raft_applied()?.last_log_id.is_some() || self.last_applied()?.is_none() {
            return Ok(false);
        }
        let txn = self.db.begin_write()?;
        tables::set_last_applied(&mut txn.open_table(META)?, None)?;
        txn.commit()?;
        Ok(true)
    }

    /// Empties the state, in one durable transaction.
    pub(crate) fn clear(&self) -> Result<(), MetaError> {
        let txn = self.db.begin_write()?;
        tables::delete_all(&txn)?;
        tables::create_all(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// What makes a command invalid in itself, checked before anything is
    /// written: such a command is refused alike by every replica.
    pub fn validate(cmd: &Command) -> Result<(), MetaError> {
        match cmd {
            Command::SetTag { key, .. } => tables::tag_key(key).map(drop),
            Command::TouchTags { tags } => tags
                .iter()
                .try_for_each(|(key, _)| tables::tag_key(key).map(drop)),
            Command::PutEntry { .. }
            | Command::Touch { .. }
            | Command::RemoveEntries { .. }
            | Command::GcStart { .. }
            | Command::GcCondemn { .. }
            | Command::GcCommit { .. }
            | Command::Swept { .. }
            | Command::DropIdleTags { .. } => Ok(()),
            Command::SetOwnerKey { key } if key.len() == crate::command::OWNER_KEY_BYTES => Ok(()),
            Command::SetOwnerKey { key } => Err(MetaError::Refused(format!(
                "an owner key of {} bytes, not {}",
                key.len(),
                crate::command::OWNER_KEY_BYTES
            ))),
        }
    }

    /// Applies a run of committed Raft entries in one write transaction,
    /// which also records the last one's log id and the last membership
    /// among them, so the state and Raft's view of it never disagree.
    /// Returns one response per entry, in order.
    ///
    /// A command that fails [`validate`](Self::validate) is refused: a
    /// no-op with a reason, since every replica refuses it alike. Any other
    /// error (storage, a corrupt record, an index not after the last applied
    /// one) fails the whole run and leaves no trace; Raft then stops this
    /// replica rather than let its state drift from the others'.
    ///
    /// A run of `Touch` commands only commits without fsync, as in
    /// [`apply`](Self::apply). Raft needs no durable apply: the log is
    /// durable and what a crash rolls back here is applied again from it (or
    /// from the last snapshot) at start.
    pub(crate) fn apply_entries(&self, entries: &[LogEntry]) -> Result<Vec<Response>, MetaError> {
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut txn = self.db.begin_write()?;
        let only_touches = entries
            .iter()
            .all(|e| matches!(&e.payload, EntryPayload::Normal(cmd) if cmd.is_touch()));
        if only_touches {
            txn.set_durability(Durability::None)?;
        }
        let mut raft = txn.open_table(RAFT)?;
        let mut applied = tables::raft_applied(&raft)?;
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.log_id.index;
            let response = match &entry.payload {
                EntryPayload::Blank => {
                    apply_in(&txn, index, None)?;
                    Response::default()
                }
                EntryPayload::Normal(cmd) => match StateDb::validate(cmd) {
                    Ok(()) => {
                        apply_in(&txn, index, Some(cmd))?;
                        Response::default()
                    }
                    Err(refused) => {
                        warn!(index, command = cmd.name(), %refused, "refused an invalid command");
                        apply_in(&txn, index, None)?;
                        Response {
                            refused: Some(refused.to_string()),
                        }
                    }
                },
                EntryPayload::Membership(membership) => {
                    apply_in(&txn, index, None)?;
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    Response::default()
                }
            };
            responses.push(response);
        }
        applied.last_log_id = Some(last.log_id);
        tables::set_raft_applied(&mut raft, &applied)?;
        drop(raft);
        txn.commit()?;
        debug!(entries = entries.len(), last = %last.log_id, "applied raft entries");
        Ok(responses)
    }

    /// The log id of the last entry applied through Raft and the last
    /// membership applied; the default before the first.
    pub fn raft_applied(&self) -> Result<RaftApplied, MetaError> {
        let txn = self.db.begin_read()?;
        tables::raft_applied(&txn.open_table(RAFT)?)
    }

    /// The index of the last applied command, `None` on a fresh store.
    pub fn last_applied(&self) -> Result<Option<u64>, MetaError> {
        let txn = self.db.begin_read()?;
        tables::last_applied(&txn.open_table(META)?)
    }

    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, MetaError> {
        let stored = tables::tag_key(key)?;
        let txn = self.db.begin_read()?;
        tables::get_tag(&txn.open_table(TAGS)?, &stored)
    }

    /// The ownership hash's key, once a leader set it.
    pub fn owner_key(&self) -> Result<Option<Vec<u8>>, MetaError> {
        let txn = self.db.begin_read()?;
        tables::owner_key(&txn.open_table(CLUSTER)?)
    }

    pub fn entry(&self, digest: &Digest) -> Result<Option<Entry>, MetaError> {
        let txn = self.db.begin_read()?;
        tables::get_entry(&txn.open_table(ENTRIES)?, &digest.to_string())
    }

    /// All tags of one repository, ordered by tag name.
    pub fn tags_of(&self, upstream: &str, repo: &str) -> Result<Vec<(String, TagRecord)>, MetaError> {
        let (start, end) = tables::repo_range(upstream, repo)?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TAGS)?;
        let mut out = Vec::new();
        for item in table.range::<&str>(start.as_str()..end.as_str())? {
            let (key, value) = item?;
            let tag = tables::decode_tag_key(key.value())?.tag;
            out.push((tag, tables::decode("tags", key.value(), value.value())?));
        }
        Ok(out)
    }

    pub fn stats(&self) -> Result<MetaStats, MetaError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let totals = Totals::load(&meta)?;
        debug_assert_eq!(
            txn.open_table(ENTRIES)?.len()?,
            totals.entries(),
            "entry totals must match the index"
        );
        Ok(MetaStats {
            tags: txn.open_table(TAGS)?.len()?,
            manifests: totals.manifests,
            manifest_bytes: totals.manifest_bytes,
            blobs: totals.blobs,
            blob_bytes: totals.blob_bytes,
            last_applied: tables::last_applied(&meta)?,
        })
    }
}

/// Applies one command inside `txn`, the unit Raft batching can reuse.
/// `None` only advances the last applied index (a Raft entry that changes
/// no state: blank, membership, a refused command).
fn apply_in(txn: &WriteTransaction, index: u64, cmd: Option<&Command>) -> Result<(), MetaError> {
    let mut meta = txn.open_table(META)?;
    if let Some(last_applied) = tables::last_applied(&meta)?
        && index <= last_applied
    {
        return Err(MetaError::IndexNotAfterLastApplied { index, last_applied });
    }
    let Some(cmd) = cmd else {
        return tables::set_last_applied(&mut meta, Some(index));
    };
    match cmd {
        Command::SetTag { key, record } => {
            let stored = tables::tag_key(key)?;
            let mut tags = txn.open_table(TAGS)?;
            let mut merged = record.clone();
            if let Some(old) = tables::get_tag(&tags, &stored)? {
                merged.requested_at = merged.requested_at.max(old.requested_at);
            }
            tables::put_tag(&mut tags, &stored, &merged)?;
        }
        Command::TouchTags { tags } => {
            let mut table = txn.open_table(TAGS)?;
            for (key, at) in tags {
                let stored = tables::tag_key(key)?;
                if let Some(mut record) = tables::get_tag(&table, &stored)?
                    && *at > record.requested_at
                {
                    record.requested_at = *at;
                    tables::put_tag(&mut table, &stored, &record)?;
                }
            }
        }
        Command::PutEntry { digest, entry } => {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut totals = Totals::load(&meta)?;
            let key = digest.to_string();
            let mut merged = entry.clone();
            if let Some(old) = tables::get_entry(&entries, &key)? {
                merged.last_access = merged.last_access.max(old.last_access);
                if merged.object_key.is_none() {
                    merged.object_key = old.object_key.clone();
                }
                totals.sub(&old)?;
            }
            totals.add(&merged);
            tables::put_entry(&mut entries, &key, &merged)?;
            totals.store(&mut meta)?;
            drop(entries);
            // Being indexed now means being served now; a manifest also
            // keeps what it references.
            gc::rescue(txn, [digest])?;
        }
        Command::Touch { accesses } => {
            let mut entries = txn.open_table(ENTRIES)?;
            for (digest, at) in accesses {
                let key = digest.to_string();
                if let Some(mut entry) = tables::get_entry(&entries, &key)?
                    && *at > entry.last_access
                {
                    entry.last_access = *at;
                    tables::put_entry(&mut entries, &key, &entry)?;
                }
            }
            drop(entries);
            gc::rescue_accessed(txn, accesses)?;
        }
        Command::RemoveEntries { digests } => {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut totals = Totals::load(&meta)?;
            for digest in digests {
                let key = digest.to_string();
                if let Some(old) = entries.remove(key.as_str())? {
                    totals.sub(&tables::decode("entries", &key, old.value())?)?;
                }
            }
            totals.store(&mut meta)?;
        }
        Command::GcStart { epoch, cutoff } => gc::start(txn, *epoch, *cutoff)?,
        Command::GcCondemn { epoch, digests } => gc::condemn(txn, *epoch, digests)?,
        Command::GcCommit { epoch, max } => gc::commit(txn, &mut meta, *epoch, *max)?,
        Command::Swept { keys } => gc::swept(txn, keys)?,
        Command::DropIdleTags { cutoff } => gc::drop_idle_tags(txn, *cutoff)?,
        Command::SetOwnerKey { key } => tables::set_owner_key_once(&mut txn.open_table(CLUSTER)?, key)?,
    }
    tables::set_last_applied(&mut meta, Some(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(last_access: u64) -> Entry {
        Entry::blob(3, last_access, None)
    }

    #[test]
    fn indexes_must_increase() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateDb::open(&dir.path().join("s.redb")).unwrap();
        let cmd = Command::RemoveEntries { digests: vec![] };
        sm.apply(5, &cmd).unwrap();
        for stale in [5, 4] {
            assert!(matches!(
                sm.apply(stale, &cmd),
                Err(MetaError::IndexNotAfterLastApplied { last_applied: 5, .. })
            ));
        }
        // Gaps are allowed: apply checks order, the log owns contiguity.
        sm.apply(9, &cmd).unwrap();
        assert_eq!(sm.last_applied().unwrap(), Some(9));
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateDb::open(&dir.path().join("s.redb")).unwrap();
        let d = Digest::sha256_of(b"x");
        sm.apply(
            1,
            &Command::PutEntry {
                digest: d.clone(),
                entry: blob(1),
            },
        )
        .unwrap();
        let txn = sm.db.begin_write().unwrap();
        txn.open_table(ENTRIES)
            .unwrap()
            .insert(d.to_string().as_str(), b"{garbage".as_slice())
            .unwrap();
        txn.open_table(TAGS)
            .unwrap()
            .insert("no-separators", b"{}".as_slice())
            .unwrap();
        txn.commit().unwrap();

        assert!(matches!(
            sm.entry(&d),
            Err(MetaError::Corrupt { table: "entries", .. })
        ));
        let touch = Command::Touch {
            accesses: vec![(d.clone(), 9)],
        };
        assert!(matches!(sm.apply(2, &touch), Err(MetaError::Corrupt { .. })));
        assert_eq!(
            sm.last_applied().unwrap(),
            Some(1),
            "failed apply leaves no trace"
        );
        assert!(matches!(
            sm.write_snapshot(std::io::sink()),
            Err(MetaError::Corrupt { .. })
        ));
    }
}
