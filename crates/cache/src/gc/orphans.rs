//! The orphan sweep: objects in the object tier that no index entry names
//! (an upload whose replica crashed before indexing it, the losing copy
//! when two replicas fetched one blob at once, keys an older index knew)
//! are deleted once older than `orphan_grace`. An upload is indexed right
//! after it completes, so only leftovers grow that old.

use std::time::{Duration, SystemTime};

use objstore::ObjectInfo;
use tracing::{debug, info};

use super::{GcError, pause_for};
use crate::{Cache, telemetry};

impl Cache {
    /// Lists the object tier shard by shard (a bounded share of the
    /// listing in memory at once) and deletes the orphans older than
    /// `grace`, at most `delete_rate` a second; returns how many. Runs on
    /// the leader only
    /// while no committed key waits for the sweep, so it never deletes one
    /// before every member applied its commit.
    pub(super) async fn sweep_orphans(&self, grace: Duration, delete_rate: u32) -> Result<u64, GcError> {
        let Some(objects) = &self.objects else {
            return Ok(0);
        };
        let horizon = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut deleted = 0;
        for shard in objstore::object_shards() {
            if !self.meta.leads() {
                break; // the new leader sweeps
            }
            let listed = objects.list(&shard).await?;
            let mut orphans = Vec::new();
            for object in listed {
                if object.last_modified <= horizon && self.is_orphan(&object)? {
                    orphans.push(object.key);
                }
            }
            telemetry::gc_orphans_found(orphans.len());
            for batch in orphans.chunks(super::CHUNK.min(delete_rate.max(1) as usize)) {
                let started = tokio::time::Instant::now();
                objects.delete(batch).await?;
                telemetry::gc_orphans_deleted(batch.len());
                deleted += batch.len() as u64;
                debug!(shard, objects = batch.len(), "gc deleted orphan objects");
                tokio::time::sleep_until(started + pause_for(batch.len(), delete_rate)).await;
            }
        }
        if deleted > 0 {
            info!(deleted, grace = ?grace, "gc deleted orphan objects");
        }
        Ok(deleted)
    }

    /// Whether no index entry names `object`. Keys this cache did not make
    /// (another tool's objects under the same prefix) are never orphans.
    fn is_orphan(&self, object: &ObjectInfo) -> Result<bool, GcError> {
        let Some((_, digest, _)) = objstore::parse_object_key(&object.key) else {
            return Ok(false);
        };
        let entry = self.meta.entry(&digest)?;
        Ok(entry.and_then(|e| e.object_key).as_deref() != Some(object.key.as_str()))
    }
}
