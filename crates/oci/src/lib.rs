//! Pure types and rules of the OCI distribution and image specs: digests,
//! references, repository names, media types, manifest references, byte
//! ranges and the spec's error codes. No I/O, so every rule here can be
//! unit-tested and fuzzed in isolation.

mod digest;
mod error_code;
mod manifest;
pub mod media_types;
mod name;
mod range;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use error_code::ErrorCode;
pub use manifest::{ManifestError, ManifestInfo, parse_manifest};
pub use name::{NameError, Reference, RepoName, Tag};
pub use range::{ByteRange, RangeError, parse_range};
