use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::mpsc;

use crate::inflight::Download;
use crate::{Body, BodyStream, Tier};

/// How much is read from a file per chunk of a response body.
const READ_CHUNK: u64 = 512 * 1024;

/// Streams `[start, end)` of `file` with positional reads on the blocking
/// pool. With a `download`, each read waits until the download has written
/// past the position, so followers of a running download use the same code.
///
/// A task reads one chunk ahead of what the connection is sending, so disk
/// reads and socket writes overlap; the channel bounds memory per response
/// to about three chunks. The task stops when the client goes away.
pub(crate) fn file_range(
    file: Arc<std::fs::File>,
    start: u64,
    end: u64,
    download: Option<Arc<Download>>,
) -> BodyStream {
    debug_assert!(start <= end);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut pos = start;
        while pos < end {
            let chunk = read_chunk(&file, pos, end, download.as_deref()).await;
            let failed = chunk.is_err();
            let len = chunk.as_ref().map_or(0, |c| c.len() as u64);
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
            pos += len;
        }
    });
    stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) },
    )
    .boxed()
}

async fn read_chunk(
    file: &Arc<std::fs::File>,
    pos: u64,
    end: u64,
    download: Option<&Download>,
) -> std::io::Result<Bytes> {
    let available = match download {
        Some(d) => d.wait_past(pos).await?,
        None => end,
    };
    let limit = available.min(end);
    if let Some(bytes) = download.and_then(|d| d.recent(pos, limit)) {
        return Ok(bytes);
    }
    let len = (limit - pos).min(READ_CHUNK);
    debug_assert!(len > 0);
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Counts the bytes a body delivers, by tier, as they are sent.
pub(crate) fn counted(body: Body, tier: Tier) -> Body {
    let counter = crate::telemetry::served_bytes(tier);
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

/// How often a streaming body notes its digest's access again.
const KEEP_RECENT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Notes an access to `digest` again every second while the body streams,
/// so content being sent stays recent however long the response takes: a
/// GC pass that condemned it meanwhile sees the access and rescues it
/// before it commits (docs/gc.md), and its object is not swept mid-stream.
pub(crate) fn kept_recent(body: Body, meta: Arc<meta::Meta>, digest: oci::Digest) -> Body {
    match body {
        Body::Full(bytes) => Body::Full(bytes),
        Body::Stream(s) => {
            let mut noted = std::time::Instant::now();
            Body::Stream(
                s.inspect(move |_| {
                    if noted.elapsed() >= KEEP_RECENT_EVERY {
                        noted = std::time::Instant::now();
                        meta.record_access(&digest);
                    }
                })
                .boxed(),
            )
        }
    }
}
