//! The owner's side of peer streaming: blobs and manifests for the other
//! members, read through the same cache and upstreams the HTTP edge uses.

use std::sync::Arc;

use cache::{Body, Cache, CacheError, Remote, Tier};
use futures_util::stream::{self, StreamExt as _};
use oci::{Digest, Reference, RepoName};
use peer::{Answer, LocalContent, ManifestReply, ServeError, ServedBlob};
use upstream::UpstreamError;

use crate::Routes;

/// What this member serves to the others, by upstream name.
pub struct PeerContent {
    pub cache: Arc<Cache>,
    pub routes: Arc<Routes>,
}

impl PeerContent {
    fn remote(&self, upstream: String) -> Result<Arc<Remote>, ServeError> {
        self.routes
            .by_name(&upstream)
            .ok_or(ServeError::UnknownUpstream(upstream))
    }
}

impl LocalContent for PeerContent {
    fn open_blob(
        &self,
        upstream: String,
        repo: RepoName,
        digest: Digest,
        offset: u64,
    ) -> Answer<'_, ServedBlob> {
        Box::pin(async move {
            let remote = self.remote(upstream)?;
            let hit = self
                .cache
                .blob_for_peer(&remote, &repo, &digest, offset)
                .await
                .map_err(serve_error)?;
            let body = match hit.body {
                Body::Full(bytes) => stream::iter([Ok(bytes)]).boxed(),
                Body::Stream(body) => body,
            };
            Ok(ServedBlob { size: hit.size, body })
        })
    }

    fn manifest(&self, upstream: String, repo: RepoName, reference: Reference) -> Answer<'_, ManifestReply> {
        Box::pin(async move {
            let remote = self.remote(upstream)?;
            let hit = self
                .cache
                .manifest_for_peer(&remote, &repo, &reference)
                .await
                .map_err(serve_error)?;
            Ok(ManifestReply {
                stale: hit.tier == Tier::Stale,
                digest: hit.digest,
                media_type: hit.media_type,
                bytes: hit.bytes,
            })
        })
    }
}

fn serve_error(e: CacheError) -> ServeError {
    match e {
        CacheError::Upstream(UpstreamError::NotFound) => ServeError::NotFound,
        CacheError::RangeNotSatisfiable { size } => ServeError::OutOfRange { size },
        other => ServeError::Failed(other.to_string()),
    }
}
