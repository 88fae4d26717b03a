//! The real `regcache` binary as a server under test: started on a free
//! port with its own data dir, its logs captured, stopped when dropped.
//!
//! These helpers panic (with the server's logs) when a server will not
//! start: they serve tests and the load tool, where that ends the run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Process, Registry, S3Server, raw_request};

/// Media types a client sends in `Accept` to get any manifest or index.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A running `regcache serve` with its own data dir.
pub struct Regcache {
    pub process: Process,
    pub port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Regcache {
    /// Starts regcache with `docker.io` (the default upstream) pointing at
    /// `upstream`, plus `extra` arguments.
    pub fn start(upstream: &Registry, data_dir: &Path, extra: &[&str]) -> Regcache {
        Self::start_url_env(&upstream.url(), data_dir, extra, &[])
    }

    /// Like [`Regcache::start`], with `docker.io` pointing at `upstream_url`
    /// (e.g. a `testkit::FaultProxy` in front of the registry).
    pub fn start_url(upstream_url: &str, data_dir: &Path, extra: &[&str]) -> Regcache {
        Self::start_url_env(upstream_url, data_dir, extra, &[])
    }

    /// [`Regcache::start_url`] with environment variables (e.g. the AWS
    /// credentials of a `testkit::S3Server`).
    pub fn start_url_env(
        upstream_url: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Regcache {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Self::start_with_args(data_dir, args(upstream_url, data_dir, extra), env)
    }

    /// Binds port 0 and reads the bound address from the startup log line,
    /// so parallel tests never race for a port. The log filter is the
    /// default a user gets (no `RUST_LOG`).
    fn start_with_args(data_dir: &Path, args: Vec<String>, env: Vec<(String, String)>) -> Regcache {
        let mut cmd = std::process::Command::new(regcache_bin());
        cmd.args(&args)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (k, v)));
        let process = Process::start(cmd).expect("spawning regcache");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = bound_port(&process.logs()) {
                break port;
            }
            if Instant::now() > deadline {
                panic!("regcache did not report its address:\n{}", process.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let url = format!("http://127.0.0.1:{port}/readyz");
        if let Err(e) = crate::wait_for_http(&url, Duration::from_secs(20)) {
            panic!("regcache did not become ready: {e}\n{}", process.logs());
        }
        Regcache {
            process,
            port,
            data_dir: data_dir.to_owned(),
            args,
            env,
        }
    }

    /// Stops the process (SIGTERM) and starts it again on the same data dir.
    pub fn restart(mut self) -> Regcache {
        self.process.stop();
        Self::start_with_args(&self.data_dir, self.args.clone(), std::mem::take(&mut self.env))
    }

    /// Waits until no download is left in `tmp/`: a verified blob reaches
    /// its clients before it is made durable and put in place.
    pub fn wait_for_downloads(&self) {
        let tmp = self.data_dir.join("tmp");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&tmp).expect("reading tmp/").count() > 0 {
            assert!(
                Instant::now() < deadline,
                "a temp file stays in {}",
                tmp.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn args(upstream_url: &str, data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--upstream".into(),
        format!("docker.io={upstream_url}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn bound_port(logs: &str) -> Option<u16> {
    let line = logs.lines().find(|l| l.contains("regcache serving"))?;
    let addr = line.split_whitespace().find_map(|w| w.strip_prefix("listen="))?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// The `regcache` binary built next to the running executable: a test or
/// bench binary lives in `target/<profile>/deps/`, the load tool in
/// `target/<profile>/`, and cargo puts `regcache` in `target/<profile>/`.
/// `REGCACHE_BIN` names another one.
pub fn regcache_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("REGCACHE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("regcache"))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no regcache binary next to {}: build it (cargo build -p regcache) or set REGCACHE_BIN",
                exe.display()
            )
        })
}

/// The replica's `/metrics` text.
pub fn metrics(cache: &Regcache) -> String {
    let (status, body) = raw_request(&cache.host(), "GET", "/metrics");
    assert_eq!(status, 200, "GET /metrics");
    String::from_utf8(body).expect("metrics are text")
}

/// Sum of the samples of `name` whose labels contain `label` (`""`: all).
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `--s3-*` flags for `s3`; its credentials go in the environment
/// ([`S3Server::env`]).
pub fn s3_args(s3: &S3Server) -> Vec<String> {
    s3_args_to(s3, s3.endpoint())
}

/// [`s3_args`] with the members reaching the bucket at `endpoint` (e.g. a
/// relay in front of the server).
pub(crate) fn s3_args_to(s3: &S3Server, endpoint: String) -> Vec<String> {
    vec![
        "--s3-bucket".into(),
        s3.bucket().into(),
        "--s3-endpoint".into(),
        endpoint,
        "--s3-force-path-style".into(),
    ]
}

/// A replica storing content in `s3`, with `docker.io` pointing at
/// `upstream_url` (a registry's or a fault proxy's).
pub fn start_s3_replica(upstream_url: &str, s3: &S3Server, data_dir: &Path) -> Regcache {
    let args = s3_args(s3);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Regcache::start_url_env(upstream_url, data_dir, &args, &s3.env())
}
