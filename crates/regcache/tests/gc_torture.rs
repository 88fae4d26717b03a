//! Garbage collection under load: three real members on one real S3
//! bucket in front of a real registry, a pass every two seconds with a
//! one-second ttl, while clients pull a rotating set of images that share
//! layers (by tag and by digest, an index among them), slow readers hold
//! streams open across commits and skopeo copies whole images. Every body
//! is checked against its digest and no pull may fail. Once the load stops
//! everything goes idle, and the cluster must converge to nothing left:
//! no index entry, no tag, no object in the bucket, no file on any disk.
//!
//! The same with the leader killed -9 while it has keys to sweep, and with
//! the S3 server stopped for a few seconds. `REGCACHE_TORTURE_SECS` sets
//! the main run's load (60 s by default; the others run half as long).

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{ACCEPT_ALL, Bucket, metric, metrics, raw_request_with};
use testkit::{ImageSpec, S3Server, SeededRegistry};

const GC: &str = "[gc]\nttl = \"1s\"\ninterval = \"2s\"\nsweep_delay = \"2s\"\norphan_grace = \"1s\"\n";

/// The images pulled, by the window of the load they are pulled in: each
/// goes idle for whole windows (and is collected) and comes back (and is
/// fetched again). `app:v1` and `web:v1` are one image in two repositories.
/// A window is long enough for a whole pass (about 4 s: the interval, the
/// sweep delay, the orphan listing) to start and commit inside it.
const WINDOWS: [&[&str]; 2] = [
    &["library/app:v1", "library/multi:v1"],
    &["library/web:v1", "library/app:v2"],
];
const WINDOW: Duration = Duration::from_secs(10);
/// The `n`th client's image in the window of the load at this moment.
fn image_at(started: Instant, n: usize) -> &'static str {
    let window = WINDOWS[(started.elapsed().as_secs() / WINDOW.as_secs()) as usize % WINDOWS.len()];
    window[n % window.len()]
}

/// A layer big enough that a slow reader takes seconds over it.
const BIG_LAYER: u64 = 1_500_000;

/// One cluster test at a time: each runs nine processes on two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The upstream: `library/app:v1` (the big layer and two small ones, also
/// as `library/web:v1`), `library/app:v2`, and a two-platform index
/// `library/multi:v1`.
fn upstream() -> SeededRegistry {
    let mut seeded =
        SeededRegistry::start(&[BIG_LAYER, 100_000, 20_000], "library/app:v1").expect("a seeded registry");
    seeded
        .layout
        .push("seed-0", &seeded.registry, "library/web:v1")
        .expect("pushing web:v1");
    seeded
        .push(&ImageSpec::new(&[300_000, 50_000]), "library/app:v2")
        .expect("pushing app:v2");
    let arm = ImageSpec {
        arch: "arm64".into(),
        ..ImageSpec::new(&[150_000])
    };
    seeded
        .layout
        .add_index("multi", &[ImageSpec::new(&[200_000]), arm])
        .expect("an index");
    seeded
        .layout
        .push("multi", &seeded.registry, "library/multi:v1")
        .expect("pushing multi:v1");
    seeded
}

fn load_for(default: Duration) -> Duration {
    std::env::var("REGCACHE_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, Duration::from_secs)
}

/// What the clients did.
#[derive(Default)]
struct Tally {
    pulls: AtomicU64,
    slow_reads: AtomicU64,
    copies: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, outcome: Result<(), String>, done: &AtomicU64) {
        match outcome {
            Ok(()) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.failures.lock().expect("tally").push(format!("{what}: {e}")),
        }
    }
}

