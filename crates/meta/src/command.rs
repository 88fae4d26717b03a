//! The commands that change metadata and the records they carry.
//!
//! Everything here crosses the Raft log, so it is plain data: every
//! time is inside the command, never read by whoever applies it.

use oci::Digest;
use serde::{Deserialize, Serialize};

/// One change to the metadata state, applied in log order on every replica.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Command {
    /// Record (or refresh) what a tag points to; `checked_at_ms` is when the
    /// upstream last confirmed it.
    SetTag { key: TagKey, record: TagRecord },
    /// Add a digest-addressed object to the content index. Idempotent:
    /// re-putting keeps the newest `last_access`, and keeps a known
    /// `object_key` when the new entry has none.
    PutEntry { digest: Digest, entry: Entry },
    /// A batch of last-access times (unix seconds); only moves times forward;
    /// unknown digests are ignored.
    Touch { accesses: Vec<(Digest, u64)> },
    /// Drop entries from the index (a replica's disk eviction); unknown
    /// digests are ignored.
    RemoveEntries { digests: Vec<Digest> },
    /// Opens garbage-collection pass `epoch`: content last accessed before
    /// `cutoff` (unix seconds) may be condemned until the pass commits. A
    /// pass still open is abandoned; an epoch not above the last is ignored.
    GcStart { epoch: u64, cutoff: u64 },
    /// Condemns the digests the leader marked, as far as they are still idle
    /// and not rescued when this applies (see docs/gc.md).
    GcCondemn { epoch: u64, digests: Vec<Digest> },
    /// Removes up to `max` condemned entries from the index, in digest
    /// order, and queues their object keys for the sweep; closes the pass
    /// once nothing condemned is left.
    GcCommit { epoch: u64, max: u32 },
    /// The object keys a sweeper deleted, no longer to be swept.
    Swept { keys: Vec<String> },
    /// A batch of tag request times (unix seconds); only moves times
    /// forward; unknown tags are ignored.
    TouchTags { tags: Vec<(TagKey, u64)> },
    /// Drops the tags not requested since `cutoff` (unix seconds).
    DropIdleTags { cutoff: u64 },
    /// The key of the digest-ownership hash ([`OWNER_KEY_BYTES`] random
    /// bytes), proposed by a leader that finds none; the first committed
    /// stays, later ones are ignored.
    SetOwnerKey { key: Vec<u8> },
}

/// Length of the ownership hash's key.
pub const OWNER_KEY_BYTES: usize = 32;

impl Command {
    /// Access times: coarse, so applied without an fsync (see
    /// `StateDb::apply`).
    pub(crate) fn is_touch(&self) -> bool {
        matches!(self, Command::Touch { .. } | Command::TouchTags { .. })
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::SetTag { .. } => "set_tag",
            Command::PutEntry { .. } => "put_entry",
            Command::Touch { .. } => "touch",
            Command::RemoveEntries { .. } => "remove_entries",
            Command::GcStart { .. } => "gc_start",
            Command::GcCondemn { .. } => "gc_condemn",
            Command::GcCommit { .. } => "gc_commit",
            Command::Swept { .. } => "swept",
            Command::TouchTags { .. } => "touch_tags",
            Command::DropIdleTags { .. } => "drop_idle_tags",
            Command::SetOwnerKey { .. } => "set_owner_key",
        }
    }
}

/// Identifies a tag of one repository on one upstream. None of the parts may
/// contain a NUL byte: NUL separates them in the stored key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagKey {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
}

/// What a tag resolved to, and when the upstream last said so.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    pub checked_at_ms: u64,
    /// When any replica last served the tag (unix seconds, coarse: batched
    /// like access times). Records written before it existed read 0, and
    /// then the check time stands in: a tag is only checked when requested.
    #[serde(default)]
    pub requested_at: u64,
}

impl TagRecord {
    /// The newest request known for the tag (unix seconds).
    pub fn last_requested(&self) -> u64 {
        self.requested_at.max(self.checked_at_ms / 1000)
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum EntryKind {
    Manifest,
    Blob,
}

/// One digest-addressed object in the content index.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub size: u64,
    pub kind: EntryKind,
    pub media_type: Option<String>,
    /// Digests a manifest references (empty for blobs): GC keeps them alive
    /// while the manifest is retained.
    pub refs: Vec<Digest>,
    /// Unix seconds, coarse: moved forward by batched `Touch` commands.
    pub last_access: u64,
    /// Where the object lives in the shared object store, once uploaded.
    pub object_key: Option<String>,
    /// CRC-64/NVME of the content, computed while it was verified against
    /// its digest: reads from the object store check this instead of
    /// hashing again. Absent for entries an index rebuild made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<u64>,
}

impl Entry {
    /// A blob, stored in the object tier under `object_key` if uploaded.
    pub fn blob(size: u64, last_access: u64, object_key: Option<String>) -> Entry {
        Entry {
            size,
            kind: EntryKind::Blob,
            media_type: None,
            refs: Vec::new(),
            last_access,
            object_key,
            crc64nvme: None,
        }
    }

    /// The entry with the content's CRC-64/NVME recorded.
    pub fn with_crc64nvme(self, crc: u64) -> Entry {
        Entry {
            crc64nvme: Some(crc),
            ..self
        }
    }

    /// A manifest with the digests it references, which GC keeps alive.
    pub fn manifest(
        size: u64,
        media_type: String,
        refs: Vec<Digest>,
        last_access: u64,
        object_key: Option<String>,
    ) -> Entry {
        Entry {
            size,
            kind: EntryKind::Manifest,
            media_type: Some(media_type),
            refs,
            last_access,
            object_key,
            crc64nvme: None,
        }
    }
}
