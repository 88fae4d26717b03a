//! Garbage collection in the state machine: a pass condemns idle content,
//! accesses rescue it, and the commit removes what is still condemned. The
//! Raft log orders each of these against every access, so all members agree
//! on what went; docs/gc.md has the protocol and why it is safe.

use oci::Digest;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::tables::{self, CONDEMNED, ENTRIES, GC, RESCUED, SWEEP, TAGS, Totals};
use crate::{EntryKind, MetaError, StateDb, TagRecord};

mod mark;

pub use mark::LOW_WATERMARK;

const STATE: &str = "state";

/// Where garbage collection stands, as this member applied it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcState {
    /// The last pass started; 0 before the first.
    pub epoch: u64,
    /// The open pass's cutoff (unix seconds); `None` when no pass is open.
    pub cutoff: Option<u64>,
    /// Entries condemned and not yet removed or rescued.
    pub condemned: u64,
    /// Object keys removed from the index and not yet deleted.
    pub to_sweep: u64,
}

/// The pass as stored (and carried by snapshots); the counts of
/// [`GcState`] are the sizes of the tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GcPass {
    epoch: u64,
    cutoff: Option<u64>,
}

impl GcPass {
    fn open_epoch(&self) -> Option<(u64, u64)> {
        self.cutoff.map(|cutoff| (self.epoch, cutoff))
    }
}

pub(crate) fn state(table: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<GcPass, MetaError> {
    match table.get(STATE)? {
        Some(guard) => tables::decode("gc", STATE, guard.value()),
        None => Ok(GcPass::default()),
    }
}

pub(crate) fn set_state(
    table: &mut Table<&'static str, &'static [u8]>,
    state: &GcPass,
) -> Result<(), MetaError> {
    table.insert(STATE, tables::encode("gc state", state)?.as_slice())?;
    Ok(())
}

/// `GcStart`: opens `epoch` when it is above the last one, abandoning a
/// pass still open.
pub(crate) fn start(txn: &WriteTransaction, epoch: u64, cutoff: u64) -> Result<(), MetaError> {
    let mut table = txn.open_table(GC)?;
    let current = state(&table)?;
    if epoch <= current.epoch {
        return Ok(());
    }
    for pass_table in [CONDEMNED, RESCUED] {
        txn.delete_table(pass_table)?;
        txn.open_table(pass_table)?;
    }
    let opened = GcPass {
        epoch,
        cutoff: Some(cutoff),
    };
    set_state(&mut table, &opened)
}

/// `GcCondemn`: condemns each digest that is indexed, still idle and not
/// rescued in the open pass `epoch`.
pub(crate) fn condemn(txn: &WriteTransaction, epoch: u64, digests: &[Digest]) -> Result<(), MetaError> {
    let Some((open, cutoff)) = state(&txn.open_table(GC)?)?.open_epoch() else {
        return Ok(());
    };
    if open != epoch {
        return Ok(());
    }
    let entries = txn.open_table(ENTRIES)?;
    let rescued = txn.open_table(RESCUED)?;
    let mut condemned = txn.open_table(CONDEMNED)?;
    for digest in digests {
        let key = digest.to_string();
        let Some(entry) = tables::get_entry(&entries, &key)? else {
            continue;
        };
        if entry.last_access < cutoff && rescued.get(key.as_str())?.is_none() {
            condemned.insert(key.as_str(), ())?;
        }
    }
    Ok(())
}

/// `Touch` during a pass: rescues what was served since the pass's cutoff.
/// An access from before it (batched late) is no reason to keep content:
/// a response that streams on notes its access every second, so anything
/// still being sent was accessed since.
pub(crate) fn rescue_accessed(txn: &WriteTransaction, accesses: &[(Digest, u64)]) -> Result<(), MetaError> {
    let Some(cutoff) = state(&txn.open_table(GC)?)?.cutoff else {
        return Ok(());
    };
    rescue(
        txn,
        accesses
            .iter()
            .filter(|(_, at)| *at >= cutoff)
            .map(|(digest, _)| digest),
    )
}

/// Keeps `digests`, and everything they reference when they are
/// manifests, out of the open pass: they were served, or a manifest newly
/// indexed names them. Nothing to do when no pass is open.
pub(crate) fn rescue<'d>(
    txn: &WriteTransaction,
    digests: impl IntoIterator<Item = &'d Digest>,
) -> Result<(), MetaError> {
    if state(&txn.open_table(GC)?)?.cutoff.is_none() {
        return Ok(());
    }
    let entries = txn.open_table(ENTRIES)?;
    let mut rescued = txn.open_table(RESCUED)?;
    let mut condemned = txn.open_table(CONDEMNED)?;
    let mut pending: Vec<String> = digests.into_iter().map(Digest::to_string).collect();
    while let Some(key) = pending.pop() {
        if rescued.insert(key.as_str(), ())?.is_some() {
            continue; // rescued already, and what it references with it
        }
        condemned.remove(key.as_str())?;
        if let Some(entry) = tables::get_entry(&entries, &key)?
            && entry.kind == EntryKind::Manifest
        {
            pending.extend(entry.refs.iter().map(Digest::to_string));
        }
    }
    Ok(())
}