/// GETs `path` and checks the body against `digest` (and the digest the
/// response names, for a manifest); returns the body.
fn get_verified(host: &str, path: &str, digest: Option<&str>) -> Result<Vec<u8>, String> {
    let response = std::panic::catch_unwind(|| {
        raw_request_with(host, "GET", path, &[("Accept", ACCEPT_ALL.as_bytes())])
    })
    .map_err(|_| format!("GET {path} via {host}: no response"))?;
    if response.status != 200 {
        return Err(format!(
            "GET {path} via {host}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ));
    }
    let actual = testkit::sha256_bytes(&response.body);
    let expected = digest.or(response.header("Docker-Content-Digest"));
    match expected {
        Some(expected) if expected == actual => Ok(response.body),
        expected => Err(format!(
            "GET {path} via {host}: body is {actual}, expected {expected:?}"
        )),
    }
}

/// Pulls `image` (`repo:tag`) as a node does: the manifest by tag, one
/// platform of an index by digest, then its config and layers.
fn pull(host: &str, image: &str, platform: usize) -> Result<(), String> {
    let (repo, tag) = image.split_once(':').expect("repo:tag");
    let mut manifest = get_verified(host, &format!("/v2/{repo}/manifests/{tag}"), None)?;
    let mut parsed: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| format!("{image}: manifest: {e}"))?;
    if let Some(children) = parsed["manifests"].as_array() {
        let child = children[platform % children.len()]["digest"]
            .as_str()
            .ok_or("an index entry without a digest")?
            .to_owned();
        manifest = get_verified(host, &format!("/v2/{repo}/manifests/{child}"), Some(&child))?;
        parsed = serde_json::from_slice(&manifest).map_err(|e| format!("{child}: {e}"))?;
    }
    let layers = parsed["layers"].as_array().cloned().unwrap_or_default();
    let blobs = std::iter::once(&parsed["config"]).chain(layers.iter());
    for blob in blobs {
        let digest = blob["digest"].as_str().ok_or("a descriptor without a digest")?;
        get_verified(host, &format!("/v2/{repo}/blobs/{digest}"), Some(digest))?;
    }
    Ok(())
}

/// GETs a blob reading about 300 KB a second, so the response stays open
/// across a pass's commit, and checks it.
fn slow_read(host: &str, repo: &str, digest: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let path = format!("/v2/{repo}/blobs/{digest}");
    let mut stream = std::net::TcpStream::connect(host).map_err(|e| format!("{host}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 32 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) => {
                return Err(format!(
                    "slow GET {path} via {host}: {e} after {} bytes",
                    response.len()
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("slow GET {path} via {host}: no response head"))?;
    let head = String::from_utf8_lossy(&response[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("slow GET {path} via {host}: {head}"));
    }
    let actual = testkit::sha256_bytes(&response[split + 4..]);
    if actual != digest {
        return Err(format!(
            "slow GET {path} via {host}: body is {actual} ({} bytes)",
            response.len() - split - 4
        ));
    }
    Ok(())
}

/// `skopeo copy` of a whole image into `dest`, every blob checked.
fn copy(host: &str, image: &str, dest: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dest);
    let src = format!("docker://{host}/{image}");
    let dst = format!("dir:{}", dest.display());
    testkit::skopeo(&["copy", "--all", "--src-tls-verify=false", &src, &dst])
        .map_err(|e| format!("skopeo copy {image} via {host}: {e:#}"))?;
    for file in std::fs::read_dir(dest).map_err(|e| e.to_string())? {
        let path = file.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
            if testkit::sha256_bytes(&bytes) != format!("sha256:{name}") {
                return Err(format!("skopeo copy {image} via {host}: {name} does not match"));
            }
        }
    }
    Ok(())
}

/// Runs the clients against `hosts()` (read each time: a test may change
/// who takes traffic) for `duration`, calling `fault(elapsed)` every 100 ms.
fn load(
    hosts: &Mutex<Vec<String>>,
    big_layer: &str,
    duration: Duration,
    mut fault: impl FnMut(Duration),
) -> Tally {
    let tally = Tally::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let pick = |n: usize| {
        let hosts = hosts.lock().expect("hosts");
        hosts[n % hosts.len()].clone()
    };
    let scratch = tempfile::tempdir().expect("scratch dir");
    std::thread::scope(|scope| {
        for client in 0..4 {
            let (tally, stop, pick) = (&tally, &stop, &pick);
            scope.spawn(move || {
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    let image = image_at(started, n);
                    tally.record(image, pull(&pick(n), image, n), &tally.pulls);
                    n += 1;
                }
            });
        }
        let (tally, stop, pick) = (&tally, &stop, &pick);
        scope.spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let outcome = slow_read(&pick(n), "library/app", big_layer);
                tally.record("slow read", outcome, &tally.slow_reads);
                n += 1;
            }
        });
        let dest = scratch.path().join("copy");
        scope.spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let image = image_at(started, n);
                tally.record(image, copy(&pick(n), image, &dest), &tally.copies);
                n += 1;
            }
        });
        while started.elapsed() < duration {
            fault(started.elapsed());
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
    });
    tally
}

