//! Range reads through the real binary from a real upstream: containerd 2.x
//! pulls a layer as several parallel open-ended ranges, so a cold 200 MiB
//! blob must serve all of them from one upstream GET, and the edge cases of
//! RFC 9110 ranges must never produce a wrong body. Bodies are hashed as they
//! stream and compared with slices of the layout's file, so memory stays
//! bounded whatever the blob size.

mod common;

use std::path::{Path, PathBuf};

use common::{Regcache, client};
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use testkit::{ImageSpec, LayerCompression, OciLayout, Registry};

const BIG: u64 = 200 << 20;
const SMALL: u64 = 64 << 10;

/// A cold cache in front of an upstream holding one image with a 200 MiB
/// layer (disk tier once cached) and a 64 KiB one (memory tier once cached).
struct Fixture {
    registry: Registry,
    cache: Regcache,
    /// Digest, size and layout file of the big and the small layer.
    big: Blob,
    small: Blob,
    _layout: OciLayout,
    _data: tempfile::TempDir,
}

#[derive(Clone)]
struct Blob {
    digest: String,
    size: u64,
    path: PathBuf,
}

fn fixture() -> Fixture {
    let registry = Registry::start().expect("upstream registry");
    // Uncompressed: the bytes are what matters here, and gzip costs CI time.
    let mut layout = OciLayout::new()
        .expect("layout")
        .with_layer_compression(LayerCompression::None);
    let image = layout
        .add_image("v1", &ImageSpec::new(&[BIG, SMALL]))
        .expect("image");
    layout.push("v1", &registry, "library/ranges:v1").expect("push");
    let blob = |i: usize| {
        let (digest, size) = image.layer_digests[i].clone();
        let path = layout.blob_path(&digest);
        Blob { digest, size, path }
    };
    let (big, small) = (blob(0), blob(1));
    let data = tempfile::tempdir().expect("tempdir");
    let cache = Regcache::start(&registry, data.path(), &[]);
    registry.clear_log();
    Fixture {
        registry,
        cache,
        big,
        small,
        _layout: layout,
        _data: data,
    }
}

impl Fixture {
    fn url(&self, blob: &Blob) -> String {
        self.cache.url(&format!("/v2/ranges/blobs/{}", blob.digest))
    }

    fn upstream_gets(&self, blob: &Blob) -> usize {
        self.registry.count("GET", &format!("/blobs/{}", blob.digest))
    }
}

/// sha256 of `[start, end)` of a file, read in 1 MiB pieces.
fn slice_digest(path: &Path, start: u64, end: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).expect("opening the layer");
    file.seek(SeekFrom::Start(start)).expect("seeking");
    let mut piece = file.take(end - start);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = piece.read(&mut buf).expect("reading the layer");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// What one response was. Bodies are hashed while streaming, never held
/// whole; a GET's error body is reduced to its spec error code.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    content_range: Option<String>,
    /// Only of successful responses: an error body's length is not pinned.
    content_length: Option<u64>,
    body: Body,
}

#[derive(Debug, PartialEq, Eq)]
enum Body {
    Bytes { len: u64, digest: String },
    Error(String),
}

const EMPTY_SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

async fn fetch(http: &reqwest::Client, method: &reqwest::Method, url: &str, range: &str) -> Seen {
    let response = http
        .request(method.clone(), url)
        .header("range", range)
        .send()
        .await
        .expect("sending");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_owned())
    };
    let status = response.status().as_u16();
    let content_range = header("content-range");
    let content_length = header("content-length")
        .filter(|_| status < 400)
        .map(|v| v.parse().expect("numeric length"));
    if status >= 400 && method == reqwest::Method::GET {
        let json: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.expect("error body")).unwrap_or_default();
        let code = json["errors"][0]["code"]
            .as_str()
            .unwrap_or("<no spec error body>");
        return Seen {
            status,
            content_range,
            content_length,
            body: Body::Error(code.to_owned()),
        };
    }
    let mut hasher = Sha256::new();
    let mut len = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("body chunk");
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    Seen {
        status,
        content_range,
        content_length,
        body: Body::Bytes { len, digest },
    }
}

/// The 206 a satisfiable range of `[start, end)` must get.
fn partial(blob: &Blob, start: u64, end: u64) -> Seen {
    Seen {
        status: 206,
        content_range: Some(format!("bytes {start}-{}/{}", end - 1, blob.size)),
        content_length: Some(end - start),
        body: Body::Bytes {
            len: end - start,
            digest: slice_digest(&blob.path, start, end),
        },
    }
}

/// The 200 with the whole blob, for a Range the server may ignore.
fn whole(blob: &Blob) -> Seen {
    Seen {
        status: 200,
        content_range: None,
        content_length: Some(blob.size),
        body: Body::Bytes {
            len: blob.size,
            digest: blob.digest.clone(),
        },
    }
}

/// A 416 naming the blob's size, with a spec error body.
fn unsatisfiable(blob: &Blob) -> Seen {
    Seen {
        status: 416,
        content_range: Some(format!("bytes */{}", blob.size)),
        content_length: None,
        body: Body::Error("RANGE_INVALID".into()),
    }
}

