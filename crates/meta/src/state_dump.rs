//! The state database's snapshots, for Raft to ship to a lagging or new member.
//!
//! The format is JSON lines: a header with the last applied index and Raft's
//! view of the state (last applied log id, membership), one line per tag
//! and per entry, and a trailer with the counts. Both directions
//! stream, so a snapshot never has to fit in memory, and the trailer makes a
//! truncated snapshot fail to install instead of installing half a state.

use std::io::{BufRead, Write};

use oci::Digest;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::gc::{self, GcPass};
use crate::state::{RaftApplied, StateDb};
use crate::tables::{self, CLUSTER, CONDEMNED, ENTRIES, GC, META, RAFT, RESCUED, SWEEP, TAGS, Totals};
use crate::{Entry, MetaError, TagKey, TagRecord};

/// Bumped when a line changes meaning, so an old member refuses a new format.
/// 2: the header carries `raft`. 3: garbage collection's state follows the
/// entries (a format-2 snapshot has none, and installs as no pass open).
/// 4: the owner key follows the header, once set (older formats have none,
/// and the leader sets one).
const FORMAT: u32 = 4;
const READABLE_FORMATS: [u32; 3] = [2, 3, 4];

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Header {
        format: u32,
        last_applied: Option<u64>,
        raft: RaftApplied,
    },
    OwnerKey {
        key: Vec<u8>,
    },
    Tag {
        key: TagKey,
        record: TagRecord,
    },
    Entry {
        digest: Digest,
        entry: Entry,
    },
    Gc {
        state: GcPass,
    },
    Condemned {
        digest: Digest,
    },
    Rescued {
        digest: Digest,
    },
    Sweep {
        key: String,
    },
    End {
        tags: u64,
        entries: u64,
        /// Condemned, rescued and sweep lines.
        #[serde(default)]
        gc: u64,
    },
}

/// What a snapshot holds, as written or installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub last_applied: Option<u64>,
    pub tags: u64,
    pub entries: u64,
}

impl StateDb {
    /// Writes the whole state, as of one read transaction, to `out`, and
    /// returns what it wrote with the Raft view in its header. Records are
    /// decoded on the way, so a corrupt store fails here instead of
    /// spreading to other members.
    pub(crate) fn write_snapshot(
        &self,
        mut out: impl Write,
    ) -> Result<(SnapshotInfo, RaftApplied), MetaError> {
        let txn = self.db.begin_read()?;
        let last_applied = tables::last_applied(&txn.open_table(META)?)?;
        let raft = tables::raft_applied(&txn.open_table(RAFT)?)?;
        write_line(
            &mut out,
            &Line::Header {
                format: FORMAT,
                last_applied,
                raft: raft.clone(),
            },
        )?;
        if let Some(key) = tables::owner_key(&txn.open_table(CLUSTER)?)? {
            write_line(&mut out, &Line::OwnerKey { key })?;
        }
        let mut tags = 0;
        for item in txn.open_table(TAGS)?.range::<&str>(..)? {
            let (key, value) = item?;
            let key_str = key.value();
            write_line(
                &mut out,
                &Line::Tag {
                    key: tables::decode_tag_key(key_str)?,
                    record: tables::decode("tags", key_str, value.value())?,
                },
            )?;
            tags += 1;
        }
        let mut entries = 0;
        for item in txn.open_table(ENTRIES)?.range::<&str>(..)? {
            let (key, value) = item?;
            let key_str = key.value();
            write_line(
                &mut out,
                &Line::Entry {
                    digest: tables::decode_digest(key_str)?,
                    entry: tables::decode("entries", key_str, value.value())?,
                },
            )?;
            entries += 1;
        }
        let gc = write_gc(&txn, &mut out)?;
        write_line(&mut out, &Line::End { tags, entries, gc })?;
        out.flush()?;
        let info = SnapshotInfo {
            last_applied,
            tags,
            entries,
        };
        Ok((info, raft))
    }

