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

    /// Blob GETs sent to the upstream (ranged ones included), counted as
    /// they arrive: the registry logs a request only once it completes.
    fn blob_gets(&self, digest: &str) -> usize {
        self.proxy.count("GET", &format!("/blobs/{digest}"))
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

/// The member streaming `digest` to the others, as member `asking` names
/// it in `/status.json` (its download's `peer`), or itself.
fn owner_seen_by(cluster: &Cluster, asking: u64, digest: &str) -> Option<u64> {
    let (code, body) = common::raw_request(&cluster.member(asking).host(), "GET", "/status.json");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_slice(&body).expect("status json");
    let downloads = status["downloads"].as_array()?;
    let download = downloads.iter().find(|d| d["digest"] == digest)?;
    match download["source"].as_str()? {
        "peer" => download["peer"].as_u64(),
        "upstream" => Some(asking),
        _ => None,
    }
}

#[test]
fn the_owner_killed_mid_download_costs_no_client_its_blob() {
    let s3 = S3Server::start().expect("starting the S3 server");
    let mut upstream = Upstream::start();
    let image = upstream.push("kill", &[48 * MIB]);
    let digest = image.layer_digests[0].0.clone();
    let blob = upstream.blob(&digest);
    let mut cluster = start_cluster(&upstream, &s3);
    upstream.pause_next_get(&digest);

    let pulls: Vec<(String, Option<u64>)> = (0..30u64)
        .map(|i| (cluster.member(i % 3 + 1).host(), (i < 3).then_some(i * MIB)))
        .collect();
    let hosts: Vec<String> = pulls.iter().map(|(host, _)| host.clone()).collect();
    let storming = {
        let (digest, blob) = (digest.clone(), Arc::clone(&blob));
        std::thread::spawn(move || storm(pulls, &digest, &blob))
    };
    let mut owner = None;
    wait_until(Duration::from_secs(10), "a member streams from the owner", || {
        owner = (1..=3).find_map(|id| owner_seen_by(&cluster, id, &digest).filter(|o| *o != id));
        owner.is_some()
    });
    let owner = owner.expect("an owner");
    // The owner's upstream download is paused after 8 MiB: kill it there.
    std::thread::sleep(Duration::from_millis(500));
    let owner_host = cluster.member(owner).host();
    cluster.kill(owner);
    let killed = Instant::now();
    let outcomes = storming.join().expect("the storm");
    let survivors: Vec<(&String, &Result<Pulled, String>)> = hosts
        .iter()
        .zip(&outcomes)
        .filter(|(host, _)| **host != owner_host)
        .collect();
    assert_eq!(survivors.len(), 20);
    for (host, outcome) in &survivors {
        let pulled = outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("a pull from {host} failed: {e}"));
        // The fallback starts at once (the owner's connection is reset):
        // each pull ends within the download time, far below this bound.
        assert!(
            pulled.done - killed < Duration::from_secs(30),
            "{:?}",
            pulled.done - killed
        );
    }
    let fallbacks = cluster_metric(&cluster, "regcache_peer_fallbacks_total", "");
    assert_eq!(fallbacks, 2.0, "each surviving member fell back once");
    // The owner's GET, then one ranged GET from each survivor.
    assert_eq!(upstream.blob_gets(&digest), 3);
    for id in cluster.running() {
        cluster.member(id).wait_for_downloads();
    }
    // What the survivors kept is served again, now from their disks.
    let again = storm(
        cluster
            .running()
            .iter()
            .map(|id| (cluster.member(*id).host(), None))
            .collect(),
        &digest,
        &blob,
    );
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    assert_eq!(upstream.blob_gets(&digest), 3);
}

/// A fault-injecting stand-in for an owner: a real member of the Raft
/// group (in this process) whose Peer service answers every blob with the
/// right length and one byte flipped mid-way.
#[derive(Default)]
struct CorruptingOwner {
    blobs: std::sync::Mutex<std::collections::HashMap<String, Arc<Vec<u8>>>>,
}

impl peer::LocalContent for CorruptingOwner {
    fn open_blob(
        &self,
        _upstream: String,
        _repo: oci::RepoName,
        digest: oci::Digest,
        offset: u64,
    ) -> peer::Answer<'_, peer::ServedBlob> {
        Box::pin(async move {
            let blob = self
                .blobs
                .lock()
                .expect("blobs")
                .get(&digest.to_string())
                .cloned();
            let blob = blob.ok_or(peer::ServeError::NotFound)?;
            let mut wrong = blob[offset as usize..].to_vec();
            let middle = wrong.len() / 2;
            wrong[middle] ^= 0xff;
            let body = futures_util::stream::iter([Ok(wrong.into())]).boxed();
            Ok(peer::ServedBlob {
                size: blob.len() as u64,
                body,
            })
        })
    }

    /// Manifests are not what this stand-in tests: it never has one.
    fn manifest(
        &self,
        _upstream: String,
        _repo: oci::RepoName,
        _reference: oci::Reference,
    ) -> peer::Answer<'_, peer::ManifestReply> {
        Box::pin(async { Err(peer::ServeError::Failed("a stand-in without manifests".into())) })
    }
}

