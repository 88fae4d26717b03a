//! `[storage]`: where content lives for good. Credentials are never part of
//! it: S3 credentials come from the standard AWS chain (environment, shared
//! config, web identity), so a config file can be shared and logged freely.

use std::path::PathBuf;
use std::time::Duration;

use objstore::{S3Config, S3Timeouts};

use super::fields::{self, AtField, FieldError};
use super::raw::RawStorage;
use crate::config::StorageOverrides;

/// Multipart uploads this old were left by a replica that crashed.
const DEFAULT_ABORT_UPLOADS_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The SDK needs a region even for S3-compatible stores that ignore it.
const FALLBACK_REGION: &str = "us-east-1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    pub kind: StorageKind,
    /// Multipart uploads older than this are aborted, at start and hourly.
    pub abort_uploads_after: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// Without `path` (the embedded default) the disk tier under `data_dir`
    /// is the only copy; with it, `path` is a directory laid out like the
    /// bucket (e.g. a volume several replicas mount) and the disk tier is a
    /// hot tier in front of it.
    Fs {
        path: Option<PathBuf>,
    },
    S3(S3Config),
}

pub(super) fn storage(raw: RawStorage, overrides: &StorageOverrides) -> Result<StorageConfig, FieldError> {
    let raw = overrides.apply(raw);
    let abort_uploads_after = super::validate::duration(
        &raw.abort_uploads_after,
        DEFAULT_ABORT_UPLOADS_AFTER,
        "storage.abort_uploads_after",
    )?;
    if abort_uploads_after < Duration::from_secs(60) {
        // Younger uploads may still be running on another replica.
        return Err(FieldError::new(
            "storage.abort_uploads_after",
            "must be at least 1m",
        ));
    }
    let kind = match raw.kind.as_deref().unwrap_or("fs") {
        "fs" => {
            let s3_only = [
                ("bucket", raw.bucket.is_some()),
                ("prefix", raw.prefix.is_some()),
                ("endpoint", raw.endpoint.is_some()),
                ("region", raw.region.is_some()),
                ("force_path_style", raw.force_path_style.is_some()),
            ];
            if let Some((field, _)) = s3_only.iter().find(|(_, set)| *set) {
                return Err(FieldError::new(
                    format!("storage.{field}"),
                    "only applies to kind = \"s3\"",
                ));
            }
            if raw.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(FieldError::new("storage.path", "must not be empty"));
            }
            StorageKind::Fs { path: raw.path }
        }
        "s3" => {
            if raw.path.is_some() {
                return Err(FieldError::new("storage.path", "only applies to kind = \"fs\""));
            }
            let bucket = raw
                .bucket
                .ok_or_else(|| FieldError::new("storage.bucket", "is required for kind = \"s3\""))?;
            check_bucket(&bucket).at("storage.bucket")?;
            let prefix = raw.prefix.unwrap_or_default();
            check_prefix(&prefix).at("storage.prefix")?;
            let endpoint = match &raw.endpoint {
                Some(text) => {
                    let url = fields::http_url(text).at("storage.endpoint")?;
                    Some(url.as_str().trim_end_matches('/').to_owned())
                }
                None => None,
            };
            let region = raw
                .region
                .or_else(|| std::env::var("AWS_REGION").ok())
                .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| FALLBACK_REGION.to_owned());
            StorageKind::S3(S3Config {
                bucket,
                prefix,
                endpoint,
                region,
                force_path_style: raw.force_path_style.unwrap_or(false),
                timeouts: S3Timeouts::default(),
            })
        }
        other => {
            return Err(FieldError::new(
                "storage.kind",
                format!("unknown kind {other:?} (expected \"fs\" or \"s3\")"),
            ));
        }
    };
    Ok(StorageConfig {
        kind,
        abort_uploads_after,
    })
}

/// S3's bucket naming rules (3–63 of `a-z 0-9 . -`, alphanumeric at both ends).
fn check_bucket(name: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid bucket name {name:?} (3-63 lowercase letters, digits, '.' or '-')"
        ))
    }
}

/// A key prefix made of path segments a bucket browser shows sensibly.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let trimmed = prefix.trim_matches('/');
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if trimmed.is_empty() || trimmed.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(format!(
            "invalid prefix {prefix:?} (path segments of letters, digits, '-', '_' or '.')"
        ))
    }
}
