//! Getting a command committed from whichever member is asked: the leader
//! appends it, a follower forwards it to the leader over the cluster port
//! and waits until it applied it too.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::observer::LastWritable;
use super::{FAIL_FAST_AFTER, PROPOSE_TIMEOUT};
use crate::raft::pb::RaftRequest;
use crate::raft::pb::raft_client::RaftClient;
use crate::raft::{self, Forwarded, Raft, Response, TypeConfig};
use crate::{Command, MetaError, status};

/// Pause between attempts while there is no leader to take a proposal.
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// Proposes commands for one member.
pub(super) struct Proposer {
    raft: Raft,
    node_id: u64,
    last_writable: LastWritable,
    /// The forwarding client for the current leader, by address.
    leader: Mutex<Option<(String, RaftClient<Channel>)>>,
}

/// Where one attempt at a proposal leaves it.
#[derive(Debug)]
enum Step {
    Done,
    /// No leader to take it right now (an election, a hand-over).
    Retry,
    Failed(MetaError),
    /// The leader is the member at this address.
    Forward(String),
}

impl Proposer {
    pub(super) fn new(raft: Raft, node_id: u64, last_writable: LastWritable) -> Proposer {
        Proposer {
            raft,
            node_id,
            last_writable,
            leader: Mutex::new(None),
        }
    }

    /// Whether a proposal made now can commit, as far as this member knows.
    pub(super) fn writable(&self) -> bool {
        status::writable(&self.raft.metrics().borrow_watched(), status::lease(&self.raft))
    }

    /// Commits `cmd` and returns once this member has applied it, so the
    /// proposer reads its own write. Every command is idempotent, so a
    /// proposal whose fate a leader change left unknown is simply made
    /// again. Fails at once while the group has long been without a quorum.
    pub(super) async fn propose(&self, cmd: &Command) -> Result<(), MetaError> {
        if !self.writable() && self.last_writable.elapsed() > FAIL_FAST_AFTER {
            return Err(MetaError::NoQuorum);
        }
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.attempt(cmd, deadline)).await {
                Err(_elapsed) => return Err(MetaError::NoQuorum),
                Ok(Step::Done) => return Ok(()),
                Ok(Step::Failed(e)) => return Err(e),
                Ok(Step::Retry | Step::Forward(_)) => {}
            }
            tokio::time::sleep(RETRY_AFTER).await;
            if Instant::now() >= deadline {
                return Err(MetaError::NoQuorum);
            }
        }
    }

    async fn attempt(&self, cmd: &Command, deadline: Instant) -> Step {
        let written = self.raft.client_write(cmd.clone()).await.map(|r| r.data);
        let addr = match after_write(written, self.node_id) {
            Step::Forward(addr) => addr,
            step => return step,
        };
        let index = match self.forward(&addr, cmd).await {
            Ok(index) => index,
            Err(step) => return step,
        };
        let applied = self
            .raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .applied_index_at_least(Some(index), "forwarded proposal applied here")
            .await;
        match applied {
            Ok(_) => Step::Done,
            Err(_) => Step::Retry,
        }
    }

    /// Sends `cmd` to the leader at `addr`; the log index it committed at.
    async fn forward(&self, addr: &str, cmd: &Command) -> Result<u64, Step> {
        let mut client = self.leader_client(addr)?;
        let json = serde_json::to_vec(cmd).map_err(|source| {
            Step::Failed(MetaError::Encode {
                what: "forwarded command",
                source,
            })
        })?;
        let reply = client
            .propose(RaftRequest { json })
            .await
            .map_err(|status| after_forward_error(addr, &status))?;
        let forwarded: Forwarded = serde_json::from_slice(&reply.into_inner().json).map_err(|e| {
            warn!(leader = addr, error = %e, "undecodable reply from the leader");
            Step::Retry
        })?;
        Ok(forwarded.log_index)
    }

    fn leader_client(&self, addr: &str) -> Result<RaftClient<Channel>, Step> {
        let mut cached = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached_addr, client)) = cached.as_ref()
            && cached_addr == addr
        {
            return Ok(client.clone());
        }
        let channel = raft::peer_endpoint(addr)
            .map_err(|e| {
                warn!(leader = addr, error = %e, "leader address does not parse");
                Step::Retry
            })?
            .connect_lazy();
        let client = raft::raft_client(channel);
        *cached = Some((addr.to_owned(), client.clone()));
        Ok(client)
    }
}

