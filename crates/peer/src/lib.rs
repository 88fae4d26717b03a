//! One upstream fetch per blob for the whole cluster. Each digest has an
//! owner among the voting members ([`owners`]); a member that misses a blob
//! asks its owner over the cluster port ([`Peers`], the client), and the
//! owner streams the one download it runs ([`service`], the server).
//! Availability beats de-duplication: whatever goes wrong with the owner,
//! the asking member fetches from the upstream itself (docs/architecture.md,
//! "Peer streaming").

mod client;
pub mod owners;
mod server;
mod telemetry;

/// Wire types and tonic stubs generated from `proto/peer.proto` by build.rs.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("regcache.peer.v1");
}

pub use client::{Owner, PeerBlob, PeerError, Peers, PeersStatus};
pub use server::{Answer, LocalContent, ManifestReply, ServeError, ServedBlob, service};

/// Blob bytes per message, far below the decoding limit.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest message either side decodes: a manifest (4 MiB by default,
/// `max_manifest_bytes`) with room to spare; bounds what a broken peer
/// can make this member buffer.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
