//! Pulls through the real binary from a real upstream registry with skopeo
//! and plain HTTP: cold and warm, by tag and by digest, indexes, many
//! layers, a large layer, concurrency and restarts.

mod common;

use common::{ACCEPT_ALL, Regcache, assert_dir_blobs_verified, client, raw_request, skopeo_pull};
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use testkit::{ImageSpec, OciLayout, Registry, SeededRegistry};

fn spec(layers: &[u64]) -> ImageSpec {
    ImageSpec {
        layers: layers.to_vec(),
        arch: "amd64".into(),
        os: "linux".into(),
    }
}

fn blob_gets(registry: &Registry) -> usize {
    registry.count("GET", "/blobs/sha256:")
}

#[test]
fn pulls_by_tag_and_digest_cold_then_warm() {
    let SeededRegistry { registry, image, .. } =
        SeededRegistry::start(&[300_000, 2_000_000, 10_000], "library/app:v1")
            .expect("a registry with an image");
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);
    registry.clear_log();

    let mut expected: Vec<String> = image.layer_digests.iter().map(|(d, _)| d.clone()).collect();
    expected.push(image.config_digest.clone());

    let cold = tempfile::tempdir().unwrap();
    skopeo_pull(&cache, "app:v1", cold.path());
    assert_dir_blobs_verified(cold.path(), &expected);
    assert_eq!(
        blob_gets(&registry),
        4,
        "config and three layers fetched once: {:?}",
        registry.requests()
    );

    let warm = tempfile::tempdir().unwrap();
    skopeo_pull(&cache, "library/app:v1", warm.path());
    assert_dir_blobs_verified(warm.path(), &expected);
    assert_eq!(blob_gets(&registry), 4, "warm pull fetched blobs upstream again");
    assert_eq!(
        registry.count("GET", "/manifests/"),
        1,
        "fresh tag must not touch the upstream"
    );

    let by_digest = tempfile::tempdir().unwrap();
    skopeo_pull(
        &cache,
        &format!("app@{}", image.manifest_digest),
        by_digest.path(),
    );
    assert_dir_blobs_verified(by_digest.path(), &expected);
    assert_eq!(
        registry.count("GET", "/manifests/"),
        1,
        "manifest by digest was cached by the tag pull"
    );

    let (status, metrics) = raw_request(&cache.host(), "GET", "/metrics");
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    for wanted in [
        r#"regcache_cache_requests_total{kind="blob",tier="upstream"} 4"#,
        r#"regcache_cache_requests_total{kind="manifest",tier="upstream"} 1"#,
        r#"regcache_served_bytes_total{tier="memory"}"#,
        r#"regcache_served_bytes_total{tier="disk"}"#,
        r#"regcache_upstream_request_duration_seconds_bucket{upstream="docker.io",op="get_blob""#,
        r#"regcache_http_requests_total{route="blob",method="GET",status="200"}"#,
    ] {
        assert!(metrics.contains(wanted), "metrics lack {wanted}:\n{metrics}");
    }
}

#[test]
fn pulls_a_multi_arch_index_and_many_layers() {
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let many: Vec<u64> = (0..24).map(|i| 1_000 + i * 5_000).collect();
    let index = layout
        .add_index(
            "multi",
            &[
                spec(&[50_000, 70_000]),
                ImageSpec {
                    arch: "arm64".into(),
                    ..spec(&many)
                },
            ],
        )
        .unwrap();
    layout.push("multi", &registry, "team/tool:multi").unwrap();
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);

    let dest = tempfile::tempdir().unwrap();
    skopeo_pull(&cache, "team/tool:multi", dest.path());
    let mut expected = Vec::new();
    for image in &index.images {
        expected.extend(image.layer_digests.iter().map(|(d, _)| d.clone()));
        expected.push(image.config_digest.clone());
    }
    assert_eq!(expected.len(), 2 + 24 + 2);
    assert_dir_blobs_verified(dest.path(), &expected);
    let top = std::fs::read(dest.path().join("manifest.json")).unwrap();
    assert_eq!(
        testkit::sha256_bytes(&top),
        index.index_digest,
        "index bytes must be the upstream's"
    );
}

