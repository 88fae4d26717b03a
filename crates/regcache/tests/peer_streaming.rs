//! One upstream fetch per blob for the whole cluster, with three real
//! members on a real S3 server in front of a real upstream registry: a cold
//! storm spread over the members costs one upstream GET and leaves one
//! object; the owner killed mid-download costs no client its blob; an owner
//! that sends wrong bytes (a fault-injecting stand-in, below) never gets
//! them stored or served whole.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Bucket, metric, metrics};
use futures_util::StreamExt as _;
use testkit::{
    BuiltImage, Fault, FaultProxy, ImageSpec, LayerCompression, OciLayout, Registry, Rule, S3Server,
};

const MIB: u64 = 1 << 20;
/// How long the upstream pauses mid-body, so every request of a storm
/// arrives while the one download is surely under way.
const UPSTREAM_PAUSE: Duration = Duration::from_secs(3);

/// The size of the storm's blob: `REGCACHE_STORM_MIB`, 200 by default.
fn storm_mib() -> u64 {
    std::env::var("REGCACHE_STORM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A registry behind a fault proxy, and the layout its images come from.
struct Upstream {
    registry: Registry,
    proxy: FaultProxy,
    layout: OciLayout,
}

impl Upstream {
    fn start() -> Upstream {
        let registry = Registry::start().expect("starting the registry");
        let proxy = FaultProxy::start(&registry).expect("starting the fault proxy");
        let layout = OciLayout::new()
            .expect("creating a layout")
            .with_layer_compression(LayerCompression::None);
        Upstream {
            registry,
            proxy,
            layout,
        }
    }

    fn push(&mut self, tag: &str, layers: &[u64]) -> BuiltImage {
        let image = self
            .layout
            .add_image(tag, &ImageSpec::new(layers))
            .expect("building an image");
        self.layout
            .push(tag, &self.registry, &format!("library/app:{tag}"))
            .expect("pushing an image");
        image
    }

    fn blob(&self, digest: &str) -> Arc<Vec<u8>> {
        Arc::new(std::fs::read(self.layout.blob_path(digest)).expect("reading a layout blob"))
    }

    /// Blob GETs that reached the registry (ranged ones included).
    fn blob_gets(&self, digest: &str) -> usize {
        self.registry.count("GET", &format!("/blobs/{digest}"))
    }

    /// The next GET of `digest` pauses after 8 MiB for [`UPSTREAM_PAUSE`].
    fn pause_next_get(&self, digest: &str) {
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
fn start_cluster(upstream: &Upstream, s3: &S3Server) -> Cluster {
    let cluster = Cluster::start_on_s3(&upstream.proxy.url(), 3, "", s3);
    cluster.leader(&[1, 2, 3], Duration::from_secs(20));
    for id in 1..=3 {
        wait_until(
            Duration::from_secs(10),
            &format!("member {id} learns the owner key"),
            || peers_status(&cluster, id)["owner_key"] == true,
        );
    }
    cluster
}

fn peers_status(cluster: &Cluster, id: u64) -> serde_json::Value {
    let (code, body) = common::raw_request(&cluster.member(id).host(), "GET", "/status.json");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_slice(&body).expect("status json");
    status["peers"].clone()
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What one client of a storm saw.
#[derive(Debug)]
struct Pulled {
    first_byte: Instant,
    done: Instant,
}

/// GETs `url` (from `from` on, as an open-ended Range, when given) and
/// checks every byte against `blob` as it streams: never holds a body.
async fn pull_checked(
    http: reqwest::Client,
    url: String,
    from: Option<u64>,
    blob: Arc<Vec<u8>>,
) -> Result<Pulled, String> {
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
        first_byte: first_byte.ok_or("an empty body")?,
        done: Instant::now(),
    })
}

/// Runs every `(member host, range start)` pull at once; returns each
/// outcome in order.
fn storm(
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
                let url = format!("http://{host}/v2/app/blobs/{digest}");
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
fn cluster_metric(cluster: &Cluster, name: &str, label: &str) -> f64 {
    cluster
        .running()
        .into_iter()
        .map(|id| metric(&metrics(cluster.member(id)), name, label))
        .sum()
}

#[test]
fn a_cold_storm_over_three_members_costs_one_upstream_get() {
    let s3 = S3Server::start().expect("starting the S3 server");
    let mut upstream = Upstream::start();
    let size = storm_mib() * MIB;
    let image = upstream.push("storm", &[size]);
    let digest = image.layer_digests[0].0.clone();
    let blob = upstream.blob(&digest);
    let size = blob.len() as u64;
    let cluster = start_cluster(&upstream, &s3);
    upstream.registry.clear_log();
    upstream.pause_next_get(&digest);

    // 150 clients, 50 per member; 8 of them open-ended Range requests at
    // eighths of the blob, as containerd 2.1's parallel fetch sends.
    let pulls: Vec<(String, Option<u64>)> = (0..150u64)
        .map(|i| {
            let host = cluster.member(i % 3 + 1).host();
            let from = (i < 8).then(|| size * i / 8);
            (host, from)
        })
        .collect();
    let started = Instant::now();
    let outcomes = storm(pulls, &digest, &blob);
    let elapsed = started.elapsed();
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 150 pulls failed: {failed:#?}",
        failed.len()
    );

    assert_eq!(upstream.blob_gets(&digest), 1, "upstream GETs of the blob");
    // A body completes only once the download is verified: every full GET
    // had its first byte before any client had its last.
    let full: Vec<&Pulled> = outcomes[8..].iter().filter_map(|o| o.as_ref().ok()).collect();
    let first_done = full.iter().map(|p| p.done).min().expect("full pulls");
    let last_first_byte = full.iter().map(|p| p.first_byte).max().expect("full pulls");
    assert!(
        last_first_byte < first_done,
        "a client's first byte came {:?} after the first body completed",
        last_first_byte - first_done
    );
    for id in 1..=3 {
        cluster.member(id).wait_for_downloads();
    }
    let bucket = Bucket::connect(&s3);
    assert_eq!(bucket.wait_for_blob(&digest, Duration::from_secs(20)).len(), 1);
    // The members that asked wrote nothing to the bucket after the owner.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(bucket.blob_keys(&digest).len(), 1, "objects for the digest");
    assert_eq!(bucket.assert_all_objects_verified(), 1);
    assert_eq!(
        cluster_metric(&cluster, "regcache_peer_fetches_served_total", ""),
        2.0
    );
    assert_eq!(
        cluster_metric(&cluster, "regcache_peer_fetches_asked_total", ""),
        2.0
    );
    assert_eq!(cluster_metric(&cluster, "regcache_peer_fallbacks_total", ""), 0.0);
    let received = cluster_metric(&cluster, "regcache_peer_received_bytes_total", "");
    assert_eq!(received, 2.0 * size as f64, "bytes streamed between members");
    eprintln!("150 pulls of {size} bytes over 3 members in {elapsed:?}");
}