fn hosts_of(cluster: &Cluster, ids: &[u64]) -> Mutex<Vec<String>> {
    Mutex::new(ids.iter().map(|id| cluster.member(*id).host()).collect())
}

fn sum_metric(cluster: &Cluster, name: &str, label: &str) -> f64 {
    cluster
        .running()
        .iter()
        .map(|id| metric(&metrics(cluster.member(*id)), name, label))
        .sum()
}

/// Checks what the clients saw.
fn assert_clean_load(tally: &Tally, cluster: &Cluster) {
    let failures = tally.failures.lock().expect("tally");
    let logs: String = cluster
        .running()
        .iter()
        .map(|id| format!("--- member {id}\n{}", cluster.member(*id).process.logs()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} pulls, {} slow reads and {} copies failed:\n{}\n{logs}",
        failures.len(),
        tally.pulls.load(Ordering::Relaxed),
        tally.slow_reads.load(Ordering::Relaxed),
        tally.copies.load(Ordering::Relaxed),
        failures.join("\n")
    );
    let (pulls, slow, copies) = (
        tally.pulls.load(Ordering::Relaxed),
        tally.slow_reads.load(Ordering::Relaxed),
        tally.copies.load(Ordering::Relaxed),
    );
    eprintln!("{pulls} pulls, {slow} slow reads, {copies} skopeo copies, no failure");
    assert!(
        pulls > 20 && slow > 2 && copies > 2,
        "too little load to mean anything"
    );
}

/// Checks that passes did remove content while the clients pulled.
fn assert_collected_under_load(cluster: &Cluster, seeded: &SeededRegistry) {
    let logs: String = cluster
        .running()
        .iter()
        .map(|id| format!("--- member {id}\n{}", cluster.member(*id).process.logs()))
        .collect();
    for line in logs.lines().filter(|l| l.contains("gc pass committed")) {
        eprintln!("{line}");
    }
    let removed = sum_metric(cluster, "regcache_gc_removed_entries_total", "");
    let refetched = seeded.registry.count("GET", "/blobs/sha256:");
    eprintln!("gc removed {removed} entries under load; the upstream served {refetched} blob GETs");
    assert!(
        removed > 0.0,
        "no pass removed anything: the load proves nothing\n{logs}"
    );
}

