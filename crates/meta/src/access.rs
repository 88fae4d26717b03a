//! Access times without a write per request: pulls note accesses in memory and
//! a background task flushes them as one `Touch` per interval (and tag
//! requests as one `TouchTags`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use oci::Digest;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::warn;

use crate::{Meta, MetaError, TagKey};

/// How often a replica's batched access times and tag requests are
/// proposed: they reach the index up to this late.
pub const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Latest access per key since the last flush (unix seconds).
pub(crate) struct Latest<K> {
    latest: Mutex<HashMap<K, u64>>,
}

impl<K> Default for Latest<K> {
    fn default() -> Self {
        Latest {
            latest: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Latest<K> {
    /// The hot path: one short lock, and an allocation only for a key not
    /// seen since the last flush.
    pub(crate) fn record(&self, key: &K, at: u64) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        match latest.get_mut(key) {
            Some(t) => *t = (*t).max(at),
            None => {
                latest.insert(key.clone(), at);
            }
        }
    }

    /// Takes everything pending, sorted so the command is reproducible.
    pub(crate) fn take(&self) -> Vec<(K, u64)> {
        let taken = std::mem::take(&mut *self.latest.lock().unwrap_or_else(PoisonError::into_inner));
        let mut accesses: Vec<_> = taken.into_iter().collect();
        accesses.sort_unstable();
        accesses
    }

    /// Puts back a batch whose flush failed, so the next flush retries it.
    pub(crate) fn restore(&self, accesses: Vec<(K, u64)>) {
        for (key, at) in &accesses {
            self.record(key, *at);
        }
    }
}

/// What the flusher proposes: content accesses as a `Touch`, tag requests
/// as a `TouchTags`.
#[derive(Default)]
pub(crate) struct PendingAccesses {
    pub(crate) digests: Latest<Digest>,
    pub(crate) tags: Latest<TagKey>,
    /// Wakes the flusher before its interval: an access to content a GC
    /// pass condemned must rescue it before the pass commits.
    urgent: Notify,
}

impl PendingAccesses {
    /// Asks for a flush now rather than at the next interval.
    pub(crate) fn flush_soon(&self) {
        self.urgent.notify_one();
    }
}

/// The running flusher. Dropping it also stops the task (after one last flush
/// in the background); `shutdown` does that and waits for it.
pub struct AccessFlusher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), MetaError>>,
}

impl AccessFlusher {
    pub(crate) fn spawn(meta: Arc<Meta>, interval: Duration) -> AccessFlusher {
        debug_assert!(!interval.is_zero(), "flush interval must be positive");
        let interval = interval.max(Duration::from_millis(1));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(meta, interval, stopped));
        AccessFlusher { stop, task }
    }

    /// Stops the flusher after flushing what is pending once more; returns
    /// that last flush's error, if any.
    pub async fn shutdown(self) -> Result<(), MetaError> {
        // An error means the task already ended; its result is in the handle.
        let _ = self.stop.send(());
        self.task.await?
    }
}

async fn run(
    meta: Arc<Meta>,
    interval: Duration,
    mut stopped: oneshot::Receiver<()>,
) -> Result<(), MetaError> {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Either a shutdown or a dropped handle.
            _ = &mut stopped => break,
            _ = ticker.tick() => {}
            _ = meta.accesses.urgent.notified() => {}
        }
        if let Err(error) = meta.flush_accesses().await {
            warn!(%error, "flushing access times failed; retrying next interval");
        }
    }
    meta.flush_accesses().await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn coalesces_to_the_latest_time_per_digest() {
        let pending = Latest::default();
        pending.record(&digest(1), 10);
        pending.record(&digest(1), 30);
        pending.record(&digest(1), 20);
        pending.record(&digest(2), 5);
        let mut expected = vec![(digest(1), 30), (digest(2), 5)];
        expected.sort_unstable();
        assert_eq!(pending.take(), expected);
        assert!(pending.take().is_empty());
    }

    #[test]
    fn restore_merges_with_newer_accesses() {
        let pending = Latest::default();
        pending.record(&digest(1), 50);
        pending.restore(vec![(digest(1), 40), (digest(2), 7)]);
        let mut expected = vec![(digest(1), 50), (digest(2), 7)];
        expected.sort_unstable();
        assert_eq!(pending.take(), expected);
    }
}
