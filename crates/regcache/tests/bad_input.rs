//! Hostile and malformed client input through the real binary, sent over a
//! raw socket so nothing is normalized on the way: every request gets the
//! right 4xx with a spec JSON error (or hyper's own refusal), the server
//! keeps answering, and nothing changes on disk outside what the cache had.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{Regcache, raw_request, raw_request_with};
use testkit::{Registry, SeededRegistry};

/// What a bad request must get.
#[derive(Debug)]
enum Want {
    /// regcache's own answer: this status and spec error code.
    Spec(u16, &'static str),
    /// A 206 with exactly this half-open slice of the blob.
    Slice(u64, u64),
    /// The whole blob: RFC 9110 lets a server ignore a Range it won't serve.
    WholeBlob,
    /// Refused by hyper before regcache sees it: this status, no JSON.
    Hyper(u16),
}

use Want::{Hyper, Slice, Spec, WholeBlob};

struct Case {
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    want: Want,
}

fn get(path: impl Into<String>, want: Want) -> Case {
    Case {
        path: path.into(),
        headers: Vec::new(),
        want,
    }
}

/// A cache in front of an upstream with one small image, its layer already
/// cached. The data dir sits four levels inside a sandbox dir, so a path
/// that climbs out of it by up to four `..` still lands where it is seen.
struct Fixture {
    _registry: Registry,
    cache: Regcache,
    sandbox: tempfile::TempDir,
    layer: String,
    blob: Vec<u8>,
}

fn fixture() -> Fixture {
    let SeededRegistry {
        registry,
        image,
        layout,
        ..
    } = SeededRegistry::start(&[64 << 10], "library/api:v1").expect("a registry with an image");
    let layer = image.layer_digests[0].0.clone();
    let blob = std::fs::read(layout.blob_path(&layer)).expect("reading the layer");
    let sandbox = tempfile::tempdir().expect("tempdir");
    let data = sandbox.path().join("1/2/3/data");
    std::fs::create_dir_all(&data).expect("data dir");
    let cache = Regcache::start(&registry, &data, &[]);
    let (status, body) = raw_request(&cache.host(), "GET", &format!("/v2/api/blobs/{layer}"));
    assert_eq!((status, body.len()), (200, blob.len()), "warming the cache");
    cache.wait_for_downloads();
    Fixture {
        _registry: registry,
        cache,
        sandbox,
        layer,
        blob,
    }
}

/// Every path under `dir`, recursively.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("listing").flatten() {
        let path = entry.path();
        if path.is_dir() {
            paths.extend(tree(&path));
        }
        paths.insert(path);
    }
    paths
}

impl Fixture {
    /// Sends every case, checks its answer and that the server still answers
    /// `/v2/` after it, then that no file appeared or vanished.
    fn check(&self, cases: &[Case]) {
        let before = tree(self.sandbox.path());
        let host = self.cache.host();
        for case in cases {
            let headers: Vec<(&str, &[u8])> = case.headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            let got = raw_request_with(&host, "GET", &case.path, &headers);
            let shown = shown(case);
            match case.want {
                Spec(status, code) => {
                    assert_eq!(
                        (got.status, got.error_code().as_deref()),
                        (status, Some(code)),
                        "{shown}: {}",
                        String::from_utf8_lossy(&got.body)
                    );
                    assert_eq!(got.header("content-type"), Some("application/json"), "{shown}");
                }
                Slice(start, end) => {
                    assert_eq!(got.status, 206, "{shown}");
                    let want_range = format!("bytes {start}-{}/{}", end - 1, self.blob.len());
                    assert_eq!(got.header("content-range"), Some(want_range.as_str()), "{shown}");
                    assert!(
                        got.body == self.blob[start as usize..end as usize],
                        "{shown}: wrong body"
                    );
                }
                WholeBlob => {
                    assert_eq!(got.status, 200, "{shown}");
                    assert_eq!(got.header("content-range"), None, "{shown}");
                    assert!(got.body == self.blob, "{shown}: wrong body");
                }
                Hyper(status) => assert_eq!(got.status, status, "{shown}: {}", got.head),
            }
            let (status, _) = raw_request(&host, "GET", "/v2/");
            assert_eq!(status, 200, "the server stopped answering after {shown}");
        }
        assert_eq!(tree(self.sandbox.path()), before, "files changed on disk");
    }
}

/// The case for a failure message, long values cut short.
fn shown(case: &Case) -> String {
    let cut = |s: &str| s.chars().take(120).collect::<String>();
    let headers: Vec<String> = case
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}", cut(&String::from_utf8_lossy(v))))
        .collect();
    format!("GET {} {headers:?}", cut(&case.path))
}

