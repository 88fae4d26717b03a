//! Content tiers: a byte-bounded memory tier for manifests and small blobs,
//! and a byte-bounded local disk tier with least-recently-used eviction.
//! Content only enters the disk tier through [`BlobWriter`], which hashes
//! while writing and commits only when the digest matches.

mod blob_file;
mod disk;
mod lru;
mod memory;
mod telemetry;
mod writer;

pub use blob_file::{BlobFile, MAP_WINDOW};
pub use disk::DiskStore;
pub use memory::{MemoryObject, MemoryStore};
pub use writer::{BlobWriter, Committed, Verified};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("io error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        expected: oci::Digest,
        actual: oci::Digest,
    },
    #[error("blob writer task failed: {0}")]
    Task(String),
}

impl StoreError {
    fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What the unit tests of several modules need.
#[cfg(test)]
mod test_support {
    use bytes::Bytes;
    use oci::Digest;

    use crate::DiskStore;

    /// Writes and commits `body`; returns its digest.
    pub(crate) async fn commit(store: &DiskStore, body: &[u8]) -> Digest {
        let digest = Digest::sha256_of(body);
        let mut writer = store.writer(&digest).unwrap();
        writer.append(Bytes::copy_from_slice(body)).await.unwrap();
        writer.commit().await.unwrap();
        digest
    }
}
