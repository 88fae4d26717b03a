//! A real Debian `docker-registry` (distribution 2.8) on a free loopback port,
//! with its access log parsed so tests can count what reached the upstream.
//!
//! distribution writes one Apache combined-format line per request on stdout,
//! after the handler returned:
//!
//! ```text
//! 127.0.0.1 - - [23/Nov/2026:10:15:44 +0000] "HEAD /v2/foo/manifests/x?ns=docker.io HTTP/1.1" 404 91 "" "curl/7.88.1"
//! ```
//!
//! and logrus lines (`time=… level=info msg="response completed" …`) on
//! stderr. A client can see its response complete before the line has gone
//! through the pipe, so reading the log first sends a marker request and waits
//! until the marker's own line arrives: every request that finished before is
//! then in the log.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::http;
use crate::process::{Process, require_tool};

/// Query of the marker requests; their lines never show up in `requests()`.
const SYNC_PATH: &str = "/v2/?testkit-sync=";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// One parsed access-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    /// Request target as sent, query included (`/v2/a/blobs/sha256:…?ns=x`).
    pub path: String,
    pub status: u16,
}

/// A `docker-registry` process with its own temp storage; dropping it kills
/// the process and removes the storage.
pub struct Registry {
    // Declared before `dir`: the process dies before its storage is removed.
    process: Process,
    port: u16,
    log: Arc<AccessLog>,
    sync_seq: AtomicU64,
    stopped: bool,
    dir: TempDir,
}

impl Registry {
    /// Starts a plain registry (push and pull, deletes enabled) and waits until
    /// `/v2/` answers.
    pub fn start() -> anyhow::Result<Registry> {
        Self::start_with(None)
    }

    /// Starts distribution as a pull-through cache of `remote_url`, the
    /// reference to compare regcache against.
    pub fn start_proxy(remote_url: &str) -> anyhow::Result<Registry> {
        Self::start_with(Some(remote_url))
    }

