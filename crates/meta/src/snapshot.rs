//! Whole-state snapshots, for Raft to ship to a lagging or new member.
//!
//! The format is JSON lines: a header with the last applied index, one line
//! per tag and per entry, and a trailer with the counts. Both directions
//! stream, so a snapshot never has to fit in memory, and the trailer makes a
//! truncated snapshot fail to install instead of installing half a state.

use std::io::{BufRead, Write};

use oci::Digest;
use redb::{ReadableDatabase, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::state::StateMachine;
use crate::tables::{self, ENTRIES, META, TAGS, Totals};
use crate::{Entry, MetaError, TagKey, TagRecord};

/// Bumped when a line changes meaning, so an old member refuses a new format.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Header { format: u32, last_applied: Option<u64> },
    Tag { key: TagKey, record: TagRecord },
    Entry { digest: Digest, entry: Entry },
    End { tags: u64, entries: u64 },
}

/// What a snapshot holds, as written or installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub last_applied: Option<u64>,
    pub tags: u64,
    pub entries: u64,
}

impl StateMachine {
    /// Writes the whole state, as of one read transaction, to `out`. Records
    /// are decoded on the way, so a corrupt store fails here instead of
    /// spreading to other members.
    pub fn snapshot(&self, mut out: impl Write) -> Result<SnapshotInfo, MetaError> {
        let txn = self.db.begin_read()?;
        let last_applied = tables::last_applied(&txn.open_table(META)?)?;
        write_line(
            &mut out,
            &Line::Header {
                format: FORMAT,
                last_applied,
            },
        )?;
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
        write_line(&mut out, &Line::End { tags, entries })?;
        out.flush()?;
        Ok(SnapshotInfo {
            last_applied,
            tags,
            entries,
        })
    }

    /// Replaces the whole state with the snapshot read from `input`, in one
    /// durable transaction: on any error the old state stays untouched.
    pub fn install_snapshot(&self, input: impl BufRead) -> Result<SnapshotInfo, MetaError> {
        let txn = self.db.begin_write()?;
        txn.delete_table(TAGS)?;
        txn.delete_table(ENTRIES)?;
        txn.delete_table(META)?;
        let info = {
            let mut tag_table = txn.open_table(TAGS)?;
            let mut entry_table = txn.open_table(ENTRIES)?;
            let mut meta = txn.open_table(META)?;
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
                match (parsed, header) {
                    (Line::Header { format, .. }, None) if format != FORMAT => {
                        return Err(invalid(&format!("unknown format {format}")));
                    }
                    (Line::Header { last_applied, .. }, None) => header = Some(last_applied),
                    (_, None) => return Err(invalid("missing header")),
                    (Line::Header { .. }, Some(_)) => return Err(invalid("second header")),
                    (Line::Tag { key, record }, Some(_)) => {
                        let stored = tables::tag_key(&key)?;
                        let value = tables::encode("tag record", &record)?;
                        if tag_table.insert(stored.as_str(), value.as_slice())?.is_some() {
                            return Err(invalid("duplicate tag"));
                        }
                    }
                    (Line::Entry { digest, entry }, Some(_)) => {
                        let value = tables::encode("entry", &entry)?;
                        let key = digest.to_string();
                        if entry_table.insert(key.as_str(), value.as_slice())?.is_some() {
                            return Err(invalid("duplicate entry"));
                        }
                        totals.add(&entry);
                    }
                    (Line::End { tags, entries }, Some(_)) => {
                        if tags != tag_table.len()? || entries != totals.entries() {
                            return Err(invalid("counts do not match the records"));
                        }
                        end = Some((tags, entries));
                    }
                }
            }
            let (Some(last_applied), Some((tags, entries))) = (header, end) else {
                return Err(MetaError::InvalidSnapshot {
                    line: line_no,
                    reason: "truncated: no trailer".to_owned(),
                });
            };
            totals.store(&mut meta)?;
            tables::set_last_applied(&mut meta, last_applied)?;
            SnapshotInfo {
                last_applied,
                tags,
                entries,
            }
        };
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
