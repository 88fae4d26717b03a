//! Membership changes and status over the cluster port: the `Admin` gRPC
//! service each member serves, and the client `regcache cluster …` uses.
//!
//! Only the leader changes the membership. A follower answers where the
//! leader is and the client asks it there, so any member's address works.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use tracing::info;

use super::channel::{admin_client, peer_endpoint};
use super::pb::admin_client::AdminClient;
use super::pb::admin_server::{Admin, AdminServer};
use super::pb::{RaftReply, RaftRequest};
use super::service::{decode, reply};
use super::{Node, Raft, TypeConfig};
use crate::GroupStatus;
use crate::gc_control::{GcControl, GcReport, GcRunOutcome, GcRunRequest};

/// How long `regcache cluster` waits to connect: a person is waiting, but
/// a slow network deserves more than the peers' second.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A member to add: its id and the address its cluster port is reached at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddNode {
    pub id: u64,
    pub addr: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveNode {
    pub id: u64,
}

/// What a request for the leader answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminAnswer<T = GroupStatus> {
    /// Done: for a membership change, the leader's view afterwards.
    Done(T),
    /// Ask the leader at this address (`None`: no leader right now).
    NotLeader { leader: Option<String> },
}

/// Serves [`Admin`] for one member.
#[derive(Clone)]
pub struct AdminService {
    raft: Raft,
    gc: Option<Arc<dyn GcControl>>,
}

impl AdminService {
    /// `gc` answers `regcache gc`; without it those requests are refused.
    pub fn new(raft: Raft, gc: Option<Arc<dyn GcControl>>) -> AdminService {
        AdminService { raft, gc }
    }

    fn gc(&self) -> Result<&dyn GcControl, Status> {
        self.gc
            .as_deref()
            .ok_or_else(|| Status::unimplemented("garbage collection is not served here"))
    }

    pub fn into_server(self) -> AdminServer<AdminService> {
        AdminServer::new(self)
    }

    fn status(&self) -> GroupStatus {
        GroupStatus::of(&self.raft)
    }

    /// Where the leader is, when this member is not it: asked to change the
    /// membership, openraft would refuse the same way but log an error.
    fn not_leader(&self) -> Option<Result<Response<RaftReply>, Status>> {
        let leader = self.leader_elsewhere()?;
        Some(reply(&AdminAnswer::<GroupStatus>::NotLeader { leader }))
    }

