//! One upstream fetch per blob for the whole cluster, with three real
//! members on a real S3 server in front of a real upstream registry: a cold
//! storm spread over the members costs one upstream GET and leaves one
//! object; skopeo pulls of a cold image through every member at once cost
//! one upstream request per blob and per tag; a member added and removed
//! under load fails no pull, and every member agrees on the owners.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::rollout::{MIB, Pulled, Upstream, cluster_metric, start_cluster, storm, wait_until};
use common::{Bucket, metric, metrics};
use testkit::S3Server;

/// The size of the storm's blob: `REGCACHE_STORM_MIB`, 200 by default.
fn storm_mib() -> u64 {
    std::env::var("REGCACHE_STORM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
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
    let mut cluster = start_cluster(&upstream, &s3);
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
