//! Wires the crates into one running replica.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use cache::{Cache, CacheSettings, Collector, ObjectTier, Remote};
use meta::Meta;
use metrics_exporter_prometheus::PrometheusHandle;
use objstore::{FsStore, ObjectStore, S3Store};
use server::{AppState, PeerContent, Routes};
use store::{DiskStore, MemoryStore};
use tokio::sync::oneshot;
use tracing::info;
use upstream::Upstream;

use crate::config::{Config, StorageConfig, StorageKind};

/// How long shutdown waits for downloads under way to be kept.
const SHUTDOWN_DOWNLOAD_WAIT: Duration = Duration::from_secs(30);

pub async fn run(config: Config, metrics: PrometheusHandle) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let meta = Arc::new(start_meta(&config).await?);
    let disk = DiskStore::open(&config.data_dir, config.cache.disk_bytes).context("opening disk tier")?;
    let memory = MemoryStore::new(config.cache.memory_bytes, config.cache.memory_object_max);
    let settings = CacheSettings {
        max_stale: config.cache.max_stale,
        max_manifest_bytes: config.cache.max_manifest_bytes,
    };
    let objects = object_tier(&config.storage).await?;
    // Members of a cluster fetch each blob once for all of them.
    let peers = config
        .cluster
        .listen
        .map(|_| Arc::new(peer::Peers::new(Arc::clone(&meta))));
    let cache = Arc::new(Cache::new(
        memory,
        disk,
        objects,
        Arc::clone(&meta),
        peers,
        settings,
    ));
    cache.trim_disk().await;
    let (collector, collecting) = Collector::spawn(&cache, config.gc);

    let mut sources = Vec::new();
    for entry in &config.upstreams {
        let upstream =
            Upstream::new(entry.client.clone()).with_context(|| format!("upstream {}", entry.client.name))?;
        let tag_ttl = entry.tag_ttl.unwrap_or(config.cache.tag_ttl);
        sources.push(Remote { upstream, tag_ttl });
    }
    let routes = Arc::new(
        Routes::new(sources, &config.default_upstream)
            .with_context(|| format!("default upstream {} is not configured", config.default_upstream))?,
    );

    let (stop_peers, peers_stopped) = oneshot::channel();
    let peer_server = match config.cluster.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the cluster port {addr}"))?;
            let content = PeerContent {
                cache: Arc::clone(&cache),
                routes: Arc::clone(&routes),
            };
            Some(serve_peers(
                listener,
                &meta,
                Arc::clone(&collector),
                content,
                peers_stopped,
            )?)
        }
        None => None,
    };
    let flusher = meta.spawn_access_flusher(meta::ACCESS_FLUSH_INTERVAL);
    let state = AppState {
        cache: Arc::clone(&cache),
        routes,
        meta: Arc::clone(&meta),
        metrics,
        gc: Arc::clone(&collector) as Arc<dyn meta::GcControl>,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    // Responses are written whole and promptly: don't let Nagle hold back a
    // body's last segment waiting for the client's delayed ACK.
    let local_addr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "setting tcp_nodelay failed");
        }
    });
    let storage = match &config.storage.kind {
        StorageKind::Fs { path: None } => "disk",
        StorageKind::Fs { path: Some(_) } => "fs",
        StorageKind::S3(_) => "s3",
    };
    info!(
        listen = %local_addr,
        data_dir = %config.data_dir.display(),
        storage,
        upstreams = config.upstreams.len(),
        node_id = config.cluster.group.node_id,
        cluster_listen = ?config.cluster.listen,
        "regcache serving"
    );
    axum::serve(listener, server::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving http")?;
    collecting.abort();
    let left = cache.finish_downloads(SHUTDOWN_DOWNLOAD_WAIT).await;
    if left > 0 {
        tracing::warn!(
            downloads = left,
            "stopping with downloads unfinished; they start again on demand"
        );
    }
    if let Err(e) = flusher.shutdown().await {
        tracing::warn!(error = %e, "flushing access times at shutdown failed");
    }
    meta.shutdown().await;
    let _ = stop_peers.send(());
    if let Some(server) = peer_server
        && let Err(e) = server.await
    {
        tracing::warn!(error = %e, "the cluster port did not stop cleanly");
    }
    info!("regcache stopped");
    Ok(())
}

/// The metadata directory under `data_dir`, created if missing.
pub fn meta_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let meta_dir = data_dir.join("meta");
    std::fs::create_dir_all(&meta_dir).with_context(|| format!("creating {}", meta_dir.display()))?;
    Ok(meta_dir)
}

/// This replica's member of the metadata group.
async fn start_meta(config: &Config) -> anyhow::Result<Meta> {
    Meta::start(&meta_dir(&config.data_dir)?, &config.cluster.group)
        .await
        .context("starting the metadata group")
}

/// Serves the cluster port until `stop`: Raft and forwarded proposals for
/// the other members, membership and status for `regcache cluster`, and
/// blobs and manifests for the members that miss what this one owns.
fn serve_peers(
    listener: tokio::net::TcpListener,
    meta: &Meta,
    collector: Arc<Collector>,
    content: PeerContent,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let services = tonic::service::Routes::new(peer::service(Arc::new(content)));
    let serving = meta.serve_cluster(listener, Some(collector), services, async {
        let _ = stop.await;
    })?;
    Ok(tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "serving the cluster port failed");
        }
    }))
}

/// The shared object tier, or `None` when the disk tier is the only copy.
/// Building it does not contact the store: a replica starts and serves its
/// disk while S3 is down.
pub async fn object_store(storage: &StorageConfig) -> anyhow::Result<Option<ObjectStore>> {
    let store = match &storage.kind {
        StorageKind::Fs { path: None } => return Ok(None),
        StorageKind::Fs { path: Some(path) } => ObjectStore::Fs(
            FsStore::new(path).with_context(|| format!("opening object directory {}", path.display()))?,
        ),
        StorageKind::S3(s3) => ObjectStore::S3(
            S3Store::new(s3.clone())
                .await
                .context("configuring the s3 client")?,
        ),
    };
    Ok(Some(store))
}

async fn object_tier(storage: &StorageConfig) -> anyhow::Result<Option<Arc<ObjectTier>>> {
    let Some(store) = object_store(storage).await? else {
        return Ok(None);
    };
    let objects = Arc::new(ObjectTier::new(store));
    objects.spawn_stale_upload_sweeper(storage.abort_uploads_after);
    Ok(Some(objects))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutdown requested");
}
