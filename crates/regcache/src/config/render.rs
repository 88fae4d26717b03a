//! The effective configuration as TOML, for `config check` and start-up
//! logs: every upstream spelled out, passwords replaced by where they come
//! from.

use std::time::Duration;

use serde::Serialize;

use super::{ClusterConfig, Config, PasswordSource, StorageConfig, StorageKind, UpstreamConfigEntry};

const HEADER: &str = "\
# effective configuration: built-in defaults, file and command line merged.
# every upstream is listed, so builtin_upstreams is false here.
";

#[derive(Serialize)]
struct Rendered<'a> {
    listen: String,
    data_dir: String,
    default_upstream: &'a str,
    builtin_upstreams: bool,
    cache: RenderedCache,
    storage: RenderedStorage<'a>,
    cluster: RenderedCluster<'a>,
    gc: RenderedGc,
    upstream: Vec<RenderedUpstream<'a>>,
}

#[derive(Serialize)]
struct RenderedGc {
    ttl: String,
    interval: String,
    sweep_delay: String,
    delete_rate: u32,
    orphan_grace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket_bytes: Option<String>,
}

#[derive(Serialize)]
struct RenderedCluster<'a> {
    node_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Only with a listener: without one it is empty, and an `advertise`
    /// without `listen` would not load back.
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<&'a str>,
    peers: Vec<String>,
    snapshot_every: u64,
}

#[derive(Serialize)]
struct RenderedStorage<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    force_path_style: Option<bool>,
    abort_uploads_after: String,
}

#[derive(Serialize)]
struct RenderedCache {
    memory_bytes: String,
    disk_bytes: String,
    tag_ttl: String,
    max_stale: String,
    max_manifest_bytes: String,
    memory_object_max: String,
}

#[derive(Serialize)]
struct RenderedUpstream<'a> {
    name: &'a str,
    remote_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_env: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_proxy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    https_proxy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag_ttl: Option<String>,
    connect_timeout: String,
    read_timeout: String,
}

/// The effective configuration as TOML. Passwords never appear: each shows
/// as `"[redacted]"` next to the `password_file` or `password_env` it came from.
pub fn render_redacted(cfg: &Config) -> String {
    let c = &cfg.cache;
    let rendered = Rendered {
        listen: cfg.listen.to_string(),
        data_dir: cfg.data_dir.display().to_string(),
        default_upstream: &cfg.default_upstream,
        builtin_upstreams: false,
        cache: RenderedCache {
            memory_bytes: size(c.memory_bytes),
            disk_bytes: size(c.disk_bytes),
            tag_ttl: duration(c.tag_ttl),
            max_stale: duration(c.max_stale),
            max_manifest_bytes: size(c.max_manifest_bytes),
            memory_object_max: size(c.memory_object_max),
        },
        storage: storage(&cfg.storage),
        cluster: cluster(&cfg.cluster),
        gc: RenderedGc {
            ttl: duration(cfg.gc.ttl),
            interval: duration(cfg.gc.interval),
            sweep_delay: duration(cfg.gc.sweep_delay),
            delete_rate: cfg.gc.delete_rate,
            orphan_grace: duration(cfg.gc.orphan_grace),
            bucket_bytes: cfg.gc.bucket_bytes.map(size),
        },
        upstream: cfg.upstreams.iter().map(upstream).collect(),
    };
    let body = toml::to_string(&rendered).expect("strings, booleans and tables always serialize");
    format!("{HEADER}{body}")
}

fn storage(s: &StorageConfig) -> RenderedStorage<'_> {
    let mut rendered = RenderedStorage {
        kind: "fs",
        path: None,
        bucket: None,
        prefix: None,
        endpoint: None,
        region: None,
        force_path_style: None,
        abort_uploads_after: duration(s.abort_uploads_after),
    };
    match &s.kind {
        StorageKind::Fs { path } => rendered.path = path.as_ref().map(|p| p.display().to_string()),
        StorageKind::S3(s3) => {
            rendered.kind = "s3";
            rendered.bucket = Some(&s3.bucket);
            rendered.prefix = Some(&s3.prefix);
            rendered.endpoint = s3.endpoint.as_deref();
            rendered.region = Some(&s3.region);
            rendered.force_path_style = Some(s3.force_path_style);
        }
    }
    rendered
}

fn cluster(c: &ClusterConfig) -> RenderedCluster<'_> {
    let group = &c.group;
    RenderedCluster {
        node_id: group.node_id,
        listen: c.listen.map(|l| l.to_string()),
        advertise: c.listen.map(|_| group.advertise.as_str()),
        peers: group
            .peers
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect(),
        snapshot_every: group.snapshot_every,
    }
}

fn upstream(u: &UpstreamConfigEntry) -> RenderedUpstream<'_> {
    let (password_file, password_env) = match &u.password_source {
        Some(PasswordSource::File(path)) => (Some(path.display().to_string()), None),
        Some(PasswordSource::Env(var)) => (None, Some(var.as_str())),
        None => (None, None),
    };
    let c = &u.client;
    RenderedUpstream {
        name: &c.name,
        remote_url: c.remote_url.as_str(),
        // A username read from a file is shown as the file, like a password.
        username: c.username.as_deref().filter(|_| u.username_file.is_none()),
        username_file: u.username_file.as_ref().map(|p| p.display().to_string()),
        password: c.password.as_ref().map(|_| "[redacted]"),
        password_file,
        password_env,
        http_proxy: c.http_proxy.as_ref().map(url::Url::as_str),
        https_proxy: c.https_proxy.as_ref().map(url::Url::as_str),
        tag_ttl: u.tag_ttl.map(duration),
        connect_timeout: duration(c.connect_timeout),
        read_timeout: duration(c.read_timeout),
    }
}

/// The largest binary unit that divides `bytes` exactly, so the text reads
/// well and parses back to the same number.
fn size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
