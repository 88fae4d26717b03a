//! The object tier under faults, with the real binary, a real upstream
//! registry and a real S3 server (SeaweedFS): a corrupt upstream body leaves
//! neither an object nor an open multipart upload behind; S3 killed mid-pull
//! or down from the start costs clients nothing and stores nothing partial;
//! a range far into a blob another replica stored is read from S3 directly;
//! a request arriving while a response streams a blob from S3 follows one
//! copy to disk instead of reading S3 again.

mod common;

use std::time::{Duration, Instant};

use common::rollout::{MIB, Upstream};
use common::{
    Bucket, RawResponse, Regcache, assert_dir_blobs_verified, metric, metrics, raw_request_with, skopeo_pull,
    start_s3_replica,
};
use testkit::{BuiltImage, Fault, Rule, S3Server};
/// How long regcache steps around an unreachable store after a failure
/// (`BYPASS_AFTER_FAILURE`), plus a margin.
const BYPASS: Duration = Duration::from_millis(5_500);

fn blob_path(digest: &str) -> String {
    format!("/v2/app/blobs/{digest}")
}

/// One blob GET, with extra headers (e.g. a Range).
fn get_blob(cache: &Regcache, digest: &str, headers: &[(&str, &[u8])]) -> RawResponse {
    raw_request_with(&cache.host(), "GET", &blob_path(digest), headers)
}

/// A 200 whose body is exactly the blob `digest`.
fn assert_verified(cache: &Regcache, response: &RawResponse, digest: &str) {
    assert_eq!(
        response.status,
        200,
        "GET {digest}: {}\n{}",
        response.head,
        cache.process.logs()
    );
    assert_eq!(
        testkit::sha256_bytes(&response.body),
        digest,
        "body of {digest} ({} bytes)\n{}",
        response.body.len(),
        cache.process.logs()
    );
}

/// Pulls `tag` with skopeo and checks every blob of `image` arrived intact.
fn pull_image(cache: &Regcache, tag: &str, image: &BuiltImage) {
    let dest = tempfile::tempdir().expect("tempdir");
    skopeo_pull(cache, &format!("app:{tag}"), dest.path());
    assert_dir_blobs_verified(dest.path(), &image.blob_digests());
}

/// Waits until `cache` stored blob `digest` in the bucket; returns its keys.
fn wait_for_blob(bucket: &Bucket, cache: &Regcache, digest: &str) -> Vec<String> {
    let keys = bucket.wait_for_blob(digest, Duration::from_secs(15));
    assert!(
        !keys.is_empty(),
        "{digest} never reached the bucket\n{}",
        cache.process.logs()
    );
    keys
}

/// A blob of about `size` bytes that the first of `N` replicas sharing one
/// bucket fetched and stored: the others find it only in S3.
struct StoredBlob<const N: usize> {
    upstream: Upstream,
    bucket: Bucket,
    replicas: [Regcache; N],
    digest: String,
    size: u64,
    /// Its keys in the bucket.
    keys: Vec<String>,
    _s3: S3Server,
    _dirs: Vec<tempfile::TempDir>,
}

fn stored_by_first<const N: usize>(size: u64) -> StoredBlob<N> {
    let mut upstream = Upstream::start();
    let image = upstream.push("v1", &[size]);
    let (digest, size) = image.layer_digests[0].clone();
    let s3 = S3Server::start().expect("starting the s3 server");
    let bucket = Bucket::connect(&s3);
    let dirs: Vec<_> = (0..N).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let url = upstream.registry.url();
    let replicas: [Regcache; N] = std::array::from_fn(|i| start_s3_replica(&url, &s3, dirs[i].path()));
    assert_verified(&replicas[0], &get_blob(&replicas[0], &digest, &[]), &digest);
    let keys = wait_for_blob(&bucket, &replicas[0], &digest);
    upstream.registry.clear_log();
    StoredBlob {
        upstream,
        bucket,
        replicas,
        digest,
        size,
        keys,
        _s3: s3,
        _dirs: dirs,
    }
}

/// Every blob of `image` and its manifest made it into the bucket (blob
/// uploads complete after the client got the bytes: waits for them).
fn assert_image_stored(bucket: &Bucket, cache: &Regcache, image: &BuiltImage) {
    for digest in image.blob_digests() {
        wait_for_blob(bucket, cache, &digest);
    }
    let hex = image
        .manifest_digest
        .strip_prefix("sha256:")
        .expect("a sha256 digest");
    let manifests = bucket.keys(&format!("manifests/sha256/{hex}/"));
    assert_eq!(manifests.len(), 1, "{manifests:?}");
}

fn unstored(cache: &Regcache, kind: &str) -> f64 {
    metric(
        &metrics(cache),
        "regcache_objstore_unstored_total",
        &format!("kind=\"{kind}\""),
    )
}

