//! Typed results: what the client hands back instead of the generated protobuf messages.
//!
//! [`KeyValue`] is the client's own type, not `crate::types::KeyValue`: that one is the Raft
//! log's format (serde, stable on disk) and must be free to change without changing this API.

use std::borrow::Cow;

use crate::pb::etcdserverpb as etcd;
use crate::pb::mvccpb;

/// One version of a key, with its revisions (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyValue {
    pub key: Vec<u8>,
    /// Empty when the read asked for keys only.
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since it last did not exist).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// Writes to the key since it was created, this one included (1 after the first put).
    pub version: i64,
    pub lease: i64,
}

impl KeyValue {
    /// The key as text (invalid UTF-8 replaced).
    pub fn key_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }

    /// The value as text (invalid UTF-8 replaced).
    pub fn value_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// Who answered and at which store revision (etcd's `ResponseHeader`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Header {
    pub cluster_id: u64,
    /// The member that answered (for a forwarded write: the one the client talked to).
    pub member_id: u64,
    /// The store revision the answer reflects: after a write, the revision it produced (or the
    /// current one if it changed nothing).
    pub revision: i64,
    pub raft_term: u64,
}

impl From<Option<etcd::ResponseHeader>> for Header {
    fn from(header: Option<etcd::ResponseHeader>) -> Self {
        let header = header.unwrap_or_default();
        Header {
            cluster_id: header.cluster_id,
            member_id: header.member_id,
            revision: header.revision,
            raft_term: header.raft_term,
        }
    }
}

/// The answer to [`Client::get`](super::Client::get).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetResponse {
    pub header: Header,
    /// Empty for a count-only read.
    pub kvs: Vec<KeyValue>,
    /// A limit left keys out.
    pub more: bool,
    /// Keys in the range, whatever the limit.
    pub count: i64,
}

impl From<etcd::RangeResponse> for GetResponse {
    fn from(response: etcd::RangeResponse) -> Self {
        GetResponse {
            header: response.header.into(),
            kvs: response.kvs.into_iter().map(KeyValue::from).collect(),
            more: response.more,
            count: response.count,
        }
    }
}

/// The answer to [`Client::put`](super::Client::put).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutResponse {
    pub header: Header,
    /// The version before the put, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

impl From<etcd::PutResponse> for PutResponse {
    fn from(response: etcd::PutResponse) -> Self {
        PutResponse {
            header: response.header.into(),
            prev_kv: response.prev_kv.map(KeyValue::from),
        }
    }
}

/// The answer to [`Client::delete`](super::Client::delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteResponse {
    pub header: Header,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted keys, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

impl From<etcd::DeleteRangeResponse> for DeleteResponse {
    fn from(response: etcd::DeleteRangeResponse) -> Self {
        DeleteResponse {
            header: response.header.into(),
            deleted: response.deleted,
            prev_kvs: response.prev_kvs.into_iter().map(KeyValue::from).collect(),
        }
    }
}

/// A cluster member (etcd's `Member`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started and published its client URL.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl From<etcd::Member> for Member {
    fn from(member: etcd::Member) -> Self {
        Member {
            id: member.id,
            name: member.name,
            peer_urls: member.peer_ur_ls,
            client_urls: member.client_ur_ls,
            is_learner: member.is_learner,
        }
    }
}

/// One member's view of itself and of the cluster (etcd's `Maintenance.Status`), what
/// `etcdctl endpoint status` shows. The lag of a member behind the leader is the leader's
/// `raft_index` minus the member's `raft_applied_index`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The endpoint asked.
    pub endpoint: String,
    pub member_id: u64,
    /// The member id of the leader as this member sees it (0: none).
    pub leader: u64,
    pub raft_term: u64,
    /// Last index in this member's Raft log.
    pub raft_index: u64,
    /// Last index this member has applied.
    pub raft_applied_index: u64,
    /// This member's store revision.
    pub revision: i64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    /// The etcd API version the server speaks.
    pub version: String,
    /// Problems the member reports (for example `etcdserver: no leader`).
    pub errors: Vec<String>,
    pub is_learner: bool,
}

impl EndpointStatus {
    pub(crate) fn new(endpoint: String, status: etcd::StatusResponse) -> Self {
        let header = Header::from(status.header);
        EndpointStatus {
            endpoint,
            member_id: header.member_id,
            leader: status.leader,
            raft_term: status.raft_term,
            raft_index: status.raft_index,
            raft_applied_index: status.raft_applied_index,
            revision: header.revision,
            db_size: status.db_size,
            db_size_in_use: status.db_size_in_use,
            version: status.version,
            errors: status.errors,
            is_learner: status.is_learner,
        }
    }

    /// This member believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.member_id
    }
}
