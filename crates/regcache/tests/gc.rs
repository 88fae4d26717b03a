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

/// Collects every second, content idle for two.
fn start() -> Setup {
    start_with(
        image_of(&[200_000, 3_000]),
        "ttl = \"2s\"\ninterval = \"1s\"\nsweep_delay = \"1s\"\n",
    )
}

fn image_of(layers: &[u64]) -> SeededRegistry {
    SeededRegistry::start(layers, "library/app:v1").expect("a registry with an image")
}

/// A replica with an `fs` object tier and `gc` as its `[gc]` table.
fn start_with(seeded: SeededRegistry, gc: &str) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let objects = dir.path().join("objects");
    let config = dir.path().join("regcache.toml");
    let toml = format!(
        "[storage]\nkind = \"fs\"\npath = {objects:?}\n\
         [gc]\n{gc}"
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

    wait_until("collected the idle image and its tag", &s.cache, || {
        let m = metrics(&s.cache);
        metric(&m, "regcache_index_entries", "") == 0.0 && metric(&m, "regcache_index_tags", "") == 0.0
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
    assert_eq!(metric(&m, "regcache_gc_tags_dropped_total", ""), 1.0, "{m}");
    assert_eq!(metric(&m, "regcache_gc_to_sweep", ""), 0.0, "{m}");
    assert_eq!(metric(&m, "regcache_gc_condemned", ""), 0.0, "{m}");
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
    let m = metrics(&s.cache);
    assert_eq!(
        metric(&m, "regcache_index_tags", ""),
        1.0,
        "a tag requested all along was dropped"
    );
    assert_eq!(
        s.seeded.registry.count("GET", "/blobs/sha256:"),
        0,
        "a blob was collected while pulled: {:?}",
        s.seeded.registry.requests()
    );
    assert!(
        metric(&m, "regcache_gc_rescued_total", "") > 0.0,
        "passes condemned what was pulled (ttl 2 s, accesses batched for 5 s) and pulls rescued it: {m}"
    );
    let failed = metric(
        &metrics(&s.cache),
        "regcache_meta_proposal_seconds_count",
        r#"outcome="failed""#,
    );
    assert_eq!(failed, 0.0);
}

fn get_blob(cache: &Regcache, digest: &str) {
    let (status, body) = raw_request(&cache.host(), "GET", &format!("/v2/library/app/blobs/{digest}"));
    assert_eq!(status, 200, "{digest}: {}", cache.process.logs());
    assert_eq!(testkit::sha256_bytes(&body), digest);
}

#[test]
fn orphan_objects_leave_the_object_tier_and_foreign_objects_stay() {
    let s = start_with(
        image_of(&[200_000, 3_000]),
        "ttl = \"0s\"\ninterval = \"1s\"\norphan_grace = \"1s\"\n",
    );
    let image = s.seeded.image.clone();
    pull(&s.cache, &image);
    let stored = (image.blob_digests().len() + 1) as f64;
    wait_until("indexed the image", &s.cache, || {
        index_entries(&s.cache) == stored
    });
    s.cache.wait_for_downloads();
    let indexed = testkit::files_under(&s.objects);
    // The losing copy of a blob two replicas fetched at once, an upload
    // whose replica crashed before indexing it, and someone else's file.
    let (layer, _) = &image.layer_digests[0];
    let layer_dir = s
        .objects
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let losing = layer_dir.join("0000000000000001deadbeef");
    let never_indexed = testkit::sha256_bytes(b"never indexed");
    let crashed = s
        .objects
        .join("blobs/sha256")
        .join(never_indexed.trim_start_matches("sha256:"))
        .join("0000000000000002deadbeef");
    let foreign = s.objects.join("backups/notes.txt");
    for path in [&losing, &crashed, &foreign] {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
        std::fs::write(path, b"leftover").expect("an orphan");
    }

    wait_until("deleted the orphans", &s.cache, || {
        !losing.exists() && !crashed.exists()
    });
    assert!(foreign.exists(), "a key regcache did not make was deleted");
    assert_eq!(
        testkit::files_under(&s.objects.join("blobs")).len()
            + testkit::files_under(&s.objects.join("manifests")).len(),
        indexed.len()
    );
    for path in &indexed {
        assert!(path.exists(), "an indexed object went: {}", path.display());
    }
    let m = metrics(&s.cache);
    assert_eq!(metric(&m, "regcache_gc_orphans_deleted_total", ""), 2.0, "{m}");
    assert!(
        s.cache
            .process
            .logs()
            .contains("gc.orphan_grace is under an hour")
    );
    s.seeded.registry.clear_log();
    pull(&s.cache, &image);
    assert_eq!(
        s.seeded.registry.count("GET", "/blobs/sha256:"),
        0,
        "an indexed object was lost"
    );
}

#[test]
fn over_its_byte_budget_the_least_recently_pulled_goes_first() {
    let seeded = image_of(&[150_000, 140_000, 130_000]);
    let sizes: Vec<u64> = seeded.image.layer_digests.iter().map(|(_, n)| *n).collect();
    // Over by half of the second layer once all three are in; the low
    // watermark (90%) is then met by dropping the second layer alone.
    let budget = sizes.iter().sum::<u64>() - sizes[1] / 2;
    let s = start_with(
        seeded,
        &format!("ttl = \"0s\"\ninterval = \"1s\"\nsweep_delay = \"0s\"\nbucket_bytes = {budget}\n"),
    );
    let layers: Vec<String> = s
        .seeded
        .image
        .layer_digests
        .iter()
        .map(|(d, _)| d.clone())
        .collect();
    get_blob(&s.cache, &layers[0]);
    std::thread::sleep(Duration::from_millis(1100));
    get_blob(&s.cache, &layers[1]);
    std::thread::sleep(Duration::from_millis(1100));
    get_blob(&s.cache, &layers[0]);
    // Accesses reach the index in a batch every 5 s (2 s of margin).
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(index_entries(&s.cache), 2.0, "within the budget, nothing goes");
    get_blob(&s.cache, &layers[2]);

    wait_until("collected the least recently pulled", &s.cache, || {
        metric(&metrics(&s.cache), "regcache_gc_removed_entries_total", "") >= 1.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let m = metrics(&s.cache);
    assert_eq!(metric(&m, "regcache_gc_removed_entries_total", ""), 1.0, "{m}");
    assert_eq!(
        index_entries(&s.cache),
        2.0,
        "under the low watermark, the rest stays"
    );
    s.seeded.registry.clear_log();
    get_blob(&s.cache, &layers[0]);
    get_blob(&s.cache, &layers[2]);
    assert_eq!(
        s.seeded.registry.count("GET", "/blobs/sha256:"),
        0,
        "a recent blob went"
    );
    get_blob(&s.cache, &layers[1]);
    assert_eq!(
        s.seeded.registry.count("GET", "/blobs/sha256:"),
        1,
        "the least recent blob stayed"
    );
    assert!(s.cache.process.logs().contains("over gc.bucket_bytes"));
}

fn gc_cmd(args: &[&str]) -> String {
    common::regcache_cli("gc", args)
}

#[test]
fn regcache_gc_plans_runs_and_reports_a_pass_on_request() {
    let port = testkit::stable_port();
    // An interval that never comes within the test: only requests collect.
    let s = start_with(
        image_of(&[200_000, 3_000]),
        &format!(
            "ttl = \"1s\"\ninterval = \"1h\"\nsweep_delay = \"0s\"\n\
             [cluster]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    let image = s.seeded.image.clone();
    pull(&s.cache, &image);
    let stored = (image.blob_digests().len() + 1) as f64;
    wait_until("indexed the image", &s.cache, || {
        index_entries(&s.cache) == stored
    });
    let bytes: u64 = image.manifest_bytes.len() as u64
        + image.layer_digests.iter().map(|(_, n)| n).sum::<u64>()
        + s.seeded
            .layout
            .blob_path(&image.config_digest)
            .metadata()
            .expect("config")
            .len();
    std::thread::sleep(Duration::from_secs(2));
    let cluster = format!("127.0.0.1:{port}");

    let plan = gc_cmd(&["run", "--dry-run", "--cluster", &cluster]);
    assert!(
        plan.contains(&format!("would condemn {stored} entries ({bytes} bytes)")),
        "{plan}"
    );
    assert!(
        plan.contains("drop 0 tags"),
        "the tag is younger than ttl + 5 s: {plan}"
    );
    assert_eq!(index_entries(&s.cache), stored, "a dry run changed the index");

    let started = gc_cmd(&["run", "--cluster", &cluster]);
    assert!(started.contains("gc round started"), "{started}");
    wait_until("collected on request", &s.cache, || {
        index_entries(&s.cache) == 0.0
    });
    let report: serde_json::Value =
        serde_json::from_str(&gc_cmd(&["status", "--json", "--cluster", &cluster])).expect("json");
    let round = &report["rounds"][0];
    assert_eq!(round["outcome"], "committed", "{report:#}");
    assert_eq!(round["removed"].as_f64(), Some(stored), "{report:#}");
    assert_eq!(round["removed_bytes"].as_u64(), Some(bytes), "{report:#}");
    let (_, status) = raw_request(&s.cache.host(), "GET", "/status.json");
    let status: serde_json::Value = serde_json::from_slice(&status).expect("status json");
    assert_eq!(
        status["gc"]["rounds"][0], *round,
        "/status.json shows the same rounds"
    );
    assert_eq!(report["epoch"], 1, "{report:#}");
    let table = gc_cmd(&["status", "--cluster", &cluster]);
    assert!(table.contains("last pass 1, closed"), "{table}");
    assert!(table.contains("committed"), "{table}");
}
