//! Records for tests, shared by meta's unit tests and its integration tests
//! (with the `test-util` feature).

use oci::Digest;

use crate::{Command, Entry, TagKey, TagRecord};

/// A digest numbered `n`.
pub fn digest(n: u32) -> Digest {
    Digest::sha256_of(&n.to_be_bytes())
}

pub fn key(upstream: &str, repo: &str, tag: &str) -> TagKey {
    TagKey {
        upstream: upstream.into(),
        repo: repo.into(),
        tag: tag.into(),
    }
}

/// A tag record pointing at digest `n`.
pub fn record(n: u32, checked_at_ms: u64) -> TagRecord {
    TagRecord {
        digest: digest(n),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        checked_at_ms,
    }
}

pub fn blob(size: u64, last_access: u64) -> Entry {
    Entry::blob(size, last_access, None)
}

pub fn manifest(size: u64, refs: Vec<Digest>, last_access: u64) -> Entry {
    let media_type = "application/vnd.oci.image.manifest.v1+json".into();
    Entry::manifest(size, media_type, refs, last_access, None)
}

/// Sets `library/alpine:TAG` on docker.io to record `n`.
pub fn set_tag(tag: &str, n: u32) -> Command {
    Command::SetTag {
        key: key("docker.io", "library/alpine", tag),
        record: record(n, u64::from(n)),
    }
}
