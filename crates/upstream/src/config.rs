use std::fmt;
use std::time::Duration;

/// A password or other credential. Its `Debug` and `Display` print
/// `[redacted]` so that logging a config or an error can never leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; call only where it is sent, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How to reach one upstream registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Registry host clients use, e.g. `quay.io`; only a label for logs and
    /// metrics.
    pub name: String,
    /// Base URL actually contacted; may carry a path prefix. Must not carry
    /// credentials: those go in `username`/`password`.
    pub remote_url: url::Url,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Proxy for `http://` upstream URLs. Proxy environment variables are not
    /// read here: without these two fields the upstream is contacted directly.
    pub http_proxy: Option<url::Url>,
    /// Proxy for `https://` upstream URLs.
    pub https_proxy: Option<url::Url>,
    pub connect_timeout: Duration,
    /// Idle read timeout: the longest wait for the next byte, headers
    /// included. There is no total timeout because blobs can be huge.
    pub read_timeout: Duration,
}

/// Why `url` cannot be an upstream's remote URL, if it cannot. Credentials
/// are refused because they would end up in logs and in every request
/// line; they belong in `username` and `password`.
pub fn remote_url_problem(url: &url::Url) -> Option<&'static str> {
    if !matches!(url.scheme(), "http" | "https") {
        return Some("scheme must be http or https");
    }
    if url.host_str().is_none() {
        return Some("must have a host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("must not contain credentials");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Some("must not have a query or fragment");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let cfg = UpstreamConfig {
            name: "quay.io".into(),
            remote_url: "https://quay.io".parse().unwrap(),
            username: Some("alice".into()),
            password: Some(Secret::new("hunter2")),
            http_proxy: None,
            https_proxy: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        };
        let shown = format!("{cfg:?} {}", Secret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
