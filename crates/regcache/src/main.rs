//! `regcache`: a pull-through cache for container registries.

mod cli;
mod clients;
mod cluster;
mod config;
mod gc;
mod rebuild;
mod serve;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, ConfigCommand, IndexCommand, LogFormat, ReplicaArgs};
use metrics_exporter_prometheus::Matcher;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(ConfigCommand::Check { file, overrides }) => {
            config::load(file.as_deref(), &overrides)
                .map(|cfg| print!("{}", config::render_redacted(&cfg)))
                .map_err(anyhow::Error::from)
        }
        Command::Config(ConfigCommand::Client(command)) => clients::run(&command),
        Command::Cluster(command) => print_answer(cluster::execute(&command)),
        Command::Gc(command) => print_answer(gc::execute(&command)),
        Command::Index(IndexCommand::Rebuild(args)) => load(&args).and_then(|cfg| {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            println!("{}", runtime.block_on(rebuild::run(&cfg))?);
            Ok(())
        }),
        Command::Serve(args) => load(&args).and_then(run_serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// Starts logging and loads the replica's configuration.
fn load(args: &ReplicaArgs) -> anyhow::Result<config::Config> {
    init_logging(args.log_format);
    Ok(config::load(args.config.as_deref(), &args.overrides)?)
}

/// An error and each of its causes whose message it does not already
/// contain, on one line.
fn report(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

fn run_serve(cfg: config::Config) -> anyhow::Result<()> {
    // Real histograms (not summaries) so latencies aggregate across replicas.
    let seconds = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .install_recorder()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve::run(cfg, metrics))
}

/// Runs a client command (`cluster`, `gc`) to completion and prints its
/// answer.
fn print_answer(answer: impl std::future::Future<Output = anyhow::Result<String>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    print!("{}", runtime.block_on(answer)?);
    Ok(())
}

/// The log filter when `RUST_LOG` is unset: openraft logs its internal
/// state at INFO and every failed heartbeat to a down member at WARN (ten
/// lines a second), which means nothing to an operator; the group's
/// changes and unreachable peers are logged by `meta` in regcache's own
/// words instead, once each.
const DEFAULT_LOG_FILTER: &str = "info,openraft=error";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
