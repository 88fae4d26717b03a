//! `Meta` members as serving replicas run them: each with its own gRPC
//! listener on loopback.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use meta::{GroupSettings, GroupStatus, Meta, TagRecord};
use tokio::net::TcpListener;

use super::key;

pub async fn start(dir: &Path, settings: &GroupSettings) -> Meta {
    Meta::start(dir, settings).await.expect("starting metadata")
}

/// `library/alpine:TAG` on docker.io as `meta` last applied it.
pub fn tag(meta: &Meta, tag: &str) -> Option<TagRecord> {
    meta.tag(&key("docker.io", "library/alpine", tag))
        .expect("reading a tag")
}

/// One member with its gRPC listener; the server stops with the test.
pub async fn member(dir: &Path, id: u64, peers: &BTreeMap<u64, String>, listener: TcpListener) -> Meta {
    let settings = GroupSettings {
        node_id: id,
        advertise: peers[&id].clone(),
        peers: peers.clone(),
        snapshot_every: 1000,
    };
    let meta = start(dir, &settings).await;
    let serving = meta
        .serve_cluster(
            listener,
            None,
            tonic::service::Routes::default(),
            std::future::pending(),
        )
        .expect("a raft group");
    tokio::spawn(async move { serving.await.expect("serving the cluster port") });
    meta
}

/// Members 1..=n over `dirs`, each listing all as peers.
pub async fn group(dirs: &[tempfile::TempDir]) -> Vec<Meta> {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=dirs.len() as u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        peers.insert(id, listener.local_addr().expect("bound address").to_string());
        listeners.push(listener);
    }
    let mut members = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        members.push(member(dirs[i].path(), i as u64 + 1, &peers, listener).await);
    }
    members
}

/// Waits until `member`'s view of the group satisfies `done`, for up to
/// 20 s; returns that view.
pub async fn wait_for_status(member: &Meta, what: &str, done: impl Fn(&GroupStatus) -> bool) -> GroupStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = member.status().expect("a raft group");
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "never {what}: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `member` knows a leader (node 1 forms the group after its
/// grace period) and returns its id.
pub async fn leader(member: &Meta) -> u64 {
    let status = wait_for_status(member, "a leader", |s| s.leader.is_some()).await;
    status.leader.expect("a leader id")
}

/// The member's node id.
pub fn id_of(member: &Meta) -> u64 {
    member.status().expect("a raft group").node_id
}

/// The voters' ids, as `status` lists them.
pub fn voters(status: &GroupStatus) -> Vec<u64> {
    status.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}
