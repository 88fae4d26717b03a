//! A synchronous client of an [`S3Server`]'s bucket, to look at what the
//! replicas stored.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;

use crate::S3Server;

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
            .block_on(crate::sha256_object(&self.store, key, None))
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

    /// Reads the object at `key` to nowhere, as fast as the client can;
    /// returns its length (a baseline for what serving it costs).
    pub fn download(&self, key: &str) -> u64 {
        self.runtime.block_on(async {
            let mut body = self
                .store
                .get(key, None)
                .await
                .unwrap_or_else(|e| panic!("GET {key}: {e}"))
                .unwrap_or_else(|| panic!("no object {key}"));
            let mut bytes = 0u64;
            while let Some(chunk) = body
                .try_next()
                .await
                .unwrap_or_else(|e| panic!("reading {key}: {e}"))
            {
                bytes += chunk.len() as u64;
            }
            bytes
        })
    }
}
