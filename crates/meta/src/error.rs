use std::path::PathBuf;

/// Everything that can go wrong reading or changing metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot create metadata directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open metadata database {path}: {source}")]
    Open {
        path: PathBuf,
        source: Box<redb::DatabaseError>,
    },
    /// A redb failure; boxed because redb's error is large and this is the
    /// error of every read.
    #[error("metadata storage: {0}")]
    Storage(Box<redb::Error>),
    /// A stored record that does not decode: an error, never a panic, so one
    /// bad record cannot take the replica down.
    #[error("corrupt {table} record {key:?}: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error("invalid tag key part {0:?}: contains a nul byte")]
    InvalidTagKey(String),
    #[error("log index {index} does not follow last applied index {last_applied}")]
    IndexNotAfterLastApplied { index: u64, last_applied: u64 },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("snapshot i/o: {0}")]
    SnapshotIo(#[from] std::io::Error),
    #[error("invalid snapshot at line {line}: {reason}")]
    InvalidSnapshot { line: u64, reason: String },
    #[error("metadata task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// No leader acknowledged by a quorum: cached content is still served,
    /// metadata changes wait until the group is whole again.
    #[error("no raft quorum: metadata cannot change until a majority of members is up")]
    NoQuorum,
    /// Raft stopped or refused the request (not a command's own fault).
    #[error("raft: {0}")]
    Raft(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Serving the cluster port failed (e.g. the listener broke).
    #[error("serving the cluster port: {0}")]
    ClusterPort(#[source] tonic::transport::Error),
    /// Only a replica running a Raft group has a cluster port.
    #[error("the metadata is open offline: no raft group")]
    Offline,
    /// The leader refused the command as invalid in itself.
    #[error("command refused: {0}")]
    Refused(String),
    /// Offline tools write metadata only where Raft does not own it.
    #[error(
        "metadata in {0} belongs to a raft group; stop using it offline, or remove the directory to start over"
    )]
    RaftOwned(PathBuf),
}

impl MetaError {
    /// An openraft failure, its source kept.
    pub(crate) fn raft(error: impl std::error::Error + Send + Sync + 'static) -> MetaError {
        MetaError::Raft(Box::new(error))
    }
}

/// Every redb error type funnels into [`MetaError::Storage`].
macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for MetaError {
            fn from(e: $ty) -> Self {
                MetaError::Storage(Box::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);
