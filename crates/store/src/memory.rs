use bytes::Bytes;
use moka::future::Cache;
use oci::Digest;

/// An object held in memory, with the media type a manifest is served with.
#[derive(Clone, Debug)]
pub struct MemoryObject {
    pub bytes: Bytes,
    pub media_type: Option<String>,
}

/// The fastest tier: manifests and small blobs, bounded by total bytes so
/// memory use is set by configuration, not by what clients pull.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Digest, MemoryObject>,
    object_max: u64,
}

impl MemoryStore {
    pub fn new(capacity_bytes: u64, object_max: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_: &Digest, o: &MemoryObject| u32::try_from(o.bytes.len()).unwrap_or(u32::MAX))
            .build();
        MemoryStore { cache, object_max }
    }

    /// Whether an object of `size` bytes belongs in this tier at all.
    pub fn admits(&self, size: u64) -> bool {
        size <= self.object_max
    }

    pub async fn get(&self, digest: &Digest) -> Option<MemoryObject> {
        self.cache.get(digest).await
    }

    pub async fn insert(&self, digest: Digest, object: MemoryObject) {
        self.cache.insert(digest, object).await;
    }

    pub async fn remove(&self, digest: &Digest) {
        self.cache.invalidate(digest).await;
    }
}
