//! `regcache index rebuild`: disaster recovery when every metadata volume is
//! lost. The object tier holds every stored blob and manifest under keys
//! that name their digest, so listing it is enough to rebuild the content
//! index; manifests are read again for their media type and references.
//! Tags are not in the bucket: they resolve again from the upstreams on the
//! first pull.

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::fmt;
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use cache::ObjectTier;
use meta::{Command, Entry, Meta};
use objstore::{ObjectInfo, ObjectKind, ObjectStore};
use oci::{Digest, parse_manifest};
use tracing::warn;

use crate::config::Config;
use crate::serve;

/// What a rebuild found.
#[derive(Debug, Default)]
pub struct Report {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub manifests: u64,
    /// Older uploads of a digest stored again later (GC removes them).
    pub superseded: u64,
    /// Keys regcache did not write (other data in the bucket), skipped.
    pub foreign: u64,
    /// Manifest objects that could not be read, verified or parsed.
    pub unreadable: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "index rebuilt: blobs={} blob_bytes={} manifests={} superseded={} foreign={} unreadable={}",
            self.blobs, self.blob_bytes, self.manifests, self.superseded, self.foreign, self.unreadable
        )
    }
}

pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let store = serve::object_store(&config.storage).await?.context(
        "there is no object tier to rebuild from: with [storage] kind = \"fs\" and no path, content \
         lives in the disk tier alone and is served without the index",
    )?;
    let newest = newest_objects(&store).await?;
    let meta_dir = serve::meta_dir(&config.data_dir)?;
    let meta = Meta::open_offline(&meta_dir).context(
        "the index can only be rebuilt where the metadata was lost: this replica still has its raft state",
    )?;
    let objects = ObjectTier::new(store);
    let mut report = newest.report;
    for ((kind, digest), object) in newest.objects {
        let entry = match kind {
            ObjectKind::Blob => {
                report.blobs += 1;
                report.blob_bytes += object.size;
                let last_access = unix_secs(&object);
                Entry::blob(object.size, last_access, Some(object.key))
            }
            ObjectKind::Manifest => {
                match manifest_entry(&objects, &digest, object, config.cache.max_manifest_bytes).await {
                    Some(entry) => {
                        report.manifests += 1;
                        entry
                    }
                    None => {
                        report.unreadable += 1;
                        continue;
                    }
                }
            }
        };
        meta.propose(Command::PutEntry { digest, entry })
            .await
            .context("writing the index")?;
    }
    Ok(report)
}

struct Newest {
    objects: HashMap<(ObjectKind, Digest), ObjectInfo>,
    report: Report,
}

/// The newest upload of every digest (upload ids sort by time).
async fn newest_objects(store: &ObjectStore) -> anyhow::Result<Newest> {
    let mut newest = Newest {
        objects: HashMap::new(),
        report: Report::default(),
    };
    for prefix in ["blobs/", "manifests/"] {
        let listed = store
            .list(prefix)
            .await
            .with_context(|| format!("listing {prefix} in the object store"))?;
        for object in listed {
            let Some((kind, digest, _)) = objstore::parse_object_key(&object.key) else {
                newest.report.foreign += 1;
                continue;
            };
            match newest.objects.entry((kind, digest)) {
                Slot::Vacant(v) => {
                    v.insert(object);
                }
                Slot::Occupied(mut o) => {
                    newest.report.superseded += 1;
                    if object.key > o.get().key {
                        o.insert(object);
                    }
                }
            }
        }
    }
    Ok(newest)
}

/// Reads, verifies and parses one manifest object.
async fn manifest_entry(
    objects: &ObjectTier,
    digest: &Digest,
    object: ObjectInfo,
    max: u64,
) -> Option<Entry> {
    let last_access = unix_secs(&object);
    let (key, bytes) = objects
        .read_small(ObjectKind::Manifest, digest, Some(object.key.clone()), max)
        .await?;
    if digest.rehash(&bytes) != *digest {
        warn!(key, "manifest object does not match its digest, skipped");
        return None;
    }
    let info = match parse_manifest(None, &bytes) {
        Ok(info) => info,
        Err(e) => {
            warn!(key, error = %e, "manifest object does not parse, skipped");
            return None;
        }
    };
    Some(Entry::manifest(
        bytes.len() as u64,
        info.media_type,
        info.references,
        last_access,
        Some(key),
    ))
}

/// The object's upload time stands in for its last access.
fn unix_secs(object: &ObjectInfo) -> u64 {
    object
        .last_modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
