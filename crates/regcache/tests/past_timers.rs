//! The real binary once its timers have run, as a user runs it: the embedded
//! default (a group of one, no cluster port) and a three-member cluster, in
//! front of a real registry behind testkit's `FaultProxy`. Each test first
//! idles past the Raft lease and the 5 s fail-fast window, then checks that
//! tags, index entries and access times are still recorded; the soaks pull
//! for a minute and watch that the group never says it is read-only.
//!
//! The soaks' length is `REGCACHE_SOAK_SECS` (60 in CI); run them longer by
//! hand with e.g. `REGCACHE_SOAK_SECS=1800 cargo test -p regcache --test
//! past_timers soak -- --nocapture`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, manifest_digest};
use common::{ACCEPT_ALL, Regcache, metric, metrics, raw_request, raw_request_with};
use testkit::{BuiltImage, Fault, FaultProxy, ImageSpec, Rule, SeededRegistry};

/// Longer than the lease (1.2 s) and the fail-fast window (5 s) together.
const IDLE: Duration = Duration::from_secs(10);
const TAG_TTL: Duration = Duration::from_secs(5);

/// `[cache]` for every replica here: short tag TTL, long staleness.
fn cache_toml() -> String {
    format!(
        "[cache]\ntag_ttl = \"{}s\"\nmax_stale = \"1h\"\n",
        TAG_TTL.as_secs()
    )
}

/// A real registry holding `library/app:v1`, behind a fault proxy.
struct Upstream {
    seeded: SeededRegistry,
    proxy: FaultProxy,
}

impl Upstream {
    fn start() -> Upstream {
        let seeded =
            SeededRegistry::start(&[200_000, 3_000], "library/app:v1").expect("a registry with an image");
        let proxy = FaultProxy::start(&seeded.registry).expect("fault proxy");
        Upstream { seeded, proxy }
    }

    fn image(&self) -> &BuiltImage {
        &self.seeded.image
    }

    /// Manifest requests by tag that reached the registry.
    fn tag_requests(&self, tag: &str) -> usize {
        let path = format!("/manifests/{tag}");
        self.proxy.count("GET", &path) + self.proxy.count("HEAD", &path)
    }

    /// Pushes a new image as `library/app:TAG`.
    fn push(&mut self, tag: &str, seed: u64) {
        let spec = ImageSpec::new(&[10_000 + seed, 500]);
        self.seeded
            .push(&spec, &format!("library/app:{tag}"))
            .expect("push");
    }
}

/// The embedded default in front of `upstream`: no cluster settings at all.
fn single(upstream: &Upstream, dir: &tempfile::TempDir) -> Regcache {
    let config = dir.path().join("regcache.toml");
    std::fs::write(&config, cache_toml()).expect("config");
    let config = config.display().to_string();
    Regcache::start_url(
        &upstream.proxy.url(),
        &dir.path().join("data"),
        &["--config", &config],
    )
}

fn cluster(upstream: &Upstream) -> Cluster {
    let cluster = Cluster::start_with_config(&upstream.proxy.url(), 3, &cache_toml(), &[]);
    cluster.leader(&[1, 2, 3], Duration::from_secs(30));
    cluster
}

fn readyz(member: &Regcache) -> String {
    let (code, body) = raw_request(&member.host(), "GET", "/readyz");
    assert_eq!(code, 200);
    String::from_utf8_lossy(&body).into_owned()
}

fn proposals(member: &Regcache, labels: &str) -> f64 {
    metric(&metrics(member), "regcache_meta_proposal_seconds_count", labels)
}

fn get_blob(member: &Regcache, digest: &str, size: u64) {
    let (code, body) = raw_request(&member.host(), "GET", &format!("/v2/library/app/blobs/{digest}"));
    assert_eq!((code, body.len() as u64), (200, size), "{digest}");
}

