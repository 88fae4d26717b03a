//! The disk tier's metric names and how each is recorded, in one place so
//! docs and dashboards have one place to look.

const DISK_BYTES: &str = "regcache_disk_bytes";
const DISK_EVICTIONS: &str = "regcache_disk_evictions_total";

/// Bytes the disk tier holds now.
pub(crate) fn disk_bytes(bytes: u64) {
    metrics::gauge!(DISK_BYTES).set(bytes as f64);
}

/// Blobs evicted to stay under the tier's capacity.
pub(crate) fn evicted(count: usize) {
    metrics::counter!(DISK_EVICTIONS).increment(count as u64);
}