#[test]
fn streams_a_large_layer_cold_and_warm() {
    let SeededRegistry { registry, image, .. } =
        SeededRegistry::start(&[200 << 20], "library/big:1").expect("a registry with an image");
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);
    let expected = vec![image.layer_digests[0].0.clone(), image.config_digest.clone()];
    for round in 0..2 {
        let dest = tempfile::tempdir().unwrap();
        skopeo_pull(&cache, "big:1", dest.path());
        assert_dir_blobs_verified(dest.path(), &expected);
        assert_eq!(
            blob_gets(&registry),
            2,
            "round {round}: one upstream GET per blob in total"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_of_one_uncached_blob_share_one_upstream_fetch() {
    let SeededRegistry { registry, image, .. } =
        SeededRegistry::start(&[24 << 20], "library/shared:v1").expect("a registry with an image");
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);
    registry.clear_log();

    let (digest, size) = image.layer_digests[0].clone();
    let url = cache.url(&format!("/v2/shared/blobs/{digest}"));
    let http = client();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let response = http.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let mut hasher = Sha256::new();
                let mut len = 0u64;
                let mut body = response.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.unwrap();
                    len += chunk.len() as u64;
                    hasher.update(&chunk);
                }
                (len, format!("sha256:{}", hex::encode(hasher.finalize())))
            })
        })
        .collect();
    for task in tasks {
        let (len, got) = task.await.unwrap();
        assert_eq!((len, got.as_str()), (size, digest.as_str()));
    }
    let gets = registry.count("GET", &format!("/blobs/{digest}"));
    assert_eq!(
        gets,
        1,
        "50 concurrent clients must share one upstream GET: {:?}",
        registry.requests()
    );
}

#[test]
fn warm_cache_survives_a_restart() {
    let SeededRegistry { registry, image, .. } =
        SeededRegistry::start(&[500_000, 40_000], "library/keep:v1").expect("a registry with an image");
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);
    let mut expected: Vec<String> = image.layer_digests.iter().map(|(d, _)| d.clone()).collect();
    expected.push(image.config_digest.clone());

    skopeo_pull(&cache, "keep:v1", tempfile::tempdir().unwrap().path());
    cache.wait_for_downloads();
    let disk_bytes = common::metric(&common::metrics(&cache), "regcache_disk_bytes", "");
    assert!(disk_bytes > 500_000.0, "{disk_bytes}");
    let cache = cache.restart();
    assert_eq!(
        common::metric(&common::metrics(&cache), "regcache_disk_bytes", ""),
        disk_bytes,
        "the disk tier's size is known from the start"
    );
    registry.clear_log();
    let dest = tempfile::tempdir().unwrap();
    skopeo_pull(&cache, "keep:v1", dest.path());
    assert_dir_blobs_verified(dest.path(), &expected);
    assert_eq!(
        blob_gets(&registry),
        0,
        "warm pull after restart went upstream: {:?}",
        registry.requests()
    );
    assert_eq!(
        registry.count("GET", "/manifests/"),
        0,
        "fresh tag after restart went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_carry_exact_bytes_and_headers() {
    let SeededRegistry { registry, image, .. } =
        SeededRegistry::start(&[1000], "library/hdr:v1").expect("a registry with an image");
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);
    let http = client();

    let base = http.get(cache.url("/v2/")).send().await.unwrap();
    assert_eq!(base.status(), 200);
    assert_eq!(base.headers()["docker-distribution-api-version"], "registry/2.0");

    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let response = http
            .request(method.clone(), cache.url("/v2/hdr/manifests/v1"))
            .header("accept", ACCEPT_ALL)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], image.media_type.as_str());
        assert_eq!(headers["docker-content-digest"], image.manifest_digest.as_str());
        assert_eq!(
            headers["content-length"],
            image.manifest_bytes.len().to_string().as_str()
        );
        assert_eq!(headers["oci-namespace"], "docker.io");
        let body = response.bytes().await.unwrap();
        if method == reqwest::Method::GET {
            assert_eq!(body.as_ref(), image.manifest_bytes.as_slice());
        } else {
            assert!(body.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_does_not_abort_the_download() {
    let SeededRegistry { registry, image, .. } =
        SeededRegistry::start(&[40 << 20], "library/gone:v1").expect("a registry with an image");
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);
    registry.clear_log();

    let (digest, size) = image.layer_digests[0].clone();
    let url = cache.url(&format!("/v2/gone/blobs/{digest}"));
    let mut response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    drop(response);

    // The download goes on without the client and lands on disk verified.
    let hex = digest.strip_prefix("sha256:").unwrap();
    let stored = data.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !stored.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "download was abandoned:\n{}",
            cache.process.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(testkit::sha256_file(&stored).unwrap(), digest);
    let again = client().get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(again.len() as u64, size);
    assert_eq!(
        registry.count("GET", &format!("/blobs/{digest}")),
        1,
        "the second GET came from disk"
    );
}
