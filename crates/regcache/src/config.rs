//! The configuration file, merged with the built-in upstreams and the
//! command line into one validated [`Config`]. Precedence: built-in defaults
//! < file < command line. Every check runs at start, so a bad value stops
//! the process with an error that names the field instead of failing later
//! on the first pull.

mod cluster;
mod fields;
mod overrides;
mod raw;
mod render;
mod storage;
mod upstreams;
mod validate;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod storage_tests;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use upstream::UpstreamConfig;

pub use cluster::ClusterConfig;
pub(crate) use fields::{check_remote_url, check_upstream_name};
pub use overrides::{ClusterOverrides, ServeOverrides, StorageOverrides, UpstreamOverride};
pub use render::render_redacted;
pub use storage::{StorageConfig, StorageKind};

/// The effective configuration of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Upstream for requests that name none (no `ns` and no host prefix).
    pub default_upstream: String,
    pub cache: CacheConfig,
    pub storage: StorageConfig,
    pub cluster: ClusterConfig,
    /// Garbage collection: idle content goes after `ttl` (docs/gc.md).
    pub gc: cache::GcSettings,
    pub upstreams: Vec<UpstreamConfigEntry>,
}

/// Bounds and freshness of the content tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// How long a tag is served without asking the upstream again.
    pub tag_ttl: Duration,
    /// How long a cached tag may still be served while the upstream fails.
    pub max_stale: Duration,
    pub max_manifest_bytes: u64,
    /// Objects larger than this never enter the memory tier.
    pub memory_object_max: u64,
}

/// One upstream registry: how the `upstream` crate reaches it, plus what
/// only the cache and the config need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfigEntry {
    pub client: UpstreamConfig,
    /// Where `client.password` was read from, so it can be shown without
    /// the value.
    pub password_source: Option<PasswordSource>,
    /// The file `client.username` was read from, if it came from one.
    pub username_file: Option<PathBuf>,
    /// Overrides `cache.tag_ttl` for this upstream.
    pub tag_ttl: Option<Duration>,
}

/// Where an upstream password came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    File(PathBuf),
    Env(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Syntax errors and unknown fields; toml's message carries line and column.
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

/// Loads `path` (or, with `None`, the embedded default: no file at all),
/// applies `overrides` and validates the result.
pub fn load(path: Option<&Path>, overrides: &ServeOverrides) -> Result<Config, ConfigError> {
    let (origin, raw) = match path {
        None => ("embedded default".to_owned(), raw::RawConfig::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let raw = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
            (path.display().to_string(), raw)
        }
    };
    validate::validate(raw, overrides).map_err(|e| ConfigError::Invalid {
        origin,
        field: e.field,
        message: e.message,
    })
}
