//! Raft storage: openraft's own conformance suite for the log store and the
//! state machine, and a single-node group end to end across restarts,
//! snapshots and log purges.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::fixtures::{blob, digest, key, record, set_tag};
use crate::raft::{
    self, LogStore, Node, Raft, Snapshot, SnapshotFile, StateMachineStore, TypeConfig, Vote, test_config,
};
use crate::{Command, MetaError, StateDb};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{OptionalSend, ServerState, SnapshotPolicy, StorageError};
use tempfile::TempDir;

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

/// The state database and the Raft storage under `dir`, as a replica opens
/// them; the state handle is what local reads use.
fn open(dir: &Path) -> (Arc<StateDb>, LogStore, StateMachineStore) {
    let state = Arc::new(StateDb::open(&dir.join("state.redb")).expect("open state"));
    let (log, sm) = raft::open_storage(&dir.join("raft"), Arc::clone(&state)).expect("open raft storage");
    (state, log, sm)
}

// ---- openraft's conformance suite -----------------------------------------

/// Fresh stores in a temporary directory per suite case; the directory is
/// the guard the suite drops after each case.
struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_state, log, sm) = open(dir.path());
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::<TypeConfig, LogStore, StateMachineStore, TempStores, TempDir>::test_all(TempStores)
        .await
        .unwrap();
}

// ---- a single-node group --------------------------------------------------

/// A group of one sends no RPC; should it try, every RPC is refused.
struct NoPeers;

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = RefuseEveryRpc;

    async fn new_client(&mut self, _target: u64, _node: &Node) -> RefuseEveryRpc {
        RefuseEveryRpc
    }
}

struct RefuseEveryRpc;

fn refused() -> Unreachable<TypeConfig> {
    Unreachable::from_string("a single-node group has no peers")
}

impl RaftNetworkV2<TypeConfig> for RefuseEveryRpc {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(refused()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(refused()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(refused()))
    }
}

/// A running node over the storage in `dir`, and its state for reads.
async fn start(dir: &Path) -> (Raft, Arc<StateDb>) {
    let (state, log, sm) = open(dir);
    let raft = Raft::new(1, test_config(SnapshotPolicy::Never), NoPeers, log, sm)
        .await
        .expect("start raft");
    (raft, state)
}

