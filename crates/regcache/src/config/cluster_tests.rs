//! `[cluster]` and its flags.

use std::collections::BTreeMap;

use super::cluster::{node_id_from_hostname, resolve};
use super::raw::RawCluster;
use super::tests::{assert_section_errors, load_str, write};
use super::*;
use crate::config::ClusterOverrides;
use meta::GroupSettings;

const DEFAULT: ClusterConfig = ClusterConfig {
    listen: None,
    group: GroupSettings {
        node_id: 1,
        advertise: String::new(),
        peers: BTreeMap::new(),
        snapshot_every: GroupSettings::DEFAULT_SNAPSHOT_EVERY,
    },
};

const THREE: &str = r#"peers = ["1=regcache-0.regcache-peers:5001", "2=regcache-1.regcache-peers:5001", "3=regcache-2.regcache-peers:5001"]"#;

fn peers(entries: &[(u64, &str)]) -> BTreeMap<u64, String> {
    entries
        .iter()
        .map(|(id, addr)| (*id, (*addr).to_owned()))
        .collect()
}

fn with_cluster(cluster: ClusterOverrides) -> ServeOverrides {
    ServeOverrides {
        cluster,
        ..ServeOverrides::default()
    }
}

/// `[cluster]` with `body`, resolved as on a host named `hostname`; errors
/// as `field: message`.
fn resolve_on(
    hostname: Option<&str>,
    body: &str,
    overrides: &ClusterOverrides,
) -> Result<ClusterConfig, String> {
    let raw: RawCluster = toml::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    resolve(raw, overrides, || hostname.map(str::to_owned)).map_err(|e| format!("{}: {}", e.field, e.message))
}

#[test]
fn cluster_defaults_to_a_group_of_one_without_listener() {
    assert_eq!(load(None, &ServeOverrides::default()).unwrap().cluster, DEFAULT);
    assert_eq!(load_str("[cluster]\n").unwrap().cluster, DEFAULT);
    assert_eq!(load_str("[cluster]\npeers = []\n").unwrap().cluster, DEFAULT);
}

#[test]
fn cluster_with_every_field() {
    let cfg = load_str(&format!(
        r#"
        [cluster]
        node_id = 2
        listen = "0.0.0.0:5001"
        advertise = "regcache-1.regcache-peers:5001"
        {THREE}
        snapshot_every = 500
        "#
    ))
    .unwrap();
    assert_eq!(
        cfg.cluster,
        ClusterConfig {
            listen: Some("0.0.0.0:5001".parse().unwrap()),
            group: GroupSettings {
                node_id: 2,
                advertise: "regcache-1.regcache-peers:5001".into(),
                peers: peers(&[
                    (1, "regcache-0.regcache-peers:5001"),
                    (2, "regcache-1.regcache-peers:5001"),
                    (3, "regcache-2.regcache-peers:5001"),
                ]),
                snapshot_every: 500,
            },
        }
    );
    // A listener without peers: a group of one that can be grown.
    let cfg = load_str("[cluster]\nlisten = \"10.0.0.7:5001\"\n").unwrap();
    assert_eq!(
        cfg.cluster,
        ClusterConfig {
            listen: Some("10.0.0.7:5001".parse().unwrap()),
            group: GroupSettings {
                advertise: "10.0.0.7:5001".into(),
                ..DEFAULT.group
            },
        }
    );
}

#[test]
fn node_id_from_a_statefulset_hostname() {
    for (hostname, id) in [
        ("regcache-0", 1),
        ("regcache-12", 13),
        ("my-cache-3", 4),
        ("regcache-18446744073709551614", u64::MAX),
    ] {
        assert_eq!(node_id_from_hostname(hostname), Ok(id), "{hostname}");
    }
    for hostname in [
        "web-a",
        "regcache-",
        "regcache",
        "-3",
        "regcache-+1",
        "regcache- 1",
        "regcache-1a",
        "",
        "regcache-18446744073709551615",
        "regcache-99999999999999999999",
    ] {
        let err = node_id_from_hostname(hostname).unwrap_err();
        assert!(
            err.contains(&format!("hostname {hostname:?} does not end in -<ordinal>")),
            "{hostname}: {err}"
        );
    }
}

