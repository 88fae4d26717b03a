use std::sync::Arc;

use objstore::ObjectKind;
use oci::{ByteRange, Digest, RepoName};
use store::MemoryObject;

use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::body::{counted, kept_recent, mapped_range};
use crate::disk_fill::DiskFill;
use crate::inflight::{BytesFrom, Joined, Origin};
use crate::object_read::{self, Check};
use crate::{Body, Cache, CacheError, Remote, Tier, Via};

/// A range starting this far past what a copy from the object tier has
/// written is read from the object tier directly instead of waiting.
const RANGE_READ_AHEAD: u64 = 4 << 20;

/// A blob ready to send: `size` is the whole blob's, `span` the half-open
/// byte range sent when the request had a satisfiable Range.
pub struct BlobHit {
    pub size: u64,
    pub span: Option<(u64, u64)>,
    pub body: Body,
    pub tier: Tier,
}

impl Cache {
    /// Serves a blob from the fastest tier, else joins or starts its download.
    pub async fn blob(
        &self,
        src: &Remote,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobHit, CacheError> {
        let hit = self.blob_from_tiers(src, repo, digest, range, Via::Owner).await?;
        self.meta.record_access(digest);
        crate::telemetry::request("blob", hit.tier);
        let body = kept_recent(hit.body, Arc::clone(&self.meta), digest.clone());
        Ok(BlobHit {
            body: counted(body, hit.tier),
            ..hit
        })
    }

    /// Serves the blob from `offset` on to another member that asked this
    /// one, its owner: from the tiers, else from the download it joins or
    /// starts from the upstream, never through a third member. Not counted
    /// as an access: the asking member notes its clients' accesses.
    pub async fn blob_for_peer(
        &self,
        src: &Remote,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobHit, CacheError> {
        let range = (offset > 0).then_some(ByteRange::From(offset));
        self.blob_from_tiers(src, repo, digest, range, Via::Upstream)
            .await
    }

    /// `via`: how a download started here reaches the upstream.
    async fn blob_from_tiers(
        &self,
        src: &Remote,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
        via: Via,
    ) -> Result<BlobHit, CacheError> {
        if let Some(object) = self.memory.get(digest).await {
            self.disk.touch(digest);
            return from_bytes(object.bytes, range, Tier::Memory);
        }
        // Twice at most: a download may commit between the disk lookup and
        // joining it, and then the disk has it.
        for _ in 0..2 {
            if let Some(hit) = self.blob_from_disk(digest, range).await? {
                return Ok(hit);
            }
            // A response streaming it from the object tier already: copy
            // it to disk now and follow that copy.
            let streaming = self.object_streams.key(digest);
            if streaming.is_none()
                && !self.inflight.is_running(digest)
                && let Some(hit) = self.blob_from_objects(src, repo, digest, range).await?
            {
                return Ok(hit);
            }
            let origin = streaming.map_or(Origin::Upstream(via), Origin::Object);
            let joined = self
                .inflight
                .join_or_start(&self.disk, &src.upstream, repo, digest, origin)?;
            let (download, joined) = match joined {
                Joined::Running(download) => (download, true),
                Joined::Started(download) => (download, false),
                Joined::OnDisk => continue,
            };
            let (size, from) = download.size().await?;
            let (start, end) = span_of(range, size)?;
            let span = range.map(|_| (start, end));
            if let BytesFrom::Object(key) = &from
                && start > download.readable().saturating_add(RANGE_READ_AHEAD)
                && let Some(body) = self.ranged_object(key, start, end).await
            {
                return Ok(BlobHit {
                    size,
                    span,
                    body,
                    tier: Tier::Object,
                });
            }
            return Ok(BlobHit {
                size,
                span,
                body: Body::Stream(download.follow(start, end)),
                tier: match (joined, from) {
                    (true, _) => Tier::Inflight,
                    (false, BytesFrom::Object(_)) => Tier::Object,
                    (false, BytesFrom::Peer(_)) => Tier::Peer,
                    (false, BytesFrom::Upstream) => Tier::Upstream,
                },
            });
        }
        Err(CacheError::Vanished {
            digest: digest.clone(),
        })
    }

    /// Streams the blob (or its range) straight from the object tier when
    /// it has it; the local disk copy starts when the response ends.
    async fn blob_from_objects(
        &self,
        src: &Remote,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobHit>, CacheError> {
        let Some(objects) = &self.objects else {
            return Ok(None);
        };
        let entry = self.meta.entry(digest)?;
        let hint = entry.as_ref().and_then(|e| e.object_key.clone());
        let fill = |key: &str| DiskFill::new(self, &src.upstream, repo, digest, key);
        let Some(range) = range else {
            let Some((key, body)) = objects.open(ObjectKind::Blob, digest, hint).await else {
                return Ok(None);
            };
            let size = body.len();
            let check = Check::new(digest, entry.and_then(|e| e.crc64nvme));
            let fill = fill(&key);
            return Ok(Some(BlobHit {
                size,
                span: None,
                body: Body::Stream(object_read::stream(objects, key, body, 0, Some(check), fill)),
                tier: Tier::Object,
            }));
        };
        let located = match hint.zip(entry.map(|e| e.size)) {
            Some(indexed) => Some(indexed),
            None => objects
                .newest(ObjectKind::Blob, digest)
                .await
                .map(|o| (o.key, o.size)),
        };
        let Some((key, size)) = located else {
            return Ok(None);
        };
        let (start, end) = span_of(Some(range), size)?;
        let Some(body) = objects.get(&key, Some((start, end))).await else {
            return Ok(None);
        };
        let fill = fill(&key);
        Ok(Some(BlobHit {
            size,
            span: Some((start, end)),
            body: Body::Stream(object_read::stream(objects, key, body, start, None, fill)),
            tier: Tier::Object,
        }))
    }

    /// `[start, end)` straight from the object tier, for a range the local
    /// copy under way has not reached yet.
    async fn ranged_object(&self, key: &str, start: u64, end: u64) -> Option<Body> {
        let objects = self.objects.as_ref()?;
        let body = objects.get(key, Some((start, end))).await?;
        let body = objects.watched(body).map_err(std::io::Error::other);
        Some(Body::Stream(body.boxed()))
    }

    async fn blob_from_disk(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobHit>, CacheError> {
        let Some(blob) = self.disk.open_blob(digest)? else {
            return Ok(None);
        };
        let size = blob.size();
        if self.memory.admits(size) {
            let bytes = blob.read_all().await.map_err(|source| CacheError::LocalIo {
                digest: digest.clone(),
                source,
            })?;
            let object = MemoryObject {
                bytes: bytes.clone(),
                media_type: None,
            };
            self.memory.insert(digest.clone(), object).await;
            return from_bytes(bytes, range, Tier::Disk).map(Some);
        }
        let (start, end) = span_of(range, size)?;
        Ok(Some(BlobHit {
            size,
            span: range.map(|_| (start, end)),
            body: Body::Stream(mapped_range(blob, start, end)),
            tier: Tier::Disk,
        }))
    }
}

fn span_of(range: Option<ByteRange>, size: u64) -> Result<(u64, u64), CacheError> {
    match range {
        None => Ok((0, size)),
        Some(r) => r.resolve(size).ok_or(CacheError::RangeNotSatisfiable { size }),
    }
}

fn from_bytes(bytes: bytes::Bytes, range: Option<ByteRange>, tier: Tier) -> Result<BlobHit, CacheError> {
    let size = bytes.len() as u64;
    let (start, end) = span_of(range, size)?;
    Ok(BlobHit {
        size,
        span: range.map(|_| (start, end)),
        body: Body::Full(bytes.slice(start as usize..end as usize)),
        tier,
    })
}
