//! The embedded default: a local directory laid out like the bucket, one
//! file per key. Objects are written to a temp file in the key's directory,
//! fsynced and renamed into place, so a key never names half an object; temp
//! files left by a crash are what [`FsStore::abort_stale_uploads`] removes.

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::key::{check_key, new_upload_id};
use crate::{ObjStoreError, ObjectBody, ObjectInfo};

/// Name prefix of in-progress uploads; keys cannot start a component with a
/// dot, so no key names one.
const TMP_PREFIX: &str = ".tmp-";

#[derive(Clone, Debug)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root`, created if missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<FsStore, ObjStoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| ObjStoreError::io(&root, e))?;
        Ok(FsStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, ObjStoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    pub(crate) async fn put_file(&self, key: &str, src: &Path, size: u64) -> Result<(), ObjStoreError> {
        let dest = self.path(key)?;
        let src = src.to_owned();
        blocking(move || {
            let (mut file, tmp) = create_temp(&dest)?;
            let copied = std::fs::File::open(&src)
                .and_then(|mut from| io::copy(&mut from, &mut file))
                .map_err(|e| ObjStoreError::io(&src, e));
            let done = copied.and_then(|copied| {
                if copied != size {
                    return Err(ObjStoreError::Request {
                        operation: "put_file",
                        detail: format!("{} has {copied} bytes, expected {size}", src.display()),
                    });
                }
                file.sync_all().map_err(|e| ObjStoreError::io(&tmp, e))?;
                std::fs::rename(&tmp, &dest).map_err(|e| ObjStoreError::io(&dest, e))
            });
            if done.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            done
        })
        .await
    }

    pub(crate) fn multipart(&self, key: &str) -> Result<FsWriter, ObjStoreError> {
        Ok(FsWriter {
            dest: self.path(key)?,
            tmp: None,
        })
    }

    pub(crate) async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<ObjectBody>, ObjStoreError> {
        let path = self.path(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ObjStoreError::io(&path, e)),
        };
        let size = file
            .metadata()
            .await
            .map_err(|e| ObjStoreError::io(&path, e))?
            .len();
        let (start, end) = range.unwrap_or((0, size));
        if range.is_some() && start >= size {
            return Err(ObjStoreError::InvalidRange { start, end });
        }
        let end = end.min(size);
        file.seek(io::SeekFrom::Start(start))
            .await
            .map_err(|e| ObjStoreError::io(&path, e))?;
        Ok(Some(ObjectBody::fs(file.take(end - start), path, end - start)))
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<u64>, ObjStoreError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ObjStoreError::io(&path, e)),
        }
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjStoreError> {
        if prefix.starts_with('/') || prefix.split('/').any(|c| c == "." || c == "..") {
            return Err(ObjStoreError::InvalidKey(prefix.to_owned()));
        }
        // Only the directory the prefix's complete components name is walked.
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..=i]).to_owned();
        let (root, prefix) = (self.root.clone(), prefix.to_owned());
        blocking(move || {
            let mut found = Vec::new();
            walk(&root.join(&dir), &dir, &prefix, &mut |key, path, meta| {
                if key.starts_with(&prefix) && !is_temp(path) {
                    found.push(ObjectInfo {
                        key: key.to_owned(),
                        size: meta.len(),
                        last_modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    });
                }
            })?;
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
        .await
    }

    pub(crate) async fn delete(&self, keys: &[String]) -> Result<(), ObjStoreError> {
        let paths = keys.iter().map(|k| self.path(k)).collect::<Result<Vec<_>, _>>()?;
        let root = self.root.clone();
        blocking(move || {
            for path in paths {
                match std::fs::remove_file(&path) {
                    Ok(()) => prune_empty_dirs(&root, &path),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(ObjStoreError::io(&path, e)),
                }
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize, ObjStoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let root = self.root.clone();
        blocking(move || {
            let mut stale = Vec::new();
            walk(&root, "", "", &mut |_, path, meta| {
                if is_temp(path) && meta.modified().is_ok_and(|m| m <= cutoff) {
                    stale.push(path.to_owned());
                }
            })?;
            let mut aborted = 0;
            for path in stale {
                match std::fs::remove_file(&path) {
                    Ok(()) => aborted += 1,
                    // Completed or aborted meanwhile.
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(ObjStoreError::io(&path, e)),
                }
            }
            Ok(aborted)
        })
        .await
    }
}

/// An upload into a temp file next to its key, renamed into place on
/// complete and removed if dropped before.
pub(crate) struct FsWriter {
    dest: PathBuf,
    /// Created on the first write, so an unused writer leaves nothing behind.
    tmp: Option<(tokio::fs::File, PathBuf)>,
}

impl FsWriter {
    async fn file(&mut self) -> Result<&mut tokio::fs::File, ObjStoreError> {
        if self.tmp.is_none() {
            let dest = self.dest.clone();
            let (file, tmp) = blocking(move || create_temp(&dest)).await?;
            self.tmp = Some((tokio::fs::File::from_std(file), tmp));
        }
        let (file, _) = self.tmp.as_mut().expect("the temp file was just created");
        Ok(file)
    }

    pub(crate) async fn write(&mut self, chunk: Bytes) -> Result<(), ObjStoreError> {
        let result = self.file().await?.write_all(&chunk).await;
        result.map_err(|e| ObjStoreError::io(&self.dest, e))
    }

    pub(crate) async fn complete(mut self) -> Result<(), ObjStoreError> {
        self.file().await?;
        let (mut file, tmp) = self.tmp.take().expect("file() created the temp file");
        let synced = async {
            file.flush().await?;
            file.sync_all().await
        }
        .await
        .map_err(|e| ObjStoreError::io(&tmp, e));
        drop(file);
        let renamed = synced
            .and_then(|()| std::fs::rename(&tmp, &self.dest).map_err(|e| ObjStoreError::io(&self.dest, e)));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        renamed
    }

    pub(crate) fn abort(self) {
        // Drop removes the temp file.
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        if let Some((_, tmp)) = self.tmp.take() {
            // Already gone if a stale-upload sweep took it.
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ObjStoreError> + Send + 'static,
) -> Result<T, ObjStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ObjStoreError::Io {
            path: PathBuf::new(),
            source: io::Error::other(e),
        })?
}

/// A new temp file in `dest`'s directory. The directory is created first; a
/// concurrent delete may prune it again before the file exists, hence the
/// retries.
fn create_temp(dest: &Path) -> Result<(std::fs::File, PathBuf), ObjStoreError> {
    let dir = dest.parent().expect("a checked key has a parent directory");
    let tmp = dir.join(format!("{TMP_PREFIX}{}", new_upload_id()));
    let mut attempts = 0;
    loop {
        attempts += 1;
        std::fs::create_dir_all(dir).map_err(|e| ObjStoreError::io(dir, e))?;
        match std::fs::File::create_new(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == ErrorKind::NotFound && attempts < 5 => {}
            Err(e) => return Err(ObjStoreError::io(&tmp, e)),
        }
    }
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(TMP_PREFIX))
}

/// Calls `visit(key, path, metadata)` for every file below `dir`, whose key
/// prefix is `key_prefix`, skipping directories whose keys cannot start
/// with `only` (so a sharded listing reads only its shard). A missing
/// directory has no files.
fn walk(
    dir: &Path,
    key_prefix: &str,
    only: &str,
    visit: &mut dyn FnMut(&str, &Path, &std::fs::Metadata),
) -> Result<(), ObjStoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ObjStoreError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ObjStoreError::io(dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not a key this store wrote
        };
        let path = entry.path();
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Deleted or renamed since read_dir.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(ObjStoreError::io(&path, e)),
        };
        let key = format!("{key_prefix}{name}");
        if meta.is_dir() {
            let dir_key = format!("{key}/");
            if dir_key.starts_with(only) || only.starts_with(&dir_key) {
                walk(&path, &dir_key, only, visit)?;
            }
        } else if meta.is_file() {
            visit(&key, &path, &meta);
        }
    }
    Ok(())
}

/// Removes the now empty directories above a deleted file, up to the root.
fn prune_empty_dirs(root: &Path, deleted: &Path) {
    let mut dir = deleted.parent();
    while let Some(d) = dir {
        if d == root || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