#[test]
fn an_owner_sending_wrong_bytes_is_never_stored_or_served_whole() {
    let s3 = S3Server::start().expect("starting the S3 server");
    let mut upstream = Upstream::start();
    let cluster = Cluster::start_on_s3_except(&upstream.proxy.url(), 3, "", &s3, &[3]);
    // Member 3 runs here, with the corrupting Peer service on its port.
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let fake_dir = tempfile::tempdir().expect("a dir");
    let peers: std::collections::BTreeMap<u64, String> =
        (1..=3).map(|id| (id, cluster.cluster_addr(id))).collect();
    let settings = meta::GroupSettings {
        node_id: 3,
        advertise: peers[&3].clone(),
        peers,
        snapshot_every: meta::GroupSettings::DEFAULT_SNAPSHOT_EVERY,
    };
    let fake = runtime
        .block_on(meta::Meta::start(fake_dir.path(), &settings))
        .expect("member 3");
    let source = Arc::new(CorruptingOwner::default());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(cluster.cluster_addr(3)))
        .expect("binding member 3's port");
    let services =
        tonic::service::Routes::new(peer::service(Arc::clone(&source) as Arc<dyn peer::LocalContent>));
    let serving = fake
        .serve_cluster(listener, None, services, std::future::pending())
        .expect("serving member 3");
    runtime.spawn(serving);
    cluster.leader(&[1, 2], Duration::from_secs(20));
    wait_until(Duration::from_secs(10), "member 3 learns the owner key", || {
        fake.owner_key().is_some()
    });
    let key = fake.owner_key().expect("the owner key");
    // Images of one layer until one layer is member 3's to fetch.
    let (digest, blob) = (0..40)
        .find_map(|n| {
            let image = upstream.push(&format!("v{n}"), &[2 * MIB]);
            let digest = image.layer_digests[0].0.clone();
            (peer::owners::ranked(&key, digest.as_bytes(), &[1, 2, 3])[0] == 3).then(|| {
                let blob = upstream.blob(&digest);
                (digest, blob)
            })
        })
        .expect("a layer member 3 owns");
    source
        .blobs
        .lock()
        .expect("blobs")
        .insert(digest.clone(), Arc::clone(&blob));

    let path = format!("/v2/app/blobs/{digest}");
    let member = cluster.member(1);
    let first = common::raw_request_with(&member.host(), "GET", &path, &[]);
    let whole_and_wrong = first.status == 200 && first.body.len() == blob.len() && first.body != *blob;
    assert!(!whole_and_wrong, "the wrong bytes were served whole");
    assert!(
        first.status != 200 || first.body.len() < blob.len(),
        "status {} with {} of {} bytes",
        first.status,
        first.body.len(),
        blob.len()
    );
    let hex = digest.trim_start_matches("sha256:");
    let kept = testkit::files_under(&member.data_dir.join("blobs"));
    assert!(!kept.iter().any(|f| f.ends_with(hex)), "kept on disk: {kept:?}");
    assert!(
        Bucket::connect(&s3).blob_keys(&digest).is_empty(),
        "stored in the bucket"
    );
    assert_eq!(
        metric(
            &metrics(member),
            "regcache_peer_fallbacks_total",
            "reason=\"corrupt\""
        ),
        1.0
    );
    assert_eq!(peers_status(&cluster, 1)["paused"][0]["id"], 3);

    // Member 3 is not asked again for a while: the next request succeeds.
    let again = common::raw_request_with(&member.host(), "GET", &path, &[]);
    assert_eq!(again.status, 200);
    assert!(again.body == *blob, "the second body is not the blob");
    runtime.block_on(fake.shutdown());
}

#[test]
fn skopeo_through_three_members_at_once_fetches_each_blob_and_tag_once() {
    let s3 = S3Server::start().expect("starting the S3 server");
    let mut upstream = Upstream::start();
    let image = upstream.push("rollout", &[6 * MIB, 3 * MIB, MIB, 200_000]);
    let cluster = start_cluster(&upstream, &s3);
    let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().expect("a dir")).collect();
    // Two pulls per member, all at once, as nodes of a rollout would.
    std::thread::scope(|scope| {
        for (i, dir) in dirs.iter().enumerate() {
            let member = cluster.member(i as u64 % 3 + 1);
            scope.spawn(move || common::skopeo_pull(member, "app:rollout", dir.path()));
        }
    });
    for dir in &dirs {
        common::assert_dir_blobs_verified(dir.path(), &image.blob_digests());
    }
    for digest in image.blob_digests() {
        assert_eq!(upstream.blob_gets(&digest), 1, "upstream GETs of {digest}");
    }
    let tag_requests = upstream.proxy.count("HEAD", "/manifests/rollout")
        + upstream.proxy.count("GET", "/manifests/rollout");
    assert_eq!(tag_requests, 1, "upstream requests for the tag");
    let by_digest = upstream
        .proxy
        .count("GET", &format!("/manifests/{}", image.manifest_digest));
    assert_eq!(by_digest, 1, "upstream GETs of the manifest by digest");
    assert_eq!(cluster_metric(&cluster, "regcache_peer_fallbacks_total", ""), 0.0);
}

