//! Raft storage for the metadata group: openraft's types for our commands, a
//! log store and a state machine over the existing [`StateDb`](crate::StateDb).
//!
//! [`Meta`](crate::Meta) runs a group over this storage. Layout under one
//! directory (see [`open_storage`]):
//!
//! - `raft-log.redb`: vote, log entries, committed and last purged log id
//!   ([`LogStore`]);
//! - the state database (tags, index, last applied log id and membership,
//!   all in one transaction per batch of entries) ([`StateMachineStore`]);
//! - `snapshots/current.jsonl`: the last snapshot, the state's JSON-lines
//!   format with the Raft metadata in its header ([`SnapshotFile`]).
//!
//! Between replicas, Raft RPCs travel over gRPC (`proto/raft.proto`):
//! [`GrpcNetwork`] is the client side openraft calls, [`RaftService`] the
//! server side that hands requests to the local [`Raft`].

pub mod admin;
mod channel;
mod log_store;
mod network;
mod service;
mod snapshot_file;
mod state_machine;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod storage_tests;

/// Wire types and tonic stubs generated from `proto/raft.proto` by build.rs.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("regcache.raft.v1");
}

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use channel::peer_endpoint;
pub(crate) use channel::raft_client;
pub use log_store::LogStore;
pub use network::GrpcNetwork;
pub use service::RaftService;
pub use snapshot_file::SnapshotFile;
pub use state_machine::StateMachineStore;

use crate::{Command, MetaError, StateDb};

openraft::declare_raft_types!(
    /// openraft's type configuration for the metadata group: the log carries
    /// [`Command`]s, peers are known by their gRPC address.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = Node,
);

/// A member as the membership config records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` of the peer's gRPC listener (Raft RPCs and peer traffic).
    pub addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// What applying one command answered. A command is refused, not failed,
/// when it is invalid in itself (e.g. a NUL in a tag key): every replica
/// refuses it alike, so it is still applied as a no-op and Raft goes on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Why the command was refused; `None` when it was applied.
    pub refused: Option<String>,
}

/// The leader's answer to a forwarded proposal: where it committed, so the
/// follower can wait until it applied that far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub log_index: u64,
}

/// openraft's `AppData` needs `Display` (for its log lines); the short name
/// is enough there and keeps payloads out of logs.
impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shorthands for openraft's generic types with [`TypeConfig`] filled in.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type LogEntry = openraft::alias::EntryOf<TypeConfig>;
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;
/// The Raft handle over this crate's state machine.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// Opens the log store and the state machine under `dir`, creating what is
/// missing. `state` is the replica's state database, shared so that reads
/// (`tag`, `entry`) keep going around Raft.
pub fn open_storage(dir: &Path, state: Arc<StateDb>) -> Result<(LogStore, StateMachineStore), MetaError> {
    let log = LogStore::open(&dir.join("raft-log.redb"))?;
    let sm = StateMachineStore::open(state, &dir.join("snapshots"))?;
    Ok((log, sm))
}

/// openraft's storage traits speak `io::Error`; the message keeps ours.
pub(crate) fn io_err(e: MetaError) -> io::Error {
    match e {
        MetaError::SnapshotIo(e) => e,
        e => io::Error::other(e),
    }
}

/// Runs blocking redb or file work off the async runtime.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, MetaError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(io_err),
        Err(join) => Err(io_err(MetaError::Task(join))),
    }
}

/// openraft's settings for the storage and transport tests: elections take
/// a fraction of a second (after a leader is lost, followers wait out its
/// lease, then an election timeout: failover ≈ 0.6 + 0.3..0.6 s), and the
/// log a snapshot covers is purged at once, so a node that misses more than
/// that can only catch up by snapshot.
#[cfg(test)]
pub(crate) fn test_config(snapshot_policy: openraft::SnapshotPolicy) -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "meta-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}
