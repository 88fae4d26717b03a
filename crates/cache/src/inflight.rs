use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures_util::{FutureExt as _, StreamExt};
use meta::{Command, Entry, EntryKind, Meta};
use oci::{Digest, RepoName};
use store::{BlobWriter, DiskStore, StoreError};
use tokio::sync::watch;
use tracing::{debug, warn};
use upstream::Upstream;

use crate::{BodyStream, CacheError, body, forget_evicted, unix_now};

/// Writes are batched up to this size: fewer trips to the blocking pool.
const WRITE_BATCH: u64 = 256 * 1024;

/// Progress of one upstream download, published to every follower.
#[derive(Clone, Debug)]
pub(crate) enum Progress {
    /// Waiting for the upstream's response headers.
    Starting,
    Running {
        size: Option<u64>,
        written: u64,
    },
    /// Verified and committed to the disk tier.
    Done {
        size: u64,
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
}

/// The downloads under way, by digest.
pub(crate) struct Inflight {
    downloads: Mutex<HashMap<Digest, Arc<Download>>>,
    meta: Arc<Meta>,
}

impl Inflight {
    pub(crate) fn new(meta: Arc<Meta>) -> Self {
        Inflight {
            downloads: Mutex::new(HashMap::new()),
            meta,
        }
    }

    /// Joins the download of `digest`, or starts one. `None` when the disk
    /// tier has it after all (a download committed since the caller looked):
    /// the check happens under the map's lock and a download is committed
    /// before it leaves the map, so no digest is ever fetched twice at once.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        disk: &DiskStore,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
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
        let download = Arc::new(Download {
            file: writer.file(),
            progress: rx,
        });
        downloads.insert(digest.clone(), Arc::clone(&download));
        drop(downloads);
        let task = Fetch {
            inflight: Arc::clone(self),
            upstream: upstream.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            progress: tx,
        };
        tokio::spawn(task.run(writer));
        Ok(Some((download, false)))
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
    progress: watch::Sender<Progress>,
}

impl Fetch {
    async fn run(self, writer: BlobWriter) {
        let outcome = self.fetch(writer).await;
        let final_state = match outcome {
            Ok(size) => {
                debug!(upstream = self.upstream.name(), digest = %self.digest, size, "blob cached");
                Progress::Done { size }
            }
            Err(e) => {
                // Bytes that fail verification are the upstream's fault: a
                // bad gateway (502) for the client, not an internal error.
                let e = match e {
                    CacheError::Store(mismatch @ StoreError::DigestMismatch { .. }) => {
                        metrics::counter!("regcache_digest_mismatch_total", "upstream" => self.upstream.name().to_owned())
                            .increment(1);
                        CacheError::UpstreamBody(mismatch.to_string())
                    }
                    other => other,
                };
                warn!(upstream = self.upstream.name(), repo = %self.repo, digest = %self.digest, error = %e, "blob download failed");
                Progress::Failed(Arc::new(e))
            }
        };
        // Leave the map first: a request arriving after the outcome is
        // published must find the disk tier (success) or start afresh
        // (failure), never join a finished download.
        self.inflight.lock().remove(&self.digest);
        self.progress.send_replace(final_state);
    }

    async fn fetch(&self, mut writer: BlobWriter) -> Result<u64, CacheError> {
        let blob = self.upstream.get_blob(&self.repo, &self.digest).await?;
        let size = blob.size;
        self.progress.send_replace(Progress::Running { size, written: 0 });
        let mut body = blob.body;
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk?;
            // Coalesce what has already arrived into one write.
            if (chunk.len() as u64) < WRITE_BATCH {
                let mut batch = BytesMut::from(chunk);
                while (batch.len() as u64) < WRITE_BATCH {
                    match body.next().now_or_never() {
                        Some(Some(more)) => batch.extend_from_slice(&more?),
                        _ => break,
                    }
                }
                chunk = batch.freeze();
            }
            let written = writer.append(chunk).await?;
            if size.is_some_and(|s| written > s) {
                return Err(CacheError::UpstreamBody(
                    "upstream sent more bytes than announced".into(),
                ));
            }
            self.progress.send_replace(Progress::Running { size, written });
        }
        let written = writer.written();
        if size.is_some_and(|s| s != written) {
            return Err(CacheError::UpstreamBody(format!(
                "upstream body ended after {written} bytes"
            )));
        }
        let committed = writer.commit().await?;
        let entry = Entry {
            size: committed.size,
            kind: EntryKind::Blob,
            media_type: None,
            refs: Vec::new(),
            last_access: unix_now().as_secs(),
            object_key: None,
        };
        let meta = &self.inflight.meta;
        // The blob is safely on disk: a failed index write is logged, not fatal.
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
        Ok(committed.size)
    }
}

impl Download {
    /// Waits until the blob's total size is known.
    pub(crate) async fn size(&self) -> Result<u64, CacheError> {
        self.until(|progress| match progress {
            Progress::Running { size: Some(size), .. } | Progress::Done { size } => Some(Ok(*size)),
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

    /// Waits until more than `pos` bytes may be read; returns how many may.
    pub(crate) async fn wait_past(&self, pos: u64) -> std::io::Result<u64> {
        self.until(|progress| match progress {
            Progress::Running { written, size } if visible(*written, *size) > pos => {
                Some(Ok(visible(*written, *size)))
            }
            Progress::Done { size } if *size > pos => Some(Ok(*size)),
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
