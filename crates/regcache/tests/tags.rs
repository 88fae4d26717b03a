//! Tag freshness: served from the cache within `tag_ttl`, revalidated with a
//! HEAD after it, and served stale while the upstream is down.

mod common;

use std::time::Duration;

use common::{ACCEPT_ALL, Regcache, client};
use testkit::{ImageSpec, OciLayout, Registry};

async fn get_tag(cache: &Regcache, tag: &str) -> reqwest::Response {
    client()
        .get(cache.url(&format!("/v2/moving/manifests/{tag}")))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .expect("requesting the tag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_revalidate_after_ttl_and_go_stale_when_upstream_fails() {
    let mut registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let spec = |n| ImageSpec {
        layers: vec![n],
        arch: "amd64".into(),
        os: "linux".into(),
    };
    let first = layout.add_image("a", &spec(1000)).unwrap();
    let second = layout.add_image("b", &spec(2000)).unwrap();
    layout.push("a", &registry, "library/moving:latest").unwrap();

    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("regcache.toml");
    std::fs::write(&config, "[cache]\ntag_ttl = \"1s\"\nmax_stale = \"1h\"\n").unwrap();
    let cache = Regcache::start(
        &registry,
        &data.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );

    let r = get_tag(&cache, "latest").await;
    assert_eq!(
        r.headers()["docker-content-digest"],
        first.manifest_digest.as_str()
    );

    layout.push("b", &registry, "library/moving:latest").unwrap();
    registry.clear_log();
    let r = get_tag(&cache, "latest").await;
    assert_eq!(
        r.headers()["docker-content-digest"],
        first.manifest_digest.as_str(),
        "within ttl"
    );
    assert!(registry.requests().is_empty(), "fresh tag touched the upstream");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get_tag(&cache, "latest").await;
    assert_eq!(
        r.headers()["docker-content-digest"],
        second.manifest_digest.as_str(),
        "after ttl"
    );
    assert_eq!(
        registry.count("HEAD", "/manifests/latest"),
        1,
        "{:?}",
        registry.requests()
    );
    assert_eq!(
        registry.count("GET", "/manifests/latest"),
        0,
        "the changed digest is fetched by digest"
    );

    registry.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get_tag(&cache, "latest").await;
    assert_eq!(
        r.status(),
        200,
        "stale tag must be served while the upstream is down"
    );
    assert_eq!(
        r.headers()["docker-content-digest"],
        second.manifest_digest.as_str()
    );
    let metrics = client()
        .get(cache.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("regcache_stale_tags_served_total") && !l.ends_with(" 0")),
        "stale serving must be counted:\n{metrics}"
    );
}
