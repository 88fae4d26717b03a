//! A download from the digest's owner: another member streams the one
//! upstream download it runs, and this member checks the digest itself.
//! Whatever goes wrong with the owner, the bytes come from the upstream
//! instead: before the first byte, through the usual upstream path (which
//! also stores the object); mid-stream, from the offset reached, so the
//! clients following this download only see a pause.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use peer::{Owner, PeerError, Peers};
use store::{BlobWriter, StoreError};
use tracing::debug;
use upstream::UpstreamError;

use crate::CacheError;
use crate::fetch::{Fetch, Fetched};
use crate::inflight::BytesFrom;

/// What the owner's stream gave.
pub(crate) struct FromOwner {
    owner: Owner,
    /// The owner failed mid-stream and the rest came from the upstream.
    switched: bool,
}

impl Fetch {
    /// Copies the blob from its owner when another member owns it. `None`
    /// when this member owns it, or the owner could not start streaming:
    /// then the caller fetches from the upstream.
    pub(crate) async fn copy_from_owner(
        &self,
        writer: &mut BlobWriter,
    ) -> Result<Option<FromOwner>, CacheError> {
        let Some(peers) = &self.inflight.peers else {
            return Ok(None);
        };
        let Some(owner) = peers.owner_of(self.digest.to_string().as_bytes()) else {
            return Ok(None);
        };
        let blob = peers
            .fetch_blob(&owner, self.upstream.name(), &self.repo, &self.digest, 0)
            .await;
        let blob = match blob {
            Ok(blob) => blob,
            // The owner asked the same upstream: asking again is no better.
            Err(PeerError::NotFound { .. }) => return Err(UpstreamError::NotFound.into()),
            Err(e) => {
                peers.fell_back(&owner, &e);
                return Ok(None);
            }
        };
        debug!(digest = %self.digest, peer = owner.id, size = blob.size, "streaming a blob from its owner");
        let switched = Arc::new(AtomicBool::new(false));
        let body = self.or_upstream(peers, &owner, blob.body, Arc::clone(&switched));
        self.copy(
            writer,
            Some(blob.size),
            BytesFrom::Peer(owner.id),
            body,
            &mut None,
        )
        .await?;
        Ok(Some(FromOwner {
            owner,
            switched: switched.load(Ordering::Relaxed),
        }))
    }

    /// Verifies what the owner sent. Bytes that fail the digest are never
    /// kept or completed to a client, and that owner is not asked again
    /// for a while, so the next request fetches elsewhere.
    pub(crate) async fn owner_verified(
        &self,
        writer: BlobWriter,
        from_owner: FromOwner,
    ) -> Result<Fetched, CacheError> {
        let verified = writer.verify().await;
        if let (Err(StoreError::DigestMismatch { .. }), false, Some(peers)) =
            (&verified, from_owner.switched, &self.inflight.peers)
        {
            peers.distrust(&from_owner.owner);
        }
        Ok(Fetched {
            verified: verified?,
            object_key: None,
            // Partly from the upstream: this member records it itself.
            from: match from_owner.switched {
                true => BytesFrom::Upstream,
                false => BytesFrom::Peer(from_owner.owner.id),
            },
        })
    }

    /// The owner's bytes until they fail, then the upstream's from there.
    fn or_upstream(
        &self,
        peers: &Arc<Peers>,
        owner: &Owner,
        body: BoxStream<'static, Result<Bytes, PeerError>>,
        switched: Arc<AtomicBool>,
    ) -> BoxStream<'static, Result<Bytes, CacheError>> {
        let resume = Resume {
            peers: Arc::clone(peers),
            owner: owner.clone(),
            upstream: self.upstream.clone(),
            repo: self.repo.clone(),
            digest: self.digest.clone(),
            switched,
        };
        let state = (Source::Owner(body), 0u64, Some(resume));
        stream::try_unfold(state, |(mut source, mut position, mut resume)| async move {
            loop {
                let next = match &mut source {
                    Source::Owner(body) => match body.next().await {
                        Some(Err(e)) => {
                            let Some(resume) = resume.take() else {
                                return Err(CacheError::UpstreamBody(e.to_string()));
                            };
                            source = Source::Upstream(resume.upstream_from(position, &e).await?);
                            continue;
                        }
                        other => {
                            other.map(|chunk| chunk.map_err(|e| CacheError::UpstreamBody(e.to_string())))
                        }
                    },
                    Source::Upstream(body) => body.next().await,
                };
                let Some(chunk) = next else {
                    return Ok(None);
                };
                let chunk = chunk?;
                position += chunk.len() as u64;
                return Ok(Some((chunk, (source, position, resume))));
            }
        })
        .boxed()
    }
}

enum Source {
    Owner(BoxStream<'static, Result<Bytes, PeerError>>),
    Upstream(BoxStream<'static, Result<Bytes, CacheError>>),
}

/// What it takes to go on from the upstream where the owner stopped.
struct Resume {
    peers: Arc<Peers>,
    owner: Owner,
    upstream: upstream::Upstream,
    repo: oci::RepoName,
    digest: oci::Digest,
    switched: Arc<AtomicBool>,
}

impl Resume {
    async fn upstream_from(
        self,
        position: u64,
        error: &PeerError,
    ) -> Result<BoxStream<'static, Result<Bytes, CacheError>>, CacheError> {
        self.peers.fell_back(&self.owner, error);
        self.switched.store(true, Ordering::Relaxed);
        let blob = self
            .upstream
            .get_blob_from(&self.repo, &self.digest, position)
            .await?;
        Ok(blob.body.map_err(CacheError::from).boxed())
    }
}
