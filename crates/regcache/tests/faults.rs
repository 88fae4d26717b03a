//! A hostile or failing upstream: the real regcache binary pulls from a real
//! registry through testkit's `FaultProxy`, which cuts, corrupts and stalls
//! bodies, answers 429 and 5xx, drops connections, serves an oversized
//! manifest, redirects blobs to another host and breaks the token endpoint.
//! For each fault the client gets a spec error or a short body (or a retry
//! succeeds), nothing unverified is stored, the pull works once the fault
//! clears, a metric counts it, and the upstream password shows nowhere.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{ACCEPT_ALL, Regcache, client};
use futures_util::future::join_all;
use testkit::{BuiltImage, Fault, FaultProxy, Registry, Rule, SeededRegistry};

const USERNAME: &str = "regcache-faults";
const PASSWORD: &str = "pw-7c1d9e-never-printed";
/// `base64("regcache-faults:pw-7c1d9e-never-printed")`, the Basic header value.
const BASIC: &str = "cmVnY2FjaGUtZmF1bHRzOnB3LTdjMWQ5ZS1uZXZlci1wcmludGVk";
/// Tags: revalidated after 1 s, served stale until 4 s after the last check.
const TAG_TTL: Duration = Duration::from_secs(1);
const MAX_STALE: Duration = Duration::from_secs(3);
/// regcache's upstream read timeout; a stall ends after this.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_MANIFEST: usize = 16 << 10;

/// A registry holding `library/app:v1`, the fault proxy in front of it and
/// regcache (with upstream credentials) behind the proxy.
struct Stack {
    image: BuiltImage,
    proxy: FaultProxy,
    cache: Regcache,
    /// Every error body a client received, checked for credentials.
    error_bodies: Vec<String>,
    _registry: Registry,
    _dir: tempfile::TempDir,
}

/// What a client got for one GET.
#[derive(Debug)]
enum Pull {
    /// 200 and the whole announced body.
    Complete(Vec<u8>),
    /// 200, then the body ended early (error or short): `got` of `of` bytes.
    Short { got: usize, of: u64 },
    /// A spec error: status, `errors[0].code`, `Retry-After`, whole body.
    Error {
        status: u16,
        code: String,
        retry_after: Option<String>,
        body: String,
    },
}

impl Stack {
    fn start(layers: &[u64]) -> Stack {
        let SeededRegistry { registry, image, .. } =
            SeededRegistry::start(layers, "library/app:v1").expect("a registry with an image");
        let proxy = FaultProxy::start(&registry).expect("starting the fault proxy");
        let dir = tempfile::tempdir().expect("temp dir");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("writing the password");
        let config = dir.path().join("regcache.toml");
        let toml = format!(
            "builtin_upstreams = false\n\
             [cache]\n\
             tag_ttl = \"{}s\"\n\
             max_stale = \"{}s\"\n\
             max_manifest_bytes = {MAX_MANIFEST}\n\
             [[upstream]]\n\
             name = \"docker.io\"\n\
             username = \"{USERNAME}\"\n\
             password_file = \"{}\"\n\
             read_timeout = \"{}s\"\n\
             connect_timeout = \"2s\"\n",
            TAG_TTL.as_secs(),
            MAX_STALE.as_secs(),
            password_file.display(),
            READ_TIMEOUT.as_secs(),
        );
        std::fs::write(&config, toml).expect("writing the config");
        let config = config.display().to_string();
        let cache = Regcache::start_url(&proxy.url(), &dir.path().join("data"), &["--config", &config]);
        Stack {
            image,
            proxy,
            cache,
            error_bodies: Vec::new(),
            _registry: registry,
            _dir: dir,
        }
    }

    fn layer(&self, i: usize) -> &str {
        &self.image.layer_digests[i].0
    }

    async fn pull_blob(&mut self, digest: &str) -> Pull {
        self.pull(&format!("/v2/app/blobs/{digest}")).await
    }

