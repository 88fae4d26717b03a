//! Harness for tests that run the real `regcache` binary against a real
//! upstream registry (Debian's docker-registry) on loopback.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod rollout;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::{Process, Registry, S3Server};

/// A running `regcache serve` with its own data dir.
pub struct Regcache {
    pub process: Process,
    pub port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Regcache {
    /// Starts regcache with `docker.io` (the default upstream) pointing at
    /// `upstream`, plus `extra` arguments.
    pub fn start(upstream: &Registry, data_dir: &Path, extra: &[&str]) -> Regcache {
        Self::start_url_env(&upstream.url(), data_dir, extra, &[])
    }

    /// Like [`Regcache::start`], with `docker.io` pointing at `upstream_url`
    /// (e.g. a `testkit::FaultProxy` in front of the registry).
    pub fn start_url(upstream_url: &str, data_dir: &Path, extra: &[&str]) -> Regcache {
        Self::start_url_env(upstream_url, data_dir, extra, &[])
    }

    /// [`Regcache::start_url`] with environment variables (e.g. the AWS
    /// credentials of a `testkit::S3Server`).
    pub fn start_url_env(
        upstream_url: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Regcache {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Self::start_with_args(data_dir, args(upstream_url, data_dir, extra), env)
    }

    /// Binds port 0 and reads the bound address from the startup log line,
    /// so parallel tests never race for a port. The log filter is the
    /// default a user gets (no `RUST_LOG`).
    fn start_with_args(data_dir: &Path, args: Vec<String>, env: Vec<(String, String)>) -> Regcache {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"));
        cmd.args(&args)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (k, v)));
        let process = Process::start(cmd).expect("spawning regcache");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = bound_port(&process.logs()) {
                break port;
            }
            if Instant::now() > deadline {
                panic!("regcache did not report its address:\n{}", process.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let url = format!("http://127.0.0.1:{port}/readyz");
        if let Err(e) = testkit::wait_for_http(&url, Duration::from_secs(20)) {
            panic!("regcache did not become ready: {e}\n{}", process.logs());
        }
        Regcache {
            process,
            port,
            data_dir: data_dir.to_owned(),
            args,
            env,
        }
    }

    /// Stops the process (SIGTERM) and starts it again on the same data dir.
    pub fn restart(mut self) -> Regcache {
        self.process.stop();
        Self::start_with_args(&self.data_dir, self.args.clone(), std::mem::take(&mut self.env))
    }

    /// Waits until no download is left in `tmp/`: a verified blob reaches
    /// its clients before it is made durable and put in place.
    pub fn wait_for_downloads(&self) {
        let tmp = self.data_dir.join("tmp");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&tmp).expect("reading tmp/").count() > 0 {
            assert!(
                Instant::now() < deadline,
                "a temp file stays in {}",
                tmp.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn args(upstream_url: &str, data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--upstream".into(),
        format!("docker.io={upstream_url}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn bound_port(logs: &str) -> Option<u16> {
    let line = logs.lines().find(|l| l.contains("regcache serving"))?;
    let addr = line.split_whitespace().find_map(|w| w.strip_prefix("listen="))?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Copies an image (all platforms) through the cache into a `dir:` layout
/// with the real skopeo, and returns the directory.
pub fn skopeo_pull(cache: &Regcache, image: &str, dest: &Path) -> PathBuf {
    let src = format!("docker://{}/{image}", cache.host());
    let dst = format!("dir:{}", dest.display());
    let out = testkit::skopeo(&["copy", "--all", "--src-tls-verify=false", &src, &dst]);
    if let Err(e) = out {
        panic!(
            "skopeo copy {image} failed: {e}\nregcache logs:\n{}",
            cache.process.logs()
        );
    }
    dest.to_owned()
}

/// `regcache COMMAND ARGS…`'s output (stdout, then stderr); fails the test
/// if it failed.
pub fn regcache_cli(command: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .arg(command)
        .args(args)
        .output()
        .expect("running regcache");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "regcache {command} {args:?}: {text}");
    text
}

/// Every blob file skopeo wrote into a `dir:` layout must hash to its name.
pub fn assert_dir_blobs_verified(dir: &Path, expected_digests: &[String]) {
    for digest in expected_digests {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let path = dir.join(hex);
        assert!(path.exists(), "{digest} missing in {}", dir.display());
        assert_eq!(
            &testkit::sha256_file(&path).expect("hashing"),
            digest,
            "content of {}",
            path.display()
        );
    }
}

pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("http client")
}

/// Sends one request with the path exactly as given (HTTP clients normalize
/// `..` and friends away, which would hide what the server does with them)
/// and returns the status and body.
pub fn raw_request(host: &str, method: &str, path: &str) -> (u16, Vec<u8>) {
    let response = raw_request_with(host, method, path, &[]);
    (response.status, response.body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
    out
}

/// A response read off a raw socket.
pub struct RawResponse {
    pub status: u16,
    /// Status line and header lines, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The value of header `name`, if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The spec error code of a `{"errors":[{"code":…}]}` body.
    pub fn error_code(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some(body["errors"][0]["code"].as_str()?.to_owned())
    }
}

/// Like [`raw_request`], with extra header lines given as bytes (so they can
/// be huge or not ASCII). A server may answer and close before it has read
/// the whole request, as hyper does for oversized headers: a failed write
/// is ignored and whatever answer arrived is read.
pub fn raw_request_with(host: &str, method: &str, path: &str, headers: &[(&str, &[u8])]) -> RawResponse {
    use std::io::{Read, Write};
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: ").as_bytes());
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
    let mut stream = std::net::TcpStream::connect(host).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = stream.write_all(&request);
    let mut response = Vec::new();
    let mut buf = [0u8; 64 << 10];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head to {method} {path}: {response:?}"));
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = response[split + 4..].to_vec();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(&body) } else { body };
    RawResponse { status, head, body }
}

/// `--s3-*` flags for `s3`; its credentials go in the environment
/// ([`S3Server::env`]).
pub fn s3_args(s3: &S3Server) -> Vec<String> {
    vec![
        "--s3-bucket".into(),
        s3.bucket().into(),
        "--s3-endpoint".into(),
        s3.endpoint(),
        "--s3-force-path-style".into(),
    ]
}

/// A replica storing content in `s3`, with `docker.io` pointing at
/// `upstream_url` (a registry's or a fault proxy's).
pub fn start_s3_replica(upstream_url: &str, s3: &S3Server, data_dir: &Path) -> Regcache {
    let args = s3_args(s3);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Regcache::start_url_env(upstream_url, data_dir, &args, &s3.env())
}

/// The replica's `/metrics` text.
pub fn metrics(cache: &Regcache) -> String {
    let (status, body) = raw_request(&cache.host(), "GET", "/metrics");
    assert_eq!(status, 200, "GET /metrics");
    String::from_utf8(body).expect("metrics are text")
}

/// Sum of the samples of `name` whose labels contain `label` (`""`: all).
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client of an `S3Server`'s bucket, to look at what the replicas stored.
/// Synchronous, like the rest of the harness: it brings its own runtime.
pub struct Bucket {
    // Declared before the runtime: the client goes first.
    store: objstore::ObjectStore,
    runtime: tokio::runtime::Runtime,
}

impl Bucket {
    pub fn connect(s3: &S3Server) -> Bucket {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the bucket client");
        let (store, _) = runtime
            .block_on(s3.store("", objstore::S3Timeouts::default()))
            .expect("an s3 client");
        Bucket { store, runtime }
    }

    /// Every key under `prefix`, in key order.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let objects = self
            .runtime
            .block_on(self.store.list(prefix))
            .expect("listing the bucket");
        objects.into_iter().map(|o| o.key).collect()
    }

    /// The keys holding blob `digest` (`sha256:…`).
    pub fn blob_keys(&self, digest: &str) -> Vec<String> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.keys(&format!("blobs/sha256/{hex}/"))
    }

    /// Waits until blob `digest` is stored (uploads complete after the
    /// client got its bytes) and returns its keys; none if it never was
    /// within `timeout`.
    pub fn wait_for_blob(&self, digest: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let keys = self.blob_keys(digest);
            if !keys.is_empty() || Instant::now() >= deadline {
                return keys;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Replaces the object at `key` with `bytes` (to corrupt it).
    pub fn overwrite(&self, key: &str, bytes: &[u8]) {
        let file = tempfile::NamedTempFile::new().expect("a temp file");
        std::fs::write(file.path(), bytes).expect("writing the temp file");
        self.runtime
            .block_on(self.store.put_file(key, file.path(), bytes.len() as u64))
            .expect("overwriting an object");
    }

    /// Aborts every multipart upload not completed; returns how many there were.
    pub fn abort_open_uploads(&self) -> usize {
        self.runtime
            .block_on(self.store.abort_stale_uploads(Duration::ZERO))
            .expect("aborting uploads")
    }

    /// sha256 (`sha256:…`) of the object at `key`, checked against the
    /// length the store announced.
    pub fn sha256(&self, key: &str) -> String {
        let (digest, _) = self
            .runtime
            .block_on(testkit::sha256_object(&self.store, key, None))
            .unwrap_or_else(|e| panic!("hashing {key}: {e:#}"));
        digest
    }

    /// Every object under `blobs/` and `manifests/` hashes to the digest
    /// its key names; returns how many were checked.
    pub fn assert_all_objects_verified(&self) -> usize {
        let keys: Vec<String> = ["blobs/", "manifests/"]
            .iter()
            .flat_map(|prefix| self.keys(prefix))
            .collect();
        for key in &keys {
            let (_, digest, _) =
                objstore::parse_object_key(key).unwrap_or_else(|| panic!("foreign key {key} in the bucket"));
            assert_eq!(self.sha256(key), digest.to_string(), "content of {key}");
        }
        keys.len()
    }
}
