//! Several real `regcache` processes forming one Raft group on loopback, in
//! front of a real upstream registry: tags agreed by every member, leader
//! failover, catch-up by log and by snapshot, membership changes, and a
//! member without a quorum that keeps serving what it has.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, manifest_digest};
use common::{metric, raw_request};
use testkit::{ImageSpec, OciLayout, Registry, SeededRegistry};

const ELECTION_DEADLINE: Duration = Duration::from_secs(30);

fn push(registry: &Registry, layout: &mut OciLayout, tag: &str, seed: u64) {
    layout
        .add_image(tag, &ImageSpec::new(&[1000 + seed, 2000]))
        .expect("image");
    layout
        .push(tag, registry, &format!("library/app:{tag}"))
        .expect("push");
}

fn manifest_gets(registry: &Registry) -> usize {
    registry.count("GET", "/manifests/")
}

#[test]
fn a_tag_resolved_by_one_member_is_served_by_all_without_asking_upstream() {
    let registry = Registry::start().expect("registry");
    let mut layout = OciLayout::new().expect("layout");
    push(&registry, &mut layout, "v1", 1);
    let cluster = Cluster::start(&registry.url(), 3, &[]);
    let leader = cluster.leader(&[1, 2, 3], ELECTION_DEADLINE);
    println!("leader {leader} elected");

    registry.clear_log();
    let digest = manifest_digest(cluster.member(1), "library/app", "v1");
    let upstream_gets = manifest_gets(&registry);
    assert!(upstream_gets >= 1, "{:?}", registry.requests());
    for id in [2, 3] {
        cluster.caught_up(id, leader, Duration::from_secs(10));
        assert_eq!(manifest_digest(cluster.member(id), "library/app", "v1"), digest);
    }
    assert_eq!(
        manifest_gets(&registry),
        upstream_gets,
        "members 2 and 3 asked the upstream: {:?}",
        registry.requests()
    );
    // The tag's owner (member 1, or the member it asked) recorded the tag
    // and the manifest: through Raft directly as the leader, or forwarded
    // to it as a follower.
    let ok = r#"outcome="ok""#;
    let (mut count, mut sum) = (0.0, 0.0);
    for id in [1, 2, 3] {
        let m = common::metrics(cluster.member(id));
        count += metric(&m, "regcache_meta_proposal_seconds_count", ok);
        sum += metric(&m, "regcache_meta_proposal_seconds_sum", ok);
    }
    assert!(count >= 2.0, "{count} proposals");
    println!(
        "mean proposal latency (leader {leader}): {:.1} ms over {count} proposals",
        sum / count * 1e3
    );
}

