//! Wires the crates into one running replica.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use cache::{Cache, CacheSettings, Source};
use meta::Meta;
use metrics_exporter_prometheus::PrometheusHandle;
use server::{AppState, Routes};
use store::{DiskStore, MemoryStore};
use tracing::info;
use upstream::{Upstream, UpstreamConfig};

use crate::config::Config;

/// How often batched last-access times are written.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(config: Config, metrics: PrometheusHandle) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let meta_dir = config.data_dir.join("meta");
    std::fs::create_dir_all(&meta_dir).with_context(|| format!("creating {}", meta_dir.display()))?;
    let meta = Arc::new(Meta::open(&meta_dir.join("state.redb")).context("opening metadata store")?);
    let disk = DiskStore::open(&config.data_dir, config.cache.disk_bytes).context("opening disk tier")?;
    let memory = MemoryStore::new(config.cache.memory_bytes, config.cache.memory_object_max);
    let settings = CacheSettings {
        max_stale: config.cache.max_stale,
        max_manifest_bytes: config.cache.max_manifest_bytes,
    };
    let cache = Arc::new(Cache::new(memory, disk, Arc::clone(&meta), settings));

    let mut sources = Vec::new();
    for entry in &config.upstreams {
        let upstream = Upstream::new(UpstreamConfig {
            name: entry.name.clone(),
            remote_url: entry.remote_url.clone(),
            username: entry.username.clone(),
            password: entry.password.clone(),
            http_proxy: entry.http_proxy.clone(),
            https_proxy: entry.https_proxy.clone(),
            connect_timeout: entry.connect_timeout,
            read_timeout: entry.read_timeout,
        })
        .with_context(|| format!("upstream {}", entry.name))?;
        let tag_ttl = entry.tag_ttl.unwrap_or(config.cache.tag_ttl);
        sources.push(Source { upstream, tag_ttl });
    }
    let routes = Routes::new(sources, &config.default_upstream)
        .with_context(|| format!("default upstream {} is not configured", config.default_upstream))?;

    let flusher = meta.spawn_access_flusher(ACCESS_FLUSH_INTERVAL);
    let state = AppState {
        cache,
        routes: Arc::new(routes),
        meta: Arc::clone(&meta),
        metrics,
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
    info!(listen = %local_addr, data_dir = %config.data_dir.display(), upstreams = config.upstreams.len(), "regcache serving");
    axum::serve(listener, server::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving http")?;
    if let Err(e) = flusher.shutdown().await {
        tracing::warn!(error = %e, "flushing access times at shutdown failed");
    }
    info!("regcache stopped");
    Ok(())
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
