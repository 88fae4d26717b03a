//! The file as written. Every value stays optional and unparsed here so that
//! defaults live in one place and parse errors can name their field.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{Deserializer, Error, Visitor};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub default_upstream: Option<String>,
    pub builtin_upstreams: Option<bool>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub cluster: RawCluster,
    #[serde(default)]
    pub gc: RawGc,
    #[serde(default)]
    pub upstream: Vec<RawUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGc {
    pub ttl: Option<String>,
    pub interval: Option<String>,
    pub sweep_delay: Option<String>,
    pub delete_rate: Option<u64>,
    pub orphan_grace: Option<String>,
    pub bucket_bytes: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub kind: Option<String>,
    pub path: Option<PathBuf>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    pub abort_uploads_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub node_id: Option<u64>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    /// `"ID=HOST:PORT"` entries.
    pub peers: Option<Vec<String>>,
    pub snapshot_every: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub memory_bytes: Option<RawSize>,
    pub disk_bytes: Option<RawSize>,
    pub tag_ttl: Option<String>,
    pub max_stale: Option<String>,
    pub max_manifest_bytes: Option<RawSize>,
    pub memory_object_max: Option<RawSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub name: String,
    pub remote_url: Option<String>,
    pub username: Option<String>,
    pub username_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub tag_ttl: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
}

/// A size as written: `"256MiB"`, `"1.5GiB"` or an integer count of bytes.
#[derive(Clone, Debug)]
pub(super) enum RawSize {
    Text(String),
    Bytes(i64),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawSizeVisitor)
    }
}

struct RawSizeVisitor;

impl Visitor<'_> for RawSizeVisitor {
    type Value = RawSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"256MiB\" or a number of bytes")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<RawSize, E> {
        Ok(RawSize::Bytes(v))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<RawSize, E> {
        Ok(RawSize::Text(v.to_owned()))
    }
}
