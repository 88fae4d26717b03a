//! The Raft log and vote in their own redb file (`raft-log.redb`).
//!
//! Entries are JSON, as everything else in this crate: commands are a few
//! hundred bytes, the log is purged behind every snapshot, and a
//! self-describing encoding keeps the log readable with `serde_json` and
//! lets commands gain fields with serde defaults, where a compact binary
//! encoding would save bytes nobody is short of.
//!
//! Durability: the vote and appended entries are committed with redb's
//! durable commit (fsync) before `save_vote` returns or `append` reports the
//! entries flushed, as Raft's safety requires. Truncation and purge are
//! durable too. The committed log id is an optional hint for a faster
//! restart and commits without fsync; the next durable commit persists it.
//!
//! Nothing is cached in memory: every read is a redb read transaction.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::{LogEntry, LogId, TypeConfig, Vote, blocking};
use crate::MetaError;
use crate::tables::{corrupt, decode, encode};

/// Log index -> JSON `LogEntry`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// `vote`, `committed`, `last_purged` -> JSON.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("log_state");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log store, and its own reader: clones share one database, and redb
/// lets readers run beside the single writer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (creates) the log database at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<LogStore, MetaError> {
        let db = crate::state::create_database(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(STATE)?;
        txn.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// Runs `f` on the database on tokio's blocking pool.
    async fn with_db<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, MetaError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(move || f(&db)).await
    }
}

fn get_state<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, MetaError> {
    let txn = db.begin_read()?;
    match txn.open_table(STATE)?.get(key)? {
        Some(guard) => decode("log_state", key, guard.value()).map(Some),
        None => Ok(None),
    }
}

fn put_state<T: Serialize>(db: &Database, key: &str, value: &T, durable: bool) -> Result<(), MetaError> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(Durability::None)?;
    }
    txn.open_table(STATE)?
        .insert(key, encode("raft log state", value)?.as_slice())?;
    txn.commit()?;
    Ok(())
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<LogEntry, MetaError> {
    let entry: LogEntry = decode("log", &index.to_string(), bytes)?;
    if entry.log_id.index != index {
        return Err(corrupt(
            "log",
            &index.to_string(),
            "entry stored under another index",
        ));
    }
    Ok(entry)
}

/// `range` as inclusive `(first, last)` indexes, `None` when it is empty.
fn inclusive(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let first = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match range.end_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (first <= last).then_some((first, last))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, io::Error> {
        let Some((first, last)) = inclusive(&range) else {
            return Ok(Vec::new());
        };
        self.with_db(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOG)?;
            let mut entries = Vec::new();
            for item in table.range(first..=last)? {
                let (index, value) = item?;
                entries.push(decode_entry(index.value(), value.value())?);
            }
            Ok(entries)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.with_db(|db| get_state(db, VOTE)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        self.with_db(|db| {
            let last_purged_log_id: Option<LogId> = get_state(db, LAST_PURGED)?;
            let txn = db.begin_read()?;
            let last = match txn.open_table(LOG)?.last()? {
                Some((index, value)) => Some(decode_entry(index.value(), value.value())?.log_id),
                None => None,
            };
            Ok(LogState {
                last_log_id: last.or(last_purged_log_id),
                last_purged_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.with_db(move |db| put_state(db, VOTE, &vote, true)).await?;
        debug!(%vote, "saved vote");
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.with_db(move |db| put_state(db, COMMITTED, &committed, false))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.with_db(|db| Ok(get_state::<Option<LogId>>(db, COMMITTED)?.flatten()))
            .await
    }

    /// Commits durably, then reports the entries flushed, then returns: the
    /// callback never runs before the fsync, and entries are readable on
    /// return.
    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<LogEntry> = entries.into_iter().collect();
        let result = self
            .with_db(move |db| {
                let txn = db.begin_write()?;
                {
                    let mut log = txn.open_table(LOG)?;
                    for entry in &entries {
                        log.insert(entry.log_id.index, encode("log entry", entry)?.as_slice())?;
                    }
                }
                txn.commit()?;
                Ok(entries.last().map(|e| e.log_id))
            })
            .await;
        match result {
            Ok(last) => {
                debug!(last = ?last, "appended log entries");
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    /// Removes every entry after `last_log_id` (all of them for `None`) in
    /// one transaction, so no hole can appear.
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = match last_log_id {
            Some(id) => match id.index.checked_add(1) {
                Some(i) => i,
                None => return Ok(()),
            },
            None => 0,
        };
        self.with_db(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?.retain_in(first_removed.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await?;
        debug!(after = ?last_log_id, "truncated log");
        Ok(())
    }

    /// Removes every entry up to `log_id` and records it as last purged, in
    /// one transaction. Never moves the purge point back.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.with_db(move |db| {
            let txn = db.begin_write()?;
            {
                let mut state = txn.open_table(STATE)?;
                let previous: Option<LogId> = match state.get(LAST_PURGED)? {
                    Some(guard) => decode("log_state", LAST_PURGED, guard.value())?,
                    None => None,
                };
                if previous.is_some_and(|p| p >= log_id) {
                    return Ok(());
                }
                state.insert(LAST_PURGED, encode("raft log state", &Some(log_id))?.as_slice())?;
                txn.open_table(LOG)?.retain_in(..=log_id.index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        debug!(upto = %log_id, "purged log");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::inclusive;

    #[test]
    fn ranges_convert_without_overflow() {
        assert_eq!(inclusive(&(0..0)), None);
        assert_eq!(inclusive(&(3..5)), Some((3, 4)));
        assert_eq!(inclusive(&(3..=5)), Some((3, 5)));
        let (five, three) = (5, 3);
        assert_eq!(inclusive(&(five..=three)), None);
        assert_eq!(inclusive(&(..)), Some((0, u64::MAX)));
        assert_eq!(inclusive(&(u64::MAX..)), Some((u64::MAX, u64::MAX)));
        let after_max = (std::ops::Bound::Excluded(u64::MAX), std::ops::Bound::Unbounded);
        assert_eq!(inclusive(&after_max), None);
    }
}
