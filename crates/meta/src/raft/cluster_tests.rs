//! Three Raft nodes in one process, talking over the real gRPC transport on
//! loopback: election, replication, failover after the leader stops, and a
//! node that was down past a log purge brought back by snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fixtures::{key, record, set_tag};
use crate::raft::{self, GrpcNetwork, LogStore, Node, Raft, RaftService, test_config};
use crate::{StateDb, TagRecord};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{RaftMetrics, ServerState, SnapshotPolicy};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

const DEADLINE: Duration = Duration::from_secs(10);

/// One running member: Raft, its state for local reads, its gRPC server.
struct Member {
    id: u64,
    dir: PathBuf,
    addr: SocketAddr,
    raft: Raft,
    state: Arc<StateDb>,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

async fn start(id: u64, dir: &Path, listener: TcpListener) -> Member {
    let addr = listener.local_addr().expect("listener address");
    let state = Arc::new(StateDb::open(&dir.join("state.redb")).expect("opening the state machine"));
    let (log, sm) = raft::open_storage(&dir.join("raft"), Arc::clone(&state)).expect("opening raft storage");
    let raft = Raft::new(
        id,
        test_config(SnapshotPolicy::LogsSinceLast(20)),
        GrpcNetwork::new(id),
        log,
        sm,
    )
    .await
    .expect("starting raft");
    let service =
        RaftService::new(raft.clone(), &dir.join("raft/incoming")).expect("starting the raft service");
    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("serving grpc");
    });
    Member {
        id,
        dir: dir.to_path_buf(),
        addr,
        raft,
        state,
        stop_server,
        server,
    }
}

/// Stops Raft and the server, then waits until the storage files can be
/// opened again (openraft's workers drop their handles a moment after
/// `shutdown` returns), as after a process exit.
async fn stop(member: Member) -> (PathBuf, SocketAddr) {
    let Member {
        dir,
        addr,
        raft,
        state,
        stop_server,
        server,
        ..
    } = member;
    raft.shutdown().await.expect("shutting raft down");
    drop(raft);
    drop(state);
    let _ = stop_server.send(());
    let abort = server.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        abort.abort();
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = LogStore::open(&dir.join("raft/raft-log.redb"));
        let state = StateDb::open(&dir.join("state.redb"));
        if log.is_ok() && state.is_ok() {
            return (dir, addr);
        }
        assert!(Instant::now() < deadline, "storage still open after stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metrics(member: &Member) -> RaftMetrics<raft::TypeConfig> {
    member.raft.metrics().borrow_watched().clone()
}

/// Waits until one of `members` leads and every one of them knows it.
async fn leader(members: &[&Member]) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let views: Vec<_> = members.iter().map(|m| metrics(m)).collect();
        if let Some(leader) = views[0].current_leader
            && views.iter().all(|v| v.current_leader == Some(leader))
            && views
                .iter()
                .zip(members)
                .any(|(v, m)| m.id == leader && v.state == ServerState::Leader)
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "no agreed leader: {views:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn tag_of(member: &Member, tag: &str) -> Option<TagRecord> {
    member
        .state
        .tag(&key("docker.io", "library/alpine", tag))
        .expect("a raft write")
}

/// Writes through `leader`. A just-elected leader refuses writes until a
/// quorum has acknowledged it (openraft's lease: `ForwardToLeader` with no
/// leader, reason `LeaseExpired`); that is retried briefly, as a proposer must.
async fn write(leader: &Member, tag: &str, n: u32) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match leader.raft.client_write(set_tag(tag, n)).await {
            Ok(response) => {
                assert_eq!(response.data.refused, None);
                return response.log_id.index;
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))
                if forward.leader_id.is_none() && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("write {tag} on node {}: {e:?}", leader.id),
        }
    }
}

