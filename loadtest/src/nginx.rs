//! nginx serving blob files from disk with sendfile: the ceiling for
//! serving bytes over HTTP/1.1 on this machine, and the anchor of the blob
//! figures.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use testkit::Process;

pub struct Nginx {
    process: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves each `(digest, file)` at `/v2/<repo>/blobs/<digest>`, the URL
    /// a registry client asks for. Files are hard-linked (copied across
    /// filesystems), so nginx reads the very bytes the upstream got.
    pub fn start(repo: &str, blobs: &[(String, &Path)]) -> anyhow::Result<Nginx> {
        let dir = tempfile::Builder::new().prefix("loadtest-nginx-").tempdir()?;
        let root = dir.path().join("root");
        let blob_dir = root.join(format!("v2/{repo}/blobs"));
        std::fs::create_dir_all(&blob_dir)?;
        std::fs::create_dir_all(dir.path().join("tmp"))?;
        for (digest, file) in blobs {
            let link = blob_dir.join(digest);
            if std::fs::hard_link(file, &link).is_err() {
                std::fs::copy(file, &link).with_context(|| format!("copying {}", file.display()))?;
            }
        }
        let port = testkit::free_port();
        let d = dir.path().display();
        // As root, workers would drop to nobody, who can't enter a 0700
        // temp dir. keepalive_requests: nginx closes a connection after
        // 1000 requests by default, the caches never do; don't make it pay
        // reconnects.
        let user = if is_root() { "user root;" } else { "" };
        let conf = format!(
            "{user}
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {d}/root;
    }}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let conf_arg = conf_path.display().to_string();
        let prefix = format!("{d}/");
        let process = Process::spawn(
            Path::new("nginx"),
            &["-c", &conf_arg, "-p", &prefix, "-g", "daemon off;"],
            &[],
        )
        .context("starting nginx (installed by scripts/install-test-deps.sh)")?;
        let nginx = Nginx {
            process,
            port,
            _dir: dir,
        };
        testkit::wait_for_http(&nginx.url(), Duration::from_secs(10))
            .with_context(|| format!("nginx did not start:\n{}", nginx.process.logs()))?;
        Ok(nginx)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The master and its workers: nginx's CPU time is theirs together.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.process.pid();
        let mut pids = vec![master];
        pids.extend(crate::cpu::children(master));
        pids
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}
