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
    ACCEPT_ALL, Bucket, RawResponse, Regcache, metric, metrics, raw_request, raw_request_with, s3_args,
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
