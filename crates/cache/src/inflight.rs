use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt, TryStreamExt as _};
use meta::{Command, Entry, Meta};
use objstore::{MultipartWriter, ObjStoreError, ObjectKind};
use oci::{Digest, RepoName};
use store::{BlobWriter, Committed, DiskStore, StoreError, Verified};
use tokio::sync::watch;
use tracing::{debug, warn};
use upstream::Upstream;

use crate::objects::{Objects, count_unstored};
use crate::recent::RecentChunks;
use crate::{BodyStream, CacheError, body, forget_evicted, unix_now};

/// Chunks are batched up to this size: fewer trips to the blocking pool.
const WRITE_BATCH: u64 = 256 * 1024;
/// How long one chunk may wait for the object store before the download
/// stops storing there: a stalled store must not stall the clients.
const TEE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a download's bytes come from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    Upstream,
    /// The object tier, under this key (another replica stored it).
    Object(Arc<str>),
}

/// Progress of one upstream download, published to every follower.
#[derive(Clone, Debug)]
pub(crate) enum Progress {
    /// Waiting for the upstream's response headers.
    Starting,
    Running {
        size: Option<u64>,
        written: u64,
        origin: Origin,
    },
    /// Every byte written and verified (being made durable and put in place).
    Done {
        size: u64,
        origin: Origin,
    },
    Failed(Arc<CacheError>),
}

/// One upstream fetch of a blob, shared by every request for that digest on
/// this replica. The bytes go to a temp file; followers read that file with
/// positional reads up to the published length, so memory stays flat however
/// many clients follow and however large the blob.
pub(crate) struct Download {
    file: Arc<std::fs::File>,
    progress: watch::Receiver<Progress>,
    recent: Arc<RecentChunks>,
}

/// The downloads under way, by digest.
pub(crate) struct Inflight {
    downloads: Mutex<HashMap<Digest, Arc<Download>>>,
    meta: Arc<Meta>,
    objects: Option<Arc<Objects>>,
}

impl Inflight {
    pub(crate) fn new(meta: Arc<Meta>, objects: Option<Arc<Objects>>) -> Self {
        Inflight {
            downloads: Mutex::new(HashMap::new()),
            meta,
            objects,
        }
    }

    /// Whether a download of `digest` is under way.
    pub(crate) fn is_running(&self, digest: &Digest) -> bool {
        self.lock().contains_key(digest)
    }

    /// Joins the download of `digest`, or starts one: a copy of the object
    /// tier's `object` when given, else a fetch from the upstream (teed into
    /// the object tier). `None` when the disk tier has it after all (a
    /// download committed since the caller looked): the check happens under
    /// the map's lock and a download is committed before it leaves the map,
    /// so no digest is ever fetched twice at once.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        disk: &DiskStore,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        object: Option<String>,
    ) -> Result<Option<(Arc<Download>, bool)>, CacheError> {
        let mut downloads = self.lock();
        if let Some(d) = downloads.get(digest) {
            return Ok(Some((Arc::clone(d), true)));
        }
        if disk.size_of(digest).is_some() {
            return Ok(None);
        }
        let writer = disk.writer(digest)?;
        let (tx, rx) = watch::channel(Progress::Starting);
        let recent = Arc::new(RecentChunks::default());
        let download = Arc::new(Download {
            file: writer.file(),
            progress: rx,
            recent: Arc::clone(&recent),
        });
        downloads.insert(digest.clone(), Arc::clone(&download));
        drop(downloads);
        let task = Fetch {
            inflight: Arc::clone(self),
            upstream: upstream.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            object,
            progress: tx,
            recent,
        };
        tokio::spawn(task.run(writer));
        Ok(Some((download, false)))
    }

    /// How many downloads are under way (or being made durable).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Download>>> {
        self.downloads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The task that owns a download. It runs to the end even when every client
/// has gone: the cache itself still wants the blob.
struct Fetch {
    inflight: Arc<Inflight>,
    upstream: Upstream,
    repo: RepoName,
    digest: Digest,
    /// The object tier's copy to read, instead of the upstream.
    object: Option<String>,
    progress: watch::Sender<Progress>,
    recent: Arc<RecentChunks>,
}

/// A verified blob in its temp file, and where the object tier has it.
struct Fetched {
    verified: Verified,
    object_key: Option<String>,
}

/// A download being copied into the object tier as it arrives.
type Tee = Option<(String, MultipartWriter)>;

