//! Object key names. A blob's key carries a suffix unique to the upload that
//! wrote it, and the index records which key is current: garbage collection
//! deletes exactly the keys it condemned, and a re-fetch after a sweep writes
//! a new key that no sweep can touch.

use std::time::{SystemTime, UNIX_EPOCH};

use oci::Digest;

use crate::ObjStoreError;

const BLOBS: &str = "blobs/";

/// `blobs/<alg>/<hex>/<upload-id>`.
pub fn blob_key(digest: &Digest, upload_id: &str) -> String {
    format!(
        "{BLOBS}{}/{}/{upload_id}",
        digest.algorithm().as_str(),
        digest.hex()
    )
}

/// The digest and upload id a key made by [`blob_key`] names; `None` for any
/// other key (so an index rebuild skips foreign objects in the bucket).
pub fn parse_blob_key(key: &str) -> Option<(Digest, &str)> {
    let mut parts = key.strip_prefix(BLOBS)?.split('/');
    let (alg, hex, upload_id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || upload_id.is_empty() {
        return None;
    }
    let digest = format!("{alg}:{hex}").parse().ok()?;
    Some((digest, upload_id))
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
    fn blob_keys_round_trip() {
        let digest = Digest::sha256_of(b"hello");
        let id = new_upload_id();
        let key = blob_key(&digest, &id);
        assert_eq!(key, format!("blobs/sha256/{}/{id}", digest.hex()));
        assert_eq!(parse_blob_key(&key), Some((digest.clone(), id.as_str())));
        assert_eq!(parse_blob_key("blobs/sha256/abc/x"), None);
        assert_eq!(parse_blob_key(&format!("blobs/sha256/{}/", digest.hex())), None);
        assert_eq!(parse_blob_key(&format!("{key}/more")), None);
        assert_eq!(parse_blob_key("snapshots/1"), None);
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
