//! The Rust client of QuorumDB: endpoints and failover, leader discovery, deadlines, typed
//! results and errors, safe retries, exactly-once writes and session consistency. It speaks the
//! etcd v3 API, so reads, writes and transactions also work against etcd (exactly-once numbering
//! and session waits are QuorumDB metadata that etcd ignores).
//!
//! ```text
//! Client::connect(endpoints) --MemberList--> members' client URLs join the endpoints
//!                            --Status------> leader id -> the leader's client URL
//!
//! write (put / delete / txn):   [exactly-once: id + seq + ack metadata]
//!     leader's endpoint -> other endpoints -> ... until the request deadline
//!     each failure judged by error::classify: retry only what cannot have applied,
//!     or (exactly-once) re-send the SAME id + seq, which the server answers once
//! read (get / member list):      any failure -> next endpoint, until the deadline
//!     linearizable: leader first | serializable, session: round robin over members
//!     session: serializable Range + quorumdb-min-revision = highest revision seen
//! ```
//!
//! # Errors: what may have happened
//!
//! Every failure is judged once, by the classifier in `client/error.rs`, and ends as one
//! [`Error`]:
//!
//! | server answer or local failure | a write ends as | a read |
//! |---|---|---|
//! | connection never established (`tcp connect error`, refused, DNS) | retried elsewhere | retried elsewhere |
//! | `etcdserver: no leader` (Unavailable), `etcdserver: not leader` (FailedPrecondition) | retried elsewhere | retried elsewhere |
//! | InvalidArgument (`etcdserver: key is not provided`, ...) | [`Error::InvalidArgument`] | same |
//! | NotFound (`requested lease not found`, ...) | [`Error::NotFound`] | same |
//! | OutOfRange (`mvcc: required revision has been compacted`, `... is a future revision`) | [`Error::Failed`] with that code | same |
//! | Unimplemented, PermissionDenied, FailedPrecondition, ResourceExhausted, AlreadyExists, Aborted | [`Error::Failed`] with that code | same |
//! | `quorumdb: client session ...` (FailedPrecondition: the server forgot this write number) | [`Error::Unknown`] if an earlier attempt was ambiguous, else [`Error::Failed`]; later writes use a new client id | — |
//! | `leader changed`, `request timed out`, `server stopped`, `response dropped by fault injection`, any other Unavailable; DeadlineExceeded, Cancelled, Internal, Unknown, DataLoss; a connection that broke after sending | exactly-once: re-sent with the same id and seq; otherwise [`Error::Unknown`] at once, never re-sent | retried elsewhere |
//! | no answer before the request deadline, after sending | [`Error::Unknown`] | retried while time remains |
//! | deadline passed, no attempt may have applied | [`Error::Unavailable`] naming each endpoint's last failure | [`Error::Unavailable`] (a read changes nothing) |
//!
//! A status made in this process from a transport error (tonic keeps the error as its source) is
//! never read as the server's word: its code is tonic's guess (an early EOF becomes
//! `OutOfRange`), so it counts as ambiguous unless the connection was never established.
//! [`Error::definitely_not_applied`] is true for everything but [`Error::Unknown`]. A compare
//! that does not hold is not an error: [`TxnResponse::succeeded`] is `false`.
//!
//! # Exactly-once writes (on by default)
//!
//! The client draws a random id and numbers its writes from 1; each write attempt carries
//! `quorumdb-client-id`, `quorumdb-client-seq` and `quorumdb-client-ack` (the lowest number
//! whose outcome has not been delivered; 1 until the server has answered a write of this id,
//! since it reads a higher ack from an id it does not know as a dropped session). The server
//! applies a number at most once and answers a repeat with the first answer, so a write whose
//! attempt was ambiguous is sent again (same id and seq) until it is answered or the deadline
//! passes. At most [`CLIENT_SESSION_WINDOW`] numbers are unfinished at once
//! (`client/write_session.rs` says why it is a window).
//!
//! # Session consistency
//!
//! Every response header raises the client's session revision ([`Client::session_revision`]).
//! A session read is a serializable Range with `quorumdb-min-revision`: the member answers once
//! it has applied that revision, so the read sees the session's own writes and never goes back,
//! without a round trip to the leader. The client also checks the answer's revision itself, so
//! a member that ignores the metadata cannot break the guarantee (the read moves on).
//!
//! Must never: re-send a write whose outcome is unknown without its exactly-once number; report
//! "not applied" for a request that may have been.

mod config;
mod endpoints;
mod error;
mod operations;
mod options;
mod responses;
mod retry;
mod txn;
mod write_session;

pub use config::CONNECT_TIMEOUT_DEFAULT;
pub use config::ClientConfig;
pub use config::Consistency;
pub use config::REQUEST_TIMEOUT_DEFAULT;
pub use config::split_endpoint_list;
pub use endpoints::MEMBERS_REFRESH_INTERVAL;
pub use endpoints::REFRESH_GAP_MIN;
pub use error::Error;
pub use operations::Client;
pub use operations::MIN_REVISION_METADATA;
pub use operations::SESSION_READ_ATTEMPT_MAX;
pub use options::DeleteOptions;
pub use options::GetOptions;
pub use options::PutOptions;
pub use options::SortOrder;
pub use options::SortTarget;
pub use options::prefix_end;
pub use responses::DeleteResponse;
pub use responses::EndpointStatus;
pub use responses::GetResponse;
pub use responses::Header;
pub use responses::KeyValue;
pub use responses::Member;
pub use responses::PutResponse;
pub use retry::RETRY_ROUND_PAUSE;
pub use retry::WRITE_ATTEMPT_TIME_MIN;
pub use txn::CasOutcome;
pub use txn::Compare;
pub use txn::CompareOp;
pub use txn::Op;
pub use txn::OpResponse;
pub use txn::Txn;
pub use txn::TxnResponse;
pub use write_session::CLIENT_ACK_METADATA;
pub use write_session::CLIENT_ID_METADATA;
pub use write_session::CLIENT_SEQ_METADATA;
pub use write_session::CLIENT_SESSION_WINDOW;