    async fn pull(&mut self, path: &str) -> Pull {
        let pull = pull(&self.cache, path).await;
        self.keep_error_bodies(std::slice::from_ref(&pull));
        pull
    }

    /// Several clients at once for the same path.
    async fn pull_concurrently(&mut self, path: &str, clients: usize) -> Vec<Pull> {
        let pulls = join_all((0..clients).map(|_| pull(&self.cache, path))).await;
        self.keep_error_bodies(&pulls);
        pulls
    }

    fn keep_error_bodies(&mut self, pulls: &[Pull]) {
        for p in pulls {
            if let Pull::Error { body, .. } = p {
                self.error_bodies.push(body.clone());
            }
        }
    }

    /// Pulls `digest` and checks the client got exactly its bytes.
    async fn pull_verified(&mut self, digest: &str) {
        match self.pull_blob(digest).await {
            Pull::Complete(bytes) => assert_eq!(testkit::sha256_bytes(&bytes), digest),
            other => panic!("{digest}: {other:?}\n{}", self.cache.process.logs()),
        }
    }

    /// Where the disk tier keeps `digest` once verified.
    fn stored_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.cache.data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    async fn assert_not_stored(&self, digest: &str) {
        self.cache.wait_for_downloads();
        assert!(!self.stored_path(digest).exists(), "{digest} was stored");
    }

    async fn assert_stored(&self, digest: &str) {
        self.cache.wait_for_downloads();
        assert!(self.stored_path(digest).exists(), "{digest} was not stored");
    }

    async fn metric(&self, name: &str, label: &str) -> f64 {
        let text = client()
            .get(self.cache.url("/metrics"))
            .send()
            .await
            .expect("requesting /metrics")
            .text()
            .await
            .expect("reading /metrics");
        metric(&text, name, label)
    }

    async fn upstream_errors(&self, kind: &str) -> f64 {
        self.metric("regcache_upstream_errors_total", &format!("kind=\"{kind}\""))
            .await
    }

    /// Neither the password nor the Basic header made it into regcache's
    /// logs, its metrics or an error body.
    async fn assert_credentials_hidden(&self) {
        let metrics = client()
            .get(self.cache.url("/metrics"))
            .send()
            .await
            .expect("requesting /metrics")
            .text()
            .await
            .expect("reading /metrics");
        let logs = self.cache.process.logs();
        for (what, text) in [("logs", &logs), ("metrics", &metrics)] {
            assert!(
                !text.contains(PASSWORD) && !text.contains(BASIC),
                "credentials in {what}"
            );
        }
        for body in &self.error_bodies {
            assert!(!body.contains(PASSWORD) && !body.contains(BASIC), "{body}");
        }
    }
}

/// One GET with every manifest type accepted, read to the end.
async fn pull(cache: &Regcache, path: &str) -> Pull {
    let mut response = client()
        .get(cache.url(path))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .expect("sending the request");
    let status = response.status().as_u16();
    if status != 200 {
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = response.text().await.expect("reading the error body");
        let json: serde_json::Value = serde_json::from_str(&body).expect("a spec json error");
        let code = json["errors"][0]["code"]
            .as_str()
            .expect("errors[0].code")
            .to_owned();
        return Pull::Error {
            status,
            code,
            retry_after,
            body,
        };
    }
    let of = response.content_length().expect("a content length");
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) if bytes.len() as u64 == of => return Pull::Complete(bytes),
            Ok(None) | Err(_) => return Pull::Short { got: bytes.len(), of },
        }
    }
}

/// Sum of the samples of `name` whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A spec error with this status and code.
fn assert_error(pull: &Pull, want_status: u16, want_code: &str) {
    match pull {
        Pull::Error { status, code, .. } if *status == want_status && code == want_code => {}
        other => panic!("expected {want_status} {want_code}, got {other:?}"),
    }
}

