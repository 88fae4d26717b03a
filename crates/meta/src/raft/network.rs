//! The client side of the Raft transport: what openraft calls to reach a
//! peer, over one lazily connected gRPC channel per peer.
//!
//! Requests and replies are openraft's own types as JSON in the protobuf
//! `bytes` fields (see `proto/raft.proto` for why). Errors are mapped so
//! openraft backs off where that helps: a peer that cannot be reached (or
//! answers "unavailable", e.g. while shutting down) is `Unreachable`, a
//! request that ran past its deadline is `Timeout`, anything else is a
//! `Network` error retried at once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use openraft::OptionalSend;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;
use tracing::{info, warn};

use super::channel::{peer_endpoint, raft_client};
use super::pb::raft_client::RaftClient;
use super::pb::{RaftReply, RaftRequest, SnapshotChunk};
use super::{Node, Snapshot, SnapshotFile, TypeConfig, Vote};

/// Snapshot bytes per gRPC message: large enough that per-message overhead
/// is negligible, small enough to stay far below the decoding limit.
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Why an RPC to a peer failed, before openraft sorts it into its kinds.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid peer address {addr:?}: {source}")]
    InvalidAddr {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("rpc failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("cannot encode request: {0}")]
    Encode(serde_json::Error),
    #[error("cannot decode reply: {0}")]
    Decode(serde_json::Error),
    #[error("cannot read snapshot: {0}")]
    Snapshot(#[from] io::Error),
}

/// openraft's network factory: one [`PeerClient`] per target, made when
/// openraft first replicates to (or asks a vote of) that member.
#[derive(Clone, Debug)]
pub struct GrpcNetwork {
    /// This node's id, for the `Timeout` errors openraft wants.
    id: u64,
    reachability: Arc<Reachability>,
}

/// Which peers this member could not reach, so an outage is one WARN line
/// and its end one INFO line, whatever the number of heartbeats and
/// clients openraft makes for the peer (its own per-heartbeat lines are
/// below the default log level).
#[derive(Debug, Default)]
struct Reachability {
    /// Since when each unreachable peer has been.
    down: Mutex<HashMap<u64, Instant>>,
}

impl Reachability {
    fn reached(&self, target: u64) {
        let since = self
            .down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&target);
        if let Some(since) = since {
            info!(node_id = target, down_for = ?since.elapsed(), "raft peer reachable again");
        }
    }

    fn missed(&self, target: u64, addr: &str, error: &dyn std::fmt::Display) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Vacant(slot) = down.entry(target) {
            slot.insert(Instant::now());
            warn!(node_id = target, addr, %error, "raft peer unreachable");
        }
    }
}

/// Bound on sending one full snapshot, streaming and installing included.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

