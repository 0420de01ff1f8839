//! Transactions: a small builder (compares, then the ops to run if all hold, else the others)
//! and their typed answers. A compare that does not hold is a value (`succeeded == false`).
//!
//! ```text
//! Txn::new().when([Compare..]).and_then([Op..]).or_else([Op..])
//!   -> one etcd TxnRequest -> applied atomically at one revision -> TxnResponse
//! ```

use super::error::Error;
use super::options::DeleteOptions;
use super::options::GetOptions;
use super::options::KeyRange;
use super::options::PutOptions;
use super::responses::DeleteResponse;
use super::responses::GetResponse;
use super::responses::Header;
use super::responses::KeyValue;
use super::responses::PutResponse;
use crate::pb::etcdserverpb as etcd;
use crate::pb::etcdserverpb::compare::CompareResult;
use crate::pb::etcdserverpb::compare::CompareTarget;
use crate::pb::etcdserverpb::compare::TargetUnion;

/// How a key's field is compared with the given value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

impl CompareOp {
    fn wire(self) -> CompareResult {
        match self {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Greater => CompareResult::Greater,
            CompareOp::Less => CompareResult::Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CompareField {
    Value(Vec<u8>),
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Lease(i64),
}

/// One condition of a transaction. A missing key has version, create and mod revision 0 and no
/// value (a value compare on it fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    key: Vec<u8>,
    range: KeyRange,
    op: CompareOp,
    field: CompareField,
}

impl Compare {
    fn new(key: impl Into<Vec<u8>>, op: CompareOp, field: CompareField) -> Self {
        Compare {
            key: key.into(),
            range: KeyRange::Single,
            op,
            field,
        }
    }

    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Self::new(key, op, CompareField::Value(value.into()))
    }

    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Self {
        Self::new(key, op, CompareField::Version(version))
    }

    /// `create_revision == 0` holds exactly when the key does not exist.
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(key, op, CompareField::CreateRevision(revision))
    }

    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Self {
        Self::new(key, op, CompareField::ModRevision(revision))
    }

    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, lease: i64) -> Self {
        Self::new(key, op, CompareField::Lease(lease))
    }

    /// Compare every key in `[key, end)`; all must satisfy it.
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range = KeyRange::End(end.into());
        self
    }

    /// Compare every key starting with the key; all must satisfy it.
    pub fn with_prefix(mut self) -> Self {
        self.range = KeyRange::Prefix;
        self
    }

    fn to_wire(&self) -> etcd::Compare {
        let (key, range_end) = self.range.resolve(self.key.clone());
        let (target, union) = match &self.field {
            CompareField::Value(value) => (CompareTarget::Value, TargetUnion::Value(value.clone())),
            CompareField::Version(v) => (CompareTarget::Version, TargetUnion::Version(*v)),
            CompareField::CreateRevision(r) => {
                (CompareTarget::Create, TargetUnion::CreateRevision(*r))
            }
            CompareField::ModRevision(r) => (CompareTarget::Mod, TargetUnion::ModRevision(*r)),
            CompareField::Lease(l) => (CompareTarget::Lease, TargetUnion::Lease(*l)),
        };
        etcd::Compare {
            result: self.op.wire() as i32,
            target: target as i32,
            key,
            range_end,
            target_union: Some(union),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OpKind {
    Get(Vec<u8>, GetOptions),
    Put(Vec<u8>, Vec<u8>, PutOptions),
    Delete(Vec<u8>, DeleteOptions),
    Txn(Txn),
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op(OpKind);

impl Op {
    pub fn get(key: impl Into<Vec<u8>>, options: GetOptions) -> Self {
        Op(OpKind::Get(key.into(), options))
    }

    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, options: PutOptions) -> Self {
        Op(OpKind::Put(key.into(), value.into(), options))
    }

    pub fn delete(key: impl Into<Vec<u8>>, options: DeleteOptions) -> Self {
        Op(OpKind::Delete(key.into(), options))
    }

    /// A nested transaction (its keys must not overlap the writes of the enclosing branch).
    pub fn txn(txn: Txn) -> Self {
        Op(OpKind::Txn(txn))
    }

    fn to_wire(&self) -> etcd::RequestOp {
        use etcd::request_op::Request;
        let request = match &self.0 {
            // Inside a transaction every read is at the transaction's revision, through the log.
            OpKind::Get(key, options) => {
                Request::RequestRange(options.to_request(key.clone(), false))
            }
            OpKind::Put(key, value, options) => {
                Request::RequestPut(options.to_request(key.clone(), value.clone()))
            }
            OpKind::Delete(key, options) => {
                Request::RequestDeleteRange(options.to_request(key.clone()))
            }
            OpKind::Txn(txn) => Request::RequestTxn(txn.to_request()),
        };
        etcd::RequestOp {
            request: Some(request),
        }
    }

    fn writes(&self) -> bool {
        match &self.0 {
            OpKind::Get(..) => false,
            OpKind::Put(..) | OpKind::Delete(..) => true,
            OpKind::Txn(txn) => !txn.is_read_only(),
        }
    }
}

/// A transaction: if every compare holds, the `and_then` ops run, else the `or_else` ops; all at
/// one revision, atomically.
///
/// ```no_run
/// use quorumdb::client::{Client, ClientConfig, Compare, CompareOp, GetOptions, Op, PutOptions, Txn};
///
/// # async fn example() -> Result<(), quorumdb::client::Error> {
/// let client = Client::connect(ClientConfig::new(["127.0.0.1:2379"])).await?;
/// let txn = Txn::new()
///     .when([Compare::version("config", CompareOp::Equal, 3)])
///     .and_then([Op::put("config", "v4", PutOptions::default())])
///     .or_else([Op::get("config", GetOptions::new())]);
/// let response = client.txn(txn).await?;
/// if !response.succeeded {
///     println!("someone else changed config first");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    compares: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds conditions (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    /// Adds ops run when every condition holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds ops run when a condition does not hold.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Nothing in either branch writes: the transaction is a read and may be retried freely.
    pub fn is_read_only(&self) -> bool {
        !self.success.iter().chain(&self.failure).any(Op::writes)
    }

    pub(crate) fn to_request(&self) -> etcd::TxnRequest {
        etcd::TxnRequest {
            compare: self.compares.iter().map(Compare::to_wire).collect(),
            success: self.success.iter().map(Op::to_wire).collect(),
            failure: self.failure.iter().map(Op::to_wire).collect(),
        }
    }
}

/// The answer of one op of the branch that ran, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResponse {
    Get(GetResponse),
    Put(PutResponse),
    Delete(DeleteResponse),
    Txn(TxnResponse),
}

