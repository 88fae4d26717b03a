//! Harness for tests that run the real `regcache` binary against a real
//! upstream registry (Debian's docker-registry) on loopback.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::{Process, Registry};

/// A running `regcache serve` with its own data dir.
pub struct Regcache {
    pub process: Process,
    pub port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
}

impl Regcache {
    /// Starts regcache with `docker.io` (the default upstream) pointing at
    /// `upstream`, plus `extra` arguments.
    pub fn start(upstream: &Registry, data_dir: &Path, extra: &[&str]) -> Regcache {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--upstream".into(),
            format!("docker.io={}", upstream.url()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with_args(data_dir, args)
    }

    fn start_with_args(data_dir: &Path, args: Vec<String>) -> Regcache {
        let port = testkit::free_port();
        let mut full = args.clone();
        full.extend(["--listen".to_string(), format!("127.0.0.1:{port}")]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let process = Process::spawn(
            Path::new(env!("CARGO_BIN_EXE_regcache")),
            &refs,
            &[("RUST_LOG", "info")],
        )
        .expect("spawning regcache");
        let url = format!("http://127.0.0.1:{port}/readyz");
        if let Err(e) = testkit::wait_for_http(&url, Duration::from_secs(20)) {
            panic!("regcache did not become ready: {e}\n{}", process.logs());
        }
        Regcache {
            process,
            port,
            data_dir: data_dir.to_owned(),
            args,
        }
    }

    /// Stops the process (SIGTERM) and starts it again on the same data dir.
    pub fn restart(mut self) -> Regcache {
        self.process.stop();
        Self::start_with_args(&self.data_dir, self.args.clone())
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
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