/// Exactly one log line contains `text`: one per outage and per recovery.
fn assert_logged_once(cache: &Regcache, text: &str) {
    let logs = cache.process.logs();
    let lines = logs.lines().filter(|l| l.contains(text)).count();
    assert_eq!(lines, 1, "{text:?} logged {lines} times:\n{logs}");
}

/// Waits until the samples of `name` with `label` add up to at least 1.
fn wait_for_metric(cache: &Regcache, name: &str, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&metrics(cache), name, label) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no {name}{{{label}}}\n{}",
            cache.process.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sleeps until `since + BYPASS`: the cache tries the store again after that.
fn wait_out_bypass(since: Instant) {
    std::thread::sleep((since + BYPASS).saturating_duration_since(Instant::now()));
}

#[test]
fn wrong_digest_leaves_no_object_and_no_upload() {
    let mut upstream = Upstream::start();
    // Two full 8 MiB parts are uploading before the mismatch shows.
    let image = upstream.push("v1", &[20 * MIB]);
    let (digest, size) = image.layer_digests[0].clone();
    let proxy = &upstream.proxy;
    let s3 = S3Server::start().expect("starting the s3 server");
    let bucket = Bucket::connect(&s3);
    let data = tempfile::tempdir().expect("tempdir");
    let cache = start_s3_replica(&proxy.url(), &s3, data.path());

    proxy.set_rules(vec![Rule::new(
        "GET",
        &digest,
        Fault::Corrupt { drop_length: false },
    )]);
    let corrupt = get_blob(&cache, &digest, &[]);
    assert_eq!(proxy.count("GET", &digest), 1);
    // The last byte waits for verification: the body ends short (or, had
    // the download failed before the head went out, a 502).
    assert!(
        (corrupt.status == 200 && (corrupt.body.len() as u64) < size) || corrupt.status == 502,
        "status {} with {} of {size} bytes",
        corrupt.status,
        corrupt.body.len()
    );
    // The upload was aborted before the failure reached the client.
    let keys = bucket.blob_keys(&digest);
    assert!(keys.is_empty(), "a corrupt blob was stored: {keys:?}");
    assert_eq!(bucket.abort_open_uploads(), 0, "a multipart upload was left open");
    let logs = cache.process.logs();
    assert!(logs.contains("blob download failed"), "{logs}");
    assert!(!logs.contains("aborting the object upload failed"), "{logs}");
    let m = metrics(&cache);
    assert_eq!(metric(&m, "regcache_digest_mismatch_total", ""), 1.0, "{m}");
    assert_eq!(metric(&m, "regcache_objstore_errors_total", ""), 0.0, "{m}");

    proxy.clear();
    let good = get_blob(&cache, &digest, &[]);
    assert_verified(&cache, &good, &digest);
    let keys = wait_for_blob(&bucket, &cache, &digest);
    // Give a second (wrong) completion the time to show, were there one.
    std::thread::sleep(Duration::from_millis(300));
    let keys_now = bucket.blob_keys(&digest);
    assert_eq!(keys_now, keys);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(bucket.sha256(&keys[0]), digest);
    assert_eq!(bucket.abort_open_uploads(), 0);
}

