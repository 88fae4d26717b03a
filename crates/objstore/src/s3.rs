//! The shared tier: an S3 bucket (or any S3-compatible store) under a key
//! prefix. Credentials come from the standard AWS chain (environment, shared
//! config files, web identity as on EKS, container and instance metadata),
//! never from regcache's own configuration.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};

use crate::error::is_not_found;
use crate::key::check_key;
use crate::multipart::S3Writer;
use crate::{ObjStoreError, ObjectBody, ObjectInfo, PART_SIZE, PARTS_IN_FLIGHT};

/// S3 allows at most this many parts per upload.
pub(crate) const MAX_PARTS: u64 = 10_000;
/// DeleteObjects takes at most this many keys per call.
const DELETE_BATCH: usize = 1000;
/// Read size when streaming a part from a file.
const FILE_CHUNK: usize = 256 << 10;

/// Where the bucket is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key (`regcache/` → `regcache/blobs/…`), so that
    /// one bucket can hold several caches or other data.
    pub prefix: String,
    /// For S3-compatible stores (`http://127.0.0.1:8333`); AWS when `None`.
    pub endpoint: Option<String>,
    pub region: String,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key`: what most
    /// S3-compatible stores need.
    pub force_path_style: bool,
    pub timeouts: S3Timeouts,
}

/// Limits on each request. Retries use the SDK's standard mode (exponential
/// backoff with jitter, only for transient errors and throttling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S3Timeouts {
    pub connect: Duration,
    /// One attempt of one request; a part upload is at most 80 MiB (see
    /// [`crate::MultipartWriter`]), a GET only until its headers arrive (the
    /// SDK's stalled-stream protection watches bodies).
    pub attempt: Duration,
    pub max_attempts: u32,
}

impl Default for S3Timeouts {
    fn default() -> Self {
        S3Timeouts {
            connect: Duration::from_secs(3),
            attempt: Duration::from_secs(60),
            max_attempts: 3,
        }
    }
}

/// A client for one bucket and prefix; cheap to clone.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds the client with credentials from the standard AWS chain. Does
    /// not contact the store: the cache must start (and serve from disk)
    /// while S3 is down.
    pub async fn new(cfg: S3Config) -> Result<S3Store, ObjStoreError> {
        // The region goes here too: web identity and the other credential
        // providers need it.
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .load()
            .await;
        S3Store::with_sdk_config(cfg, &shared)
    }

    /// Builds the client on an SDK configuration the caller loaded (its
    /// credentials provider, HTTP client and sleep implementation); `cfg`
    /// decides everything else.
    pub fn with_sdk_config(cfg: S3Config, shared: &aws_config::SdkConfig) -> Result<S3Store, ObjStoreError> {
        if cfg.bucket.is_empty() {
            return Err(ObjStoreError::Config("the bucket name is empty".into()));
        }
        if cfg.region.is_empty() {
            return Err(ObjStoreError::Config("the region is empty".into()));
        }
        if cfg.timeouts.max_attempts == 0 {
            return Err(ObjStoreError::Config("max_attempts must be at least 1".into()));
        }
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.timeouts.connect)
            .operation_attempt_timeout(cfg.timeouts.attempt)
            .build();
        let mut builder = aws_sdk_s3::config::Builder::from(shared)
            .region(Region::new(cfg.region))
            .retry_config(RetryConfig::standard().with_max_attempts(cfg.timeouts.max_attempts))
            .timeout_config(timeouts)
            .force_path_style(cfg.force_path_style)
            // Checksums only where S3 requires them: S3-compatible stores
            // differ in which of the newer checksum headers they accept.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        let prefix = cfg.prefix.trim_matches('/');
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: cfg.bucket,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// The bucket key of `key`.
    pub(crate) fn full_key(&self, key: &str) -> Result<String, ObjStoreError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    pub(crate) async fn put_file(&self, key: &str, path: &Path, size: u64) -> Result<(), ObjStoreError> {
        let key = self.full_key(key)?;
        // The SDK would upload a prefix of a longer file without a word.
        let actual = tokio::fs::metadata(path)
            .await
            .map_err(|e| ObjStoreError::io(path, e))?
            .len();
        if actual != size {
            return Err(ObjStoreError::Request {
                operation: "put_file",
                detail: format!("{} has {actual} bytes, expected {size}", path.display()),
            });
        }
        if size <= PART_SIZE as u64 {
            let body = file_body(path, 0, size).await?;
            return self.put_object(&key, body, size).await;
        }
        let upload_id = self.create_upload(&key).await?;
        let result = self.put_parts(&key, &upload_id, path, size).await;
        if result.is_err() {
            self.abort_or_log(&key, &upload_id).await;
        }
        result
    }

    /// Uploads `path` in parts streamed from the file, a bounded number at
    /// a time, then completes the upload.
    async fn put_parts(
        &self,
        key: &str,
        upload_id: &str,
        path: &Path,
        size: u64,
    ) -> Result<(), ObjStoreError> {
        let part_size = (PART_SIZE as u64).max(size.div_ceil(MAX_PARTS));
        let parts = (0..size.div_ceil(part_size)).map(|i| {
            let offset = i * part_size;
            let number = i32::try_from(i + 1).expect("at most MAX_PARTS parts");
            (number, offset, part_size.min(size - offset))
        });
        let parts = futures_util::stream::iter(parts)
            .map(|(number, offset, len)| async move {
                let body = file_body(path, offset, len).await?;
                self.upload_part(key, upload_id, number, body, len).await
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await?;
        self.complete_upload(key, upload_id, parts).await
    }

    pub(crate) fn multipart(&self, key: &str) -> Result<S3Writer, ObjStoreError> {
        Ok(S3Writer::new(self.clone(), self.full_key(key)?))
    }

    pub(crate) async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<ObjectBody>, ObjStoreError> {
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?);
        if let Some((start, end)) = range {
            request = request.range(format!("bytes={start}-{}", end - 1));
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                let (start, end) = range.unwrap_or_default();
                return Err(ObjStoreError::InvalidRange { start, end });
            }
            Err(e) => return Err(ObjStoreError::from_sdk("get_object", e)),
        };
        if range.is_some() && out.content_range().is_none() {
            return Err(ObjStoreError::Request {
                operation: "get_object",
                detail: "the store ignored the range of a ranged get".into(),
            });
        }
        let len = out
            .content_length()
            .and_then(|l| u64::try_from(l).ok())
            .unwrap_or(0);
        Ok(Some(ObjectBody::s3(out.body, len)))
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<u64>, ObjStoreError> {
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key)?);
        match request.send().await {
            Ok(out) => Ok(Some(
                out.content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
            )),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(ObjStoreError::from_sdk("head_object", e)),
        }
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjStoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| ObjStoreError::from_sdk("list_objects_v2", e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                found.push(ObjectInfo {
                    key: key.to_owned(),
                    size: object.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    last_modified: object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(found)
    }

    pub(crate) async fn delete(&self, keys: &[String]) -> Result<(), ObjStoreError> {
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|k| {
                    ObjectIdentifier::builder()
                        .key(self.full_key(k)?)
                        .build()
                        .map_err(build_error)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(build_error)?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| ObjStoreError::from_sdk("delete_objects", e))?;
            let failed: Vec<_> = out
                .errors()
                .iter()
                .filter(|e| e.code() != Some("NoSuchKey"))
                .collect();
            if let Some(first) = failed.first() {
                return Err(ObjStoreError::Request {
                    operation: "delete_objects",
                    detail: format!(
                        "{} of {} keys not deleted, first {:?}: {}: {}",
                        failed.len(),
                        batch.len(),
                        first.key().unwrap_or_default(),
                        first.code().unwrap_or("no error code"),
                        first.message().unwrap_or("no message"),
                    ),
                });
            }
        }
        Ok(())
    }

    pub(crate) async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize, ObjStoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut stale = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| ObjStoreError::from_sdk("list_multipart_uploads", e))?;
            for upload in page.uploads() {
                let initiated = upload.initiated().and_then(|t| SystemTime::try_from(*t).ok());
                if let (Some(key), Some(id), Some(initiated)) = (upload.key(), upload.upload_id(), initiated)
                    && initiated <= cutoff
                {
                    stale.push((key.to_owned(), id.to_owned()));
                }
            }
            if page.is_truncated() != Some(true) || page.next_key_marker().is_none() {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
        for (key, id) in &stale {
            self.abort_upload(key, id).await?;
        }
        Ok(stale.len())
    }

    pub(crate) async fn put_object(
        &self,
        key: &str,
        body: ByteStream,
        len: u64,
    ) -> Result<(), ObjStoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(content_length(len))
            .body(body)
            .send()
            .await
            .map_err(|e| ObjStoreError::from_sdk("put_object", e))?;
        Ok(())
    }

    pub(crate) async fn create_upload(&self, key: &str) -> Result<String, ObjStoreError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| ObjStoreError::from_sdk("create_multipart_upload", e))?;
        out.upload_id.ok_or_else(|| ObjStoreError::Request {
            operation: "create_multipart_upload",
            detail: "the answer has no upload id".into(),
        })
    }

    pub(crate) async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: ByteStream,
        len: u64,
    ) -> Result<CompletedPart, ObjStoreError> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(content_length(len))
            .body(body)
            .send()
            .await
            .map_err(|e| ObjStoreError::from_sdk("upload_part", e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag)
            .build())
    }

    pub(crate) async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: Vec<CompletedPart>,
    ) -> Result<(), ObjStoreError> {
        parts.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| ObjStoreError::from_sdk("complete_multipart_upload", e))?;
        Ok(())
    }

    /// Aborts an upload; one that is gone already (completed, or aborted by
    /// a sweep) is not an error.
    pub(crate) async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), ObjStoreError> {
        let sent = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(ObjStoreError::from_sdk("abort_multipart_upload", e)),
        }
    }

    /// Abort on a path that already fails: the original error is what the
    /// caller needs; a leftover upload is what the stale-upload sweep is for.
    pub(crate) async fn abort_or_log(&self, key: &str, upload_id: &str) {
        if let Err(e) = self.abort_upload(key, upload_id).await {
            tracing::warn!(key, error = %e, "aborting a multipart upload failed; the stale-upload sweep will remove it");
        }
    }
}

/// A body streamed from `len` bytes of a file at `offset`; the SDK reopens
/// the file to retry.
async fn file_body(path: &Path, offset: u64, len: u64) -> Result<ByteStream, ObjStoreError> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .buffer_size(FILE_CHUNK)
        .build()
        .await
        .map_err(|e| ObjStoreError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })
}

pub(crate) fn bytes_body(bytes: Bytes) -> (ByteStream, u64) {
    let len = bytes.len() as u64;
    (ByteStream::from(bytes), len)
}

fn content_length(len: u64) -> i64 {
    i64::try_from(len).expect("object sizes fit in i64")
}

fn build_error(e: aws_sdk_s3::error::BuildError) -> ObjStoreError {
    ObjStoreError::Request {
        operation: "delete_objects",
        detail: e.to_string(),
    }
}
