use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};

use crate::inflight::Download;
use crate::{Body, BodyStream, Tier};

/// How much is read from a file per chunk of a response body.
const READ_CHUNK: u64 = 512 * 1024;

/// Streams `[start, end)` of `file` with positional reads on the blocking
/// pool. With a `download`, each read waits until the download has written
/// past the position, so followers of a running download use the same code.
pub(crate) fn file_range(
    file: Arc<std::fs::File>,
    start: u64,
    end: u64,
    download: Option<Arc<Download>>,
) -> BodyStream {
    debug_assert!(start <= end);
    stream::try_unfold(start, move |pos| {
        let (file, download) = (Arc::clone(&file), download.clone());
        async move {
            if pos >= end {
                return Ok(None);
            }
            let available = match &download {
                Some(d) => d.wait_past(pos).await?,
                None => end,
            };
            let len = (available.min(end) - pos).min(READ_CHUNK);
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((chunk, pos + len)))
        }
    })
    .boxed()
}

/// Counts the bytes a body delivers, by tier, as they are sent.
pub(crate) fn counted(body: Body, tier: Tier) -> Body {
    let counter = metrics::counter!("regcache_served_bytes_total", "tier" => tier.as_str());
    match body {
        Body::Full(bytes) => {
            counter.increment(bytes.len() as u64);
            Body::Full(bytes)
        }
        Body::Stream(s) => Body::Stream(
            s.inspect(move |chunk| {
                if let Ok(c) = chunk {
                    counter.increment(c.len() as u64);
                }
            })
            .boxed(),
        ),
    }
}
