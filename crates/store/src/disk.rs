use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use oci::Digest;
use tracing::{debug, info, warn};

use crate::StoreError;
use crate::blob_file::{self, BlobFile, Windows};
use crate::lru::Lru;
use crate::telemetry;
use crate::writer::BlobWriter;

/// Space left free below the point where the filesystem filled up: the
/// metadata on the same volume (the Raft log, the index) must still be able
/// to grow, and the next download should evict rather than fail.
const FULL_DISK_HEADROOM: u64 = 16 << 20;
/// How long the tier stays shrunk after the filesystem filled up before it
/// tries its configured capacity again (space may have been freed).
const FULL_DISK_SHRINK: Duration = Duration::from_secs(60);

/// The local disk tier: one file per digest under
/// `<dir>/blobs/<algorithm>/<2 hex>/<hex>`, bounded by `capacity` bytes.
/// Files appear there only by an atomic rename of a verified temp file, so a
/// file at a digest's path always holds exactly that digest's bytes.
#[derive(Clone)]
pub struct DiskStore {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: PathBuf,
    tmp: PathBuf,
    capacity: u64,
    lru: Mutex<Lru>,
    /// Bytes in the temp files of downloads under way: they take disk
    /// space too, so committed blobs make room for them.
    writing: AtomicU64,
    /// Blobs evicted while a temp file grew, reported with the next commit
    /// or trim (whoever keeps the index needs to hear of them).
    unreported: Mutex<Vec<Digest>>,
    /// The capacity the filesystem actually allowed, and until when it
    /// stands in for `capacity`: set when a write found no space left.
    shrunk: Mutex<Option<(u64, Instant)>>,
    /// Mapped windows of blobs read lately, shared by their readers.
    windows: Windows,
}

