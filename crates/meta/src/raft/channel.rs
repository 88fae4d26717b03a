//! Dialing a peer's cluster port. Every client of it (Raft RPCs, forwarded
//! proposals, `regcache cluster`) builds its channel here, with the same
//! keepalive and message limits, so transport security lands in one place.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::pb::admin_client::AdminClient;
use super::pb::raft_client::RaftClient;

/// Largest message either side decodes. Appends carry at most openraft's
/// `max_payload_entries` commands, each a few hundred bytes of JSON; the
/// limit only stops a broken or hostile peer from making us buffer gigabytes.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A peer on the same network that does not accept within this is down;
/// every caller retries in its own way.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The endpoint of the cluster port at `addr` (`host:port`); connect it
/// lazily (it then reconnects by itself) or at once.
pub fn peer_endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        // Notices a peer that vanished mid-stream (e.g. during a long
        // snapshot) without waiting for TCP timeouts.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .tcp_nodelay(true);
    Ok(endpoint)
}

/// The Raft service's client (RPCs and forwarded proposals), bounded.
pub(crate) fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The Admin service's client, bounded.
pub(crate) fn admin_client(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
