//! The steps of the leader's round: sweep what earlier passes removed, drop
//! idle tags, run a pass; and every replica's cleanup of its disk tier.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use meta::{Command, GcRound};
use oci::Digest;
use tracing::{debug, info, warn};

use super::{CHUNK, GcError, GcSettings, pause_for, tag_cutoff};
use crate::{Cache, telemetry, unix_now};

impl Cache {
    /// One pass: marks idle content (and, over the byte budget, the least
    /// recently used), condemns it, waits for rescues, and commits what is
    /// still condemned; notes its epoch and counts in `round`. Answers
    /// `idle` when nothing was.
    pub(super) async fn collect(
        &self,
        settings: &GcSettings,
        round: &mut GcRound,
    ) -> Result<&'static str, GcError> {
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
        round.epoch = Some(epoch);
        self.meta.propose(Command::GcStart { epoch, cutoff }).await?;
        for chunk in marked.chunks(CHUNK) {
            let digests = chunk.to_vec();
            self.meta.propose(Command::GcCondemn { epoch, digests }).await?;
        }
        let condemned = self.meta.gc_state()?.condemned;
        round.condemned = condemned;
        tokio::time::sleep(settings.sweep_delay).await;
        let kept = self.meta.gc_state()?.condemned;
        let kept_bytes = self.meta.gc_condemned_bytes()?;
        round.removed = kept;
        round.removed_bytes = kept_bytes;
        loop {
            let state = self.meta.gc_state()?;
            if state.epoch != epoch || state.cutoff.is_none() {
                break;
            }
            let max = CHUNK as u32;
            self.meta.propose(Command::GcCommit { epoch, max }).await?;
        }
        telemetry::gc_committed(condemned, kept, kept_bytes);
        info!(
            epoch,
            marked = marked.len(),
            condemned,
            removed = kept,
            removed_bytes = kept_bytes,
            "gc pass committed"
        );
        Ok("committed")
    }

    /// The cutoff of a pass now: idle for longer than `ttl`, raised as far
    /// as the byte budget needs; `None` when neither applies.
    pub(super) async fn cutoff(&self, settings: &GcSettings) -> Result<Option<u64>, GcError> {
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
    /// `delete_rate` a second, then forgets them; returns how many.
    pub(super) async fn sweep(&self, delete_rate: u32) -> Result<u64, GcError> {
        let batch = CHUNK.min(delete_rate.max(1) as usize);
        let mut swept = 0;
        loop {
            let keys = self.meta.gc_sweep_keys(batch)?;
            if keys.is_empty() {
                return Ok(swept);
            }
            swept += keys.len() as u64;
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
    pub(super) fn drop_unindexed_disk_copies(&self, seen_before: HashSet<Digest>) -> HashSet<Digest> {
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

    /// Drops the tags no replica served within `ttl` (none when it is
    /// zero), give or take the batching of request times: a tag is kept
    /// one flush interval longer, so one requested just now but not yet
    /// flushed stays. (Content needs no such margin: a pass's rescue brings
    /// its accesses in at once.) Returns how many went.
    pub(super) async fn drop_idle_tags(&self, ttl: Duration) -> Result<u64, GcError> {
        let Some(cutoff) = tag_cutoff(ttl) else {
            return Ok(0);
        };
        let meta = Arc::clone(&self.meta);
        let idle = tokio::task::spawn_blocking(move || meta.gc_idle_tags(cutoff)).await??;
        if idle > 0 {
            self.meta.propose(Command::DropIdleTags { cutoff }).await?;
            telemetry::gc_tags_dropped(idle);
            info!(tags = idle, "gc dropped tags not requested within the ttl");
        }
        Ok(idle as u64)
    }
}
