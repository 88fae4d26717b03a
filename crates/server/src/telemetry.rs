//! The HTTP edge's metric names and how each is recorded, in one place so
//! docs and dashboards have one place to look.

use std::borrow::Cow;
use std::time::Duration;

use meta::{GcState, MetaStats};

const REQUESTS: &str = "regcache_http_requests_total";
const REQUEST_DURATION: &str = "regcache_http_request_duration_seconds";
const INDEX_ENTRIES: &str = "regcache_index_entries";
const INDEX_BYTES: &str = "regcache_index_bytes";
const INDEX_TAGS: &str = "regcache_index_tags";
const GC_CONDEMNED: &str = "regcache_gc_condemned";
const GC_TO_SWEEP: &str = "regcache_gc_to_sweep";
const DOWNLOADS: &str = "regcache_downloads";

/// One answered request, by route, method and status.
pub(crate) fn request(route: &'static str, method: &http::Method, status: u16, elapsed: Duration) {
    let method = match *method {
        http::Method::GET => Cow::Borrowed("GET"),
        http::Method::HEAD => Cow::Borrowed("HEAD"),
        ref other => Cow::Owned(other.to_string()),
    };
    metrics::counter!(REQUESTS, "route" => route, "method" => method, "status" => status_label(status))
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route).record(elapsed.as_secs_f64());
}

/// The label of a status, without an allocation for the usual ones (a
/// label is built on every request).
fn status_label(status: u16) -> Cow<'static, str> {
    Cow::Borrowed(match status {
        200 => "200",
        206 => "206",
        304 => "304",
        400 => "400",
        401 => "401",
        404 => "404",
        416 => "416",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        other => return Cow::Owned(other.to_string()),
    })
}

/// The index's size, read when scraped rather than tracked on every write.
pub(crate) fn index(stats: &MetaStats) {
    metrics::gauge!(INDEX_ENTRIES, "kind" => "blob").set(stats.blobs as f64);
    metrics::gauge!(INDEX_ENTRIES, "kind" => "manifest").set(stats.manifests as f64);
    metrics::gauge!(INDEX_BYTES, "kind" => "blob").set(stats.blob_bytes as f64);
    metrics::gauge!(INDEX_BYTES, "kind" => "manifest").set(stats.manifest_bytes as f64);
    metrics::gauge!(INDEX_TAGS).set(stats.tags as f64);
}

/// The open pass's condemned entries and the object keys waiting for the
/// sweep, as this member applied them; read when scraped.
pub(crate) fn gc(state: &GcState) {
    metrics::gauge!(GC_CONDEMNED).set(state.condemned as f64);
    metrics::gauge!(GC_TO_SWEEP).set(state.to_sweep as f64);
}

/// Downloads under way on this replica (from the upstream, the object tier
/// or a peer), read when scraped.
pub(crate) fn downloads(count: usize) {
    metrics::gauge!(DOWNLOADS).set(count as f64);
}
