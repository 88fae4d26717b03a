//! HTTP client for upstream registries: the only place regcache talks to
//! the outside world for content. It speaks the distribution API's read
//! side (manifests, blobs, tag lists), answers Basic and bearer-token auth
//! challenges, follows redirects without leaking credentials to storage
//! hosts, retries only requests that never reached the upstream, and maps
//! every failure to an [`UpstreamError`] that tells the cache whether
//! serving stale content is appropriate.

mod auth;
mod body;
mod challenge;
mod client;
mod config;
mod error;
mod headers;
mod ops;
mod retry;
mod telemetry;

pub use client::Upstream;
pub use config::{Secret, UpstreamConfig, remote_url_problem};
pub use error::UpstreamError;
pub use ops::{BlobStream, FetchedManifest, ManifestHead, TagsPage};
