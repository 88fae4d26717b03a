//! The downloads under way on this replica, one per digest, and the
//! follower side every request for that digest reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use meta::Meta;
use oci::{Digest, RepoName};
use peer::Peers;
use store::DiskStore;
use tokio::sync::watch;
use upstream::Upstream;

use crate::fetch::Fetch;
use crate::object_tier::ObjectTier;
use crate::recent::RecentChunks;
use crate::{BodyStream, CacheError, Via, body};

/// Where a download's bytes come from.
#[derive(Clone, Debug)]
pub(crate) enum BytesFrom {
    Upstream,
    /// The object tier, under this key (another replica stored it).
    Object(Arc<str>),
    /// The digest's owner, this member (by id), streaming its download.
    Peer(u64),
}

/// Where a download is to get its bytes.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// The object tier's copy under this key.
    Object(String),
    Upstream(Via),
}

/// Progress of one upstream download, published to every follower.
#[derive(Clone, Debug)]
pub(crate) enum Progress {
    /// Waiting for the upstream's response headers.
    Starting,
    Running {
        size: Option<u64>,
        written: u64,
        from: BytesFrom,
    },
    /// Every byte written and verified (being made durable and put in place).
    Done {
        size: u64,
        from: BytesFrom,
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
    /// What it fetches, for `/status.json`.
    upstream: String,
    repo: RepoName,
    started: std::time::Instant,
}

/// One download under way, as `/status.json` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct DownloadStatus {
    pub digest: String,
    pub upstream: String,
    pub repo: String,
    /// `upstream`, `object` (a copy of another replica's object) or `peer`
    /// (streamed from the digest's owner).
    pub source: &'static str,
    /// The owner streaming it, when `source` is `peer`.
    pub peer: Option<u64>,
    /// `starting`, `running` or `done` (being made durable).
    pub state: &'static str,
    /// The blob's size, once announced.
    pub size: Option<u64>,
    pub written: u64,
    pub seconds: f64,
}

/// The downloads under way, by digest.
pub(crate) struct Inflight {
    downloads: Mutex<HashMap<Digest, Arc<Download>>>,
    pub(crate) meta: Arc<Meta>,
    pub(crate) objects: Option<Arc<ObjectTier>>,
    /// The other members, when this one is part of a cluster.
    pub(crate) peers: Option<Arc<Peers>>,
}

/// What [`Inflight::join_or_start`] found.
pub(crate) enum Joined {
    /// A download another request started, under way.
    Running(Arc<Download>),
    /// A download this call started.
    Started(Arc<Download>),
    /// None: the disk tier has the blob after all (a download committed
    /// since the caller looked).
    OnDisk,
}

impl Inflight {
    pub(crate) fn new(meta: Arc<Meta>, objects: Option<Arc<ObjectTier>>, peers: Option<Arc<Peers>>) -> Self {
        Inflight {
            downloads: Mutex::new(HashMap::new()),
            meta,
            objects,
            peers,
        }
    }

    /// Whether a download of `digest` is under way.
    pub(crate) fn is_running(&self, digest: &Digest) -> bool {
        self.lock().contains_key(digest)
    }

    /// Joins the download of `digest`, or starts one from `origin`. The disk check happens under the map's lock and a
    /// download is committed before it leaves the map, so no digest is ever
    /// fetched twice at once.
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        disk: &DiskStore,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        origin: Origin,
    ) -> Result<Joined, CacheError> {
        let mut downloads = self.lock();
        if let Some(d) = downloads.get(digest) {
            return Ok(Joined::Running(Arc::clone(d)));
        }
        if disk.size_of(digest).is_some() {
            return Ok(Joined::OnDisk);
        }
        let writer = disk.writer(digest)?;
        let (tx, rx) = watch::channel(Progress::Starting);
        let recent = Arc::new(RecentChunks::default());
        let download = Arc::new(Download {
            file: writer.file(),
            progress: rx,
            recent: Arc::clone(&recent),
            upstream: upstream.name().to_owned(),
            repo: repo.clone(),
            started: std::time::Instant::now(),
        });
        downloads.insert(digest.clone(), Arc::clone(&download));
        drop(downloads);
        let task = Fetch {
            inflight: Arc::clone(self),
            upstream: upstream.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            origin,
            progress: tx,
            recent,
        };
        tokio::spawn(task.run(writer));
        Ok(Joined::Started(download))
    }

    /// How many downloads are under way (or being made durable).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The downloads under way, by digest.
    pub(crate) fn statuses(&self) -> Vec<DownloadStatus> {
        let mut statuses: Vec<DownloadStatus> = self
            .lock()
            .iter()
            .map(|(digest, download)| download.status(digest))
            .collect();
        statuses.sort_by(|a, b| a.digest.cmp(&b.digest));
        statuses
    }

    /// Takes `digest`'s download out of the map: a request arriving later
    /// starts afresh or finds the disk tier.
    pub(crate) fn remove(&self, digest: &Digest) {
        self.lock().remove(digest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Download>>> {
        self.downloads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Download {
    fn status(&self, digest: &Digest) -> DownloadStatus {
        let (state, size, written, from) = match &*self.progress.borrow() {
            Progress::Starting | Progress::Failed(_) => ("starting", None, 0, None),
            Progress::Running { size, written, from } => ("running", *size, *written, Some(from.clone())),
            Progress::Done { size, from } => ("done", Some(*size), *size, Some(from.clone())),
        };
        DownloadStatus {
            digest: digest.to_string(),
            upstream: self.upstream.clone(),
            repo: self.repo.to_string(),
            source: match from {
                Some(BytesFrom::Object(_)) => "object",
                Some(BytesFrom::Peer(_)) => "peer",
                _ => "upstream",
            },
            peer: match from {
                Some(BytesFrom::Peer(id)) => Some(id),
                _ => None,
            },
            state,
            size,
            written,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Waits until the blob's total size is known. Also returns where the
    /// bytes come from: a range far ahead of a copy from the object tier is
    /// better read from there directly.
    pub(crate) async fn size(&self) -> Result<(u64, BytesFrom), CacheError> {
        self.until(|progress| match progress {
            Progress::Running {
                size: Some(size),
                from,
                ..
            }
            | Progress::Done { size, from } => Some(Ok((*size, from.clone()))),
            Progress::Failed(e) => Some(Err(CacheError::Download(Arc::clone(e)))),
            Progress::Starting | Progress::Running { size: None, .. } => None,
        })
        .await
        .unwrap_or(Err(CacheError::DownloadAborted))
    }

    /// Streams `[start, end)` of the blob as the download provides it. The
    /// stream ends with an error if the download fails, so a client never
    /// mistakes unverified bytes for a complete blob.
    pub(crate) fn follow(self: Arc<Self>, start: u64, end: u64) -> BodyStream {
        body::file_range(Arc::clone(&self.file), start, end, self)
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