impl DiskStore {
    /// Opens the tier, removing temp files of interrupted downloads and
    /// ordering existing blobs by modification time (refreshed by reads,
    /// at most once a minute per blob).
    pub fn open(dir: &Path, capacity: u64) -> Result<DiskStore, StoreError> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        }
        for d in [&blobs, &tmp] {
            std::fs::create_dir_all(d).map_err(|e| StoreError::io(d, e))?;
        }
        let mut found = Vec::new();
        scan(&blobs, &mut found)?;
        found.sort_by_key(|(_, _, mtime)| *mtime);
        let mut lru = Lru::default();
        for (digest, size, _) in found {
            lru.insert(digest, size);
        }
        info!(blobs = lru.len(), bytes = lru.total_bytes(), dir = %dir.display(), "disk tier opened");
        telemetry::disk_bytes(lru.total_bytes());
        Ok(DiskStore {
            inner: Arc::new(Inner {
                blobs,
                tmp,
                capacity,
                lru: Mutex::new(lru),
                writing: AtomicU64::new(0),
                unreported: Mutex::new(Vec::new()),
                shrunk: Mutex::new(None),
                windows: blob_file::windows(),
            }),
        })
    }

    /// The size of a stored blob, without counting as a use.
    pub fn size_of(&self, digest: &Digest) -> Option<u64> {
        self.lru().size_of(digest)
    }

    /// Opens a stored blob for reading and marks it used. `None` when absent
    /// (or evicted between the lookup and the open).
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<BlobFile>, StoreError> {
        let Some((size, restamp)) = self.lru().touch_read(digest, Instant::now()) else {
            return Ok(None);
        };
        let path = self.path_of(digest);
        match std::fs::File::open(&path) {
            Ok(file) => {
                // The order after a restart: refreshed now and then, not
                // on every read (a metadata write per request).
                if restamp && let Err(error) = file.set_modified(SystemTime::now()) {
                    debug!(%digest, %error, "refreshing a blob's modification time failed");
                }
                Ok(Some(BlobFile::new(self.clone(), digest.clone(), file, size)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(%digest, "blob vanished from disk tier");
                self.forget(digest);
                Ok(None)
            }
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Starts writing `digest`; nothing is visible until [`BlobWriter::commit`].
    pub fn writer(&self, digest: &Digest) -> Result<BlobWriter, StoreError> {
        let name = format!("{}-{:016x}", digest.hex(), rand::random::<u64>());
        BlobWriter::create(self.clone(), digest.clone(), self.inner.tmp.join(name))
    }

    /// Removes a blob (e.g. when the index condemns it).
    pub fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        self.forget(digest);
        let path = self.path_of(digest);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Every stored blob's digest.
    pub fn digests(&self) -> Vec<Digest> {
        self.lru().digests()
    }

    /// Bytes on disk: committed blobs and the temp files being written.
    pub fn used_bytes(&self) -> u64 {
        self.lru().total_bytes() + self.writing()
    }

    fn writing(&self) -> u64 {
        self.inner.writing.load(Ordering::Relaxed)
    }

    /// A download wrote `len` more bytes to its temp file; committed blobs
    /// are evicted when both no longer fit.
    pub(crate) fn temp_grew(&self, len: u64) {
        let writing = self.inner.writing.fetch_add(len, Ordering::Relaxed) + len;
        if self.lru().total_bytes() + writing > self.capacity() {
            let evicted = self.evict(None);
            self.unreported().extend(evicted);
        } else {
            telemetry::disk_bytes(self.used_bytes());
        }
    }

    /// A temp file of `len` bytes was removed or moved into place.
    pub(crate) fn temp_gone(&self, len: u64) {
        let before = self.inner.writing.fetch_sub(len, Ordering::Relaxed);
        debug_assert!(before >= len, "temp bytes went below zero");
        telemetry::disk_bytes(self.used_bytes());
    }

    /// Moves a verified temp file into place and evicts what no longer
    /// fits; returns what it evicted, and what growing downloads evicted
    /// since the last report.
    pub(crate) fn install(&self, digest: &Digest, tmp: &Path, size: u64) -> Result<Vec<Digest>, StoreError> {
        let path = self.path_of(digest);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        std::fs::rename(tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        self.lru().insert(digest.clone(), size);
        self.temp_gone(size);
        let mut evicted = std::mem::take(&mut *self.unreported());
        evicted.extend(self.evict(Some(digest)));
        Ok(evicted)
    }

    /// Evicts what no longer fits the capacity, e.g. blobs a larger
    /// `disk_bytes` kept before a restart; returns what it evicted, and
    /// what growing downloads evicted since the last report.
    pub fn trim(&self) -> Vec<Digest> {
        let mut evicted = std::mem::take(&mut *self.unreported());
        evicted.extend(self.evict(None));
        evicted
    }

    /// Counts a use of a stored blob served from elsewhere (the memory
    /// tier), so the disk tier keeps what is hot.
    pub fn touch(&self, digest: &Digest) {
        self.lru().touch(digest);
    }

    /// A write of `needed` bytes found the filesystem full (another tenant
    /// of the volume, or a `disk_bytes` larger than the volume): the tier
    /// shrinks to what it holds less `needed` and some headroom for the
    /// metadata beside it, evicts down to that, and stays that size for a
    /// while. Returns whether it freed anything, so the write is worth
    /// another try.
    pub(crate) fn out_of_space(&self, needed: u64) -> bool {
        let target = self
            .used_bytes()
            .saturating_sub(needed.saturating_add(FULL_DISK_HEADROOM));
        let mut shrunk = self.shrunk();
        let first = shrunk.is_none();
        *shrunk = Some((target, Instant::now() + FULL_DISK_SHRINK));
        drop(shrunk);
        let evicted = self.evict(None);
        let freed = !evicted.is_empty();
        if first {
            warn!(
                capacity = self.inner.capacity,
                shrunk_to = target,
                evicted = evicted.len(),
                retry_in = ?FULL_DISK_SHRINK,
                "disk tier filesystem full: no space left on device; shrinking the tier and evicting"
            );
        }
        self.unreported().extend(evicted);
        freed
    }

    /// The configured capacity, or less while the filesystem was found full.
    fn capacity(&self) -> u64 {
        let mut shrunk = self.shrunk();
        match *shrunk {
            Some((capacity, until)) if Instant::now() < until => capacity.min(self.inner.capacity),
            Some(_) => {
                *shrunk = None;
                info!(
                    capacity = self.inner.capacity,
                    "disk tier back to its configured capacity"
                );
                self.inner.capacity
            }
            None => self.inner.capacity,
        }
    }

    fn shrunk(&self) -> MutexGuard<'_, Option<(u64, Instant)>> {
        self.inner.shrunk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Evicts least recently used blobs, never `keep`, until the rest fits
    /// next to the temp files being written.
    fn evict(&self, keep: Option<&Digest>) -> Vec<Digest> {
        let room = self.capacity().saturating_sub(self.writing());
        let evicted = self.lru().evict_to(room, keep);
        for (victim, size) in &evicted {
            blob_file::forget(self.windows(), victim, *size);
            let victim_path = self.path_of(victim);
            if let Err(e) = std::fs::remove_file(&victim_path) {
                warn!(digest = %victim, error = %e, "evicting blob failed");
            }
        }
        telemetry::evicted(evicted.len());
        telemetry::disk_bytes(self.used_bytes());
        evicted.into_iter().map(|(digest, _)| digest).collect()
    }

    pub(crate) fn windows(&self) -> &Windows {
        &self.inner.windows
    }

    /// Drops a blob from the recency order and its mapped windows (the
    /// caller deals with the file).
    fn forget(&self, digest: &Digest) {
        if let Some(size) = self.lru().remove(digest) {
            blob_file::forget(self.windows(), digest, size);
        }
    }

    fn path_of(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        debug_assert!(hex.len() >= 2 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        self.inner
            .blobs
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn unreported(&self) -> MutexGuard<'_, Vec<Digest>> {
        self.inner.unreported.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lru(&self) -> MutexGuard<'_, Lru> {
        // The lock is never held across a panic-prone section; recover anyway.
        self.inner.lru.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Collects `(digest, size, mtime)` of every blob file below `blobs`; files
/// whose names are not digests are ignored, never deleted.
fn scan(blobs: &Path, found: &mut Vec<(Digest, u64, SystemTime)>) -> Result<(), StoreError> {
    let read = |p: &Path| std::fs::read_dir(p).map_err(|e| StoreError::io(p, e));
    for algo in read(blobs)? {
        let algo = algo.map_err(|e| StoreError::io(blobs, e))?.path();
        let Some(algo_name) = algo.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if !algo.is_dir() {
            continue;
        }
        for shard in read(&algo)? {
            let shard = shard.map_err(|e| StoreError::io(&algo, e))?.path();
            if !shard.is_dir() {
                continue;
            }
            for file in read(&shard)? {
                let file = file.map_err(|e| StoreError::io(&shard, e))?;
                let name = file.file_name();
                let Some(digest) = name
                    .to_str()
                    .and_then(|n| format!("{algo_name}:{n}").parse().ok())
                else {
                    continue;
                };
                let meta = file.metadata().map_err(|e| StoreError::io(&file.path(), e))?;
                found.push((
                    digest,
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::commit;

    fn mtime(path: &Path) -> SystemTime {
        std::fs::metadata(path).unwrap().modified().unwrap()
    }

    /// A read sets the file's modification time only once the last one is
    /// a minute old: no metadata write per request, yet the order after a
    /// restart follows reads.
    #[tokio::test]
    async fn reads_refresh_the_modification_time_once_a_minute_not_per_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        let digest = commit(&store, b"blob").await;
        let path = store.path_of(&digest);
        let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let set = |time| std::fs::File::open(&path).unwrap().set_modified(time).unwrap();

        set(long_ago);
        store.open_blob(&digest).unwrap().unwrap();
        assert_eq!(mtime(&path), long_ago, "written just now: not due");

        store.lru().backdate_stamp(&digest, Duration::from_secs(61));
        store.open_blob(&digest).unwrap().unwrap();
        assert!(mtime(&path) > long_ago, "a minute on: refreshed");

        set(long_ago);
        store.open_blob(&digest).unwrap().unwrap();
        assert_eq!(mtime(&path), long_ago, "refreshed just now: not due again");
    }
}
