//! The asking side: who owns a digest or a tag, and the blob or manifest
//! from there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt as _};
use meta::Meta;
use oci::{Digest, Reference, RepoName};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tracing::{info, warn};

use crate::pb::blob_chunk::Part;
use crate::pb::peer_client::PeerClient;
use crate::pb::{BlobChunk, FetchBlobRequest, FetchManifestRequest};
use crate::{MAX_MESSAGE_BYTES, ManifestReply, owners, telemetry};

/// How long the owner may take to answer: to announce a blob's size (it may
/// be waiting for its upstream's response headers) or to send a manifest,
/// before this member fetches from the upstream itself.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long the owner may go quiet mid-stream.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// A member that could not be reached is not asked again for this long;
/// the next member in its digests' ranking stands in.
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(5);
/// A member that sent bytes failing their digest is not asked for this long.
const CORRUPT_PAUSE: Duration = Duration::from_secs(600);

/// The member that owns a digest, as this member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub id: u64,
    pub addr: String,
}

/// A blob as the owner streams it: `size` is the whole blob's, `body`
/// holds exactly the bytes from the requested offset to the end, or ends
/// with an error.
pub struct PeerBlob {
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, PeerError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("member {id} cannot be reached: {detail}")]
    Unreachable { id: u64, detail: String },
    #[error("member {id} sent nothing for {waited:?}")]
    Timeout { id: u64, waited: Duration },
    /// The owner's upstream says the blob does not exist: asking the
    /// upstream again from here would only repeat the answer.
    #[error("member {id}'s upstream does not have the blob")]
    NotFound { id: u64 },
    #[error("member {id} did not serve the blob: {message}")]
    Refused { id: u64, message: String },
    #[error("member {id} broke off the stream: {detail}")]
    Broken { id: u64, detail: String },
}

impl PeerError {
    /// The `reason` label of `regcache_peer_fallbacks_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            PeerError::Unreachable { .. } => "unreachable",
            PeerError::Timeout { .. } => "timeout",
            PeerError::NotFound { .. } => "not_found",
            PeerError::Refused { .. } => "refused",
            PeerError::Broken { .. } => "broken",
        }
    }

    fn from_status(id: u64, status: &Status) -> PeerError {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unavailable | Code::Cancelled => PeerError::Unreachable { id, detail: message },
            Code::NotFound => PeerError::NotFound { id },
            Code::DeadlineExceeded => PeerError::Timeout {
                id,
                waited: ANSWER_WAIT,
            },
            _ => PeerError::Refused { id, message },
        }
    }
}

/// How this member sees the others as blob sources, for `/status.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct PeersStatus {
    /// Whether the group's owner key is known here: until it is, this
    /// member fetches every miss from the upstream itself.
    pub owner_key: bool,
    /// Members not asked for now: id, why, seconds left.
    pub paused: Vec<(u64, &'static str, f64)>,
}

/// The cluster's members as blob sources: the ownership ranking over the
/// current voters, one lazily connected channel per member, and the
/// members not to ask for a while.
pub struct Peers {
    meta: Arc<Meta>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Members skipped until the instant, and why.
    paused: Mutex<HashMap<u64, (Instant, &'static str)>>,
}

impl Peers {
    pub fn new(meta: Arc<Meta>) -> Peers {
        Peers {
            meta,
            channels: Mutex::default(),
            paused: Mutex::default(),
        }
    }

    /// The member to ask for `subject` (a digest, or a tag's
    /// `upstream/repo:tag`), or `None` when this member owns it: the first
    /// member of the subject's ranking that is not paused. `None` too while
    /// the group has no owner key yet (just formed) or this member is not a
    /// voter.
    pub fn owner_of(&self, subject: &[u8]) -> Option<Owner> {
        let me = self.meta.node_id()?;
        let key = self.meta.owner_key()?;
        let voters = self.meta.voters();
        if !voters.iter().any(|(id, _)| *id == me) {
            return None;
        }
        let ids: Vec<u64> = voters.iter().map(|(id, _)| *id).collect();
        let paused = self.paused();
        let first = owners::ranked(&key, subject, &ids)
            .into_iter()
            .find(|id| *id == me || !paused.contains_key(id))?;
        if first == me {
            return None;
        }
        let addr = voters.into_iter().find(|(id, _)| *id == first)?.1;
        Some(Owner { id: first, addr })
    }

