//! The openraft type configuration and the data that travels through the Raft log.
//!
//! Everything here is plain data with serde: a [`Command`] is what a client write becomes in the
//! log, a [`CommandResponse`] is what applying it produced. The etcd protobuf types never enter
//! the log: `api` converts them at the edge, so the log format is ours and stable.
//!
//! Never put behaviour that touches storage or the network here.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// A member's identifier, as etcd shows it (hex on the command line, uint64 on the wire).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's view of QuorumDB: what a log entry carries and what applying it returns. An
    /// entry's command is shared, not copied, wherever openraft clones the entry (reading it back
    /// to replicate to each follower and to apply); it encodes exactly as the command itself.
    pub TypeConfig:
        D = std::sync::Arc<Command>,
        R = CommandResponse,
        NodeId = NodeId,
        Node = Member,
);

/// The openraft handle type used everywhere in the crate.
pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;

/// What every member of the cluster knows about every other: stored in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// URL the peer service listens on (Raft traffic), e.g. `http://127.0.0.1:2380`.
    pub peer_url: String,
    /// URL clients should use (etcd `clientURLs`), e.g. `http://127.0.0.1:2379`.
    pub client_url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(peer={}, client={})",
            self.name, self.peer_url, self.client_url
        )
    }
}

/// One stored version of a key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "crate::codec::bytes")]
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    #[serde(with = "crate::codec::bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
}

/// `RangeRequest.SortOrder`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

/// `RangeRequest.SortTarget`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// A read of a key or a key range, etcd's `RangeRequest` minus `serializable` (a routing concern).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeOp {
    #[serde(with = "crate::codec::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::codec::bytes")]
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

/// etcd's `PutRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOp {
    #[serde(with = "crate::codec::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::codec::bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

/// etcd's `DeleteRangeRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOp {
    #[serde(with = "crate::codec::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::codec::bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

/// `Compare.CompareResult`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// `Compare.CompareTarget` together with the operand (`target_union`). A missing or mismatched
/// operand is represented by the zero value of the target's type, as etcd compares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "crate::codec::bytes")] Vec<u8>),
    Lease(i64),
}

/// etcd's `Compare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    #[serde(with = "crate::codec::bytes")]
    pub key: Vec<u8>,
    #[serde(with = "crate::codec::bytes")]
    pub range_end: Vec<u8>,
}

/// etcd's `RequestOp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnRequestOp {
    Range(RangeOp),
    Put(PutOp),
    Delete(DeleteOp),
    Txn(TxnOp),
}

/// etcd's `TxnRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOp {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnRequestOp>,
    pub failure: Vec<TxnRequestOp>,
}

/// A write to the key space: the application data of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutOp),
    Delete(DeleteOp),
    Txn(TxnOp),
    /// Discard history older than `revision` (etcd `Compact`).
    Compact {
        revision: i64,
    },
    /// Raise or clear an alarm (etcd's Alarm ACTIVATE / DEACTIVATE), cluster-wide state.
    Alarm {
        activate: bool,
        member: NodeId,
        alarm: AlarmKind,
    },
    /// A client's numbered write (exactly-once): `command` (a Put, Delete or Txn) is applied at
    /// most once per `(client, seq)`; a repeat answers the first application's response.
    Numbered {
        write: ClientWrite,
        command: Box<Command>,
    },
}

/// etcd's `AlarmType` (NONE is not an alarm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmKind {
    /// The database exceeded its space quota: only reads and deletes are accepted.
    NoSpace,
    /// A replica's data diverged (raised by operators or a checker).
    Corrupt,
}

impl Command {
    /// Whether applying it may add data (refused while a NOSPACE alarm is raised, as etcd refuses
    /// Put and Txn-with-writes; deletes and compactions are what frees space).
    pub fn may_add_data(&self) -> bool {
        fn op_writes(op: &TxnRequestOp) -> bool {
            match op {
                TxnRequestOp::Range(_) => false,
                TxnRequestOp::Put(_) => true,
                TxnRequestOp::Delete(_) => false,
                TxnRequestOp::Txn(txn) => txn.success.iter().chain(&txn.failure).any(op_writes),
            }
        }
        match self {
            Command::Put(_) => true,
            Command::Txn(txn) => txn.success.iter().chain(&txn.failure).any(op_writes),
            Command::Numbered { command, .. } => command.may_add_data(),
            Command::Delete(_) | Command::Compact { .. } | Command::Alarm { .. } => false,
        }
    }
}