/// Waits until nothing is left anywhere: every member's index and tags
/// empty, no object in the bucket, no file in any disk tier.
fn assert_converges_to_nothing(cluster: &Cluster, bucket: &Bucket) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut left = Vec::new();
        for id in cluster.running() {
            let m = metrics(cluster.member(id));
            let (entries, tags) = (
                metric(&m, "regcache_index_entries", ""),
                metric(&m, "regcache_index_tags", ""),
            );
            if entries + tags > 0.0 {
                left.push(format!("member {id}: {entries} entries, {tags} tags"));
            }
            let files = testkit::files_under(&cluster.data_dir(id).join("blobs"));
            if !files.is_empty() {
                left.push(format!("member {id}: {} files on disk", files.len()));
            }
        }
        let objects: Vec<String> = ["blobs/", "manifests/"]
            .iter()
            .flat_map(|p| bucket.keys(p))
            .collect();
        if !objects.is_empty() {
            left.push(format!("bucket: {objects:?}"));
        }
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never converged: {left:#?}\n{}",
            cluster
                .running()
                .iter()
                .map(|id| format!("--- member {id}\n{}", cluster.member(*id).process.logs()))
                .collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct Setup {
    seeded: SeededRegistry,
    s3: S3Server,
    cluster: Cluster,
    bucket: Bucket,
    big_layer: String,
}

fn setup() -> Setup {
    let seeded = upstream();
    let s3 = S3Server::start().expect("an s3 server");
    let cluster = Cluster::start_on_s3(&seeded.url(), 3, GC, &s3);
    cluster.leader(&[1, 2, 3], Duration::from_secs(20));
    let bucket = Bucket::connect(&s3);
    let big_layer = seeded.image.layer_digests[0].0.clone();
    Setup {
        seeded,
        s3,
        cluster,
        bucket,
        big_layer,
    }
}

#[test]
fn pulls_never_fail_while_passes_run_back_to_back_and_nothing_is_left_after() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let hosts = hosts_of(&s.cluster, &[1, 2, 3]);
    let tally = load(&hosts, &s.big_layer, load_for(Duration::from_secs(60)), |_| {});
    assert_clean_load(&tally, &s.cluster);
    assert_collected_under_load(&s.cluster, &s.seeded);
    assert_converges_to_nothing(&s.cluster, &s.bucket);
}

#[test]
fn a_leader_killed_with_keys_to_sweep_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = setup();
    let leader = s.cluster.leader(&[1, 2, 3], Duration::from_secs(20));
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    // Clients use the members that stay, as a Service would once the dead
    // pod's endpoint is gone.
    let hosts = hosts_of(&s.cluster, &others);
    let mut killed = false;
    let cluster = &mut s.cluster;
    let tally = load(
        &hosts,
        &s.big_layer,
        load_for(Duration::from_secs(60)) / 2,
        |elapsed| {
            if killed || elapsed < Duration::from_secs(8) {
                return;
            }
            let (_, body) = common::raw_request(&cluster.member(leader).host(), "GET", "/status.json");
            let status: serde_json::Value = serde_json::from_slice(&body).expect("status json");
            if status["gc"]["to_sweep"].as_u64() > Some(0) {
                eprintln!(
                    "killing leader {leader} with {} keys to sweep",
                    status["gc"]["to_sweep"]
                );
                cluster.kill(leader);
                killed = true;
            }
        },
    );
    // Keys to sweep mean a pass removed content under the load.
    assert!(killed, "the leader never had keys to sweep");
    assert_clean_load(&tally, &s.cluster);
    s.cluster.start_member(leader);
    s.cluster.leader(&[1, 2, 3], Duration::from_secs(30));
    assert_converges_to_nothing(&s.cluster, &s.bucket);
}

#[test]
fn s3_down_during_passes_fails_no_pull_and_leaves_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = setup();
    let hosts = hosts_of(&s.cluster, &[1, 2, 3]);
    let s3 = &mut s.s3;
    let mut phase = 0;
    let tally = load(
        &hosts,
        &s.big_layer,
        load_for(Duration::from_secs(60)) / 2,
        |elapsed| {
            if phase == 0 && elapsed >= Duration::from_secs(8) {
                eprintln!("stopping s3");
                s3.stop();
                phase = 1;
            } else if phase == 1 && elapsed >= Duration::from_secs(13) {
                eprintln!("restarting s3");
                s3.restart().expect("restarting s3");
                phase = 2;
            }
        },
    );
    assert_eq!(phase, 2, "the load ended before s3 came back");
    assert_clean_load(&tally, &s.cluster);
    assert_collected_under_load(&s.cluster, &s.seeded);
    assert_converges_to_nothing(&s.cluster, &s.bucket);
}
