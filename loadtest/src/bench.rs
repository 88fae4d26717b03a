//! `loadtest bench`: the k6 scenarios against a 3-member cluster, one
//! replica and distribution's proxy, one setup at a time, in front of the
//! same seeded upstream; one table of figures with the cluster's ratios to
//! the proxy.

use std::path::Path;

use crate::k6::{self, Summary};
use crate::report::{Report, Target};
use crate::seed::{Image, MIB, Upstream, write_plan};
use crate::setup::{Kind, Setup};

/// How big a run is: `--smoke` for CI (seconds, small images), the default
/// for figures worth reading.
pub struct Scale {
    pub pull_images: usize,
    pub fleet_images: usize,
    pub layers: Vec<u64>,
    pub storm_layers: Vec<u64>,
    pub range_mib: u64,
    pub duration: &'static str,
    pub fleet_rate: u32,
    pub vus: u32,
    pub storm_vus: u32,
}

impl Scale {
    pub fn new(smoke: bool) -> Scale {
        if smoke {
            Scale {
                pull_images: 2,
                fleet_images: 4,
                layers: vec![512 << 10, 128 << 10, 16 << 10],
                storm_layers: vec![4 * MIB, 256 << 10],
                range_mib: 4,
                duration: "4s",
                fleet_rate: 20,
                vus: 8,
                storm_vus: 12,
            }
        } else {
            Scale {
                pull_images: 6,
                fleet_images: 24,
                layers: vec![2 * MIB, 512 << 10, 32 << 10],
                storm_layers: vec![64 * MIB, MIB],
                range_mib: 64,
                duration: "30s",
                fleet_rate: 400,
                vus: 64,
                storm_vus: 60,
            }
        }
    }
}

/// The images each scenario pulls; every setup starts cold, so they serve
/// all of them.
struct Seeded {
    fleet: Vec<Image>,
    storm: Image,
    ranges: Image,
    pull_images: Vec<Image>,
}

fn seed(upstream: &mut Upstream, scale: &Scale) -> anyhow::Result<Seeded> {
    let mut fleet = Vec::new();
    for n in 0..scale.fleet_images {
        // Every other image is multi-platform, as on Docker Hub.
        let repo = format!("library/fleet{n}");
        let image = if n % 2 == 0 {
            upstream.push_index(&repo, "v1", &scale.layers)?
        } else {
            upstream.push_image(&repo, "v1", &scale.layers)?
        };
        fleet.push(image);
    }
    let pull_images = (0..scale.pull_images)
        .map(|n| upstream.push_index(&format!("library/node{n}"), "v1", &scale.layers))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Seeded {
        fleet,
        storm: upstream.push_image("library/rollout", "v2", &scale.storm_layers)?,
        ranges: upstream.push_image("library/ranged", "v1", &[scale.range_mib * MIB])?,
        pull_images,
    })
}

/// One setup's k6 summaries and what the upstream saw.
struct Measured {
    pull: Summary,
    fleet: Summary,
    manifests: Summary,
    storm: Summary,
    ranges: Summary,
    storm_gets_per_blob: f64,
    range_gets: f64,
    peak_rss_mib: Option<f64>,
    /// From the replicas' own `/metrics`, after every scenario.
    upstream_mb: Option<f64>,
    peer_fallbacks: Option<f64>,
    crossed: Vec<String>,
}

/// Runs every scenario on every setup; returns the table and the thresholds
/// a regcache setup crossed (the anchor's are notes in the table).
pub fn run(scale: &Scale, work: &Path) -> anyhow::Result<(Report, Vec<String>)> {
    let mut upstream = Upstream::start()?;
    eprintln!("loadtest: seeding the upstream");
    let seeded = seed(&mut upstream, scale)?;
    let kinds = [Kind::Cluster, Kind::Single, Kind::Distribution];
    let mut measured = Vec::new();
    for kind in kinds {
        eprintln!("loadtest: {}", kind.name());
        let setup = Setup::start(kind, &upstream.url())?;
        // A work dir per setup: with --keep, every summary stays.
        let dir = work.join(kind.name());
        std::fs::create_dir_all(&dir)?;
        measured.push(measure(&setup, kind, &upstream, &seeded, scale, &dir)?);
        setup.save_logs(&dir)?;
    }
    let failures = kinds
        .iter()
        .zip(&measured)
        .filter(|(kind, _)| kind.is_regcache())
        .flat_map(|(_, m)| m.crossed.clone())
        .collect();
    Ok((report(scale, &kinds, &measured), failures))
}

