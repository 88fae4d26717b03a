//! The shared object tier as the cache uses it. A failure that says the
//! store is unreachable makes the cache step around it for a while: warm
//! content keeps coming from local disk, misses are streamed from the
//! upstream without being stored, and one log line marks each outage and
//! its end instead of one per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use objstore::{MultipartWriter, ObjStoreError, ObjectBody, ObjectInfo, ObjectKind, ObjectStore};
use oci::Digest;
use tracing::{info, warn};

use crate::unix_now;

/// How long the tier is bypassed after it was found unreachable.
const BYPASS_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How often stale multipart uploads are looked for.
const STALE_UPLOAD_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

pub struct ObjectTier {
    store: ObjectStore,
    /// Unix millis before which the store is not tried.
    bypass_until: AtomicU64,
    /// An outage was logged and its end has not been.
    down: AtomicBool,
}

impl ObjectTier {
    pub fn new(store: ObjectStore) -> Self {
        ObjectTier {
            store,
            bypass_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }
    }

    fn available(&self) -> bool {
        now_ms() >= self.bypass_until.load(Ordering::Relaxed)
    }

    /// Counts a failed `operation`; bypasses the store for a while when it
    /// was unreachable.
    pub(crate) fn failed(&self, operation: &'static str, error: &ObjStoreError) {
        crate::telemetry::objstore_error(operation);
        if !error.is_unavailable() {
            warn!(operation, error = %error, "object store request failed");
            return;
        }
        let until = now_ms().saturating_add(BYPASS_AFTER_FAILURE.as_millis() as u64);
        self.bypass_until.fetch_max(until, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            warn!(operation, error = %error, retry_in = ?BYPASS_AFTER_FAILURE,
                "object store unavailable: serving local disk, storing new content locally only");
        }
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            info!("object store available again");
        }
    }

    /// The key holding `digest`: `hint` (the index's) when given, else the
    /// newest upload found by listing.
    pub(crate) async fn find(
        &self,
        kind: ObjectKind,
        digest: &Digest,
        hint: Option<String>,
    ) -> Option<String> {
        match hint {
            Some(key) => Some(key),
            None => self.newest(kind, digest).await.map(|o| o.key),
        }
    }

    /// The newest upload holding `digest`, found by listing (another
    /// replica may have stored it while this one's index lacks it).
    pub(crate) async fn newest(&self, kind: ObjectKind, digest: &Digest) -> Option<ObjectInfo> {
        if !self.available() {
            return None;
        }
        match self.store.list(&objstore::object_prefix(kind, digest)).await {
            Ok(objects) => {
                self.succeeded();
                // Upload ids sort by time: the last key is the newest.
                objects.into_iter().max_by(|a, b| a.key.cmp(&b.key))
            }
            Err(e) => {
                self.failed("list", &e);
                None
            }
        }
    }

    /// The object (or `range` of it); `None` when it is gone or the store
    /// is unavailable.
    pub(crate) async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Option<ObjectBody> {
        if !self.available() {
            return None;
        }
        match self.store.get(key, range).await {
            Ok(body) => {
                self.succeeded();
                body
            }
            Err(e) => {
                self.failed("get", &e);
                None
            }
        }
    }

    /// `body` with a failure while reading it counted like any other (and
    /// starting the bypass when the store is unavailable).
    pub(crate) fn watched(
        self: &Arc<Self>,
        body: ObjectBody,
    ) -> impl futures_util::Stream<Item = Result<Bytes, ObjStoreError>> + Send + 'static {
        let objects = Arc::clone(self);
        futures_util::TryStreamExt::inspect_err(body, move |e| objects.failed("get", e))
    }

    /// Opens the object holding `digest`. A `hint` from the index that
    /// names a vanished key (a sweep, a wiped bucket) falls back to a LIST.
    pub(crate) async fn open(
        &self,
        kind: ObjectKind,
        digest: &Digest,
        hint: Option<String>,
    ) -> Option<(String, ObjectBody)> {
        let had_hint = hint.is_some();
        let key = self.find(kind, digest, hint).await?;
        if let Some(body) = self.get(&key, None).await {
            return Some((key, body));
        }
        if !had_hint {
            return None;
        }
        let key = self.find(kind, digest, None).await?;
        let body = self.get(&key, None).await?;
        Some((key, body))
    }

    /// Reads a small object (a manifest) whole, refusing one over `max` bytes.
    pub async fn read_small(
        &self,
        kind: ObjectKind,
        digest: &Digest,
        hint: Option<String>,
        max: u64,
    ) -> Option<(String, Bytes)> {
        let (key, mut body) = self.open(kind, digest, hint).await?;
        if body.len() > max {
            warn!(
                key,
                size = body.len(),
                max,
                "object too large for a manifest, ignored"
            );
            return None;
        }
        let mut bytes = BytesMut::with_capacity(body.len() as usize);
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) if (bytes.len() + chunk.len()) as u64 <= max => bytes.extend_from_slice(&chunk),
                Ok(_) => {
                    warn!(key, max, "object longer than announced, ignored");
                    return None;
                }
                Err(e) => {
                    self.failed("get", &e);
                    return None;
                }
            }
        }
        Some((key, bytes.freeze()))
    }

    /// A new upload for `digest` and its key; `None` while the store is
    /// being bypassed.
    pub(crate) fn upload(&self, kind: ObjectKind, digest: &Digest) -> Option<(String, MultipartWriter)> {
        if !self.available() {
            return None;
        }
        let key = objstore::object_key(kind, digest, &objstore::new_upload_id());
        match self.store.multipart(&key) {
            Ok(writer) => Some((key, writer)),
            Err(e) => {
                self.failed("create_upload", &e);
                None
            }
        }
    }

    /// Completes an upload whose content was verified. Returns whether the
    /// object is now stored.
    pub(crate) async fn complete(&self, writer: MultipartWriter) -> bool {
        match writer.complete().await {
            Ok(()) => {
                self.succeeded();
                true
            }
            Err(e) => {
                self.failed("complete_upload", &e);
                false
            }
        }
    }

    /// Deletes an object whose content does not match the digest its key
    /// names (bit rot, or a foreign write), so the next request refetches.
    pub(crate) async fn discard_corrupt(&self, key: &str) {
        crate::telemetry::objstore_corrupt();
        warn!(key, "object does not match its digest; deleting it");
        if let Err(e) = self.store.delete(&[key.to_owned()]).await {
            self.failed("delete", &e);
        }
    }

    /// Every object whose key starts with `prefix`, for the orphan sweep.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjStoreError> {
        self.store
            .list(prefix)
            .await
            .inspect_err(|e| self.failed("list", e))
    }

    /// Deletes objects garbage collection removed from the index.
    pub(crate) async fn delete(&self, keys: &[String]) -> Result<(), ObjStoreError> {
        self.store
            .delete(keys)
            .await
            .inspect_err(|e| self.failed("delete", e))
    }

    /// Stores a small object (a manifest) in one request; returns its key,
    /// or `None` when it could not be stored.
    pub(crate) async fn put_small(&self, kind: ObjectKind, digest: &Digest, bytes: Bytes) -> Option<String> {
        let stored = match self.upload(kind, digest) {
            Some((key, mut upload)) => match upload.write(bytes).await {
                Ok(()) => self.complete(upload).await.then_some(key),
                Err(e) => {
                    self.failed("put_object", &e);
                    None
                }
            },
            None => None,
        };
        if stored.is_none() {
            count_unstored(kind);
        }
        stored
    }

    /// Aborts uploads older than `older_than` now and every hour: a replica
    /// that crashed mid-upload leaves parts behind that S3 keeps billing.
    pub fn spawn_stale_upload_sweeper(self: &std::sync::Arc<Self>, older_than: Duration) {
        let objects = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(STALE_UPLOAD_SWEEP_INTERVAL);
            loop {
                ticks.tick().await;
                match objects.store.abort_stale_uploads(older_than).await {
                    Ok(0) => {}
                    Ok(aborted) => info!(aborted, "aborted stale multipart uploads"),
                    Err(e) => objects.failed("abort_stale_uploads", &e),
                }
            }
        });
    }
}

/// Counts content that could not go to the object tier (it is kept on local
/// disk only).
pub(crate) fn count_unstored(kind: ObjectKind) {
    let kind = match kind {
        ObjectKind::Blob => "blob",
        ObjectKind::Manifest => "manifest",
    };
    crate::telemetry::objstore_unstored(kind);
}

fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}
