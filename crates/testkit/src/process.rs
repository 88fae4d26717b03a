//! A child process whose stdout and stderr are captured by background threads,
//! killed when dropped so a failing test never leaves servers behind.

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Called with every line the process prints, from the reader threads.
pub(crate) type LineHook = Box<dyn Fn(&str) + Send + Sync>;

/// How much of the captured output a panicking test prints on drop.
const LOG_TAIL_ON_PANIC: usize = 64 << 10;

/// A spawned process of ours (e.g. the regcache binary) with captured logs,
/// killed on drop.
pub struct Process {
    child: Child,
    name: String,
    output: Arc<Output>,
    exit: Option<ExitStatus>,
}

/// Output shared with the reader threads.
struct Output {
    state: Mutex<OutputState>,
    /// Signalled when a reader thread reaches end of file.
    closed: Condvar,
    hook: LineHook,
}

#[derive(Default)]
struct OutputState {
    text: String,
    open_streams: usize,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Process {
    /// Starts `bin` with `args` and extra environment `envs`; stdin is closed,
    /// stdout and stderr are captured (see [`Process::logs`]).
    pub fn spawn(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> anyhow::Result<Process> {
        let mut cmd = Command::new(bin);
        cmd.args(args).envs(envs.iter().copied());
        Self::start(cmd)
    }

    /// Starts a prepared command (e.g. one with variables removed from its
    /// environment), capturing its output like [`Process::spawn`].
    pub fn start(cmd: Command) -> anyhow::Result<Process> {
        Self::spawn_command(cmd, Box::new(|_| {}))
    }

    /// Starts a prepared command and hands each output line to `hook` as well.
    pub(crate) fn spawn_command(mut cmd: Command, hook: LineHook) -> anyhow::Result<Process> {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map_or_else(|| "process".into(), |n| n.to_string_lossy().into_owned());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        let output = Arc::new(Output {
            state: Mutex::new(OutputState {
                text: String::new(),
                open_streams: 2,
            }),
            closed: Condvar::new(),
            hook,
        });
        let stdout = child.stdout.take().context("child stdout was not piped")?;
        let stderr = child.stderr.take().context("child stderr was not piped")?;
        for (stream, reader) in [
            ("stdout", Box::new(stdout) as Box<dyn Read + Send>),
            ("stderr", Box::new(stderr)),
        ] {
            let output = Arc::clone(&output);
            thread::Builder::new()
                .name(format!("{name}-{stream}"))
                .spawn(move || capture(reader, &output))
                .context("spawning a log reader thread")?;
        }
        Ok(Process {
            child,
            name,
            output,
            exit: None,
        })
    }

    /// Captured stdout and stderr so far, interleaved line by line in the order
    /// they were read.
    pub fn logs(&self) -> String {
        self.output.lock().text.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the process and everything it started, then wait for the
    /// exit. Idempotent.
    pub fn kill(&mut self) {
        if self.exit.is_some() {
            return;
        }
        // Children are looked up before the kill (orphans can no longer be
        // told apart; they would run on and hold the output pipes open), with
        // the process frozen so that it cannot start more meanwhile.
        signal("STOP", &[self.pid()]);
        let descendants = descendants(self.pid());
        // Fails only when the process is gone already; wait() reaps it either way.
        let _ = self.child.kill();
        signal("KILL", &descendants);
        self.reap();
    }

    /// SIGTERM without waiting, to stop several processes at once; follow
    /// with [`Process::stop`] to wait for each.
    pub fn terminate(&self) -> bool {
        self.exit.is_some() || signal("TERM", &[self.pid()])
    }

    /// SIGTERM, wait up to 10 s for a graceful exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        if !signal("TERM", &[self.pid()]) || self.wait_exit(Duration::from_secs(10)).is_none() {
            self.kill();
        }
    }

    /// Waits up to `timeout` for the process to exit by itself (a zero timeout
    /// just polls); `Some(status)` once it has exited, its output then fully
    /// captured.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => {
                    self.reap();
                    return self.exit;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                // Still running, or try_wait itself failed: either way not exited.
                _ => return None,
            }
        }
    }

    /// Collects the exit status and waits (bounded: a grandchild may hold the
    /// pipes open) until the reader threads have drained the output.
    fn reap(&mut self) {
        self.exit = self.child.wait().ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut state = self.output.lock();
        while state.open_streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .output
                .closed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows its output; the harness only prints it then.
        if thread::panicking() {
            let logs = self.logs();
            let mut start = logs.len().saturating_sub(LOG_TAIL_ON_PANIC);
            while !logs.is_char_boundary(start) {
                start += 1;
            }
            eprintln!(
                "---- output of {} (pid {}) ----\n{}\n---- end of output of {} ----",
                self.name,
                self.pid(),
                &logs[start..],
                self.name
            );
        }
    }
}