fn bad_names() -> Vec<Case> {
    let long = "a".repeat(256);
    let names = [
        "Upper",
        "library/Alpine",
        "..",
        "a/../b",
        "../api",
        "api/..",
        "a//b",
        "/api",
        "api/",
        long.as_str(),
        "a%00b",
        "a%2fb",
        "a%2Fb",
        "%2e%2e",
        "a/%2e%2e/b",
        "%2e%2e%2fetc",
        "a%5cb",
        "%C3%A9",
        "api:v1",
        "docker.io/../../etc",
        "docker.io/..",
    ];
    let mut cases: Vec<Case> = names
        .iter()
        .map(|name| get(format!("/v2/{name}/manifests/v1"), Spec(400, "NAME_INVALID")))
        .collect();
    cases.push(get("/v2/a/../b/tags/list", Spec(400, "NAME_INVALID")));
    cases.push(get(
        format!("/v2/a/../b/blobs/sha256:{}", "0".repeat(64)),
        Spec(400, "NAME_INVALID"),
    ));
    // One component of 250 is fine, but not with Docker Hub's `library/`.
    cases.push(get(
        format!("/v2/{}/manifests/v1", "a".repeat(250)),
        Spec(400, "NAME_INVALID"),
    ));
    cases
}

fn bad_digests(layer: &str) -> Vec<Case> {
    let hex = layer.trim_start_matches("sha256:");
    let digests = [
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
        "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709".into(),
        format!("sha512:{hex}"),
        format!("sha384:{hex}"),
        "sha256:abc".into(),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}", "g".repeat(64)),
        format!("sha256:{}", hex.to_uppercase()),
        format!("SHA256:{hex}"),
        format!("sha256:{hex}%00"),
        "sha256".into(),
        "sha256:".into(),
        "sha256:%2e%2e".into(),
        String::new(),
    ];
    let mut cases = Vec::new();
    for digest in &digests {
        cases.push(get(
            format!("/v2/api/blobs/{digest}"),
            Spec(400, "DIGEST_INVALID"),
        ));
        if digest.contains(':') {
            cases.push(get(
                format!("/v2/api/manifests/{digest}"),
                Spec(400, "DIGEST_INVALID"),
            ));
        }
    }
    // Without a literal `:` a reference is a tag, and `%` is no tag character.
    cases.push(get(
        format!("/v2/api/manifests/sha256%3a{hex}"),
        Spec(400, "TAG_INVALID"),
    ));
    cases
}

fn bad_tags() -> Vec<Case> {
    let long = "a".repeat(129);
    let tags = [
        long.as_str(),
        ".v1",
        "-v1",
        "..",
        "v1%2f..",
        "v1%00",
        "%76%31",
        "v1+x",
        "v%C3%A9",
    ];
    let mut cases: Vec<Case> = tags
        .iter()
        .map(|tag| get(format!("/v2/api/manifests/{tag}"), Spec(400, "TAG_INVALID")))
        .collect();
    // The longest valid tag is valid, and merely unknown.
    cases.push(get(
        format!("/v2/api/manifests/{}", "a".repeat(128)),
        Spec(404, "MANIFEST_UNKNOWN"),
    ));
    cases
}

fn bad_namespaces(layer: &str) -> Vec<Case> {
    let namespaces = [
        "evil.example.com",
        "../..",
        "..%2f..",
        "127.0.0.1:1",
        "127.0.0.1%3a1",
        "",
        "docker.io%2f..",
        "docker.io/../quay.io",
        "DOCKER.IO",
        "%00",
        "docker.io%00",
    ];
    let mut cases: Vec<Case> = namespaces
        .iter()
        .map(|ns| get(format!("/v2/api/manifests/v1?ns={ns}"), Spec(404, "NAME_UNKNOWN")))
        .collect();
    cases.push(get(
        format!("/v2/api/blobs/{layer}?ns=../.."),
        Spec(404, "NAME_UNKNOWN"),
    ));
    cases.push(get("/v2/api/tags/list?ns=127.0.0.1:1", Spec(404, "NAME_UNKNOWN")));
    cases
}

