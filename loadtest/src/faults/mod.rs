//! `loadtest faults`: the `fleet` scenario against three members on one S3
//! bucket while something breaks, k6 retrying as a runtime pulling through a
//! Kubernetes Service does (up to 4 retries, each to the next member):
//! nothing, a follower killed -9, the leader killed -9, a follower cut off
//! from the others, the S3 server stopped, S3 made slow and flaky, a
//! member's disk full. Reports
//! pulls, failures after retry, corrupt bodies and how long recovery took;
//! a fresh cluster for each.

mod bucket;
mod partition;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use testkit::{Bucket, Cluster, S3Options, S3Server, TcpRelay, Tmpfs};

use crate::k6::{self, Summary};
use crate::report::{Report, Target};
use crate::seed::{MIB, Upstream, write_plan};
use crate::setup::log_env;

pub struct Scale {
    images: usize,
    layers: Vec<u64>,
    /// The measured k6 run; the fault starts a quarter in.
    seconds: u64,
    /// How long a member stays dead or cut off, or S3 away or slow.
    outage: u64,
    rate: u32,
    vus: u32,
    /// The filesystem under the member whose disk fills, and the cold
    /// images pulled through it to fill it (twice its size).
    disk_mib: u64,
}

impl Scale {
    pub fn new(smoke: bool) -> Scale {
        if smoke {
            Scale {
                images: 4,
                layers: vec![256 << 10, 64 << 10],
                seconds: 16,
                outage: 5,
                rate: 20,
                vus: 16,
                disk_mib: 48,
            }
        } else {
            Scale {
                images: 16,
                layers: vec![2 * MIB, 512 << 10, 32 << 10],
                seconds: 90,
                outage: 30,
                rate: 100,
                vus: 64,
                disk_mib: 128,
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    KillFollower,
    KillLeader,
    Partition,
    S3Down,
    S3Slow,
    DiskFull,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::None,
        Fault::KillFollower,
        Fault::KillLeader,
        Fault::Partition,
        Fault::S3Down,
        Fault::S3Slow,
        Fault::DiskFull,
    ];

    /// For `--only`: the name with dashes.
    pub fn slug(self) -> String {
        self.name().to_lowercase().replace(' ', "-")
    }

    fn name(self) -> &'static str {
        match self {
            Fault::None => "no fault",
            Fault::KillFollower => "kill follower",
            Fault::KillLeader => "kill leader",
            Fault::Partition => "partition",
            Fault::S3Down => "S3 down",
            Fault::S3Slow => "S3 slow",
            Fault::DiskFull => "disk full",
        }
    }
}

/// Reads one figure of a [`Recovery`], for the report's rows.
type RecoveryFigure = fn(&Recovery) -> Option<f64>;

/// What one run measured besides k6's figures.
#[derive(Default)]
struct Recovery {
    /// From the kill until the survivors agree on a leader that commits.
    election: Option<f64>,
    /// From the restart (or the heal) until the member serves and has
    /// applied what the leader committed.
    caught_up: Option<f64>,
    /// From the cut until the isolated member says read-only in `/readyz`.
    read_only: Option<f64>,
    /// From the heal until every member answers a tag moved meanwhile with
    /// the majority's digest.
    tags_agree: Option<f64>,
    /// Cold blobs (and their manifest) served during the fault.
    cold_served: Option<f64>,
    /// From the S3 server's return until a new blob was stored in it.
    storing_resumed: Option<f64>,
    /// Objects in the bucket at the end, every one hashed against its key.
    objects_verified: Option<f64>,
    /// Blobs the member on the small filesystem evicted to make room.
    evictions: Option<f64>,
    /// Files in that member's disk tier at the end, every one hashed.
    disk_files_verified: Option<f64>,
}

/// Runs the faults named in `only` (their slugs; all when empty).
pub fn run(scale: &Scale, only: &[String], work: &Path) -> anyhow::Result<(Report, Vec<String>)> {
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| only.is_empty() || only.contains(&f.slug()))
        .collect();
    let known: Vec<String> = Fault::ALL.iter().map(|f| f.slug()).collect();
    if let Some(unknown) = only.iter().find(|o| !known.contains(o)) {
        anyhow::bail!("no fault {unknown:?}; the faults are {}", known.join(", "));
    }
    let mut upstream = Upstream::start()?;
    eprintln!("loadtest: seeding the upstream");
    let fleet = (0..scale.images)
        .map(|n| upstream.push_image(&format!("library/steady{n}"), "v1", &scale.layers))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = work.join("faults-plan.json");
    write_plan(&plan, &fleet, &[])?;
    let mut runs = Vec::new();
    for &fault in &faults {
        eprintln!("loadtest: fleet under load, {}", fault.name());
        runs.push(one(fault, scale, &mut upstream, &plan, work)?);
    }
    let mut failures = Vec::new();
    for ((summary, _), fault) in runs.iter().zip(&faults) {
        failures.extend(
            summary
                .crossed_thresholds()
                .into_iter()
                .map(|t| format!("{}: {t}", fault.name())),
        );
    }
    Ok((report(scale, &faults, &runs), failures))
}

