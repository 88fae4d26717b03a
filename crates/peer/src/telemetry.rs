//! The peer metrics (docs/operations.md lists them).

const ASKED: &str = "regcache_peer_fetches_asked_total";
const SERVED: &str = "regcache_peer_fetches_served_total";
const RECEIVED_BYTES: &str = "regcache_peer_received_bytes_total";
const SENT_BYTES: &str = "regcache_peer_sent_bytes_total";
const FALLBACKS: &str = "regcache_peer_fallbacks_total";

/// This member asked an owner for a blob.
pub(crate) fn asked() {
    metrics::counter!(ASKED).increment(1);
}

/// This member, as owner, started streaming a blob to another member.
pub(crate) fn served() {
    metrics::counter!(SERVED).increment(1);
}

pub(crate) fn received_bytes() -> metrics::Counter {
    metrics::counter!(RECEIVED_BYTES)
}

pub(crate) fn sent_bytes() -> metrics::Counter {
    metrics::counter!(SENT_BYTES)
}

/// A fetch went to the upstream instead, or on from it, because of `reason`.
pub(crate) fn fallback(reason: &'static str) {
    metrics::counter!(FALLBACKS, "reason" => reason).increment(1);
}