/// `..` in every position that ends up in a path or a query to the upstream.
fn traversals() -> Vec<Case> {
    vec![
        get("/v2/../../../etc/passwd/manifests/v1", Spec(400, "NAME_INVALID")),
        get(
            "/v2/api/manifests/..%2f..%2f..%2fetc%2fpasswd",
            Spec(400, "TAG_INVALID"),
        ),
        get(
            "/v2/api/blobs/sha256:..%2f..%2fetc%2fpasswd",
            Spec(400, "DIGEST_INVALID"),
        ),
        get("/v2/api/blobs/..", Spec(400, "DIGEST_INVALID")),
        get("/v2/api/blobs/../../etc/passwd", Spec(404, "NAME_UNKNOWN")),
        get("/v2/api/tags/list?last=../../etc", Spec(400, "TAG_INVALID")),
        get("/v2/api/tags/list?last=..%2f..", Spec(400, "TAG_INVALID")),
        get("/v2/api/tags/list?last=%2e%2e", Spec(400, "TAG_INVALID")),
        get("/v2/api/tags/list?n=-1", Spec(400, "PAGINATION_NUMBER_INVALID")),
        get(
            "/v2/api/tags/list?n=99999999999",
            Spec(400, "PAGINATION_NUMBER_INVALID"),
        ),
        get("/v2/..", Spec(404, "NAME_UNKNOWN")),
        get("/v2/../../etc/passwd", Spec(404, "NAME_UNKNOWN")),
        get("/v2/%2e%2e/%2e%2e/etc/passwd", Spec(404, "NAME_UNKNOWN")),
    ]
}

fn absurd_ranges(layer: &str, size: u64) -> Vec<Case> {
    let many: Vec<String> = (0..10_000).map(|i| format!("{i}-{i}")).collect();
    let ranges: Vec<(Vec<u8>, Want)> = vec![
        (
            b"bytes=99999999999999999999999-".to_vec(),
            Spec(416, "RANGE_INVALID"),
        ),
        (
            b"bytes=18446744073709551615-".to_vec(),
            Spec(416, "RANGE_INVALID"),
        ),
        (b"bytes=9223372036854775807-".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=0-9999999999999999999".to_vec(), Slice(0, size)),
        (b"bytes=-9999999999999999999".to_vec(), Slice(0, size)),
        (b"bytes=-5-10".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=--5".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=-".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=5-1".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=1".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=+1-2".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=0x10-".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=\xff-".to_vec(), Spec(416, "RANGE_INVALID")),
        (b"bytes=0-\xc3\xa9".to_vec(), Spec(416, "RANGE_INVALID")),
        ("bytes=\u{661}-".as_bytes().to_vec(), Spec(416, "RANGE_INVALID")),
        (b"items=0-1".to_vec(), WholeBlob),
        (b"bytes 0-1".to_vec(), WholeBlob),
        (b"".to_vec(), WholeBlob),
        (format!("bytes={}", many.join(",")).into_bytes(), WholeBlob),
    ];
    ranges
        .into_iter()
        .map(|(range, want)| Case {
            path: format!("/v2/api/blobs/{layer}"),
            headers: vec![("Range", range)],
            want,
        })
        .collect()
}

/// Requests hyper refuses before routing: oversized or malformed heads.
fn broken_requests() -> Vec<Case> {
    let header = |name, value: Vec<u8>, want| Case {
        path: "/v2/api/manifests/v1".into(),
        headers: vec![(name, value)],
        want,
    };
    let mut many_headers = get("/v2/api/manifests/v1", Hyper(431));
    many_headers.headers = (0..10_000).map(|_| ("X-N", b"1".to_vec())).collect();
    vec![
        header("X-Big", vec![b'a'; 1 << 20], Hyper(431)),
        header("Range", vec![b'1'; 1 << 20], Hyper(431)),
        header("X-Ctl", b"a\x01b".to_vec(), Hyper(400)),
        many_headers,
        get(format!("/v2/{}/manifests/v1", "a/".repeat(512 << 10)), Hyper(431)),
        get("/v2/a\0b/manifests/v1", Hyper(400)),
        get("/v2/a\\b/manifests/v1", Hyper(400)),
        get("/v2/é/manifests/v1", Hyper(400)),
    ]
}

#[test]
fn bad_paths_get_spec_errors_and_touch_nothing() {
    let f = fixture();
    let cases: Vec<Case> = [
        bad_names(),
        bad_digests(&f.layer),
        bad_tags(),
        bad_namespaces(&f.layer),
        traversals(),
    ]
    .into_iter()
    .flatten()
    .collect();
    f.check(&cases);
}

#[test]
fn absurd_ranges_never_get_a_wrong_body() {
    let f = fixture();
    f.check(&absurd_ranges(&f.layer, f.blob.len() as u64));
}

#[test]
fn oversized_and_malformed_requests_leave_the_server_working() {
    let f = fixture();
    f.check(&broken_requests());
}