fn one(
    fault: Fault,
    scale: &Scale,
    upstream: &mut Upstream,
    plan: &Path,
    work: &Path,
) -> anyhow::Result<(Summary, Recovery)> {
    let mut s3 = S3Server::start()?;
    let s3_relay = TcpRelay::start(s3.endpoint().trim_start_matches("http://"))?;
    let options = S3Options {
        env: log_env(),
        s3_endpoint: Some(format!("http://{}", s3_relay.addr())),
        relayed: fault == Fault::Partition,
        // Tags revalidate every 2 s, so one moved during the partition is
        // seen by the majority while the isolated member cannot record it.
        // A disk tier larger than the filesystem under it.
        toml: match fault {
            Fault::Partition => "[cache]\ntag_ttl = \"2s\"\n",
            Fault::DiskFull => "[cache]\ndisk_bytes = \"1GiB\"\n",
            _ => "",
        },
        absent: if fault == Fault::DiskFull {
            vec![SMALL_DISK]
        } else {
            Vec::new()
        },
        ..S3Options::new(&s3)
    };
    let mut cluster = Cluster::start_on_s3_with(&upstream.url(), 3, options);
    // Declared after the cluster: unmounted (lazily) before it stops.
    let _tmpfs = match fault {
        Fault::DiskFull => {
            let tmpfs = Tmpfs::mount(scale.disk_mib)?;
            cluster.start_member_in(SMALL_DISK, tmpfs.subdir()?);
            Some(tmpfs)
        }
        _ => None,
    };
    cluster.serving(Duration::from_secs(30));
    let targets: Vec<String> = (1..=3).map(|id| cluster.member(id).url("")).collect();
    // Warm every member first (k6's own warm-up, not measured), so the
    // fault hits a steady state.
    let warm = [("RATE", "1".into()), ("DURATION", "1s".into())];
    k6::run("fleet", &targets, plan, &warm, work)?;
    // Cold images of twice the small filesystem, pushed before the load.
    let filling = match fault {
        Fault::DiskFull => (0..scale.disk_mib / 8)
            .map(|n| upstream.push_image(&format!("library/filling{n}"), "v1", &[8 * MIB, 8 * MIB]))
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let moving = match fault {
        Fault::Partition => Some(partition::Moving::start(upstream, &cluster, scale)?),
        _ => None,
    };

    let vars = [
        ("RATE", scale.rate.to_string()),
        ("VUS", scale.vus.to_string()),
        ("DURATION", format!("{}s", scale.seconds)),
        ("RETRIES", "4".into()),
        ("WARM", "0".into()),
        ("CHECK_SHARE", "0.2".into()),
    ];
    let started = Instant::now();
    let running = k6::start("fleet", &targets, plan, &vars, work)?;
    let at = |seconds: u64| {
        let when = started + Duration::from_secs(seconds);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
    };
    let fault_at = scale.seconds / 4;
    let mut recovery = Recovery::default();
    at(fault_at);
    let leader = cluster.leader(&[1, 2, 3], Duration::from_secs(10));
    let follower = (1..=3).find(|id| *id != leader).context("a follower")?;
    match fault {
        Fault::None => {}
        Fault::KillFollower | Fault::KillLeader => {
            let victim = if fault == Fault::KillLeader {
                leader
            } else {
                follower
            };
            let killed = Instant::now();
            cluster.kill(victim);
            let new_leader = cluster.leader(&cluster.running(), Duration::from_secs(30));
            if fault == Fault::KillLeader {
                recovery.election = Some(killed.elapsed().as_secs_f64());
            }
            at(fault_at + scale.outage);
            let restarted = Instant::now();
            cluster.start_member(victim);
            cluster.caught_up(victim, new_leader, Duration::from_secs(60));
            recovery.caught_up = Some(restarted.elapsed().as_secs_f64());
        }
        Fault::Partition => {
            let moving = moving.as_ref().context("the moving tag")?;
            partition::run(
                &cluster,
                follower,
                leader,
                moving,
                upstream,
                &mut recovery,
                || at(fault_at + scale.outage),
            )?;
        }
        Fault::DiskFull => {
            let member = cluster.member(SMALL_DISK);
            for image in &filling {
                bucket::pull_checked(&member.url(""), image)
                    .context("a cold pull through the member whose disk fills")?;
            }
            recovery.cold_served = Some(filling.iter().map(|i| i.blobs.len() + 1).sum::<usize>() as f64);
        }
        Fault::S3Down | Fault::S3Slow => {
            if fault == Fault::S3Down {
                s3.stop();
            } else {
                // Every chunk a quarter second late, every third connection
                // cut mid-stream.
                s3_relay.set_latency(Duration::from_millis(250));
                s3_relay.set_drop_every(3);
            }
            let cold = upstream.push_image("library/while-s3-away", "v1", &scale.layers)?;
            bucket::pull_checked(&cluster.member(1).url(""), &cold)?;
            recovery.cold_served = Some((cold.blobs.len() + 1) as f64);
            at(fault_at + scale.outage);
            if fault == Fault::S3Down {
                s3.restart()?;
            } else {
                s3_relay.set_latency(Duration::ZERO);
                s3_relay.set_drop_every(0);
            }
            recovery.storing_resumed = Some(bucket::storing_resumed(&s3, &cluster, upstream, scale)?);
        }
    }
    let summary = running.wait()?;
    if matches!(fault, Fault::S3Down | Fault::S3Slow) {
        // Nothing half-written may be left.
        recovery.objects_verified = Some(Bucket::connect(&s3).assert_all_objects_verified() as f64);
    }
    if fault == Fault::DiskFull {
        let member = cluster.member(SMALL_DISK);
        let (status, _) = testkit::raw_request(&member.host(), "GET", "/readyz");
        ensure!(
            status == 200,
            "the member whose disk filled is not ready: {status}"
        );
        ensure!(
            member.process.logs().contains("disk tier filesystem full"),
            "the member whose disk filled never said so"
        );
        recovery.evictions = Some(testkit::metric(
            &testkit::metrics(member),
            "regcache_disk_evictions_total",
            "",
        ));
        recovery.disk_files_verified = Some(testkit::verify_disk_tier(cluster.data_dir(SMALL_DISK))? as f64);
    }
    Ok((summary, recovery))
}

/// The member whose data dir is on a small filesystem.
const SMALL_DISK: u64 = 3;

fn report(scale: &Scale, faults: &[Fault], runs: &[(Summary, Recovery)]) -> Report {
    let columns: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    let mut report = Report::new(
        format!(
            "fleet at {} pulls/s for {} s on 3 members, the fault {} s in and {} s long; \
             up to 4 retries, each to the next member",
            scale.rate,
            scale.seconds,
            scale.seconds / 4,
            scale.outage
        ),
        &columns,
    );
    let all = |f: &dyn Fn(&Summary, &Recovery) -> Option<f64>| -> Vec<Option<f64>> {
        runs.iter().map(|(s, r)| f(s, r)).collect()
    };
    report.row("pulls", all(&|s, _| s.value("pulls", "count")));
    report
        .row(
            "pulls succeeded after retry (%)",
            all(&|s, _| s.value("pull_failures", "rate").map(|r| 100.0 * (1.0 - r))),
        )
        .each(Target::AtLeast(99.9));
    report
        .row("corrupt bodies", all(&|s, _| Some(s.total("corrupt"))))
        .each(Target::AtMost(0.0));
    report.row("retries", all(&|s, _| Some(s.total("retries"))));
    let p99 = report.row("pull p99 ms", all(&|s, _| s.value("pull_duration", "p(99)")));
    if faults.starts_with(&[Fault::None, Fault::KillFollower]) {
        p99.ratio(1, 0, Target::AtMost(2.0));
    }
    report.row("TTFB p99 ms", all(&|s, _| s.value("ttfb", "p(99)")));
    let recoveries: [(&str, RecoveryFigure); 9] = [
        ("election s (survivors agree)", |r| r.election),
        ("member caught up s (restart/heal)", |r| r.caught_up),
        ("isolated member read-only after s", |r| r.read_only),
        ("tags agree after heal s", |r| r.tags_agree),
        ("cold pull served in the fault (objects)", |r| r.cold_served),
        ("storing resumed s", |r| r.storing_resumed),
        ("bucket objects, all verified", |r| r.objects_verified),
        ("evictions on the small disk", |r| r.evictions),
        ("disk tier files, all verified", |r| r.disk_files_verified),
    ];
    for (figure, measured) in recoveries {
        report.row(figure, runs.iter().map(|(_, r)| measured(r)).collect());
    }
    report
}
