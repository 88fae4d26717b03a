//! What a rollout's cold storm costs the upstream, and how soon clients get
//! their first byte: many clients GET one blob nobody has yet, spread over
//! three endpoints, for each of
//!
//! - the upstream itself (direct: no cache);
//! - one regcache replica (every client on it): the TTFB baseline;
//! - three regcache members on one S3 bucket (peer streaming);
//! - three independent distribution proxies (`docker-registry` with
//!   `proxy.remoteurl`): what users run today.
//!
//! Each setup gets a blob of its own, cold. Upstream GETs are counted as they
//! arrive at a proxy in front of the upstream. Targets: regcache's upstream
//! bytes 1× the blob; TTFB p99 of the three members ≤ 1.2× the single
//! replica's.
//!
//! `cargo bench -p regcache --bench cold_storm` (add `-- CLIENTS MIB`,
//! default 60 clients and 100 MiB).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use futures_util::StreamExt as _;
use testkit::{FaultProxy, ImageSpec, LayerCompression, OciLayout, Registry, S3Server};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let clients: usize = args.next().map_or(Ok(60), |a| a.parse())?;
    let mib: u64 = args.next().map_or(Ok(100), |a| a.parse())?;
    let registry = Registry::start()?;
    let proxy = FaultProxy::start(&registry)?;
    let mut layout = OciLayout::new()?.with_layer_compression(LayerCompression::None);
    let mut cold_blob = |tag: &str| -> anyhow::Result<(String, u64)> {
        let image = layout.add_image(tag, &ImageSpec::new(&[mib << 20]))?;
        layout.push(tag, &registry, &format!("library/app:{tag}"))?;
        Ok(image.layer_digests[0].clone())
    };
    let s3 = S3Server::start()?;
    let mut rows = Vec::new();

    let (digest, size) = cold_blob("direct")?;
    let hosts = vec![proxy.url().trim_start_matches("http://").to_owned()];
    rows.push(measure(
        "upstream, direct",
        &hosts,
        "library/app",
        &digest,
        size,
        clients,
        &proxy,
    )?);

    let (digest, size) = cold_blob("single")?;
    let dir = tempfile::tempdir()?;
    let single = common::start_s3_replica(&proxy.url(), &s3, dir.path());
    rows.push(measure(
        "regcache, 1 replica",
        &[single.host()],
        "app",
        &digest,
        size,
        clients,
        &proxy,
    )?);
    drop(single);

    let (digest, size) = cold_blob("cluster")?;
    let cluster = Cluster::start_on_s3(&proxy.url(), 3, "", &s3);
    cluster.leader(&[1, 2, 3], Duration::from_secs(20));
    let hosts: Vec<String> = (1..=3).map(|id| cluster.member(id).host()).collect();
    for host in &hosts {
        wait_for_owner_key(host)?;
    }
    rows.push(measure(
        "regcache, 3 members",
        &hosts,
        "app",
        &digest,
        size,
        clients,
        &proxy,
    )?);
    drop(cluster);

    let (digest, size) = cold_blob("proxies")?;
    let proxies: Vec<Registry> = (0..3)
        .map(|_| Registry::start_proxy(&proxy.url()))
        .collect::<anyhow::Result<_>>()?;
    let hosts: Vec<String> = proxies.iter().map(Registry::host).collect();
    let name = "3 distribution proxies";
    rows.push(measure(
        name,
        &hosts,
        "library/app",
        &digest,
        size,
        clients,
        &proxy,
    )?);

    println!("cold_storm: {clients} clients GET one cold {mib} MiB blob, spread over the endpoints");
    println!(
        "{:<24} {:>13} {:>15} {:>12} {:>12} {:>14}",
        "", "upstream GETs", "upstream bytes", "TTFB p50 ms", "TTFB p99 ms", "p99 / 1 replica"
    );
    let baseline = rows[1].p99;
    for row in &rows {
        println!(
            "{:<24} {:>13} {:>14.2}× {:>12.1} {:>12.1} {:>13.2}×",
            row.name,
            row.upstream_gets,
            row.upstream_gets as f64,
            row.p50,
            row.p99,
            row.p99 / baseline
        );
    }
    println!("targets: regcache, 3 members: upstream bytes 1.00×, p99 ≤ 1.20× one replica");
    Ok(())
}

/// Waits until the member at `host` knows the group's owner key.
fn wait_for_owner_key(host: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = common::raw_request(host, "GET", "/status.json");
        let status: serde_json::Value = serde_json::from_slice(&body)?;
        if status["peers"]["owner_key"] == true {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{host} never learned the owner key");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One setup's figures.
struct Row {
    name: &'static str,
    upstream_gets: usize,
    p50: f64,
    p99: f64,
}

/// `clients` GETs of `digest` at once, round-robin over `hosts`; every body
/// read to its end and its length checked.
fn measure(
    name: &'static str,
    hosts: &[String],
    repo: &str,
    digest: &str,
    size: u64,
    clients: usize,
    upstream: &FaultProxy,
) -> anyhow::Result<Row> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut ttfb: Vec<f64> = runtime.block_on(async {
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
        let tasks: Vec<_> = (0..clients)
            .map(|n| {
                let url = format!("http://{}/v2/{repo}/blobs/{digest}", hosts[n % hosts.len()]);
                tokio::spawn(first_byte_then_all(http.clone(), url, size))
            })
            .collect();
        let mut ttfb = Vec::new();
        for task in tasks {
            ttfb.push(task.await??.as_secs_f64() * 1000.0);
        }
        anyhow::Ok(ttfb)
    })?;
    ttfb.sort_by(f64::total_cmp);
    let at = |q: f64| ttfb[((ttfb.len() as f64 * q) as usize).min(ttfb.len() - 1)];
    Ok(Row {
        name,
        upstream_gets: upstream.count("GET", &format!("/blobs/{digest}")),
        p50: at(0.5),
        p99: at(0.99),
    })
}

/// Time to the first body byte; fails unless the whole body arrives.
async fn first_byte_then_all(http: reqwest::Client, url: String, size: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let response = http.get(&url).send().await?;
    anyhow::ensure!(response.status().is_success(), "GET {url}: {}", response.status());
    let mut body = response.bytes_stream();
    let mut ttfb = None;
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        ttfb.get_or_insert_with(|| started.elapsed());
        received += chunk?.len() as u64;
    }
    anyhow::ensure!(received == size, "GET {url}: {received} of {size} bytes");
    ttfb.ok_or_else(|| anyhow::anyhow!("GET {url}: empty body"))
}
