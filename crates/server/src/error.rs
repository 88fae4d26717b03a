use axum::response::{IntoResponse, Response};
use cache::CacheError;
use http::{HeaderValue, StatusCode, header};
use oci::ErrorCode;
use upstream::UpstreamError;

/// An error as the distribution spec answers it: a status and a JSON body
/// `{"errors":[{"code","message","detail"}]}`. Every failure of a request is
/// mapped to one of these here, and only here.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
    content_range: Option<String>,
}

/// What the request was after, so "not found" gets the right code.
#[derive(Clone, Copy, Debug)]
pub enum Subject {
    Manifest,
    Blob,
    Repository,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            content_range: None,
        }
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn from_cache(error: &CacheError, subject: Subject) -> Self {
        let unknown = match subject {
            Subject::Manifest => ErrorCode::ManifestUnknown,
            Subject::Blob => ErrorCode::BlobUnknown,
            Subject::Repository => ErrorCode::NameUnknown,
        };
        match error {
            CacheError::Download(shared) => Self::from_cache(shared, subject),
            CacheError::Upstream(e) => Self::from_upstream(e, unknown),
            CacheError::NotAcceptable { media_type } => ApiError::new(
                ErrorCode::ManifestUnknown,
                format!("manifest has media type {media_type}, which the accept header does not allow"),
            ),
            CacheError::RangeNotSatisfiable { size } => ApiError {
                content_range: Some(format!("bytes */{size}")),
                ..ApiError::new(
                    ErrorCode::RangeInvalid,
                    format!("range not satisfiable for a blob of {size} bytes"),
                )
            },
            e @ (CacheError::UpstreamBody(_)
            | CacheError::ManifestInvalid(_)
            | CacheError::ManifestDigestMismatch { .. }) => {
                ApiError::new(ErrorCode::Unknown, e.to_string()).with_status(StatusCode::BAD_GATEWAY)
            }
            // The client's retry goes to the upstream while the store is
            // bypassed, or starts the download afresh.
            e @ (CacheError::ObjectStore(_) | CacheError::Vanished { .. } | CacheError::DownloadAborted) => {
                ApiError::new(ErrorCode::Unavailable, e.to_string())
            }
            e @ (CacheError::Store(_) | CacheError::Meta(_) | CacheError::LocalIo { .. }) => {
                tracing::error!(error = %e, "internal error");
                ApiError::new(ErrorCode::Unknown, "internal error")
            }
        }
    }

    pub fn from_upstream(error: &UpstreamError, unknown: ErrorCode) -> Self {
        let message = error.to_string();
        match error {
            UpstreamError::NotFound => ApiError::new(unknown, message),
            UpstreamError::Unauthorized | UpstreamError::Auth(_) => {
                ApiError::new(ErrorCode::Unauthorized, message)
            }
            UpstreamError::Denied => ApiError::new(ErrorCode::Denied, message),
            UpstreamError::TooManyRequests { retry_after } => ApiError {
                retry_after: retry_after.map(|d| d.as_secs().max(1)),
                ..ApiError::new(ErrorCode::TooManyRequests, message)
            },
            e if e.is_unavailable() => ApiError::new(ErrorCode::Unavailable, message),
            _ => ApiError::new(ErrorCode::Unknown, message).with_status(StatusCode::BAD_GATEWAY),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(range) = self.content_range.and_then(|r| HeaderValue::from_str(&r).ok()) {
            headers.insert(header::CONTENT_RANGE, range);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use cache::CacheError;
    use http::StatusCode;
    use oci::{Digest, ErrorCode};
    use upstream::UpstreamError;

    use super::{ApiError, Subject};

    fn mapped(error: CacheError) -> (StatusCode, ErrorCode) {
        let api = ApiError::from_cache(&error, Subject::Blob);
        (api.status, api.code)
    }

    fn digest() -> Digest {
        Digest::sha256_of(b"blob")
    }

    #[test]
    fn the_upstream_is_blamed_only_for_what_it_sent() {
        let bad_gateway = (StatusCode::BAD_GATEWAY, ErrorCode::Unknown);
        assert_eq!(mapped(CacheError::UpstreamBody("cut".into())), bad_gateway);
        let mismatch = CacheError::ManifestDigestMismatch {
            expected: digest(),
            actual: Digest::sha256_of(b"other"),
        };
        assert_eq!(mapped(mismatch), bad_gateway);
        assert_eq!(
            mapped(CacheError::Upstream(UpstreamError::TooManyRequests {
                retry_after: Some(Duration::from_secs(3)),
            })),
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
        );
    }

    #[test]
    fn a_local_disk_failure_is_an_internal_error() {
        let error = CacheError::LocalIo {
            digest: digest(),
            source: std::io::Error::other("disk on fire"),
        };
        let api = ApiError::from_cache(&error, Subject::Blob);
        assert_eq!(
            (api.status, api.code),
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unknown)
        );
        assert_eq!(api.message, "internal error", "local details stay in the log");
    }

    #[test]
    fn what_a_retry_fixes_is_unavailable() {
        let unavailable = (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable);
        assert_eq!(mapped(CacheError::Vanished { digest: digest() }), unavailable);
        assert_eq!(mapped(CacheError::DownloadAborted), unavailable);
        let shared = CacheError::Download(Arc::new(CacheError::DownloadAborted));
        assert_eq!(mapped(shared), unavailable, "followers get the download's error");
    }

    #[test]
    fn an_unsatisfiable_range_says_the_size() {
        let api = ApiError::from_cache(&CacheError::RangeNotSatisfiable { size: 10 }, Subject::Blob);
        assert_eq!(api.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(api.content_range.as_deref(), Some("bytes */10"));
    }
}
