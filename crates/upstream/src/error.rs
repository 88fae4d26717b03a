use std::error::Error as _;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::headers;

/// What went wrong talking to an upstream. Messages never contain
/// credentials, tokens or URLs (pre-signed redirect URLs carry signatures).
#[derive(thiserror::Error, Debug)]
pub enum UpstreamError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream refused access after authentication")]
    Unauthorized,
    #[error("upstream denied access")]
    Denied,
    #[error("upstream rate limit reached")]
    TooManyRequests { retry_after: Option<Duration> },
    #[error("upstream answered status {status}")]
    Status { status: u16 },
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream response is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("invalid upstream response: {0}")]
    InvalidResponse(String),
    #[error("upstream token endpoint failed: {0}")]
    Auth(String),
    /// The connection broke after the request was sent (reset, truncated
    /// body): not retried, because the upstream may have acted on it.
    #[error("upstream connection failed: {0}")]
    Transport(String),
    #[error("invalid upstream configuration: {0}")]
    Config(String),
}

impl UpstreamError {
    /// The failures where the upstream, not the request, is the problem: a
    /// cache may then serve what it already has, even if stale.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::Timeout
            | UpstreamError::Transport(_)
            | UpstreamError::TooManyRequests { .. } => true,
            UpstreamError::Status { status } => *status >= 500,
            _ => false,
        }
    }

    /// A stable snake_case name, used as the `kind` metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::NotFound => "not_found",
            UpstreamError::Unauthorized => "unauthorized",
            UpstreamError::Denied => "denied",
            UpstreamError::TooManyRequests { .. } => "too_many_requests",
            UpstreamError::Status { .. } => "status",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::TooLarge { .. } => "too_large",
            UpstreamError::InvalidResponse(_) => "invalid_response",
            UpstreamError::Auth(_) => "auth",
            UpstreamError::Transport(_) => "transport",
            UpstreamError::Config(_) => "config",
        }
    }

    /// The `status` metrics label: the HTTP status when the error stands
    /// for one, else the error kind (no response arrived).
    pub(crate) fn status_label(&self) -> String {
        match self {
            UpstreamError::NotFound => "404".into(),
            UpstreamError::Unauthorized => "401".into(),
            UpstreamError::Denied => "403".into(),
            UpstreamError::TooManyRequests { .. } => "429".into(),
            UpstreamError::Status { status } => status.to_string(),
            other => other.kind().into(),
        }
    }

    /// Maps a non-success status of a registry endpoint.
    pub(crate) fn from_status(status: StatusCode, headers: &HeaderMap) -> UpstreamError {
        debug_assert!(!status.is_success());
        match status.as_u16() {
            401 => UpstreamError::Unauthorized,
            403 => UpstreamError::Denied,
            404 => UpstreamError::NotFound,
            429 => UpstreamError::TooManyRequests {
                retry_after: headers::header_str(headers, http::header::RETRY_AFTER)
                    .and_then(headers::parse_retry_after),
            },
            other => UpstreamError::Status { status: other },
        }
    }

    /// Maps a transport error. The URL is dropped from the message because
    /// it may be a pre-signed storage URL.
    pub(crate) fn from_reqwest(err: reqwest::Error) -> UpstreamError {
        if err.is_timeout() {
            return UpstreamError::Timeout;
        }
        let connect = err.is_connect();
        let err = err.without_url();
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        let message = message.to_lowercase();
        if connect {
            UpstreamError::Connect(message)
        } else {
            UpstreamError::Transport(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_statuses_and_availability() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "12".parse().unwrap());
        let cases = [
            (401, "unauthorized", false),
            (403, "denied", false),
            (404, "not_found", false),
            (429, "too_many_requests", true),
            (400, "status", false),
            (500, "status", true),
            (503, "status", true),
        ];
        for (code, kind, unavailable) in cases {
            let err = UpstreamError::from_status(StatusCode::from_u16(code).unwrap(), &headers);
            assert_eq!(err.kind(), kind, "{code}");
            assert_eq!(err.status_label(), code.to_string());
            assert_eq!(err.is_unavailable(), unavailable, "{code}");
            let message = err.to_string();
            assert_eq!(message, message.to_lowercase(), "{code}");
        }
        assert!(matches!(
            UpstreamError::from_status(StatusCode::TOO_MANY_REQUESTS, &headers),
            UpstreamError::TooManyRequests { retry_after: Some(d) } if d == Duration::from_secs(12)
        ));
    }
}
