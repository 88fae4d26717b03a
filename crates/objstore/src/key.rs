//! Object key names. A blob's key carries a suffix unique to the upload that
//! wrote it, and the index records which key is current: garbage collection
//! deletes exactly the keys it condemned, and a re-fetch after a sweep writes
//! a new key that no sweep can touch.

use std::time::{SystemTime, UNIX_EPOCH};

use oci::Digest;

use crate::ObjStoreError;

/// What an object holds. Manifests get their own key space so that an
/// index rebuild knows which objects to parse for references.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Blob,
    Manifest,
}

impl ObjectKind {
    fn dir(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blobs/",
            ObjectKind::Manifest => "manifests/",
        }
    }
}

/// Prefixes that together cover every key [`object_key`] makes, each a
/// sixteenth of one kind and algorithm, so a walk of the whole store (the
/// orphan sweep) lists a bounded share at a time.
pub fn object_shards() -> impl Iterator<Item = String> {
    [ObjectKind::Blob, ObjectKind::Manifest]
        .into_iter()
        .flat_map(|kind| {
            oci::Algorithm::ALL.into_iter().flat_map(move |alg| {
                (0..16u8).map(move |nibble| format!("{}{}/{nibble:x}", kind.dir(), alg.as_str()))
            })
        })
}

/// `<kind>/<alg>/<hex>/`: every upload of one digest, for a LIST.
pub fn object_prefix(kind: ObjectKind, digest: &Digest) -> String {
    format!("{}{}/{}/", kind.dir(), digest.algorithm().as_str(), digest.hex())
}

/// `<kind>/<alg>/<hex>/<upload-id>`, e.g. `blobs/sha256/<hex>/<upload-id>`.
pub fn object_key(kind: ObjectKind, digest: &Digest, upload_id: &str) -> String {
    format!("{}{upload_id}", object_prefix(kind, digest))
}

/// What a key made by [`object_key`] names; `None` for any other key (so an
/// index rebuild skips foreign objects in the bucket).
pub fn parse_object_key(key: &str) -> Option<(ObjectKind, Digest, &str)> {
    let (kind, rest) = [ObjectKind::Blob, ObjectKind::Manifest]
        .into_iter()
        .find_map(|kind| Some((kind, key.strip_prefix(kind.dir())?)))?;
    let mut parts = rest.split('/');
    let (alg, hex, upload_id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || upload_id.is_empty() {
        return None;
    }
    let digest = format!("{alg}:{hex}").parse().ok()?;
    Some((kind, digest, upload_id))
}

/// A fresh upload id: 16 hex digits of unix milliseconds, so ids sort by
/// time, then 8 random hex digits, so replicas never collide.
pub fn new_upload_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!("{millis:016x}{:08x}", rand::random::<u32>())
}

/// Keys are relative, `/`-separated, with no empty components and none
/// starting with a dot: the same rules for both kinds of store, so that a key
/// is always a safe relative path and never names a temp file of
/// [`crate::FsStore`].
pub(crate) fn check_key(key: &str) -> Result<(), ObjStoreError> {
    if !key.is_empty() && key.split('/').all(|c| !c.is_empty() && !c.starts_with('.')) {
        Ok(())
    } else {
        Err(ObjStoreError::InvalidKey(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_round_trip() {
        let digest = Digest::sha256_of(b"hello");
        let id = new_upload_id();
        let key = object_key(ObjectKind::Blob, &digest, &id);
        assert_eq!(key, format!("blobs/sha256/{}/{id}", digest.hex()));
        assert!(key.starts_with(&object_prefix(ObjectKind::Blob, &digest)));
        assert_eq!(
            parse_object_key(&key),
            Some((ObjectKind::Blob, digest.clone(), id.as_str()))
        );
        let manifest = object_key(ObjectKind::Manifest, &digest, &id);
        assert_eq!(manifest, format!("manifests/sha256/{}/{id}", digest.hex()));
        assert_eq!(
            parse_object_key(&manifest),
            Some((ObjectKind::Manifest, digest.clone(), id.as_str()))
        );
        assert_eq!(parse_object_key("blobs/sha256/abc/x"), None);
        assert_eq!(parse_object_key(&format!("blobs/sha256/{}/", digest.hex())), None);
        assert_eq!(parse_object_key(&format!("{key}/more")), None);
        assert_eq!(parse_object_key("snapshots/1"), None);
    }

    #[test]
    fn shards_cover_every_key_once() {
        let shards: Vec<String> = object_shards().collect();
        assert_eq!(shards.len(), 2 * 2 * 16);
        for kind in [ObjectKind::Blob, ObjectKind::Manifest] {
            for content in [&b"a"[..], b"b", b"c", b"d"] {
                let key = object_key(kind, &Digest::sha256_of(content), &new_upload_id());
                let covering = shards.iter().filter(|s| key.starts_with(s.as_str())).count();
                assert_eq!(covering, 1, "{key}");
            }
        }
    }

    #[test]
    fn keys_are_safe_relative_paths() {
        assert!(check_key("blobs/sha256/ab/1").is_ok());
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a/.tmp-1"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upload_ids_are_time_ordered_and_distinct() {
        let a = new_upload_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_upload_id();
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(a < b, "{a} {b}");
        assert_ne!(new_upload_id(), new_upload_id());
    }
}
