//! Layer blobs: valid tar archives of random files, streamed to disk and
//! hashed while written, so a 200 MiB layer never sits in memory and a later
//! test can unpack it with a real runtime.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::Context as _;
use flate2::write::GzEncoder;
use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore as _};
use tempfile::NamedTempFile;

use crate::digest::HashingWriter;

/// Files inside a layer are at most this large, so big layers hold several.
const MAX_FILE: u64 = 16 << 20;
/// tar's own bytes per file (header) and per archive (two zero records).
const TAR_HEADER: u64 = 512;
const TAR_TRAILER: u64 = 1024;

/// How layer blobs are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayerCompression {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`, as real images have.
    /// Compressed at the fastest level: random data does not shrink anyway.
    #[default]
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar`.
    None,
}

impl LayerCompression {
    pub(crate) fn media_type(self) -> &'static str {
        match self {
            LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }
}

/// A layer blob written into a layout's blob directory.
pub(crate) struct Layer {
    /// Digest of the blob as stored (compressed if compressed).
    pub(crate) digest: String,
    pub(crate) size: u64,
    /// Digest of the uncompressed tar, for the config's `rootfs.diff_ids`.
    pub(crate) diff_id: String,
}

/// Writes a tar of random files of about `approx_size` uncompressed bytes into
/// `blobs_dir` under its digest.
pub(crate) fn write_layer(
    blobs_dir: &Path,
    approx_size: u64,
    compression: LayerCompression,
    rng: &mut SmallRng,
) -> anyhow::Result<Layer> {
    let tmp = NamedTempFile::new_in(blobs_dir).context("creating a layer temp file")?;
    let file = HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp.as_file().try_clone()?));
    let (file, diff_id) = match compression {
        LayerCompression::Gzip => {
            let gz = GzEncoder::new(file, flate2::Compression::fast());
            let (gz, diff_id, _) = write_tar(HashingWriter::new(gz), approx_size, rng)?.finish();
            (gz.finish().context("finishing gzip")?, Some(diff_id))
        }
        LayerCompression::None => (write_tar(file, approx_size, rng)?, None),
    };
    let (buffered, digest, size) = file.finish();
    buffered
        .into_inner()
        .map_err(io::IntoInnerError::into_error)
        .context("flushing a layer")?;
    let hex = digest.trim_start_matches("sha256:");
    tmp.persist(blobs_dir.join(hex))
        .context("moving a layer into place")?;
    let diff_id = diff_id.unwrap_or_else(|| digest.clone());
    Ok(Layer {
        digest,
        size,
        diff_id,
    })
}

/// One directory named after a random id (so equal-sized layers never look
/// alike, even by path) holding files of random bytes.
fn write_tar<W: Write>(out: W, approx_size: u64, rng: &mut SmallRng) -> anyhow::Result<W> {
    let mut tar = tar::Builder::new(out);
    let dir = format!("testkit-{:016x}", rng.random::<u64>());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_mtime(MTIME);
    header.set_size(0);
    tar.append_data(&mut header, format!("{dir}/"), io::empty())
        .context("writing a tar directory entry")?;

    let mut left = approx_size.saturating_sub(2 * TAR_HEADER + TAR_TRAILER);
    let mut index = 0;
    loop {
        let size = left.min(MAX_FILE);
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_size(size);
        let data = RandomReader {
            rng: &mut *rng,
            left: size,
        };
        tar.append_data(&mut header, format!("{dir}/part-{index:04}.bin"), data)
            .context("writing a tar file entry")?;
        left = left.saturating_sub(size + TAR_HEADER);
        index += 1;
        if left == 0 {
            break;
        }
    }
    tar.into_inner().context("finishing a tar")
}

/// 2023-11-14, any fixed time: reproducible headers, plausible dates.
const MTIME: u64 = 1_700_000_000;

/// `left` bytes of fast pseudo-random data.
struct RandomReader<'a> {
    rng: &'a mut SmallRng,
    left: u64,
}

impl Read for RandomReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.rng.fill_bytes(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Stores `bytes` as a blob under its digest; returns digest and size.
pub(crate) fn write_blob(blobs_dir: &Path, bytes: &[u8]) -> anyhow::Result<(String, u64)> {
    let digest = crate::sha256_bytes(bytes);
    let path = blobs_dir.join(digest.trim_start_matches("sha256:"));
    let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((digest, bytes.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use rand::SeedableRng as _;

    fn entries(tar_bytes: impl Read) -> anyhow::Result<Vec<(String, u64)>> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.display().to_string();
            let size = entry.header().size()?;
            assert_eq!(io::copy(&mut entry, &mut io::sink())?, size);
            out.push((path, size));
        }
        Ok(out)
    }

    #[test]
    fn gzip_layer_is_a_valid_tar_with_right_digests() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut rng = SmallRng::seed_from_u64(1);
        let layer = write_layer(dir.path(), 100_000, LayerCompression::Gzip, &mut rng)?;
        let path = dir.path().join(layer.digest.trim_start_matches("sha256:"));
        assert_eq!(crate::sha256_file(&path)?, layer.digest);
        assert_eq!(std::fs::metadata(&path)?.len(), layer.size);

        let mut tar_bytes = Vec::new();
        GzDecoder::new(File::open(&path)?).read_to_end(&mut tar_bytes)?;
        assert_eq!(crate::sha256_bytes(&tar_bytes), layer.diff_id);
        assert_ne!(layer.diff_id, layer.digest);
        assert!(tar_bytes.len().abs_diff(100_000) < 1024, "{}", tar_bytes.len());

        let files = entries(tar_bytes.as_slice())?;
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files[0].0.starts_with("testkit-") && files[0].0.ends_with('/'));
        assert!(files[1].0.ends_with("/part-0000.bin"));
        Ok(())
    }

    #[test]
    fn uncompressed_layer_digest_is_its_diff_id() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut rng = SmallRng::seed_from_u64(2);
        let layer = write_layer(dir.path(), 10, LayerCompression::None, &mut rng)?;
        assert_eq!(layer.digest, layer.diff_id);
        let path = dir.path().join(layer.digest.trim_start_matches("sha256:"));
        let files = entries(File::open(&path)?)?;
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].1, 0, "a tiny layer holds one empty file");
        Ok(())
    }

    #[test]
    fn large_layers_are_split_into_several_files() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut rng = SmallRng::seed_from_u64(3);
        let layer = write_layer(dir.path(), 40 << 20, LayerCompression::None, &mut rng)?;
        let path = dir.path().join(layer.digest.trim_start_matches("sha256:"));
        let files = entries(File::open(&path)?)?;
        assert_eq!(files.len(), 4, "a directory and three files: {files:?}");
        let total: u64 = files.iter().map(|(_, n)| n).sum();
        assert!(total > 39 << 20 && layer.size <= 40 << 20, "{total}");
        Ok(())
    }
}
