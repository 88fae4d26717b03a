//! Responses streamed straight from the object tier, for blobs the local
//! disk lacks: the client is not held back by the local copy, which starts
//! once the response ends (see [`DiskFill`]). A whole blob is checked as it
//! streams, against the CRC-64/NVME the index recorded when the blob was
//! verified, or against its digest when the index has none (an object found
//! by listing); the final chunk is sent only after the check passed, so a
//! corrupt object never completes a response.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use objstore::{ObjStoreError, ObjectBody};
use oci::{Digest, DigestHasher};

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

/// Streams `body` (the object at `key`, or a range of it) to a client.
/// `check` is for whole objects only; `fill` runs when the stream is
/// dropped, unless it failed.
pub(crate) fn stream(
    objects: &Arc<ObjectTier>,
    key: String,
    body: ObjectBody,
    check: Option<Check>,
    fill: DiskFill,
) -> BodyStream {
    let reading = Reading {
        remaining: body.len(),
        body: objects.watched(body).boxed(),
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
    body: BoxStream<'static, Result<Bytes, ObjStoreError>>,
    /// Bytes still to come.
    remaining: u64,
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
            match self.body.next().await {
                Some(Ok(chunk)) if chunk.len() as u64 <= self.remaining => chunk,
                Some(Ok(_)) => return Some(Err(self.failed("object longer than announced"))),
                Some(Err(e)) => return Some(Err(self.failed(&e.to_string()))),
                None => return Some(Err(self.failed("object ended early"))),
            }
        } else if self.check.is_some() {
            // An empty object is checked too.
            Bytes::new()
        } else {
            return None;
        };
        self.remaining -= chunk.len() as u64;
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

    /// A failed read copies nothing to disk: the object is gone, corrupt
    /// or unreachable.
    fn failed(&mut self, why: &str) -> std::io::Error {
        self.fill.disarm();
        std::io::Error::other(format!("reading {} from the object store: {why}", self.key))
    }
}
