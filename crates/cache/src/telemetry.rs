//! The cache's metric names and how each is recorded, in one place so docs
//! and dashboards have one place to look (docs/operations.md lists them).

use crate::Tier;

const REQUESTS: &str = "regcache_cache_requests_total";
const SERVED_BYTES: &str = "regcache_served_bytes_total";
const STALE_TAGS_SERVED: &str = "regcache_stale_tags_served_total";
const DIGEST_MISMATCHES: &str = "regcache_digest_mismatch_total";
const OBJSTORE_ERRORS: &str = "regcache_objstore_errors_total";
const OBJSTORE_CORRUPT: &str = "regcache_objstore_corrupt_total";
const OBJSTORE_UNSTORED: &str = "regcache_objstore_unstored_total";
const OBJSTORE_READS_RESUMED: &str = "regcache_objstore_reads_resumed_total";
const OBJSTORE_CHECKED_READS: &str = "regcache_objstore_checked_reads_total";
const GC_RUNS: &str = "regcache_gc_runs_total";
const GC_DURATION: &str = "regcache_gc_duration_seconds";
const GC_CONDEMNED: &str = "regcache_gc_condemned_total";
const GC_REMOVED: &str = "regcache_gc_removed_entries_total";
const GC_RESCUED: &str = "regcache_gc_rescued_total";
const GC_REMOVED_BYTES: &str = "regcache_gc_removed_bytes_total";
const GC_DELETED_OBJECTS: &str = "regcache_gc_deleted_objects_total";
const GC_DISK_REMOVED: &str = "regcache_gc_disk_removed_total";
const GC_TAGS_DROPPED: &str = "regcache_gc_tags_dropped_total";
const GC_ORPHANS_FOUND: &str = "regcache_gc_orphans_found_total";
const GC_ORPHANS_DELETED: &str = "regcache_gc_orphans_deleted_total";

/// One request for a blob or a manifest (`kind`), by the tier that answered.
pub(crate) fn request(kind: &'static str, tier: Tier) {
    metrics::counter!(REQUESTS, "kind" => kind, "tier" => tier.as_str()).increment(1);
}

/// The counter of bytes sent from `tier`, incremented as a body streams.
pub(crate) fn served_bytes(tier: Tier) -> metrics::Counter {
    metrics::counter!(SERVED_BYTES, "tier" => tier.as_str())
}

pub(crate) fn stale_tag_served(upstream: &str) {
    metrics::counter!(STALE_TAGS_SERVED, "upstream" => upstream.to_owned()).increment(1);
}

/// Bytes from `upstream` that did not match their digest.
pub(crate) fn digest_mismatch(upstream: &str) {
    metrics::counter!(DIGEST_MISMATCHES, "upstream" => upstream.to_owned()).increment(1);
}

pub(crate) fn objstore_error(operation: &'static str) {
    metrics::counter!(OBJSTORE_ERRORS, "operation" => operation).increment(1);
}

/// An object that did not match the digest its key names (and was deleted).
pub(crate) fn objstore_corrupt() {
    metrics::counter!(OBJSTORE_CORRUPT).increment(1);
}

/// A response whose object failed mid-stream and went on from the upstream.
pub(crate) fn objstore_read_resumed() {
    metrics::counter!(OBJSTORE_READS_RESUMED).increment(1);
}

/// Content kept on local disk only: the object tier did not take it.
pub(crate) fn objstore_unstored(kind: &'static str) {
    metrics::counter!(OBJSTORE_UNSTORED, "kind" => kind).increment(1);
}

/// A GC pass that ended (`committed`, `failed`) or found nothing idle
/// (`idle`), and how long its `phase` took (`mark`, `pass`).
pub(crate) fn gc_run(outcome: &'static str) {
    metrics::counter!(GC_RUNS, "outcome" => outcome).increment(1);
}

pub(crate) fn gc_phase(phase: &'static str, elapsed: std::time::Duration) {
    metrics::histogram!(GC_DURATION, "phase" => phase).record(elapsed.as_secs_f64());
}

/// Entries a pass condemned, and those still condemned when it committed
/// (the rest were rescued) with the bytes they described.
pub(crate) fn gc_committed(condemned: u64, removed: u64, removed_bytes: u64) {
    metrics::counter!(GC_CONDEMNED).increment(condemned);
    metrics::counter!(GC_REMOVED).increment(removed);
    metrics::counter!(GC_REMOVED_BYTES).increment(removed_bytes);
    metrics::counter!(GC_RESCUED).increment(condemned.saturating_sub(removed));
}

/// Objects the sweep deleted from the object tier.
pub(crate) fn gc_deleted_objects(count: usize) {
    metrics::counter!(GC_DELETED_OBJECTS).increment(count as u64);
}

/// Disk copies a replica dropped because the index no longer names them.
pub(crate) fn gc_disk_removed() {
    metrics::counter!(GC_DISK_REMOVED).increment(1);
}

/// Tags dropped because no replica served them within the ttl.
pub(crate) fn gc_tags_dropped(count: usize) {
    metrics::counter!(GC_TAGS_DROPPED).increment(count as u64);
}

/// Objects the orphan sweep found no index entry for (past the grace).
pub(crate) fn gc_orphans_found(count: usize) {
    metrics::counter!(GC_ORPHANS_FOUND).increment(count as u64);
}

/// Orphans the sweep deleted.
pub(crate) fn gc_orphans_deleted(count: usize) {
    metrics::counter!(GC_ORPHANS_DELETED).increment(count as u64);
}

/// A stream from the object tier, by the check it runs (`crc64nvme`,
/// `digest`).
pub(crate) fn objstore_checked_read(check: &'static str) {
    metrics::counter!(OBJSTORE_CHECKED_READS, "check" => check).increment(1);
}
