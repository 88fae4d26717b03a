//! `loadtest serve`: how fast one warm replica serves, next to nginx
//! (sendfile on the same files: the ceiling) and distribution's proxy (what
//! users run today), one server at a time; and a blob that is only in the
//! S3 bucket, next to a plain GET with the S3 client regcache itself uses.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use testkit::{ACCEPT_ALL, Bucket, Fault, FaultProxy, Regcache, Registry, Rule, S3Server};

use crate::cpu;
use crate::fetch::get_checked;
use crate::nginx::Nginx;
use crate::report::{Report, Target};
use crate::seed::{MIB, Upstream};
use crate::setup::{log_env, peak_rss_mib};
use crate::wrk::{curl, wrk};

/// regcache keeps blobs up to `memory_object_max` (1 MiB by default) in
/// memory: one blob just under it is served from memory, one just over it
/// from the disk tier, as most real layers are.
const MEMORY_BLOB: u64 = MIB - (64 << 10);
const DISK_BLOB: u64 = MIB + (64 << 10);
const REPO: &str = "library/bench";
const CONNECTIONS: u32 = 64;

pub struct Scale {
    pub big_mib: u64,
    pub wrk_seconds: u32,
    pub curl_runs: u32,
    pub s3_runs: u32,
}

impl Scale {
    pub fn new(smoke: bool) -> Scale {
        if smoke {
            Scale {
                big_mib: 16,
                wrk_seconds: 2,
                curl_runs: 1,
                s3_runs: 1,
            }
        } else {
            Scale {
                big_mib: 400,
                wrk_seconds: 10,
                curl_runs: 3,
                // The S3 server shares the cores: these figures swing most.
                s3_runs: 7,
            }
        }
    }
}

/// A blob under test: digest, size, and the tier regcache must serve it
/// from once warm.
struct Blob {
    digest: String,
    size: u64,
    tier: &'static str,
}

impl Blob {
    fn path(&self) -> String {
        format!("/v2/{REPO}/blobs/{}", self.digest)
    }
}

pub fn run(scale: &Scale) -> anyhow::Result<Report> {
    let mut upstream = Upstream::start()?;
    eprintln!(
        "loadtest: seeding a {} MiB blob and two of about 1 MiB",
        scale.big_mib
    );
    let image = upstream.push_image(REPO, "latest", &[scale.big_mib * MIB, MEMORY_BLOB, DISK_BLOB])?;
    let blob = |n: usize, tier| Blob {
        digest: image.blobs[n].0.clone(),
        size: image.blobs[n].1,
        tier,
    };
    let (big, small, medium) = (blob(1, "disk"), blob(2, "memory"), blob(3, "disk"));

    let files: Vec<(String, std::path::PathBuf)> = [&big, &small, &medium]
        .iter()
        .map(|b| (b.digest.clone(), upstream.blob_path(&b.digest)))
        .collect();
    let files: Vec<(String, &Path)> = files.iter().map(|(d, p)| (d.clone(), p.as_path())).collect();
    let nginx = Nginx::start(REPO, &files)?;
    let proxy = Registry::start_proxy(&upstream.url())?;
    let dir = tempfile::tempdir()?;
    let cache = Regcache::start_url_env(&upstream.url(), dir.path(), &[], &log_env());

    eprintln!("loadtest: warming up and checking every body");
    let accept = format!("Accept: {ACCEPT_ALL}");
    let manifest = format!("/v2/{REPO}/manifests/latest");
    for base in [cache.url(""), proxy.url()] {
        for _ in 0..2 {
            get_checked(&base, &manifest, &[&accept], &image.digest)?;
            for b in [&big, &small, &medium] {
                get_checked(&base, &b.path(), &[], &b.digest)?;
            }
        }
    }
    for b in [&big, &small, &medium] {
        get_checked(&nginx.url(), &b.path(), &[], &b.digest)?;
        let warm = get_checked(&cache.url(""), &b.path(), &[], &b.digest)?;
        let status = warm.unwrap_or_default();
        ensure!(
            status.ends_with(&format!("detail={}", b.tier)),
            "the {} byte blob came from {status:?}, not the {} tier",
            b.size,
            b.tier
        );
    }

    let servers = [
        (cache.url(""), vec![cache.process.pid()]),
        (nginx.url(), nginx.pids()),
        (proxy.url(), vec![proxy.pid()]),
    ];
    let mut report = Report::new(
        format!(
            "one warm replica vs nginx (sendfile) vs distribution's proxy, {} cores, wrk -t2 -c{CONNECTIONS} -d{}s",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            scale.wrk_seconds
        ),
        &["regcache", "nginx", "distribution"],
    );
    let mut stream = Vec::new();
    for (base, _) in &servers {
        let mut best: f64 = 0.0;
        for _ in 0..scale.curl_runs {
            let (size, speed) = curl(&format!("{base}{}", big.path()))?;
            ensure!(size == big.size, "{base}: {size} bytes of {}", big.size);
            best = best.max(speed / MIB as f64);
        }
        stream.push(Some(best));
    }
    report
        .row(format!("{} MiB blob, one stream (MiB/s)", scale.big_mib), stream)
        .ratio(0, 1, Target::AtLeast(0.9));

    // From memory regcache owes nginx nothing; from disk it copies each
    // byte once into the socket, where sendfile copies none.
    for (b, target) in [(&small, 1.0), (&medium, 0.8)] {
        let mut rates = Vec::new();
        let mut cpu_per_gib = Vec::new();
        for (base, pids) in &servers {
            let before = cpu::total(pids);
            let run = wrk(
                &format!("{base}{}", b.path()),
                CONNECTIONS,
                scale.wrk_seconds,
                &[],
            )?;
            let gib = run.requests * b.size as f64 / (1u64 << 30) as f64;
            cpu_per_gib.push(Some((cpu::total(pids) - before) / gib));
            for problem in &run.problems {
                report.note(format!("{} blob from {base}: {problem}", b.tier));
            }
            rates.push((run.problems.is_empty()).then_some(run.requests_per_second));
        }
        report
            .row(format!("{} byte blob from {} (req/s)", b.size, b.tier), rates)
            .ratio(0, 1, Target::AtLeast(target));
        report
            .row(format!("  CPU seconds per GiB served ({})", b.tier), cpu_per_gib)
            .ratio(0, 1, Target::Info);
    }

    let mut tags = Vec::new();
    for (base, _) in &servers {
        if *base == nginx.url() {
            tags.push(None); // nginx can't resolve tags
            continue;
        }
        let run = wrk(
            &format!("{base}{manifest}"),
            CONNECTIONS,
            scale.wrk_seconds,
            &[&accept],
        )?;
        for problem in &run.problems {
            report.note(format!("manifest by tag from {base}: {problem}"));
        }
        tags.push((run.problems.is_empty()).then_some(run.requests_per_second));
    }
    report
        .row("manifest by tag (req/s)", tags)
        .ratio(0, 2, Target::AtLeast(20.0));
    report
        .row(
            "peak RSS MiB",
            vec![peak_rss_mib(cache.process.pid()), None, peak_rss_mib(proxy.pid())],
        )
        .limit(0, Target::AtMost(150.0));
    drop((cache, nginx, proxy));

    let (from_s3, direct) = blob_from_s3(&upstream, &big, scale.s3_runs)?;
    report
        .row(
            format!("{} MiB blob from S3, one stream (MiB/s)*", scale.big_mib),
            vec![Some(from_s3), Some(direct), None],
        )
        .ratio(0, 1, Target::AtLeast(0.8));
    report.note(
        "*: regcache with an empty disk tier, the blob only in the bucket, against a direct GET \
         of the same object with regcache's own S3 client (in the nginx column); best of each",
    );
    Ok(report)
}

