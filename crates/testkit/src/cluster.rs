//! N real `regcache` processes forming one Raft group on loopback, sharing
//! an object tier (a directory or an S3 bucket), in front of one real
//! upstream registry; optionally with a relay on each member's cluster port
//! to cut one off (fault injection).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::regcache::{ACCEPT_ALL, Regcache, s3_args_to};
use crate::{TcpRelay, raw_request, raw_request_with};

/// A running group. Members are indexed by node id; a stopped member keeps
/// its data dir and cluster port so it can start again.
pub struct Cluster {
    upstream_url: String,
    config: PathBuf,
    ports: BTreeMap<u64, u16>,
    dirs: BTreeMap<u64, TempDir>,
    members: BTreeMap<u64, Option<Regcache>>,
    extra: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// A relay in front of each member's cluster port when started with
    /// [`S3Options::relayed`]: the address its peers know it by.
    relays: BTreeMap<u64, TcpRelay>,
    partition: Partition,
    /// Holds the config and the shared object tier.
    _shared: TempDir,
}

/// How [`Cluster::start_on_s3_with`] starts a group.
pub struct S3Options<'a> {
    pub s3: &'a crate::S3Server,
    /// Added to every member's config file.
    pub toml: &'a str,
    /// Listed as peers but not started.
    pub absent: Vec<u64>,
    /// More environment for every member (e.g. `RUST_LOG`).
    pub env: Vec<(&'static str, String)>,
    /// Where the members reach S3 instead of the server itself (e.g. a
    /// [`TcpRelay`] in front of it).
    pub s3_endpoint: Option<String>,
    /// Raft and peer traffic through a relay per member, so that
    /// [`Cluster::isolate`] can cut one off from the others.
    pub relayed: bool,
}

impl<'a> S3Options<'a> {
    pub fn new(s3: &'a crate::S3Server) -> S3Options<'a> {
        S3Options {
            s3,
            toml: "",
            absent: Vec::new(),
            env: Vec::new(),
            s3_endpoint: None,
            relayed: false,
        }
    }
}

/// Which member is cut off, and which process is which member: the relays'
/// gates read both.
#[derive(Clone, Default)]
struct Partition {
    isolated: Arc<Mutex<Option<u64>>>,
    members: Arc<Mutex<BTreeMap<u32, u64>>>,
}

impl Partition {
    /// Makes `relay`, in front of member `id`, refuse traffic between the
    /// isolated member and the others, both ways.
    fn gate(&self, id: u64, relay: &TcpRelay) {
        let partition = self.clone();
        relay.set_gate(Box::new(move |pid| {
            let isolated = *partition.isolated.lock().unwrap_or_else(PoisonError::into_inner);
            let members = partition.members.lock().unwrap_or_else(PoisonError::into_inner);
            let source = pid.and_then(|pid| members.get(&pid).copied());
            isolated.is_some_and(|cut| cut == id || source == Some(cut))
        }));
    }
}

impl Cluster {
    /// Starts members 1..=n, all listing each other as peers; `extra` goes
    /// to every member's arguments (e.g. `--snapshot-every 10`).
    pub fn start(upstream_url: &str, n: u64, extra: &[&str]) -> Cluster {
        Self::start_with_config(upstream_url, n, "", extra)
    }

    /// [`Cluster::start`] with `toml` added to every member's config file
    /// (e.g. a `[cache]` table).
    pub fn start_with_config(upstream_url: &str, n: u64, toml: &str, extra: &[&str]) -> Cluster {
        let shared = tempfile::tempdir().expect("shared dir");
        let objects = shared.path().join("objects");
        let text = format!("{toml}\n[storage]\nkind = \"fs\"\npath = {objects:?}\n");
        let mut cluster = Self::launch(upstream_url, n, shared, &text, extra, Vec::new());
        for id in 1..=n {
            cluster.start_member(id);
        }
        cluster
    }