impl GrpcNetwork {
    /// A factory for node `id`: connects within the cluster port's connect
    /// timeout (openraft retries), and allows a snapshot transfer 10 minutes.
    pub fn new(id: u64) -> GrpcNetwork {
        GrpcNetwork {
            id,
            reachability: Arc::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerClient;

    /// Never fails: the channel connects on first use (and reconnects after
    /// a failure by itself); an address that does not parse makes every RPC
    /// answer `Unreachable` with the reason.
    async fn new_client(&mut self, target: u64, node: &Node) -> PeerClient {
        let client = peer_endpoint(&node.addr)
            .map(|endpoint| raft_client(endpoint.connect_lazy()))
            .map_err(|source| {
                TransportError::InvalidAddr {
                    addr: node.addr.clone(),
                    source,
                }
                .to_string()
            });
        PeerClient {
            id: self.id,
            target,
            addr: node.addr.clone(),
            client,
            snapshot_timeout: SNAPSHOT_TIMEOUT,
            reachability: Arc::clone(&self.reachability),
        }
    }
}

/// The connection to one peer, as openraft's `RaftNetworkV2`.
pub struct PeerClient {
    id: u64,
    target: u64,
    addr: String,
    /// The client, or why the peer's address is unusable.
    client: Result<RaftClient<Channel>, String>,
    snapshot_timeout: Duration,
    reachability: Arc<Reachability>,
}

impl PeerClient {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable<TypeConfig>> {
        // Cloning a tonic client clones a handle to the same channel.
        self.client.clone().map_err(Unreachable::from_string)
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> Timeout<TypeConfig> {
        Timeout {
            action,
            id: self.id,
            target: self.target,
            timeout,
        }
    }

    /// One unary RPC: encode, send within `option.hard_ttl()`, decode;
    /// the peer's reachability is noted either way.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, RaftRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, tonic::Status>>,
    {
        let ttl = option.hard_ttl();
        let sent = async {
            let client = self.client()?;
            let json = serde_json::to_vec(req).map_err(|e| network(TransportError::Encode(e)))?;
            match tokio::time::timeout(ttl, call(client, RaftRequest { json })).await {
                Err(_elapsed) => Err(RPCError::Timeout(self.timeout(action, ttl))),
                Ok(Err(status)) => Err(from_status(status)),
                Ok(Ok(reply)) => Ok(reply.into_inner()),
            }
        }
        .await;
        match &sent {
            Ok(_) => self.reachability.reached(self.target),
            Err(e @ (RPCError::Unreachable(_) | RPCError::Timeout(_))) => {
                self.reachability.missed(self.target, &self.addr, e);
            }
            Err(_) => {}
        }
        serde_json::from_slice(&sent?.json).map_err(|e| RPCError::Network(network(TransportError::Decode(e))))
    }

    /// Streams `snapshot` to the peer: a header chunk, then the file in
    /// [`SNAPSHOT_CHUNK_BYTES`] pieces, read asynchronously as they are sent.
    async fn send_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let size = snapshot.snapshot.len().map_err(snapshot_err)?;
        let header = SnapshotChunk {
            vote: serde_json::to_vec(&vote).map_err(|e| network(TransportError::Encode(e)))?,
            meta: serde_json::to_vec(&snapshot.meta).map_err(|e| network(TransportError::Encode(e)))?,
            data: Vec::new(),
            size,
        };
        let file = tokio::fs::File::from_std(snapshot.snapshot.into_file().map_err(snapshot_err)?);

        // A read error ends the stream early; the receiver then sees fewer
        // bytes than `size` and installs nothing, and we report the error.
        let read_error: Arc<Mutex<Option<io::Error>>> = Arc::default();
        let slot = Arc::clone(&read_error);
        let chunks = stream::unfold(file, move |mut file| {
            let slot = Arc::clone(&slot);
            async move {
                let mut data = vec![0; SNAPSHOT_CHUNK_BYTES];
                match file.read(&mut data).await {
                    Ok(0) => None,
                    Ok(n) => {
                        data.truncate(n);
                        let chunk = SnapshotChunk {
                            data,
                            ..SnapshotChunk::default()
                        };
                        Some((chunk, file))
                    }
                    Err(e) => {
                        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                        None
                    }
                }
            }
        });
        let result = client
            .install_snapshot(stream::once(async move { header }).chain(chunks))
            .await;
        if let Some(e) = read_error.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(snapshot_err(e));
        }
        let reply = result.map_err(|status| match from_status(status) {
            RPCError::Unreachable(e) => StreamingError::Unreachable(e),
            RPCError::Timeout(e) => StreamingError::Timeout(e),
            RPCError::Network(e) => StreamingError::Network(e),
            RPCError::RemoteError(e) => match e.source {},
        })?;
        serde_json::from_slice(&reply.into_inner().json)
            .map_err(|e| StreamingError::Network(network(TransportError::Decode(e))))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RPCTypes::AppendEntries, &rpc, &option, |mut c, req| async move {
            c.append_entries(req).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RPCTypes::Vote, &rpc, &option, |mut c, req| async move {
            c.vote(req).await
        })
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RPCTypes::TransferLeader, &req, &option, |mut c, req| async move {
            c.transfer_leader(req).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let limit = self.snapshot_timeout;
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            sent = tokio::time::timeout(limit, self.send_snapshot(vote, snapshot)) => match sent {
                Ok(result) => result,
                Err(_elapsed) => Err(StreamingError::Timeout(
                    self.timeout(RPCTypes::InstallSnapshot, limit),
                )),
            },
        }
    }
}

fn network(e: TransportError) -> NetworkError<TypeConfig> {
    NetworkError::new(&e)
}

fn snapshot_err(e: io::Error) -> StreamingError<TypeConfig> {
    StreamingError::Network(network(TransportError::Snapshot(e)))
}

/// `Unavailable` is what tonic answers when it cannot connect, and what our
/// server answers when its Raft is shutting down: both mean back off.
fn from_status(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&TransportError::Status(status))),
        _ => RPCError::Network(network(TransportError::Status(status))),
    }
}