#[test]
fn node_id_from_hostname_flag() {
    let flag = ClusterOverrides {
        node_id_from_hostname: true,
        ..ClusterOverrides::default()
    };
    let peers3 = format!("listen = \"0.0.0.0:5001\"\n{THREE}");
    // The hostname wins over the file's node_id and picks this node's entry.
    let cfg = resolve_on(Some("regcache-2"), &format!("node_id = 1\n{peers3}"), &flag).unwrap();
    assert_eq!(cfg.group.node_id, 3);
    assert_eq!(cfg.group.advertise, "regcache-2.regcache-peers:5001");
    assert_eq!(
        resolve_on(Some("regcache-0"), "", &flag).unwrap().group.node_id,
        1
    );
    for (hostname, expected) in [
        (
            Some("web-a"),
            "cluster.node_id: hostname \"web-a\" does not end in -<ordinal>",
        ),
        (
            Some("regcache-"),
            "cluster.node_id: hostname \"regcache-\" does not end in -<ordinal>",
        ),
        (None, "cluster.node_id: --node-id-from-hostname: no hostname"),
        // Ordinal 3 is not one of the three initial members.
        (
            Some("regcache-3"),
            "cluster.peers: must list every initial member, this node (id 4) included",
        ),
    ] {
        let err = resolve_on(hostname, &peers3, &flag).unwrap_err();
        assert!(
            err.contains(expected),
            "{hostname:?}\n  gave: {err}\n  want: {expected}"
        );
    }
    // Without the flag the hostname is not consulted for the id.
    assert_eq!(
        resolve_on(Some("web-a"), "", &ClusterOverrides::default()).unwrap(),
        DEFAULT
    );
}

#[test]
fn advertise_defaults() {
    let none = ClusterOverrides::default();
    let on_host = |body: &str| resolve_on(Some("node-a"), body, &none);
    // This node's entry in peers, even for a wildcard listener.
    let cfg = on_host(&format!("node_id = 3\nlisten = \"0.0.0.0:5001\"\n{THREE}")).unwrap();
    assert_eq!(cfg.group.advertise, "regcache-2.regcache-peers:5001");
    // Else a listener's specific address, IPv6 in brackets.
    assert_eq!(
        on_host("listen = \"10.1.2.3:5001\"").unwrap().group.advertise,
        "10.1.2.3:5001"
    );
    assert_eq!(
        on_host("listen = \"[fd00::7]:5001\"").unwrap().group.advertise,
        "[fd00::7]:5001"
    );
    // Else the hostname with the listener's port.
    assert_eq!(
        on_host("listen = \"0.0.0.0:5001\"").unwrap().group.advertise,
        "node-a:5001"
    );
    assert_eq!(
        on_host("listen = \"[::]:7000\"").unwrap().group.advertise,
        "node-a:7000"
    );
    // Nothing without a listener.
    assert_eq!(on_host("node_id = 5").unwrap().group.advertise, "");
    let err = resolve_on(None, "listen = \"0.0.0.0:5001\"", &none).unwrap_err();
    assert!(
        err.starts_with("cluster.advertise: is required: cluster.listen (0.0.0.0:5001) names no address"),
        "{err}"
    );
    // An explicit advertise wins over all of these.
    let cfg = resolve_on(
        None,
        "listen = \"0.0.0.0:5001\"\nadvertise = \"lb.example:6001\"",
        &none,
    )
    .unwrap();
    assert_eq!(cfg.group.advertise, "lb.example:6001");
    // Matching this node's entry, host names compared without case.
    let cfg = on_host(&format!(
        "node_id = 2\nlisten = \"0.0.0.0:5001\"\nadvertise = \"Regcache-1.regcache-peers:5001\"\n{THREE}"
    ))
    .unwrap();
    assert_eq!(cfg.group.advertise, "Regcache-1.regcache-peers:5001");
}

