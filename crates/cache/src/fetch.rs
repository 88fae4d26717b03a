//! The task that owns one download: it copies the blob from the upstream
//! (teed into the object tier), from the object tier, or from the member
//! that owns the digest (`peer_fetch`) to a temp file, publishes its
//! progress to the followers, and once the digest matched makes it
//! durable, puts it in place and records it in the index.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt, TryStreamExt as _};
use meta::{Command, Entry};
use objstore::{MultipartWriter, ObjStoreError, ObjectKind};
use oci::{Digest, RepoName};
use store::{BlobWriter, Committed, StoreError, Verified};
use tokio::sync::watch;
use tracing::{debug, warn};
use upstream::Upstream;

use crate::inflight::{BytesFrom, Inflight, Origin, Progress};
use crate::object_tier::{ObjectTier, count_unstored};
use crate::recent::RecentChunks;
use crate::{CacheError, Via, forget_evicted, unix_now};

/// Chunks are batched up to this size: fewer trips to the blocking pool.
const WRITE_BATCH: u64 = 256 * 1024;
/// How long one chunk may wait for the object store before the download
/// stops storing there: a stalled store must not stall the clients.
const TEE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The task that owns a download. It runs to the end even when every client
/// has gone: the cache itself still wants the blob.
pub(crate) struct Fetch {
    pub(crate) inflight: Arc<Inflight>,
    pub(crate) upstream: Upstream,
    pub(crate) repo: RepoName,
    pub(crate) digest: Digest,
    pub(crate) origin: Origin,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) recent: Arc<RecentChunks>,
}

/// A verified blob in its temp file, where the object tier has it, and
/// where its bytes came from.
pub(crate) struct Fetched {
    pub(crate) verified: Verified,
    pub(crate) object_key: Option<String>,
    pub(crate) from: BytesFrom,
}

/// A download being copied into the object tier as it arrives.
type Tee = Option<(String, MultipartWriter)>;

impl Fetch {
    pub(crate) async fn run(self, writer: BlobWriter) {
        let mut tee = None;
        let e = match self.fetch(writer, &mut tee).await {
            Ok(fetched) => return self.keep(fetched, tee).await,
            Err(e) => e,
        };
        abort_tee(tee).await;
        // Bytes that fail verification are the upstream's fault: a bad
        // gateway (502) for the client, not an internal error.
        let e = match e {
            CacheError::Store(mismatch @ StoreError::DigestMismatch { .. }) => {
                crate::telemetry::digest_mismatch(self.upstream.name());
                CacheError::UpstreamBody(mismatch.to_string())
            }
            other => other,
        };
        warn!(upstream = self.upstream.name(), repo = %self.repo, digest = %self.digest, error = %e, "blob download failed");
        // Leave the map first: a request arriving after the failure is
        // published must start afresh, never join this download.
        self.inflight.remove(&self.digest);
        self.progress.send_replace(Progress::Failed(Arc::new(e)));
    }

    /// Releases the verified blob to its readers, then makes it durable,
    /// puts it in place and records it (the fsync is not on the clients'
    /// path), and only then leaves the map: a request arriving later finds
    /// the disk tier, and shutdown waits for all of it.
    async fn keep(&self, fetched: Fetched, tee: Tee) {
        let size = fetched.verified.size();
        let from = fetched.from;
        self.progress.send_replace(Progress::Done {
            size,
            from: from.clone(),
        });
        match fetched.verified.persist().await {
            Ok(committed) => {
                debug!(upstream = self.upstream.name(), digest = %self.digest, size, ?from, "blob cached");
                if let BytesFrom::Peer(_) = from {
                    // The owner stores and records it; this copy is local.
                    forget_evicted(&self.inflight.meta, committed.evicted).await;
                } else {
                    self.record(committed, fetched.object_key, tee).await;
                }
            }
            Err(e) => {
                warn!(digest = %self.digest, error = %e, "keeping a verified blob on disk failed");
                abort_tee(tee).await;
            }
        }
        self.inflight.remove(&self.digest);
    }

    /// Copies the blob to local disk from its origin: the object tier's
    /// copy, the digest's owner, or the upstream while teeing it into the
    /// object tier (also when the owner cannot be asked); verifies it.
    async fn fetch(&self, mut writer: BlobWriter, tee: &mut Tee) -> Result<Fetched, CacheError> {
        let objects = self.inflight.objects.as_ref();
        if let (Some(objects), Origin::Object(hint)) = (objects, &self.origin) {
            return self.copy_object(writer, objects, hint).await;
        }
        if let Origin::Upstream(Via::Owner) = self.origin
            && let Some(from_owner) = self.copy_from_owner(&mut writer).await?
        {
            return self.owner_verified(writer, from_owner).await;
        }
        *tee = objects.and_then(|o| o.upload(ObjectKind::Blob, &self.digest));
        let blob = self.upstream.get_blob(&self.repo, &self.digest).await?;
        let body = blob.body.map_err(CacheError::from).boxed();
        self.copy(&mut writer, blob.size, BytesFrom::Upstream, body, tee)
            .await?;
        Ok(Fetched {
            verified: writer.verify().await?,
            object_key: None,
            from: BytesFrom::Upstream,
        })
    }

