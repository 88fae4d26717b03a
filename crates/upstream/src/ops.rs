//! The registry operations the cache needs, and what they return.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::header::{CONTENT_TYPE, LINK};
use http::{HeaderValue, Method};
use oci::{Digest, Reference, RepoName};
use serde::Deserialize;

use crate::client::{Call, Upstream};
use crate::error::UpstreamError;
use crate::{body, headers, telemetry};

/// What a HEAD of a manifest says, enough to revalidate a cached tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    /// The Content-Type without parameters, or the document's `mediaType`
    /// when the header is missing.
    pub media_type: String,
    /// `Docker-Content-Digest`, unverified: the caller hashes `bytes`.
    pub digest_header: Option<Digest>,
}

/// A blob body as it arrives. Errors while streaming are already mapped
/// (a stalled read is `Timeout`); the caller verifies the digest.
pub struct BlobStream {
    pub size: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct TagsPage {
    pub body: Bytes,
    pub content_type: Option<String>,
    /// The `Link` header value with its URL cut down to path and query,
    /// rooted at `/v2/` (upstream scheme, host and path prefix removed),
    /// e.g. `</v2/a/b/tags/list?n=10&last=x>; rel="next"`.
    pub link: Option<String>,
}

/// The Accept header; an empty list means every manifest type, because a
/// registry answers 404 for an index it was not told is acceptable.
fn accept_header(accept: &[&str]) -> Option<HeaderValue> {
    let list = if accept.is_empty() {
        oci::media_types::ALL_MANIFESTS
    } else {
        accept
    };
    debug_assert!(
        list.iter().all(|m| m.bytes().all(|b| b.is_ascii_graphic())),
        "media types are constants"
    );
    HeaderValue::from_str(&list.join(", ")).ok()
}

/// Only `mediaType` of a manifest, for when Content-Type is missing.
#[derive(Deserialize)]
struct MediaTypeField {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
}

impl Upstream {
    /// HEAD /v2/<repo>/manifests/<ref>: revalidates a tag without counting
    /// against Docker Hub's pull limit, which counts only GETs.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestHead, UpstreamError> {
        self.observe("head_manifest", repo, async {
            let url = self.url(repo, &["manifests", &reference.to_string()]);
            let call = Call {
                op: "head_manifest",
                repo,
                method: Method::HEAD,
                url,
                accept: accept_header(accept),
                from: None,
            };
            let response = self.send(&call).await?;
            let h = response.headers();
            Ok(ManifestHead {
                digest: headers::digest(h),
                media_type: headers::media_type(h),
                size: headers::content_length(h),
            })
        })
        .await
    }

    /// GET a manifest, refusing bodies over `max_bytes` (`TooLarge`).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
        max_bytes: u64,
    ) -> Result<FetchedManifest, UpstreamError> {
        self.observe("get_manifest", repo, async {
            let url = self.url(repo, &["manifests", &reference.to_string()]);
            let call = Call {
                op: "get_manifest",
                repo,
                method: Method::GET,
                url,
                accept: accept_header(accept),
                from: None,
            };
            let response = self.send(&call).await?;
            let header_type = headers::media_type(response.headers());
            let digest_header = headers::digest(response.headers());
            let bytes = body::read_bounded(response, max_bytes).await?;
            let media_type = header_type
                .or_else(|| {
                    serde_json::from_slice::<MediaTypeField>(&bytes)
                        .ok()
                        .and_then(|m| m.media_type)
                })
                .ok_or_else(|| UpstreamError::InvalidResponse("manifest has no media type".into()))?;
            Ok(FetchedManifest {
                bytes,
                media_type,
                digest_header,
            })
        })
        .await
    }

    /// GET a blob, streamed: blobs can be gigabytes, so the body is never
    /// buffered and has no total timeout, only the idle read timeout.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobStream, UpstreamError> {
        self.get_blob_call("get_blob", repo, digest, None).await
    }

    /// GET a blob from byte `from` on (`Range: bytes=from-`), to go on
    /// where another source stopped. A registry that ignores the range
    /// sends the whole blob; its first `from` bytes are then skipped here,
    /// so the stream always starts at `from`.
    pub async fn get_blob_from(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: u64,
    ) -> Result<BlobStream, UpstreamError> {
        self.get_blob_call("get_blob_range", repo, digest, Some(from))
            .await
    }

    async fn get_blob_call(
        &self,
        op: &'static str,
        repo: &RepoName,
        digest: &Digest,
        from: Option<u64>,
    ) -> Result<BlobStream, UpstreamError> {
        self.observe(op, repo, async {
            let url = self.url(repo, &["blobs", &digest.to_string()]);
            let call = Call {
                op,
                repo,
                method: Method::GET,
                url,
                accept: None,
                from,
            };
            let response = self.send(&call).await?;
            let size = headers::content_length(response.headers());
            let partial = response.status() == http::StatusCode::PARTIAL_CONTENT;
            let body = body::stream(response, self.inner.name.clone());
            let skip = match from {
                Some(from) if !partial => from,
                _ => 0,
            };
            if skip == 0 {
                return Ok(BlobStream { size, body });
            }
            Ok(BlobStream {
                size: size.map(|size| size.saturating_sub(skip)),
                body: body::skip(body, skip),
            })
        })
        .await
    }

    /// GET /v2/<repo>/tags/list with the caller's (validated) query, e.g.
    /// `n=10&last=x`; body bounded by `max_bytes`.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        query: Option<&str>,
        max_bytes: u64,
    ) -> Result<TagsPage, UpstreamError> {
        self.observe("tags_list", repo, async {
            let mut url = self.url(repo, &["tags", "list"]);
            url.set_query(query.filter(|q| !q.is_empty()));
            let call = Call {
                op: "tags_list",
                repo,
                method: Method::GET,
                url,
                accept: None,
                from: None,
            };
            let response = self.send(&call).await?;
            let content_type = headers::header_str(response.headers(), CONTENT_TYPE).map(str::to_owned);
            let link = headers::header_str(response.headers(), LINK)
                .and_then(|v| headers::rewrite_link(v, response.url(), &self.inner.base));
            let body = body::read_bounded(response, max_bytes).await?;
            Ok(TagsPage {
                body,
                content_type,
                link,
            })
        })
        .await
    }

    /// Runs one operation and accounts for its failure in one place.
    async fn observe<T>(
        &self,
        op: &'static str,
        repo: &RepoName,
        work: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let result = work.await;
        if let Err(err) = &result {
            telemetry::error(&self.inner.name, err.kind());
            tracing::debug!(upstream = %self.inner.name, repo = %repo, op, error = %err, "upstream operation failed");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_accept_means_every_manifest_type() {
        let all = accept_header(&[]).unwrap();
        for media_type in oci::media_types::ALL_MANIFESTS {
            assert!(all.to_str().unwrap().contains(media_type));
        }
        let one = accept_header(&[oci::media_types::OCI_MANIFEST]).unwrap();
        assert_eq!(one, oci::media_types::OCI_MANIFEST);
    }
}
