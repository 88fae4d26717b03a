//! The newest chunks of a running download, kept in memory so that
//! followers who keep up with it are served those bytes directly instead of
//! reading them back from the temp file: one copy and one trip to the
//! blocking pool less per chunk. Bounded per download.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// Bytes kept per download; older chunks are read from the file.
const RECENT_BYTES: u64 = 1 << 20;

#[derive(Default)]
pub(crate) struct RecentChunks {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `(offset in the blob, chunk)`, oldest first, contiguous.
    chunks: VecDeque<(u64, Bytes)>,
    bytes: u64,
}

impl RecentChunks {
    /// Adds the chunk at `offset`, dropping the oldest beyond the bound.
    pub(crate) fn push(&self, offset: u64, chunk: Bytes) {
        let mut inner = self.lock();
        debug_assert!(
            inner
                .chunks
                .back()
                .is_none_or(|(o, c)| o + c.len() as u64 == offset)
        );
        inner.bytes += chunk.len() as u64;
        inner.chunks.push_back((offset, chunk));
        while inner.chunks.len() > 1 && inner.bytes > RECENT_BYTES {
            if let Some((_, old)) = inner.chunks.pop_front() {
                inner.bytes -= old.len() as u64;
            }
        }
    }

    /// The bytes from `pos` up to `limit` (or the end of the chunk holding
    /// `pos`), if that chunk is still here.
    pub(crate) fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let inner = self.lock();
        // Contiguous and in order: the chunk holding `pos` is the last one
        // starting at or before it.
        let after = inner.chunks.partition_point(|(o, _)| *o <= pos);
        let (offset, chunk) = inner.chunks.get(after.checked_sub(1)?)?;
        let end = limit.min(offset + chunk.len() as u64);
        (end > pos).then(|| chunk.slice((pos - offset) as usize..(end - offset) as usize))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_recent_bytes_and_forgets_old_ones() {
        let recent = RecentChunks::default();
        let chunk = |fill: u8| Bytes::from(vec![fill; 400 << 10]);
        recent.push(0, chunk(1));
        recent.push(400 << 10, chunk(2));
        assert_eq!(recent.slice(10, 20).as_deref(), Some(&[1u8; 10][..]));
        let tail = recent.slice((400 << 10) - 5, u64::MAX).expect("held");
        assert_eq!(tail.len(), 5, "a slice ends with its chunk");
        recent.push(800 << 10, chunk(3));
        assert!(
            recent.slice(0, 10).is_none(),
            "beyond the bound: read from the file"
        );
        assert_eq!(
            recent.slice(800 << 10, (800 << 10) + 1).as_deref(),
            Some(&[3u8][..])
        );
        assert!(recent.slice(1200 << 10, u64::MAX).is_none(), "not written yet");
    }
}
