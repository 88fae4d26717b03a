use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use oci::{Digest, DigestHasher};

use crate::{DiskStore, StoreError};

/// A blob being written to the disk tier: hashed as it is written, moved
/// into place only when the digest matches, removed otherwise (also when
/// dropped unfinished, e.g. the upstream connection died). Its CRC-64/NVME
/// is computed on the way: a check far cheaper than the digest,
/// for reading the same bytes back from the object tier later.
///
/// The file is shared (positional writes and reads, no shared cursor) so
/// that readers can follow a download while it is still running. One chunk
/// is written and hashed on the blocking pool while the caller receives the
/// next one.
pub struct BlobWriter {
    store: DiskStore,
    digest: Digest,
    tmp: PathBuf,
    file: Arc<std::fs::File>,
    /// `None` while a write holds it, or after a write failed.
    hashers: Option<Hashers>,
    pending: Option<tokio::task::JoinHandle<Result<(Hashers, u64), StoreError>>>,
    /// Bytes written and hashed.
    written: u64,
    /// Bytes handed to [`BlobWriter::append`].
    accepted: u64,
    finished: bool,
}

/// What a successful commit did.
#[derive(Debug)]
pub struct Committed {
    pub size: u64,
    /// CRC-64/NVME of the content.
    pub crc64nvme: u64,
    /// Blobs the disk tier evicted to make room.
    pub evicted: Vec<Digest>,
}

/// A blob whose every byte is written and matches its digest, not yet
/// durable nor in place: readers may trust its bytes already.
pub struct Verified {
    writer: BlobWriter,
    crc64nvme: u64,
}

/// The digest's hasher and the CRC, updated together.
struct Hashers {
    digest: DigestHasher,
    crc: crc_fast::Digest,
}

impl Hashers {
    fn update(&mut self, chunk: &[u8]) {
        self.digest.update(chunk);
        self.crc.update(chunk);
    }
}

impl BlobWriter {
    pub(crate) fn create(store: DiskStore, digest: Digest, tmp: PathBuf) -> Result<Self, StoreError> {
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        Ok(BlobWriter {
            store,
            hashers: Some(Hashers {
                digest: digest.hasher(),
                crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme),
            }),
            pending: None,
            digest,
            tmp,
            file: Arc::new(file),
            written: 0,
            accepted: 0,
            finished: false,
        })
    }

    /// The temp file, for readers that follow the download with `read_at`.
    pub fn file(&self) -> Arc<std::fs::File> {
        Arc::clone(&self.file)
    }

    /// Bytes written to the file so far: what readers may read.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes handed to [`BlobWriter::append`] so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Starts writing and hashing `chunk` once the previous chunk is done;
    /// returns [`BlobWriter::written`] as of then.
    pub async fn append(&mut self, chunk: Bytes) -> Result<u64, StoreError> {
        self.append_all(vec![chunk]).await
    }

    /// [`BlobWriter::append`] for several chunks in one trip to the blocking
    /// pool, without copying them into one buffer.
    pub async fn append_all(&mut self, chunks: Vec<Bytes>) -> Result<u64, StoreError> {
        self.wait_pending().await?;
        let mut hashers = self
            .hashers
            .take()
            .ok_or_else(|| StoreError::Task("writer already failed".into()))?;
        let file = Arc::clone(&self.file);
        let mut offset = self.written;
        let tmp = self.tmp.clone();
        let store = self.store.clone();
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        self.accepted += len;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            for chunk in &chunks {
                let mut written = file.write_all_at(chunk, offset);
                // A full filesystem: the tier makes room and the chunk is
                // written again, whole, at the same offset.
                if let Err(e) = &written
                    && e.kind() == std::io::ErrorKind::StorageFull
                    && store.out_of_space(chunk.len() as u64)
                {
                    written = file.write_all_at(chunk, offset);
                }
                written.map_err(|e| StoreError::io(&tmp, e))?;
                hashers.update(chunk);
                offset += chunk.len() as u64;
            }
            Ok((hashers, len))
        }));
        Ok(self.written)
    }

    /// Waits for the chunk being written; returns [`BlobWriter::written`].
    pub async fn flush(&mut self) -> Result<u64, StoreError> {
        self.wait_pending().await?;
        Ok(self.written)
    }

    async fn wait_pending(&mut self) -> Result<(), StoreError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let (hashers, len) = pending.await.map_err(|e| StoreError::Task(e.to_string()))??;
        self.hashers = Some(hashers);
        self.written += len;
        self.store.temp_grew(len);
        debug_assert!(self.written <= self.accepted);
        Ok(())
    }

    /// Checks every byte against the digest.
    pub async fn verify(mut self) -> Result<Verified, StoreError> {
        self.wait_pending().await?;
        let hashers = self
            .hashers
            .take()
            .ok_or_else(|| StoreError::Task("writer already failed".into()))?;
        let actual = hashers.digest.finish();
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(Verified {
            crc64nvme: hashers.crc.finalize(),
            writer: self,
        })
    }

    /// Verifies the digest, makes the bytes durable and moves them into place.
    pub async fn commit(self) -> Result<Committed, StoreError> {
        self.verify().await?.persist().await
    }
}

impl Verified {
    pub fn size(&self) -> u64 {
        self.writer.written
    }