/// Who sent a numbered write, and which of its writes it is (QuorumDB's exactly-once writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientWrite {
    /// The client's id, chosen at random by the client; never 0.
    pub client: u64,
    /// The write's number within the client's session, from 1.
    pub seq: u64,
    /// Every write of this client numbered below `ack` has been answered to its caller: the
    /// state machine may forget their responses. Never above `seq`.
    pub ack: u64,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(op) => write!(f, "put({} bytes key)", op.key.len()),
            Command::Delete(op) => write!(f, "delete({} bytes key)", op.key.len()),
            Command::Txn(op) => write!(
                f,
                "txn({} compares, {} success, {} failure)",
                op.compare.len(),
                op.success.len(),
                op.failure.len()
            ),
            Command::Compact { revision } => write!(f, "compact({revision})"),
            Command::Alarm {
                activate,
                member,
                alarm,
            } => write!(
                f,
                "alarm({} {alarm:?} for {member:x})",
                if *activate { "activate" } else { "deactivate" }
            ),
            Command::Numbered { write, command } => {
                write!(
                    f,
                    "{command} as write {} of client {:x}",
                    write.seq, write.client
                )
            }
        }
    }
}

/// The result of a Range: `kvs` after limit, `more` if the limit cut it, `count` before limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

/// The result of one operation in a transaction (etcd `ResponseOp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResponseOp {
    Range(RangeResult),
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn(TxnResult),
}

/// The result of a transaction: which branch ran and one response per executed op.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    pub succeeded: bool,
    pub responses: Vec<TxnResponseOp>,
}

/// What applying a [`Command`] produced, on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOutput {
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn(TxnResult),
    Compact,
    /// An alarm command: the alarms it actually raised or cleared (empty if none changed).
    Alarms(Vec<(NodeId, AlarmKind)>),
    /// Blank and membership entries: nothing changed in the key space.
    Nothing,
}

/// Errors decided by the key space itself, deterministically on every member, so they are part
/// of the applied result rather than failures of the system. The messages are etcd's, exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// Leases are not implemented yet; a Put naming one is refused.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A numbered write the client's session no longer remembers (below its window, or the
    /// session expired): it was NOT applied now, and whether an earlier copy was is unknown.
    #[error(
        "quorumdb: client session {client:x} no longer holds write {seq} (older than its window or expired); not applied now, use a new client id"
    )]
    ClientSessionForgotten { client: u64, seq: u64 },
    /// A write that may add data while a NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
}

/// The applied result of a log entry. `revision` is the store revision after the entry (the new
/// revision if it changed anything, else the current one), which is what etcd puts in headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    pub revision: i64,
    pub result: Result<CommandOutput, KvError>,
}

impl CommandResponse {
    /// The response for entries that carry no command (blank and membership entries).
    pub fn no_op(revision: i64) -> Self {
        CommandResponse {
            revision,
            result: Ok(CommandOutput::Nothing),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::RaftTypeConfig;
    use openraft::alias::CommittedLeaderIdOf;
    use openraft::alias::EntryOf;
    use openraft::alias::LeaderIdOf;
    use openraft::alias::LogIdOf;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::codec::decode;
    use crate::codec::encode;

    /// Log entries written before entries shared their command, and by members that still do
    /// not, read back the same: an entry encodes exactly as one carrying the command itself.
    #[test]
    fn a_log_entry_encodes_as_it_did_before_its_command_was_shared() {
        /// The entry as it was when the log carried the command itself.
        type EntryBefore = openraft::Entry<
            CommittedLeaderIdOf<TypeConfig>,
            openraft::EntryPayload<Command, NodeId, Member>,
        >;
        let command = Command::Put(PutOp {
            key: b"key".to_vec(),
            value: vec![0x00, 0xFF, 7],
            prev_kv: true,
            ..PutOp::default()
        });
        let log_id = LogIdOf::<TypeConfig>::new(LeaderIdOf::<TypeConfig>::new_committed(3, 1), 42);
        let entry = EntryOf::<TypeConfig>::new_normal(log_id, Arc::new(command.clone()));
        let before = EntryBefore {
            log_id,
            payload: openraft::EntryPayload::Normal(command.clone()),
        };
        let encoded = encode(&entry).expect("encode");
        assert_eq!(encoded, encode(&before).expect("encode"));
        let back: <TypeConfig as RaftTypeConfig>::Entry = decode(&encoded).expect("decode");
        assert_eq!(back, entry);
    }
}
