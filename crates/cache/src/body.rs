use std::future::Future;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use store::{BlobFile, MAP_WINDOW};
use tokio::sync::mpsc;

use crate::inflight::Download;
use crate::{Body, BodyStream, Tier};

/// How much is read from a download's temp file per chunk of a response.
const READ_CHUNK: u64 = 512 * 1024;

/// Streams `[start, end)` of a committed blob from the page cache, a
/// mapped window at a time. Nothing is mapped before the body is first
/// polled (a HEAD never is).
pub(crate) fn mapped_range(blob: BlobFile, start: u64, end: u64) -> BodyStream {
    debug_assert!(start <= end && end <= blob.size());
    if start == end {
        return stream::empty().boxed();
    }
    if start / MAP_WINDOW == (end - 1) / MAP_WINDOW {
        return stream::once(async move { blob.piece(start, end).await }).boxed();
    }
    read_ahead(start, end, move |pos| {
        let blob = blob.clone();
        async move { blob.piece(pos, end).await }
    })
}

/// Streams `[start, end)` of a running download's temp file with positional
/// reads on the blocking pool. Each read waits until the download has
/// written past the position.
pub(crate) fn file_range(
    file: Arc<std::fs::File>,
    start: u64,
    end: u64,
    download: Arc<Download>,
) -> BodyStream {
    read_ahead(start, end, move |pos| {
        let (file, download) = (Arc::clone(&file), Arc::clone(&download));
        async move { read_chunk(file, pos, end, &download).await }
    })
}

/// Streams `[start, end)` from the pieces `next(pos)` returns, from a task
/// that fetches one piece ahead of what the connection is sending, so disk
/// reads and socket writes overlap; the channel bounds memory per response
/// to about three pieces. The task starts when the body is first polled and
/// stops when the client goes away.
fn read_ahead<F, Fut>(start: u64, end: u64, mut next: F) -> BodyStream
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<Bytes>> + Send + 'static,
{
    debug_assert!(start <= end);
    let (tx, rx) = mpsc::channel(1);
    let produce = async move {
        let mut pos = start;
        while pos < end {
            let piece = next(pos).await;
            let failed = piece.is_err();
            let len = piece.as_ref().map_or(0, |c| c.len() as u64);
            if tx.send(piece).await.is_err() || failed {
                return;
            }
            pos += len;
        }
    };
    let mut produce = Some(produce);
    stream::unfold(rx, move |mut rx| {
        if let Some(produce) = produce.take() {
            tokio::spawn(produce);
        }
        async move { rx.recv().await.map(|piece| (piece, rx)) }
    })
    .boxed()
}

async fn read_chunk(
    file: Arc<std::fs::File>,
    pos: u64,
    end: u64,
    download: &Download,
) -> std::io::Result<Bytes> {
    let limit = download.wait_past(pos).await?.min(end);
    if let Some(bytes) = download.recent(pos, limit) {
        return Ok(bytes);
    }
    let len = (limit - pos).min(READ_CHUNK);
    debug_assert!(len > 0);
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
