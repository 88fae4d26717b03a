//! skopeo's other read commands through the cache, and a non-image OCI
//! artifact (a Helm chart as Helm pushes it) pulled with its exact bytes and
//! media types.

mod common;

use common::{Regcache, client};
use testkit::{ImageSpec, OciLayout, Registry};

const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";

#[test]
fn skopeo_inspects_and_lists_tags_through_the_cache() {
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let image = layout.add_image("v1", &ImageSpec::new(&[20_000])).unwrap();
    for tag in ["v1", "v2"] {
        layout.push("v1", &registry, &format!("tools/cli:{tag}")).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);
    let reference = format!("docker://{}/tools/cli:v1", cache.host());

    let raw = testkit::skopeo(&["inspect", "--raw", "--tls-verify=false", &reference]).unwrap();
    assert_eq!(
        raw.stdout, image.manifest_bytes,
        "inspect --raw must show the upstream's bytes"
    );

    let inspect = testkit::skopeo(&["inspect", "--tls-verify=false", &reference]).unwrap();
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());

    let repo = format!("docker://{}/tools/cli", cache.host());
    let tags = testkit::skopeo(&["list-tags", "--tls-verify=false", &repo]).unwrap();
    let tags: serde_json::Value = serde_json::from_slice(&tags.stdout).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1", "v2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_chart_artifact_keeps_its_bytes_and_media_types() {
    let registry = Registry::start().unwrap();
    let mut layout = OciLayout::new().unwrap();
    let chart = b"not really a gzipped chart, but bytes are bytes".repeat(100);
    let artifact = layout
        .add_artifact("0.1.0", HELM_CONFIG, HELM_CHART, &chart)
        .unwrap();
    layout.push("0.1.0", &registry, "charts/app:0.1.0").unwrap();
    let data = tempfile::tempdir().unwrap();
    let cache = Regcache::start(&registry, data.path(), &[]);
    let http = client();

    let manifest = http
        .get(cache.url("/v2/charts/app/manifests/0.1.0"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.headers()["content-type"], artifact.media_type.as_str());
    assert_eq!(
        manifest.headers()["docker-content-digest"],
        artifact.manifest_digest.as_str()
    );
    let bytes = manifest.bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), artifact.manifest_bytes.as_slice());
    let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(parsed["config"]["mediaType"], HELM_CONFIG);
    assert_eq!(parsed["layers"][0]["mediaType"], HELM_CHART);

    let (layer_digest, layer_size) = &artifact.layer_digests[0];
    for (digest, want) in [
        (layer_digest, chart.as_slice()),
        (&artifact.config_digest, b"{}".as_slice()),
    ] {
        let blob = http
            .get(cache.url(&format!("/v2/charts/app/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(blob.status(), 200);
        assert_eq!(blob.bytes().await.unwrap().as_ref(), want);
    }
    assert_eq!(*layer_size, chart.len() as u64);
}
