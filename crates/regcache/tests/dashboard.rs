//! The chart's Grafana dashboard and alerts query metrics that exist: a
//! real three-member cluster on a real S3 server is put through what the
//! panels and alerts watch (cold and warm pulls, an unknown digest, a tag
//! served stale, a member down, the object tier down, disk evictions, a GC
//! pass), and every metric name in helm/regcache/files/dashboard.json and
//! alerts.yaml must be in the members' `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::rollout::{Upstream, storm};
use testkit::{Fault, Rule, S3Server};

/// The metric names an expression text mentions (a histogram's series by
/// their family name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("regcache_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric families the members expose now.
fn exposed(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .running()
        .into_iter()
        .flat_map(|id| {
            common::metrics(cluster.member(id))
                .lines()
                .filter(|l| l.starts_with("regcache_"))
                .flat_map(metric_names)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Pulls each blob through `members`, all at once, checking every body.
fn pull_all(cluster: &Cluster, upstream: &Upstream, members: &[u64], blobs: &[String]) {
    for digest in blobs {
        let blob = upstream.blob(digest);
        let pulls = members
            .iter()
            .map(|id| (cluster.member(*id).host(), None))
            .collect();
        let outcomes = storm(pulls, digest, &blob);
        assert!(outcomes.iter().all(Result::is_ok), "{digest}: {outcomes:?}");
    }
}

#[test]
fn every_metric_the_dashboard_and_alerts_query_exists() {
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../helm/regcache/files");
    let dashboard = std::fs::read_to_string(files.join("dashboard.json")).expect("the dashboard");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let alerts = std::fs::read_to_string(files.join("alerts.yaml")).expect("the alerts");
    let wanted: BTreeSet<String> = exprs
        .iter()
        .map(String::as_str)
        .chain([alerts.as_str()])
        .flat_map(metric_names)
        .collect();
    assert!(
        wanted.len() > 20,
        "only {} metrics in the dashboard and alerts",
        wanted.len()
    );

    let s3 = S3Server::start().expect("starting the S3 server");
    let mut upstream = Upstream::start();
    let warm = upstream.push("v1", &[600_000, 500_000, 400_000]);
    let cold: Vec<String> = (0..4)
        .flat_map(|n| upstream.push(&format!("c{n}"), &[300_000; 5]).layer_digests)
        .map(|(d, _)| d)
        .collect();
    let while_s3_down = upstream.push("s3down", &[200_000]);
    // A small disk tier evicts; a one-second tag TTL goes stale; a GC pass
    // finds content idle after a second.
    let toml = "[cache]\ndisk_bytes = \"3MiB\"\ntag_ttl = \"1s\"\n\
                [gc]\nttl = \"1s\"\ninterval = \"1h\"\nsweep_delay = \"1s\"\n";
    let mut cluster = Cluster::start_on_s3(&upstream.proxy.url(), 3, toml, &s3);
    cluster.serving(Duration::from_secs(20));

    // Cold, then warm pulls, through every member; a digest nobody has.
    pull_all(&cluster, &upstream, &[1, 2, 3], &warm.blob_digests());
    pull_all(&cluster, &upstream, &[1, 2, 3], &warm.blob_digests());
    let unknown = format!("/v2/app/blobs/sha256:{}", "0".repeat(64));
    assert_eq!(
        common::raw_request(&cluster.member(1).host(), "GET", &unknown).0,
        404
    );

    // The tag past its TTL while the upstream fails: served stale.
    let tag_path = "/v2/app/manifests/v1";
    assert_eq!(
        common::raw_request(&cluster.member(1).host(), "GET", tag_path).0,
        200
    );
    std::thread::sleep(Duration::from_millis(1500));
    let unavailable = Fault::respond(503, &[], "down");
    upstream.proxy.set_rules(vec![
        Rule::new("HEAD", "/manifests/v1", unavailable.clone()),
        Rule::new("GET", "/manifests/v1", unavailable),
    ]);
    for id in 1..=3 {
        assert_eq!(
            common::raw_request(&cluster.member(id).host(), "GET", tag_path).0,
            200
        );
    }
    upstream.proxy.clear();

    // A member down: the blobs it owns are fetched by the others themselves.
    cluster.kill(3);
    pull_all(&cluster, &upstream, &[1, 2], &cold);

    // The object tier down: content is kept on disk only.
    let mut s3 = s3;
    s3.stop();
    pull_all(&cluster, &upstream, &[1], &while_s3_down.blob_digests());
    s3.restart().expect("restarting the S3 server");

    // A GC pass over content idle for more than a second.
    let leader = cluster.leader(&[1, 2], Duration::from_secs(20));
    let addr = cluster.cluster_addr(leader);
    common::regcache_cli("gc", &["run", "--cluster", &addr]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = exposed(&cluster);
        let missing: Vec<&String> = wanted.difference(&have).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard or alerts query metrics no member exposes: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