#[test]
fn s3_killed_mid_pull_corrupts_nothing() {
    let mut upstream = Upstream::start();
    let big_image = upstream.push("v1", &[40 * MIB]);
    let while_down = upstream.push("v2", &[3 * MIB, 20_000]);
    let after_recovery = upstream.push("v3", &[9 * MIB, 20_000]);
    let big = big_image.layer_digests[0].0.clone();
    let proxy = &upstream.proxy;
    let mut s3 = S3Server::start().expect("starting the s3 server");
    let bucket = Bucket::connect(&s3);
    let data = tempfile::tempdir().expect("tempdir");
    let cache = start_s3_replica(&proxy.url(), &s3, data.path());

    // 12 MiB arrive (the first part goes up), then the upstream pauses and
    // S3 dies; the rest arrives with nowhere to tee it.
    let pause = Fault::Pause {
        after: 12 << 20,
        pause: Duration::from_secs(3),
    };
    proxy.set_rules(vec![Rule::new("GET", &big, pause).times(1)]);
    let pull = {
        let (host, path) = (cache.host(), blob_path(&big));
        std::thread::spawn(move || raw_request_with(&host, "GET", &path, &[]))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.count("GET", &big) == 0 {
        assert!(
            Instant::now() < deadline,
            "the blob GET never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    // Paused at 12 MiB: /status.json shows the download under way.
    let status = raw_request_with(&cache.host(), "GET", "/status.json", &[]);
    let status: serde_json::Value = serde_json::from_slice(&status.body).expect("status json");
    let download = &status["downloads"][0];
    assert_eq!(download["digest"], big.as_str(), "{status:#}");
    assert_eq!(
        (&download["state"], &download["source"], &download["repo"]),
        (&"running".into(), &"upstream".into(), &"library/app".into()),
        "{status:#}"
    );
    assert!(download["written"].as_u64() >= Some(1 << 20), "{status:#}");
    assert_eq!(
        download["size"].as_u64(),
        Some(big_image.layer_digests[0].1),
        "{status:#}"
    );
    s3.stop();
    let response = pull.join().expect("the pulling thread");
    assert_verified(&cache, &response, &big);
    // Its upload failed (and the bypass window began) before the download
    // was recorded: once it is, no late failure restarts the window.
    wait_for_metric(&cache, "regcache_objstore_unstored_total", "kind=\"blob\"");

    // S3 still down: the warm blob comes from disk, a cold image from the
    // upstream, kept locally only.
    assert_verified(&cache, &get_blob(&cache, &big, &[]), &big);
    let m = metrics(&cache);
    assert!(
        m.contains(r#"regcache_cache_requests_total{kind="blob",tier="disk"} 1"#),
        "{m}"
    );
    pull_image(&cache, "v2", &while_down);
    let down_until = Instant::now();
    assert!(unstored(&cache, "blob") >= 4.0, "{}", metrics(&cache));
    assert!(unstored(&cache, "manifest") >= 1.0, "{}", metrics(&cache));
    assert!(metric(&metrics(&cache), "regcache_objstore_errors_total", "") > 0.0);
    assert_logged_once(&cache, "object store unavailable: ");

    s3.restart().expect("restarting the s3 server");
    wait_out_bypass(down_until);
    pull_image(&cache, "v3", &after_recovery);
    assert_image_stored(&bucket, &cache, &after_recovery);
    assert_logged_once(&cache, "object store available again");

    // Nothing of what was pulled while S3 was down made it there, not even
    // the parts of the big blob uploaded before the crash.
    for digest in std::iter::once(&big).chain(&while_down.blob_digests()) {
        assert!(bucket.blob_keys(digest).is_empty(), "{digest} stored");
    }
    let checked = bucket.assert_all_objects_verified();
    assert_eq!(checked, after_recovery.blob_digests().len() + 1);
}

#[test]
fn range_from_the_object_tier() {
    let stored = stored_by_first::<3>(30 * MIB);
    let StoredBlob {
        upstream,
        replicas: [_, b, c],
        digest,
        size,
        ..
    } = &stored;
    let size = *size;
    let bytes = upstream.blob(digest);
    assert_eq!(bytes.len() as u64, size);

    let check_range = |cache: &Regcache, range: &str, start: u64, end: u64| {
        let response = get_blob(cache, digest, &[("Range", range.as_bytes())]);
        assert_eq!(response.status, 206, "{range}: {}", response.head);
        let content_range = format!("bytes {start}-{}/{size}", end - 1);
        assert_eq!(response.header("content-range"), Some(content_range.as_str()));
        assert!(
            response.body == bytes[start as usize..end as usize],
            "{range}: wrong {} bytes",
            response.body.len()
        );
        let gets = upstream.gets();
        assert!(gets.is_empty(), "{range} went upstream: {gets:?}");
        let m = metrics(cache);
        assert!(
            m.contains(r#"regcache_cache_requests_total{kind="blob",tier="object"} 1"#),
            "{m}"
        );
    };
    check_range(b, "bytes=20000000-20000999", 20_000_000, 20_001_000);
    check_range(c, "bytes=-100", size - 100, size);
}

#[test]
fn a_second_request_while_one_streams_from_s3_follows_a_disk_copy() {
    let stored = stored_by_first::<2>(40 * MIB);
    let StoredBlob {
        upstream,
        replicas: [_, b],
        digest,
        ..
    } = &stored;

    // A client that reads the headers and then nothing: b's response to it
    // streams from S3 and stalls, far from its end.
    let mut slow = std::net::TcpStream::connect(b.host()).expect("connecting");
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", blob_path(digest), b.host());
    std::io::Write::write_all(&mut slow, request.as_bytes()).expect("sending");
    let mut head = [0u8; 1024];
    let n = std::io::Read::read(&mut slow, &mut head).expect("reading the response head");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );

    // Meanwhile another client gets the whole blob, from a copy to b's disk
    // started for it, not from a second stream of its own.
    assert_verified(b, &get_blob(b, digest, &[]), digest);
    let m = metrics(b);
    assert_eq!(
        metric(&m, "regcache_objstore_checked_reads_total", ""),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "regcache_cache_requests_total", r#"tier="object""#),
        2.0,
        "{m}"
    );
    assert!(upstream.gets().is_empty(), "{:?}", upstream.gets());
    drop(slow);
}

#[test]
fn a_corrupt_object_is_deleted_and_never_served_whole() {
    let stored = stored_by_first::<2>(3 * MIB);
    let StoredBlob {
        upstream,
        bucket,
        replicas: [_, b],
        digest,
        keys,
        ..
    } = &stored;
    let mut flipped = upstream.blob(digest).to_vec();
    flipped.iter_mut().for_each(|b| *b = !*b);
    bucket.overwrite(&keys[0], &flipped);

    // Same length, wrong content: the final chunk is only sent once the
    // whole object passed its check, so the response can never complete
    // as if it were the blob.
    let corrupt = get_blob(b, digest, &[]);
    assert!(
        corrupt.status != 200 || corrupt.body.len() < flipped.len(),
        "a corrupt object was served whole"
    );
    assert_eq!(metric(&metrics(b), "regcache_objstore_corrupt_total", ""), 1.0);
    assert!(
        bucket.blob_keys(digest).is_empty(),
        "the corrupt object is still there"
    );

    upstream.registry.clear_log();
    assert_verified(b, &get_blob(b, digest, &[]), digest);
    assert_eq!(upstream.registry.count("GET", "/blobs/sha256:"), 1);
    let keys = wait_for_blob(bucket, b, digest);
    assert_eq!(bucket.sha256(&keys[0]), *digest);
}

#[test]
fn s3_down_at_start_serves_and_recovers() {
    let mut upstream = Upstream::start();
    let first = upstream.push("v1", &[3 * MIB, 20_000]);
    let second = upstream.push("v2", &[9 * MIB, 20_000]);
    let mut s3 = S3Server::start().expect("starting the s3 server");
    let bucket = Bucket::connect(&s3);
    s3.stop();
    let data = tempfile::tempdir().expect("tempdir");
    let cache = start_s3_replica(&upstream.registry.url(), &s3, data.path());
    // The stale-upload sweep at start fails too, after the SDK's retries,
    // and restarts the bypass window: wait for it, so that the last failure
    // is known to come before the end of the pull below.
    wait_for_metric(
        &cache,
        "regcache_objstore_errors_total",
        "operation=\"abort_stale_uploads\"",
    );

    pull_image(&cache, "v1", &first);
    let down_until = Instant::now();
    assert!(unstored(&cache, "blob") >= 3.0, "{}", metrics(&cache));
    assert!(unstored(&cache, "manifest") >= 1.0, "{}", metrics(&cache));
    assert_logged_once(&cache, "object store unavailable: ");

    s3.restart().expect("restarting the s3 server");
    wait_out_bypass(down_until);
    pull_image(&cache, "v2", &second);
    assert_image_stored(&bucket, &cache, &second);
    assert_logged_once(&cache, "object store available again");
    for digest in first.blob_digests() {
        assert!(bucket.blob_keys(&digest).is_empty(), "{digest} stored");
    }
    assert_eq!(
        bucket.assert_all_objects_verified(),
        second.blob_digests().len() + 1
    );
}

/// Reads a response slowly: its head and the first `first` body bytes,
/// then `pause()`, then the rest. Returns head and body.
fn read_with_pause(cache: &Regcache, path: &str, first: usize, pause: impl FnOnce()) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(cache.host()).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        cache.host()
    );
    stream.write_all(request.as_bytes()).expect("sending");
    let mut response = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let mut pause = Some(pause);
    loop {
        let n = stream.read(&mut buf).expect("reading");
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.len() >= first
            && let Some(pause) = pause.take()
        {
            pause();
        }
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    (head, response[split + 4..].to_vec())
}

/// The safety net under garbage collection and S3 outages: an object that
/// fails while a response streams it (here S3 dies) is finished from the
/// upstream, from the offset reached, and the client gets every byte.
#[test]
fn an_object_failing_mid_stream_is_finished_from_the_upstream() {
    let mut stored = stored_by_first::<2>(24 * MIB);
    let b = &stored.replicas[1];
    let s3 = &mut stored._s3;
    let (head, body) = read_with_pause(b, &blob_path(&stored.digest), MIB as usize, || s3.stop());
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        testkit::sha256_bytes(&body),
        stored.digest,
        "{} of {} bytes\n{}",
        body.len(),
        stored.size,
        b.process.logs()
    );
    let m = metrics(b);
    assert_eq!(
        metric(&m, "regcache_objstore_reads_resumed_total", ""),
        1.0,
        "{m}"
    );
    let gets: Vec<_> = stored
        .upstream
        .gets()
        .into_iter()
        .filter(|g| g.path.contains(&stored.digest))
        .collect();
    assert_eq!(gets.len(), 1, "one upstream GET finished the response: {gets:?}");
    assert!(
        b.process
            .logs()
            .contains("object failed mid-stream; going on from the upstream")
    );
}
