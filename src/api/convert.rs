//! Conversions between the etcd wire messages and our log/storage types, validating on the way
//! in: a request that fails here is refused before anything is proposed, so it changes nothing.

use crate::api::error::ApiError;
use crate::pb::etcdserverpb as etcd;
use crate::pb::mvccpb;
use crate::types::Compare;
use crate::types::CompareResult;
use crate::types::CompareTarget;
use crate::types::DeleteOp;
use crate::types::KeyValue;
use crate::types::KvError;
use crate::types::PutOp;
use crate::types::RangeOp;
use crate::types::RangeResult;
use crate::types::SortOrder;
use crate::types::SortTarget;
use crate::types::TxnOp;
use crate::types::TxnRequestOp;
use crate::types::TxnResponseOp;
use crate::types::TxnResult;

fn require_key(key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        Err(ApiError::EmptyKey)
    } else {
        Ok(())
    }
}

pub fn range_op(request: &etcd::RangeRequest) -> Result<RangeOp, ApiError> {
    require_key(&request.key)?;
    let sort_order = match etcd::range_request::SortOrder::try_from(request.sort_order) {
        Ok(etcd::range_request::SortOrder::None) => SortOrder::None,
        Ok(etcd::range_request::SortOrder::Ascend) => SortOrder::Ascend,
        Ok(etcd::range_request::SortOrder::Descend) => SortOrder::Descend,
        Err(_) => return Err(ApiError::InvalidSortOption),
    };
    let sort_target = match etcd::range_request::SortTarget::try_from(request.sort_target) {
        Ok(etcd::range_request::SortTarget::Key) => SortTarget::Key,
        Ok(etcd::range_request::SortTarget::Version) => SortTarget::Version,
        Ok(etcd::range_request::SortTarget::Create) => SortTarget::Create,
        Ok(etcd::range_request::SortTarget::Mod) => SortTarget::Mod,
        Ok(etcd::range_request::SortTarget::Value) => SortTarget::Value,
        Err(_) => return Err(ApiError::InvalidSortOption),
    };
    Ok(RangeOp {
        key: request.key.clone(),
        range_end: request.range_end.clone(),
        limit: request.limit,
        revision: request.revision,
        sort_order,
        sort_target,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    })
}

pub fn put_op(request: &etcd::PutRequest) -> Result<PutOp, ApiError> {
    require_key(&request.key)?;
    if request.ignore_value && !request.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    if request.lease != 0 {
        // Leases do not exist yet, so no lease id can name one.
        return Err(ApiError::Kv(KvError::LeaseNotFound));
    }
    Ok(PutOp {
        key: request.key.clone(),
        value: request.value.clone(),
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    })
}

pub fn delete_op(request: &etcd::DeleteRangeRequest) -> Result<DeleteOp, ApiError> {
    require_key(&request.key)?;
    Ok(DeleteOp {
        key: request.key.clone(),
        range_end: request.range_end.clone(),
        prev_kv: request.prev_kv,
    })
}

