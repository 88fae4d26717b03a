//! Parsers for single values. They return a message without the field's
//! name; [`AtField::at`] adds it, since only the caller knows the path.

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use url::Url;

use super::raw::RawSize;

/// A bad value and the path of its field, e.g. `upstream[2].remote_url`.
#[derive(Debug)]
pub(super) struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub(super) trait AtField<T> {
    fn at(self, field: &str) -> Result<T, FieldError>;
}

impl<T> AtField<T> for Result<T, String> {
    fn at(self, field: &str) -> Result<T, FieldError> {
        self.map_err(|message| FieldError::new(field, message))
    }
}

pub(super) fn size(raw: &RawSize) -> Result<u64, String> {
    match raw {
        RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| "must not be negative".to_owned()),
        RawSize::Text(text) => text
            .trim()
            .parse::<ByteSize>()
            .map(|size| size.0)
            .map_err(|_| format!("invalid size {text:?} (expected e.g. \"256MiB\", \"1.5GiB\" or bytes)")),
    }
}

pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

pub(super) fn positive<T: Default + PartialEq>(value: T) -> Result<T, String> {
    if value == T::default() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(value)
}

pub(super) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("invalid socket address {text:?} (expected e.g. \"0.0.0.0:5000\")"))
}

/// An upstream's name is the registry host clients use: `hostname[:port]`,
/// lowercase, because clients and containerd's `ns` parameter send it so.
pub(crate) fn check_upstream_name(name: &str) -> Result<(), String> {
    if name != name.to_ascii_lowercase() {
        return Err(format!("{name:?} must be lowercase"));
    }
    let (host, port) = match name.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (name, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !port_ok || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "invalid name {name:?} (expected a registry host such as \"quay.io\" or \"registry.local:5000\")"
        ));
    }
    Ok(())
}

/// The URL regcache contacts for an upstream, by the `upstream` crate's
/// rules; credentials belong in `username` and `password_file` or
/// `password_env`, never in the URL.
pub(crate) fn check_remote_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("invalid url {text:?}: {e}"))?;
    match upstream::remote_url_problem(&url) {
        Some(problem) => Err(problem.to_owned()),
        None => Ok(url),
    }
}

/// An http(s) URL without credentials: those would show wherever the URL
/// is printed. Proxies use this as it is.
pub(super) fn http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("invalid url {text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("scheme must be http or https".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".to_owned());
    }
    Ok(url)
}
