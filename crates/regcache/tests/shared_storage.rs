//! Replicas sharing one object tier: a real S3 server (SeaweedFS) spoken to
//! over HTTP, and the `fs` kind with a shared directory. Every test runs the
//! real binary against a real upstream registry.

mod common;

use std::time::{Duration, Instant};

use common::{Regcache, assert_dir_blobs_verified, metric, metrics, skopeo_pull, start_s3_replica};
use testkit::{ImageSpec, OciLayout, Registry, S3Server};

/// Pulls `image` through `a`, then through `b` (whose disk is empty) and
/// checks that `b` asked the upstream nothing but a tag HEAD.
fn second_replica_pulls_from_the_object_tier(registry: &Registry, a: &Regcache, b: &Regcache) {
    let mut layout = OciLayout::new().expect("layout");
    let image = layout
        .add_image("v1", &ImageSpec::new(&[300_000, 12_000_000, 10_000]))
        .expect("image");
    layout.push("v1", registry, "library/app:v1").expect("push");
    let mut expected: Vec<String> = image.layer_digests.iter().map(|(d, _)| d.clone()).collect();
    expected.push(image.config_digest.clone());

    registry.clear_log();
    let via_a = tempfile::tempdir().expect("tempdir");
    skopeo_pull(a, "app:v1", via_a.path());
    assert_dir_blobs_verified(via_a.path(), &expected);
    assert_eq!(
        registry.count("GET", "/blobs/sha256:"),
        4,
        "{:?}",
        registry.requests()
    );

    registry.clear_log();
    let via_b = tempfile::tempdir().expect("tempdir");
    skopeo_pull(b, "app:v1", via_b.path());
    assert_dir_blobs_verified(via_b.path(), &expected);
    let gets: Vec<_> = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(gets.is_empty(), "replica b went upstream: {gets:?}");
    let m = metrics(b);
    assert!(
        m.contains(r#"regcache_cache_requests_total{kind="blob",tier="object"} 4"#),
        "{m}"
    );
    assert!(
        m.contains(r#"regcache_cache_requests_total{kind="manifest",tier="object"} 1"#),
        "{m}"
    );
    // b's index did not know the blobs: each stream was checked against
    // the digest itself.
    assert_eq!(
        metric(&m, "regcache_objstore_checked_reads_total", r#"check="digest""#),
        4.0,
        "{m}"
    );

    // Once each response ended, b copied the blob to its disk (and
    // recorded it): the next pull is served locally.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&metrics(b), "regcache_index_entries", r#"kind="blob""#) < 4.0 {
        assert!(
            Instant::now() < deadline,
            "b never copied the blobs to disk: {}",
            metrics(b)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = tempfile::tempdir().expect("tempdir");
    skopeo_pull(b, "app:v1", again.path());
    assert_dir_blobs_verified(again.path(), &expected);
    let m = metrics(b);
    let local = metric(&m, "regcache_cache_requests_total", r#"tier="disk""#)
        + metric(&m, "regcache_cache_requests_total", r#"tier="memory""#);
    assert!(local >= 4.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "regcache_cache_requests_total",
            r#"kind="blob",tier="object""#
        ),
        4.0,
        "{m}"
    );
}

#[test]
fn two_replicas_share_one_bucket() {
    let registry = Registry::start().expect("registry");
    let s3 = S3Server::start().expect("s3 server");
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = start_s3_replica(&registry.url(), &s3, dir_a.path());
    let b = start_s3_replica(&registry.url(), &s3, dir_b.path());
    second_replica_pulls_from_the_object_tier(&registry, &a, &b);
}

#[test]
fn two_replicas_share_one_directory() {
    let registry = Registry::start().expect("registry");
    let shared = tempfile::tempdir().expect("dir");
    let config = shared.path().join("regcache.toml");
    let objects = shared.path().join("objects");
    std::fs::write(
        &config,
        format!(
            "[storage]\nkind = \"fs\"\npath = {:?}\n",
            objects.display().to_string()
        ),
    )
    .expect("writing config");
    let config = config.display().to_string();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = Regcache::start(&registry, dir_a.path(), &["--config", &config]);
    let b = Regcache::start(&registry, dir_b.path(), &["--config", &config]);
    second_replica_pulls_from_the_object_tier(&registry, &a, &b);
    assert!(objects.join("blobs/sha256").is_dir() && objects.join("manifests/sha256").is_dir());
}
