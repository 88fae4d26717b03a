//! regcache's load tool: starts the real servers through testkit (the
//! upstream registry with seeded images, SeaweedFS, regcache as a cluster or
//! one replica, and the anchors: distribution's proxy and nginx), loads them
//! with k6 and wrk, and prints one table of figures and ratios measured in
//! the same run. See loadtest/README.md.

mod bench;
mod cpu;
mod faults;
mod fetch;
mod k6;
mod nginx;
mod report;
mod seed;
mod serve;
mod setup;
mod wrk;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Load tests of regcache against distribution's proxy and nginx, as ratios")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Seconds, not minutes: small images and short runs (what CI runs).
    #[arg(long, global = true)]
    smoke: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Exit 1 when a figure misses its target (figures on a shared machine
    /// are noisy, so by default only broken runs fail).
    #[arg(long, global = true)]
    strict: bool,
    /// Keep the work directory (plans, k6 summaries, server logs) and print
    /// its path.
    #[arg(long, global = true)]
    keep: bool,
}

#[derive(Subcommand)]
enum Command {
    /// k6 scenarios (pull, fleet, manifests, storm, ranges) against a
    /// 3-member cluster, one replica and distribution's proxy.
    Bench,
    /// One warm replica against nginx and distribution's proxy with wrk and
    /// curl: blobs from memory, disk and S3, manifests by tag, peak RSS.
    Serve {
        /// Measure this many times, each with fresh servers, and report
        /// each figure's median and the range of each ratio.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
    },
    /// The fleet scenario on a 3-member cluster while a follower, then the
    /// leader, is killed -9, a follower is cut off, S3 stops or slows down,
    /// and a member's disk fills.
    Faults {
        /// Only these faults (comma-separated): no-fault, kill-follower,
        /// kill-leader, partition, s3-down, s3-slow, disk-full.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

/// `serve` `runs` times; each run's table as it ends, then their medians.
fn serve_runs(scale: &serve::Scale, runs: u32) -> anyhow::Result<report::Report> {
    if runs == 1 {
        return serve::run(scale);
    }
    let mut reports = Vec::new();
    for run in 1..=runs {
        eprintln!("loadtest: serve, run {run} of {runs}");
        let report = serve::run(scale)?;
        report.print();
        reports.push(report);
    }
    Ok(report::Report::median_of(reports))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let work = tempfile::Builder::new().prefix("loadtest-").tempdir()?;
    let (report, failures) = match cli.command {
        Command::Bench => bench::run(&bench::Scale::new(cli.smoke), work.path())?,
        Command::Faults { only } => faults::run(&faults::Scale::new(cli.smoke), &only, work.path())?,
        Command::Serve { runs } => (serve_runs(&serve::Scale::new(cli.smoke), runs)?, Vec::new()),
    };
    report.print();
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.to_json())?)?;
    }
    if cli.keep {
        eprintln!("loadtest: work files kept in {}", work.keep().display());
    }
    if !failures.is_empty() {
        bail!("broken: {}", failures.join("; "));
    }
    let misses = report.misses();
    if cli.strict && !misses.is_empty() {
        bail!("targets missed: {}", misses.join(", "));
    }
    Ok(())
}
