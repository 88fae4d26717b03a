//! What the cache's tests share: a scripted upstream, a cache over real
//! tiers on a temp dir, and reading a body to its end.

#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cache::{Body, Cache, CacheSettings, ObjectTier, Remote};
use futures_util::StreamExt;
use meta::{GroupSettings, Meta};
use store::{DiskStore, MemoryStore};
use upstream::{Upstream, UpstreamConfig};

/// A scripted upstream (a test server, not a registry): serves `body`
/// for every GET under /v2/, counting requests.
pub async fn scripted_upstream(body: Vec<u8>, hits: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/v2/{*rest}",
        get(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A cache over its own disk tier under `dir`, a group of one and the
/// upstream at `url`, without an object tier.
pub async fn cache_over(dir: &Path, url: &str) -> (Cache, Remote, DiskStore) {
    let meta = Meta::start(&dir.join("meta"), &GroupSettings::single())
        .await
        .expect("starting meta");
    replica(dir, url, None, Arc::new(meta))
}

/// A replica's cache over its own disk tier under `dir` and the shared
/// `meta` and `objects`, as the members of one group share them.
pub fn replica(
    dir: &Path,
    url: &str,
    objects: Option<Arc<ObjectTier>>,
    meta: Arc<Meta>,
) -> (Cache, Remote, DiskStore) {
    let disk = DiskStore::open(dir, 1 << 30).expect("opening disk tier");
    (cache_with(disk.clone(), objects, meta), remote(url), disk)
}

/// A cache over `disk`, with no memory tier to speak of.
pub fn cache_with(disk: DiskStore, objects: Option<Arc<ObjectTier>>, meta: Arc<Meta>) -> Cache {
    let settings = CacheSettings {
        max_stale: Duration::from_secs(60),
        max_manifest_bytes: 1 << 20,
    };
    Cache::new(MemoryStore::new(1 << 20, 0), disk, objects, meta, None, settings)
}

/// The upstream at `url` as docker.io.
pub fn remote(url: &str) -> Remote {
    let upstream = Upstream::new(UpstreamConfig {
        name: "docker.io".into(),
        remote_url: url.parse().expect("url"),
        username: None,
        password: None,
        http_proxy: None,
        https_proxy: None,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
    })
    .expect("upstream");
    Remote {
        upstream,
        tag_ttl: Duration::from_secs(60),
    }
}

/// Reads a whole body; an error ends it early.
pub async fn drain(body: Body) -> Result<Vec<u8>, std::io::Error> {
    match body {
        Body::Full(bytes) => Ok(bytes.to_vec()),
        Body::Stream(mut s) => {
            let mut out = Vec::new();
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk?);
            }
            Ok(out)
        }
    }
}
