//! The registry API's edges through the real binary: spec-format errors,
//! upstream selection, ranges and tag lists.

mod common;

use common::{ACCEPT_ALL, Regcache, client, raw_request};
use testkit::{ImageSpec, OciLayout, Registry};

struct Fixture {
    registry: Registry,
    cache: Regcache,
    layer: (String, u64),
    config: String,
    _data: tempfile::TempDir,
}

fn fixture(extra: &[&str]) -> Fixture {
    let registry = Registry::start().expect("upstream registry");
    let mut layout = OciLayout::new().expect("layout");
    let spec = ImageSpec {
        layers: vec![3 << 20],
        arch: "amd64".into(),
        os: "linux".into(),
    };
    let image = layout.add_image("v1", &spec).expect("image");
    for tag in ["v1", "v2", "v3"] {
        layout
            .push("v1", &registry, &format!("library/api:{tag}"))
            .expect("push");
    }
    let data = tempfile::tempdir().expect("tempdir");
    let cache = Regcache::start(&registry, data.path(), extra);
    Fixture {
        layer: image.layer_digests[0].clone(),
        config: image.config_digest.clone(),
        registry,
        cache,
        _data: data,
    }
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).unwrap_or_default();
    (
        status,
        body["errors"][0]["code"]
            .as_str()
            .unwrap_or("<no spec error body>")
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_spec_errors() {
    let f = fixture(&[]);
    let digest = &f.layer.0;
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/v2/Upper/manifests/v1", 400, "NAME_INVALID"),
        ("GET", "/v2/a//b/manifests/v1", 400, "NAME_INVALID"),
        ("GET", "/v2/a/../b/manifests/v1", 400, "NAME_INVALID"),
        ("GET", "/v2/a%2fb/manifests/v1", 400, "NAME_INVALID"),
        ("GET", "/v2/api/manifests/.bad", 400, "TAG_INVALID"),
        ("GET", "/v2/api/manifests/sha256:1234", 400, "DIGEST_INVALID"),
        (
            "GET",
            "/v2/api/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
            400,
            "DIGEST_INVALID",
        ),
        ("GET", "/v2/api/blobs/sha256:..%2f..%2fetc", 400, "DIGEST_INVALID"),
        ("GET", "/v2/api/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/nothere/tags/list", 404, "NAME_UNKNOWN"),
        ("PUT", "/v2/api/manifests/v1", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/api/manifests/v1", 405, "UNSUPPORTED"),
        ("POST", "/v2/api/blobs/uploads/", 405, "UNSUPPORTED"),
        (
            "GET",
            "/v2/api/manifests/v1?ns=evil.example.com",
            404,
            "NAME_UNKNOWN",
        ),
        ("GET", "/v2/api/tags/list?n=abc", 400, "PAGINATION_NUMBER_INVALID"),
    ];
    let zero = format!("sha256:{}", "0".repeat(64));
    let blob_unknown = format!("/v2/api/blobs/{zero}");
    let mut all: Vec<(&str, String, u16, &str)> = cases
        .iter()
        .map(|(m, p, s, c)| (*m, p.to_string(), *s, *c))
        .collect();
    all.push(("GET", blob_unknown, 404, "BLOB_UNKNOWN"));
    all.push((
        "GET",
        format!("/v2/api/blobs/{}", digest.replace("sha256:", "sha512:")),
        400,
        "DIGEST_INVALID",
    ));
    for (method, path, status, code) in all {
        let (got_status, body) = raw_request(&f.cache.host(), method, &path);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let got_code = body["errors"][0]["code"]
            .as_str()
            .unwrap_or("<no spec error body>");
        assert_eq!((got_status, got_code), (status, code), "{method} {path}: {body}");
    }
    assert!(!f.cache.data_dir.join("..").join("etc").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_is_chosen_by_ns_then_path_prefix_then_default() {
    let f = fixture(&[]);
    let http = client();
    for path in [
        "/v2/api/manifests/v1?ns=docker.io",
        "/v2/docker.io/library/api/manifests/v1",
        "/v2/docker.io/api/manifests/v1",
        "/v2/library/api/manifests/v1",
    ] {
        let response = http
            .get(f.cache.url(path))
            .header("accept", ACCEPT_ALL)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["oci-namespace"], "docker.io", "{path}");
    }
    let quay = http
        .get(f.cache.url("/v2/quay.io/api/manifests/v1"))
        .send()
        .await
        .unwrap();
    // quay.io is a built-in upstream but unreachable here: never our registry's content.
    assert_ne!(quay.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_served_cold_and_warm() {
    let f = fixture(&[]);
    let http = client();
    let (digest, size) = f.layer.clone();
    let url = f.cache.url(&format!("/v2/api/blobs/{digest}"));
    let whole = {
        let upstream = http
            .get(format!("{}/v2/library/api/blobs/{digest}", f.registry.url()))
            .send()
            .await
            .unwrap();
        upstream.bytes().await.unwrap()
    };
    assert_eq!(whole.len() as u64, size);
    // The first request is a cold open-ended range, as containerd sends.
    for (range, start, end) in [
        (format!("bytes={}-", size / 2), size / 2, size),
        ("bytes=0-9".to_string(), 0, 10),
        ("bytes=-100".to_string(), size - 100, size),
        (format!("bytes=10-{}", size * 2), 10, size),
    ] {
        let response = http.get(&url).header("range", &range).send().await.unwrap();
        assert_eq!(response.status(), 206, "{range}");
        let want_range = format!("bytes {start}-{}/{size}", end - 1);
        assert_eq!(
            response.headers()["content-range"],
            want_range.as_str(),
            "{range}"
        );
        let body = response.bytes().await.unwrap();
        assert_eq!(body.as_ref(), &whole[start as usize..end as usize], "{range}");
    }
    for range in [
        format!("bytes={size}-"),
        "bytes=-0".to_string(),
        "bytes=9-1".to_string(),
        "bytes=x-y".into(),
    ] {
        let response = http.get(&url).header("range", &range).send().await.unwrap();
        assert_eq!(
            error_code(response).await,
            (416, "RANGE_INVALID".to_owned()),
            "{range}"
        );
    }
    // HEAD of a cold blob answers with its length and no body.
    let config_url = f.cache.url(&format!("/v2/api/blobs/{}", f.config));
    let head = http.head(&config_url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let length: u64 = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(head.headers()["docker-content-digest"], f.config.as_str());
    let config = http.get(&config_url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(config.len() as u64, length);
    assert_eq!(testkit::sha256_bytes(&config), f.config);

    let multi = http
        .get(&url)
        .header("range", "bytes=0-1,5-9")
        .send()
        .await
        .unwrap();
    assert_eq!(multi.status(), 200);
    assert_eq!(multi.bytes().await.unwrap(), whole);
    assert_eq!(
        f.registry.count("GET", &format!("/blobs/{digest}")),
        2,
        "one for the test, one for the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_pass_through() {
    let f = fixture(&[]);
    let http = client();
    f.registry.clear_log();
    let response = http
        .get(f.cache.url("/v2/api/tags/list?n=2&last=v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(page["name"], "library/api");
    // distribution 2.8 ignores n/last; what matters is that they were passed on.
    let tags = page["tags"].as_array().unwrap();
    assert!(tags.iter().any(|t| t == "v2"), "{page}");
    assert_eq!(
        f.registry.count("GET", "/v2/library/api/tags/list?n=2&last=v1"),
        1,
        "{:?}",
        f.registry.requests()
    );
}

/// `Cache-Status` (RFC 9211) tells a client, and the load tests, whether the
/// replica went to the upstream or answered from a tier of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_status_says_miss_then_hit() {
    let f = fixture(&[]);
    let http = client();
    let status_of = |response: &reqwest::Response| -> String {
        let value = response
            .headers()
            .get("cache-status")
            .expect("a cache-status header");
        value.to_str().expect("ascii").to_owned()
    };
    let manifest = f.cache.url("/v2/api/manifests/v1");
    let (digest, _) = f.layer.clone();
    let blob = f.cache.url(&format!("/v2/api/blobs/{digest}"));
    let mut seen = Vec::new();
    for url in [&manifest, &manifest, &blob, &blob] {
        let response = http.get(url).header("accept", ACCEPT_ALL).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        seen.push(status_of(&response));
        response.bytes().await.unwrap();
        // Clients get a blob before it is put in place: until then a GET
        // joins the download (`inflight`).
        f.cache.wait_for_downloads();
    }
    assert_eq!(
        seen,
        [
            "regcache; fwd=miss; detail=upstream",
            "regcache; hit; detail=memory",
            "regcache; fwd=miss; detail=upstream",
            "regcache; hit; detail=disk",
        ]
    );
    let head = http.head(&blob).send().await.unwrap();
    assert_eq!(status_of(&head), "regcache; hit; detail=disk");
}
