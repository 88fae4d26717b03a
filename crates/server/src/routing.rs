use std::collections::HashMap;
use std::sync::Arc;

use cache::Remote;
use oci::{ErrorCode, RepoName};

use crate::error::ApiError;

/// What a `/v2/<name>/...` path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    TagsList,
}

/// Splits the part of the path after `/v2/` into the raw repository name and
/// the endpoint. The reference is the last component, so a repository
/// named `a/manifests/b` still parses.
pub fn parse_path(rest: &str) -> Result<(&str, Endpoint<'_>), ApiError> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok((name, Endpoint::TagsList));
    }
    let unknown = || ApiError::new(ErrorCode::NameUnknown, "no such registry endpoint");
    let (head, reference) = rest.rsplit_once('/').ok_or_else(unknown)?;
    let (name, kind) = head.rsplit_once('/').ok_or_else(unknown)?;
    match kind {
        "manifests" => Ok((name, Endpoint::Manifest(reference))),
        "blobs" if reference == "uploads" => Err(unsupported()),
        "blobs" => Ok((name, Endpoint::Blob(reference))),
        "uploads" if name.ends_with("/blobs") => Err(unsupported()),
        _ => Err(unknown()),
    }
}

pub fn unsupported() -> ApiError {
    ApiError::new(
        ErrorCode::Unsupported,
        "this is a pull-through cache: only pulls are supported",
    )
}

/// The upstreams by the registry host clients use, and the default.
pub struct Routes {
    sources: HashMap<String, Arc<Remote>>,
    default: Arc<Remote>,
}

/// Where a request goes: the upstream and the repository name there.
pub struct Target {
    pub source: Arc<Remote>,
    pub repo: RepoName,
}

impl Routes {
    /// `default` must name one of `sources` (the config loader checks it).
    pub fn new(sources: Vec<Remote>, default: &str) -> Option<Routes> {
        let sources: HashMap<String, Arc<Remote>> = sources
            .into_iter()
            .map(|s| (s.upstream.name().to_owned(), Arc::new(s)))
            .collect();
        let default = Arc::clone(sources.get(default)?);
        Some(Routes { sources, default })
    }

    /// The upstream configured under `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Remote>> {
        self.sources.get(name).cloned()
    }

    /// Picks the upstream: containerd's `ns` query parameter, else a first
    /// path component naming a configured upstream (the path-prefix form of
    /// podman/CRI-O mirrors), else the default. Unknown `ns` values are
    /// refused: the cache is not an open proxy to arbitrary hosts.
    pub fn select(&self, raw_name: &str, ns: Option<&str>) -> Result<Target, ApiError> {
        let (source, name) = match ns {
            Some(ns) => {
                let source = self.sources.get(ns).ok_or_else(|| {
                    let shown: String = ns.chars().take(64).collect();
                    ApiError::new(
                        ErrorCode::NameUnknown,
                        format!("upstream {shown:?} is not configured"),
                    )
                })?;
                (Arc::clone(source), raw_name)
            }
            None => match raw_name
                .split_once('/')
                .and_then(|(first, rest)| Some((self.sources.get(first)?, rest)))
            {
                Some((source, rest)) => (Arc::clone(source), rest),
                None => (Arc::clone(&self.default), raw_name),
            },
        };
        let repo: RepoName = name
            .parse()
            .map_err(|e| ApiError::new(ErrorCode::NameInvalid, format!("{e}")))?;
        // Docker Hub's official images live under `library/`.
        let repo = if source.upstream.name() == "docker.io" && repo.components() == 1 {
            repo.prefixed("library")
                .map_err(|e| ApiError::new(ErrorCode::NameInvalid, format!("{e}")))?
        } else {
            repo
        };
        Ok(Target { source, repo })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            parse_path("a/b/manifests/latest").unwrap(),
            ("a/b", Endpoint::Manifest("latest"))
        );
        assert_eq!(
            parse_path("a/manifests/b/manifests/v1").unwrap(),
            ("a/manifests/b", Endpoint::Manifest("v1"))
        );
        assert_eq!(
            parse_path("a/blobs/sha256:x").unwrap(),
            ("a", Endpoint::Blob("sha256:x"))
        );
        assert_eq!(parse_path("a/b/tags/list").unwrap(), ("a/b", Endpoint::TagsList));
        assert!(parse_path("a/blobs/uploads/").is_err());
        assert!(parse_path("a/blobs/uploads/123").is_err());
        assert!(parse_path("a").is_err());
        assert!(parse_path("a/other/x").is_err());
    }
}