/// A body that ended early, or, when the download failed before the
/// response head was sent, the spec error for it.
fn assert_cut(pull: &Pull, status_if_early: u16, code_if_early: &str) {
    match pull {
        Pull::Short { got, of } => assert!((*got as u64) < *of),
        other => assert_error(other, status_if_early, code_if_early),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_corrupt_and_stalled_blobs_are_never_kept() {
    let mut s = Stack::start(&[40_000, 40_000, 40_000, 40_000, 40_000]);
    let layers: Vec<String> = (0..5).map(|i| s.layer(i).to_owned()).collect();

    // Truncated after 1000 of its bytes, Content-Length kept.
    s.proxy.set_rules(vec![Rule::new(
        "GET",
        &layers[0],
        Fault::Truncate { after: 1000 },
    )]);
    let cut = s.pull_blob(&layers[0]).await;
    assert_cut(&cut, 503, "UNAVAILABLE");
    s.assert_not_stored(&layers[0]).await;
    assert_eq!(s.upstream_errors("transport").await, 1.0);
    s.proxy.clear();
    s.pull_verified(&layers[0]).await;
    s.assert_stored(&layers[0]).await;

    // Wrong bytes for three clients at once: every one short of the last
    // byte, which is held back until verification.
    s.proxy.set_rules(vec![Rule::new(
        "GET",
        &layers[1],
        Fault::Corrupt { drop_length: false },
    )]);
    let path = format!("/v2/app/blobs/{}", layers[1]);
    for p in &s.pull_concurrently(&path, 3).await {
        assert_cut(p, 502, "UNKNOWN");
    }
    s.assert_not_stored(&layers[1]).await;
    // One count per corrupt download (a client arriving after a failed
    // download starts another).
    let corrupted = s.proxy.count("GET", &layers[1]);
    assert_eq!(
        s.metric("regcache_digest_mismatch_total", "").await,
        corrupted as f64
    );
    s.proxy.clear();
    s.pull_verified(&layers[1]).await;

    // Wrong bytes without a Content-Length: the answer waits for the end of
    // the download, so the mismatch arrives as the response itself.
    s.proxy.set_rules(vec![Rule::new(
        "GET",
        &layers[2],
        Fault::Corrupt { drop_length: true },
    )]);
    let mismatch = s.pull_blob(&layers[2]).await;
    assert_error(&mismatch, 502, "UNKNOWN");
    s.assert_not_stored(&layers[2]).await;
    assert_eq!(
        s.metric("regcache_digest_mismatch_total", "").await,
        (corrupted + 1) as f64
    );
    s.proxy.clear();
    s.pull_verified(&layers[2]).await;

    // Stalled mid-body: the read timeout ends the download for every
    // follower, long before the proxy would give up.
    let stall = Fault::Stall {
        after: 1000,
        stall: Duration::from_secs(20),
    };
    s.proxy.set_rules(vec![Rule::new("GET", &layers[3], stall)]);
    let path = format!("/v2/app/blobs/{}", layers[3]);
    let started = Instant::now();
    let pulls = s.pull_concurrently(&path, 3).await;
    let elapsed = started.elapsed();
    for p in &pulls {
        assert!(matches!(p, Pull::Short { got, .. } if *got <= 1000), "{p:?}");
    }
    assert!(
        elapsed >= READ_TIMEOUT && elapsed < READ_TIMEOUT * 4,
        "stall ended after {elapsed:?}"
    );
    assert_eq!(s.proxy.count("GET", &layers[3]), 1);
    s.assert_not_stored(&layers[3]).await;
    assert_eq!(s.upstream_errors("timeout").await, 1.0);
    s.proxy.clear();
    s.pull_verified(&layers[3]).await;

    // Closed without an answer, once: a clean 503, then the client's retry
    // succeeds with no clear needed.
    s.proxy
        .set_rules(vec![Rule::new("GET", &layers[4], Fault::Close).times(1)]);
    let closed = s.pull_blob(&layers[4]).await;
    assert_error(&closed, 503, "UNAVAILABLE");
    s.assert_not_stored(&layers[4]).await;
    assert_eq!(s.upstream_errors("transport").await, 2.0);
    s.pull_verified(&layers[4]).await;
    assert_eq!(s.proxy.count("GET", &layers[4]), 2);

    s.assert_credentials_hidden().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_outages_are_spec_errors_and_tags_go_stale() {
    let mut s = Stack::start(&[2_000]);
    let layer = s.layer(0).to_owned();
    let manifest = s.image.manifest_digest.clone();

    let limited = Fault::respond(429, &[("Retry-After", "7")], "slow down");
    s.proxy.set_rules(vec![Rule::new("GET", &layer, limited)]);
    match s.pull_blob(&layer).await {
        Pull::Error {
            status: 429,
            code,
            retry_after,
            ..
        } => {
            assert_eq!(code, "TOOMANYREQUESTS");
            assert_eq!(retry_after.as_deref(), Some("7"));
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    assert_eq!(s.upstream_errors("too_many_requests").await, 1.0);

    s.proxy.set_rules(vec![
        Rule::new("GET", &layer, Fault::respond(503, &[], "")),
        Rule::new("GET", &manifest, Fault::respond(500, &[], "oops")),
    ]);
    assert_error(&s.pull_blob(&layer).await, 503, "UNAVAILABLE");
    let by_digest = s.pull(&format!("/v2/app/manifests/{manifest}")).await;
    assert_error(&by_digest, 503, "UNAVAILABLE");
    assert_eq!(s.upstream_errors("status").await, 2.0);
    s.assert_not_stored(&layer).await;
    s.assert_not_stored(&manifest).await;
    s.proxy.clear();
    s.pull_verified(&layer).await;

    // A tag past its TTL is served stale while its revalidation fails, for
    // up to max_stale; after that the failure shows.
    let checked = Instant::now();
    assert!(matches!(s.pull("/v2/app/manifests/v1").await, Pull::Complete(_)));
    tokio::time::sleep(TAG_TTL + Duration::from_millis(200)).await;
    let faults = [
        Fault::respond(503, &[], ""),
        Fault::respond(429, &[("Retry-After", "1")], ""),
        Fault::Close,
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        s.proxy.set_rules(vec![Rule::new("HEAD", "/manifests/v1", fault)]);
        match s.pull("/v2/app/manifests/v1").await {
            Pull::Complete(bytes) => assert_eq!(bytes, s.image.manifest_bytes),
            other => panic!("stale tag not served: {other:?}"),
        }
        let stale = s.metric("regcache_stale_tags_served_total", "").await;
        assert_eq!(stale, (i + 1) as f64);
    }
    assert!(
        checked.elapsed() < TAG_TTL + MAX_STALE,
        "too slow to test staleness"
    );
    tokio::time::sleep((TAG_TTL + MAX_STALE + Duration::from_millis(300)).saturating_sub(checked.elapsed()))
        .await;
    s.proxy.set_rules(vec![Rule::new(
        "HEAD",
        "/manifests/v1",
        Fault::respond(503, &[], ""),
    )]);
    assert_error(&s.pull("/v2/app/manifests/v1").await, 503, "UNAVAILABLE");
    assert_eq!(s.metric("regcache_stale_tags_served_total", "").await, 3.0);

    s.proxy.clear();
    let heads = s.proxy.count("HEAD", "/manifests/v1");
    assert!(matches!(s.pull("/v2/app/manifests/v1").await, Pull::Complete(_)));
    assert_eq!(s.proxy.count("HEAD", "/manifests/v1"), heads + 1, "revalidated");
    assert_eq!(s.metric("regcache_stale_tags_served_total", "").await, 3.0);

    s.assert_credentials_hidden().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_corrupt_and_cut_manifests_are_refused() {
    let mut s = Stack::start(&[2_000]);
    let manifest = s.image.manifest_digest.clone();
    let by_digest = format!("/v2/app/manifests/{manifest}");

    // A well-formed manifest, padded past max_manifest_bytes.
    let padding = "x".repeat(MAX_MANIFEST * 4);
    let big = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{{"pad":"{padding}"}}}}"#
    );
    let big_digest = testkit::sha256_bytes(big.as_bytes());
    let oversized = Fault::respond(
        200,
        &[
            ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
            ("Docker-Content-Digest", &big_digest),
        ],
        big,
    );
    s.proxy
        .set_rules(vec![Rule::new("GET", "/manifests/v1", oversized)]);
    assert_error(&s.pull("/v2/app/manifests/v1").await, 502, "UNKNOWN");
    assert_eq!(s.upstream_errors("too_large").await, 1.0);
    s.assert_not_stored(&big_digest).await;

    for path in ["/v2/app/manifests/v1", by_digest.as_str()] {
        let rule = Rule::new("GET", "/manifests/", Fault::Corrupt { drop_length: false });
        s.proxy.set_rules(vec![rule]);
        assert_error(&s.pull(path).await, 502, "UNKNOWN");
    }
    assert_eq!(s.metric("regcache_digest_mismatch_total", "").await, 2.0);
    s.assert_not_stored(&manifest).await;

    let cut = Fault::Truncate { after: 100 };
    s.proxy.set_rules(vec![Rule::new("GET", "/manifests/", cut)]);
    assert_error(&s.pull(&by_digest).await, 503, "UNAVAILABLE");
    assert_eq!(s.upstream_errors("transport").await, 1.0);
    s.assert_not_stored(&manifest).await;

    s.proxy.clear();
    match s.pull("/v2/app/manifests/v1").await {
        Pull::Complete(bytes) => assert_eq!(bytes, s.image.manifest_bytes),
        other => panic!("{other:?}"),
    }
    assert!(s.stored_path(&manifest).exists());

    s.assert_credentials_hidden().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_only_to_the_upstream_and_token_failures_are_clean() {
    let mut s = Stack::start(&[2_000, 2_000]);
    let (first, second) = (s.layer(0).to_owned(), s.layer(1).to_owned());

    // Basic auth on request, and blobs redirected to another host: the
    // credentials reach the upstream but never the redirect target.
    s.proxy.set_rules(vec![
        Rule::new("GET", "/v2/", Fault::BasicChallenge),
        Rule::new("HEAD", "/v2/", Fault::BasicChallenge),
        Rule::new("GET", "/blobs/", Fault::Redirect),
    ]);
    s.pull_verified(&first).await;
    let seen: Vec<_> = s
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.path.contains(&first))
        .collect();
    let faults: Vec<_> = seen
        .iter()
        .map(|r| (r.fault, r.authorization, r.redirected))
        .collect();
    assert_eq!(
        faults,
        [
            (Some("basic_challenge"), false, false),
            (Some("redirect"), true, false),
            (None, false, true),
        ],
        "{seen:?}"
    );

    // The token endpoint fails (500): the upstream is unavailable.
    s.proxy.set_rules(vec![
        Rule::new("GET", "/v2/", Fault::BearerChallenge),
        Rule::new("GET", "/token", Fault::respond(500, &[], "token service down")),
    ]);
    assert_error(&s.pull_blob(&second).await, 503, "UNAVAILABLE");
    assert_eq!(s.upstream_errors("status").await, 1.0);
    assert!(
        s.proxy
            .seen()
            .iter()
            .any(|r| r.path.starts_with("/token?") && r.authorization),
        "the token endpoint is asked with the credentials"
    );

    // It answers garbage: the token flow fails as an auth error.
    s.proxy.set_rules(vec![
        Rule::new("GET", "/v2/", Fault::BearerChallenge),
        Rule::new("GET", "/token", Fault::respond(200, &[], "<html>login</html>")),
    ]);
    assert_error(&s.pull_blob(&second).await, 401, "UNAUTHORIZED");
    assert_eq!(s.upstream_errors("auth").await, 1.0);
    s.assert_not_stored(&second).await;

    s.proxy.clear();
    s.pull_verified(&second).await;

    s.assert_credentials_hidden().await;
}
