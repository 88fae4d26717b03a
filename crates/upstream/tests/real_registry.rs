//! The happy path against a real registry: Debian's `docker-registry`
//! (distribution 2.8) on loopback, filled through its own push API. Skipped
//! with a note when the binary is not installed. Broader real-registry
//! scenarios live in testkit.

// Test helpers panic on purpose: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use upstream::{Upstream, UpstreamConfig, UpstreamError};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A running `docker-registry`, killed when dropped.
struct Registry {
    child: Child,
    url: String,
    _root: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_registry() -> Option<Registry> {
    if Command::new("docker-registry").arg("--version").output().is_err() {
        eprintln!("docker-registry not installed: skipping real registry test");
        return None;
    }
    let root = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = root.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            root.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _root: root,
    };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{}/v2/", registry.url)).send().await.is_ok() {
            return Some(registry);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("docker-registry did not start");
}

/// Pushes a blob with the two-step upload (POST, then PUT with digest).
async fn push_blob(client: &reqwest::Client, base: &str, bytes: &[u8]) -> oci::Digest {
    let digest = oci::Digest::sha256_of(bytes);
    let started = client
        .post(format!("{base}/v2/lib/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap();
    let mut url = reqwest::Url::parse(base).unwrap().join(location).unwrap();
    url.query_pairs_mut().append_pair("digest", &digest.to_string());
    let put = client.put(url).body(bytes.to_vec()).send().await.unwrap();
    assert_eq!(put.status(), 201);
    digest
}

#[tokio::test]
async fn reads_what_a_real_registry_serves() {
    let Some(registry) = start_registry().await else {
        return;
    };
    let client = reqwest::Client::new();
    let config = b"{}".to_vec();
    let layer: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let config_digest = push_blob(&client, &registry.url, &config).await;
    let layer_digest = push_blob(&client, &registry.url, &layer).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    for tag in ["v1", "v2"] {
        let put = client
            .put(format!("{}/v2/lib/app/manifests/{tag}", registry.url))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    }

    let upstream = Upstream::new(UpstreamConfig {
        name: "real.example".into(),
        remote_url: registry.url.parse().unwrap(),
        username: None,
        password: None,
        http_proxy: None,
        https_proxy: None,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(10),
    })
    .unwrap();
    let repo: oci::RepoName = "lib/app".parse().unwrap();
    let manifest_digest = oci::Digest::sha256_of(manifest.as_bytes());

    let head = upstream
        .head_manifest(&repo, &"v1".parse().unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(head.digest.as_ref(), Some(&manifest_digest));
    assert_eq!(head.media_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(head.size, Some(manifest.len() as u64));

    let by_digest = oci::Reference::Digest(manifest_digest.clone());
    let got = upstream
        .get_manifest(&repo, &by_digest, &[], 1 << 20)
        .await
        .unwrap();
    assert_eq!(got.bytes, manifest.as_bytes());
    assert_eq!(got.media_type, OCI_MANIFEST);
    assert_eq!(got.digest_header, Some(manifest_digest));

    let blob = upstream.get_blob(&repo, &layer_digest).await.unwrap();
    assert_eq!(blob.size, Some(layer.len() as u64));
    let mut streamed = Vec::new();
    let mut body = blob.body;
    while let Some(chunk) = body.next().await {
        streamed.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(streamed, layer);

    // From an offset (where another source stopped): a real Range request.
    let from = layer.len() as u64 / 3;
    let blob = upstream.get_blob_from(&repo, &layer_digest, from).await.unwrap();
    assert_eq!(blob.size, Some(layer.len() as u64 - from));
    let rest: Vec<u8> = blob.body.map(|chunk| chunk.unwrap().to_vec()).concat().await;
    assert_eq!(rest, layer[from as usize..]);

    // distribution 2.8 ignores `n` (pagination came in 3.0): accept either
    // one tag with a next link or every tag without one.
    let page = upstream.tags_list(&repo, Some("n=1"), 1 << 16).await.unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    let tags = listed["tags"].as_array().unwrap();
    assert_eq!(tags[0], "v1");
    match &page.link {
        Some(link) => assert!(
            link.starts_with("</v2/lib/app/tags/list?") && tags.len() == 1,
            "{link}"
        ),
        None => assert_eq!(tags.len(), 2),
    }
    assert!(page.content_type.unwrap().starts_with("application/json"));

    let missing: oci::RepoName = "lib/missing".parse().unwrap();
    let err = upstream
        .head_manifest(&missing, &"v1".parse().unwrap(), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::NotFound), "{err:?}");
    let err = upstream
        .get_blob(&repo, &oci::Digest::sha256_of(b"absent"))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::NotFound), "{err:?}");
    assert!(matches!(
        upstream.tags_list(&missing, None, 1 << 16).await,
        Err(UpstreamError::NotFound)
    ));
}