/// The same answer to HEAD: same status and headers, no body.
fn head_of(get: Seen) -> Seen {
    Seen {
        body: Body::Bytes {
            len: 0,
            digest: EMPTY_SHA256.into(),
        },
        ..get
    }
}

/// Offsets spread over the blob as containerd spreads its parallel reads,
/// none aligned to a chunk boundary except the first.
fn open_ended_starts(size: u64) -> Vec<u64> {
    (0..8).map(|i| i * (size / 8) + i * 4099).collect()
}

/// Every request of `cases` at once, each compared with what it must get.
async fn concurrently(url: &str, cases: &[(reqwest::Method, String, Seen)]) {
    let http = client();
    let requests = cases.iter().map(|(method, range, _)| {
        let (http, url, method, range) = (http.clone(), url.to_owned(), method.clone(), range.clone());
        tokio::spawn(async move { fetch(&http, &method, &url, &range).await })
    });
    let seen = futures_util::future::join_all(requests).await;
    for ((method, range, want), got) in cases.iter().zip(seen) {
        assert_eq!(&got.expect("request task"), want, "{method} {range}");
    }
}

/// The edge cases of RFC 9110 ranges against one blob.
fn edge_cases(blob: &Blob) -> Vec<(reqwest::Method, String, Seen)> {
    use reqwest::Method;
    let size = blob.size;
    let mut cases = window_edges(blob);
    cases.extend([
        (Method::GET, "bytes=-100".into(), partial(blob, size - 100, size)),
        (
            Method::GET,
            format!("bytes=-{}", size + 10),
            partial(blob, 0, size),
        ),
        (Method::GET, "bytes=0-0".into(), partial(blob, 0, 1)),
        (
            Method::GET,
            format!("bytes={}-", size - 1),
            partial(blob, size - 1, size),
        ),
        (
            Method::GET,
            format!("bytes=10-{}", size * 2),
            partial(blob, 10, size),
        ),
        (Method::GET, "bytes=0-1,5-9".into(), whole(blob)),
        (Method::GET, format!("bytes=-1, 0-{size}"), whole(blob)),
        (Method::GET, format!("bytes={size}-"), unsatisfiable(blob)),
        (
            Method::GET,
            format!("bytes={}-{}", size + 1000, size + 2000),
            unsatisfiable(blob),
        ),
        (Method::GET, "bytes=-0".into(), unsatisfiable(blob)),
        (
            Method::HEAD,
            "bytes=100-199".into(),
            head_of(partial(blob, 100, 200)),
        ),
        (
            Method::HEAD,
            format!("bytes=-{}", size + 1),
            head_of(partial(blob, 0, size)),
        ),
        (Method::HEAD, "bytes=0-1,5-9".into(), head_of(whole(blob))),
        (
            Method::HEAD,
            format!("bytes={size}-"),
            head_of(unsatisfiable(blob)),
        ),
    ]);
    cases
}

/// Ranges ending, starting and crossing at the disk tier's map windows,
/// for a blob long enough to have more than one.
fn window_edges(blob: &Blob) -> Vec<(reqwest::Method, String, Seen)> {
    let w = store::MAP_WINDOW;
    if blob.size <= 2 * w {
        return Vec::new();
    }
    [(w - 5, w + 5), (w - 1, w), (w, w + 1), (w - 100, 2 * w + 100)]
        .into_iter()
        .map(|(start, end)| {
            let range = format!("bytes={start}-{}", end - 1);
            (reqwest::Method::GET, range, partial(blob, start, end))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_open_ended_ranges_share_one_upstream_get() {
    let f = fixture();
    let url = f.url(&f.big);
    let cases: Vec<_> = open_ended_starts(f.big.size)
        .into_iter()
        .map(|start| {
            let want = partial(&f.big, start, f.big.size);
            (reqwest::Method::GET, format!("bytes={start}-"), want)
        })
        .collect();
    concurrently(&url, &cases).await;
    assert_eq!(f.upstream_gets(&f.big), 1, "cold: {:?}", f.registry.requests());
    concurrently(&url, &cases).await;
    assert_eq!(f.upstream_gets(&f.big), 1, "warm: {:?}", f.registry.requests());
}

/// Cold, every case at once follows the one download; warm, one after the
/// other, they come from the disk tier (big) or the memory tier (small).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_ranges_cold_and_warm_from_every_tier() {
    let f = fixture();
    let http = client();
    for blob in [&f.big, &f.small] {
        let url = f.url(blob);
        let cases = edge_cases(blob);
        concurrently(&url, &cases).await;
        assert_eq!(f.upstream_gets(blob), 1, "cold: {:?}", f.registry.requests());
        for (method, range, want) in &cases {
            assert_eq!(
                &fetch(&http, method, &url, range).await,
                want,
                "warm {method} {range}"
            );
        }
        assert_eq!(f.upstream_gets(blob), 1, "warm: {:?}", f.registry.requests());
    }
}
