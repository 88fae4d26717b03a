//! Settings the command line (and its `REGCACHE_*` variables) sets on top
//! of the configuration file, and how each lands in the file's raw form, so
//! the file's rules check both alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;

use super::raw::{RawCluster, RawGc, RawSize, RawStorage};
use super::{check_remote_url, check_upstream_name};

/// Settings the command line overrides on top of the file.
#[derive(Clone, Debug, Default, Args)]
pub struct ServeOverrides {
    /// Address to listen on, e.g. 0.0.0.0:5000 (overrides `listen`).
    #[arg(long, env = "REGCACHE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Where cached content and metadata live (overrides `data_dir`).
    #[arg(long, env = "REGCACHE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Sets an upstream's remote URL, adding the upstream if it is new;
    /// repeatable, e.g. --upstream docker.io=http://127.0.0.1:5001.
    #[arg(long = "upstream", value_name = "NAME=URL")]
    pub upstreams: Vec<UpstreamOverride>,
    #[command(flatten)]
    pub storage: StorageOverrides,
    #[command(flatten)]
    pub cluster: ClusterOverrides,
    #[command(flatten)]
    pub gc: GcOverrides,
}

/// `[gc]` settings from the command line; checked with the file's rules.
#[derive(Clone, Debug, Default, Args)]
pub struct GcOverrides {
    /// Collect content idle for longer than this, e.g. 168h; 0s turns idle
    /// expiry off (overrides `gc.ttl`).
    #[arg(long, env = "REGCACHE_GC_TTL", value_name = "DURATION")]
    pub gc_ttl: Option<String>,
    /// How often the leader starts a pass (overrides `gc.interval`).
    #[arg(long, env = "REGCACHE_GC_INTERVAL", value_name = "DURATION")]
    pub gc_interval: Option<String>,
    /// Wait between condemning and committing (overrides `gc.sweep_delay`).
    #[arg(long, env = "REGCACHE_GC_SWEEP_DELAY", value_name = "DURATION")]
    pub gc_sweep_delay: Option<String>,
    /// Objects the sweep deletes per second at most (overrides
    /// `gc.delete_rate`).
    #[arg(long, env = "REGCACHE_GC_DELETE_RATE", value_name = "N")]
    pub gc_delete_rate: Option<u64>,
    /// Objects no index entry names are deleted once this old (overrides
    /// `gc.orphan_grace`).
    #[arg(long, env = "REGCACHE_GC_ORPHAN_GRACE", value_name = "DURATION")]
    pub gc_orphan_grace: Option<String>,
    /// Keep the object tier's content under this size, e.g. 500GiB
    /// (overrides `gc.bucket_bytes`).
    #[arg(long, env = "REGCACHE_GC_BUCKET_BYTES", value_name = "SIZE")]
    pub gc_bucket_bytes: Option<String>,
}

impl GcOverrides {
    /// The file's `[gc]` with these settings on top.
    pub(super) fn apply(&self, mut raw: RawGc) -> RawGc {
        overlay(&mut raw.ttl, &self.gc_ttl);
        overlay(&mut raw.interval, &self.gc_interval);
        overlay(&mut raw.sweep_delay, &self.gc_sweep_delay);
        overlay(&mut raw.delete_rate, &self.gc_delete_rate);
        overlay(&mut raw.orphan_grace, &self.gc_orphan_grace);
        overlay(
            &mut raw.bucket_bytes,
            &self.gc_bucket_bytes.clone().map(RawSize::Text),
        );
        raw
    }
}

/// `[storage]` settings from the command line; checked with the file's rules.
#[derive(Clone, Debug, Default, Args)]
pub struct StorageOverrides {
    /// Keep content in this S3 bucket (sets `storage.kind = "s3"`).
    #[arg(long, env = "REGCACHE_S3_BUCKET", value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix inside the bucket.
    #[arg(long, env = "REGCACHE_S3_PREFIX", value_name = "PREFIX")]
    pub s3_prefix: Option<String>,
    /// Endpoint of an S3-compatible store, e.g. http://127.0.0.1:8333.
    #[arg(long, env = "REGCACHE_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "REGCACHE_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Address the bucket as ENDPOINT/BUCKET (most S3-compatible stores need it).
    #[arg(long, env = "REGCACHE_S3_FORCE_PATH_STYLE")]
    pub s3_force_path_style: bool,
}

