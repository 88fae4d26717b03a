//! The owner's side of peer streaming: blobs for the other members, read
//! through the same cache and upstreams the HTTP edge uses.

use std::pin::Pin;
use std::sync::Arc;

use cache::{Body, Cache, CacheError};
use futures_util::stream::{self, StreamExt as _};
use oci::{Digest, RepoName};
use peer::{BlobSource, ServeError, ServedBlob};
use upstream::UpstreamError;

use crate::Routes;

/// Blobs for other members, by upstream name.
pub struct PeerBlobs {
    pub cache: Arc<Cache>,
    pub routes: Arc<Routes>,
}

impl BlobSource for PeerBlobs {
    fn open_blob(
        &self,
        upstream: String,
        repo: RepoName,
        digest: Digest,
        offset: u64,
    ) -> Pin<Box<dyn Future<Output = Result<ServedBlob, ServeError>> + Send + '_>> {
        Box::pin(async move {
            let remote = self
                .routes
                .by_name(&upstream)
                .ok_or(ServeError::UnknownUpstream(upstream))?;
            let hit = self
                .cache
                .blob_for_peer(&remote, &repo, &digest, offset)
                .await
                .map_err(|e| match e {
                    CacheError::Upstream(UpstreamError::NotFound) => ServeError::NotFound,
                    CacheError::RangeNotSatisfiable { size } => ServeError::OutOfRange { size },
                    other => ServeError::Failed(other.to_string()),
                })?;
            let body = match hit.body {
                Body::Full(bytes) => stream::iter([Ok(bytes)]).boxed(),
                Body::Stream(body) => body,
            };
            Ok(ServedBlob { size: hit.size, body })
        })
    }
}
