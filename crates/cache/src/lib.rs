//! The pull-through engine: serve a blob or manifest from the fastest tier
//! that has it (memory, local disk, a download already under way, the
//! shared object tier), else fetch it once from the upstream while
//! streaming it to every client that asks; resolve tags with TTL-bounded
//! revalidation and stale serving; collect what nobody pulls any more.

mod blob;
mod body;
mod disk_fill;
mod fetch;
mod gc;
mod inflight;
mod keyed_lock;
mod manifest;
mod object_read;
mod object_streams;
mod object_tier;
mod peer_fetch;
mod peer_manifest;
mod recent;
mod telemetry;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use meta::{Meta, MetaError, TagKey};
use oci::Digest;
use peer::Peers;
use store::{DiskStore, MemoryStore, StoreError};
use upstream::{Upstream, UpstreamError};

pub use blob::BlobHit;
pub use gc::{Collector, GcSettings};
pub use inflight::DownloadStatus;
pub use manifest::ManifestHit;
pub use object_tier::ObjectTier;

/// A body streamed to the client; an error ends the response early.
pub type BodyStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A response body: whole bytes from memory, or a stream.
pub enum Body {
    Full(Bytes),
    Stream(BodyStream),
}

/// How a miss reaches the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Through the member that owns what is missed, when that is another.
    Owner,
    /// From here: this member serves another member's request, and never
    /// passes it on (two members that disagree on an owner would send it
    /// around in a circle).
    Upstream,
}

/// Which tier answered, for metrics and the request log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
    /// The shared object tier (S3 or a shared directory).
    Object,
    /// Joined a download another request started.
    Inflight,
    /// Answered by the owner (another member): a manifest, or a download
    /// it streams.
    Peer,
    Upstream,
    /// A tag served past its TTL because the upstream failed.
    Stale,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::Object => "object",
            Tier::Inflight => "inflight",
            Tier::Peer => "peer",
            Tier::Upstream => "upstream",
            Tier::Stale => "stale",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The object tier failed while a blob was being read from it.
    #[error(transparent)]
    ObjectStore(#[from] objstore::ObjStoreError),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    /// The upstream's body was cut, too long, or did not match its digest.
    #[error("upstream body: {0}")]
    UpstreamBody(String),
    /// Reading this replica's own disk tier failed.
    #[error("reading {digest} from the disk tier: {source}")]
    LocalIo {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    /// The disk tier evicted a blob between a download and its reading;
    /// asked again, it is fetched again.
    #[error("{digest} left the disk tier while being served")]
    Vanished { digest: Digest },
    /// The task downloading a blob ended without a result (e.g. at
    /// shutdown); asked again, the blob is fetched again.
    #[error("the download ended without a result")]
    DownloadAborted,
    #[error("manifest from upstream is invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest digest mismatch: expected {expected}, got {actual}")]
    ManifestDigestMismatch { expected: Digest, actual: Digest },
    #[error("manifest media type {media_type} is not in the request's accept list")]
    NotAcceptable { media_type: String },
    /// A shared download failed; every request following it gets its error.
    #[error("{0}")]
    Download(Arc<CacheError>),
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
}

/// Limits that apply to every upstream.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// How long past its TTL a tag may be served while its upstream fails.
    pub max_stale: Duration,
    /// Manifests are read whole, so their size is bounded.
    pub max_manifest_bytes: u64,
}

/// An upstream registry as the cache uses it: the client, and how long a
/// tag it answered counts as fresh.
pub struct Remote {
    pub upstream: Upstream,
    pub tag_ttl: Duration,
}

pub struct Cache {
    memory: MemoryStore,
    disk: DiskStore,
    /// `None` when the disk tier is the only copy (the embedded default).
    objects: Option<Arc<ObjectTier>>,
    meta: Arc<Meta>,
    inflight: Arc<inflight::Inflight>,
    object_streams: Arc<object_streams::OpenObjectStreams>,
    manifest_locks: keyed_lock::KeyedLocks<Digest>,
    tag_locks: keyed_lock::KeyedLocks<TagKey>,
    settings: CacheSettings,
}

impl Cache {
    pub fn new(
        memory: MemoryStore,
        disk: DiskStore,
        objects: Option<Arc<ObjectTier>>,
        meta: Arc<Meta>,
        peers: Option<Arc<Peers>>,
        settings: CacheSettings,
    ) -> Self {
        Cache {
            inflight: Arc::new(inflight::Inflight::new(Arc::clone(&meta), objects.clone(), peers)),
            object_streams: Arc::default(),
            memory,
            disk,
            objects,
            meta,
            manifest_locks: keyed_lock::KeyedLocks::new(),
            tag_locks: keyed_lock::KeyedLocks::new(),
            settings,
        }
    }
}

impl Cache {
    /// Applies the disk tier's capacity to what an earlier run kept (it may
    /// have been lowered since), and drops what that evicts from the index.
    pub async fn trim_disk(&self) {
        forget_evicted(&self.meta, self.disk.trim()).await;
    }

    /// Waits up to `timeout` for the downloads under way to end (at
    /// shutdown: a blob already sent to clients is still being made durable
    /// and stored). Returns how many were left.
    pub async fn finish_downloads(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inflight.len() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.inflight.len()
    }

    /// How many downloads are under way on this replica.
    pub fn download_count(&self) -> usize {
        self.inflight.len()
    }

    /// The downloads under way on this replica, by digest.
    pub fn downloads(&self) -> Vec<DownloadStatus> {
        self.inflight.statuses()
    }

    /// How this replica sees the other members as blob sources; `None`
    /// outside a cluster.
    pub fn peers(&self) -> Option<peer::PeersStatus> {
        self.inflight.peers.as_ref().map(|p| p.status())
    }
}

/// Drops blobs the disk tier evicted from the index, so it stays truthful;
/// entries the object tier still holds stay.
async fn forget_evicted(meta: &Meta, evicted: Vec<Digest>) {
    if evicted.is_empty() {
        return;
    }
    tracing::debug!(count = evicted.len(), "disk tier evicted objects");
    let stored_elsewhere = |d: &Digest| matches!(meta.entry(d), Ok(Some(e)) if e.object_key.is_some());
    let evicted: Vec<Digest> = evicted.into_iter().filter(|d| !stored_elsewhere(d)).collect();
    if evicted.is_empty() {
        return;
    }
    if let Err(e) = meta
        .propose(meta::Command::RemoveEntries { digests: evicted })
        .await
    {
        tracing::warn!(error = %e, "removing evicted objects from the index failed");
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}
