//! A real small filesystem for a disk that fills up: a tmpfs mounted on a
//! temp dir. Needs root (mount), as the suite does.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail, ensure};

/// A tmpfs on a temp dir, unmounted when dropped (lazily: a server using it
/// may still run).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(mib: u64) -> anyhow::Result<Tmpfs> {
        let dir = tempfile::Builder::new().prefix("testkit-tmpfs-").tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mounting a {mib} MiB tmpfs failed ({status}): it needs root");
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh directory on it (e.g. a member's data dir); the mount stays
    /// with `self`.
    pub fn subdir(&self) -> anyhow::Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new().prefix("dir-").tempdir_in(self.path())?)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Every file of a disk tier (`<data dir>/blobs/…/<hex>`) hashes to its
/// name: a full disk or a crash must leave no torn file behind. Returns how
/// many there are.
pub fn verify_disk_tier(data_dir: &Path) -> anyhow::Result<usize> {
    let files = crate::files_under(&data_dir.join("blobs"));
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let digest = crate::sha256_file(file)?;
        ensure!(
            digest == format!("sha256:{name}"),
            "{} holds {digest}",
            file.display()
        );
    }
    Ok(files.len())
}
