//! A manifest from its owner: the member that owns a digest, or a tag
//! (by upstream, repository and tag), fetches or revalidates it once for
//! the cluster; this member checks the bytes against the digest and keeps
//! them in its local tiers (the owner records them in the index).

use oci::{Reference, RepoName};
use peer::PeerError;
use upstream::UpstreamError;

use crate::{Cache, CacheError, ManifestHit, Remote, Tier};

impl Cache {
    /// The manifest from the owner of `subject` when another member owns
    /// it. `None` when this member owns it, or the owner could not answer
    /// or sent bytes that fail their digest: then the caller fetches it.
    pub(crate) async fn manifest_from_owner(
        &self,
        src: &Remote,
        repo: &RepoName,
        reference: &Reference,
        subject: &[u8],
    ) -> Result<Option<ManifestHit>, CacheError> {
        let Some(peers) = &self.inflight.peers else {
            return Ok(None);
        };
        let Some(owner) = peers.owner_of(subject) else {
            return Ok(None);
        };
        let reply = match peers
            .fetch_manifest(&owner, src.upstream.name(), repo, reference)
            .await
        {
            Ok(reply) => reply,
            // The owner asked the same upstream: asking again is no better.
            Err(PeerError::NotFound { .. }) => return Err(UpstreamError::NotFound.into()),
            Err(e) => {
                peers.fell_back(&owner, &e);
                return Ok(None);
            }
        };
        let asked_other = matches!(reference, Reference::Digest(d) if *d != reply.digest);
        if asked_other || reply.digest.rehash(&reply.bytes) != reply.digest {
            peers.distrust(&owner);
            return Ok(None);
        }
        let hit = self
            .keep_manifest(&reply.digest, reply.bytes, Some(&reply.media_type), None, false)
            .await?;
        let tier = match reply.stale {
            true => {
                crate::telemetry::stale_tag_served(src.upstream.name());
                Tier::Stale
            }
            false => Tier::Peer,
        };
        Ok(Some(ManifestHit { tier, ..hit }))
    }
}