impl Fetch {
    async fn run(self, writer: BlobWriter) {
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
                metrics::counter!("regcache_digest_mismatch_total", "upstream" => self.upstream.name().to_owned())
                    .increment(1);
                CacheError::UpstreamBody(mismatch.to_string())
            }
            other => other,
        };
        warn!(upstream = self.upstream.name(), repo = %self.repo, digest = %self.digest, error = %e, "blob download failed");
        // Leave the map first: a request arriving after the failure is
        // published must start afresh, never join this download.
        self.inflight.lock().remove(&self.digest);
        self.progress.send_replace(Progress::Failed(Arc::new(e)));
    }

    /// Releases the verified blob to its readers, then makes it durable,
    /// puts it in place and records it (the fsync is not on the clients'
    /// path), and only then leaves the map: a request arriving later finds
    /// the disk tier, and shutdown waits for all of it.
    async fn keep(&self, fetched: Fetched, tee: Tee) {
        let size = fetched.verified.size();
        let origin = match &fetched.object_key {
            Some(key) => Origin::Object(Arc::from(key.as_str())),
            None => Origin::Upstream,
        };
        self.progress.send_replace(Progress::Done { size, origin });
        match fetched.verified.persist().await {
            Ok(committed) => {
                debug!(upstream = self.upstream.name(), digest = %self.digest, size, "blob cached");
                self.record(committed, fetched.object_key, tee).await;
            }
            Err(e) => {
                warn!(digest = %self.digest, error = %e, "keeping a verified blob on disk failed");
                abort_tee(tee).await;
            }
        }
        self.inflight.lock().remove(&self.digest);
    }

    /// Copies the blob to local disk from the object tier's `object` when
    /// given, else from the upstream while teeing it into the object tier;
    /// commits it to disk once verified.
    async fn fetch(&self, mut writer: BlobWriter, tee: &mut Tee) -> Result<Fetched, CacheError> {
        let objects = self.inflight.objects.as_ref();
        if let (Some(objects), Some(hint)) = (objects, &self.object) {
            return self.copy_object(writer, objects, hint).await;
        }
        *tee = objects.and_then(|o| o.upload(ObjectKind::Blob, &self.digest));
        let blob = self.upstream.get_blob(&self.repo, &self.digest).await?;
        let body = blob.body.map_err(CacheError::from).boxed();
        self.copy(&mut writer, blob.size, Origin::Upstream, body, tee)
            .await?;
        Ok(Fetched {
            verified: writer.verify().await?,
            object_key: None,
        })
    }

    /// The object tier's copy, verified against the digest (and deleted if
    /// it does not match). Never the upstream: a copy whose object vanished
    /// simply does not happen.
    async fn copy_object(
        &self,
        mut writer: BlobWriter,
        objects: &Arc<Objects>,
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
        let origin = Origin::Object(Arc::from(key.as_str()));
        let copied = match self.copy(&mut writer, Some(size), origin, body, &mut None).await {
            Ok(()) => writer.verify().await.map_err(CacheError::from),
            Err(e) => Err(e),
        };
        if let Err(CacheError::Store(StoreError::DigestMismatch { .. })) = &copied {
            // Whole but wrong: no request may ever be served it again.
            objects.discard_corrupt(&key).await;
        }
        Ok(Fetched {
            verified: copied?,
            object_key: Some(key),
        })
    }

    /// Writes `body` to the temp file (and `tee`), publishing progress.
    async fn copy(
        &self,
        writer: &mut BlobWriter,
        size: Option<u64>,
        origin: Origin,
        mut body: BoxStream<'static, Result<Bytes, CacheError>>,
        tee: &mut Tee,
    ) -> Result<(), CacheError> {
        let running = |written| Progress::Running {
            size,
            written,
            origin: origin.clone(),
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

impl Download {
    /// Waits until the blob's total size is known. Also returns the object
    /// key when the bytes come from the object tier: a range far ahead of
    /// the download is better read from there directly.
    pub(crate) async fn size(&self) -> Result<(u64, Option<Arc<str>>), CacheError> {
        self.until(|progress| match progress {
            Progress::Running {
                size: Some(size),
                origin,
                ..
            }
            | Progress::Done { size, origin } => {
                let key = match origin {
                    Origin::Object(key) => Some(Arc::clone(key)),
                    Origin::Upstream => None,
                };
                Some(Ok((*size, key)))
            }
            Progress::Failed(e) => Some(Err(CacheError::Download(Arc::clone(e)))),
            Progress::Starting | Progress::Running { size: None, .. } => None,
        })
        .await
        .unwrap_or_else(|| Err(CacheError::UpstreamBody("download task ended".into())))
    }

    /// Streams `[start, end)` of the blob as the download provides it. The
    /// stream ends with an error if the download fails, so a client never
    /// mistakes unverified bytes for a complete blob.
    pub(crate) fn follow(self: Arc<Self>, start: u64, end: u64) -> BodyStream {
        body::file_range(Arc::clone(&self.file), start, end, Some(self))
    }

    /// Bytes from `pos` up to `limit` if they are among the newest chunks.
    pub(crate) fn recent(&self, pos: u64, limit: u64) -> Option<bytes::Bytes> {
        self.recent.slice(pos, limit)
    }

    /// How many bytes followers may read right now.
    pub(crate) fn readable(&self) -> u64 {
        match &*self.progress.borrow() {
            Progress::Running { written, size, .. } => visible(*written, *size),
            Progress::Done { size, .. } => *size,
            Progress::Starting | Progress::Failed(_) => 0,
        }
    }

    /// Waits until more than `pos` bytes may be read; returns how many may.
    pub(crate) async fn wait_past(&self, pos: u64) -> std::io::Result<u64> {
        self.until(|progress| match progress {
            Progress::Running { written, size, .. } if visible(*written, *size) > pos => {
                Some(Ok(visible(*written, *size)))
            }
            Progress::Done { size, .. } if *size > pos => Some(Ok(*size)),
            Progress::Done { .. } => Some(Err(std::io::Error::other("blob shorter than announced"))),
            Progress::Failed(e) => Some(Err(std::io::Error::other(format!(
                "upstream download failed: {e}"
            )))),
            Progress::Starting | Progress::Running { .. } => None,
        })
        .await
        .unwrap_or_else(|| Err(std::io::Error::other("download task ended")))
    }

    /// Waits until `outcome` maps the published progress to a value; `None`
    /// when the task ended without publishing one (it panicked).
    async fn until<T>(&self, mut outcome: impl FnMut(&Progress) -> Option<T>) -> Option<T> {
        let mut rx = self.progress.clone();
        let mut found = None;
        rx.wait_for(|progress| {
            found = outcome(progress);
            found.is_some()
        })
        .await
        .ok()?;
        found
    }
}

/// How much of a running download followers may read: everything written
/// except the blob's last byte, which is released only once the digest is
/// verified. So a response that ends at the blob's end never completes with
/// unverified content: on a mismatch it ends with an error instead.
fn visible(written: u64, size: Option<u64>) -> u64 {
    size.map_or(written, |s| written.min(s.saturating_sub(1)))
}
