//! A cold rollout over a cluster: an upstream registry behind a fault proxy
//! (which counts upstream GETs as they arrive), a cluster that knows its
//! owner key, and storms of concurrent pulls, every byte checked as it
//! streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use testkit::{
    BuiltImage, Fault, FaultProxy, ImageSpec, LayerCompression, OciLayout, Registry, Rule, S3Server,
};

pub use testkit::wait_until;

use super::cluster::Cluster;
use super::{metric, metrics, raw_request};

pub const MIB: u64 = 1 << 20;
/// How long the upstream pauses mid-body, so every request of a storm
/// arrives while the one download is surely under way.
pub const UPSTREAM_PAUSE: Duration = Duration::from_secs(3);

/// A registry behind a fault proxy, and the layout its images come from.
pub struct Upstream {
    pub registry: Registry,
    pub proxy: FaultProxy,
    pub layout: OciLayout,
}

impl Upstream {
    pub fn start() -> Upstream {
        let registry = Registry::start().expect("starting the registry");
        let proxy = FaultProxy::start(&registry).expect("starting the fault proxy");
        // Uncompressed: the bytes are what matters, and gzip costs time.
        let layout = OciLayout::new()
            .expect("creating a layout")
            .with_layer_compression(LayerCompression::None);
        Upstream {
            registry,
            proxy,
            layout,
        }
    }

    /// Pushes an image with layers of about these sizes as `library/app:<tag>`.
    pub fn push(&mut self, tag: &str, layers: &[u64]) -> BuiltImage {
        let image = self
            .layout
            .add_image(tag, &ImageSpec::new(layers))
            .expect("building an image");
        self.layout
            .push(tag, &self.registry, &format!("library/app:{tag}"))
            .expect("pushing an image");
        image
    }

    /// The bytes of a blob as pushed.
    pub fn blob(&self, digest: &str) -> Arc<Vec<u8>> {
        Arc::new(std::fs::read(self.layout.blob_path(digest)).expect("reading a layout blob"))
    }

    /// GETs the registry logged since its log was last cleared.
    pub fn gets(&self) -> Vec<testkit::AccessLine> {
        self.registry
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect()
    }

    /// Blob GETs sent to the upstream (ranged ones included), counted as
    /// they arrive: the registry logs a request only once it completes.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.proxy.count("GET", &format!("/blobs/{digest}"))
    }

    /// The next GET of `digest` pauses after 8 MiB for [`UPSTREAM_PAUSE`].
    pub fn pause_next_get(&self, digest: &str) {
        let pause = Fault::Pause {
            after: 8 << 20,
            pause: UPSTREAM_PAUSE,
        };
        self.proxy.set_rules(vec![
            Rule::new("GET", &format!("/blobs/{digest}"), pause).times(1),
        ]);
    }
}

/// Three members on `s3`, once each knows the group's owner key.
pub fn start_cluster(upstream: &Upstream, s3: &S3Server) -> Cluster {
    let cluster = Cluster::start_on_s3(&upstream.proxy.url(), 3, "", s3);
    cluster.serving(Duration::from_secs(20));
    cluster
}

pub fn peers_status(cluster: &Cluster, id: u64) -> serde_json::Value {
    cluster.status_json(id)["peers"].clone()
}

/// What one client of a storm saw.
#[derive(Debug)]
pub struct Pulled {
    pub started: Instant,
    pub first_byte: Instant,
    pub done: Instant,
}

/// GETs `url` (from `from` on, as an open-ended Range, when given) and
/// checks every byte against `blob` as it streams: never holds a body.
pub async fn pull_checked(
    http: reqwest::Client,
    url: String,
    from: Option<u64>,
    blob: Arc<Vec<u8>>,
) -> Result<Pulled, String> {
    let started = Instant::now();
    let mut request = http.get(&url);
    if let Some(from) = from {
        request = request.header("Range", format!("bytes={from}-"));
    }
    let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    let expected = if from.is_some() { 206 } else { 200 };
    if response.status().as_u16() != expected {
        return Err(format!("{url} from {from:?}: status {}", response.status()));
    }
    let mut position = from.unwrap_or(0) as usize;
    let mut first_byte = None;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: body failed at {position}: {e}"))?;
        first_byte.get_or_insert_with(Instant::now);
        let end = position + chunk.len();
        if end > blob.len() || blob[position..end] != chunk[..] {
            return Err(format!("{url}: wrong bytes at {position}..{end}"));
        }
        position = end;
    }
    if position != blob.len() {
        return Err(format!("{url}: body ended at {position} of {}", blob.len()));
    }
    Ok(Pulled {
        started,
        first_byte: first_byte.ok_or("an empty body")?,
        done: Instant::now(),
    })
}

/// Runs every `(member host, range start)` pull at once; returns each
/// outcome in order.
pub fn storm(
    pulls: Vec<(String, Option<u64>)>,
    digest: &str,
    blob: &Arc<Vec<u8>>,
) -> Vec<Result<Pulled, String>> {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client");
        let tasks: Vec<_> = pulls
            .into_iter()
            .map(|(host, from)| {
                let url = format!("http://{host}/v2/library/app/blobs/{digest}");
                tokio::spawn(pull_checked(http.clone(), url, from, Arc::clone(blob)))
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
        }
        outcomes
    })
}

/// The sum of `name` (with `label`) over every running member.
pub fn cluster_metric(cluster: &Cluster, name: &str, label: &str) -> f64 {
    cluster
        .running()
        .into_iter()
        .map(|id| metric(&metrics(cluster.member(id)), name, label))
        .sum()
}
