//! Responses streamed straight from the object tier, for blobs the local
//! disk lacks: the client is not held back by the local copy, which starts
//! once the response ends (see [`DiskFill`]). A whole blob is checked as it
//! streams, against the CRC-64/NVME the index recorded when the blob was
//! verified, or against its digest when the index has none (an object found
//! by listing); the final chunk is sent only after the check passed, so a
//! corrupt object never completes a response.
//!
//! An object that fails mid-stream (deleted by a sweep, the store gone) is
//! not an error to the client: the rest comes from the upstream, from the
//! offset reached, and the client sees only a pause.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use objstore::ObjectBody;
use oci::{Digest, DigestHasher};
use tracing::warn;

use crate::BodyStream;
use crate::disk_fill::DiskFill;
use crate::object_tier::ObjectTier;

/// How a whole object is checked as it streams.
pub(crate) enum Check {
    Crc64nvme { expected: u64, crc: crc_fast::Digest },
    Digest { expected: Digest, hasher: DigestHasher },
}

impl Check {
    /// The cheap check when the index recorded the CRC, else the digest.
    pub(crate) fn new(digest: &Digest, crc64nvme: Option<u64>) -> Check {
        let check = match crc64nvme {
            Some(expected) => Check::Crc64nvme {
                expected,
                crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme),
            },
            None => Check::Digest {
                expected: digest.clone(),
                hasher: digest.hasher(),
            },
        };
        crate::telemetry::objstore_checked_read(check.name());
        check
    }

    fn name(&self) -> &'static str {
        match self {
            Check::Crc64nvme { .. } => "crc64nvme",
            Check::Digest { .. } => "digest",
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        match self {
            Check::Crc64nvme { crc, .. } => crc.update(chunk),
            Check::Digest { hasher, .. } => hasher.update(chunk),
        }
    }

    fn passed(self) -> bool {
        match self {
            Check::Crc64nvme { expected, crc } => crc.finalize() == expected,
            Check::Digest { expected, hasher } => hasher.finish() == expected,
        }
    }
}

/// Streams `body` (the object at `key`, or the range of it from `start`)
/// to a client. `check` is for whole objects only; `fill` runs when the
/// stream is dropped, unless it failed.
pub(crate) fn stream(
    objects: &Arc<ObjectTier>,
    key: String,
    body: ObjectBody,
    start: u64,
    check: Option<Check>,
    fill: DiskFill,
) -> BodyStream {
    let reading = Reading {
        remaining: body.len(),
        position: start,
        body: objects.watched(body).map_err(std::io::Error::other).boxed(),
        resumed: false,
        check,
        unchecked: None,
        objects: Arc::clone(objects),
        key,
        fill,
    };
    futures_util::stream::unfold(Some(reading), |state| async move {
        let mut reading = state?;
        let item = reading.next().await?;
        let next = item.is_ok().then_some(reading);
        Some((item, next))
    })
    .boxed()
}

struct Reading {
    /// The object, or the upstream once the object failed.
    body: BoxStream<'static, std::io::Result<Bytes>>,
    /// Bytes still to come.
    remaining: u64,
    /// Where in the blob the next byte is.
    position: u64,
    /// The upstream took over already (once per response).
    resumed: bool,
    /// `None` for a range, or once done.
    check: Option<Check>,
    /// The chunk sent last, not checked yet.
    unchecked: Option<Bytes>,
    objects: Arc<ObjectTier>,
    key: String,
    fill: DiskFill,
}

impl Reading {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        // The chunk sent last is checked now, while the client receives it,
        // rather than between receiving and sending it.
        if let (Some(check), Some(sent)) = (&mut self.check, self.unchecked.take()) {
            check.update(&sent);
        }
        let chunk = if self.remaining > 0 {
            loop {
                let failure = match self.body.next().await {
                    Some(Ok(chunk)) if chunk.len() as u64 <= self.remaining => break chunk,
                    Some(Ok(_)) => "longer than announced".to_owned(),
                    Some(Err(e)) => e.to_string(),
                    None => "ended early".to_owned(),
                };
                if let Err(e) = self.resume_from_upstream(&failure).await {
                    return Some(Err(e));
                }
            }
        } else if self.check.is_some() {
            // An empty object is checked too.
            Bytes::new()
        } else {
            return None;
        };
        self.remaining -= chunk.len() as u64;
        self.position += chunk.len() as u64;
        let Some(check) = &mut self.check else {
            return Some(Ok(chunk));
        };
        if self.remaining > 0 {
            self.unchecked = Some(chunk.clone());
            return Some(Ok(chunk));
        }
        // The final chunk goes out only once everything matched.
        check.update(&chunk);
        if let Some(check) = self.check.take()
            && !check.passed()
        {
            // Whole but wrong: no request may ever be served it again.
            self.objects.discard_corrupt(&self.key).await;
            return Some(Err(self.failed("object does not match its digest")));
        }
        Some(Ok(chunk))
    }

    /// Goes on from the upstream where the object failed (a ranged GET
    /// from `position`). The check (for a whole blob) goes on over the
    /// bytes from there, so what the client gets is still verified end to
    /// end. Only once: a second failure is the response's.
    async fn resume_from_upstream(&mut self, failure: &str) -> Result<(), std::io::Error> {
        let failure = format!("object {failure}");
        if self.resumed {
            return Err(self.failed(&failure));
        }
        self.resumed = true;
        self.fill.disarm();
        warn!(
            key = self.key,
            position = self.position,
            reason = failure,
            "object failed mid-stream; going on from the upstream"
        );
        crate::telemetry::objstore_read_resumed();
        let (upstream, repo, digest) = self.fill.source();
        let blob = match upstream.get_blob_from(repo, digest, self.position).await {
            Ok(blob) => blob,
            Err(e) => return Err(self.failed(&format!("{failure}, and the upstream failed: {e}"))),
        };
        self.body = blob.body.map_err(std::io::Error::other).boxed();
        Ok(())
    }

    /// A failed read copies nothing to disk: the object is gone, corrupt
    /// or unreachable.
    fn failed(&mut self, why: &str) -> std::io::Error {
        self.fill.disarm();
        std::io::Error::other(format!("reading {} from the object store: {why}", self.key))
    }
}