/// What the bug broke, checked on `members` after they idled: readiness,
/// tags recorded and served within their TTL with one upstream request,
/// accesses flushed, and a tag served stale while the upstream answers 429.
fn assert_records_after_idling(upstream: &Upstream, members: &[&Regcache]) {
    std::thread::sleep(IDLE);
    for member in members {
        assert_eq!(readyz(member), "ready\n", "{}", member.process.logs());
        let m = metrics(member);
        assert_eq!(metric(&m, "regcache_raft_writable", ""), 1.0, "{m}");
    }

    let tag_checked = Instant::now();
    let before = upstream.tag_requests("v1");
    let want = &upstream.image().manifest_digest;
    assert_eq!(&manifest_digest(members[0], "library/app", "v1"), want);
    assert_eq!(upstream.tag_requests("v1"), before + 1);
    // Followers apply the recorded tag a heartbeat later.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..4 {
        let member = members[(i + 1) % members.len()];
        assert_eq!(&manifest_digest(member, "library/app", "v1"), want);
    }
    assert!(tag_checked.elapsed() < TAG_TTL, "too slow to test the tag TTL");
    assert_eq!(
        upstream.tag_requests("v1"),
        before + 1,
        "five pulls within the TTL asked the upstream more than once: {:?}",
        upstream.proxy.seen()
    );

    let touches: Vec<f64> = members
        .iter()
        .map(|m| proposals(m, r#"command="touch",outcome="ok""#))
        .collect();
    let (layer, size) = &upstream.image().layer_digests[0];
    for member in members {
        get_blob(member, layer, *size);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for (member, before) in members.iter().zip(touches) {
        while proposals(member, r#"command="touch",outcome="ok""#) <= before {
            assert!(
                Instant::now() < deadline,
                "accesses never flushed: {}",
                member.process.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    std::thread::sleep((TAG_TTL + Duration::from_millis(500)).saturating_sub(tag_checked.elapsed()));
    let limited = Fault::respond(429, &[("Retry-After", "30")], "slow down");
    upstream.proxy.set_rules(vec![
        Rule::new("HEAD", "/manifests/v1", limited.clone()),
        Rule::new("GET", "/manifests/v1", limited),
    ]);
    // Each member asks the tag's owner, which revalidates and serves it
    // stale, once for each: every member counts what it served stale.
    for member in members {
        assert_eq!(&manifest_digest(member, "library/app", "v1"), want);
        let stale = metric(&metrics(member), "regcache_stale_tags_served_total", "");
        assert!(stale >= 1.0, "{}", member.process.logs());
    }
    upstream.proxy.clear();

    for member in members {
        assert_eq!(proposals(member, r#"outcome="failed""#), 0.0);
        assert_quiet_log(member);
    }
}

/// No metadata write failed, the group never said it lost its quorum, and
/// openraft's INFO lines stay out of the default log.
fn assert_quiet_log(member: &Regcache) {
    let logs = member.process.logs();
    for bad in ["failed", "no raft quorum"] {
        assert!(!logs.contains(bad), "{bad:?} in the log:\n{logs}");
    }
    assert!(
        !logs
            .lines()
            .any(|l| l.contains(" INFO ") && l.contains("openraft")),
        "openraft logs at INFO by default:\n{logs}"
    );
}

#[test]
fn the_embedded_default_records_tags_and_accesses_after_idling() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = single(&upstream, &dir);
    assert_records_after_idling(&upstream, &[&cache]);
    let logs = cache.process.logs();
    assert!(logs.contains("this member leads the raft group"), "{logs}");
}

#[test]
fn a_cluster_records_tags_and_accesses_after_idling() {
    let upstream = Upstream::start();
    let cluster = cluster(&upstream);
    let members: Vec<&Regcache> = [1, 2, 3].iter().map(|id| cluster.member(*id)).collect();
    assert_records_after_idling(&upstream, &members);
    for member in &members {
        let logs = member.process.logs();
        assert!(logs.contains("raft group members"), "{logs}");
    }
}

fn soak_duration() -> Duration {
    let secs =
        std::env::var("REGCACHE_SOAK_SECS").map_or(60, |s| s.parse().expect("REGCACHE_SOAK_SECS: seconds"));
    Duration::from_secs(secs)
}

/// Samples every member's writable gauge and `/readyz` four times a second
/// until `stop`; returns the samples that said read-only.
fn watch_writability(hosts: Vec<String>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut read_only = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            for host in &hosts {
                let response = raw_request_with(host, "GET", "/metrics", &[]);
                let text = String::from_utf8_lossy(&response.body);
                if metric(&text, "regcache_raft_writable", "") != 1.0 {
                    read_only.push(format!("{host}: regcache_raft_writable not 1"));
                }
                let (_, body) = raw_request(host, "GET", "/readyz");
                if body != b"ready\n" {
                    read_only.push(format!("{host}: {}", String::from_utf8_lossy(&body)));
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        read_only
    })
}

/// Pulls through `members` for the soak's duration: a tag every second
/// (revalidated once its TTL passes), a layer, and a newly pushed tag every
/// ten seconds, so metadata is written all along.
fn soak(upstream: &mut Upstream, members: &[&Regcache]) {
    // A fresh group is read-only until it has elected its leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    for member in members {
        while metric(&metrics(member), "regcache_raft_writable", "") != 1.0 {
            assert!(
                Instant::now() < deadline,
                "never writable: {}",
                member.process.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hosts = members.iter().map(|m| m.host()).collect();
    let watcher = watch_writability(hosts, Arc::clone(&stop));
    let started = Instant::now();
    let mut pushed = 1;
    let mut i = 0;
    while started.elapsed() < soak_duration() {
        let member = members[i % members.len()];
        i += 1;
        if started.elapsed() > Duration::from_secs(10 * pushed) {
            pushed += 1;
            let tag = format!("v{pushed}");
            upstream.push(&tag, pushed);
            let path = format!("/v2/library/app/manifests/{tag}");
            let response =
                raw_request_with(&member.host(), "GET", &path, &[("Accept", ACCEPT_ALL.as_bytes())]);
            assert_eq!(response.status, 200, "{tag}: {}", member.process.logs());
        }
        assert_eq!(
            manifest_digest(member, "library/app", "v1"),
            upstream.image().manifest_digest
        );
        let (layer, size) = &upstream.image().layer_digests[i % 2];
        get_blob(member, layer, *size);
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    let read_only = watcher.join().expect("the watcher");
    assert!(read_only.is_empty(), "read-only during the soak: {read_only:#?}");
    // Each member flushes accesses every 5 s and records tags as well.
    let at_least = soak_duration().as_secs_f64() / 10.0;
    for member in members {
        let ok = proposals(member, r#"outcome="ok""#);
        assert!(ok >= at_least, "only {ok} proposals committed");
        assert_eq!(proposals(member, r#"outcome="failed""#), 0.0);
        assert_quiet_log(member);
    }
    println!(
        "soak of {} member(s): {i} pulls and {pushed} tags over {:?}, never read-only",
        members.len(),
        started.elapsed()
    );
}

#[test]
fn soak_the_embedded_default() {
    let mut upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = single(&upstream, &dir);
    soak(&mut upstream, &[&cache]);
}

#[test]
fn soak_a_cluster() {
    let mut upstream = Upstream::start();
    let cluster = cluster(&upstream);
    let members: Vec<&Regcache> = [1, 2, 3].iter().map(|id| cluster.member(*id)).collect();
    soak(&mut upstream, &members);
}
