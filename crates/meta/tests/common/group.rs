//! `Meta` members as serving replicas run them: each with its own gRPC
//! listener on loopback.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use meta::{GroupSettings, Meta, TagRecord};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

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
    let (raft, admin) = meta.cluster_services().expect("a raft group");
    tokio::spawn(async move {
        Server::builder()
            .add_service(raft.into_server())
            .add_service(admin.into_server())
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .expect("serving grpc");
    });
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

/// Waits until `member` knows a leader (node 1 forms the group after its
/// grace period) and returns its id.
pub async fn leader(member: &Meta) -> u64 {
    let raft = member.raft().expect("a raft group");
    raft.wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .expect("the group elects a leader")
        .current_leader
        .expect("a leader id")
}
