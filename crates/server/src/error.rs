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
            // The client's retry goes to the upstream while the store is bypassed.
            e @ CacheError::ObjectStore(_) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
            e @ (CacheError::Store(_) | CacheError::Meta(_)) => {
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