    fn start_with(remote_url: Option<&str>) -> anyhow::Result<Registry> {
        let bin = require_tool("docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("testkit-registry-")
            .tempdir()
            .context("creating the registry dir")?;
        let log = Arc::new(AccessLog::default());
        // Another process may take the port between free_port() and the bind.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = http::free_port();
            write_config(dir.path(), port, remote_url)?;
            let mut process = spawn(&bin, dir.path(), &log)?;
            match wait_ready(&mut process, port) {
                Ok(()) => {
                    let registry = Registry {
                        process,
                        port,
                        log,
                        sync_seq: AtomicU64::new(0),
                        stopped: false,
                        dir,
                    };
                    registry.clear_log();
                    return Ok(registry);
                }
                Err(_) if attempts < 3 && process.logs().contains("address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The registry process's id (e.g. to read its peak memory).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT`, for image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The storage root (`docker/registry/v2/…` below it), e.g. to corrupt a
    /// blob behind the registry's back.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Every request finished so far (since the last [`Registry::clear_log`]),
    /// in the order the registry logged them.
    pub fn requests(&self) -> Vec<AccessLine> {
        self.sync();
        self.log.lock().lines.clone()
    }

    /// How many logged requests have this method and a path containing
    /// `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|l| l.method == method && l.path.contains(path_contains))
            .count()
    }

    /// Forgets the requests logged so far (the raw [`Registry::logs`] stay).
    pub fn clear_log(&self) {
        self.sync();
        self.log.lock().lines.clear();
    }

    /// Everything the registry printed, both streams, for debugging.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Kills the registry to simulate an upstream outage; storage and port
    /// are kept for [`Registry::restart`]. The log keeps what it had.
    pub fn stop(&mut self) {
        self.process.kill();
        self.stopped = true;
    }

    /// Starts the registry again on the same port and storage (after
    /// [`Registry::stop`], or as a restart).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let bin = require_tool("docker-registry")?;
        self.process = spawn(&bin, self.dir.path(), &self.log)?;
        wait_ready(&mut self.process, self.port)?;
        self.stopped = false;
        self.clear_log();
        Ok(())
    }

    /// Makes sure every request that finished before this call is in the log.
    fn sync(&self) {
        if self.stopped {
            return; // killed and reaped: the readers drained the pipes already
        }
        let n = self.sync_seq.fetch_add(1, Ordering::SeqCst);
        let url = format!("{}{SYNC_PATH}{n}", self.url());
        if http::get(&url, SYNC_TIMEOUT).is_err() {
            return; // the registry died; nothing more will be logged
        }
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let mut state = self.log.lock();
        while !state.markers.contains(&n) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                eprintln!("testkit: registry access log marker {n} did not arrive");
                return;
            }
            state = self
                .log
                .marker_seen
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[derive(Default)]
struct AccessLog {
    state: Mutex<LogState>,
    marker_seen: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<AccessLine>,
    markers: BTreeSet<u64>,
}

impl AccessLog {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by the process reader threads with every output line.
    fn observe(&self, line: &str) {
        let Some(access) = parse_access_line(line) else {
            return;
        };
        let mut state = self.lock();
        match access.path.strip_prefix(SYNC_PATH) {
            Some(n) => {
                if let Ok(n) = n.parse() {
                    state.markers.insert(n);
                    self.marker_seen.notify_all();
                }
            }
            None => state.lines.push(access),
        }
    }
}

/// Parses `IP - USER [TIME] "METHOD TARGET PROTO" STATUS SIZE "REFERER" "AGENT"`;
/// `None` for anything else (the logrus lines on stderr).
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let rest = &line[line.find("] \"")? + 3..];
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let (method, path, proto) = (parts.next()?, parts.next()?, parts.next()?);
    let is_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if parts.next().is_some() || !is_method || !proto.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(AccessLine {
        method: method.into(),
        path: path.into(),
        status,
    })
}

fn write_config(dir: &Path, port: u16, remote_url: Option<&str>) -> anyhow::Result<()> {
    let root = dir.join("storage");
    let root = root.to_str().context("temp dir path is not utf-8")?;
    // JSON strings are YAML strings: quoting without a YAML library.
    let root = serde_json::to_string(root)?;
    let proxy = match remote_url {
        Some(url) => format!("proxy:\n  remoteurl: {}\n", serde_json::to_string(url)?),
        None => String::new(),
    };
    let config = format!(
        "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: testkit-not-a-secret
{proxy}"
    );
    std::fs::write(dir.join("config.yml"), config).context("writing the registry config")
}

fn spawn(bin: &Path, dir: &Path, log: &Arc<AccessLog>) -> anyhow::Result<Process> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg(dir.join("config.yml"));
    let log = Arc::clone(log);
    Process::spawn_command(cmd, Box::new(move |line| log.observe(line)))
}

/// Waits until `/v2/` answers 200, failing early (with the logs) if the
/// process exits first, e.g. because the port was taken.
fn wait_ready(process: &mut Process, port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/v2/");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if http::expect_status(&url, 200, Duration::from_secs(2)).is_ok() {
            return Ok(());
        }
        if let Some(status) = process.wait_exit(Duration::ZERO) {
            bail!(
                "docker-registry exited ({status}) before answering on port {port}:\n{}",
                process.logs()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "docker-registry did not answer {url} within {READY_TIMEOUT:?}:\n{}",
                process.logs()
            );
        }
        thread::sleep(Duration::from_millis(25));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_combined_log_format() {
        let line = r#"127.0.0.1 - - [23/Nov/2026:10:15:44 +0000] "HEAD /v2/foo/manifests/x?ns=docker.io HTTP/1.1" 404 91 "" "curl/7.88.1""#;
        assert_eq!(
            parse_access_line(line),
            Some(AccessLine {
                method: "HEAD".into(),
                path: "/v2/foo/manifests/x?ns=docker.io".into(),
                status: 404,
            })
        );
    }

    #[test]
    fn ignores_logrus_lines() {
        for line in [
            r#"time="2026-11-23T10:15:43.26Z" level=info msg="listening on 127.0.0.1:45999" go.version=go1.19.8"#,
            r#"time="2026-11-23T10:15:44.76Z" level=info msg="response completed" http.request.method=GET http.request.uri=/v2/ http.response.status=200"#,
            r#"x [t] "GET /v2/" 200"#,
            "",
        ] {
            assert_eq!(parse_access_line(line), None, "{line}");
        }
    }

    #[test]
    fn markers_are_recorded_not_logged() {
        let log = AccessLog::default();
        log.observe(r#"127.0.0.1 - - [t] "GET /v2/?testkit-sync=7 HTTP/1.1" 200 2 "" "x""#);
        log.observe(r#"127.0.0.1 - - [t] "GET /v2/ HTTP/1.1" 200 2 "" "x""#);
        let state = log.lock();
        assert!(state.markers.contains(&7));
        assert_eq!(state.lines.len(), 1);
    }
}
