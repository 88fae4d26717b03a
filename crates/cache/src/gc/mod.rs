//! The collector: on the leader, a garbage-collection pass every interval
//! (mark, condemn, wait, commit) and the sweep of what earlier passes
//! removed; on every replica, its disk tier's copies of removed content.
//! docs/gc.md has the protocol; meta applies it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use meta::{Command, MetaError};
use oci::Digest;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::{Cache, telemetry, unix_now};

mod orphans;

/// Digests per condemn or commit entry, and object keys per delete: no
/// Raft entry or request grows large.
const CHUNK: usize = 1000;

/// Shorter orphan graces are accepted (tests use seconds) with a warning.
const SAFE_ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// How garbage collection runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcSettings {
    /// Content idle for longer goes; zero turns idle expiry off.
    pub ttl: Duration,
    /// How often the leader starts a pass (and sweeps).
    pub interval: Duration,
    /// How long a pass waits between condemning and committing, so reads
    /// under way rescue what they serve.
    pub sweep_delay: Duration,
    /// Objects the sweep deletes per second at most, so it yields to
    /// serving (at least 1).
    pub delete_rate: u32,
    /// Objects no index entry names are deleted once this old: an upload
    /// is indexed right after it completes, so only leftovers get this old.
    pub orphan_grace: Duration,
    /// The index's total size the object tier is kept under; least
    /// recently used content goes first, down to [`meta::LOW_WATERMARK`] of it.
    pub bucket_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum GcError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    ObjectStore(#[from] objstore::ObjStoreError),
    #[error("the mark task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Cache {
    /// Runs the collector until the task is aborted.
    pub fn spawn_collector(self: &Arc<Self>, settings: GcSettings) -> JoinHandle<()> {
        debug_assert!(!settings.interval.is_zero(), "the gc interval must be positive");
        if settings.orphan_grace < SAFE_ORPHAN_GRACE {
            warn!(orphan_grace = ?settings.orphan_grace,
                "gc.orphan_grace is under an hour: an object whose indexing waits longer (no raft quorum for a while) is deleted as an orphan");
        }
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let mut unindexed = HashSet::new();
            loop {
                tokio::time::sleep(settings.interval).await;
                unindexed = cache.drop_unindexed_disk_copies(unindexed);
                if cache.meta.leads() {
                    cache.lead_round(&settings).await;
                }
            }
        })
    }

    /// The leader's work each interval. Keys an earlier pass removed go
    /// first: every live member applied that commit at least an interval
    /// ago. Orphans only once none of those is left, so none goes early.
    async fn lead_round(&self, settings: &GcSettings) {
        match self.sweep(settings.delete_rate).await {
            Ok(()) => {
                if let Err(e) = self
                    .sweep_orphans(settings.orphan_grace, settings.delete_rate)
                    .await
                {
                    warn!(error = %e, "gc orphan sweep failed; retrying next interval");
                }
            }
            Err(e) => warn!(error = %e, "gc sweep failed; retrying next interval"),
        }
        if let Err(e) = self.drop_idle_tags(settings.ttl).await {
            warn!(error = %e, "dropping idle tags failed; retrying next interval");
        }
        let started = std::time::Instant::now();
        match self.collect(settings).await {
            Ok(outcome) => telemetry::gc_run(outcome),
            Err(e) => {
                telemetry::gc_run("failed");
                warn!(error = %e, "gc pass failed; the next one starts over");
            }
        }
        telemetry::gc_phase("pass", started.elapsed());
    }

    /// Drops the tags no replica served within `ttl` (none when it is
    /// zero), give or take the batching of request times: a tag is kept
    /// one flush interval longer, so one requested just now but not yet
    /// flushed stays. (Content needs no such margin: a pass's rescue brings
    /// its accesses in at once.)
    async fn drop_idle_tags(&self, ttl: Duration) -> Result<(), GcError> {
        if ttl.is_zero() {
            return Ok(());
        }
        let cutoff = unix_now()
            .saturating_sub(ttl + meta::ACCESS_FLUSH_INTERVAL)
            .as_secs();
        let meta = Arc::clone(&self.meta);
        let idle = tokio::task::spawn_blocking(move || meta.gc_idle_tags(cutoff)).await??;
        if idle > 0 {
            self.meta.propose(Command::DropIdleTags { cutoff }).await?;
            telemetry::gc_tags_dropped(idle);
            info!(tags = idle, "gc dropped tags not requested within the ttl");
        }
        Ok(())
    }

    /// One pass: marks idle content (and, over the byte budget, the least
    /// recently used), condemns it, waits for rescues, and commits what is
    /// still condemned. Answers `idle` when nothing was.
    async fn collect(&self, settings: &GcSettings) -> Result<&'static str, GcError> {
        let started = std::time::Instant::now();
        let Some(cutoff) = self.cutoff(settings).await? else {
            return Ok("idle");
        };
        let meta = Arc::clone(&self.meta);
        let marked = tokio::task::spawn_blocking(move || meta.gc_mark(cutoff)).await??;
        telemetry::gc_phase("mark", started.elapsed());
        if marked.is_empty() {
            return Ok("idle");
        }
        let epoch = self.meta.gc_state()?.epoch + 1;
        self.meta.propose(Command::GcStart { epoch, cutoff }).await?;
        for chunk in marked.chunks(CHUNK) {
            let digests = chunk.to_vec();
            self.meta.propose(Command::GcCondemn { epoch, digests }).await?;
        }
        let condemned = self.meta.gc_state()?.condemned;
        tokio::time::sleep(settings.sweep_delay).await;
        let kept = self.meta.gc_state()?.condemned;
        loop {
            let state = self.meta.gc_state()?;
            if state.epoch != epoch || state.cutoff.is_none() {
                break;
            }
            let max = CHUNK as u32;
            self.meta.propose(Command::GcCommit { epoch, max }).await?;
        }
        telemetry::gc_committed(condemned, kept);
        info!(
            epoch,
            marked = marked.len(),
            condemned,
            removed = kept,
            "gc pass committed"
        );
        Ok("committed")
    }

    /// The cutoff of a pass now: idle for longer than `ttl`, raised as far
    /// as the byte budget needs; `None` when neither applies.
    async fn cutoff(&self, settings: &GcSettings) -> Result<Option<u64>, GcError> {
        let idle = (!settings.ttl.is_zero()).then(|| unix_now().saturating_sub(settings.ttl).as_secs());
        let Some(budget) = settings.bucket_bytes else {
            return Ok(idle);
        };
        let meta = Arc::clone(&self.meta);
        let over_budget = tokio::task::spawn_blocking(move || meta.gc_budget_cutoff(budget)).await??;
        if let Some(cutoff) = over_budget {
            info!(
                budget,
                cutoff, "the index is over gc.bucket_bytes; collecting the least recently used"
            );
        }
        Ok(idle.max(over_budget))
    }

    /// Deletes the object keys removed from the index, at most
    /// `delete_rate` a second, then forgets them.
    async fn sweep(&self, delete_rate: u32) -> Result<(), GcError> {
        let batch = CHUNK.min(delete_rate.max(1) as usize);
        loop {
            let keys = self.meta.gc_sweep_keys(batch)?;
            if keys.is_empty() {
                return Ok(());
            }
            let started = tokio::time::Instant::now();
            if let Some(objects) = &self.objects {
                objects.delete(&keys).await?;
                telemetry::gc_deleted_objects(keys.len());
            }
            debug!(objects = keys.len(), "gc swept objects");
            let pace = pause_for(keys.len(), delete_rate);
            self.meta.propose(Command::Swept { keys }).await?;
            tokio::time::sleep_until(started + pace).await;
        }
    }

    /// Deletes disk copies of digests the index no longer names, once seen
    /// so on two rounds in a row (a blob just stored is indexed within a
    /// round); returns this round's unindexed digests.
    fn drop_unindexed_disk_copies(&self, seen_before: HashSet<Digest>) -> HashSet<Digest> {
        let mut unindexed = HashSet::new();
        for digest in self.disk.digests() {
            if self.inflight.is_running(&digest) || !matches!(self.meta.entry(&digest), Ok(None)) {
                continue;
            }
            if !seen_before.contains(&digest) {
                unindexed.insert(digest);
                continue;
            }
            match self.disk.remove(&digest) {
                Ok(()) => telemetry::gc_disk_removed(),
                Err(e) => warn!(%digest, error = %e, "removing a collected blob from disk failed"),
            }
        }
        unindexed
    }
}

/// How long deleting `count` objects takes at `rate` a second.
fn pause_for(count: usize, rate: u32) -> Duration {
    Duration::from_secs_f64(count as f64 / f64::from(rate.max(1)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::pause_for;

    #[test]
    fn the_sweep_keeps_to_its_rate() {
        assert_eq!(pause_for(1000, 1000), Duration::from_secs(1));
        assert_eq!(pause_for(50, 100), Duration::from_millis(500));
        assert_eq!(
            pause_for(3, 0),
            Duration::from_secs(3),
            "a zero rate counts as one"
        );
    }
}