/// The answer to [`Client::txn`](super::Client::txn).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnResponse {
    pub header: Header,
    /// Every compare held (the `and_then` branch ran); `false` is an answer, not an error.
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
}

impl TxnResponse {
    /// Converts the server's answer. The transaction was applied, so a malformed answer is
    /// `Unknown` to the caller (it must not conclude that nothing happened).
    pub(crate) fn from_wire(response: etcd::TxnResponse) -> Result<Self, Error> {
        use etcd::response_op::Response;
        let responses = response
            .responses
            .into_iter()
            .map(|op| match op.response {
                Some(Response::ResponseRange(r)) => Ok(OpResponse::Get(r.into())),
                Some(Response::ResponsePut(r)) => Ok(OpResponse::Put(r.into())),
                Some(Response::ResponseDeleteRange(r)) => Ok(OpResponse::Delete(r.into())),
                Some(Response::ResponseTxn(r)) => TxnResponse::from_wire(r).map(OpResponse::Txn),
                None => Err(Error::Unknown {
                    message: "the server answered a transaction op with no response".into(),
                }),
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(TxnResponse {
            header: response.header.into(),
            succeeded: response.succeeded,
            responses,
        })
    }
}

/// The result of [`Client::compare_and_swap`](super::Client::compare_and_swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The key held the expected value (or did not exist, as expected) and now holds the new
    /// one, written at `revision`.
    Swapped { revision: i64 },
    /// The key did not hold what was expected; nothing was written. `current` is what it held
    /// at that revision (`None`: it did not exist).
    CompareFailed { current: Option<KeyValue> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compare_carries_its_target_and_range() {
        let wire = Compare::version("k/", CompareOp::Greater, 2)
            .with_prefix()
            .to_wire();
        assert_eq!(
            wire,
            etcd::Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Version as i32,
                key: b"k/".to_vec(),
                range_end: b"k0".to_vec(),
                target_union: Some(TargetUnion::Version(2)),
            }
        );
    }

    #[test]
    fn a_txn_without_puts_or_deletes_is_read_only() {
        let read = Txn::new().and_then([Op::get("a", GetOptions::new())]);
        assert!(read.is_read_only());
        let nested_write = Txn::new().or_else([Op::txn(
            Txn::new().and_then([Op::delete("a", DeleteOptions::new())]),
        )]);
        assert!(!nested_write.is_read_only());
    }
}
