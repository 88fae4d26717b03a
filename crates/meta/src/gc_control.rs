//! Garbage collection on request: what `regcache gc` asks the leader over
//! the cluster port. meta carries the requests; the cache's collector
//! answers them by implementing [`GcControl`].

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// `regcache gc run [--dry-run]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRunRequest {
    pub dry_run: bool,
}

/// What a pass would take now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcPlan {
    /// The pass's cutoff (unix seconds); `None` when nothing applies (no
    /// ttl, within the budget).
    pub cutoff: Option<u64>,
    /// Index entries it would condemn, and the bytes they describe.
    pub entries: u64,
    pub bytes: u64,
    /// Tags it would drop.
    pub tags: u64,
}

/// What `GcRun` answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcRunOutcome {
    /// The dry run's findings.
    Planned(GcPlan),
    /// A round started in the background; `regcache gc status` follows it.
    Started,
    /// A round is under way already.
    Busy,
}

/// One round of the collector on the leader: sweep, orphans, tags, pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GcRound {
    /// Unix seconds.
    pub started_at: u64,
    pub seconds: f64,
    /// `committed`, `idle` (nothing to collect) or `failed`.
    pub outcome: String,
    /// The pass's epoch, when one started.
    pub epoch: Option<u64>,
    pub condemned: u64,
    pub removed: u64,
    /// The bytes the removed entries described.
    pub removed_bytes: u64,
    /// Objects deleted: keys earlier passes removed, and orphans.
    pub swept: u64,
    pub orphans: u64,
    pub tags_dropped: u64,
    /// What went wrong, for a failed round.
    pub errors: Vec<String>,
}

/// `regcache gc status`: the state every member applied, and the leader's
/// last rounds (newest last).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    pub epoch: u64,
    /// The open pass's cutoff; `None` when no pass is open.
    pub open_cutoff: Option<u64>,
    pub condemned: u64,
    pub to_sweep: u64,
    pub rounds: Vec<GcRound>,
}

pub type GcFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// What the collector offers the cluster port; asked on the leader only.
pub trait GcControl: Send + Sync + 'static {
    /// Plans a pass (`dry_run`) or starts a round now.
    fn run(&self, dry_run: bool) -> GcFuture<'_, GcRunOutcome>;
    /// Where collection stands, with the last rounds.
    fn report(&self) -> Result<GcReport, String>;
}
