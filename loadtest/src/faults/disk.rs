//! A member whose disk tier sits on a filesystem smaller than its
//! `disk_bytes` (a small tmpfs mounted for its data dir), then fills it by
//! pulling cold images through that member. Needs root (mount).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail, ensure};

/// A tmpfs mounted on a temp dir, unmounted when dropped (lazily: the member
/// using it may still run).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(mib: u64) -> anyhow::Result<Tmpfs> {
        let dir = tempfile::Builder::new().prefix("loadtest-tmpfs-").tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mounting a {mib} MiB tmpfs failed ({status}): the disk-full fault needs root");
        }
        Ok(Tmpfs { dir })
    }

    /// A data dir on it for a member; the mount stays with `self`.
    pub fn data_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix("member-")
            .tempdir_in(self.dir.path())?)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Every file of the disk tier hashes to its name: a full disk must leave
/// no torn file behind. Returns how many there are.
pub fn verify_disk_tier(data_dir: &Path) -> anyhow::Result<usize> {
    let files = testkit::files_under(&data_dir.join("blobs"));
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let digest = testkit::sha256_file(file)?;
        ensure!(
            digest == format!("sha256:{name}"),
            "{} holds {digest}",
            file.display()
        );
    }
    Ok(files.len())
}