/// The files of the shared object tier holding `digest`.
fn object_files(cluster: &Cluster, digest: &str) -> Vec<std::path::PathBuf> {
    let hex = digest.trim_start_matches("sha256:");
    let dir = cluster.objects_dir().join("blobs/sha256").join(hex);
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.expect("object entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until member `id` has `n` blobs in its index (recorded through
/// Raft by whichever member fetched them).
fn wait_for_blob_entries(cluster: &Cluster, id: u64, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &common::metrics(cluster.member(id)),
        "regcache_index_entries",
        r#"kind="blob""#,
    ) < n
    {
        assert!(Instant::now() < deadline, "member {id} never indexed {n} blobs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A member other than 1 without a disk copy of `digest`. Member 1 pulled
/// it, through its owner: of members 2 and 3, at most the owner has a copy.
fn member_without_a_copy(cluster: &Cluster, digest: &str) -> u64 {
    let hex = digest.trim_start_matches("sha256:");
    let has_copy = |id: u64| {
        testkit::files_under(&cluster.data_dir(id).join("blobs"))
            .iter()
            .any(|f| f.ends_with(hex))
    };
    [2, 3]
        .into_iter()
        .find(|id| !has_copy(*id))
        .expect("a member without a copy")
}

#[test]
fn a_blob_another_member_fetched_streams_from_the_object_tier_checked_by_its_crc() {
    let SeededRegistry { registry, image, .. } =
        SeededRegistry::start(&[3_000_000, 2_000_000], "library/app:v1").expect("a registry with an image");
    let [(good, _), (bad, _)] = [0, 1].map(|i| image.layer_digests[i].clone());
    let cluster = Cluster::start(&registry.url(), 3, &[]);
    cluster.leader(&[1, 2, 3], ELECTION_DEADLINE);
    let path = |digest: &str| format!("/v2/library/app/blobs/{digest}");
    for digest in [&good, &bad] {
        let (status, body) = raw_request(&cluster.member(1).host(), "GET", &path(digest));
        assert_eq!((status, testkit::sha256_bytes(&body)), (200, digest.clone()));
    }
    for id in [2, 3] {
        wait_for_blob_entries(&cluster, id, 2.0);
    }

    // This member's disk lacks the blob: it streams from the object tier,
    // checked against the CRC its owner recorded, not hashed again.
    registry.clear_log();
    let reader = member_without_a_copy(&cluster, &good);
    let (status, body) = raw_request(&cluster.member(reader).host(), "GET", &path(&good));
    assert_eq!((status, testkit::sha256_bytes(&body)), (200, good.clone()));
    assert_eq!(registry.count("GET", "/blobs/"), 0, "{:?}", registry.requests());
    let m = common::metrics(cluster.member(reader));
    assert_eq!(
        metric(
            &m,
            "regcache_objstore_checked_reads_total",
            r#"check="crc64nvme""#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "regcache_cache_requests_total", r#"tier="object""#),
        1.0,
        "{m}"
    );

    // Same length, its first byte flipped (long sent by the time the last
    // chunk is checked): the CRC does not match, so the response never
    // completes, and the object is deleted.
    let files = object_files(&cluster, &bad);
    assert_eq!(files.len(), 1, "{files:?}");
    let mut flipped = std::fs::read(&files[0]).expect("reading the object");
    flipped[0] = !flipped[0];
    std::fs::write(&files[0], &flipped).expect("corrupting the object");
    let reader = member_without_a_copy(&cluster, &bad);
    let (status, body) = raw_request(&cluster.member(reader).host(), "GET", &path(&bad));
    assert!(
        status != 200 || body.len() < flipped.len(),
        "a corrupt object was served whole"
    );
    let m = common::metrics(cluster.member(reader));
    assert_eq!(metric(&m, "regcache_objstore_corrupt_total", ""), 1.0, "{m}");
    assert!(
        object_files(&cluster, &bad).is_empty(),
        "the corrupt object is still there"
    );
}

#[test]
fn a_killed_leader_is_replaced_and_catches_up_when_it_returns() {
    let registry = Registry::start().expect("registry");
    let mut layout = OciLayout::new().expect("layout");
    push(&registry, &mut layout, "v1", 1);
    let mut cluster = Cluster::start(&registry.url(), 3, &[]);
    let old = cluster.leader(&[1, 2, 3], ELECTION_DEADLINE);
    manifest_digest(cluster.member(old), "library/app", "v1");

    let killed_at = Instant::now();
    cluster.kill(old);
    let survivors: Vec<u64> = cluster.running();
    let new = cluster.leader(&survivors, ELECTION_DEADLINE);
    let election = killed_at.elapsed();
    println!("leader {old} killed; member {new} leads after {election:?}");
    assert_ne!(new, old);

    // A new tag resolved through a follower is recorded through the new
    // leader, which then answers it without asking the upstream.
    push(&registry, &mut layout, "v2", 2);
    let follower = survivors
        .iter()
        .copied()
        .find(|id| *id != new)
        .expect("a follower");
    let started = Instant::now();
    let v2 = manifest_digest(cluster.member(follower), "library/app", "v2");
    println!("first tag after failover resolved in {:?}", started.elapsed());
    cluster.caught_up(new, follower, Duration::from_secs(10));
    registry.clear_log();
    assert_eq!(manifest_digest(cluster.member(new), "library/app", "v2"), v2);
    assert_eq!(
        manifest_gets(&registry) + registry.count("HEAD", "/manifests/"),
        0,
        "{:?}",
        registry.requests()
    );

    // One line for the outage, not one per heartbeat.
    let logs = cluster.member(new).process.logs();
    let unreachable = format!("raft peer unreachable node_id={old}");
    assert_eq!(logs.matches(&unreachable).count(), 1, "{logs}");
    assert!(!logs.contains("openraft"), "openraft's own lines: {logs}");

    cluster.start_member(old);
    cluster.leader(&[1, 2, 3], ELECTION_DEADLINE);
    cluster.caught_up(old, new, Duration::from_secs(20));
    let reached = format!("raft peer reachable again node_id={old}");
    assert!(cluster.member(new).process.logs().contains(&reached));
    let view = cluster.status(old);
    assert_eq!(
        view["leader"].as_u64(),
        Some(new),
        "the returning member does not disrupt: {view:#}"
    );
    registry.clear_log();
    assert_eq!(manifest_digest(cluster.member(old), "library/app", "v2"), v2);
    assert_eq!(manifest_gets(&registry), 0, "{:?}", registry.requests());
}

/// A whole cluster stopped at once (the StatefulSet deleted): members that
/// are stopping refuse Raft RPCs instead of handing them to a stopped core,
/// so no member logs an error.
#[test]
fn every_member_stopped_at_once_logs_no_error() {
    let registry = Registry::start().expect("registry");
    let mut cluster = Cluster::start(&registry.url(), 3, &[]);
    cluster.leader(&[1, 2, 3], ELECTION_DEADLINE);
    for logs in cluster.stop_all() {
        let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(logs.contains("regcache stopped"), "{logs}");
    }
}

#[test]
fn a_stopping_leader_hands_over_to_a_follower() {
    let registry = Registry::start().expect("registry");
    let mut layout = OciLayout::new().expect("layout");
    push(&registry, &mut layout, "v1", 1);
    let mut cluster = Cluster::start(&registry.url(), 3, &[]);
    let old = cluster.leader(&[1, 2, 3], ELECTION_DEADLINE);
    let stopped_at = Instant::now();
    let logs = cluster.stop(old);
    let new = cluster.leader(&cluster.running(), ELECTION_DEADLINE);
    println!(
        "leader {old} stopped (SIGTERM); member {new} leads after {:?}",
        stopped_at.elapsed()
    );
    assert!(logs.contains("handed leadership over before stopping"), "{logs}");
    let digest = manifest_digest(cluster.member(new), "library/app", "v1");
    cluster.start_member(old);
    cluster.caught_up(old, new, Duration::from_secs(20));
    registry.clear_log();
    assert_eq!(manifest_digest(cluster.member(old), "library/app", "v1"), digest);
    assert_eq!(manifest_gets(&registry), 0, "{:?}", registry.requests());
}

/// Waits until `leader` purged its log past `index`.
fn purged_past(cluster: &Cluster, leader: u64, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = cluster.status(leader);
        if view["purged_index"].as_u64() > Some(index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never purged its log: {view:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cluster_cmd(args: &[&str]) -> String {
    common::regcache_cli("cluster", args)
}

/// A member added after the leader purged its log can only be brought up
/// to date by snapshot; it then serves without asking the upstream, and is
/// removed again. (A member that is merely down keeps the leader from
/// purging the entries it still needs, so it catches up from the log.)
#[test]
fn a_fourth_member_is_added_by_snapshot_and_removed_online() {
    let registry = Registry::start().expect("registry");
    let mut layout = OciLayout::new().expect("layout");
    for n in 0..12 {
        push(&registry, &mut layout, &format!("t{n}"), n);
    }
    let mut cluster = Cluster::start(&registry.url(), 3, &["--snapshot-every", "10"]);
    let leader = cluster.leader(&[1, 2, 3], ELECTION_DEADLINE);
    for n in 0..12 {
        manifest_digest(cluster.member(leader), "library/app", &format!("t{n}"));
    }
    purged_past(&cluster, leader, 1);

    cluster.start_member(4);
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    // Asked of a follower: the command finds the leader by itself.
    let via = cluster.cluster_addr(follower);
    let started = Instant::now();
    let added = cluster_cmd(&[
        "add-node",
        "--cluster",
        &via,
        "--id",
        "4",
        "--addr",
        &cluster.cluster_addr(4),
    ]);
    println!("member 4 added in {:?}:\n{added}", started.elapsed());
    let voters = |view: &serde_json::Value| {
        view["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter(|m| m["voter"] == true)
            .count()
    };
    assert_eq!(voters(&cluster.status(leader)), 4);
    cluster.caught_up(4, leader, Duration::from_secs(20));
    let m = common::metrics(cluster.member(4));
    assert!(
        metric(&m, "regcache_raft_snapshots_installed_total", "") >= 1.0,
        "{m}"
    );
    registry.clear_log();
    manifest_digest(cluster.member(4), "library/app", "t0");
    assert_eq!(manifest_gets(&registry), 0, "{:?}", registry.requests());
    let status = cluster_cmd(&["status", "--cluster", &cluster.cluster_addr(4)]);
    assert!(status.contains(&format!("leader {leader},")), "{status}");

    cluster_cmd(&["remove-node", "--cluster", &via, "--id", "4"]);
    let view = cluster.status(leader);
    assert_eq!(voters(&view), 3, "{view:#}");
    assert_eq!(view["members"].as_array().map(Vec::len), Some(3), "{view:#}");
    cluster.stop(4);
    // Every member tells the changes in its log.
    for id in [1, 2, 3] {
        let member = cluster.member(id);
        let deadline = Instant::now() + Duration::from_secs(5);
        let logged = |needle: &str| {
            member
                .process
                .logs()
                .lines()
                .any(|l| l.contains(needle) && l.contains("node_id=4"))
        };
        while !(logged("raft member added") && logged("raft member removed")) {
            assert!(Instant::now() < deadline, "{}", member.process.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_member_without_quorum_serves_what_it_has_and_says_so() {
    let registry = Registry::start().expect("registry");
    let mut layout = OciLayout::new().expect("layout");
    push(&registry, &mut layout, "v1", 1);
    let mut cluster = Cluster::start(&registry.url(), 3, &[]);
    let leader = cluster.leader(&[1, 2, 3], ELECTION_DEADLINE);
    let digest = manifest_digest(cluster.member(leader), "library/app", "v1");
    let survivor = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.caught_up(survivor, leader, Duration::from_secs(10));
    for id in [1, 2, 3] {
        if id != survivor {
            cluster.kill(id);
        }
    }

    let member = cluster.member(survivor);
    let deadline = Instant::now() + ELECTION_DEADLINE;
    loop {
        let (code, body) = raw_request(&member.host(), "GET", "/readyz");
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(code, 200, "{body}");
        if body.contains("read-only") {
            break;
        }
        assert!(Instant::now() < deadline, "readyz never said read-only: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    registry.clear_log();
    assert_eq!(manifest_digest(member, "library/app", "v1"), digest);
    assert_eq!(manifest_gets(&registry), 0, "{:?}", registry.requests());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !member.process.logs().contains("no raft quorum") {
        assert!(
            Instant::now() < deadline,
            "no log line: {}",
            member.process.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
