//! Garbage collection in the real binary, past its timers: a replica with a
//! shared `fs` object tier in front of a real registry, collecting every
//! second with a two-second ttl. Idle content leaves the index, the object
//! tier and the disk, and the next pull fetches it again; content pulled all
//! along is never collected.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{ACCEPT_ALL, Regcache, metric, metrics, raw_request, raw_request_with};
use testkit::{BuiltImage, SeededRegistry};

struct Setup {
    seeded: SeededRegistry,
    cache: Regcache,
    objects: PathBuf,
    dir: tempfile::TempDir,
}

fn start() -> Setup {
    let seeded =
        SeededRegistry::start(&[200_000, 3_000], "library/app:v1").expect("a registry with an image");
    let dir = tempfile::tempdir().expect("temp dir");
    let objects = dir.path().join("objects");
    let config = dir.path().join("regcache.toml");
    let toml = format!(
        "[storage]\nkind = \"fs\"\npath = {objects:?}\n\
         [gc]\nttl = \"2s\"\ninterval = \"1s\"\nsweep_delay = \"1s\"\n"
    );
    std::fs::write(&config, toml).expect("config");
    let config = config.display().to_string();
    let cache = Regcache::start(&seeded.registry, &dir.path().join("data"), &["--config", &config]);
    Setup {
        seeded,
        cache,
        objects,
        dir,
    }
}

/// Pulls the image by tag, then each blob by digest, checking every body.
fn pull(cache: &Regcache, image: &BuiltImage) {
    let response = raw_request_with(
        &cache.host(),
        "GET",
        "/v2/library/app/manifests/v1",
        &[("Accept", ACCEPT_ALL.as_bytes())],
    );
    assert_eq!(response.status, 200, "{}", cache.process.logs());
    assert_eq!(response.body, image.manifest_bytes);
    for digest in image.blob_digests() {
        let (status, body) = raw_request(&cache.host(), "GET", &format!("/v2/library/app/blobs/{digest}"));
        assert_eq!(status, 200, "{digest}: {}", cache.process.logs());
        assert_eq!(testkit::sha256_bytes(&body), digest);
    }
}

fn wait_until(what: &str, cache: &Regcache, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "never {what}:\n{}",
            cache.process.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn index_entries(cache: &Regcache) -> f64 {
    metric(&metrics(cache), "regcache_index_entries", "")
}

#[test]
fn idle_content_leaves_every_tier_and_the_next_pull_fetches_it_again() {
    let s = start();
    let image = s.seeded.image.clone();
    pull(&s.cache, &image);
    let stored = (image.blob_digests().len() + 1) as f64;
    wait_until("indexed the image", &s.cache, || {
        index_entries(&s.cache) == stored
    });
    assert!(
        !testkit::files_under(&s.objects).is_empty(),
        "nothing reached the object tier"
    );

    wait_until("collected the idle image", &s.cache, || {
        index_entries(&s.cache) == 0.0
    });
    let disk = s.dir.path().join("data/blobs");
    wait_until("swept the object tier and the disk", &s.cache, || {
        testkit::files_under(&s.objects.join("blobs")).is_empty()
            && testkit::files_under(&s.objects.join("manifests")).is_empty()
            && testkit::files_under(&disk).is_empty()
    });
    assert!(s.cache.process.logs().contains("gc pass committed"));
    let m = metrics(&s.cache);
    assert!(
        metric(&m, "regcache_gc_runs_total", r#"outcome="committed""#) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "regcache_gc_runs_total", r#"outcome="failed""#),
        0.0,
        "{m}"
    );
    assert_eq!(metric(&m, "regcache_gc_removed_entries_total", ""), stored, "{m}");
    assert_eq!(metric(&m, "regcache_gc_deleted_objects_total", ""), stored, "{m}");
    let (_, body) = raw_request(&s.cache.host(), "GET", "/status.json");
    let status: serde_json::Value = serde_json::from_slice(&body).expect("status json");
    assert!(status["gc"]["epoch"].as_u64() >= Some(1), "{status:#}");
    assert_eq!(status["gc"]["to_sweep"], 0, "{status:#}");

    s.seeded.registry.clear_log();
    pull(&s.cache, &image);
    let refetched = s.seeded.registry.count("GET", "/blobs/sha256:");
    assert_eq!(
        refetched,
        image.blob_digests().len(),
        "collected blobs come from the upstream again"
    );
}

#[test]
fn content_pulled_all_along_is_never_collected() {
    let s = start();
    let image = s.seeded.image.clone();
    pull(&s.cache, &image);
    s.cache.wait_for_downloads();
    s.seeded.registry.clear_log();
    // Four ttls and many passes, pulling all the while.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        pull(&s.cache, &image);
        std::thread::sleep(Duration::from_millis(300));
    }
    let stored = (image.blob_digests().len() + 1) as f64;
    assert_eq!(index_entries(&s.cache), stored, "{}", s.cache.process.logs());
    assert_eq!(
        s.seeded.registry.count("GET", "/blobs/sha256:"),
        0,
        "a blob was collected while pulled: {:?}",
        s.seeded.registry.requests()
    );
    let failed = metric(
        &metrics(&s.cache),
        "regcache_meta_proposal_seconds_count",
        r#"outcome="failed""#,
    );
    assert_eq!(failed, 0.0);
}