/// The big blob served from the bucket only, best of `runs`, and a plain GET
/// of the same object, interleaved so a change in the machine's load
/// favours neither. The replica's upstream answers 404 to every blob GET:
/// a blob it did not read from S3 cannot be served.
fn blob_from_s3(upstream: &Upstream, big: &Blob, runs: u32) -> anyhow::Result<(f64, f64)> {
    let s3 = S3Server::start()?;
    let dir = tempfile::tempdir()?;
    let args = testkit::s3_args(&s3);
    let start = |upstream_url: &str| {
        let mut env = s3.env();
        env.extend(log_env());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Regcache::start_url_env(upstream_url, dir.path(), &args, &env)
    };
    let mut first = start(&upstream.url());
    get_checked(&first.url(""), &big.path(), &[], &big.digest)?;
    let bucket = Bucket::connect(&s3);
    let key = bucket
        .wait_for_blob(&big.digest, Duration::from_secs(120))
        .pop()
        .context("the blob never reached the bucket")?;
    first.process.stop();

    let refusing = FaultProxy::start(&upstream.registry)?;
    refusing.set_rules(vec![Rule::new("GET", "/blobs/", Fault::respond(404, &[], ""))]);
    let (mut best_cache, mut best_direct) = (0f64, 0f64);
    for run in 1..=runs {
        eprintln!("loadtest: blob from S3, run {run}/{runs}");
        let _ = std::fs::remove_dir_all(dir.path().join("blobs"));
        let mut cache = start(&refusing.url());
        let (size, speed) = curl(&cache.url(&big.path()))?;
        ensure!(size == big.size, "from S3: {size} bytes of {}", big.size);
        best_cache = best_cache.max(speed / MIB as f64);
        cache.process.stop();

        let started = Instant::now();
        let bytes = bucket.download(&key);
        ensure!(bytes == big.size, "direct GET: {bytes} bytes of {}", big.size);
        best_direct = best_direct.max(bytes as f64 / MIB as f64 / started.elapsed().as_secs_f64());
    }
    if refusing.count("GET", "/blobs/") > 0 {
        bail!("the replica asked the upstream for a blob it should have read from S3");
    }
    Ok((best_cache, best_direct))
}
