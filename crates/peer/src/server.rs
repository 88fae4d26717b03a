//! The owner's side: serves a blob to the member that asked, from its own
//! tiers or from the download it joins or starts.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt as _};
use oci::{Digest, RepoName};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::pb::blob_chunk::Part;
use crate::pb::peer_server::{Peer, PeerServer};
use crate::pb::{BlobChunk, FetchBlobRequest};
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

/// Where the owner's blobs come from: the cache, without ever asking
/// another member (so two members that disagree on the owner cannot send
/// a request around in a circle).
pub trait BlobSource: Send + Sync + 'static {
    fn open_blob(
        &self,
        upstream: String,
        repo: RepoName,
        digest: Digest,
        offset: u64,
    ) -> Pin<Box<dyn Future<Output = Result<ServedBlob, ServeError>> + Send + '_>>;
}

/// The Peer service over `source`, for the cluster port.
pub fn service(source: Arc<dyn BlobSource>) -> PeerServer<PeerService> {
    PeerServer::new(PeerService { source })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub struct PeerService {
    source: Arc<dyn BlobSource>,
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
        let repo: RepoName = repo
            .parse()
            .map_err(|e| Status::invalid_argument(format!("repository name: {e}")))?;
        let digest: Digest = digest
            .parse()
            .map_err(|e| Status::invalid_argument(format!("digest: {e}")))?;
        debug!(%upstream, %repo, %digest, offset, "serving a blob to a peer");
        let blob = self
            .source
            .open_blob(upstream, repo, digest, offset)
            .await
            .map_err(|e| match e {
                ServeError::UnknownUpstream(_) => Status::failed_precondition(e.to_string()),
                ServeError::NotFound => Status::not_found(e.to_string()),
                ServeError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
                ServeError::Failed(_) => Status::aborted(e.to_string()),
            })?;
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
