//! The responses streaming a blob straight from the object tier right now,
//! so a second request for that blob copies it to disk and follows the copy
//! instead of opening another stream from the store.

use std::collections::HashMap;
use std::sync::Mutex;

use oci::Digest;

/// Responses streaming blobs straight from the object tier: for each
/// digest, the object's key and how many responses.
#[derive(Default)]
pub(crate) struct OpenObjectStreams {
    streams: Mutex<HashMap<Digest, (String, usize)>>,
}

impl OpenObjectStreams {
    /// The key of the object a response is streaming `digest` from, if any.
    pub(crate) fn key(&self, digest: &Digest) -> Option<String> {
        self.lock().get(digest).map(|(key, _)| key.clone())
    }

    pub(crate) fn started(&self, digest: &Digest, key: &str) {
        self.lock()
            .entry(digest.clone())
            .or_insert_with(|| (key.to_owned(), 0))
            .1 += 1;
    }

    pub(crate) fn ended(&self, digest: &Digest) {
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
