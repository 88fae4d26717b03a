//! Reading committed blobs by mapping them: the bytes a response sends are
//! the page cache's own pages, never read into a buffer of ours first
//! (which cost a zeroed allocation and a copy per byte before the copy into
//! the socket).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use oci::Digest;

use crate::DiskStore;

/// Blobs are mapped in windows of this size at multiples of it, so the
/// windows of hot blobs are mapped once and shared by every response: a
/// mapping made and torn down per request cost a third of a disk hit's CPU.
pub const MAP_WINDOW: u64 = 2 << 20;
/// Mapped windows kept for reuse, in bytes. They are pages of the page
/// cache, not memory of ours, but they count in the resident set.
const KEPT_WINDOW_BYTES: u64 = 32 << 20;

/// Mapped windows kept for reuse, by digest and window number.
pub(crate) type Windows = moka::sync::Cache<(Digest, u64), Bytes>;

pub(crate) fn windows() -> Windows {
    moka::sync::Cache::builder()
        .max_capacity(KEPT_WINDOW_BYTES)
        .weigher(|_, window: &Bytes| u32::try_from(window.len()).unwrap_or(u32::MAX))
        .build()
}

/// Drops the kept windows of a blob of `size` bytes that left the tier, so
/// its disk space is freed once the responses still sending them end.
pub(crate) fn forget(windows: &Windows, digest: &Digest, size: u64) {
    for number in 0..size.div_ceil(MAP_WINDOW) {
        windows.invalidate(&(digest.clone(), number));
    }
}

/// A committed blob of the disk tier, opened for reading. Cheap to clone.
#[derive(Clone)]
pub struct BlobFile {
    store: DiskStore,
    digest: Digest,
    file: Arc<std::fs::File>,
    size: u64,
}

impl BlobFile {
    pub(crate) fn new(store: DiskStore, digest: Digest, file: std::fs::File, size: u64) -> BlobFile {
        BlobFile {
            store,
            digest,
            file: Arc::new(file),
            size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The bytes from `pos` up to `end` or the end of `pos`'s window,
    /// whichever comes first, backed by the page cache. A window not kept
    /// yet is mapped on the blocking pool with its pages brought in, so
    /// sending them does not wait for the disk on a runtime thread.
    pub async fn piece(&self, pos: u64, end: u64) -> io::Result<Bytes> {
        debug_assert!(pos < end && end <= self.size, "range outside the blob");
        let number = pos / MAP_WINDOW;
        let window_start = number * MAP_WINDOW;
        let key = (self.digest.clone(), number);
        let windows = self.store.windows();
        let window = match windows.get(&key) {
            Some(window) => window,
            None => {
                let window_end = self.size.min(window_start + MAP_WINDOW);
                let window = self.map(window_start, window_end).await?;
                windows.insert(key.clone(), window.clone());
                // Evicted meanwhile: its `forget` may have run before the
                // insert, which must not pin the unlinked file.
                if self.store.size_of(&self.digest).is_none() {
                    windows.invalidate(&key);
                }
                // The cache applies its bound lazily, in batches; a fast
                // stream of new windows (one big blob) would overrun it.
                windows.run_pending_tasks();
                window
            }
        };
        let from = pos - window_start;
        let to = end.min(window_start + window.len() as u64) - window_start;
        Ok(window.slice(from as usize..to as usize))
    }

    /// The whole blob copied into memory of its own, for the memory tier;
    /// its mapping is not kept (the memory tier holds the bytes now).
    pub async fn read_all(&self) -> io::Result<Bytes> {
        if self.size == 0 {
            return Ok(Bytes::new());
        }
        let mapped = self.map(0, self.size).await?;
        Ok(Bytes::copy_from_slice(&mapped))
    }

    async fn map(&self, start: u64, end: u64) -> io::Result<Bytes> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || map_range(&file, start, end))
            .await
            .map_err(io::Error::other)?
    }
}

#[allow(unsafe_code)]
fn map_range(file: &std::fs::File, start: u64, end: u64) -> io::Result<Bytes> {
    debug_assert!(start < end, "an empty mapping");
    let len = usize::try_from(end - start).map_err(io::Error::other)?;
    // SAFETY: a mapping is undefined behaviour only if the file changes or
    // shrinks while mapped. Files under `blobs/` are made by renaming a
    // complete, verified temp file into place and are never opened for
    // writing again: eviction and GC only unlink them, which leaves a
    // mapped inode and its pages intact until the mapping is dropped. The
    // directory belongs to regcache (docs/operations.md says so); a file
    // truncated there by hand would end the process with SIGBUS.
    let mapping = unsafe {
        memmap2::MmapOptions::new()
            .offset(start)
            .len(len)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(mapping))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::commit;

    /// Two and a half windows.
    const SIZE: u64 = 5 * MAP_WINDOW / 2;

    /// A tier of `capacity` bytes holding one committed blob of [`SIZE`]
    /// bytes, opened for reading.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: DiskStore,
        digest: Digest,
        body: Vec<u8>,
        blob: BlobFile,
    }

    async fn fixture(capacity: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), capacity).unwrap();
        let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let digest = commit(&store, &body).await;
        let blob = store.open_blob(&digest).unwrap().unwrap();
        Fixture {
            _dir: dir,
            store,
            digest,
            body,
            blob,
        }
    }

    #[tokio::test]
    async fn serves_pieces_up_to_window_ends_and_keeps_the_windows() {
        let f = fixture(1 << 30).await;
        let w = MAP_WINDOW;
        // (pos, end, where the piece must end): off page boundaries, across
        // a window's end, the last short window, one byte.
        for (pos, end, until) in [
            (0, 10, 10),
            (4095, SIZE, w),
            (w + 1, w + 2, w + 2),
            (2 * w, SIZE, SIZE),
        ] {
            let piece = f.blob.piece(pos, end).await.unwrap();
            assert_eq!(&piece[..], &f.body[pos as usize..until as usize], "{pos}..{end}");
        }
        assert!(f.store.windows().contains_key(&(f.digest.clone(), 1)));
        assert_eq!(&f.blob.read_all().await.unwrap()[..], &f.body[..]);
    }

    #[tokio::test]
    async fn a_removed_blob_drops_its_windows_but_a_piece_outlives_the_file() {
        let f = fixture(1 << 30).await;
        let piece = f.blob.piece(0, 100).await.unwrap();
        f.store.remove(&f.digest).unwrap();
        assert!(!f.store.windows().contains_key(&(f.digest.clone(), 0)));
        assert_eq!(&piece[..], &f.body[..100], "removal only unlinks");
        // A reader that opened it before the removal maps a window after
        // it: served, but not kept.
        let late = f.blob.piece(MAP_WINDOW, MAP_WINDOW + 1).await.unwrap();
        assert_eq!(late[0], f.body[MAP_WINDOW as usize]);
        assert!(!f.store.windows().contains_key(&(f.digest, 1)));
    }

    #[tokio::test]
    async fn an_evicted_blob_drops_its_windows() {
        let f = fixture(SIZE + 10).await;
        f.blob.piece(0, 1).await.unwrap();
        assert!(f.store.windows().contains_key(&(f.digest.clone(), 0)));
        commit(&f.store, &[7u8; 20]).await;
        assert_eq!(f.store.size_of(&f.digest), None, "evicted to make room");
        assert!(!f.store.windows().contains_key(&(f.digest, 0)));
    }
}
