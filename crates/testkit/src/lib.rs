//! Test-only helpers that start REAL parts on loopback: Debian's
//! `docker-registry` as an upstream, OCI image layouts with random content
//! pushed by the real `skopeo`, and our own binaries with captured logs.
//!
//! Everything here is synchronous (threads, no async runtime) so that it can
//! be called from plain `#[test]`s and from inside `#[tokio::test]`s alike.
//! Needs the packages installed by `scripts/install-test-deps.sh`.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use testkit::{ImageSpec, OciLayout, Registry};
//!
//! let upstream = Registry::start()?;
//! let mut layout = OciLayout::new()?;
//! let image = layout.add_image("v1", &ImageSpec::new(&[300_000, 10_000]))?;
//! layout.push("v1", &upstream, "library/app:v1")?;
//! upstream.clear_log();
//! // … pull `app:v1` through the cache under test, then:
//! assert_eq!(upstream.count("GET", "/blobs/sha256:"), image.blob_digests().len());
//! # Ok(()) }
//! ```

mod bucket;
mod cluster;
mod digest;
mod fault;
mod http;
mod layer;
mod layout;
mod process;
mod raw;
mod regcache;
mod registry;
mod relay;
mod s3;
mod seeded;
mod skopeo;
mod tmpfs;

pub use bucket::Bucket;
pub use cluster::{Cluster, S3Options, manifest_digest};
pub use digest::{sha256_bytes, sha256_file, sha256_object};
pub use fault::{Fault, FaultProxy, Rule, Seen};
pub use http::{free_port, stable_port, wait_for_http};
pub use layer::LayerCompression;
pub use layout::{BuiltImage, BuiltIndex, ImageSpec, OciLayout};
pub use process::Process;
pub use raw::{RawResponse, raw_request, raw_request_with};
pub use regcache::{ACCEPT_ALL, Regcache, metric, metrics, regcache_bin, s3_args, start_s3_replica};
pub use registry::{AccessLine, Registry};
pub use relay::{Gate, TcpRelay};
pub use s3::S3Server;
pub use seeded::SeededRegistry;
pub use skopeo::skopeo;
pub use tmpfs::{Tmpfs, verify_disk_tier};

/// Every file below `dir`, however deep (none when it does not exist): what
/// a store or tier holds, seen from outside.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Polls `done` every 50 ms until it holds; panics naming `what` after
/// `timeout`.
pub fn wait_until(timeout: std::time::Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