    pub fn status(&self) -> PeersStatus {
        let now = Instant::now();
        let mut paused: Vec<(u64, &'static str, f64)> = self
            .paused()
            .iter()
            .map(|(id, (until, why))| (*id, *why, until.duration_since(now).as_secs_f64()))
            .collect();
        paused.sort_by_key(|(id, _, _)| *id);
        PeersStatus {
            owner_key: self.meta.owner_key().is_some(),
            paused,
        }
    }

    /// Asks `owner` for the blob from `offset` on. Returns once the owner
    /// announced the size, within [`ANSWER_WAIT`].
    pub async fn fetch_blob(
        &self,
        owner: &Owner,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<PeerBlob, PeerError> {
        telemetry::asked();
        let id = owner.id;
        let mut client = self.client(owner)?;
        let request = FetchBlobRequest {
            upstream: upstream.to_owned(),
            repo: repo.to_string(),
            digest: digest.to_string(),
            offset,
        };
        let opened = tokio::time::timeout(ANSWER_WAIT, async {
            let mut stream = client.fetch_blob(request).await?.into_inner();
            let first = stream.message().await?;
            Ok::<_, Status>((stream, first))
        })
        .await;
        let (stream, first) = match opened {
            Err(_) => {
                return Err(PeerError::Timeout {
                    id,
                    waited: ANSWER_WAIT,
                });
            }
            Ok(Err(status)) => return Err(PeerError::from_status(id, &status)),
            Ok(Ok(opened)) => opened,
        };
        let Some(BlobChunk {
            part: Some(Part::Size(size)),
        }) = first
        else {
            return Err(PeerError::Broken {
                id,
                detail: "the first message is not the size".into(),
            });
        };
        if offset > size {
            return Err(PeerError::Broken {
                id,
                detail: format!("size {size} is before the offset {offset}"),
            });
        }
        Ok(PeerBlob {
            size,
            body: bounded_body(id, stream, size - offset),
        })
    }

    /// Asks `owner` for a manifest by tag or digest; the answer's bytes are
    /// unchecked: the caller verifies them against the digest.
    pub async fn fetch_manifest(
        &self,
        owner: &Owner,
        upstream: &str,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestReply, PeerError> {
        telemetry::asked();
        let id = owner.id;
        let request = FetchManifestRequest {
            upstream: upstream.to_owned(),
            repo: repo.to_string(),
            reference: reference.to_string(),
        };
        let mut client = self.client(owner)?;
        let answered = tokio::time::timeout(ANSWER_WAIT, client.fetch_manifest(request)).await;
        let manifest = match answered {
            Err(_) => {
                return Err(PeerError::Timeout {
                    id,
                    waited: ANSWER_WAIT,
                });
            }
            Ok(Err(status)) => return Err(PeerError::from_status(id, &status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        telemetry::received_bytes().increment(manifest.bytes.len() as u64);
        let digest = manifest.digest.parse().map_err(|e| PeerError::Broken {
            id,
            detail: format!("digest {:?}: {e}", manifest.digest),
        })?;
        Ok(ManifestReply {
            digest,
            media_type: manifest.media_type,
            bytes: manifest.bytes,
            stale: manifest.stale,
        })
    }

    /// Counts and logs a fetch that goes to the upstream instead of (or on
    /// from) `owner`'s stream; an unreachable owner is paused so the next
    /// member in its digests' ranking stands in.
    pub fn fell_back(&self, owner: &Owner, error: &PeerError) {
        telemetry::fallback(error.reason());
        warn!(peer = owner.id, reason = error.reason(), error = %error, "fetching from the upstream instead of the owner");
        if matches!(error, PeerError::Unreachable { .. } | PeerError::Timeout { .. }) {
            self.pause(owner.id, UNREACHABLE_PAUSE, "unreachable");
        }
    }

    /// The owner sent bytes that failed the digest check: it is not asked
    /// again for a while, so the next attempt fetches elsewhere.
    pub fn distrust(&self, owner: &Owner) {
        telemetry::fallback("corrupt");
        warn!(
            peer = owner.id,
            pause_secs = CORRUPT_PAUSE.as_secs(),
            "peer sent a blob that failed its digest; not asking it for a while"
        );
        self.pause(owner.id, CORRUPT_PAUSE, "corrupt");
    }

    fn pause(&self, id: u64, pause: Duration, why: &'static str) {
        let until = Instant::now() + pause;
        let mut paused = self.paused();
        let longer = paused.get(&id).is_none_or(|(old, _)| *old < until);
        if longer && paused.insert(id, (until, why)).is_none() {
            info!(
                peer = id,
                why,
                pause_secs = pause.as_secs(),
                "not asking peer for a while"
            );
        }
    }

    fn paused(&self) -> MutexGuard<'_, HashMap<u64, (Instant, &'static str)>> {
        let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        paused.retain(|_, (until, _)| *until > now);
        paused
    }

    fn client(&self, owner: &Owner) -> Result<PeerClient<Channel>, PeerError> {
        Ok(PeerClient::new(self.channel(owner)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn channel(&self, owner: &Owner) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(&owner.addr) {
            return Ok(channel.clone());
        }
        let endpoint = meta::cluster_endpoint(&owner.addr).map_err(|e| PeerError::Unreachable {
            id: owner.id,
            detail: format!("invalid address {:?}: {e}", owner.addr),
        })?;
        let channel = endpoint.connect_lazy();
        channels.insert(owner.addr.clone(), channel.clone());
        Ok(channel)
    }
}

/// The data messages of `stream` as bytes, checked to be exactly
/// `expected` bytes, each arriving within [`IDLE_WAIT`].
fn bounded_body(
    id: u64,
    stream: Streaming<BlobChunk>,
    expected: u64,
) -> BoxStream<'static, Result<Bytes, PeerError>> {
    let received = telemetry::received_bytes();
    let broken = move |detail: String| PeerError::Broken { id, detail };
    stream::try_unfold((stream, expected), move |(mut stream, left)| {
        let received = received.clone();
        async move {
            if left == 0 {
                return Ok(None);
            }
            let message = match tokio::time::timeout(IDLE_WAIT, stream.message()).await {
                Err(_) => {
                    return Err(PeerError::Timeout {
                        id,
                        waited: IDLE_WAIT,
                    });
                }
                Ok(Err(status)) => return Err(broken(format!("{}: {}", status.code(), status.message()))),
                Ok(Ok(message)) => message,
            };
            let data = match message {
                None => return Err(broken(format!("ended {left} bytes early"))),
                Some(BlobChunk {
                    part: Some(Part::Data(data)),
                }) => data,
                Some(_) => return Err(broken("a message that is not data".into())),
            };
            let len = data.len() as u64;
            if len > left {
                return Err(broken("more bytes than the size announced".into()));
            }
            received.increment(len);
            Ok(Some((data, (stream, left - len))))
        }
    })
    .boxed()
}