fn measure(
    setup: &Setup,
    kind: Kind,
    upstream: &Upstream,
    seeded: &Seeded,
    scale: &Scale,
    work: &Path,
) -> anyhow::Result<Measured> {
    let targets = setup.targets();
    let plan = |name: &str, images: &[Image], ranges: &[Image]| -> anyhow::Result<std::path::PathBuf> {
        let path = work.join(format!("{name}-plan.json"));
        write_plan(&path, images, ranges)?;
        Ok(path)
    };
    let vus = scale.vus.to_string();
    let duration = scale.duration.to_owned();
    let run = |name: &str, plan: &Path, vars: &[(&str, String)]| k6::run(name, &targets, plan, vars, work);

    let pull = run(
        "pull",
        &plan("pull", &seeded.pull_images, &[])?,
        &[
            ("VUS", (scale.vus / 4).max(2).to_string()),
            ("DURATION", duration.clone()),
        ],
    )?;
    let fleet = run(
        "fleet",
        &plan("fleet", &seeded.fleet, &[])?,
        &[
            ("VUS", vus.clone()),
            ("DURATION", duration.clone()),
            ("RATE", scale.fleet_rate.to_string()),
        ],
    )?;
    let manifests = run(
        "manifests",
        &plan("manifests", &seeded.fleet, &[])?,
        &[("VUS", vus.clone()), ("DURATION", duration.clone())],
    )?;
    upstream.registry.clear_log();
    let storm = run(
        "storm",
        &plan("storm", std::slice::from_ref(&seeded.storm), &[])?,
        &[("VUS", scale.storm_vus.to_string()), ("CHECK_SHARE", "1".into())],
    )?;
    let storm_gets = upstream.blob_gets(&seeded.storm.blobs) as f64;
    upstream.registry.clear_log();
    let ranges = run(
        "ranges",
        &plan("ranges", &[], std::slice::from_ref(&seeded.ranges))?,
        &[
            ("VUS", (scale.vus / 8).max(2).to_string()),
            ("DURATION", duration),
        ],
    )?;
    let range_gets = upstream.blob_gets(&seeded.ranges.blobs[1..]) as f64;
    let mut crossed = Vec::new();
    for (name, summary) in [
        ("pull", &pull),
        ("fleet", &fleet),
        ("manifests", &manifests),
        ("storm", &storm),
        ("ranges", &ranges),
    ] {
        crossed.extend(
            summary
                .crossed_thresholds()
                .into_iter()
                .map(|t| format!("{} {name}: {t}", kind.name())),
        );
    }
    Ok(Measured {
        storm_gets_per_blob: storm_gets / seeded.storm.blobs.len() as f64,
        range_gets,
        peak_rss_mib: setup.peak_rss_mib(),
        upstream_mb: setup
            .metric_sum("regcache_upstream_received_bytes_total")
            .map(|b| b / 1e6),
        peer_fallbacks: setup.metric_sum("regcache_peer_fallbacks_total"),
        pull,
        fleet,
        manifests,
        storm,
        ranges,
        crossed,
    })
}

fn report(scale: &Scale, kinds: &[Kind], measured: &[Measured]) -> Report {
    let columns: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let mut report = Report::new(
        format!(
            "k6 scenarios, {} each, {} cores; cluster = 3 members on one S3 bucket",
            scale.duration,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        &columns,
    );
    let all = |f: &dyn Fn(&Measured) -> Option<f64>| -> Vec<Option<f64>> { measured.iter().map(f).collect() };
    let mb = |s: &Summary| s.per_second("data_received").map(|r| r / 1e6);
    report.row("pull: pulls/s", all(&|m| m.pull.per_second("pulls")));
    // distribution sends no Cache-Status: its hits and misses are "none".
    report.row(
        "pull: TTFB p99 ms, misses",
        all(&|m| m.pull.tagged("ttfb", "cache:miss", "p(99)")),
    );
    report.row(
        "pull: TTFB p99 ms, hits",
        all(&|m| m.pull.tagged("ttfb", "cache:hit", "p(99)")),
    );
    report.row("pull: TTFB p99 ms, all", all(&|m| m.pull.value("ttfb", "p(99)")));
    report
        .row("fleet: pulls/s (warm)", all(&|m| m.fleet.per_second("pulls")))
        .ratio(0, 2, Target::AtLeast(2.5));
    report.row("fleet: MB/s", all(&|m| mb(&m.fleet)));
    report.row(
        "fleet: pull p99 ms",
        all(&|m| m.fleet.value("pull_duration", "p(99)")),
    );
    report.row(
        "fleet: dropped pulls",
        all(&|m| Some(m.fleet.total("dropped_iterations"))),
    );
    report.row("manifests: req/s", all(&|m| m.manifests.per_second("http_reqs")));
    report.row(
        "manifests: TTFB p99 ms",
        all(&|m| m.manifests.value("ttfb", "p(99)")),
    );
    report
        .row(
            "storm: upstream GETs per blob",
            all(&|m| Some(m.storm_gets_per_blob)),
        )
        .limit(0, Target::AtMost(1.0));
    report.row("storm: TTFB p99 ms", all(&|m| m.storm.value("ttfb", "p(99)")));
    report.row(
        "storm: pull p99 ms",
        all(&|m| m.storm.value("pull_duration", "p(99)")),
    );
    report.row("ranges: MB/s", all(&|m| mb(&m.ranges)));
    report.row("ranges: upstream GETs", all(&|m| Some(m.range_gets)));
    report.row(
        "failed pulls (all scenarios)",
        all(&|m| {
            Some(
                [&m.pull, &m.fleet, &m.storm]
                    .iter()
                    .map(|s| s.value("pull_failures", "passes").unwrap_or(0.0))
                    .sum(),
            )
        }),
    );
    report.row(
        "corrupt bodies",
        all(&|m| {
            Some(
                [&m.pull, &m.fleet, &m.storm, &m.ranges]
                    .iter()
                    .map(|s| s.total("corrupt"))
                    .sum(),
            )
        }),
    );
    report.row("peak RSS MiB (largest process)", all(&|m| m.peak_rss_mib));
    report.row("upstream MB received (/metrics)", all(&|m| m.upstream_mb));
    report.row("peer fallbacks (/metrics)", all(&|m| m.peer_fallbacks));
    for (kind, m) in kinds.iter().zip(measured) {
        for crossed in &m.crossed {
            let whose = if kind.is_regcache() { "" } else { " (anchor)" };
            report.note(format!("threshold crossed{whose}: {crossed}"));
        }
    }
    report
}