    /// Makes the bytes durable and moves them into place.
    pub async fn persist(mut self) -> Result<Committed, StoreError> {
        let w = &self.writer;
        let crc64nvme = self.crc64nvme;
        let (store, digest, tmp, file, size) = (
            w.store.clone(),
            w.digest.clone(),
            w.tmp.clone(),
            Arc::clone(&w.file),
            w.written,
        );
        let evicted = tokio::task::spawn_blocking(move || {
            file.sync_data().map_err(|e| StoreError::io(&tmp, e))?;
            store.install(&digest, &tmp, size)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        self.writer.finished = true;
        Ok(Committed {
            size,
            crc64nvme,
            evicted,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
            self.store.temp_gone(self.written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_only_matching_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        let good = Digest::sha256_of(b"hello world");

        let mut w = store.writer(&good).unwrap();
        w.append(Bytes::from_static(b"hello ")).await.unwrap();
        w.append(Bytes::from_static(b"world")).await.unwrap();
        let committed = w.commit().await.unwrap();
        assert_eq!(committed.size, 11);
        assert_eq!(
            committed.crc64nvme,
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, b"hello world")
        );
        assert_eq!(store.size_of(&good), Some(11));

        let wrong = Digest::sha256_of(b"something else");
        let mut w = store.writer(&wrong).unwrap();
        w.append(Bytes::from_static(b"not it")).await.unwrap();
        assert!(matches!(w.commit().await, Err(StoreError::DigestMismatch { .. })));
        assert_eq!(store.size_of(&wrong), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "temp file removed"
        );
    }

    #[tokio::test]
    async fn evicts_beyond_capacity_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 25).unwrap();
        let mut digests: Vec<Digest> = Vec::new();
        for i in 0..3u8 {
            let body = vec![i; 10];
            let d = Digest::sha256_of(&body);
            let mut w = store.writer(&d).unwrap();
            w.append(Bytes::from(body)).await.unwrap();
            let c = w.commit().await.unwrap();
            if i == 2 {
                assert_eq!(c.evicted, vec![digests[0].clone()]);
            }
            digests.push(d);
        }
        assert_eq!(store.used_bytes(), 20);
        drop(store);
        let reopened = DiskStore::open(dir.path(), 25).unwrap();
        assert_eq!(reopened.size_of(&digests[0]), None);
        assert_eq!(reopened.size_of(&digests[1]), Some(10));
        let blob = reopened.open_blob(&digests[2]).unwrap().unwrap();
        assert_eq!(blob.size(), 10);
        assert_eq!(&blob.piece(0, 10).await.unwrap()[..], &[2u8; 10]);
    }

    /// Writes blobs of ten bytes each, filled with each of `bytes`; returns
    /// their digests, oldest first.
    async fn ten_byte_blobs(store: &DiskStore, bytes: std::ops::Range<u8>) -> Vec<Digest> {
        let mut digests = Vec::new();
        for i in bytes {
            digests.push(crate::test_support::commit(store, &[i; 10]).await);
        }
        digests
    }

    #[tokio::test]
    async fn a_lowered_capacity_applies_when_trimmed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 100).unwrap();
        let digests = ten_byte_blobs(&store, 0..4).await;
        drop(store);
        // Reopening orders by modification time: make it distinct.
        for (age, digest) in digests.iter().rev().enumerate() {
            let hex = digest.hex();
            let path = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(60 * (age as u64 + 1));
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        let smaller = DiskStore::open(dir.path(), 25).unwrap();
        assert_eq!(smaller.used_bytes(), 40, "opening alone removes nothing");
        assert_eq!(smaller.trim(), digests[..2].to_vec(), "the oldest go first");
        assert_eq!(smaller.used_bytes(), 20);
        assert!(smaller.open_blob(&digests[0]).unwrap().is_none());
        assert!(smaller.trim().is_empty(), "nothing more to do");
    }

    #[tokio::test]
    async fn a_blob_served_from_elsewhere_stays_hot_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 30).unwrap();
        let digests = ten_byte_blobs(&store, 0..3).await;
        // The oldest is served from memory: the disk must not evict it next.
        store.touch(&digests[0]);
        let newest = ten_byte_blobs(&store, 3..4).await.pop().unwrap();
        assert_eq!(store.size_of(&digests[0]), Some(10));
        assert_eq!(store.size_of(&digests[1]), None);
        assert_eq!(store.size_of(&newest), Some(10));
    }

    #[tokio::test]
    async fn downloads_under_way_count_against_the_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 40).unwrap();
        let digests = ten_byte_blobs(&store, 0..4).await;
        let body = vec![9u8; 25];
        let mut running = store.writer(&Digest::sha256_of(&body)).unwrap();
        running.append(Bytes::from(body)).await.unwrap();
        running.flush().await.unwrap();
        // 25 bytes being written leave room for one committed blob: the
        // others made room as it was written, and are reported.
        assert_eq!(store.used_bytes(), 35, "the temp file counts");
        assert_eq!(store.size_of(&digests[3]), Some(10));
        assert_eq!(store.trim(), digests[..3].to_vec());
        assert!(store.trim().is_empty(), "reported once");
        drop(running);
        assert_eq!(store.used_bytes(), 10, "an abandoned download frees its bytes");
    }

    #[tokio::test]
    async fn unfinished_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        let d = Digest::sha256_of(b"x");
        let mut w = store.writer(&d).unwrap();
        w.append(Bytes::from_static(b"x")).await.unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.open_blob(&d).unwrap().is_none());
    }
}
