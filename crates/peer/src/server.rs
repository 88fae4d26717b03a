//! The owner's side: serves a blob or a manifest to the member that asked,
//! from its own tiers or from the download it joins or starts.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt as _};
use oci::{Digest, Reference, RepoName};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::pb::blob_chunk::Part;
use crate::pb::peer_server::{Peer, PeerServer};
use crate::pb::{BlobChunk, FetchBlobRequest, FetchManifestRequest, Manifest};
use crate::{CHUNK_BYTES, MAX_MESSAGE_BYTES, telemetry};

/// A blob ready to stream to a peer: `size` is the whole blob's, `body`
/// the bytes from the requested offset on.
pub struct ServedBlob {
    pub size: u64,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Why the owner cannot serve a blob.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("upstream {0:?} is not configured here")]
    UnknownUpstream(String),
    #[error("not found upstream")]
    NotFound,
    #[error("offset is past the end of a {size}-byte blob")]
    OutOfRange { size: u64 },
    #[error("{0}")]
    Failed(String),
}

/// A manifest as its owner holds it; the asking member checks the bytes
/// against the digest.
#[derive(Clone, Debug)]
pub struct ManifestReply {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    /// A tag served past its TTL because the owner's upstream failed.
    pub stale: bool,
}

/// A boxed future of what the owner answers.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, ServeError>> + Send + 'a>>;

/// What this member serves to the others: its own tiers, and downloads from
/// its own upstreams, never passed on to another member (so two members
/// that disagree on an owner cannot send a request around in a circle).
pub trait LocalContent: Send + Sync + 'static {
    fn open_blob(
        &self,
        upstream: String,
        repo: RepoName,
        digest: Digest,
        offset: u64,
    ) -> Answer<'_, ServedBlob>;

    fn manifest(&self, upstream: String, repo: RepoName, reference: Reference) -> Answer<'_, ManifestReply>;
}

/// The Peer service over `source`, for the cluster port.
pub fn service(source: Arc<dyn LocalContent>) -> PeerServer<PeerService> {
    PeerServer::new(PeerService { source })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub struct PeerService {
    source: Arc<dyn LocalContent>,
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Status {
        match e {
            ServeError::UnknownUpstream(_) => Status::failed_precondition(e.to_string()),
            ServeError::NotFound => Status::not_found(e.to_string()),
            ServeError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
            ServeError::Failed(_) => Status::aborted(e.to_string()),
        }
    }
}

fn parse_repo(repo: &str) -> Result<RepoName, Status> {
    repo.parse()
        .map_err(|e| Status::invalid_argument(format!("repository name: {e}")))
}

#[tonic::async_trait]
impl Peer for PeerService {
    type FetchBlobStream = BoxStream<'static, Result<BlobChunk, Status>>;

    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<Self::FetchBlobStream>, Status> {
        let FetchBlobRequest {
            upstream,
            repo,
            digest,
            offset,
        } = request.into_inner();
        let repo = parse_repo(&repo)?;
        let digest: Digest = digest
            .parse()
            .map_err(|e| Status::invalid_argument(format!("digest: {e}")))?;
        debug!(%upstream, %repo, %digest, offset, "serving a blob to a peer");
        let blob = self.source.open_blob(upstream, repo, digest, offset).await?;
        telemetry::served();
        let sent = telemetry::sent_bytes();
        let size = stream::iter([Ok(BlobChunk {
            part: Some(Part::Size(blob.size)),
        })]);
        let data = blob.body.flat_map(move |chunk| {
            let messages: Vec<Result<BlobChunk, Status>> = match chunk {
                Ok(bytes) => {
                    sent.increment(bytes.len() as u64);
                    split(bytes)
                        .map(|data| {
                            Ok(BlobChunk {
                                part: Some(Part::Data(data)),
                            })
                        })
                        .collect()
                }
                Err(e) => vec![Err(Status::aborted(format!("the owner's copy failed: {e}")))],
            };
            stream::iter(messages)
        });
        Ok(Response::new(size.chain(data).boxed()))
    }

    async fn fetch_manifest(
        &self,
        request: Request<FetchManifestRequest>,
    ) -> Result<Response<Manifest>, Status> {
        let FetchManifestRequest {
            upstream,
            repo,
            reference,
        } = request.into_inner();
        let repo = parse_repo(&repo)?;
        let reference: Reference = reference
            .parse()
            .map_err(|e| Status::invalid_argument(format!("reference: {e}")))?;
        debug!(%upstream, %repo, %reference, "serving a manifest to a peer");
        let reply = self.source.manifest(upstream, repo, reference).await?;
        telemetry::served();
        Ok(Response::new(Manifest {
            digest: reply.digest.to_string(),
            media_type: reply.media_type,
            bytes: reply.bytes,
            stale: reply.stale,
        }))
    }
}

/// `bytes` in pieces of at most [`CHUNK_BYTES`], without copying.
fn split(mut bytes: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let take = bytes.len().min(CHUNK_BYTES);
        Some(bytes.split_to(take))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_without_losing_or_reordering_bytes() {
        let blob: Vec<u8> = (0..(2 * CHUNK_BYTES + 5)).map(|i| i as u8).collect();
        let parts: Vec<Bytes> = split(Bytes::from(blob.clone())).collect();
        assert_eq!(
            parts.iter().map(Bytes::len).collect::<Vec<_>>(),
            [CHUNK_BYTES, CHUNK_BYTES, 5]
        );
        assert_eq!(parts.concat(), blob);
        assert_eq!(split(Bytes::new()).count(), 0);
    }
}