    /// `None` on the leader; else the leader's address, if there is one.
    fn leader_elsewhere(&self) -> Option<Option<String>> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.state == ServerState::Leader {
            return None;
        }
        let membership = metrics.membership_config.membership();
        let leader = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id))
            .map(|node| node.addr.clone());
        Some(leader)
    }

    /// Maps a refused membership change: not the leader → where it is.
    fn answer(
        &self,
        result: Result<(), RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
    ) -> Result<Response<RaftReply>, Status> {
        match result {
            Ok(()) => reply(&AdminAnswer::<GroupStatus>::Done(self.status())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                reply(&AdminAnswer::<GroupStatus>::NotLeader {
                    leader: forward.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(e)) => Err(Status::failed_precondition(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("raft node stopped: {e}"))),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        reply(&self.status())
    }

    async fn add_node(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let add: AddNode = decode(&request.into_inner().json, "add-node request")?;
        if add.id == 0 || add.addr.is_empty() {
            return Err(Status::invalid_argument(
                "a member needs an id >= 1 and an address",
            ));
        }
        if let Some(redirect) = self.not_leader() {
            return redirect;
        }
        info!(id = add.id, addr = add.addr, "adding a member as a learner");
        let node = Node { addr: add.addr };
        // Blocks until the learner has caught up (by log or snapshot), so
        // it becomes a voter without holding back the quorum.
        let result = async {
            self.raft.add_learner(add.id, node, true).await?;
            let voters = BTreeSet::from([add.id]);
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(voters), false)
                .await?;
            info!(id = add.id, "member is a voter");
            Ok(())
        }
        .await;
        self.answer(result)
    }

    async fn remove_node(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let remove: RemoveNode = decode(&request.into_inner().json, "remove-node request")?;
        if let Some(redirect) = self.not_leader() {
            return redirect;
        }
        let is_voter = self.raft.voter_ids().any(|id| id == remove.id);
        let ids = BTreeSet::from([remove.id]);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        info!(id = remove.id, "removing a member");
        let result = self.raft.change_membership(change, false).await.map(|_| ());
        self.answer(result)
    }

    async fn gc_run(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let run: GcRunRequest = decode(&request.into_inner().json, "gc run request")?;
        let gc = self.gc()?;
        if let Some(leader) = self.leader_elsewhere() {
            return reply(&AdminAnswer::<GcRunOutcome>::NotLeader { leader });
        }
        let outcome = gc.run(run.dry_run).await.map_err(Status::unavailable)?;
        reply(&AdminAnswer::Done(outcome))
    }

    async fn gc_status(&self, _request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let gc = self.gc()?;
        if let Some(leader) = self.leader_elsewhere() {
            return reply(&AdminAnswer::<GcReport>::NotLeader { leader });
        }
        reply(&AdminAnswer::Done(gc.report().map_err(Status::unavailable)?))
    }
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid cluster address {addr:?}: {source}")]
    InvalidAddr {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{addr} answered: {status}")]
    Status { addr: String, status: Status },
    #[error("no leader right now; try again in a few seconds")]
    NoLeader,
    #[error("the leader moved more than once; try again")]
    Redirects,
    #[error("cannot encode the request: {0}")]
    Encode(serde_json::Error),
    #[error("bad reply from {addr}: {source}")]
    Decode { addr: String, source: serde_json::Error },
}

/// `regcache cluster status`: one member's view.
pub async fn status(addr: &str) -> Result<GroupStatus, AdminError> {
    let mut client = connect(addr).await?;
    let reply = client
        .status(RaftRequest { json: b"{}".to_vec() })
        .await
        .map_err(|status| AdminError::Status {
            addr: addr.to_owned(),
            status,
        })?;
    parse(addr, &reply.into_inner().json)
}

/// `regcache cluster add-node`: returns the leader's view once `add` is a
/// voter.
pub async fn add_node(addr: &str, add: &AddNode) -> Result<GroupStatus, AdminError> {
    let json = serde_json::to_vec(add).map_err(AdminError::Encode)?;
    change(
        addr,
        json,
        |mut client, req| async move { client.add_node(req).await },
    )
    .await
}

/// `regcache cluster remove-node`.
pub async fn remove_node(addr: &str, remove: RemoveNode) -> Result<GroupStatus, AdminError> {
    let json = serde_json::to_vec(&remove).map_err(AdminError::Encode)?;
    change(addr, json, |mut client, req| async move {
        client.remove_node(req).await
    })
    .await
}

/// `regcache gc run`: on the leader, plans a pass (`dry_run`) or starts one.
pub async fn gc_run(addr: &str, dry_run: bool) -> Result<GcRunOutcome, AdminError> {
    let json = serde_json::to_vec(&GcRunRequest { dry_run }).map_err(AdminError::Encode)?;
    change(
        addr,
        json,
        |mut client, req| async move { client.gc_run(req).await },
    )
    .await
}

/// `regcache gc status`: the leader's report.
pub async fn gc_status(addr: &str) -> Result<GcReport, AdminError> {
    change(addr, b"{}".to_vec(), |mut client, req| async move {
        client.gc_status(req).await
    })
    .await
}

/// Sends a request for the leader, following its address at most twice.
async fn change<T, F, Fut>(addr: &str, json: Vec<u8>, call: F) -> Result<T, AdminError>
where
    T: serde::de::DeserializeOwned,
    F: Fn(AdminClient<tonic::transport::Channel>, RaftRequest) -> Fut,
    Fut: Future<Output = Result<Response<RaftReply>, Status>>,
{
    let mut target = addr.to_owned();
    for _ in 0..3 {
        let client = connect(&target).await?;
        let reply = call(client, RaftRequest { json: json.clone() })
            .await
            .map_err(|status| AdminError::Status {
                addr: target.clone(),
                status,
            })?;
        match parse(&target, &reply.into_inner().json)? {
            AdminAnswer::Done(status) => return Ok(status),
            AdminAnswer::NotLeader { leader: None } => return Err(AdminError::NoLeader),
            AdminAnswer::NotLeader { leader: Some(leader) } => target = leader,
        }
    }
    Err(AdminError::Redirects)
}

async fn connect(addr: &str) -> Result<AdminClient<tonic::transport::Channel>, AdminError> {
    let endpoint = peer_endpoint(addr).map_err(|source| AdminError::InvalidAddr {
        addr: addr.to_owned(),
        source,
    })?;
    let channel = endpoint
        .connect_timeout(ADMIN_CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|source| AdminError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(admin_client(channel))
}

fn parse<T: serde::de::DeserializeOwned>(addr: &str, json: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(json).map_err(|source| AdminError::Decode {
        addr: addr.to_owned(),
        source,
    })
}