/// Stops the node and waits until its storage is released, so the same
/// files can be opened again as after a process restart. `shutdown` joins
/// openraft's core task only: its workers drop their storage handles a
/// moment later, and redb refuses a second open while one is alive.
async fn stop(raft: Raft, state: Arc<StateDb>, dir: &Path) {
    raft.shutdown().await.expect("shutdown");
    drop(raft);
    drop(state);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = LogStore::open(&dir.join("raft/raft-log.redb"));
        let state = StateDb::open(&dir.join("state.redb"));
        match (log, state) {
            (Ok(_), Ok(_)) => return,
            (log, state) if tokio::time::Instant::now() > deadline => {
                panic!(
                    "storage still open after shutdown: {:?} {:?}",
                    log.err(),
                    state.err()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn wait_leader(raft: &Raft) {
    raft.wait(WAIT)
        .state(ServerState::Leader, "node 1 leads")
        .await
        .expect("leader");
}

async fn write(raft: &Raft, cmd: Command) -> u64 {
    let response = raft.client_write(cmd).await.expect("client write");
    assert_eq!(response.data.refused, None);
    response.log_id.index
}

fn tag_of(state: &StateDb, tag: &str) -> Option<crate::TagRecord> {
    state
        .tag(&key("docker.io", "library/alpine", tag))
        .expect("read tag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_writes_survive_restart_snapshot_and_purge() {
    let dir = tempfile::tempdir().unwrap();

    // A fresh node: initialize it with itself, write, read back locally.
    let (raft, state) = start(dir.path()).await;
    assert!(!raft.is_initialized().await.unwrap());
    let members = BTreeMap::from([(
        1,
        Node {
            addr: "127.0.0.1:1".into(),
        },
    )]);
    raft.initialize(members).await.unwrap();
    wait_leader(&raft).await;
    write(&raft, set_tag("latest", 1)).await;
    write(
        &raft,
        Command::PutEntry {
            digest: digest(1),
            entry: blob(100, 7),
        },
    )
    .await;
    assert_eq!(tag_of(&state, "latest"), Some(record(1, 1)));
    assert_eq!(state.entry(&digest(1)).unwrap(), Some(blob(100, 7)));

    // A command invalid in itself is refused and applied as a no-op; the
    // group goes on.
    let bad = Command::SetTag {
        key: key("docker.io", "bad\0name", "latest"),
        record: record(9, 9),
    };
    let response = raft.client_write(bad).await.unwrap();
    assert!(response.data.refused.is_some_and(|r| r.contains("nul")));
    let last = write(&raft, set_tag("v1", 2)).await;
    let before = raft.metrics().borrow_watched().clone();
    assert_eq!(
        state.raft_applied().unwrap().last_log_id.map(|id| id.index),
        Some(last)
    );
    stop(raft, state, dir.path()).await;

    // On disk: the vote and every entry up to the last write.
    let mut log = LogStore::open(&dir.path().join("raft/raft-log.redb")).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(before.vote));
    let on_disk = log.get_log_state().await.unwrap();
    assert_eq!(on_disk.last_log_id.map(|id| id.index), Some(last));
    assert_eq!(log.try_get_log_entries(..).await.unwrap().len() as u64, last + 1);
    drop(log);

    // Restart: vote, log and state survive; no initialize; leader again.
    let (raft, state) = start(dir.path()).await;
    assert!(raft.is_initialized().await.unwrap());
    assert_eq!(
        tag_of(&state, "latest"),
        Some(record(1, 1)),
        "state is there before leadership"
    );
    wait_leader(&raft).await;
    let after = raft.metrics().borrow_watched().clone();
    // The vote survived: the term never goes back (openraft may restore a
    // restarted single leader without a new election, keeping the term).
    assert!(before.vote.leader_id.term >= 1);
    assert!(
        after.vote.leader_id.term >= before.vote.leader_id.term,
        "{after:?}"
    );
    assert!(after.last_log_index >= before.last_log_index);
    let last = write(&raft, set_tag("v2", 3)).await;
    assert_eq!(tag_of(&state, "v2"), Some(record(3, 3)));
    assert_eq!(tag_of(&state, "v1"), Some(record(2, 2)));

    // Snapshot, then purge the log it covers.
    raft.trigger().snapshot().await.unwrap();
    raft.wait(WAIT)
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= last), "snapshot built")
        .await
        .unwrap();
    raft.trigger().purge_log(last).await.unwrap();
    raft.wait(WAIT)
        .metrics(|m| m.purged.is_some_and(|p| p.index >= last), "log purged")
        .await
        .unwrap();
    let snapshot_at = raft.metrics().borrow_watched().snapshot.unwrap();
    stop(raft, state, dir.path()).await;

    let mut log = LogStore::open(&dir.path().join("raft/raft-log.redb")).unwrap();
    let log_state = log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_purged_log_id, Some(snapshot_at));
    drop(log);
    assert!(dir.path().join("raft/snapshots/current.jsonl").is_file());

    // Restart with a purged log: recovers from state and snapshot, commits more.
    let (raft, state) = start(dir.path()).await;
    wait_leader(&raft).await;
    assert_eq!(tag_of(&state, "v2"), Some(record(3, 3)));
    let current = raft.get_snapshot().await.unwrap().expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(snapshot_at));
    write(&raft, set_tag("v3", 4)).await;
    assert_eq!(tag_of(&state, "v3"), Some(record(4, 4)));
    stop(raft, state, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_state_is_rebuilt_from_snapshot_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let (raft, state) = start(dir.path()).await;
    raft.initialize(BTreeMap::from([(1, Node::default())]))
        .await
        .unwrap();
    wait_leader(&raft).await;
    let in_snapshot = write(&raft, set_tag("old", 1)).await;
    raft.trigger().snapshot().await.unwrap();
    raft.wait(WAIT)
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= in_snapshot),
            "snapshot built",
        )
        .await
        .unwrap();
    raft.trigger().purge_log(in_snapshot).await.unwrap();
    raft.wait(WAIT)
        .metrics(|m| m.purged.is_some_and(|p| p.index >= in_snapshot), "log purged")
        .await
        .unwrap();
    // After the snapshot: only in the log.
    write(&raft, set_tag("new", 2)).await;
    stop(raft, state, dir.path()).await;

    // The state database is lost (e.g. deleted by hand); log and snapshot remain.
    std::fs::remove_file(dir.path().join("state.redb")).unwrap();
    let (raft, state) = start(dir.path()).await;
    wait_leader(&raft).await;
    raft.wait(WAIT)
        .metrics(
            |m| m.last_applied.is_some_and(|a| a.index > in_snapshot),
            "log re-applied",
        )
        .await
        .unwrap();
    assert_eq!(tag_of(&state, "old"), Some(record(1, 1)), "from the snapshot");
    assert_eq!(tag_of(&state, "new"), Some(record(2, 2)), "from the log");
    stop(raft, state, dir.path()).await;
}

#[tokio::test]
async fn snapshot_whose_header_disagrees_with_its_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (source_state, _log, mut source) = open(&dir.path().join("a"));
    source_state
        .apply(1, &set_tag("latest", 1))
        .expect("apply outside raft");
    let mut built = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // Claim the snapshot holds a later log entry than its header says.
    built.meta.last_log_id = Some(openraft::testing::log_id::<TypeConfig>(1, 1, 5));

    let (target_state, _log, mut target) = open(&dir.path().join("b"));
    let err = target
        .install_snapshot(&built.meta, built.snapshot)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("metadata"), "{err}");
    assert_eq!(target_state.last_applied().unwrap(), None, "state untouched");
    assert!(
        target.get_current_snapshot().await.unwrap().is_none(),
        "nothing published"
    );
    assert!(matches!(
        StateDb::validate(&Command::SetTag {
            key: key("a\0", "b", "c"),
            record: record(1, 1)
        }),
        Err(MetaError::InvalidTagKey(_))
    ));
}