    /// Replaces the whole state with the snapshot read from `input`, in one
    /// durable transaction: on any error the old state stays untouched.
    /// `before_commit` gets the snapshot's Raft view once every line is read
    /// and checked but before the transaction commits: an error there leaves
    /// the state untouched too. Raft's store uses it to check the view against the
    /// snapshot's metadata and to publish the file first.
    pub(crate) fn install_snapshot_then(
        &self,
        input: impl BufRead,
        before_commit: impl FnOnce(&RaftApplied) -> Result<(), MetaError>,
    ) -> Result<SnapshotInfo, MetaError> {
        let txn = self.db.begin_write()?;
        tables::delete_all(&txn)?;
        let (info, raft) = {
            let mut gc_table = txn.open_table(GC)?;
            let mut condemned = txn.open_table(CONDEMNED)?;
            let mut rescued = txn.open_table(RESCUED)?;
            let mut sweep = txn.open_table(SWEEP)?;
            let mut gc_lines = 0;
            let mut tag_table = txn.open_table(TAGS)?;
            let mut entry_table = txn.open_table(ENTRIES)?;
            let mut meta = txn.open_table(META)?;
            let mut raft_table = txn.open_table(RAFT)?;
            let mut cluster = txn.open_table(CLUSTER)?;
            let mut totals = Totals::default();
            let mut header = None;
            let mut end = None;
            let mut line_no = 0;
            for line in input.lines() {
                let line = line?;
                line_no += 1;
                let invalid = |reason: &str| MetaError::InvalidSnapshot {
                    line: line_no,
                    reason: reason.to_owned(),
                };
                let parsed: Line = serde_json::from_str(&line).map_err(|e| invalid(&e.to_string()))?;
                if end.is_some() {
                    return Err(invalid("data after the trailer"));
                }
                match (parsed, header.is_some()) {
                    (Line::Header { format, .. }, false) if !READABLE_FORMATS.contains(&format) => {
                        return Err(invalid(&format!("unknown format {format}")));
                    }
                    (
                        Line::Header {
                            last_applied, raft, ..
                        },
                        false,
                    ) => {
                        if raft.last_log_id.is_some_and(|id| Some(id.index) != last_applied) {
                            return Err(invalid("raft log id does not match the last applied index"));
                        }
                        header = Some((last_applied, raft));
                    }
                    (_, false) => return Err(invalid("missing header")),
                    (Line::Header { .. }, true) => return Err(invalid("second header")),
                    (Line::Tag { key, record }, true) => {
                        let stored = tables::tag_key(&key)?;
                        let value = tables::encode("tag record", &record)?;
                        if tag_table.insert(stored.as_str(), value.as_slice())?.is_some() {
                            return Err(invalid("duplicate tag"));
                        }
                    }
                    (Line::Entry { digest, entry }, true) => {
                        let value = tables::encode("entry", &entry)?;
                        let key = digest.to_string();
                        if entry_table.insert(key.as_str(), value.as_slice())?.is_some() {
                            return Err(invalid("duplicate entry"));
                        }
                        totals.add(&entry);
                    }
                    (Line::OwnerKey { key }, true) => {
                        if tables::owner_key(&cluster)?.is_some() {
                            return Err(invalid("second owner key"));
                        }
                        tables::set_owner_key_once(&mut cluster, &key)?;
                    }
                    (Line::Gc { state }, true) => gc::set_state(&mut gc_table, &state)?,
                    (Line::Condemned { digest }, true) => {
                        condemned.insert(digest.to_string().as_str(), ())?;
                        gc_lines += 1;
                    }
                    (Line::Rescued { digest }, true) => {
                        rescued.insert(digest.to_string().as_str(), ())?;
                        gc_lines += 1;
                    }
                    (Line::Sweep { key }, true) => {
                        sweep.insert(key.as_str(), ())?;
                        gc_lines += 1;
                    }
                    (Line::End { tags, entries, gc }, true) => {
                        if tags != tag_table.len()? || entries != totals.entries() || gc != gc_lines {
                            return Err(invalid("counts do not match the records"));
                        }
                        end = Some((tags, entries));
                    }
                }
            }
            let (Some((last_applied, raft)), Some((tags, entries))) = (header, end) else {
                return Err(MetaError::InvalidSnapshot {
                    line: line_no,
                    reason: "truncated: no trailer".to_owned(),
                });
            };
            totals.store(&mut meta)?;
            tables::set_last_applied(&mut meta, last_applied)?;
            tables::set_raft_applied(&mut raft_table, &raft)?;
            let info = SnapshotInfo {
                last_applied,
                tags,
                entries,
            };
            (info, raft)
        };
        before_commit(&raft)?;
        txn.commit()?;
        info!(
            last_applied = info.last_applied,
            tags = info.tags,
            entries = info.entries,
            "installed metadata snapshot"
        );
        Ok(info)
    }
}

/// Reads only a snapshot's header: Raft's view of the state it holds. Reads
/// at most 1 MiB, far more than any header, so a damaged file cannot make
/// it buffer without bound.
pub(crate) fn read_raft_header(input: impl BufRead) -> Result<RaftApplied, MetaError> {
    const MAX_HEADER: u64 = 1 << 20;
    let invalid = |reason: String| MetaError::InvalidSnapshot { line: 1, reason };
    let mut line = String::new();
    input.take(MAX_HEADER).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(invalid("no complete header line".to_owned()));
    }
    match serde_json::from_str(&line).map_err(|e| invalid(e.to_string()))? {
        Line::Header { format, .. } if !READABLE_FORMATS.contains(&format) => {
            Err(invalid(format!("unknown format {format}")))
        }
        Line::Header { raft, .. } => Ok(raft),
        _ => Err(invalid("missing header".to_owned())),
    }
}

/// Writes garbage collection's state and its sets; returns how many set
/// lines it wrote.
fn write_gc(txn: &redb::ReadTransaction, out: &mut impl Write) -> Result<u64, MetaError> {
    write_line(
        out,
        &Line::Gc {
            state: gc::state(&txn.open_table(GC)?)?,
        },
    )?;
    let mut lines = 0;
    for item in txn.open_table(CONDEMNED)?.iter()? {
        let (key, _) = item?;
        let digest = tables::decode_digest(key.value())?;
        write_line(out, &Line::Condemned { digest })?;
        lines += 1;
    }
    for item in txn.open_table(RESCUED)?.iter()? {
        let (key, _) = item?;
        let digest = tables::decode_digest(key.value())?;
        write_line(out, &Line::Rescued { digest })?;
        lines += 1;
    }
    for item in txn.open_table(SWEEP)?.iter()? {
        let (key, _) = item?;
        write_line(
            out,
            &Line::Sweep {
                key: key.value().to_owned(),
            },
        )?;
        lines += 1;
    }
    Ok(lines)
}

fn write_line(out: &mut impl Write, line: &Line) -> Result<(), MetaError> {
    serde_json::to_writer(&mut *out, line).map_err(|source| {
        if source.is_io() {
            MetaError::SnapshotIo(source.into())
        } else {
            MetaError::Encode {
                what: "snapshot line",
                source,
            }
        }
    })?;
    out.write_all(b"\n")?;
    Ok(())
}