/// How many voters member `id` sees.
fn voters_seen_by(cluster: &Cluster, id: u64) -> usize {
    let view = cluster.status(id);
    let members = view["members"].as_array().cloned().unwrap_or_default();
    members.iter().filter(|m| m["voter"] == true).count()
}

/// Pushes an image of `layers` small random layers; returns its layers
/// and their bytes.
fn push_small_layers(upstream: &mut Upstream, tag: &str, layers: usize) -> Vec<(String, Arc<Vec<u8>>)> {
    let sizes: Vec<u64> = (0..layers as u64).map(|n| 100_000 + n * 1000).collect();
    let image = upstream.push(tag, &sizes);
    image
        .layer_digests
        .iter()
        .map(|(digest, _)| (digest.clone(), upstream.blob(digest)))
        .collect()
}

/// Each blob cold through every member in `members` at once: one upstream
/// GET each, every body checked.
fn assert_fetched_once(
    cluster: &Cluster,
    upstream: &Upstream,
    members: &[u64],
    blobs: &[(String, Arc<Vec<u8>>)],
) {
    for (digest, blob) in blobs {
        let pulls = members
            .iter()
            .map(|id| (cluster.member(*id).host(), None))
            .collect();
        let outcomes = storm(pulls, digest, blob);
        assert!(outcomes.iter().all(Result::is_ok), "{digest}: {outcomes:?}");
        assert_eq!(
            upstream.blob_gets(digest),
            1,
            "upstream GETs of {digest} through {members:?}"
        );
    }
}

#[test]
fn a_member_added_and_removed_under_load_fails_no_pull() {
    let s3 = S3Server::start().expect("starting the S3 server");
    let mut upstream = Upstream::start();
    let load: Vec<(String, Arc<Vec<u8>>)> = (0..3)
        .flat_map(|n| push_small_layers(&mut upstream, &format!("load{n}"), 12))
        .collect();
    let after_add = push_small_layers(&mut upstream, "added", 24);
    let after_remove = push_small_layers(&mut upstream, "removed", 24);
    let mut cluster = Cluster::start_on_s3(&upstream.proxy.url(), 3, "", &s3);
    let leader = cluster.leader(&[1, 2, 3], Duration::from_secs(20));

    // Pulls all along, through the members that stay: cold ones first.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hosts: Vec<String> = (1..=3).map(|id| cluster.member(id).host()).collect();
    let loading = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut pulls = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for ((digest, blob), host) in load.iter().zip(hosts.iter().cycle().skip(pulls % 3)) {
                    let response =
                        common::raw_request_with(host, "GET", &format!("/v2/app/blobs/{digest}"), &[]);
                    if response.status != 200 || response.body != **blob {
                        failures.push(format!("{digest} via {host}: {}", response.status));
                    }
                    pulls += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            (pulls, failures)
        })
    };

    cluster.start_member(4);
    let via = cluster.cluster_addr(leader);
    let addr = cluster.cluster_addr(4);
    common::regcache_cli(
        "cluster",
        &["add-node", "--cluster", &via, "--id", "4", "--addr", &addr],
    );
    for id in 1..=4 {
        wait_until(
            Duration::from_secs(10),
            &format!("member {id} sees 4 voters"),
            || voters_seen_by(&cluster, id) == 4,
        );
    }
    // Every member, the new one too, agrees on each digest's owner.
    assert_fetched_once(&cluster, &upstream, &[1, 2, 3, 4], &after_add);
    let served_by_4 = metric(
        &metrics(cluster.member(4)),
        "regcache_peer_fetches_served_total",
        "",
    );
    assert!(served_by_4 >= 1.0, "the new member owns its share");

    common::regcache_cli("cluster", &["remove-node", "--cluster", &via, "--id", "4"]);
    cluster.stop(4);
    for id in 1..=3 {
        wait_until(
            Duration::from_secs(10),
            &format!("member {id} sees 3 voters"),
            || voters_seen_by(&cluster, id) == 3,
        );
    }
    assert_fetched_once(&cluster, &upstream, &[1, 2, 3], &after_remove);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (pulls, failures) = loading.join().expect("the load");
    assert!(
        failures.is_empty(),
        "{} of {pulls} pulls failed: {failures:#?}",
        failures.len()
    );
    assert!(pulls >= 36, "only {pulls} pulls under load");
}
