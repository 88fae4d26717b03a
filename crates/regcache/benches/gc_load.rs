//! What garbage collection costs warm pulls: three members on one S3 bucket,
//! 16 clients pulling one image over and over (by tag, then its blobs),
//! in phases that alternate between no GC and GC rounds back to back (a
//! new round asked for with `regcache gc run` as soon as the last ended,
//! with a one-second ttl, so every pass condemns the content being pulled
//! and the pulls rescue it: the worst case). Prints latency and throughput
//! of each mode and the ratios; the target is a p99 within 1.1× of no GC.
//!
//! `cargo bench -p regcache --bench gc_load` (add `-- 30` for 30-second
//! phases; the default is 15).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::ACCEPT_ALL;
use common::cluster::Cluster;
use testkit::{S3Server, SeededRegistry};

const CLIENTS: usize = 16;
const PHASES: usize = 4;
const GC: &str = "[gc]\nttl = \"1s\"\ninterval = \"1h\"\nsweep_delay = \"2s\"\n";

fn main() -> anyhow::Result<()> {
    let phase_secs: u64 = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(n) => n.parse()?,
        None => 15,
    };
    let seeded = SeededRegistry::start(&[2_000_000, 200_000, 20_000], "library/app:v1")?;
    let s3 = S3Server::start()?;
    let cluster = Cluster::start_on_s3(&seeded.url(), 3, GC, &s3);
    cluster.leader(&[1, 2, 3], Duration::from_secs(20));
    let hosts: Vec<String> = (1..=3).map(|id| cluster.member(id).host()).collect();
    let admin = cluster.cluster_addr(1);
    let blobs = seeded.image.blob_digests();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (without, with, rounds) = runtime.block_on(async {
        let client = reqwest::Client::new();
        for host in &hosts {
            pull(&client, host, &blobs, &mut Vec::new()).await?;
        }
        let (mut without, mut with, mut rounds) = (Vec::new(), Vec::new(), 0);
        for phase in 0..PHASES {
            let collecting = phase % 2 == 1;
            let (samples, started) = run_phase(
                &client,
                &hosts,
                &blobs,
                Duration::from_secs(phase_secs),
                collecting.then_some(admin.as_str()),
            )
            .await?;
            if collecting {
                with.extend(samples);
                rounds += started;
            } else {
                without.extend(samples);
            }
        }
        anyhow::Ok((without, with, rounds))
    })?;

    let total = Duration::from_secs(phase_secs * PHASES as u64 / 2);
    let (a, b) = (Figures::of(without, total), Figures::of(with, total));
    println!("gc_load: 3 members on S3, {CLIENTS} clients, {PHASES} alternating phases of {phase_secs} s");
    println!(
        "{:<22} {:>12} {:>10} {:>10}",
        "", "requests/s", "p50 ms", "p99 ms"
    );
    println!(
        "{:<22} {:>12.0} {:>10.2} {:>10.2}",
        "without gc", a.rate, a.p50, a.p99
    );
    println!(
        "{:<22} {:>12.0} {:>10.2} {:>10.2}",
        format!("gc back to back ({rounds})"),
        b.rate,
        b.p50,
        b.p99
    );
    println!(
        "{:<22} {:>11.2}× {:>9.2}× {:>9.2}×   (target: p99 ≤ 1.10×)",
        "ratio",
        b.rate / a.rate,
        b.p50 / a.p50,
        b.p99 / a.p99
    );
    drop(cluster);
    Ok(())
}

/// Latency figures of one mode.
struct Figures {
    rate: f64,
    p50: f64,
    p99: f64,
}

impl Figures {
    fn of(mut samples: Vec<Duration>, over: Duration) -> Figures {
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1));
            samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Figures {
            rate: samples.len() as f64 / over.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Runs the clients for `duration`; with `gc`, asks that member for a GC
/// round whenever none is running. Returns every request's latency and
/// how many rounds started.
async fn run_phase(
    client: &reqwest::Client,
    hosts: &[String],
    blobs: &[String],
    duration: Duration,
    gc: Option<&str>,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let (client, host, blobs, stop) = (
            client.clone(),
            hosts[n % hosts.len()].clone(),
            blobs.to_vec(),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                pull(&client, &host, &blobs, &mut samples).await?;
            }
            anyhow::Ok(samples)
        }));
    }
    let driver = gc.map(|addr| {
        let (addr, stop, rounds) = (addr.to_owned(), Arc::clone(&stop), Arc::clone(&rounds));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match meta::admin::gc_run(&addr, false).await {
                    Ok(meta::GcRunOutcome::Started) => {
                        rounds.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(e) => eprintln!("gc run: {e}"),
                }
            }
        })
    });
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    if let Some(driver) = driver {
        driver.await?;
    }
    Ok((samples, rounds.load(Ordering::Relaxed)))
}

/// One warm pull: the manifest by tag, then every blob; each request's
/// latency to its last byte goes into `samples`.
async fn pull(
    client: &reqwest::Client,
    host: &str,
    blobs: &[String],
    samples: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let manifest = format!("http://{host}/v2/library/app/manifests/v1");
    let paths = std::iter::once(manifest).chain(
        blobs
            .iter()
            .map(|d| format!("http://{host}/v2/library/app/blobs/{d}")),
    );
    for url in paths {
        let started = Instant::now();
        let response = client.get(&url).header("Accept", ACCEPT_ALL).send().await?;
        anyhow::ensure!(response.status().is_success(), "GET {url}: {}", response.status());
        response.bytes().await?;
        samples.push(started.elapsed());
    }
    Ok(())
}
