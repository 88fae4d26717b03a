//! The leader's side of a pass: which content a cutoff condemns, and the
//! cutoff that brings the index under a byte budget. Both read one
//! transaction while applies go on: a mark is only a proposal, checked
//! again where it applies.

use std::collections::{HashMap, HashSet};

use oci::Digest;
use redb::{ReadableDatabase, ReadableTable};

use crate::tables::{self, ENTRIES, META, TAGS, Totals};
use crate::{EntryKind, MetaError, StateDb};

/// A budget pass collects down to this share of the budget, so it does not
/// run again as soon as a few new blobs arrive.
pub const LOW_WATERMARK: f64 = 0.9;

impl StateDb {
    /// What a pass with `cutoff` would condemn, as of one read transaction
    /// (applies go on meanwhile): every entry last accessed before `cutoff`
    /// that no manifest accessed since references, directly or through an
    /// index. Manifests come first, so a manifest rescued before its chunk
    /// applies has rescued its references before theirs does.
    ///
    /// The reference graph is kept as 64-bit hashes of the digests, a few
    /// bytes an edge instead of two strings: a collision can only make an
    /// idle digest look referenced, and so keep it, never condemn one.
    pub(crate) fn gc_mark(&self, cutoff: u64) -> Result<Vec<Digest>, MetaError> {
        let txn = self.db.begin_read()?;
        let mut idle: Vec<(bool, Digest)> = Vec::new();
        let mut refs: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut live_manifests = Vec::new();
        for item in txn.open_table(ENTRIES)?.iter()? {
            let (key, value) = item?;
            let entry: crate::Entry = tables::decode("entries", key.value(), value.value())?;
            let is_manifest = entry.kind == EntryKind::Manifest;
            let id = hash_of(key.value());
            if entry.last_access >= cutoff {
                if is_manifest {
                    live_manifests.push(id);
                }
            } else {
                idle.push((!is_manifest, tables::decode_digest(key.value())?));
            }
            if is_manifest && !entry.refs.is_empty() {
                refs.insert(id, entry.refs.iter().map(|r| hash_of(&r.to_string())).collect());
            }
        }
        let mut kept: HashSet<u64> = HashSet::new();
        let mut pending = live_manifests;
        while let Some(manifest) = pending.pop() {
            for referenced in refs.get(&manifest).into_iter().flatten() {
                if kept.insert(*referenced) {
                    pending.push(*referenced);
                }
            }
        }
        drop(refs);
        idle.retain(|(_, digest)| !kept.contains(&hash_of(&digest.to_string())));
        idle.sort();
        Ok(idle.into_iter().map(|(_, digest)| digest).collect())
    }

    /// How many tags no replica served since `cutoff`: what a
    /// `DropIdleTags` with it would drop.
    pub(crate) fn gc_idle_tags(&self, cutoff: u64) -> Result<usize, MetaError> {
        let txn = self.db.begin_read()?;
        Ok(super::idle_tags(&txn.open_table(TAGS)?, cutoff)?.len())
    }

    /// The cutoff a pass needs to bring the index's total size under
    /// [`LOW_WATERMARK`] of `budget`, or `None` while it is within `budget`.
    ///
    /// Content is ordered by its effective recency: its own last access, or
    /// that of a manifest referencing it (directly or through an index) when
    /// that is newer, since a kept manifest keeps what it references. The
    /// least recent go first until enough bytes would be freed; a pass with
    /// the returned cutoff condemns exactly those (and whatever ties the
    /// last of them), as the mark with that cutoff is the same rule.
    pub(crate) fn gc_budget_cutoff(&self, budget: u64) -> Result<Option<u64>, MetaError> {
        let txn = self.db.begin_read()?;
        let totals = Totals::load(&txn.open_table(META)?)?;
        let total = totals.manifest_bytes.saturating_add(totals.blob_bytes);
        if total <= budget {
            return Ok(None);
        }
        let target = (budget as f64 * LOW_WATERMARK) as u64;
        let mut recency: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut refs: HashMap<u64, Vec<u64>> = HashMap::new();
        for item in txn.open_table(ENTRIES)?.iter()? {
            let (key, value) = item?;
            let entry: crate::Entry = tables::decode("entries", key.value(), value.value())?;
            let id = hash_of(key.value());
            recency.insert(id, (entry.last_access, entry.size));
            if entry.kind == EntryKind::Manifest && !entry.refs.is_empty() {
                refs.insert(id, entry.refs.iter().map(|r| hash_of(&r.to_string())).collect());
            }
        }
        // Push each manifest's recency down to what it references; a value
        // only ever grows, so this ends, and newest first it rarely revisits.
        let mut pending: Vec<(u64, u64)> = refs.keys().map(|m| (recency[m].0, *m)).collect();
        pending.sort_unstable();
        while let Some((at, manifest)) = pending.pop() {
            for referenced in refs.get(&manifest).into_iter().flatten() {
                if let Some(slot) = recency.get_mut(referenced)
                    && slot.0 < at
                {
                    slot.0 = at;
                    if refs.contains_key(referenced) {
                        pending.push((at, *referenced));
                    }
                }
            }
        }
        drop(refs);
        let mut by_recency: Vec<(u64, u64)> = recency.into_values().collect();
        by_recency.sort_unstable();
        // Content is taken a whole recency at a time: a cutoff above one
        // entry's recency condemns all entries of that second.
        let (mut left, mut cutoff) = (total, 0);
        for (at, size) in by_recency {
            if at >= cutoff {
                if left <= target {
                    break;
                }
                cutoff = at.saturating_add(1);
            }
            left = left.saturating_sub(size);
        }
        Ok(Some(cutoff))
    }
}

/// A digest's key as a 64-bit hash, the same for every spelling source.
fn hash_of(digest: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    digest.hash(&mut hasher);
    hasher.finish()
}