    /// The object tier's copy, verified against the digest (and deleted if
    /// it does not match). Never the upstream: a copy whose object vanished
    /// simply does not happen.
    async fn copy_object(
        &self,
        mut writer: BlobWriter,
        objects: &Arc<ObjectTier>,
        hint: &str,
    ) -> Result<Fetched, CacheError> {
        let Some((key, body)) = objects
            .open(ObjectKind::Blob, &self.digest, Some(hint.to_owned()))
            .await
        else {
            return Err(CacheError::ObjectStore(ObjStoreError::Request {
                operation: "get_object",
                detail: "the object is gone or the store unavailable".into(),
            }));
        };
        let size = body.len();
        let body = objects.watched(body).map_err(CacheError::from).boxed();
        let from = BytesFrom::Object(Arc::from(key.as_str()));
        let copied = match self.copy(&mut writer, Some(size), from, body, &mut None).await {
            Ok(()) => writer.verify().await.map_err(CacheError::from),
            Err(e) => Err(e),
        };
        if let Err(CacheError::Store(StoreError::DigestMismatch { .. })) = &copied {
            // Whole but wrong: no request may ever be served it again.
            objects.discard_corrupt(&key).await;
        }
        Ok(Fetched {
            verified: copied?,
            from: BytesFrom::Object(Arc::from(key.as_str())),
            object_key: Some(key),
        })
    }

    /// Writes `body` to the temp file (and `tee`), publishing progress.
    pub(crate) async fn copy(
        &self,
        writer: &mut BlobWriter,
        size: Option<u64>,
        from: BytesFrom,
        mut body: BoxStream<'static, Result<Bytes, CacheError>>,
        tee: &mut Tee,
    ) -> Result<(), CacheError> {
        let running = |written| Progress::Running {
            size,
            written,
            from: from.clone(),
        };
        self.progress.send_replace(running(0));
        while let Some(chunk) = body.next().await {
            // Batch what has already arrived into one trip to the disk.
            let mut batch = vec![chunk?];
            let mut batched = batch[0].len() as u64;
            while batched < WRITE_BATCH {
                match body.next().now_or_never() {
                    Some(Some(more)) => {
                        let more = more?;
                        batched += more.len() as u64;
                        batch.push(more);
                    }
                    _ => break,
                }
            }
            let mut offset = writer.accepted();
            let written = writer.append_all(batch.clone()).await?;
            if size.is_some_and(|s| writer.accepted() > s) {
                return Err(CacheError::UpstreamBody(
                    "upstream sent more bytes than announced".into(),
                ));
            }
            self.progress.send_replace(running(written));
            for chunk in batch {
                let len = chunk.len() as u64;
                self.recent.push(offset, chunk.clone());
                offset += len;
                self.tee_write(tee, chunk).await;
            }
        }
        let written = writer.flush().await?;
        self.progress.send_replace(running(written));
        if size.is_some_and(|s| s != written) {
            return Err(CacheError::UpstreamBody(format!(
                "upstream body ended after {written} bytes"
            )));
        }
        Ok(())
    }

    /// Copies a chunk into the object tier; on failure the upload is
    /// dropped (and so aborted) and the download goes on without it.
    async fn tee_write(&self, tee: &mut Tee, chunk: Bytes) {
        let (Some((_, upload)), Some(objects)) = (tee.as_mut(), &self.inflight.objects) else {
            return;
        };
        let error = match tokio::time::timeout(TEE_WAIT, upload.write(chunk)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(_) => ObjStoreError::Unavailable {
                operation: "upload_part",
                detail: format!("no progress for {TEE_WAIT:?}"),
            },
        };
        objects.failed("upload_part", &error);
        *tee = None;
    }

    /// Completes the object upload and records the blob in the index. The
    /// blob is safely on disk by now: failures here are logged, not fatal.
    async fn record(&self, committed: Committed, mut object_key: Option<String>, tee: Tee) {
        if let (Some((key, upload)), Some(objects)) = (tee, &self.inflight.objects)
            && objects.complete(upload).await
        {
            object_key = Some(key);
        }
        if object_key.is_none() && self.inflight.objects.is_some() {
            count_unstored(ObjectKind::Blob);
        }
        let entry =
            Entry::blob(committed.size, unix_now().as_secs(), object_key).with_crc64nvme(committed.crc64nvme);
        let meta = &self.inflight.meta;
        if let Err(e) = meta
            .propose(Command::PutEntry {
                digest: self.digest.clone(),
                entry,
            })
            .await
        {
            warn!(digest = %self.digest, error = %e, "recording blob in the index failed");
        }
        forget_evicted(meta, committed.evicted).await;
    }
}

/// Discards what a download copied into the object tier.
async fn abort_tee(tee: Tee) {
    if let Some((key, upload)) = tee
        && let Err(e) = upload.abort().await
    {
        warn!(key, error = %e, "aborting the object upload failed; the stale-upload sweep will");
    }
}
