//! The HTTP edge: the pull side of the OCI distribution API, upstream
//! selection, spec-format errors, metrics, health and readiness.

mod error;
mod handlers;
mod observe;
mod peer_content;
mod routing;
mod telemetry;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use cache::Cache;
use metrics_exporter_prometheus::PrometheusHandle;

pub use peer_content::PeerContent;
pub use routing::Routes;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub cache: Arc<Cache>,
    pub routes: Arc<Routes>,
    pub meta: Arc<meta::Meta>,
    pub metrics: PrometheusHandle,
    /// The collector, for the `gc` section of `/status.json`.
    pub gc: Arc<dyn meta::GcControl>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", get(handlers::base).head(handlers::base))
        .route("/v2/", get(handlers::base).head(handlers::base))
        .route("/v2/{*rest}", axum::routing::any(handlers::registry))
        .route("/metrics", get(observe::metrics))
        .route("/healthz", get(observe::healthz))
        .route("/readyz", get(observe::readyz))
        .route("/status.json", get(observe::status))
        .layer(axum::middleware::from_fn(observe::log_and_count))
        .with_state(state)
}
