use std::collections::{BTreeMap, HashMap};

use oci::Digest;

/// Recency order of the disk tier's blobs. Ticks are a logical clock: the
/// smallest tick is the least recently used blob.
#[derive(Default)]
pub(crate) struct Lru {
    entries: HashMap<Digest, (u64, u64)>,
    order: BTreeMap<u64, Digest>,
    next_tick: u64,
    total_bytes: u64,
}

impl Lru {
    pub(crate) fn insert(&mut self, digest: Digest, size: u64) {
        self.remove(&digest);
        let tick = self.bump();
        self.order.insert(tick, digest.clone());
        self.entries.insert(digest, (size, tick));
        self.total_bytes += size;
    }

    /// Marks a blob as just used; returns its size if present.
    pub(crate) fn touch(&mut self, digest: &Digest) -> Option<u64> {
        let tick = self.bump();
        let (size, old) = self.entries.get_mut(digest)?;
        let old_tick = std::mem::replace(old, tick);
        let size = *size;
        if let Some(d) = self.order.remove(&old_tick) {
            self.order.insert(tick, d);
        }
        Some(size)
    }

    pub(crate) fn size_of(&self, digest: &Digest) -> Option<u64> {
        self.entries.get(digest).map(|(size, _)| *size)
    }

    pub(crate) fn remove(&mut self, digest: &Digest) -> Option<u64> {
        let (size, tick) = self.entries.remove(digest)?;
        self.order.remove(&tick);
        self.total_bytes -= size;
        Some(size)
    }

    /// Removes least recently used blobs until the total fits `capacity`,
    /// never `keep` (the blob just written: evicting it would waste the fetch).
    pub(crate) fn evict_to(&mut self, capacity: u64, keep: Option<&Digest>) -> Vec<Digest> {
        let mut evicted = Vec::new();
        while self.total_bytes > capacity {
            let Some(digest) = self.order.values().find(|d| Some(*d) != keep).cloned() else {
                break;
            };
            self.remove(&digest);
            evicted.push(digest);
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
        assert_eq!(lru.evict_to(20, Some(&d(4))), vec![d(2), d(3)]);
        assert_eq!(lru.total_bytes(), 20);
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn never_evicts_the_kept_blob() {
        let mut lru = Lru::default();
        lru.insert(d(1), 100);
        assert!(lru.evict_to(10, Some(&d(1))).is_empty());
        assert_eq!(lru.size_of(&d(1)), Some(100));
    }
}
