//! sha256 digests in the `sha256:<hex>` form registries use.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of a byte slice.
pub fn sha256_bytes(b: &[u8]) -> String {
    format_digest(Sha256::digest(b).as_slice())
}

/// `sha256:<hex>` of a file, read in 1 MiB pieces so large blobs never sit in
/// memory.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format_digest(hasher.finalize().as_slice()))
}

/// `sha256:<hex>` and length of the object at `key` (or its `range`) in
/// `store`, hashed as it streams; fails when the body is not as long as
/// the store announced.
pub async fn sha256_object(
    store: &objstore::ObjectStore,
    key: &str,
    range: Option<(u64, u64)>,
) -> anyhow::Result<(String, u64)> {
    use futures_util::TryStreamExt as _;
    let mut body = store
        .get(key, range)
        .await?
        .with_context(|| format!("{key} is missing"))?;
    let announced = body.len();
    let mut hasher = Sha256::new();
    let mut len = 0;
    while let Some(chunk) = body.try_next().await? {
        hasher.update(&chunk);
        len += chunk.len() as u64;
    }
    anyhow::ensure!(
        len == announced,
        "{key}: body of {len} bytes announced {announced}"
    );
    Ok((format_digest(hasher.finalize().as_slice()), len))
}

fn format_digest(hash: &[u8]) -> String {
    format!("sha256:{}", hex::encode(hash))
}

/// A writer that hashes and counts everything passing through it, so a blob's
/// digest and size are known the moment it has been written, without reading
/// it back.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The wrapped writer, the `sha256:` digest and the byte count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        let digest = format_digest(self.hasher.finalize().as_slice());
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_one_shot_digest() -> anyhow::Result<()> {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ")?;
        w.write_all(b"world")?;
        let (bytes, digest, size) = w.finish();
        assert_eq!(digest, sha256_bytes(b"hello world"));
        assert_eq!(size, 11);
        assert_eq!(bytes, b"hello world");
        assert_eq!(
            sha256_bytes(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        Ok(())
    }

    #[test]
    fn file_digest_matches_bytes_digest() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data)?;
        assert_eq!(sha256_file(&path)?, sha256_bytes(&data));
        Ok(())
    }
}
