//! Uploads fed chunk by chunk while a download arrives. For S3, chunks are
//! gathered into parts of at least [`PART_SIZE`] bytes with at most
//! [`PARTS_IN_FLIGHT`] uploading at a time, so one upload holds at most
//! `PARTS_IN_FLIGHT + 1` parts in memory whatever the object's size. The
//! multipart upload is only created once a first part is full: an object that
//! stays smaller goes up with one PutObject on complete.

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use crate::fs::FsWriter;
use crate::s3::{MAX_PARTS, bytes_body};
use crate::{ObjStoreError, PART_SIZE, PARTS_IN_FLIGHT, S3Store};

/// An upload in progress: [`write`](Self::write) the bytes in order, then
/// [`complete`](Self::complete) (only after the content was verified) or
/// [`abort`](Self::abort). Dropped without either, the upload is aborted in
/// the background.
pub struct MultipartWriter {
    inner: Inner,
}

enum Inner {
    Fs(FsWriter),
    S3(S3Writer),
}

impl MultipartWriter {
    pub(crate) fn fs(writer: FsWriter) -> MultipartWriter {
        MultipartWriter {
            inner: Inner::Fs(writer),
        }
    }

    pub(crate) fn s3(writer: S3Writer) -> MultipartWriter {
        MultipartWriter {
            inner: Inner::S3(writer),
        }
    }

    /// Appends `chunk`. Waits only when a part is full and
    /// [`PARTS_IN_FLIGHT`] parts are uploading already.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ObjStoreError> {
        match &mut self.inner {
            Inner::Fs(w) => w.write(chunk).await,
            Inner::S3(w) => w.write(chunk).await,
        }
    }

    /// Makes the object visible under its key; aborts the upload if that
    /// fails.
    pub async fn complete(self) -> Result<(), ObjStoreError> {
        match self.inner {
            Inner::Fs(w) => w.complete().await,
            Inner::S3(w) => w.complete().await,
        }
    }

    /// Discards everything written (the digest did not match, or the
    /// download failed).
    pub async fn abort(self) -> Result<(), ObjStoreError> {
        match self.inner {
            Inner::Fs(w) => {
                w.abort();
                Ok(())
            }
            Inner::S3(w) => w.abort().await,
        }
    }
}

impl std::fmt::Debug for MultipartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartWriter").finish_non_exhaustive()
    }
}

pub(crate) struct S3Writer {
    store: S3Store,
    key: String,
    /// Created with the first full part.
    upload_id: Option<String>,
    buf: BytesMut,
    next_part: i32,
    in_flight: JoinSet<Result<aws_sdk_s3::types::CompletedPart, ObjStoreError>>,
    done: Vec<aws_sdk_s3::types::CompletedPart>,
    /// Completed or aborted: nothing left for Drop to clean up.
    finished: bool,
}

impl S3Writer {
    /// `key` is the full bucket key.
    pub(crate) fn new(store: S3Store, key: String) -> S3Writer {
        S3Writer {
            store,
            key,
            upload_id: None,
            buf: BytesMut::new(),
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            finished: false,
        }
    }

    /// The size of the next part: [`PART_SIZE`], growing by that much every
    /// 1000 parts so that S3's 10 000 parts reach about 430 GiB.
    fn part_size(&self) -> usize {
        let thousands = usize::try_from(self.next_part / 1000).unwrap_or(0);
        PART_SIZE * (1 + thousands)
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), ObjStoreError> {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let part_size = self.part_size();
            if self.buf.capacity() == 0 {
                // One allocation per part, never grown: a grown buffer would
                // stay pinned by the part split off it while that uploads.
                self.buf.reserve(part_size);
            }
            let take = rest.len().min(part_size - self.buf.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == part_size {
                let part = std::mem::take(&mut self.buf).freeze();
                self.send(part).await?;
            }
        }
        Ok(())
    }

    /// Starts uploading one part, after waiting for a slot.
    async fn send(&mut self, part: Bytes) -> Result<(), ObjStoreError> {
        if u64::try_from(self.next_part).unwrap_or(u64::MAX) > MAX_PARTS {
            return Err(ObjStoreError::Request {
                operation: "upload_part",
                detail: format!("more than {MAX_PARTS} parts"),
            });
        }
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.store.create_upload(&self.key).await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let (store, key, number) = (self.store.clone(), self.key.clone(), self.next_part);
        self.next_part += 1;
        self.in_flight.spawn(async move {
            let (body, len) = bytes_body(part);
            store.upload_part(&key, &upload_id, number, body, len).await
        });
        Ok(())
    }

    /// Waits for one part upload to end.
    async fn join_one(&mut self) -> Result<(), ObjStoreError> {
        match self.in_flight.join_next().await {
            None => Ok(()),
            Some(Ok(Ok(part))) => {
                self.done.push(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(ObjStoreError::Request {
                operation: "upload_part",
                detail: format!("the upload task failed: {e}"),
            }),
        }
    }

    async fn complete(mut self) -> Result<(), ObjStoreError> {
        let result = self.finish().await;
        if result.is_err() {
            self.abort_now().await;
        }
        self.finished = true;
        result
    }

    async fn finish(&mut self) -> Result<(), ObjStoreError> {
        let rest = std::mem::take(&mut self.buf).freeze();
        let Some(upload_id) = self.upload_id.clone() else {
            let (body, len) = bytes_body(rest);
            return self.store.put_object(&self.key, body, len).await;
        };
        if !rest.is_empty() {
            self.send(rest).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        let parts = std::mem::take(&mut self.done);
        self.store.complete_upload(&self.key, &upload_id, parts).await
    }

    async fn abort(mut self) -> Result<(), ObjStoreError> {
        self.finished = true;
        self.in_flight.shutdown().await;
        match self.upload_id.take() {
            Some(id) => self.store.abort_upload(&self.key, &id).await,
            None => Ok(()),
        }
    }

    async fn abort_now(&mut self) {
        self.in_flight.shutdown().await;
        if let Some(id) = self.upload_id.take() {
            self.store.abort_or_log(&self.key, &id).await;
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // The JoinSet's drop cancels the part uploads.
        let Some(id) = self.upload_id.take().filter(|_| !self.finished) else {
            return;
        };
        let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { store.abort_or_log(&key, &id).await });
            }
            Err(_) => {
                tracing::warn!(
                    key,
                    "multipart upload dropped outside a runtime; the stale-upload sweep will remove it"
                );
            }
        }
    }
}
