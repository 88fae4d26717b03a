use bytes::Bytes;
use meta::{Command, Entry, TagKey, TagRecord};
use objstore::ObjectKind;
use oci::{Digest, Reference, RepoName, Tag, media_types, parse_manifest};
use store::MemoryObject;
use tracing::warn;
use upstream::FetchedManifest;

use crate::{Cache, CacheError, Remote, Tier, Via, forget_evicted, unix_now};

/// A manifest ready to send, with the exact bytes and media type the
/// upstream gave (never re-serialized, so its digest holds).
#[derive(Clone, Debug)]
pub struct ManifestHit {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub tier: Tier,
}

impl Cache {
    /// Serves a manifest by tag or digest. `accept` holds the request's
    /// Accept header values; the stored media type must be among them.
    pub async fn manifest(
        &self,
        src: &Remote,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<ManifestHit, CacheError> {
        let hit = self.manifest_via(src, repo, reference, Via::Owner).await?;
        self.meta.record_access(&hit.digest);
        crate::telemetry::request("manifest", hit.tier);
        if !media_types::accepts(accept.iter().copied(), &hit.media_type) {
            return Err(CacheError::NotAcceptable {
                media_type: hit.media_type,
            });
        }
        Ok(hit)
    }

    /// Serves a manifest to another member that asked this one, its owner:
    /// never through a third member. Not counted as an access: the asking
    /// member notes its clients' accesses.
    pub async fn manifest_for_peer(
        &self,
        src: &Remote,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHit, CacheError> {
        self.manifest_via(src, repo, reference, Via::Upstream).await
    }

    async fn manifest_via(
        &self,
        src: &Remote,
        repo: &RepoName,
        reference: &Reference,
        via: Via,
    ) -> Result<ManifestHit, CacheError> {
        match reference {
            Reference::Digest(digest) => self.manifest_by_digest(src, repo, digest, via).await,
            Reference::Tag(tag) => self.manifest_by_tag(src, repo, tag, via).await,
        }
    }

    /// Manifests by digest are immutable: once stored, never asked upstream again.
    async fn manifest_by_digest(
        &self,
        src: &Remote,
        repo: &RepoName,
        digest: &Digest,
        via: Via,
    ) -> Result<ManifestHit, CacheError> {
        if let Some(hit) = self.stored_manifest(digest).await? {
            return Ok(hit);
        }
        let _fetching = self.manifest_locks.lock(digest).await;
        if let Some(hit) = self.stored_manifest(digest).await? {
            return Ok(hit);
        }
        let reference = Reference::Digest(digest.clone());
        if via == Via::Owner
            && let Some(hit) = self
                .manifest_from_owner(src, repo, &reference, digest.to_string().as_bytes())
                .await?
        {
            return Ok(hit);
        }
        let fetched = self.fetch_manifest(src, repo, &reference).await?;
        verify(src, digest, &fetched.bytes)?;
        self.store_manifest(digest, fetched.bytes, &fetched.media_type)
            .await
    }

    /// A manifest already in a tier: memory, local disk, or the object tier.
    async fn stored_manifest(&self, digest: &Digest) -> Result<Option<ManifestHit>, CacheError> {
        if let Some(MemoryObject {
            bytes,
            media_type: Some(media_type),
        }) = self.memory.get(digest).await
        {
            self.disk.touch(digest);
            let digest = digest.clone();
            return Ok(Some(ManifestHit {
                digest,
                media_type,
                bytes,
                tier: Tier::Memory,
            }));
        }
        let entry = self.meta.entry(digest)?;
        let Some(blob) = self.disk.open_blob(digest)? else {
            return self.manifest_from_objects(digest, entry).await;
        };
        if blob.size() > self.settings.max_manifest_bytes {
            return Err(CacheError::ManifestInvalid(format!(
                "stored object of {} bytes is not a manifest",
                blob.size()
            )));
        }
        let bytes = blob.read_all().await.map_err(|source| CacheError::LocalIo {
            digest: digest.clone(),
            source,
        })?;
        let media_type = match entry.and_then(|e| e.media_type) {
            Some(media_type) => media_type,
            None => {
                parse_manifest(None, &bytes)
                    .map_err(|e| CacheError::ManifestInvalid(e.to_string()))?
                    .media_type
            }
        };
        let object = MemoryObject {
            bytes: bytes.clone(),
            media_type: Some(media_type.clone()),
        };
        self.memory.insert(digest.clone(), object).await;
        Ok(Some(ManifestHit {
            digest: digest.clone(),
            media_type,
            bytes,
            tier: Tier::Disk,
        }))
    }

    /// A manifest another replica stored in the object tier, verified and
    /// kept in the local tiers.
    async fn manifest_from_objects(
        &self,
        digest: &Digest,
        entry: Option<Entry>,
    ) -> Result<Option<ManifestHit>, CacheError> {
        let Some(objects) = &self.objects else {
            return Ok(None);
        };
        let hint = entry.as_ref().and_then(|e| e.object_key.clone());
        let max = self.settings.max_manifest_bytes;
        let Some((key, bytes)) = objects.read_small(ObjectKind::Manifest, digest, hint, max).await else {
            return Ok(None);
        };
        if digest.rehash(&bytes) != *digest {
            objects.discard_corrupt(&key).await;
            return Ok(None);
        }
        let media_type = entry.and_then(|e| e.media_type);
        let hit = self
            .keep_manifest(digest, bytes, media_type.as_deref(), Some(key), true)
            .await?;
        Ok(Some(ManifestHit {
            tier: Tier::Object,
            ..hit
        }))
    }

    /// Stores a manifest fetched from the upstream in every tier.
    async fn store_manifest(
        &self,
        digest: &Digest,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<ManifestHit, CacheError> {
        let object_key = match &self.objects {
            Some(objects) => {
                objects
                    .put_small(ObjectKind::Manifest, digest, bytes.clone())
                    .await
            }
            None => None,
        };
        self.keep_manifest(digest, bytes, Some(content_type), object_key, true)
            .await
    }

    /// Writes a verified manifest to disk and memory and, with `record`,
    /// records it in the index (with the object key holding it, if any);
    /// without, its owner did.
    pub(crate) async fn keep_manifest(
        &self,
        digest: &Digest,
        bytes: Bytes,
        content_type: Option<&str>,
        object_key: Option<String>,
        record: bool,
    ) -> Result<ManifestHit, CacheError> {
        let info =
            parse_manifest(content_type, &bytes).map_err(|e| CacheError::ManifestInvalid(e.to_string()))?;
        let mut writer = self.disk.writer(digest)?;
        writer.append(bytes.clone()).await?;
        let committed = writer.commit().await?;
        let object = MemoryObject {
            bytes: bytes.clone(),
            media_type: Some(info.media_type.clone()),
        };
        self.memory.insert(digest.clone(), object).await;
        let hit = ManifestHit {
            digest: digest.clone(),
            media_type: info.media_type.clone(),
            bytes,
            tier: Tier::Upstream,
        };
        if !record {
            forget_evicted(&self.meta, committed.evicted).await;
            return Ok(hit);
        }
        let entry = Entry::manifest(
            committed.size,
            info.media_type.clone(),
            info.references,
            unix_now().as_secs(),
            object_key,
        );
        // Unrecorded, the manifest is still served from the local tiers.
        if let Err(e) = self
            .meta
            .propose(Command::PutEntry {
                digest: digest.clone(),
                entry,
            })
            .await
        {
            warn!(digest = %digest, error = %e, "recording manifest in the index failed");
        }
        forget_evicted(&self.meta, committed.evicted).await;
        Ok(hit)
    }

    /// Serves a tag's manifest from its record while fresh; past the TTL,
    /// revalidates with a HEAD (free on Docker Hub) and fetches only a
    /// changed digest; serves the old digest while the upstream fails, for
    /// up to `max_stale`. One revalidation per tag at a time on this member,
    /// and with `Via::Owner`, in the cluster: the tag's owner revalidates.
    async fn manifest_by_tag(
        &self,
        src: &Remote,
        repo: &RepoName,
        tag: &Tag,
        via: Via,
    ) -> Result<ManifestHit, CacheError> {
        let key = TagKey {
            upstream: src.upstream.name().to_owned(),
            repo: repo.as_str().to_owned(),
            tag: tag.as_str().to_owned(),
        };
        self.meta.record_tag_request(&key);
        let ttl_ms = src.tag_ttl.as_millis() as u64;
        let fresh = |r: &TagRecord| unix_now().as_millis() as u64 <= r.checked_at_ms.saturating_add(ttl_ms);
        if let Some(record) = self.meta.tag(&key)?.filter(fresh) {
            return self.manifest_by_digest(src, repo, &record.digest, via).await;
        }
        let _revalidating = self.tag_locks.lock(&key).await;
        let record = self.meta.tag(&key)?;
        if let Some(record) = record.as_ref().filter(|r| fresh(r)) {
            return self.manifest_by_digest(src, repo, &record.digest, via).await;
        }
        if via == Via::Owner
            && let Some(hit) = self
                .manifest_from_owner(src, repo, &Reference::Tag(tag.clone()), &tag_subject(&key))
                .await?
        {
            return Ok(hit);
        }
        let error = match self.revalidate(src, repo, tag, &key, record.is_some(), via).await {
            Ok(hit) => return Ok(hit),
            Err(e) => e,
        };
        let stale_limit = ttl_ms.saturating_add(self.settings.max_stale.as_millis() as u64);
        let servable =
            |r: &&TagRecord| unix_now().as_millis() as u64 <= r.checked_at_ms.saturating_add(stale_limit);
        match (&error, record.as_ref().filter(servable)) {
            (CacheError::Upstream(e), Some(record)) if e.is_unavailable() => {
                warn!(upstream = src.upstream.name(), repo = %repo, tag = %tag, error = %e, "serving stale tag");
                crate::telemetry::stale_tag_served(&key.upstream);
                let hit = self.manifest_by_digest(src, repo, &record.digest, via).await?;
                Ok(ManifestHit {
                    tier: Tier::Stale,
                    ..hit
                })
            }
            _ => Err(error),
        }
    }

    async fn revalidate(
        &self,
        src: &Remote,
        repo: &RepoName,
        tag: &Tag,
        key: &TagKey,
        known: bool,
        via: Via,
    ) -> Result<ManifestHit, CacheError> {
        let reference = Reference::Tag(tag.clone());
        // With an object tier, another replica may hold the manifest already:
        // a HEAD (free on Docker Hub) then finds it by digest.
        if known || self.objects.is_some() {
            let head = src
                .upstream
                .head_manifest(repo, &reference, media_types::ALL_MANIFESTS)
                .await?;
            if let Some(digest) = head.digest {
                let hit = self.manifest_by_digest(src, repo, &digest, via).await?;
                self.set_tag(key, &hit).await;
                return Ok(hit);
            }
        }
        let fetched = self.fetch_manifest(src, repo, &reference).await?;
        let digest = match fetched.digest_header {
            Some(claimed) => {
                verify(src, &claimed, &fetched.bytes)?;
                claimed
            }
            None => Digest::sha256_of(&fetched.bytes),
        };
        let hit = match self.stored_manifest(&digest).await? {
            Some(hit) => hit,
            None => {
                self.store_manifest(&digest, fetched.bytes, &fetched.media_type)
                    .await?
            }
        };
        self.set_tag(key, &hit).await;
        Ok(hit)
    }

    /// One bounded GET, asking for every manifest type so the stored
    /// manifest serves every client.
    async fn fetch_manifest(
        &self,
        src: &Remote,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, CacheError> {
        let limit = self.settings.max_manifest_bytes;
        Ok(src
            .upstream
            .get_manifest(repo, reference, media_types::ALL_MANIFESTS, limit)
            .await?)
    }

    /// Records what the upstream said the tag is. When that cannot commit
    /// (no Raft quorum), the answer is still served and the next request
    /// asks the upstream again.
    async fn set_tag(&self, key: &TagKey, hit: &ManifestHit) {
        let record = TagRecord {
            digest: hit.digest.clone(),
            media_type: hit.media_type.clone(),
            checked_at_ms: unix_now().as_millis() as u64,
            requested_at: unix_now().as_secs(),
        };
        let cmd = Command::SetTag {
            key: key.clone(),
            record,
        };
        if let Err(e) = self.meta.propose(cmd).await {
            warn!(upstream = key.upstream, repo = key.repo, tag = key.tag, error = %e, "recording tag failed");
        }
    }
}

/// What a tag's owner is ranked by: its key, with the separators the index
/// uses (no part contains a NUL).
fn tag_subject(key: &TagKey) -> Vec<u8> {
    format!("{}\0{}\0{}", key.upstream, key.repo, key.tag).into_bytes()
}

/// Checks manifest bytes against the digest they were asked or announced by.
fn verify(src: &Remote, expected: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
    let actual = expected.rehash(bytes);
    if &actual != expected {
        crate::telemetry::digest_mismatch(src.upstream.name());
        return Err(CacheError::ManifestDigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}