/// The full path of an executable on `PATH`, or an error that says how to get
/// it: the real parts tests use come from Debian packages.
pub(crate) fn require_tool(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| format!("{name} is not installed: run scripts/install-test-deps.sh (as root)"))
}

/// Sends a signal with kill(1): std can only SIGKILL its own children, and
/// unsafe (libc) is forbidden. True if every process got it.
fn signal(name: &str, pids: &[u32]) -> bool {
    if pids.is_empty() {
        return true;
    }
    Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Every process below `root`, from the parent pids in /proc/*/stat.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // "PID (COMM) STATE PPID …"; COMM may contain spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.split_off(1)
}

/// Reads one stream line by line into the shared output until end of file.
fn capture(reader: Box<dyn Read + Send>, output: &Output) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                (output.hook)(line);
                let mut state = output.lock();
                state.text.push_str(line);
                state.text.push('\n');
            }
        }
    }
    output.lock().open_streams -= 1;
    output.closed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> anyhow::Result<Process> {
        Process::spawn(Path::new("/bin/sh"), &["-c", script], &[("GREETING", "hi")])
    }

    #[test]
    fn captures_both_streams_and_env() -> anyhow::Result<()> {
        let mut p = sh("echo \"$GREETING out\"; echo oops >&2; exit 3")?;
        let status = p.wait_exit(Duration::from_secs(10)).context("no exit")?;
        assert_eq!(status.code(), Some(3));
        let logs = p.logs();
        assert!(logs.contains("hi out\n"), "{logs}");
        assert!(logs.contains("oops\n"), "{logs}");
        Ok(())
    }

    #[test]
    fn stop_terminates_gracefully_and_kill_is_idempotent() -> anyhow::Result<()> {
        let mut p = sh("trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.logs().contains("ready") && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(p.wait_exit(Duration::ZERO).is_none());
        p.stop();
        assert!(p.logs().contains("bye"), "{}", p.logs());
        assert_eq!(p.wait_exit(Duration::ZERO).and_then(|s| s.code()), Some(0));
        p.kill();
        p.stop();
        Ok(())
    }

    #[test]
    fn kill_ends_a_process_at_once() -> anyhow::Result<()> {
        let mut p = sh("sleep 600")?;
        let started = Instant::now();
        p.kill();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(p.wait_exit(Duration::ZERO).is_some());
        Ok(())
    }

    #[test]
    fn kill_ends_the_children_too() -> anyhow::Result<()> {
        let mut p = sh("sleep 600 & sleep 600 & echo started; wait")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.logs().contains("started") && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let children = descendants(p.pid());
        assert_eq!(children.len(), 2, "{children:?}");
        let started = Instant::now();
        p.kill();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the pipes were left open"
        );
        thread::sleep(Duration::from_millis(100));
        for child in children {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            assert!(
                stat.is_empty() || stat.contains(") Z "),
                "{child} lives on: {stat}"
            );
        }
        Ok(())
    }

    #[test]
    fn finds_tools_on_path() {
        assert!(require_tool("sh").is_ok());
        let err = require_tool("testkit-no-such-tool").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("install-test-deps.sh")));
    }

    #[test]
    fn spawn_of_a_missing_binary_fails() {
        assert!(Process::spawn(Path::new("/nonexistent/bin"), &[], &[]).is_err());
    }
}
