use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use oci::Digest;

/// How stale a blob's modification time may get while it is being read:
/// the time orders the tier after a restart, so it is rewritten at most
/// this often per blob, not on every read.
const RESTAMP_AFTER: Duration = Duration::from_secs(60);

/// Recency order of the disk tier's blobs. Ticks are a logical clock: the
/// smallest tick is the least recently used blob.
#[derive(Default)]
pub(crate) struct Lru {
    entries: HashMap<Digest, Entry>,
    order: BTreeMap<u64, Digest>,
    next_tick: u64,
    total_bytes: u64,
}

struct Entry {
    size: u64,
    tick: u64,
    /// When the file's modification time was last set (written, or
    /// restamped by a read).
    stamped: Instant,
}

impl Lru {
    pub(crate) fn insert(&mut self, digest: Digest, size: u64) {
        self.remove(&digest);
        let tick = self.bump();
        self.order.insert(tick, digest.clone());
        let stamped = Instant::now();
        self.entries.insert(digest, Entry { size, tick, stamped });
        self.total_bytes += size;
    }

    /// Marks a blob as just used; returns its size if present.
    pub(crate) fn touch(&mut self, digest: &Digest) -> Option<u64> {
        let tick = self.bump();
        let entry = self.entries.get_mut(digest)?;
        let old_tick = std::mem::replace(&mut entry.tick, tick);
        let size = entry.size;
        if let Some(d) = self.order.remove(&old_tick) {
            self.order.insert(tick, d);
        }
        Some(size)
    }

    /// Marks a blob as just read from its file; returns its size, and
    /// whether its modification time is due to be set to now (the caller
    /// sets it: the time is taken as set).
    pub(crate) fn touch_read(&mut self, digest: &Digest, now: Instant) -> Option<(u64, bool)> {
        let size = self.touch(digest)?;
        let entry = self.entries.get_mut(digest)?;
        let restamp = now.saturating_duration_since(entry.stamped) >= RESTAMP_AFTER;
        if restamp {
            entry.stamped = now;
        }
        Some((size, restamp))
    }

    /// Makes a blob's modification time look `by` older than it is.
    #[cfg(test)]
    pub(crate) fn backdate_stamp(&mut self, digest: &Digest, by: Duration) {
        if let Some(entry) = self.entries.get_mut(digest) {
            entry.stamped -= by;
        }
    }

    pub(crate) fn size_of(&self, digest: &Digest) -> Option<u64> {
        self.entries.get(digest).map(|e| e.size)
    }

    pub(crate) fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let entry = self.entries.remove(digest)?;
        self.order.remove(&entry.tick);
        self.total_bytes -= entry.size;
        Some(entry.size)
    }

    /// Removes least recently used blobs until the total fits `capacity`,
    /// never `keep` (the blob just written: evicting it would waste the fetch).
    /// Returns what it removed, with the sizes.
    pub(crate) fn evict_to(&mut self, capacity: u64, keep: Option<&Digest>) -> Vec<(Digest, u64)> {
        let mut evicted = Vec::new();
        while self.total_bytes > capacity {
            let Some(digest) = self.order.values().find(|d| Some(*d) != keep).cloned() else {
                break;
            };
            if let Some(size) = self.remove(&digest) {
                evicted.push((digest, size));
            }
        }
        evicted
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn digests(&self) -> Vec<Digest> {
        self.entries.keys().cloned().collect()
    }

    fn bump(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> Digest {
        Digest::sha256_of(&[i])
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut lru = Lru::default();
        lru.insert(d(1), 10);
        lru.insert(d(2), 10);
        lru.insert(d(3), 10);
        assert_eq!(lru.touch(&d(1)), Some(10));
        lru.insert(d(4), 10);
        assert_eq!(lru.evict_to(20, Some(&d(4))), vec![(d(2), 10), (d(3), 10)]);
        assert_eq!(lru.total_bytes(), 20);
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn restamps_a_read_blob_once_a_minute_at_most() {
        let mut lru = Lru::default();
        lru.insert(d(1), 10);
        let now = Instant::now();
        assert_eq!(lru.touch_read(&d(1), now), Some((10, false)), "just written");
        let later = now + RESTAMP_AFTER;
        assert_eq!(lru.touch_read(&d(1), later), Some((10, true)));
        assert_eq!(
            lru.touch_read(&d(1), later + Duration::from_secs(59)),
            Some((10, false))
        );
        assert_eq!(lru.touch_read(&d(2), later), None);
    }

    #[test]
    fn never_evicts_the_kept_blob() {
        let mut lru = Lru::default();
        lru.insert(d(1), 100);
        assert!(lru.evict_to(10, Some(&d(1))).is_empty());
        assert_eq!(lru.size_of(&d(1)), Some(100));
    }
}