    /// [`Cluster::start_with_config`] with the object tier in `s3`'s bucket.
    pub fn start_on_s3(upstream_url: &str, n: u64, toml: &str, s3: &crate::S3Server) -> Cluster {
        Self::start_on_s3_except(upstream_url, n, toml, s3, &[])
    }

    /// [`Cluster::start_on_s3`] with the members in `absent` listed as peers
    /// but not started: the test runs them itself, at [`Cluster::cluster_addr`].
    pub fn start_on_s3_except(
        upstream_url: &str,
        n: u64,
        toml: &str,
        s3: &crate::S3Server,
        absent: &[u64],
    ) -> Cluster {
        let options = S3Options {
            toml,
            absent: absent.to_vec(),
            ..S3Options::new(s3)
        };
        Self::start_on_s3_with(upstream_url, n, options)
    }

    /// Members 1..=n on `options.s3`'s bucket, as the options say.
    pub fn start_on_s3_with(upstream_url: &str, n: u64, options: S3Options<'_>) -> Cluster {
        let shared = tempfile::tempdir().expect("shared dir");
        let endpoint = options.s3_endpoint.unwrap_or_else(|| options.s3.endpoint());
        let args = s3_args_to(options.s3, endpoint);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env = options.s3.env();
        env.extend(options.env);
        let mut cluster = Self::launch(upstream_url, n, shared, options.toml, &args, env);
        if options.relayed {
            for (id, port) in &cluster.ports {
                let relay = TcpRelay::start(&format!("127.0.0.1:{port}")).expect("a relay");
                cluster.partition.gate(*id, &relay);
                cluster.relays.insert(*id, relay);
            }
        }
        for id in (1..=n).filter(|id| !options.absent.contains(id)) {
            cluster.start_member(id);
        }
        cluster
    }

    /// The cluster's state, no member started yet.
    fn launch(
        upstream_url: &str,
        n: u64,
        shared: TempDir,
        text: &str,
        extra: &[&str],
        env: Vec<(&'static str, String)>,
    ) -> Cluster {
        let config = shared.path().join("regcache.toml");
        std::fs::write(&config, text).expect("config");
        let ports = (1..=n).map(|id| (id, crate::stable_port())).collect();
        Cluster {
            upstream_url: upstream_url.to_owned(),
            config,
            ports,
            dirs: BTreeMap::new(),
            members: BTreeMap::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
            relays: BTreeMap::new(),
            partition: Partition::default(),
            _shared: shared,
        }
    }

    /// The shared `fs` object tier's directory.
    pub fn objects_dir(&self) -> PathBuf {
        self._shared.path().join("objects")
    }

    /// Starts (or restarts) member `id` on its data dir. A new id gets a
    /// port and lists every known member, so it is never the lowest id and
    /// waits to be added instead of forming a group of its own.
    pub fn start_member(&mut self, id: u64) {
        let port = *self.ports.entry(id).or_insert_with(crate::stable_port);
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().expect("data dir"))
            .path()
            .to_owned();
        let mut args = vec![
            "--config".to_owned(),
            self.config.display().to_string(),
            "--node-id".to_owned(),
            id.to_string(),
            "--cluster-listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        for (peer, port) in &self.ports {
            args.push("--peer".to_owned());
            args.push(match self.relays.get(peer) {
                Some(relay) => format!("{peer}={}", relay.addr()),
                None => format!("{peer}=127.0.0.1:{port}"),
            });
        }
        if let Some(relay) = self.relays.get(&id) {
            args.push("--cluster-advertise".to_owned());
            args.push(relay.addr());
        }
        args.extend(self.extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let member = Regcache::start_url_env(&self.upstream_url, &dir, &refs, &self.env);
        let mut members = self
            .partition
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        members.insert(member.process.pid(), id);
        drop(members);
        self.members.insert(id, Some(member));
    }

    /// Starts member `id` on `dir` (e.g. a small filesystem mounted there)
    /// instead of a data dir of its own.
    pub fn start_member_in(&mut self, id: u64, dir: TempDir) {
        assert!(!self.dirs.contains_key(&id), "member {id} has a data dir already");
        self.dirs.insert(id, dir);
        self.start_member(id);
    }

    /// Cuts member `id` off from the others, both ways, connections open
    /// included; clients still reach it. Needs [`S3Options::relayed`].
    pub fn isolate(&self, id: u64) {
        assert!(!self.relays.is_empty(), "isolate needs a relayed cluster");
        *self
            .partition
            .isolated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(id);
        self.relays.values().for_each(TcpRelay::enforce);
    }

    /// Ends [`Cluster::isolate`].
    pub fn heal(&self) {
        *self
            .partition
            .isolated
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub fn member(&self, id: u64) -> &Regcache {
        self.members
            .get(&id)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("member {id} is not running"))
    }

    /// The running members' ids.
    pub fn running(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter_map(|(id, m)| m.as_ref().map(|_| *id))
            .collect()
    }

    pub fn cluster_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[&id])
    }

