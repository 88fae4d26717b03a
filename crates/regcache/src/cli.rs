//! Command line. Subcommands are nested by topic (`config check`,
//! `config containerd`, `cluster …`, `gc …`, `index rebuild`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::clients;
use crate::config::ServeOverrides;

/// A pull-through cache for OCI and Docker registries.
#[derive(Debug, Parser)]
#[command(name = "regcache", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a cache replica.
    Serve(ReplicaArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with the content index.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Inspect and change the Raft group, through any member's cluster port.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Garbage collection on the leader, through any member's cluster port.
    #[command(subcommand)]
    Gc(GcCommand),
}

#[derive(Debug, Subcommand)]
pub enum GcCommand {
    /// Start a round now (sweep, orphans, idle tags, a pass), or with
    /// --dry-run print what a pass would take and the bytes it would free.
    Run {
        /// Any member's cluster port, e.g. regcache-0.regcache-peers:5001.
        #[arg(long, env = "REGCACHE_CLUSTER", value_name = "HOST:PORT")]
        cluster: String,
        /// Print what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the current pass and the leader's last rounds: when, how long,
    /// entries condemned and removed, objects deleted, tags dropped, errors.
    Status {
        /// Any member's cluster port.
        #[arg(long, env = "REGCACHE_CLUSTER", value_name = "HOST:PORT")]
        cluster: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show the members, the leader, term, commit and applied index, and
    /// each member's lag (as the leader knows it).
    Status {
        /// Any member's cluster port, e.g. regcache-0.regcache-peers:5001.
        #[arg(long, env = "REGCACHE_CLUSTER", value_name = "HOST:PORT")]
        cluster: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a running member: first as a learner, then as a voter once it
    /// has caught up. Start it with every current member in its --peer list.
    AddNode {
        /// Any member's cluster port.
        #[arg(long, env = "REGCACHE_CLUSTER", value_name = "HOST:PORT")]
        cluster: String,
        /// The new member's node id (above every current one).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// The new member's cluster port as the others reach it.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
    },
    /// Remove a member from the group; stop it afterwards.
    RemoveNode {
        /// Any member's cluster port.
        #[arg(long, env = "REGCACHE_CLUSTER", value_name = "HOST:PORT")]
        cluster: String,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Rebuild the content index from the object tier (after losing the
    /// metadata volume); run it with the replica's configuration while the
    /// replica is stopped. In a cluster that lost every metadata volume,
    /// run it on the member with the lowest id: it forms the group and
    /// sends the index to the others.
    Rebuild(ReplicaArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE and print the effective configuration `serve` would
    /// run with (flags and REGCACHE_* variables applied), secrets redacted.
    Check {
        /// Configuration file (TOML); without it the embedded default.
        #[arg(env = "REGCACHE_CONFIG", value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        overrides: Box<ServeOverrides>,
    },
    #[command(flatten)]
    Client(ClientConfig),
}

/// Runtime configuration that sends a node's pulls through the cache.
#[derive(Debug, Subcommand)]
pub enum ClientConfig {
    /// Print containerd's hosts.toml for each upstream, or write them with --dir.
    Containerd {
        /// The cache as nodes reach it, e.g. http://regcache.example:5000.
        #[arg(long, value_name = "URL", value_parser = clients::mirror_url)]
        mirror: String,
        #[command(flatten)]
        upstreams: UpstreamNames,
        /// Write DIR/<upstream>/hosts.toml (containerd's config_path) instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print registries.conf mirror entries for podman, CRI-O, buildah and skopeo.
    Podman {
        /// The cache as nodes reach it, e.g. regcache.example:5000.
        #[arg(long, value_name = "HOST[:PORT]", value_parser = clients::mirror_host)]
        mirror: String,
        #[command(flatten)]
        upstreams: UpstreamNames,
        /// Mark the mirror insecure: plain http or an unverified certificate.
        #[arg(long)]
        insecure: bool,
    },
    /// Print dockerd's daemon.json setting (dockerd mirrors Docker Hub only).
    Docker {
        /// The cache as nodes reach it, e.g. http://regcache.example:5000.
        #[arg(long, value_name = "URL", value_parser = clients::mirror_url)]
        mirror: String,
    },
}

/// Which upstreams a generated client configuration covers.
#[derive(Debug, Args)]
pub struct UpstreamNames {
    /// An upstream registry host, e.g. quay.io (repeatable; default: every
    /// built-in upstream).
    #[arg(long = "upstream", value_name = "NAME", value_parser = clients::upstream_name)]
    pub names: Vec<String>,
}

/// A replica's configuration, as `serve` and the offline tools read it.
#[derive(Debug, Args)]
pub struct ReplicaArgs {
    /// Configuration file (TOML); without it the embedded default is used.
    #[arg(long, env = "REGCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log output: human-readable text or one JSON object per line.
    #[arg(long, env = "REGCACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub overrides: ServeOverrides,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("regcache").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_takes_overrides() {
        let cli = parse(&[
            "serve",
            "--config",
            "/etc/regcache.toml",
            "--listen",
            "127.0.0.1:5555",
            "--data-dir",
            "/var/lib/regcache",
            "--upstream",
            "docker.io=http://127.0.0.1:5001",
            "--upstream",
            "registry.local:5000=https://registry.local:5000/v",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve: {cli:?}");
        };
        assert_eq!(args.config, Some(PathBuf::from("/etc/regcache.toml")));
        assert_eq!(args.log_format, LogFormat::Json);
        let o = args.overrides;
        assert_eq!(o.listen, Some("127.0.0.1:5555".parse().unwrap()));
        assert_eq!(o.data_dir, Some(PathBuf::from("/var/lib/regcache")));
        let names: Vec<_> = o.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["docker.io", "registry.local:5000"]);
        assert_eq!(o.upstreams[0].remote_url.as_str(), "http://127.0.0.1:5001/");
    }

    #[test]
    fn serve_takes_cluster_flags() {
        let cli = parse(&[
            "serve",
            "--node-id",
            "2",
            "--cluster-listen",
            "0.0.0.0:5001",
            "--cluster-advertise",
            "regcache-1.regcache-peers:5001",
            "--peer",
            "1=regcache-0.regcache-peers:5001",
            "--peer",
            "2=regcache-1.regcache-peers:5001,3=regcache-2.regcache-peers:5001",
            "--snapshot-every",
            "500",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve: {cli:?}");
        };
        let c = args.overrides.cluster;
        assert_eq!(c.node_id, Some(2));
        assert!(!c.node_id_from_hostname);
        assert_eq!(c.cluster_listen.as_deref(), Some("0.0.0.0:5001"));
        assert_eq!(
            c.cluster_advertise.as_deref(),
            Some("regcache-1.regcache-peers:5001")
        );
        assert_eq!(
            c.peers,
            [
                "1=regcache-0.regcache-peers:5001",
                "2=regcache-1.regcache-peers:5001",
                "3=regcache-2.regcache-peers:5001"
            ]
        );
        assert_eq!(c.snapshot_every, Some(500));
        let cli = parse(&[
            "index",
            "rebuild",
            "--node-id-from-hostname",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Index(IndexCommand::Rebuild(args)) = cli.command else {
            panic!("not index rebuild: {cli:?}");
        };
        assert!(args.overrides.cluster.node_id_from_hostname);
        assert_eq!(args.log_format, LogFormat::Json);
        for (args, expected) in [
            (
                &["serve", "--node-id", "1", "--node-id-from-hostname"][..],
                "cannot be used with",
            ),
            (&["serve", "--node-id", "-1"], "unexpected argument"),
            (&["serve", "--node-id", "one"], "invalid digit"),
            (&["serve", "--snapshot-every", "1e4"], "invalid digit"),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn config_check_takes_a_file_and_the_serve_overrides() {
        let cli = parse(&["config", "check", "regcache.toml", "--listen", "127.0.0.1:5555"]).unwrap();
        let Command::Config(ConfigCommand::Check { file, overrides }) = cli.command else {
            panic!("not config check: {cli:?}");
        };
        assert_eq!(file, Some(PathBuf::from("regcache.toml")));
        assert_eq!(overrides.listen, Some("127.0.0.1:5555".parse().unwrap()));
    }

    #[test]
    fn client_configs_take_mirror_and_upstreams() {
        let cli = parse(&[
            "config",
            "containerd",
            "--mirror",
            "http://cache:5000/",
            "--upstream",
            "quay.io",
            "--upstream",
            "ghcr.io",
            "--dir",
            "certs.d",
        ])
        .unwrap();
        let Command::Config(ConfigCommand::Client(ClientConfig::Containerd {
            mirror,
            upstreams,
            dir,
        })) = cli.command
        else {
            panic!("not config containerd: {cli:?}");
        };
        assert_eq!(mirror, "http://cache:5000");
        assert_eq!(upstreams.names, ["quay.io", "ghcr.io"]);
        assert_eq!(dir, Some(PathBuf::from("certs.d")));
        let cli = parse(&["config", "podman", "--mirror", "cache:5000", "--insecure"]).unwrap();
        let Command::Config(ConfigCommand::Client(ClientConfig::Podman {
            upstreams, insecure, ..
        })) = cli.command
        else {
            panic!("not config podman: {cli:?}");
        };
        assert!(insecure && upstreams.names.is_empty());
        for (args, expected) in [
            (&["config", "containerd"][..], "--mirror"),
            (
                &["config", "containerd", "--mirror", "cache:5000"],
                "scheme must be http or https",
            ),
            (
                &["config", "podman", "--mirror", "http://cache"],
                "without a scheme",
            ),
            (
                &["config", "docker", "--mirror", "http://cache/v2"],
                "must have no path",
            ),
            (
                &["config", "podman", "--mirror", "cache", "--upstream", "Quay.io"],
                "lowercase",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn bad_upstream_overrides_are_rejected() {
        for (arg, expected) in [
            ("docker.io", "expected NAME=URL"),
            ("Docker.io=http://x", "lowercase"),
            ("docker.io=ftp://x", "scheme must be http or https"),
            ("docker.io=http://user:pw@x", "credentials"),
        ] {
            let err = parse(&["serve", "--upstream", arg]).unwrap_err().to_string();
            assert!(err.contains(expected), "{arg}: {err}");
        }
    }
}
