//! Reading response bodies: bounded into memory for manifests, tag lists
//! and tokens; streamed for blobs.

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::error::UpstreamError;
use crate::{headers, telemetry};

/// Initial buffer size cap, so a lying Content-Length cannot make us
/// allocate the whole limit up front.
const MAX_PREALLOC: u64 = 1 << 20;

/// Reads the whole body, refusing more than `limit` bytes: the declared
/// length is checked first, and the bytes are counted as they arrive since
/// chunked responses declare nothing.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Bytes, UpstreamError> {
    let declared = headers::content_length(response.headers());
    if declared.is_some_and(|len| len > limit) {
        return Err(UpstreamError::TooLarge { limit });
    }
    let capacity = declared.unwrap_or(0).min(limit).min(MAX_PREALLOC);
    let mut buf = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(UpstreamError::from_reqwest)? {
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(UpstreamError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    debug_assert!(buf.len() as u64 <= limit);
    Ok(buf.freeze())
}

/// The body as a stream of chunks, errors mapped (a stalled read becomes
/// `Timeout`) and counted, since they surface long after the request
/// returned.
pub(crate) fn stream(
    response: reqwest::Response,
    upstream: String,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    let received = telemetry::received_bytes(&upstream);
    response
        .bytes_stream()
        .map(move |chunk| {
            if let Ok(bytes) = &chunk {
                received.increment(bytes.len() as u64);
            }
            chunk.map_err(|err| {
                let err = UpstreamError::from_reqwest(err);
                telemetry::error(&upstream, err.kind());
                tracing::debug!(upstream = %upstream, op = "get_blob", error = %err, "blob body failed");
                err
            })
        })
        .boxed()
}

/// `body` without its first `skip` bytes: a registry that ignored a Range
/// sent the blob from its start.
pub(crate) fn skip(
    body: BoxStream<'static, Result<Bytes, UpstreamError>>,
    mut skip: u64,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    body.try_filter_map(move |chunk| {
        let taken = skip.min(chunk.len() as u64);
        skip -= taken;
        let rest = (taken < chunk.len() as u64).then(|| chunk.slice(taken as usize..));
        std::future::ready(Ok(rest))
    })
    .boxed()
}