/// Each bad `[cluster]` body and the text its error must contain.
fn bad_cluster() -> Vec<(String, String)> {
    let mut bad: Vec<(String, String)> = [
        ("node_id = 0", "cluster.node_id: must be at least 1"),
        ("snapshot_every = 9", "cluster.snapshot_every: must be between 10 and"),
        ("snapshot_every = 0", "cluster.snapshot_every: must be between 10 and"),
        ("listen = \"localhost:5001\"", "cluster.listen: invalid socket address"),
        ("listen = \"5001\"", "cluster.listen: invalid socket address"),
        (
            "advertise = \"regcache-0:5001\"",
            "cluster.advertise: requires cluster.listen",
        ),
        (
            "listen = \"0.0.0.0:5001\"\nadvertise = \"regcache-0\"",
            "cluster.advertise: invalid address \"regcache-0\"",
        ),
        (
            "listen = \"0.0.0.0:5001\"\nadvertise = \"regcache-0:http\"",
            "cluster.advertise: invalid address",
        ),
        (
            "peers = [\"1=a:5001\"]",
            "cluster.listen: is required when cluster.peers is set",
        ),
        (
            "listen = \"0.0.0.0:5001\"\npeers = [\"2=a:5001\", \"3=b:5001\"]",
            "cluster.peers: must list every initial member, this node (id 1) included",
        ),
        (
            "node_id = 2\nlisten = \"0.0.0.0:5001\"\nadvertise = \"b:5002\"\npeers = [\"1=a:5001\", \"2=b:5001\"]",
            "cluster.advertise: \"b:5002\" differs from this node's entry in cluster.peers (\"b:5001\")",
        ),
        (
            "listen = \"0.0.0.0:5001\"\npeers = [\"1=a:5001\", \"2=b:5001\", \"1=c:5001\"]",
            "cluster.peers: duplicate id 1",
        ),
        (
            "listen = \"0.0.0.0:5001\"\npeers = [\"1=a:5001\", \"2=b:5001\", \"3=A:5001\"]",
            "cluster.peers: duplicate address \"A:5001\" (ids 1 and 3)",
        ),
        ("listen = \"0.0.0.0:5001\"\npeers = [\"1=a:5001\", \"2=a:5001\"]", "duplicate address"),
    ]
    .iter()
    .map(|(text, want)| (text.to_string(), want.to_string()))
    .collect();
    for (entry, want) in [
        ("a:5001", "invalid entry \"a:5001\" (expected ID=HOST:PORT)"),
        ("x=a:5001", "invalid id in \"x=a:5001\""),
        ("-1=a:5001", "invalid id in \"-1=a:5001\""),
        ("=a:5001", "invalid id in \"=a:5001\""),
        ("0=a:5001", "id in \"0=a:5001\" must be at least 1"),
        (
            "9223372036854775808=a:5001",
            "id in \"9223372036854775808=a:5001\" must be at most 9223372036854775807",
        ),
        ("1=a", "\"1=a\": invalid address \"a\""),
        ("1=:5001", "\"1=:5001\": invalid address \":5001\""),
        ("1=a:", "\"1=a:\": invalid address \"a:\""),
        ("1=a:0", "\"1=a:0\": invalid address \"a:0\""),
        ("1=a:65536", "\"1=a:65536\": invalid address \"a:65536\""),
        ("1=a:+5", "\"1=a:+5\": invalid address \"a:+5\""),
        ("1=a b:5001", "\"1=a b:5001\": invalid address \"a b:5001\""),
        (
            "1=http://a:5001",
            "\"1=http://a:5001\": invalid address \"http://a:5001\"",
        ),
        ("1=::1:5001", "\"1=::1:5001\": invalid address \"::1:5001\""),
    ] {
        bad.push((
            format!("listen = \"0.0.0.0:5001\"\npeers = [\"{entry}\"]"),
            format!("cluster.peers: {want}"),
        ));
    }
    bad
}

#[test]
fn bad_cluster_values_name_their_field() {
    assert_section_errors("cluster", bad_cluster());
}

#[test]
fn good_peer_entries_load() {
    let cfg = load_str(
        "[cluster]\nnode_id = 7\nlisten = \"[::]:5001\"\n\
         peers = [\"7=[fd00::7]:5001\", \"10=10.0.0.10:5001\", \"8=regcache-1.regcache-peers.ns.svc:65535\"]\n",
    )
    .unwrap();
    assert_eq!(
        cfg.cluster.group.peers,
        peers(&[
            (7, "[fd00::7]:5001"),
            (8, "regcache-1.regcache-peers.ns.svc:65535"),
            (10, "10.0.0.10:5001"),
        ])
    );
    assert_eq!(cfg.cluster.group.advertise, "[fd00::7]:5001");
    assert_eq!(
        load_str("[cluster]\nsnapshot_every = 10\n")
            .unwrap()
            .cluster
            .group
            .snapshot_every,
        10
    );
}

