//! The object tier of the store: where content objects live for good, shared
//! by every replica. Either an S3 bucket (any S3-compatible store, spoken to
//! by aws-sdk-s3) or, for the embedded single-replica default, a local
//! directory laid out like one. Memory and local disk are hot tiers in front
//! of it.
//!
//! Writes never hold a whole object in memory: files are uploaded from disk
//! in parts, and a download being teed into the store goes through a
//! [`MultipartWriter`] that buffers one part at a time, with a bounded number
//! of parts in flight. An upload that is not completed is aborted, so the
//! bucket never shows half an object under its key.

mod body;
mod error;
mod fs;
mod key;
mod multipart;
mod s3;

use std::path::Path;
use std::time::{Duration, SystemTime};

pub use body::ObjectBody;
pub use error::ObjStoreError;
pub use fs::FsStore;
pub use key::{ObjectKind, new_upload_id, object_key, object_prefix, object_shards, parse_object_key};
pub use multipart::MultipartWriter;
pub use s3::{S3Config, S3Store, S3Timeouts};

/// Smallest part of a multipart upload (S3 requires ≥ 5 MiB for all parts
/// but the last); objects up to this size go up in one request.
pub(crate) const PART_SIZE: usize = 8 << 20;

/// Parts uploaded concurrently by one upload: enough to keep the link busy,
/// few enough that memory stays flat.
pub(crate) const PARTS_IN_FLIGHT: usize = 2;

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key as given to [`ObjectStore::put_file`] (without the store's
    /// prefix).
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// Where content objects live.
#[derive(Clone, Debug)]
pub enum ObjectStore {
    Fs(FsStore),
    S3(S3Store),
}

impl ObjectStore {
    /// Stores the file at `path` (of `size` bytes) under `key`, replacing
    /// any object there. Large files go up as a multipart upload streamed
    /// from the file, aborted on any error.
    pub async fn put_file(&self, key: &str, path: &Path, size: u64) -> Result<(), ObjStoreError> {
        match self {
            ObjectStore::Fs(s) => s.put_file(key, path, size).await,
            ObjectStore::S3(s) => s.put_file(key, path, size).await,
        }
    }

    /// An upload fed chunk by chunk (a download teed into the store). The
    /// object appears under `key` only on [`MultipartWriter::complete`];
    /// dropping the writer aborts the upload.
    pub fn multipart(&self, key: &str) -> Result<MultipartWriter, ObjStoreError> {
        match self {
            ObjectStore::Fs(s) => s.multipart(key).map(MultipartWriter::fs),
            ObjectStore::S3(s) => s.multipart(key).map(MultipartWriter::s3),
        }
    }

    /// The object's bytes as a stream, or only `range` of them (half-open:
    /// `start..end`, an `end` past the object is clipped). `None`: no such key.
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<ObjectBody>, ObjStoreError> {
        if let Some((start, end)) = range
            && start >= end
        {
            return Err(ObjStoreError::InvalidRange { start, end });
        }
        match self {
            ObjectStore::Fs(s) => s.get(key, range).await,
            ObjectStore::S3(s) => s.get(key, range).await,
        }
    }

    /// The object's size, or `None` if there is no such key.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, ObjStoreError> {
        match self {
            ObjectStore::Fs(s) => s.head(key).await,
            ObjectStore::S3(s) => s.head(key).await,
        }
    }

    /// Every object whose key starts with `prefix` (a plain string prefix, as
    /// in S3), in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjStoreError> {
        match self {
            ObjectStore::Fs(s) => s.list(prefix).await,
            ObjectStore::S3(s) => s.list(prefix).await,
        }
    }

    /// Deletes `keys`; keys that do not exist are not an error.
    pub async fn delete(&self, keys: &[String]) -> Result<(), ObjStoreError> {
        match self {
            ObjectStore::Fs(s) => s.delete(keys).await,
            ObjectStore::S3(s) => s.delete(keys).await,
        }
    }

    /// Aborts uploads started more than `older_than` ago and never completed
    /// (crashed replicas leave them behind; S3 bills their parts). Returns how
    /// many were aborted.
    pub async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize, ObjStoreError> {
        match self {
            ObjectStore::Fs(s) => s.abort_stale_uploads(older_than).await,
            ObjectStore::S3(s) => s.abort_stale_uploads(older_than).await,
        }
    }
}
