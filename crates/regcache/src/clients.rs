//! `regcache config containerd|podman|docker`: the runtime configuration a
//! node needs to pull through the cache, generated so that nobody hand-writes
//! (and mistypes) one file per upstream on every node.
//!
//! Every value printed has been validated (URL origins, registry host names),
//! so none of them can contain a quote: plain `format!` yields valid TOML and
//! JSON.

use std::path::Path;

use crate::cli::ClientConfig;
use crate::config::ServeOverrides;
use crate::config::{self, check_remote_url, check_upstream_name};

/// Where containerd looks for hosts.toml files once `config_path` names it.
const CERTS_D: &str = "/etc/containerd/certs.d";

/// One upstream as a client sees it: the host in image references, and the
/// registry containerd falls back to when the cache does not answer.
#[derive(Debug, PartialEq, Eq)]
struct Upstream {
    name: String,
    server: String,
}

/// Runs one `regcache config <client>` command.
pub fn run(command: &ClientConfig) -> anyhow::Result<()> {
    match command {
        ClientConfig::Containerd {
            mirror,
            upstreams,
            dir: Some(dir),
        } => write_hosts_files(dir, mirror, &upstreams.names).map_err(anyhow::Error::msg),
        ClientConfig::Containerd {
            mirror,
            upstreams,
            dir: None,
        } => {
            print!("{}", containerd(mirror, &upstreams.names));
            Ok(())
        }
        ClientConfig::Podman {
            mirror,
            upstreams,
            insecure,
        } => {
            print!("{}", podman(mirror, &upstreams.names, *insecure));
            Ok(())
        }
        ClientConfig::Docker { mirror } => {
            print!("{}", docker(mirror));
            Ok(())
        }
    }
}

/// `--mirror` for containerd and dockerd: an http(s) URL of the cache's
/// root, returned as its origin (`http://host:port`). Both runtimes append
/// `/v2` to a mirror's path, and the cache serves at the root.
pub fn mirror_url(text: &str) -> Result<String, String> {
    let url = check_remote_url(text)?;
    if url.path() != "/" {
        return Err(format!(
            "{text:?} must have no path (the cache serves /v2/ at its root)"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// `--mirror` for podman: `host[:port]`, since registries.conf takes a
/// location without a scheme (`insecure` decides about http).
pub fn mirror_host(text: &str) -> Result<String, String> {
    if text.contains("://") {
        return Err(format!(
            "{text:?} must be HOST[:PORT] without a scheme (use --insecure for plain http)"
        ));
    }
    check_upstream_name(text)?;
    Ok(text.to_owned())
}

/// `--upstream NAME`, checked as the configuration checks upstream names.
pub fn upstream_name(text: &str) -> Result<String, String> {
    check_upstream_name(text)?;
    Ok(text.to_owned())
}

/// The named upstreams in the order given (duplicates dropped), or every
/// built-in one. A name that is not built in falls back to `https://NAME`,
/// which is what the runtimes would contact without a mirror.
fn upstreams(names: &[String]) -> Vec<Upstream> {
    let builtin: Vec<Upstream> = config::load(None, &ServeOverrides::default())
        .expect("the embedded default configuration is valid")
        .upstreams
        .into_iter()
        .map(|u| Upstream {
            server: u.client.remote_url.as_str().trim_end_matches('/').to_owned(),
            name: u.client.name,
        })
        .collect();
    if names.is_empty() {
        return builtin;
    }
    let mut chosen: Vec<Upstream> = Vec::new();
    for name in names {
        if chosen.iter().any(|u| &u.name == name) {
            continue;
        }
        let server = builtin
            .iter()
            .find(|u| &u.name == name)
            .map_or_else(|| format!("https://{name}"), |u| u.server.clone());
        chosen.push(Upstream {
            name: name.clone(),
            server,
        });
    }
    chosen
}

/// One hosts.toml: try the cache first, then the upstream itself.
/// containerd adds `?ns=<name>` to each request, which the cache routes by.
fn hosts_toml(upstream: &Upstream, mirror: &str) -> String {
    format!(
        "server = \"{}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        upstream.server
    )
}

/// Every hosts.toml, each after a comment naming its path, blank lines between.
fn containerd(mirror: &str, names: &[String]) -> String {
    upstreams(names)
        .iter()
        .map(|u| format!("# {CERTS_D}/{}/hosts.toml\n{}", u.name, hosts_toml(u, mirror)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `dir/<name>/hosts.toml` per upstream and prints each path.
fn write_hosts_files(dir: &Path, mirror: &str, names: &[String]) -> Result<(), String> {
    for upstream in upstreams(names) {
        let host_dir = dir.join(&upstream.name);
        std::fs::create_dir_all(&host_dir).map_err(|e| format!("creating {}: {e}", host_dir.display()))?;
        let path = host_dir.join("hosts.toml");
        std::fs::write(&path, hosts_toml(&upstream, mirror))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// registries.conf entries: each upstream mirrored at `mirror/<name>`, the
/// path prefix the cache routes by.
fn podman(mirror: &str, names: &[String], insecure: bool) -> String {
    let insecure = if insecure { "insecure = true\n" } else { "" };
    upstreams(names)
        .iter()
        .map(|u| {
            format!(
                "[[registry]]\nlocation = \"{0}\"\n\n[[registry.mirror]]\nlocation = \"{mirror}/{0}\"\n{insecure}",
                u.name
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// daemon.json's setting: dockerd mirrors Docker Hub only and sends no `ns`,
/// which the cache's default upstream (docker.io) answers.
fn docker(mirror: &str) -> String {
    format!("{{ \"registry-mirrors\": [\"{mirror}\"] }}\n")
}

#[cfg(test)]
mod tests;