fn compare(request: &etcd::Compare) -> Result<Compare, ApiError> {
    use etcd::compare::TargetUnion;
    require_key(&request.key)?;
    let result = match etcd::compare::CompareResult::try_from(request.result) {
        Ok(etcd::compare::CompareResult::Equal) => CompareResult::Equal,
        Ok(etcd::compare::CompareResult::Greater) => CompareResult::Greater,
        Ok(etcd::compare::CompareResult::Less) => CompareResult::Less,
        Ok(etcd::compare::CompareResult::NotEqual) => CompareResult::NotEqual,
        Err(_) => {
            return Err(ApiError::InvalidCompare(format!(
                "unknown compare result {}",
                request.result
            )));
        }
    };
    // A missing or mismatched operand compares against the zero value, as in etcd.
    let target = match etcd::compare::CompareTarget::try_from(request.target) {
        Ok(etcd::compare::CompareTarget::Version) => {
            CompareTarget::Version(match request.target_union {
                Some(TargetUnion::Version(v)) => v,
                _ => 0,
            })
        }
        Ok(etcd::compare::CompareTarget::Create) => {
            CompareTarget::Create(match request.target_union {
                Some(TargetUnion::CreateRevision(v)) => v,
                _ => 0,
            })
        }
        Ok(etcd::compare::CompareTarget::Mod) => CompareTarget::Mod(match request.target_union {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(etcd::compare::CompareTarget::Value) => {
            CompareTarget::Value(match &request.target_union {
                Some(TargetUnion::Value(v)) => v.clone(),
                _ => Vec::new(),
            })
        }
        Ok(etcd::compare::CompareTarget::Lease) => {
            CompareTarget::Lease(match request.target_union {
                Some(TargetUnion::Lease(v)) => v,
                _ => 0,
            })
        }
        Err(_) => {
            return Err(ApiError::InvalidCompare(format!(
                "unknown compare target {}",
                request.target
            )));
        }
    };
    Ok(Compare {
        result,
        target,
        key: request.key.clone(),
        range_end: request.range_end.clone(),
    })
}

fn request_op(request: &etcd::RequestOp, max_txn_ops: usize) -> Result<TxnRequestOp, ApiError> {
    use etcd::request_op::Request;
    match &request.request {
        Some(Request::RequestRange(r)) => Ok(TxnRequestOp::Range(range_op(r)?)),
        Some(Request::RequestPut(r)) => Ok(TxnRequestOp::Put(put_op(r)?)),
        Some(Request::RequestDeleteRange(r)) => Ok(TxnRequestOp::Delete(delete_op(r)?)),
        Some(Request::RequestTxn(r)) => Ok(TxnRequestOp::Txn(txn_op_unchecked(r, max_txn_ops)?)),
        None => Err(ApiError::EmptyRequestOp),
    }
}

fn txn_op_unchecked(request: &etcd::TxnRequest, max_txn_ops: usize) -> Result<TxnOp, ApiError> {
    if request.compare.len() > max_txn_ops
        || request.success.len() > max_txn_ops
        || request.failure.len() > max_txn_ops
    {
        return Err(ApiError::TooManyOps);
    }
    Ok(TxnOp {
        compare: request
            .compare
            .iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: request
            .success
            .iter()
            .map(|op| request_op(op, max_txn_ops))
            .collect::<Result<_, _>>()?,
        failure: request
            .failure
            .iter()
            .map(|op| request_op(op, max_txn_ops))
            .collect::<Result<_, _>>()?,
    })
}

/// Converts and validates a transaction, including etcd's duplicate-key rule.
pub fn txn_op(request: &etcd::TxnRequest, max_txn_ops: usize) -> Result<TxnOp, ApiError> {
    let txn = txn_op_unchecked(request, max_txn_ops)?;
    super::duplicates::check_txn(&txn)?;
    Ok(txn)
}

pub fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_response(result: RangeResult, header: etcd::ResponseHeader) -> etcd::RangeResponse {
    etcd::RangeResponse {
        header: Some(header),
        kvs: result.kvs.into_iter().map(key_value).collect(),
        more: result.more,
        count: result.count,
    }
}

pub fn txn_response(result: TxnResult, header: etcd::ResponseHeader) -> etcd::TxnResponse {
    use etcd::response_op::Response;
    let responses = result
        .responses
        .into_iter()
        .map(|op| etcd::ResponseOp {
            // Every sub-response carries a header: `etcdctl -w fields txn` dereferences it.
            response: Some(match op {
                TxnResponseOp::Range(r) => Response::ResponseRange(range_response(r, header)),
                TxnResponseOp::Put { prev_kv } => Response::ResponsePut(etcd::PutResponse {
                    header: Some(header),
                    prev_kv: prev_kv.map(key_value),
                }),
                TxnResponseOp::Delete { deleted, prev_kvs } => {
                    Response::ResponseDeleteRange(etcd::DeleteRangeResponse {
                        header: Some(header),
                        deleted,
                        prev_kvs: prev_kvs.into_iter().map(key_value).collect(),
                    })
                }
                TxnResponseOp::Txn(nested) => Response::ResponseTxn(txn_response(nested, header)),
            }),
        })
        .collect();
    etcd::TxnResponse {
        header: Some(header),
        succeeded: result.succeeded,
        responses,
    }
}