impl StorageOverrides {
    /// The file's `[storage]` with these settings on top.
    pub(crate) fn apply(&self, mut raw: RawStorage) -> RawStorage {
        if self.s3_bucket.is_some() {
            raw.kind = Some("s3".to_owned());
            raw.path = None;
        }
        overlay(&mut raw.bucket, &self.s3_bucket);
        overlay(&mut raw.prefix, &self.s3_prefix);
        overlay(&mut raw.endpoint, &self.s3_endpoint);
        overlay(&mut raw.region, &self.s3_region);
        if self.s3_force_path_style {
            raw.force_path_style = Some(true);
        }
        raw
    }
}

/// `[cluster]` settings from the command line; checked with the file's rules.
#[derive(Clone, Debug, Default, Args)]
pub struct ClusterOverrides {
    /// This replica's Raft node id, at least 1 (overrides `cluster.node_id`).
    #[arg(
        long,
        env = "REGCACHE_NODE_ID",
        value_name = "N",
        conflicts_with = "node_id_from_hostname"
    )]
    pub node_id: Option<u64>,
    /// Node id = ordinal + 1 of a StatefulSet pod's hostname (regcache-2 is
    /// node 3), so every pod can share one pod template.
    #[arg(long, env = "REGCACHE_NODE_ID_FROM_HOSTNAME")]
    pub node_id_from_hostname: bool,
    /// Address for Raft and peer traffic, e.g. 0.0.0.0:5001; replicas only.
    #[arg(long, env = "REGCACHE_CLUSTER_LISTEN", value_name = "ADDR")]
    pub cluster_listen: Option<String>,
    /// HOST:PORT peers reach this node at, when the listen address is not it.
    #[arg(long, env = "REGCACHE_CLUSTER_ADVERTISE", value_name = "HOST:PORT")]
    pub cluster_advertise: Option<String>,
    /// An initial member, this node included; repeatable (the environment
    /// variable takes a comma-separated list), replaces `cluster.peers`.
    #[arg(
        long = "peer",
        env = "REGCACHE_PEERS",
        value_name = "ID=HOST:PORT",
        value_delimiter = ','
    )]
    pub peers: Vec<String>,
    /// Snapshot the Raft log (and purge what it covers) every N entries.
    #[arg(long, env = "REGCACHE_SNAPSHOT_EVERY", value_name = "N")]
    pub snapshot_every: Option<u64>,
}

impl ClusterOverrides {
    /// The file's `[cluster]` with these settings on top; the hostname's node
    /// id is resolved with the rest of `[cluster]`, which can report errors.
    pub(crate) fn apply(&self, mut raw: RawCluster) -> RawCluster {
        overlay(&mut raw.node_id, &self.node_id);
        overlay(&mut raw.listen, &self.cluster_listen);
        overlay(&mut raw.advertise, &self.cluster_advertise);
        if !self.peers.is_empty() {
            raw.peers = Some(self.peers.clone());
        }
        overlay(&mut raw.snapshot_every, &self.snapshot_every);
        raw
    }
}

/// A flag that was given replaces the file's value; one that was not
/// leaves it.
fn overlay<T: Clone>(field: &mut Option<T>, flag: &Option<T>) {
    if flag.is_some() {
        field.clone_from(flag);
    }
}

/// One `--upstream NAME=URL`, checked by the same rules as the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamOverride {
    pub name: String,
    pub remote_url: url::Url,
}

impl FromStr for UpstreamOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, url) = s.split_once('=').ok_or("expected NAME=URL")?;
        check_upstream_name(name)?;
        let remote_url = check_remote_url(url)?;
        Ok(UpstreamOverride {
            name: name.to_owned(),
            remote_url,
        })
    }
}
