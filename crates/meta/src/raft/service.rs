//! The server side of the Raft transport: a tonic service that decodes the
//! JSON payloads of `proto/raft.proto` and hands them to the local [`Raft`],
//! including proposals that followers forward to the leader.
//!
//! Everything here comes from the network, so nothing is trusted: message
//! sizes are bounded by tonic's decoder, a snapshot stream by
//! [`MAX_SNAPSHOT_BYTES`], and malformed payloads answer `invalid_argument`.
//! A node whose Raft has stopped answers `unavailable`, which the client
//! side maps to "unreachable" so the leader backs off.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::errors::RaftError;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::channel::MAX_MESSAGE_BYTES;
use super::pb::raft_server::{Raft as RaftRpc, RaftServer};
use super::pb::{RaftReply, RaftRequest, SnapshotChunk};
use super::{Forwarded, Raft, Snapshot, SnapshotFile, SnapshotMeta, TypeConfig, Vote};
use crate::{Command, StateDb};

/// Largest snapshot accepted from a peer. Generous: the state is tags and a
/// content index, a few hundred bytes per entry, so this is tens of millions
/// of entries; it only stops a broken peer from filling the disk.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Serves Raft RPCs for one node. Received snapshots are spooled to
/// anonymous temporary files in `incoming` (on the data disk, not /tmp,
/// since a snapshot can be large), gone as soon as they are installed or
/// refused.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    incoming: PathBuf,
    /// Set when this member starts stopping: RPCs are refused from then on
    /// rather than handed to a Raft core that is going away (openraft logs
    /// an ERROR for each, e.g. when a whole cluster stops at once).
    stopping: Arc<AtomicBool>,
}

impl RaftService {
    /// A service for `raft`, spooling snapshots under `incoming` (created
    /// if missing).
    pub fn new(raft: Raft, incoming: &Path) -> io::Result<RaftService> {
        std::fs::create_dir_all(incoming)?;
        Ok(RaftService {
            raft,
            incoming: incoming.to_path_buf(),
            stopping: Arc::default(),
        })
    }

    /// Refuses every RPC from now on: this member is stopping.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn refuse_when_stopping(&self) -> Result<(), Status> {
        match self.stopping.load(Ordering::Relaxed) {
            true => Err(Status::unavailable("this member is stopping")),
            false => Ok(()),
        }
    }

    /// The tonic service to add to a `Server`, with decoding bounded.
    pub fn into_server(self) -> RaftServer<RaftService> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Receives a snapshot stream into a temporary file; checks the header
    /// and the size before handing it to Raft.
    async fn receive_snapshot(
        &self,
        mut stream: Streaming<SnapshotChunk>,
    ) -> Result<(Vote, Snapshot), Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let vote: Vote = decode(&first.vote, "snapshot vote")?;
        let meta: SnapshotMeta = decode(&first.meta, "snapshot meta")?;
        if first.size > MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
                first.size
            )));
        }

        let incoming = self.incoming.clone();
        let std_file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(incoming))
            .await
            .map_err(|e| Status::internal(format!("snapshot spool task failed: {e}")))?
            .map_err(|e| spool_err(&e))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut received: u64 = 0;
        let mut data = first.data;
        loop {
            received = received.saturating_add(data.len() as u64);
            if received > first.size {
                return Err(Status::invalid_argument(format!(
                    "snapshot stream longer than its announced {} bytes",
                    first.size
                )));
            }
            file.write_all(&data).await.map_err(|e| spool_err(&e))?;
            match stream.message().await? {
                None => break,
                Some(chunk) if !chunk.vote.is_empty() || !chunk.meta.is_empty() => {
                    return Err(Status::invalid_argument(
                        "snapshot header repeated after the first chunk",
                    ));
                }
                Some(chunk) => data = chunk.data,
            }
        }
        if received != first.size {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended after {received} of {} bytes",
                first.size
            )));
        }
        file.flush().await.map_err(|e| spool_err(&e))?;
        file.seek(SeekFrom::Start(0)).await.map_err(|e| spool_err(&e))?;
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotFile::from_file(file.into_std().await),
        };
        Ok((vote, snapshot))
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.refuse_when_stopping()?;
        let req: AppendEntriesRequest<TypeConfig> =
            decode(&request.into_inner().json, "append entries request")?;
        let resp = self.raft.append_entries(req).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.refuse_when_stopping()?;
        let req: VoteRequest<TypeConfig> = decode(&request.into_inner().json, "vote request")?;
        let resp = self.raft.vote(req).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn transfer_leader(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.refuse_when_stopping()?;
        let req: TransferLeaderRequest<TypeConfig> =
            decode(&request.into_inner().json, "transfer leader request")?;
        let resp = self.raft.handle_transfer_leader(req).await.map_err(stopped)?;
        reply(&resp)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        self.refuse_when_stopping()?;
        let (vote, snapshot) = self
            .receive_snapshot(request.into_inner())
            .await
            .inspect_err(|status| warn!(error = %status.message(), "snapshot refused"))?;
        let last = snapshot.meta.last_log_id;
        let resp = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(stopped)?;
        info!(?last, "snapshot received from leader");
        reply(&resp)
    }

    /// A proposal forwarded by a follower. Only the leader commits it; the
    /// follower asks again elsewhere on `failed_precondition`.
    async fn propose(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.refuse_when_stopping()?;
        let cmd: Command = decode(&request.into_inner().json, "command")?;
        StateDb::validate(&cmd).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let response = match self.raft.client_write(cmd).await {
            Ok(response) => response,
            Err(RaftError::APIError(e)) => return Err(Status::failed_precondition(e.to_string())),
            Err(RaftError::Fatal(e)) => return Err(stopped(e)),
        };
        if let Some(reason) = response.data.refused {
            return Err(Status::invalid_argument(reason));
        }
        reply(&Forwarded {
            log_index: response.log_id.index,
        })
    }
}

pub(super) fn decode<T: DeserializeOwned>(json: &[u8], what: &str) -> Result<T, Status> {
    serde_json::from_slice(json).map_err(|e| Status::invalid_argument(format!("bad {what}: {e}")))
}

pub(super) fn reply<T: Serialize>(resp: &T) -> Result<Response<RaftReply>, Status> {
    let json = serde_json::to_vec(resp).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
    Ok(Response::new(RaftReply { json }))
}

/// Raft's server-side errors are all fatal (it stopped or is stopping).
fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft node stopped: {e}"))
}

fn spool_err(e: &io::Error) -> Status {
    Status::internal(format!("cannot spool snapshot: {e}"))
}
