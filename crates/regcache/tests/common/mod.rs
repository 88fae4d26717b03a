//! Harness for tests that run the real `regcache` binary against a real
//! upstream registry (Debian's docker-registry) on loopback.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub mod rollout;

/// The cluster harness lives in testkit, shared with the load tool.
pub mod cluster {
    pub use testkit::{Cluster, manifest_digest};
}

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::S3Server;
pub use testkit::{
    ACCEPT_ALL, RawResponse, Regcache, metric, metrics, raw_request, raw_request_with, s3_args,
    start_s3_replica,
};

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
    let out = std::process::Command::new(testkit::regcache_bin())
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

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("http client")
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
