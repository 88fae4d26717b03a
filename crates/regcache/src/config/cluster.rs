//! `[cluster]`: this replica's place in the Raft metadata group. The port it
//! names carries trusted peer traffic (Raft, forwarded writes), so it must be
//! reachable by the replicas only.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use meta::GroupSettings;

use super::fields::{self, AtField, FieldError};
use super::raw::RawCluster;
use crate::config::ClusterOverrides;

const DEFAULT_NODE_ID: u64 = 1;
/// Fewer entries would snapshot (and purge the log) all the time.
const MIN_SNAPSHOT_EVERY: u64 = 10;
/// The largest TOML integer: `config check` output must load back.
const MAX_INTEGER: u64 = i64::MAX as u64;

/// This replica's place in the Raft metadata group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// gRPC listener for Raft and peer traffic; None = no listener (a group
    /// of one that cannot be grown until one is configured).
    pub listen: Option<SocketAddr>,
    /// This member's place in the group: node id (default 1), the address
    /// peers reach it at ("" without a listener), the initial members
    /// (empty: a group of one), and how often to snapshot (>= 10).
    pub group: GroupSettings,
}

pub(super) fn cluster(raw: RawCluster, overrides: &ClusterOverrides) -> Result<ClusterConfig, FieldError> {
    resolve(raw, overrides, system_hostname)
}

/// [`cluster`] with the hostname lookup passed in, so tests need not change
/// the process's environment.
pub(super) fn resolve(
    raw: RawCluster,
    overrides: &ClusterOverrides,
    hostname: impl Fn() -> Option<String>,
) -> Result<ClusterConfig, FieldError> {
    let mut raw = overrides.apply(raw);
    if overrides.node_id_from_hostname {
        let name = hostname().ok_or_else(|| {
            FieldError::new(
                "cluster.node_id",
                "--node-id-from-hostname: no hostname ($HOSTNAME and /proc/sys/kernel/hostname are empty)",
            )
        })?;
        raw.node_id = Some(node_id_from_hostname(&name).at("cluster.node_id")?);
    }
    let node_id = raw.node_id.unwrap_or(DEFAULT_NODE_ID);
    check_id(node_id).at("cluster.node_id")?;
    let snapshot_every = raw
        .snapshot_every
        .unwrap_or(GroupSettings::DEFAULT_SNAPSHOT_EVERY);
    if !(MIN_SNAPSHOT_EVERY..=MAX_INTEGER).contains(&snapshot_every) {
        return Err(FieldError::new(
            "cluster.snapshot_every",
            format!("must be between {MIN_SNAPSHOT_EVERY} and {MAX_INTEGER}"),
        ));
    }
    let listen = match &raw.listen {
        Some(text) => Some(fields::socket_addr(text).at("cluster.listen")?),
        None => None,
    };
    let peers = peers(raw.peers.as_deref().unwrap_or_default()).at("cluster.peers")?;
    let own_entry = peers.get(&node_id);
    if !peers.is_empty() {
        if listen.is_none() {
            return Err(FieldError::new(
                "cluster.listen",
                "is required when cluster.peers is set",
            ));
        }
        if own_entry.is_none() {
            return Err(FieldError::new(
                "cluster.peers",
                format!("must list every initial member, this node (id {node_id}) included"),
            ));
        }
    }
    let advertise = match (raw.advertise, listen) {
        (Some(_), None) => {
            return Err(FieldError::new("cluster.advertise", "requires cluster.listen"));
        }
        (Some(text), Some(_)) => {
            check_host_port(&text).at("cluster.advertise")?;
            if let Some(entry) = own_entry
                && !same_address(entry, &text)
            {
                return Err(FieldError::new(
                    "cluster.advertise",
                    format!("{text:?} differs from this node's entry in cluster.peers ({entry:?})"),
                ));
            }
            text
        }
        (None, None) => String::new(),
        (None, Some(listen)) => match own_entry {
            Some(entry) => entry.clone(),
            None if !listen.ip().is_unspecified() => listen.to_string(),
            None => match hostname() {
                Some(name) => format!("{name}:{}", listen.port()),
                None => {
                    return Err(FieldError::new(
                        "cluster.advertise",
                        format!(
                            "is required: cluster.listen ({listen}) names no address and the hostname is unknown"
                        ),
                    ));
                }
            },
        },
    };
    Ok(ClusterConfig {
        listen,
        group: GroupSettings {
            node_id,
            advertise,
            peers,
            snapshot_every,
        },
    })
}

/// A StatefulSet pod is named `<set>-<ordinal>`; node ids start at 1, so
/// `regcache-0` is node 1.
pub(super) fn node_id_from_hostname(hostname: &str) -> Result<u64, String> {
    let ordinal = hostname
        .rsplit_once('-')
        .filter(|(set, ordinal)| {
            !set.is_empty() && !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|(_, ordinal)| ordinal.parse::<u64>().ok());
    ordinal.and_then(|o| o.checked_add(1)).ok_or_else(|| {
        format!(
            "hostname {hostname:?} does not end in -<ordinal> (a StatefulSet pod's name such as \"regcache-2\")"
        )
    })
}

/// `$HOSTNAME`, else the kernel's; None when both are empty.
fn system_hostname() -> Option<String> {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_kernel = || std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    [from_env, from_kernel()]
        .into_iter()
        .flatten()
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
}

/// `ID=HOST:PORT` entries keyed by id; neither ids nor addresses repeat.
fn peers(entries: &[String]) -> Result<BTreeMap<u64, String>, String> {
    let mut peers: BTreeMap<u64, String> = BTreeMap::new();
    for entry in entries {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| format!("invalid entry {entry:?} (expected ID=HOST:PORT)"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("invalid id in {entry:?} (expected a number)"))?;
        check_id(id).map_err(|e| format!("id in {entry:?} {e}"))?;
        check_host_port(addr).map_err(|e| format!("{entry:?}: {e}"))?;
        if peers.contains_key(&id) {
            return Err(format!("duplicate id {id}"));
        }
        if let Some((other, _)) = peers.iter().find(|(_, a)| same_address(a, addr)) {
            return Err(format!("duplicate address {addr:?} (ids {other} and {id})"));
        }
        peers.insert(id, addr.to_owned());
    }
    Ok(peers)
}

/// Host names are case-insensitive.
fn same_address(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn check_id(id: u64) -> Result<(), String> {
    match id {
        0 => Err("must be at least 1".to_owned()),
        id if id > MAX_INTEGER => Err(format!("must be at most {MAX_INTEGER}")),
        _ => Ok(()),
    }
}

/// `host:port` as peers dial it: a name or IP (IPv6 in brackets) and a port.
fn check_host_port(text: &str) -> Result<(), String> {
    let invalid =
        || format!("invalid address {text:?} (expected HOST:PORT, e.g. \"regcache-0.regcache-peers:5001\")");
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let host_ok = !host.is_empty()
        && !host.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '@' | '=' | ','))
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    let port_ok = port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}
