//! A streamed object body, whichever kind of store it comes from.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures_util::Stream;
use tokio::fs::File;
use tokio::io::Take;
use tokio_util::io::ReaderStream;

use crate::ObjStoreError;

/// Read size for local files: large enough for few syscalls, small enough to
/// keep memory flat with many readers.
const FS_CHUNK: usize = 256 << 10;

/// The bytes of an object (or of the requested range), as a stream of chunks.
pub struct ObjectBody {
    len: u64,
    inner: Inner,
}

enum Inner {
    Fs(ReaderStream<Take<File>>, PathBuf),
    S3(ByteStream),
}

impl ObjectBody {
    pub(crate) fn fs(file: Take<File>, path: PathBuf, len: u64) -> ObjectBody {
        ObjectBody {
            len,
            inner: Inner::Fs(ReaderStream::with_capacity(file, FS_CHUNK), path),
        }
    }

    pub(crate) fn s3(stream: ByteStream, len: u64) -> ObjectBody {
        ObjectBody {
            len,
            inner: Inner::S3(stream),
        }
    }

    /// How many bytes the stream yields (the range's length for a ranged
    /// get).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Stream for ObjectBody {
    type Item = Result<Bytes, ObjStoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().inner {
            Inner::Fs(s, path) => Pin::new(s)
                .poll_next(cx)
                .map_err(|e| ObjStoreError::io(path.clone(), e)),
            Inner::S3(s) => Pin::new(s)
                .poll_next(cx)
                .map_err(|e| ObjStoreError::body("get_object", e)),
        }
    }
}

impl std::fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBody")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
