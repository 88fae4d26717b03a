//! The testkit against the real parts it drives: docker-registry, skopeo and
//! GNU tar. Needs scripts/install-test-deps.sh to have run.

use std::io::Write as _;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use testkit::{ImageSpec, LayerCompression, OciLayout, Registry};

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn inspect_raw(registry: &Registry, reference: &str) -> anyhow::Result<Vec<u8>> {
    let image = format!("docker://{}/{reference}", registry.host());
    Ok(testkit::skopeo(&["inspect", "--raw", "--tls-verify=false", &image])?.stdout)
}

async fn get(url: String) -> anyhow::Result<reqwest::Response> {
    let response = reqwest::Client::new()
        .get(&url)
        .header("accept", ACCEPT_ALL)
        .send()
        .await?;
    anyhow::ensure!(response.status() == 200, "GET {url}: {}", response.status());
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_images_and_indexes_keep_their_bytes_and_gets_are_counted() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    assert!(registry.requests().is_empty(), "{:?}", registry.requests());
    let mut layout = OciLayout::new()?;
    let image = layout.add_image("single", &ImageSpec::new(&[20_000, 3_000]))?;
    let index = layout.add_index(
        "multi",
        &[
            ImageSpec::new(&[5_000]),
            ImageSpec {
                arch: "arm64".into(),
                ..ImageSpec::new(&[6_000, 7_000])
            },
        ],
    )?;
    layout.push("single", &registry, "test/app:single")?;
    layout.push("multi", &registry, "test/app:multi")?;

    let raw = inspect_raw(&registry, "test/app:single")?;
    assert_eq!(testkit::sha256_bytes(&raw), image.manifest_digest);
    assert_eq!(raw, image.manifest_bytes);
    let raw = inspect_raw(&registry, "test/app:multi")?;
    assert_eq!(testkit::sha256_bytes(&raw), index.index_digest);
    let arm = &index.images[1];
    let raw = inspect_raw(&registry, &format!("test/app@{}", arm.manifest_digest))?;
    assert_eq!(raw, arm.manifest_bytes);

    registry.clear_log();
    assert!(registry.requests().is_empty());
    let base = format!("{}/v2/test/app", registry.url());
    for (tag, digest, media_type) in [
        (
            "single",
            &image.manifest_digest,
            "application/vnd.oci.image.manifest.v1+json",
        ),
        (
            "multi",
            &index.index_digest,
            "application/vnd.oci.image.index.v1+json",
        ),
    ] {
        let response = get(format!("{base}/manifests/{tag}")).await?;
        assert_eq!(response.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(response.headers()["content-type"], media_type);
        let body = response.bytes().await?;
        assert_eq!(&testkit::sha256_bytes(&body), digest);
    }
    let (layer, size) = &arm.layer_digests[1];
    let body = get(format!("{base}/blobs/{layer}")).await?.bytes().await?;
    assert_eq!(body.len() as u64, *size);
    assert_eq!(&testkit::sha256_bytes(&body), layer);

    // No sleep: requests() must already see requests that have completed.
    assert_eq!(
        registry.count("GET", "/manifests/"),
        2,
        "{:?}",
        registry.requests()
    );
    assert_eq!(registry.count("GET", "/manifests/multi"), 1);
    assert_eq!(registry.count("GET", &format!("/blobs/{layer}")), 1);
    assert_eq!(registry.count("HEAD", "/"), 0);
    let requests = registry.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests.iter().all(|r| r.status == 200), "{requests:?}");
    assert!(
        registry
            .logs()
            .contains("\"GET /v2/test/app/manifests/multi HTTP/1.1\" 200")
    );
    Ok(())
}

#[test]
fn helm_chart_artifacts_and_uncompressed_layers_push() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let mut chart = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    chart.write_all(b"not really a chart, but gzip")?;
    let chart = chart.finish()?;
    let mut layout = OciLayout::new()?.with_layer_compression(LayerCompression::None);
    let artifact = layout.add_artifact(
        "0.1.0",
        "application/vnd.cncf.helm.config.v1+json",
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        &chart,
    )?;
    let plain = layout.add_image("plain", &ImageSpec::new(&[4_000]))?;
    layout.push("0.1.0", &registry, "charts/demo:0.1.0")?;
    layout.push("plain", &registry, "plain:latest")?;

    assert_eq!(
        inspect_raw(&registry, "charts/demo:0.1.0")?,
        artifact.manifest_bytes
    );
    assert_eq!(artifact.layer_digests[0].0, testkit::sha256_bytes(&chart));
    assert_eq!(inspect_raw(&registry, "plain:latest")?, plain.manifest_bytes);
    assert!(String::from_utf8(plain.manifest_bytes)?.contains("layer.v1.tar\""));
    Ok(())
}

