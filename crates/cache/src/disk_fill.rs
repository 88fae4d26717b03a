//! Copying a blob from the object tier to local disk after a response
//! streamed it from there. The copy waits for that response to end (or its
//! client to leave), so the two do not compete on a busy replica; a second
//! request for the blob meanwhile starts the copy at once and follows it, so
//! a herd of clients reads the object from the store once, not once each.

use std::sync::Arc;

use oci::{Digest, RepoName};
use tracing::warn;
use upstream::Upstream;

use crate::Cache;
use crate::inflight::{Inflight, Origin};
use crate::object_streams::OpenObjectStreams;

/// Held by a response streaming a blob from the object tier; starts the
/// copy to local disk when dropped, unless disarmed (the object turned out
/// corrupt, or unreadable).
pub(crate) struct DiskFill {
    streams: Arc<OpenObjectStreams>,
    inflight: Arc<Inflight>,
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

    /// Where the blob comes from when the object fails.
    pub(crate) fn source(&self) -> (&Upstream, &RepoName, &Digest) {
        (&self.upstream, &self.repo, &self.digest)
    }
}

impl Drop for DiskFill {
    fn drop(&mut self) {
        self.streams.ended(&self.digest);
        // A response dropped outside the runtime (at exit) starts nothing.
        if !self.armed || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let object = Origin::Object(std::mem::take(&mut self.key));
        let started =
            self.inflight
                .join_or_start(&self.disk, &self.upstream, &self.repo, &self.digest, object);
        if let Err(e) = started {
            warn!(digest = %self.digest, error = %e, "copying a blob from the object tier to disk failed");
        }
    }
}
