//! The real skopeo, isolated per call.
//!
//! skopeo keeps a blob-info cache (a boltdb file) that every invocation opens
//! under a file lock; as root it always lives in /var/lib/containers/cache,
//! so parallel tests would share, and queue on, one lock, and one test's
//! knowledge of which blobs exist where would leak into the next. skopeo 1.9
//! has no flag for the cache location, but containers/image treats a process
//! as rootless when `_CONTAINERS_ROOTLESS_UID` is set to a non-zero uid and
//! then puts the cache under `$XDG_DATA_HOME`, which each call gets privately
//! (with its own `HOME`, `XDG_*` and `TMPDIR`).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, bail};

use crate::process::require_tool;

/// Runs `skopeo ARGS…` (e.g. `["copy", "--all", "--src-tls-verify=false", src, dst]`)
/// with a private blob-info cache, temp dir and credentials home, no
/// signature policy checks (`--insecure-policy`) and a 5 minute command
/// timeout so a stalled server fails the test instead of hanging it. TLS
/// flags are the caller's. Errors with skopeo's stderr when it exits non-zero.
pub fn skopeo(args: &[&str]) -> anyhow::Result<Output> {
    let bin = require_tool("skopeo")?;
    let home = tempfile::Builder::new()
        .prefix("testkit-skopeo-")
        .tempdir()
        .context("creating a skopeo home")?;
    let sub = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let dir = home.path().join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // XDG_RUNTIME_DIR must be private to be used at all.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(dir)
    };
    let output = Command::new(&bin)
        .args(["--insecure-policy", "--command-timeout", "5m"])
        .args(args)
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", sub("data")?)
        .env("XDG_CONFIG_HOME", sub("config")?)
        .env("XDG_RUNTIME_DIR", sub("run")?)
        .env("TMPDIR", sub("tmp")?)
        .env("_CONTAINERS_ROOTLESS_UID", "65534")
        .stdin(Stdio::null())
        .output()
        .context("running skopeo")?;
    if !output.status.success() {
        bail!(
            "skopeo {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}
