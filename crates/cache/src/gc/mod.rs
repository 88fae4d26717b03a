//! The collector: on the leader, a round every interval (or when
//! `regcache gc run` asks): the sweep of what earlier passes removed, the
//! orphan sweep, idle tags, and a pass (mark, condemn, wait, commit); on
//! every replica, its disk tier's copies of removed content. docs/gc.md has
//! the protocol; meta applies it.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use meta::{GcControl, GcFuture, GcPlan, GcReport, GcRound, GcRunOutcome, MetaError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::{Cache, telemetry, unix_now};

mod orphans;
mod pass;

/// Rounds `regcache gc status` shows.
const ROUNDS_KEPT: usize = 20;

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

/// Runs the rounds and answers `regcache gc` (as [`GcControl`]).
pub struct Collector {
    cache: Arc<Cache>,
    settings: GcSettings,
    /// Held through a round: a second pass at once would abandon the first.
    round: tokio::sync::Mutex<()>,
    /// Starts a round before the interval is up.
    wake: Notify,
    /// The last rounds this member led, newest last.
    rounds: Mutex<VecDeque<GcRound>>,
}

impl Collector {
    /// Runs the collector until the task is aborted.
    pub fn spawn(cache: &Arc<Cache>, settings: GcSettings) -> (Arc<Collector>, JoinHandle<()>) {
        debug_assert!(!settings.interval.is_zero(), "the gc interval must be positive");
        if settings.orphan_grace < SAFE_ORPHAN_GRACE {
            warn!(orphan_grace = ?settings.orphan_grace,
                "gc.orphan_grace is under an hour: an object whose indexing waits longer (no raft quorum for a while) is deleted as an orphan");
        }
        let collector = Arc::new(Collector {
            cache: Arc::clone(cache),
            settings,
            round: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            rounds: Mutex::new(VecDeque::new()),
        });
        let running = Arc::clone(&collector);
        let task = tokio::spawn(async move {
            let mut unindexed = HashSet::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(running.settings.interval) => {}
                    () = running.wake.notified() => {}
                }
                unindexed = running.cache.drop_unindexed_disk_copies(unindexed);
                if running.cache.meta.leads() {
                    let _round = running.round.lock().await;
                    let round = running.lead_round().await;
                    let mut rounds = running.rounds.lock().unwrap_or_else(PoisonError::into_inner);
                    if rounds.len() == ROUNDS_KEPT {
                        rounds.pop_front();
                    }
                    rounds.push_back(round);
                }
            }
        });
        (collector, task)
    }

    /// The leader's work each interval. Keys an earlier pass removed go
    /// first: every live member applied that commit at least an interval
    /// ago. Orphans only once none of those is left, so none goes early.
    async fn lead_round(&self) -> GcRound {
        let (cache, settings) = (&self.cache, &self.settings);
        let started = Instant::now();
        let mut round = GcRound {
            started_at: unix_now().as_secs(),
            ..GcRound::default()
        };
        let mut failed = |what: &str, e: GcError| {
            warn!(error = %e, "gc {what} failed; retrying next interval");
            round_errors(&mut round.errors, what, &e);
        };
        match cache.sweep(settings.delete_rate).await {
            Ok(swept) => {
                round.swept = swept;
                match cache
                    .sweep_orphans(settings.orphan_grace, settings.delete_rate)
                    .await
                {
                    Ok(orphans) => round.orphans = orphans,
                    Err(e) => failed("orphan sweep", e),
                }
            }
            Err(e) => failed("sweep", e),
        }
        match cache.drop_idle_tags(settings.ttl).await {
            Ok(dropped) => round.tags_dropped = dropped,
            Err(e) => failed("tag expiry", e),
        }
        let pass = Instant::now();
        let outcome = match cache.collect(settings, &mut round).await {
            Ok(outcome) => outcome,
            Err(e) => {
                warn!(error = %e, "gc pass failed; the next one starts over");
                round_errors(&mut round.errors, "pass", &e);
                "failed"
            }
        };
        telemetry::gc_run(outcome);
        telemetry::gc_phase("pass", pass.elapsed());
        round.outcome = outcome.to_owned();
        round.seconds = started.elapsed().as_secs_f64();
        round
    }

    /// What a pass would take now, without proposing anything.
    async fn plan(&self) -> Result<GcPlan, GcError> {
        let meta = Arc::clone(&self.cache.meta);
        let cutoff = self.cache.cutoff(&self.settings).await?;
        let tag_cutoff = tag_cutoff(self.settings.ttl);
        tokio::task::spawn_blocking(move || {
            let mut plan = GcPlan {
                cutoff,
                ..GcPlan::default()
            };
            if let Some(cutoff) = cutoff {
                for digest in meta.gc_mark(cutoff)? {
                    plan.entries += 1;
                    plan.bytes += meta.entry(&digest)?.map_or(0, |e| e.size);
                }
            }
            if let Some(cutoff) = tag_cutoff {
                plan.tags = meta.gc_idle_tags(cutoff)? as u64;
            }
            Ok(plan)
        })
        .await?
    }
}

fn round_errors(errors: &mut Vec<String>, what: &str, e: &GcError) {
    errors.push(format!("{what}: {e}"));
}

impl GcControl for Collector {
    fn run(&self, dry_run: bool) -> GcFuture<'_, GcRunOutcome> {
        Box::pin(async move {
            if dry_run {
                return self
                    .plan()
                    .await
                    .map(GcRunOutcome::Planned)
                    .map_err(|e| e.to_string());
            }
            if self.round.try_lock().is_err() {
                return Ok(GcRunOutcome::Busy);
            }
            self.wake.notify_one();
            Ok(GcRunOutcome::Started)
        })
    }

    fn report(&self) -> Result<GcReport, String> {
        let state = self.cache.meta.gc_state().map_err(|e| e.to_string())?;
        let rounds = self.rounds.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(GcReport {
            epoch: state.epoch,
            open_cutoff: state.cutoff,
            condemned: state.condemned,
            to_sweep: state.to_sweep,
            rounds: rounds.iter().cloned().collect(),
        })
    }
}

/// The cutoff below which a tag goes: `ttl` plus one flush of batched
/// request times; `None` when `ttl` is zero (no expiry).
fn tag_cutoff(ttl: Duration) -> Option<u64> {
    (!ttl.is_zero()).then(|| {
        unix_now()
            .saturating_sub(ttl + meta::ACCESS_FLUSH_INTERVAL)
            .as_secs()
    })
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