/// `GcCommit`: removes up to `max` condemned entries, queues their object
/// keys for the sweep, and closes the pass when none is left.
pub(crate) fn commit(
    txn: &WriteTransaction,
    meta: &mut Table<&'static str, u64>,
    epoch: u64,
    max: u32,
) -> Result<(), MetaError> {
    let mut gc = txn.open_table(GC)?;
    let current = state(&gc)?;
    if current.open_epoch().is_none_or(|(open, _)| open != epoch) {
        return Ok(());
    }
    let mut condemned = txn.open_table(CONDEMNED)?;
    let chunk: Vec<String> = condemned
        .iter()?
        .take(max as usize)
        .map(|item| item.map(|(key, _)| key.value().to_owned()))
        .collect::<Result<_, _>>()?;
    let mut entries = txn.open_table(ENTRIES)?;
    let mut sweep = txn.open_table(SWEEP)?;
    let mut totals = Totals::load(meta)?;
    for key in &chunk {
        condemned.remove(key.as_str())?;
        if let Some(old) = entries.remove(key.as_str())? {
            let entry: crate::Entry = tables::decode("entries", key, old.value())?;
            if let Some(object_key) = &entry.object_key {
                sweep.insert(object_key.as_str(), ())?;
            }
            totals.sub(&entry)?;
        }
    }
    totals.store(meta)?;
    if condemned.is_empty()? {
        let closed = GcPass {
            cutoff: None,
            ..current
        };
        set_state(&mut gc, &closed)?;
        drop(condemned);
        txn.delete_table(RESCUED)?;
        txn.open_table(RESCUED)?;
    }
    Ok(())
}

/// `DropIdleTags`: drops the tags no replica served since `cutoff`. The
/// next request for one asks the upstream again, and its manifest is kept
/// only as long as its own accesses keep it.
pub(crate) fn drop_idle_tags(txn: &WriteTransaction, cutoff: u64) -> Result<(), MetaError> {
    let mut tags = txn.open_table(TAGS)?;
    for key in idle_tags(&tags, cutoff)? {
        tags.remove(key.as_str())?;
    }
    Ok(())
}

/// The stored keys of the tags no replica served since `cutoff`.
pub(crate) fn idle_tags(
    tags: &impl ReadableTable<&'static str, &'static [u8]>,
    cutoff: u64,
) -> Result<Vec<String>, MetaError> {
    let mut idle = Vec::new();
    for item in tags.iter()? {
        let (key, value) = item?;
        let record: TagRecord = tables::decode("tags", key.value(), value.value())?;
        if record.last_requested() < cutoff {
            idle.push(key.value().to_owned());
        }
    }
    Ok(idle)
}

/// `Swept`: forgets object keys a sweeper deleted.
pub(crate) fn swept(txn: &WriteTransaction, keys: &[String]) -> Result<(), MetaError> {
    let mut sweep = txn.open_table(SWEEP)?;
    for key in keys {
        sweep.remove(key.as_str())?;
    }
    Ok(())
}

impl StateDb {
    /// Up to `limit` object keys a commit removed and no sweeper deleted yet.
    pub(crate) fn gc_sweep_keys(&self, limit: usize) -> Result<Vec<String>, MetaError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SWEEP)?;
        let keys = table
            .iter()?
            .take(limit)
            .map(|item| item.map(|(key, _)| key.value().to_owned()))
            .collect::<Result<_, _>>()?;
        Ok(keys)
    }

    /// Whether the open GC pass condemned `digest`.
    pub(crate) fn is_condemned(&self, digest: &Digest) -> Result<bool, MetaError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(CONDEMNED)?
            .get(digest.to_string().as_str())?
            .is_some())
    }

    /// The bytes the condemned entries describe: what the commit frees.
    pub(crate) fn gc_condemned_bytes(&self) -> Result<u64, MetaError> {
        let txn = self.db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut bytes = 0u64;
        for item in txn.open_table(CONDEMNED)?.iter()? {
            let (key, _) = item?;
            if let Some(entry) = tables::get_entry(&entries, key.value())? {
                bytes = bytes.saturating_add(entry.size);
            }
        }
        Ok(bytes)
    }

    /// Where garbage collection stands here.
    pub(crate) fn gc_state(&self) -> Result<GcState, MetaError> {
        let txn = self.db.begin_read()?;
        let pass = state(&txn.open_table(GC)?)?;
        Ok(GcState {
            epoch: pass.epoch,
            cutoff: pass.cutoff,
            condemned: txn.open_table(CONDEMNED)?.len()?,
            to_sweep: txn.open_table(SWEEP)?.len()?,
        })
    }
}
