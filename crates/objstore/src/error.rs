//! Errors of the object tier. The cache keeps serving from local disk and
//! streams misses without storing them while the object store is down, so an
//! error says whether the store was unreachable or refused one request.
//! Messages never carry credentials: they are built from the operation, the
//! HTTP status and the service's error code and message, never from a
//! request.

use std::path::PathBuf;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::RequestId as _;

#[derive(Debug, thiserror::Error)]
pub enum ObjStoreError {
    /// Connect errors, timeouts, 5xx answers, throttling: worth trying again
    /// later, and a reason to bypass the object tier meanwhile.
    #[error("object store unavailable during {operation}: {detail}")]
    Unavailable { operation: &'static str, detail: String },
    /// The store answered and refused (4xx, malformed answers, partial
    /// failures of a batch).
    #[error("object store {operation} failed: {detail}")]
    Request { operation: &'static str, detail: String },
    #[error("object store i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// An empty range, or one that starts at or past the object's end.
    #[error("byte range {start}..{end} is not satisfiable")]
    InvalidRange { start: u64, end: u64 },
    #[error("object store configuration: {0}")]
    Config(String),
}

impl ObjStoreError {
    /// True when the store could not be reached or did not answer properly,
    /// as opposed to refusing this particular request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ObjStoreError::Unavailable { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ObjStoreError {
        ObjStoreError::Io {
            path: path.into(),
            source,
        }
    }

    /// Classifies an SDK error of `operation`.
    pub(crate) fn from_sdk<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> ObjStoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let unavailable = match &err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
            SdkError::ResponseError(_) => status.is_none_or(|s| s >= 500),
            SdkError::ServiceError(service) => {
                status.is_some_and(|s| s >= 500 || s == 429)
                    || service
                        .err()
                        .code()
                        .is_some_and(|c| THROTTLING_CODES.contains(&c))
            }
            _ => false,
        };
        let detail = match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                format!(
                    "status {}, {}: {} (request id {})",
                    status.map_or_else(|| "none".into(), |s| s.to_string()),
                    e.code().unwrap_or("no error code"),
                    e.message().unwrap_or("no message"),
                    e.meta().request_id().unwrap_or("none"),
                )
            }
            other => chain(other),
        };
        if unavailable {
            ObjStoreError::Unavailable { operation, detail }
        } else {
            ObjStoreError::Request { operation, detail }
        }
    }

    /// A body that broke off while streaming: the connection or the server
    /// went away.
    pub(crate) fn body(operation: &'static str, err: impl std::error::Error) -> ObjStoreError {
        ObjStoreError::Unavailable {
            operation,
            detail: chain(&err),
        }
    }
}

/// An error and its sources, displayed (never debug-printed: the debug form
/// of an SDK error carries the raw response).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let next = e.to_string();
        // hyper and the SDK often repeat their source in their own message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// Error codes S3 and compatible stores use to ask for a slower pace.
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "TooManyRequests",
    "ServiceUnavailable",
    "RequestTimeout",
    "InternalError",
];

/// Whether an SDK error means the key (or upload) does not exist.
pub(crate) fn is_not_found<E>(err: &SdkError<E, HttpResponse>) -> bool {
    err.raw_response().is_some_and(|r| r.status().as_u16() == 404)
}
