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
//! Each setup gets a blob of its own, cold, and every body is checked.
//! Upstream GETs are counted as they arrive at a proxy in front of the
//! upstream. Targets: regcache's upstream
//! bytes 1× the blob; TTFB p99 of the three members ≤ 1.2× the single
//! replica's.
//!
//! `cargo bench -p regcache --bench cold_storm` (add `-- CLIENTS MIB`,
//! default 60 clients and 100 MiB).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::rollout::{MIB, Upstream, storm};
use testkit::{Registry, S3Server};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let clients: usize = args.next().map_or(Ok(60), |a| a.parse())?;
    let mib: u64 = args.next().map_or(Ok(100), |a| a.parse())?;
    let mut upstream = Upstream::start();
    let s3 = S3Server::start()?;
    let mut rows = Vec::new();
    let mut run = |name: &'static str, hosts: &[String], upstream: &mut Upstream| -> anyhow::Result<()> {
        let image = upstream.push(&format!("t{}", rows.len()), &[mib * MIB]);
        let digest = image.layer_digests[0].0.clone();
        rows.push(measure(name, hosts, &digest, clients, upstream)?);
        Ok(())
    };

    let direct = upstream.proxy.url().trim_start_matches("http://").to_owned();
    run("upstream, direct", &[direct], &mut upstream)?;

    let dir = tempfile::tempdir()?;
    let single = common::start_s3_replica(&upstream.proxy.url(), &s3, dir.path());
    run("regcache, 1 replica", &[single.host()], &mut upstream)?;
    drop(single);

    let cluster = Cluster::start_on_s3(&upstream.proxy.url(), 3, "", &s3);
    cluster.serving(Duration::from_secs(20));
    let hosts: Vec<String> = (1..=3).map(|id| cluster.member(id).host()).collect();
    run("regcache, 3 members", &hosts, &mut upstream)?;
    drop(cluster);

    let proxies: Vec<Registry> = (0..3)
        .map(|_| Registry::start_proxy(&upstream.proxy.url()))
        .collect::<anyhow::Result<_>>()?;
    let hosts: Vec<String> = proxies.iter().map(Registry::host).collect();
    run("3 distribution proxies", &hosts, &mut upstream)?;

    println!("cold_storm: {clients} clients GET one cold {mib} MiB blob, spread over the endpoints");
    println!(
        "{:<24} {:>13} {:>15} {:>12} {:>12} {:>16}",
        "", "upstream GETs", "upstream bytes", "TTFB p50 ms", "TTFB p99 ms", "p99 / 1 replica"
    );
    let baseline = rows[1].p99;
    for row in &rows {
        println!(
            "{:<24} {:>13} {:>14.2}× {:>12.1} {:>12.1} {:>15.2}×",
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
/// One setup's figures.
struct Row {
    name: &'static str,
    upstream_gets: usize,
    p50: f64,
    p99: f64,
}

/// `clients` GETs of `digest` at once, round-robin over `hosts`, every
/// body checked; upstream GETs (each a whole blob) counted as they arrive.
fn measure(
    name: &'static str,
    hosts: &[String],
    digest: &str,
    clients: usize,
    upstream: &Upstream,
) -> anyhow::Result<Row> {
    let blob = upstream.blob(digest);
    let pulls = (0..clients)
        .map(|n| (hosts[n % hosts.len()].clone(), None))
        .collect();
    let mut ttfb = Vec::new();
    for pulled in storm(pulls, digest, &blob) {
        let pulled = pulled.map_err(anyhow::Error::msg)?;
        ttfb.push((pulled.first_byte - pulled.started).as_secs_f64() * 1000.0);
    }
    ttfb.sort_by(f64::total_cmp);
    let at = |q: f64| ttfb[((ttfb.len() as f64 * q) as usize).min(ttfb.len() - 1)];
    Ok(Row {
        name,
        upstream_gets: upstream.blob_gets(digest),
        p50: at(0.5),
        p99: at(0.99),
    })
}
