use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tracing::debug;

use crate::{AppState, telemetry};

/// What a handler learned about a request, for the one log line and the
/// metrics written when the response leaves.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub route: &'static str,
    pub upstream: String,
    pub repo: String,
    pub tier: Option<&'static str>,
}

/// The request log's target: off by default, since a line per request is
/// a write per request and cost a third of the manifest throughput;
/// `RUST_LOG=info,openraft=error,regcache::access=debug` turns it on.
const ACCESS_LOG: &str = "regcache::access";

/// Counts requests by route and status, and logs one line per request at
/// DEBUG (target `regcache::access`).
pub async fn log_and_count(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let info = response.extensions_mut().remove::<RequestInfo>();
    let route = info.as_ref().map_or("other", |i| i.route);
    telemetry::request(route, &method, status, elapsed);
    match info {
        Some(i) => debug!(
            target: ACCESS_LOG,
            method = %method,
            route,
            status,
            upstream = %i.upstream,
            repo = %i.repo,
            tier = i.tier.unwrap_or("-"),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "request"
        ),
        None => debug!(
            target: ACCESS_LOG,
            method = %method,
            route,
            status,
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "request"
        ),
    }
    response
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.meta.stats() {
        Ok(stats) => telemetry::index(&stats),
        Err(e) => tracing::warn!(error = %e, "reading index stats failed"),
    }
    match state.meta.gc_state() {
        Ok(gc) => telemetry::gc(&gc),
        Err(e) => tracing::warn!(error = %e, "reading the gc state failed"),
    }
    telemetry::downloads(state.cache.download_count());
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// The Raft group as this replica sees it, and the size of its index: what
/// `regcache cluster status` prints, for dashboards and humans.
pub async fn status(State(state): State<AppState>) -> Response {
    let stats = match state.meta.stats() {
        Ok(stats) => stats,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("metadata unreadable: {e}\n"),
            )
                .into_response();
        }
    };
    let gc = match state.gc.report() {
        Ok(report) => serde_json::to_value(report).unwrap_or_default(),
        Err(e) => serde_json::json!({ "error": e }),
    };
    let downloads: Vec<serde_json::Value> = state
        .cache
        .downloads()
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "digest": d.digest,
                "upstream": d.upstream,
                "repo": d.repo,
                "source": d.source,
                "peer": d.peer,
                "state": d.state,
                "size": d.size,
                "written": d.written,
                "seconds": d.seconds,
            })
        })
        .collect();
    let peers = state.cache.peers().map(|p| {
        let paused: Vec<serde_json::Value> = p
            .paused
            .iter()
            .map(|(id, why, seconds)| serde_json::json!({ "id": id, "why": why, "seconds": seconds }))
            .collect();
        serde_json::json!({ "owner_key": p.owner_key, "paused": paused })
    });
    let body = serde_json::json!({
        "raft": state.meta.status(),
        "peers": peers,
        "gc": gc,
        "downloads": downloads,
        "index": {
            "tags": stats.tags,
            "manifests": stats.manifests,
            "manifest_bytes": stats.manifest_bytes,
            "blobs": stats.blobs,
            "blob_bytes": stats.blob_bytes,
        },
    });
    axum::Json(body).into_response()
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the metadata store answers reads. A member without a Raft
/// quorum still serves what it has cached, so it stays ready and says so.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.meta.stats() {
        Ok(_) if state.meta.writable() => (StatusCode::OK, "ready\n").into_response(),
        Ok(_) => (
            StatusCode::OK,
            "ready, read-only: no raft quorum, so tags and the index cannot change until a majority of members is up\n",
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}
