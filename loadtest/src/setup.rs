//! The servers a scenario loads: a regcache cluster on S3, one regcache
//! replica (the embedded default), or distribution's pull-through proxy,
//! each in front of the same upstream. Started through testkit, as the
//! tests start them.

use std::time::Duration;

use testkit::{Cluster, Regcache, Registry, S3Options, S3Server};

/// The regcache servers' log filter: the one users get (no `RUST_LOG`),
/// unless `LOADTEST_RUST_LOG` sets another, e.g.
/// `info,regcache::access=debug` to see every request's tier and duration
/// in the logs `--keep` leaves.
pub fn log_env() -> Vec<(&'static str, String)> {
    std::env::var("LOADTEST_RUST_LOG")
        .map(|filter| vec![("RUST_LOG", filter)])
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Three members on one S3 bucket.
    Cluster,
    /// One replica on local disk: the embedded default.
    Single,
    /// distribution's proxy (`docker-registry` with `proxy.remoteurl`).
    Distribution,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster(3)",
            Kind::Single => "single",
            Kind::Distribution => "distribution",
        }
    }

    pub fn is_regcache(self) -> bool {
        self != Kind::Distribution
    }
}

pub enum Setup {
    // The cluster is declared before its bucket: members stop first.
    Cluster {
        cluster: Box<Cluster>,
        _s3: S3Server,
    },
    Single {
        cache: Regcache,
        _dir: tempfile::TempDir,
    },
    Distribution {
        proxy: Registry,
    },
}

impl Setup {
    pub fn start(kind: Kind, upstream_url: &str) -> anyhow::Result<Setup> {
        let log = log_env();
        Ok(match kind {
            Kind::Cluster => {
                let s3 = S3Server::start()?;
                let options = S3Options {
                    env: log.clone(),
                    ..S3Options::new(&s3)
                };
                let cluster = Cluster::start_on_s3_with(upstream_url, 3, options);
                cluster.serving(Duration::from_secs(30));
                Setup::Cluster {
                    cluster: Box::new(cluster),
                    _s3: s3,
                }
            }
            Kind::Single => {
                let dir = tempfile::tempdir()?;
                let cache = Regcache::start_url_env(upstream_url, dir.path(), &[], &log);
                Setup::Single { cache, _dir: dir }
            }
            Kind::Distribution => Setup::Distribution {
                proxy: Registry::start_proxy(upstream_url)?,
            },
        })
    }

    /// Base URLs a client spreads its requests over.
    pub fn targets(&self) -> Vec<String> {
        match self {
            Setup::Cluster { cluster, .. } => cluster
                .running()
                .into_iter()
                .map(|id| cluster.member(id).url(""))
                .collect(),
            Setup::Single { cache, .. } => vec![cache.url("")],
            Setup::Distribution { proxy } => vec![proxy.url()],
        }
    }

    /// Sum over regcache's replicas of the samples of `name` in `/metrics`
    /// (`None` for distribution, which exports none of them).
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        let replicas: Vec<&Regcache> = match self {
            Setup::Cluster { cluster, .. } => cluster
                .running()
                .into_iter()
                .map(|id| cluster.member(id))
                .collect(),
            Setup::Single { cache, .. } => vec![cache],
            Setup::Distribution { .. } => return None,
        };
        Some(
            replicas
                .into_iter()
                .map(|r| testkit::metric(&testkit::metrics(r), name, ""))
                .sum(),
        )
    }

    /// Writes each regcache server's output so far to `dir` (what `--keep`
    /// leaves to read after a surprising figure).
    pub fn save_logs(&self, dir: &std::path::Path) -> std::io::Result<()> {
        match self {
            Setup::Cluster { cluster, .. } => {
                for id in cluster.running() {
                    let logs = cluster.member(id).process.logs();
                    std::fs::write(dir.join(format!("regcache-{id}.log")), logs)?;
                }
            }
            Setup::Single { cache, .. } => std::fs::write(dir.join("regcache.log"), cache.process.logs())?,
            Setup::Distribution { .. } => {}
        }
        Ok(())
    }

    /// The largest peak resident set of the setup's server processes.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let pids: Vec<u32> = match self {
            Setup::Cluster { cluster, .. } => cluster
                .running()
                .into_iter()
                .map(|id| cluster.member(id).process.pid())
                .collect(),
            Setup::Single { cache, .. } => vec![cache.process.pid()],
            Setup::Distribution { proxy } => vec![proxy.pid()],
        };
        pids.into_iter().filter_map(peak_rss_mib).reduce(f64::max)
    }
}

/// `VmHWM` of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