    /// SIGKILL: no shutdown, no flush, as when a node dies.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut member) = self.members.get_mut(&id).and_then(Option::take) {
            member.process.kill();
        }
    }

    /// SIGTERM and wait, as when a pod is deleted; returns its logs.
    pub fn stop(&mut self, id: u64) -> String {
        let mut member = self
            .members
            .get_mut(&id)
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("member {id} is not running"));
        member.process.stop();
        member.process.logs()
    }

    /// SIGTERM to every running member at once (a whole StatefulSet
    /// deleted), then waits for each; returns their logs.
    pub fn stop_all(&mut self) -> Vec<String> {
        for member in self.members.values().flatten() {
            assert!(member.process.terminate(), "SIGTERM to a member");
        }
        let ids = self.running();
        ids.into_iter().map(|id| self.stop(id)).collect()
    }

    /// Member `id`'s `/status.json`.
    pub fn status_json(&self, id: u64) -> serde_json::Value {
        let (code, body) = raw_request(&self.member(id).host(), "GET", "/status.json");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("status json")
    }

    /// `/status.json`'s `raft` object as member `id` sees it.
    pub fn status(&self, id: u64) -> serde_json::Value {
        self.status_json(id)["raft"].clone()
    }

    /// Waits until every running member in `among` names the same leader,
    /// itself one of them, and that leader can commit; returns its id.
    pub fn leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<_> = among.iter().map(|id| self.status(*id)).collect();
            let leader = views[0]["leader"].as_u64();
            if let Some(leader) = leader
                && among.contains(&leader)
                && views.iter().all(|v| v["leader"].as_u64() == Some(leader))
                && views.iter().all(|v| v["writable"] == true)
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}: {views:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the running members agree on a leader that can commit
    /// and each knows the owner key, so a cold blob is fetched once for the
    /// group (peer streaming) rather than by whoever was asked; returns the
    /// leader.
    pub fn serving(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let running = self.running();
        let leader = self.leader(&running, timeout);
        for id in running {
            crate::wait_until(
                deadline.saturating_duration_since(Instant::now()),
                &format!("member {id} learns the owner key"),
                || self.status_json(id)["peers"]["owner_key"] == true,
            );
        }
        leader
    }

    /// Waits until member `id` has applied everything member `leader` has
    /// committed.
    pub fn caught_up(&self, id: u64, leader: u64, timeout: Duration) {
        let target = self.status(leader)["commit_index"].as_u64();
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.status(id);
            if view["applied_index"].as_u64() >= target {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} never caught up to {target:?}: {view:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        self.dirs[&id].path()
    }
}

/// GETs a manifest by tag through `member`; returns its digest.
pub fn manifest_digest(member: &Regcache, repo: &str, tag: &str) -> String {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let response = raw_request_with(&member.host(), "GET", &path, &[("Accept", ACCEPT_ALL.as_bytes())]);
    assert_eq!(
        response.status,
        200,
        "{path}: {}\n{}",
        String::from_utf8_lossy(&response.body),
        member.process.logs()
    );
    response
        .header("Docker-Content-Digest")
        .expect("a digest header")
        .to_owned()
}
