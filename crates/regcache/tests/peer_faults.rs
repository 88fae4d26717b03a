//! Peer streaming when the owner fails, with real members on a real S3
//! server in front of a real upstream registry: the owner killed -9
//! mid-download costs no client its blob; an owner that sends wrong bytes
//! (a fault-injecting stand-in, below) never gets them stored or served
//! whole.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::rollout::{
    MIB, Pulled, Upstream, cluster_metric, peers_status, start_cluster, storm, wait_until,
};
use common::{Bucket, metric, metrics};
use futures_util::StreamExt as _;
use testkit::S3Server;

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