/// What openraft's answer to a proposal made on member `me` leads to.
fn after_write(
    written: Result<Response, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
    me: u64,
) -> Step {
    let forward = match written {
        Ok(Response { refused: None }) => return Step::Done,
        Ok(Response {
            refused: Some(reason),
        }) => return Step::Failed(MetaError::Refused(reason)),
        Err(RaftError::Fatal(e)) => return Step::Failed(MetaError::raft(e)),
        // Not the leader, or a leader change dropped the entry: either
        // way the leader named (if any) takes it.
        Err(RaftError::APIError(
            ClientWriteError::ForwardToLeader(forward) | ClientWriteError::LogEntryDiscarded(forward),
        )) => forward,
        Err(RaftError::APIError(e)) => return Step::Failed(MetaError::raft(e)),
    };
    match (forward.leader_id, forward.leader_node) {
        // This member leads but cannot take it now (its lease ran out, or
        // it is handing over): wait for the group to settle.
        (Some(leader), _) if leader == me => Step::Retry,
        (Some(_), Some(node)) => Step::Forward(node.addr),
        _ => Step::Retry,
    }
}

/// A forwarded proposal the leader refused as invalid in itself fails;
/// anything else (the leader gone, the network) is tried again.
fn after_forward_error(addr: &str, status: &tonic::Status) -> Step {
    if status.code() == tonic::Code::InvalidArgument {
        return Step::Failed(MetaError::Refused(status.message().to_owned()));
    }
    debug!(leader = addr, error = %status, "forwarding a proposal failed; retrying");
    Step::Retry
}

#[cfg(test)]
mod tests {
    use openraft::errors::{Fatal, ForwardToLeader};

    use super::*;
    use crate::raft::Node;

    fn forward_to(
        leader: Option<(u64, &str)>,
    ) -> Result<Response, RaftError<TypeConfig, ClientWriteError<TypeConfig>>> {
        let forward = match leader {
            Some((id, addr)) => ForwardToLeader::new(id, Node { addr: addr.into() }),
            None => ForwardToLeader::empty(),
        };
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))
    }

    #[test]
    fn a_committed_command_is_done_and_a_refused_one_fails() {
        assert!(matches!(after_write(Ok(Response::default()), 1), Step::Done));
        let refused = Ok(Response {
            refused: Some("nul in a tag".into()),
        });
        assert!(matches!(
            after_write(refused, 1),
            Step::Failed(MetaError::Refused(_))
        ));
    }

    #[test]
    fn a_follower_forwards_to_the_leader_it_knows() {
        match after_write(forward_to(Some((2, "n2:5001"))), 1) {
            Step::Forward(addr) => assert_eq!(addr, "n2:5001"),
            other => panic!("{other:?}"),
        }
        let discarded = Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(
            ForwardToLeader::new(
                3,
                Node {
                    addr: "n3:5001".into(),
                },
            ),
        )));
        assert!(matches!(after_write(discarded, 1), Step::Forward(addr) if addr == "n3:5001"));
    }

    #[test]
    fn without_a_leader_to_take_it_the_proposal_waits() {
        assert!(matches!(after_write(forward_to(None), 1), Step::Retry));
        // A leader whose lease ran out names itself, or no one.
        assert!(matches!(
            after_write(forward_to(Some((1, "n1:5001"))), 1),
            Step::Retry
        ));
    }

    #[test]
    fn a_stopped_raft_fails_the_proposal_with_its_cause() {
        let stopped = Err(RaftError::Fatal(Fatal::Stopped));
        match after_write(stopped, 1) {
            Step::Failed(MetaError::Raft(source)) => assert_eq!(source.to_string(), "raft stopped"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_refusal_by_the_leader_ends_a_forwarded_proposal() {
        let invalid = tonic::Status::invalid_argument("nul in a tag");
        assert!(
            matches!(after_forward_error("n2:5001", &invalid), Step::Failed(MetaError::Refused(r)) if r == "nul in a tag")
        );
        for status in [
            tonic::Status::unavailable("connection refused"),
            tonic::Status::deadline_exceeded("slow"),
            tonic::Status::internal("leader stepped down"),
        ] {
            assert!(
                matches!(after_forward_error("n2:5001", &status), Step::Retry),
                "{status:?}"
            );
        }
    }
}
