//! Every error a client can get, and the one place that maps them to gRPC statuses.
//!
//! The messages are etcd's, byte for byte: etcd's Go client maps errors by message text, so a
//! different wording would break etcdctl's error handling.

use tonic::Status;

use crate::types::KvError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A RequestOp with nothing set (etcd answers this quirkily with "key not found").
    #[error("etcdserver: key not found")]
    EmptyRequestOp,
    /// A Compare whose result or target is not one of etcd's enum values.
    #[error("etcdserver: invalid compare: {0}")]
    InvalidCompare(String),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    /// The request may or may not have been applied: the leader changed while it was in flight.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The request may or may not have been applied: it did not finish in time.
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, waiting for the applied index took too long")]
    TimeoutWaitAppliedIndex,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: given member URLs are invalid")]
    InvalidPeerUrls,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// An RPC QuorumDB does not serve (yet); the message names it.
    #[error("{0}")]
    Unimplemented(String),
    #[error("etcdserver: streaming range does not support sort or revision filters")]
    RangeStreamUnsupported,
    #[error("{0}")]
    Internal(String),
    /// A QuorumDB metadata key (exactly-once writes, session reads) with a bad value.
    #[error("quorumdb: invalid metadata {key}: {reason}")]
    InvalidMetadata { key: &'static str, reason: String },
    /// A session read asked for a revision this member did not apply in time.
    #[error(
        "quorumdb: timed out waiting for revision {wanted} (this member has applied revision {applied})"
    )]
    MinRevisionTimeout { wanted: i64, applied: i64 },
    /// The fault seam dropped the answer to an applied write (tests only).
    #[error("quorumdb: response dropped by fault injection")]
    ResponseDropped,
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        use ApiError::*;
        let message = error.to_string();
        match error {
            EmptyKey
            | ValueProvided
            | LeaseProvided
            | TooManyOps
            | DuplicateKey
            | RequestTooLarge
            | InvalidSortOption
            | EmptyRequestOp
            | InvalidCompare(_)
            | InvalidMetadata { .. }
            | InvalidPeerUrls => Status::invalid_argument(message),
            Kv(KvError::Compacted | KvError::FutureRevision) => Status::out_of_range(message),
            Kv(KvError::KeyNotFound) => Status::invalid_argument(message),
            Kv(KvError::LeaseNotFound) | MemberNotFound => Status::not_found(message),
            Kv(KvError::ClientSessionForgotten { .. }) => Status::failed_precondition(message),
            Kv(KvError::NoSpace) => Status::resource_exhausted(message),
            NoLeader
            | LeaderChanged
            | Timeout
            | TimeoutWaitAppliedIndex
            | Stopped
            | MinRevisionTimeout { .. }
            | ResponseDropped => Status::unavailable(message),
            NotLeader | BadLeaderTransferee | PeerUrlExists | NotLearner | LearnerNotReady => {
                Status::failed_precondition(message)
            }
            Unimplemented(_) | RangeStreamUnsupported => Status::unimplemented(message),
            Internal(_) => Status::internal(message),
        }
    }
}