#[test]
fn layers_unpack_with_gnu_tar_and_match_the_config() -> anyhow::Result<()> {
    let mut layout = OciLayout::new()?;
    let image = layout.add_image("v1", &ImageSpec::new(&[3 << 20, 10_000]))?;
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.blob_path(&image.config_digest))?)?;
    for (i, (digest, _)) in image.layer_digests.iter().enumerate() {
        let out = tempfile::tempdir()?;
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(layout.blob_path(digest))
            .arg("-C")
            .arg(out.path())
            .status()?;
        assert!(status.success(), "tar failed on layer {i}");
        let mut unpacked = 0;
        for dir in std::fs::read_dir(out.path())? {
            let dir = dir?;
            assert!(dir.file_name().to_string_lossy().starts_with("testkit-"));
            for file in std::fs::read_dir(dir.path())? {
                unpacked += file?.metadata()?.len();
            }
        }
        let wanted = [3 << 20, 10_000][i];
        assert!(
            unpacked <= wanted && unpacked + 4096 > wanted,
            "{unpacked} of {wanted}"
        );

        let gunzipped = Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$1\" | sha256sum")
            .arg("sh")
            .arg(layout.blob_path(digest))
            .output()?;
        let hex = String::from_utf8(gunzipped.stdout)?;
        let hex = hex.split_whitespace().next().context("sha256sum output")?;
        assert_eq!(config["rootfs"]["diff_ids"][i], format!("sha256:{hex}"));
    }
    Ok(())
}

#[test]
fn parallel_skopeo_runs_use_private_caches_and_do_not_stall() -> anyhow::Result<()> {
    let registry = Registry::start()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let registry = &registry;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut layout = OciLayout::new()?;
                    let image = layout.add_image("v", &ImageSpec::new(&[1 << 20, 50_000]))?;
                    layout.push("v", registry, &format!("par/img{i}:v"))?;
                    let dest = tempfile::tempdir()?;
                    let out = testkit::skopeo(&[
                        "copy",
                        "--debug",
                        "--src-tls-verify=false",
                        &format!("docker://{}/par/img{i}:v", registry.host()),
                        &format!("dir:{}", dest.path().display()),
                    ])?;
                    let debug = String::from_utf8_lossy(&out.stderr);
                    let cache = debug
                        .lines()
                        .find(|l| l.contains("Using blob info cache at"))
                        .context("skopeo did not say which blob info cache it used")?;
                    anyhow::ensure!(!cache.contains("/var/lib/containers"), "{cache}");
                    for digest in image.blob_digests() {
                        let hex = digest.trim_start_matches("sha256:");
                        assert_eq!(testkit::sha256_file(&dest.path().join(hex))?, digest);
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
            })
            .collect()
    });
    for result in results {
        result?;
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(registry.count("PUT", "/manifests/v"), 4);
    Ok(())
}

#[test]
fn a_stopped_registry_is_down_and_restarts_with_its_content() -> anyhow::Result<()> {
    let mut registry = Registry::start()?;
    let mut layout = OciLayout::new()?;
    let image = layout.add_image("v1", &ImageSpec::new(&[1000]))?;
    layout.push("v1", &registry, "keep:v1")?;
    let url = format!("{}/v2/", registry.url());

    registry.stop();
    assert!(testkit::wait_for_http(&url, Duration::from_millis(300)).is_err());
    assert!(inspect_raw(&registry, "keep:v1").is_err());
    assert!(
        registry.count("PUT", "/manifests/v1") >= 1,
        "the log survives a stop"
    );

    registry.restart()?;
    assert!(registry.requests().is_empty());
    assert_eq!(inspect_raw(&registry, "keep:v1")?, image.manifest_bytes);
    assert_eq!(
        registry.count("GET", "/manifests/v1"),
        1,
        "{:?}",
        registry.requests()
    );
    assert!(
        registry
            .storage_dir()
            .join("docker/registry/v2/repositories/keep")
            .is_dir()
    );
    Ok(())
}

#[test]
fn proxy_mode_pulls_through_from_its_upstream() -> anyhow::Result<()> {
    let upstream = Registry::start()?;
    let mut layout = OciLayout::new()?;
    let image = layout.add_image("v1", &ImageSpec::new(&[2000]))?;
    layout.push("v1", &upstream, "library/px:v1")?;
    upstream.clear_log();

    let proxy = Registry::start_proxy(&upstream.url())?;
    let dest = tempfile::tempdir()?;
    testkit::skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/library/px:v1", proxy.host()),
        &format!("dir:{}", dest.path().display()),
    ])?;
    assert_eq!(
        std::fs::read(dest.path().join("manifest.json"))?,
        image.manifest_bytes
    );
    assert!(upstream.count("GET", "/blobs/") >= 2, "{:?}", upstream.requests());
    assert!(proxy.count("GET", "/manifests/v1") >= 1, "{:?}", proxy.requests());
    Ok(())
}
