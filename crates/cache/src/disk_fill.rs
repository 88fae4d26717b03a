//! Copying a blob from the object tier to local disk after a response
//! streamed it from there. The copy waits for that response to end (or its
//! client to leave), so the two do not compete on a busy replica; a second
//! request for the blob meanwhile starts the copy at once and follows it, so
//! a herd of clients reads the object from the store once, not once each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use oci::{Digest, RepoName};
use tracing::warn;
use upstream::Upstream;

use crate::Cache;

/// Responses streaming blobs straight from the object tier: for each
/// digest, the object's key and how many responses.
#[derive(Default)]
pub(crate) struct ObjectStreams {
    streams: Mutex<HashMap<Digest, (String, usize)>>,
}

impl ObjectStreams {
    /// The key of the object a response is streaming `digest` from, if any.
    pub(crate) fn key(&self, digest: &Digest) -> Option<String> {
        self.lock().get(digest).map(|(key, _)| key.clone())
    }

    fn started(&self, digest: &Digest, key: &str) {
        self.lock()
            .entry(digest.clone())
            .or_insert_with(|| (key.to_owned(), 0))
            .1 += 1;
    }

    fn ended(&self, digest: &Digest) {
        let mut streams = self.lock();
        if let Some((_, count)) = streams.get_mut(digest) {
            *count -= 1;
            if *count == 0 {
                streams.remove(digest);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, (String, usize)>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held by a response streaming a blob from the object tier; starts the
/// copy to local disk when dropped, unless disarmed (the object turned out
/// corrupt, or unreadable).
pub(crate) struct DiskFill {
    streams: Arc<ObjectStreams>,
    inflight: Arc<crate::inflight::Inflight>,
    disk: store::DiskStore,
    upstream: Upstream,
    repo: RepoName,
    digest: Digest,
    key: String,
    armed: bool,
}

impl DiskFill {
    pub(crate) fn new(
        cache: &Cache,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        key: &str,
    ) -> DiskFill {
        cache.object_streams.started(digest, key);
        DiskFill {
            streams: Arc::clone(&cache.object_streams),
            inflight: Arc::clone(&cache.inflight),
            disk: cache.disk.clone(),
            upstream: upstream.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            key: key.to_owned(),
            armed: true,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for DiskFill {
    fn drop(&mut self) {
        self.streams.ended(&self.digest);
        // A response dropped outside the runtime (at exit) starts nothing.
        if !self.armed || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let object = Some(std::mem::take(&mut self.key));
        let started =
            self.inflight
                .join_or_start(&self.disk, &self.upstream, &self.repo, &self.digest, object);
        if let Err(e) = started {
            warn!(digest = %self.digest, error = %e, "copying a blob from the object tier to disk failed");
        }
    }
}