/// Waits until every member's local state shows `tag` as written.
async fn converged(members: &[&Member], tag: &str, n: u32) {
    let deadline = Instant::now() + DEADLINE;
    for member in members {
        while tag_of(member, tag) != Some(record(n, u64::from(n))) {
            assert!(
                Instant::now() < deadline,
                "node {} never applied {tag}: {:?}",
                member.id,
                metrics(member)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn find(members: &[Member], id: u64) -> &Member {
    members
        .iter()
        .find(|m| m.id == id)
        .expect("a member with this id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_fail_over_and_catch_up_by_snapshot() {
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut members = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.push(start(i as u64 + 1, dir.path(), listener).await);
    }
    let nodes: BTreeMap<u64, Node> = members
        .iter()
        .map(|m| {
            let addr = m.addr.to_string();
            (m.id, Node { addr })
        })
        .collect();

    // Bootstrap: node 1 alone initializes the membership of all three.
    let started = Instant::now();
    members[0].raft.initialize(nodes).await.unwrap();
    let first = leader(&members.iter().collect::<Vec<_>>()).await;
    eprintln!("first leader: node {first} after {:?}", started.elapsed());

    // A write on the leader reaches every node's state machine.
    write(find(&members, first), "v0", 1).await;
    converged(&members.iter().collect::<Vec<_>>(), "v0", 1).await;

    // The leader stops; the other two elect a new one and take writes.
    let pos = members.iter().position(|m| m.id == first).unwrap();
    let old = members.remove(pos);
    let old_last_log = metrics(&old).last_log_index.unwrap();
    let stopped_at = Instant::now();
    let (old_dir, old_addr) = stop(old).await;
    let stop_took = stopped_at.elapsed();
    let rest: Vec<&Member> = members.iter().collect();
    let second = leader(&rest).await;
    let election = stopped_at.elapsed();
    assert_ne!(second, first);
    eprintln!(
        "failover: node {second} leads {election:?} after node {first} began to stop \
         (stopping it took {stop_took:?}; lease 600 ms + election timeout 300-600 ms)"
    );
    write(find(&members, second), "after-failover", 2).await;
    converged(&rest, "after-failover", 2).await;

    // Many writes while the old leader is down: snapshots are built and the
    // log it would need is purged, so only a snapshot can bring it back.
    let mut last = 0;
    for n in 0..60 {
        last = write(find(&members, second), &format!("t{n}"), 100 + n).await;
    }
    let new_leader = find(&members, second);
    new_leader
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > old_last_log),
            "log purged past the stopped node",
        )
        .await
        .unwrap();
    converged(&rest, "t59", 159).await;

    let listener = TcpListener::bind(old_addr).await.unwrap();
    let back = start(first, &old_dir, listener).await;
    let caught_up = Instant::now();
    back.raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.last_applied.is_some_and(|a| a.index >= last),
            "restarted node applied everything",
        )
        .await
        .unwrap();
    let m = metrics(&back);
    assert!(
        m.snapshot.is_some_and(|s| s.index > old_last_log),
        "caught up by snapshot: {m:?}"
    );
    eprintln!("node {first} caught up by snapshot in {:?}", caught_up.elapsed());
    members.push(back);
    let all: Vec<&Member> = members.iter().collect();
    converged(&all, "t59", 159).await;
    converged(&all, "after-failover", 2).await;
    assert_eq!(leader(&all).await, second, "the returning node does not disrupt");

    // Still one group: a write now reaches all three.
    write(find(&members, second), "final", 3).await;
    converged(&all, "final", 3).await;

    for member in members {
        stop(member).await;
    }
}

/// What a broken or hostile peer may send is refused with a status, and
/// nothing partial is ever installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rpcs_and_bad_snapshot_streams_are_refused() {
    use crate::raft::pb::raft_client::RaftClient;
    use crate::raft::pb::{RaftRequest, SnapshotChunk};
    use tonic::Code;

    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = start(1, dir.path(), listener).await;
    let mut client = RaftClient::connect(format!("http://{}", member.addr))
        .await
        .unwrap();

    let status = client
        .append_entries(RaftRequest {
            json: b"{not json".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("bad append entries request"));
    let status = client.vote(RaftRequest { json: Vec::new() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // A genuine header, from a leader in a later term.
    let vote = serde_json::to_vec(&raft::Vote::new_committed(5, 2)).unwrap();
    let meta = serde_json::to_vec(&raft::SnapshotMeta {
        last_log_id: Some(openraft::testing::log_id::<raft::TypeConfig>(5, 2, 10)),
        last_membership: Default::default(),
    })
    .unwrap();
    let header = |size| SnapshotChunk {
        vote: vote.clone(),
        meta: meta.clone(),
        data: Vec::new(),
        size,
    };
    let data = |bytes: &[u8]| SnapshotChunk {
        data: bytes.to_vec(),
        ..SnapshotChunk::default()
    };

    let cases: Vec<(Vec<SnapshotChunk>, Code, &str)> = vec![
        (Vec::new(), Code::InvalidArgument, "empty snapshot stream"),
        (
            vec![header(10), data(b"short")],
            Code::InvalidArgument,
            "ended after 5 of 10 bytes",
        ),
        (
            vec![header(3), data(b"too long")],
            Code::InvalidArgument,
            "longer than its announced 3 bytes",
        ),
        (
            vec![header(u64::MAX)],
            Code::ResourceExhausted,
            "exceeds the limit",
        ),
        (
            vec![header(4), header(4)],
            Code::InvalidArgument,
            "header repeated",
        ),
    ];
    for (chunks, code, message) in cases {
        let status = client
            .install_snapshot(futures_util::stream::iter(chunks))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{status:?}");
    }
    assert_eq!(metrics(&member).snapshot, None, "nothing installed");
    assert_eq!(
        std::fs::read_dir(dir.path().join("raft/incoming"))
            .unwrap()
            .count(),
        0,
        "no spooled file left behind"
    );
    stop(member).await;
}

/// A peer that is down, or whose address does not parse, is "unreachable"
/// (openraft backs off) rather than a network error retried at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_peers_map_to_unreachable() {
    use openraft::errors::RPCError;
    use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
    use openraft::raft::VoteRequest;

    // A port that was just free: nothing listens there now.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut factory = GrpcNetwork::new(1);
    for addr in [closed.to_string(), "not a host:port".to_string()] {
        let mut peer = factory.new_client(2, &Node { addr: addr.clone() }).await;
        let request = VoteRequest::new(raft::Vote::new(1, 1), None);
        let option = RPCOption::new(Duration::from_secs(2));
        match peer.vote(request, option).await {
            Err(RPCError::Unreachable(_)) => {}
            other => panic!("{addr}: expected unreachable, got {other:?}"),
        }
    }
}
