//! Metric names and recording, kept in one place so dashboards have one
//! place to look.

use std::time::Duration;

const REQUEST_DURATION: &str = "regcache_upstream_request_duration_seconds";
const ERRORS: &str = "regcache_upstream_errors_total";
const RECEIVED_BYTES: &str = "regcache_upstream_received_bytes_total";

/// Time until the response headers arrived (bodies, blobs above all, take as
/// long as the client reading them); `status` is the HTTP status or, when no
/// response came, the error kind.
pub(crate) fn request(upstream: &str, op: &'static str, status: String, elapsed: Duration) {
    metrics::histogram!(REQUEST_DURATION, "upstream" => upstream.to_owned(), "op" => op, "status" => status)
        .record(elapsed.as_secs_f64());
}

pub(crate) fn error(upstream: &str, kind: &'static str) {
    metrics::counter!(ERRORS, "upstream" => upstream.to_owned(), "kind" => kind).increment(1);
}

/// The counter of blob body bytes received from `upstream`: what the cache
/// costs the upstream, against what it serves.
pub(crate) fn received_bytes(upstream: &str) -> metrics::Counter {
    metrics::counter!(RECEIVED_BYTES, "upstream" => upstream.to_owned())
}