#[test]
fn cluster_listen_must_not_take_the_http_port() {
    for (listen, cluster_listen) in [
        ("0.0.0.0:5000", "0.0.0.0:5000"),
        ("0.0.0.0:5000", "10.0.0.7:5000"),
        ("10.0.0.7:5000", "0.0.0.0:5000"),
        ("127.0.0.1:5000", "[::]:5000"),
    ] {
        let err = load_str(&format!(
            "listen = \"{listen}\"\n[cluster]\nlisten = \"{cluster_listen}\"\n"
        ))
        .unwrap_err()
        .to_string();
        let want = format!("cluster.listen: {cluster_listen} would take the port of listen ({listen})");
        assert!(err.contains(&want), "gave: {err}\nwant: {want}");
    }
    for (listen, cluster_listen) in [
        ("0.0.0.0:5000", "0.0.0.0:5001"),
        ("127.0.0.1:5000", "127.0.0.2:5000"),
        ("0.0.0.0:5000", "[::1]:5000"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        load_str(&format!(
            "listen = \"{listen}\"\n[cluster]\nlisten = \"{cluster_listen}\"\n"
        ))
        .unwrap_or_else(|e| panic!("{listen} {cluster_listen}: {e}"));
    }
    // The flag for the HTTP listener counts too.
    let file = write("[cluster]\nlisten = \"127.0.0.1:6000\"\n");
    let overrides = ServeOverrides {
        listen: Some("127.0.0.1:6000".parse().unwrap()),
        ..ServeOverrides::default()
    };
    let err = load(Some(file.path()), &overrides).unwrap_err().to_string();
    assert!(
        err.contains("cluster.listen: 127.0.0.1:6000 would take the port"),
        "{err}"
    );
}

#[test]
fn cluster_flags_win_over_the_file() {
    let file = write(&format!(
        "[cluster]\nnode_id = 2\nlisten = \"10.0.0.2:5001\"\n{THREE}\nsnapshot_every = 50\n"
    ));
    // A flag without the others keeps the file's values.
    let cfg = load(
        Some(file.path()),
        &with_cluster(ClusterOverrides {
            snapshot_every: Some(20),
            ..ClusterOverrides::default()
        }),
    )
    .unwrap();
    assert_eq!(cfg.cluster.group.node_id, 2);
    assert_eq!(cfg.cluster.listen, Some("10.0.0.2:5001".parse().unwrap()));
    assert_eq!(cfg.cluster.group.advertise, "regcache-1.regcache-peers:5001");
    assert_eq!(cfg.cluster.group.peers.len(), 3);
    assert_eq!(cfg.cluster.group.snapshot_every, 20);
    // Every flag: --peer replaces the file's list rather than adding to it.
    let all = with_cluster(ClusterOverrides {
        node_id: Some(5),
        node_id_from_hostname: false,
        cluster_listen: Some("127.0.0.1:7001".into()),
        cluster_advertise: Some("127.0.0.1:7001".into()),
        peers: vec!["5=127.0.0.1:7001".into(), "6=127.0.0.1:7002".into()],
        snapshot_every: Some(1000),
    });
    let want = ClusterConfig {
        listen: Some("127.0.0.1:7001".parse().unwrap()),
        group: GroupSettings {
            node_id: 5,
            advertise: "127.0.0.1:7001".into(),
            peers: peers(&[(5, "127.0.0.1:7001"), (6, "127.0.0.1:7002")]),
            snapshot_every: 1000,
        },
    };
    assert_eq!(load(Some(file.path()), &all).unwrap().cluster, want);
    // The same on top of the embedded default.
    assert_eq!(load(None, &all).unwrap().cluster, want);
    // --node-id alone must still be one of the file's peers.
    let err = load(
        Some(file.path()),
        &with_cluster(ClusterOverrides {
            node_id: Some(4),
            ..ClusterOverrides::default()
        }),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cluster.peers: must list every initial member, this node (id 4) included"),
        "{err}"
    );

    // Flags are checked by the file's rules, under the field's name.
    for (cluster, expected) in [
        (
            ClusterOverrides {
                node_id: Some(0),
                ..ClusterOverrides::default()
            },
            "cluster.node_id: must be at least 1",
        ),
        (
            ClusterOverrides {
                node_id: Some(u64::MAX),
                ..ClusterOverrides::default()
            },
            "cluster.node_id: must be at most 9223372036854775807",
        ),
        (
            ClusterOverrides {
                cluster_listen: Some("nope".into()),
                ..ClusterOverrides::default()
            },
            "cluster.listen: invalid socket address \"nope\"",
        ),
        (
            ClusterOverrides {
                cluster_advertise: Some("a:5001".into()),
                ..ClusterOverrides::default()
            },
            "cluster.advertise: requires cluster.listen",
        ),
        (
            ClusterOverrides {
                cluster_listen: Some("127.0.0.1:7001".into()),
                peers: vec!["1=a:7001".into(), "1=b:7001".into()],
                ..ClusterOverrides::default()
            },
            "cluster.peers: duplicate id 1",
        ),
        (
            ClusterOverrides {
                snapshot_every: Some(9),
                ..ClusterOverrides::default()
            },
            "cluster.snapshot_every: must be between 10 and",
        ),
    ] {
        let err = load(None, &with_cluster(cluster)).unwrap_err().to_string();
        assert!(err.contains(expected), "gave: {err}\nwant: {expected}");
        assert!(err.starts_with("embedded default: "), "{err}");
    }
}

#[test]
fn cluster_types_and_unknown_fields_name_the_line() {
    for (text, expected) in [
        (
            "[cluster]\nnode_id = -1",
            "invalid value: integer `-1`, expected u64",
        ),
        ("[cluster]\nnode_id = \"1\"", "invalid type"),
        ("[cluster]\npeers = \"1=a:5001\"", "invalid type"),
        ("[cluster]\nnodeid = 1", "unknown field `nodeid`"),
    ] {
        let err = load_str(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(err.contains("line 2"), "{text:?}: no line in {err}");
    }
}

#[test]
fn rendered_cluster_loads_back_to_the_same_config() {
    for (cluster, shown) in [
        (
            format!("node_id = 3\nlisten = \"0.0.0.0:5001\"\n{THREE}\nsnapshot_every = 500"),
            &[
                "[cluster]\nnode_id = 3\n",
                "listen = \"0.0.0.0:5001\"",
                "advertise = \"regcache-2.regcache-peers:5001\"",
                "peers = [\"1=regcache-0.regcache-peers:5001\", \"2=regcache-1.regcache-peers:5001\", \
                 \"3=regcache-2.regcache-peers:5001\"]",
                "snapshot_every = 500",
            ][..],
        ),
        (
            "listen = \"127.0.0.1:5001\"".to_owned(),
            &["advertise = \"127.0.0.1:5001\"", "peers = []"],
        ),
        (
            String::new(),
            &["[cluster]\nnode_id = 1\npeers = []\nsnapshot_every = 10000\n"],
        ),
    ] {
        let cfg = load_str(&format!("[cluster]\n{cluster}\n")).unwrap();
        let rendered = render_redacted(&cfg);
        for line in shown {
            assert!(rendered.contains(line), "no {line} in\n{rendered}");
        }
        assert_eq!(load_str(&rendered).unwrap(), cfg, "{rendered}");
    }
}

/// The `[cluster]` table of the example in docs/configuration.md.
#[test]
fn documented_cluster_example_loads() {
    let docs = include_str!("../../../../docs/configuration.md");
    let start = docs.find("```toml\n").unwrap();
    let example = &docs[start..];
    let example = &example[..3 + example[3..].find("```").unwrap()];
    let table = &example[example.find("\n[cluster]\n").unwrap()..];
    let table = &table[..table[1..].find("\n[").map_or(table.len(), |end| end + 1)];
    let cfg = load_str(table).unwrap_or_else(|e| panic!("{table}\n{e}"));
    assert_eq!(cfg.cluster.group.peers.len(), 3, "{table}");
    assert_eq!(
        cfg.cluster.group.advertise,
        cfg.cluster.group.peers[&cfg.cluster.group.node_id]
    );
}
