//! Turns the file as written into a [`Config`]: defaults, the command line,
//! and every cross-field rule.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::fields::{self, AtField, FieldError};
use cache::GcSettings;

use super::raw::{RawCache, RawConfig, RawGc, RawSize};
use super::{CacheConfig, Config, upstreams};
use crate::config::ServeOverrides;

const KIB: u64 = 1 << 10;
const MIB: u64 = KIB << 10;
const GIB: u64 = MIB << 10;

const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
const DEFAULT_DATA_DIR: &str = "./regcache-data";
const DEFAULT_UPSTREAM: &str = "docker.io";
const DEFAULT_GC: GcSettings = GcSettings {
    ttl: Duration::from_secs(168 * 3600),
    interval: Duration::from_secs(3600),
    sweep_delay: Duration::from_secs(600),
    delete_rate: 1000,
    orphan_grace: Duration::from_secs(24 * 3600),
    bucket_bytes: None,
};
const DEFAULT_CACHE: CacheConfig = CacheConfig {
    memory_bytes: 128 * MIB,
    disk_bytes: 20 * GIB,
    tag_ttl: Duration::from_secs(60),
    max_stale: Duration::from_secs(24 * 3600),
    max_manifest_bytes: 4 * MIB,
    memory_object_max: MIB,
};

pub(super) fn validate(raw: RawConfig, overrides: &ServeOverrides) -> Result<Config, FieldError> {
    let listen = fields::socket_addr(raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN)).at("listen")?;
    let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        return Err(FieldError::new("data_dir", "must not be empty"));
    }
    let cache = cache(&raw.cache)?;
    let gc = gc(&overrides.gc.apply(raw.gc))?;
    let storage = super::storage::storage(raw.storage, &overrides.storage)?;
    let cluster = super::cluster::cluster(raw.cluster, &overrides.cluster)?;
    let upstreams = upstreams::resolve(
        raw.builtin_upstreams.unwrap_or(true),
        raw.upstream,
        &overrides.upstreams,
    )?;
    let default_upstream = raw
        .default_upstream
        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
    if !upstreams.iter().any(|u| u.client.name == default_upstream) {
        return Err(FieldError::new(
            "default_upstream",
            format!("{default_upstream:?} is not a configured upstream"),
        ));
    }
    let listen = overrides.listen.unwrap_or(listen);
    if let Some(peer_listen) = cluster.listen
        && same_socket(listen, peer_listen)
    {
        return Err(FieldError::new(
            "cluster.listen",
            format!("{peer_listen} would take the port of listen ({listen})"),
        ));
    }
    Ok(Config {
        listen,
        data_dir: overrides.data_dir.clone().unwrap_or(data_dir),
        default_upstream,
        cache,
        storage,
        cluster,
        gc,
        upstreams,
    })
}

/// `[gc]`: any duration, in seconds too; the interval and the delete rate
/// must be positive.
fn gc(raw: &RawGc) -> Result<GcSettings, FieldError> {
    let d = DEFAULT_GC;
    let interval = duration(&raw.interval, d.interval, "gc.interval")?;
    if interval.is_zero() {
        return Err(FieldError::new("gc.interval", "must be greater than zero"));
    }
    let delete_rate = match raw.delete_rate {
        None => d.delete_rate,
        Some(rate) => u32::try_from(rate).ok().filter(|rate| *rate > 0).ok_or_else(|| {
            FieldError::new("gc.delete_rate", format!("must be between 1 and {}", u32::MAX))
        })?,
    };
    Ok(GcSettings {
        ttl: duration(&raw.ttl, d.ttl, "gc.ttl")?,
        interval,
        sweep_delay: duration(&raw.sweep_delay, d.sweep_delay, "gc.sweep_delay")?,
        delete_rate,
        orphan_grace: duration(&raw.orphan_grace, d.orphan_grace, "gc.orphan_grace")?,
        bucket_bytes: match &raw.bucket_bytes {
            Some(raw) => Some(
                fields::size(raw)
                    .and_then(fields::positive)
                    .at("gc.bucket_bytes")?,
            ),
            None => d.bucket_bytes,
        },
    })
}

fn cache(raw: &RawCache) -> Result<CacheConfig, FieldError> {
    let d = DEFAULT_CACHE;
    let memory_bytes = size(&raw.memory_bytes, d.memory_bytes, "cache.memory_bytes")?;
    let memory_object_max = match &raw.memory_object_max {
        // Zero is allowed: it keeps every object out of the memory tier.
        Some(raw) => fields::size(raw).at("cache.memory_object_max")?,
        None => d.memory_object_max.min(memory_bytes),
    };
    if memory_object_max > memory_bytes {
        return Err(FieldError::new(
            "cache.memory_object_max",
            format!("{memory_object_max} bytes exceeds cache.memory_bytes ({memory_bytes} bytes)"),
        ));
    }
    Ok(CacheConfig {
        memory_bytes,
        disk_bytes: size(&raw.disk_bytes, d.disk_bytes, "cache.disk_bytes")?,
        tag_ttl: duration(&raw.tag_ttl, d.tag_ttl, "cache.tag_ttl")?,
        max_stale: duration(&raw.max_stale, d.max_stale, "cache.max_stale")?,
        max_manifest_bytes: size(
            &raw.max_manifest_bytes,
            d.max_manifest_bytes,
            "cache.max_manifest_bytes",
        )?,
        memory_object_max,
    })
}

/// Whether two listeners would bind the same port: port 0 picks a free one,
/// and `[::]` takes IPv4 too where the system is dual-stack.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let wildcard = |s: SocketAddr| s.ip().is_unspecified() && (s.is_ipv6() || a.is_ipv4() == b.is_ipv4());
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || wildcard(a) || wildcard(b))
}

/// A size that must be positive, or its default.
fn size(raw: &Option<RawSize>, default: u64, field: &str) -> Result<u64, FieldError> {
    match raw {
        Some(raw) => fields::size(raw).and_then(fields::positive).at(field),
        None => Ok(default),
    }
}

/// A duration (zero allowed), or its default.
pub(super) fn duration(raw: &Option<String>, default: Duration, field: &str) -> Result<Duration, FieldError> {
    match raw {
        Some(text) => fields::duration(text).at(field),
        None => Ok(default),
    }
}
