//! The workloads' client: raw etcd v3 gRPC calls to one chosen node, with NO retries, and the
//! classification that decides what each error means for the history.
//!
//! | error | meaning |
//! |---|---|
//! | connect failed (refused, unreachable, connect timeout): nothing was sent | `fail` |
//! | `etcdserver: no leader` (the server gave up before proposing) | `fail` |
//! | InvalidArgument, FailedPrecondition, OutOfRange, NotFound, Unimplemented, PermissionDenied | `fail` |
//! | anything else: deadline, `leader changed`, `request timed out`, a broken connection | `info` |
//!
//! Must never: call an error `fail` unless the write certainly did not happen.

use std::time::Duration;

use quorumdb::pb::etcdserverpb::Compare;
use quorumdb::pb::etcdserverpb::PutRequest;
use quorumdb::pb::etcdserverpb::RangeRequest;
use quorumdb::pb::etcdserverpb::RequestOp;
use quorumdb::pb::etcdserverpb::TxnRequest;
use quorumdb::pb::etcdserverpb::compare::CompareResult;
use quorumdb::pb::etcdserverpb::compare::CompareTarget;
use quorumdb::pb::etcdserverpb::compare::TargetUnion;
use quorumdb::pb::etcdserverpb::kv_client::KvClient;
use quorumdb::pb::etcdserverpb::request_op::Request;
use quorumdb::pb::mvccpb::KeyValue;
use tonic::Code;
use tonic::Status;
use tonic::transport::Channel;

use crate::cluster;

/// How long a client waits for any one answer. Shorter than the server's own 7 s bound, as
/// Jepsen's clients are: a slow answer is an `info`, and the process moves on.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys per page of a paged read (well under the 4 MiB message limit).
const KEYS_PAGE_MAX: i64 = 5_000;
/// A bound on a paged read's pages (100 M keys; a day-long run adds a few million).
const PAGES_MAX: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Certainly not applied.
    Definite(String),
    /// May or may not have been applied.
    Unknown(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Definite(m) | Failure::Unknown(m) => m,
        }
    }
}

pub fn classify(status: &Status) -> Failure {
    let message = format!("{:?}: {}", status.code(), status.message());
    let text = status.message();
    let never_sent = text.contains("tcp connect error")
        || text.contains("error trying to connect")
        || text.contains("Connection refused")
        || text.contains("No route to host");
    let definite = match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::Unauthenticated => true,
        Code::Unavailable => never_sent || text == "etcdserver: no leader",
        _ => never_sent,
    };
    if definite {
        Failure::Definite(message)
    } else {
        Failure::Unknown(message)
    }
}

/// One client's connections: a channel per node.
pub struct Client {
    kv: Vec<KvClient<Channel>>,
}

pub fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // Prefixes here are ASCII and never end in 0xff.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn parse_i64(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

impl Client {
    pub fn new(nodes: usize) -> Client {
        Client {
            kv: (0..nodes)
                .map(|i| KvClient::new(cluster::channel(i, REQUEST_TIMEOUT)))
                .collect(),
        }
    }

    /// A register read. `serializable` reads the node's local state without the read index
    /// (only the self-test uses it: it must be caught going stale).
    pub async fn read(
        &mut self,
        node: usize,
        key: &str,
        serializable: bool,
    ) -> Result<Option<u64>, Failure> {
        let response = self.kv[node]
            .range(RangeRequest {
                key: key.as_bytes().to_vec(),
                serializable,
                ..RangeRequest::default()
            })
            .await
            .map_err(|s| classify(&s))?
            .into_inner();
        match response.kvs.first() {
            None => Ok(None),
            Some(kv) => parse_u64(&kv.value)
                .map(Some)
                .ok_or_else(|| Failure::Definite(format!("unparsable value {:?}", kv.value))),
        }
    }

    pub async fn write(&mut self, node: usize, key: &str, value: u64) -> Result<(), Failure> {
        self.kv[node]
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.to_string().into_bytes(),
                ..PutRequest::default()
            })
            .await
            .map_err(|s| classify(&s))?;
        Ok(())
    }

    /// Compare-and-set in one Txn: if the value is `expected`, put `new`. Returns whether the
    /// compare held.
    pub async fn cas(
        &mut self,
        node: usize,
        key: &str,
        expected: u64,
        new: u64,
    ) -> Result<bool, Failure> {
        let compare = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(expected.to_string().into_bytes())),
            ..Compare::default()
        };
        let put = RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: new.to_string().into_bytes(),
                ..PutRequest::default()
            })),
        };
        let response = self.kv[node]
            .txn(TxnRequest {
                compare: vec![compare],
                success: vec![put],
                failure: vec![],
            })
            .await
            .map_err(|s| classify(&s))?
            .into_inner();
        Ok(response.succeeded)
    }

    /// Every key under `prefix`, linearizably, in key order.
    pub async fn read_prefix(
        &mut self,
        node: usize,
        prefix: &str,
    ) -> Result<Vec<KeyValue>, Failure> {
        let response = self.kv[node]
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: range_end(prefix),
                ..RangeRequest::default()
            })
            .await
            .map_err(|s| classify(&s))?
            .into_inner();
        Ok(response.kvs)
    }

    /// Every key (no values) under `prefix`, in pages of [`KEYS_PAGE_MAX`], each page a
    /// linearizable read. Not one snapshot: only for reads after the load stopped (the set's final
    /// read), where nothing changes between pages; one Range of an hour's worth of elements would
    /// pass the 4 MiB gRPC message limit.
    pub async fn read_keys_paged(
        &mut self,
        node: usize,
        prefix: &str,
    ) -> Result<Vec<Vec<u8>>, Failure> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut start = prefix.as_bytes().to_vec();
        for _ in 0..PAGES_MAX {
            let response = self.kv[node]
                .range(RangeRequest {
                    key: start.clone(),
                    range_end: range_end(prefix),
                    limit: KEYS_PAGE_MAX,
                    keys_only: true,
                    ..RangeRequest::default()
                })
                .await
                .map_err(|s| classify(&s))?
                .into_inner();
            let more = response.more;
            keys.extend(response.kvs.into_iter().map(|kv| kv.key));
            match keys.last() {
                Some(last) if more => {
                    start = last.clone();
                    start.push(0);
                }
                _ => return Ok(keys),
            }
        }
        Err(Failure::Definite(format!(
            "more than {PAGES_MAX} pages under {prefix}"
        )))
    }

    /// A Txn that puts `puts` only if every `(key, mod_revision)` is unchanged (0: absent).
    pub async fn put_if_unchanged(
        &mut self,
        node: usize,
        unchanged: &[(String, i64)],
        puts: &[(String, String)],
    ) -> Result<bool, Failure> {
        let compare = unchanged
            .iter()
            .map(|(key, revision)| Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(TargetUnion::ModRevision(*revision)),
                ..Compare::default()
            })
            .collect();
        let success = puts
            .iter()
            .map(|(key, value)| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..PutRequest::default()
                })),
            })
            .collect();
        let response = self.kv[node]
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await
            .map_err(|s| classify(&s))?
            .into_inner();
        Ok(response.succeeded)
    }
}

pub fn balance(kv: &KeyValue) -> Option<i64> {
    parse_i64(&kv.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_that_prove_nothing_happened_are_definite() {
        let definite = [
            Status::unavailable("etcdserver: no leader"),
            Status::unavailable(
                "error trying to connect: tcp connect error: Connection refused (os error 111)",
            ),
            Status::invalid_argument("etcdserver: key is not provided"),
        ];
        for status in definite {
            assert!(
                matches!(classify(&status), Failure::Definite(_)),
                "{status:?}"
            );
        }
        let unknown = [
            Status::unavailable("etcdserver: leader changed"),
            Status::unavailable("etcdserver: request timed out"),
            Status::deadline_exceeded("timeout expired"),
            Status::cancelled("operation was canceled"),
            Status::unknown("transport error"),
            Status::internal("h2 protocol error: stream reset"),
        ];
        for status in unknown {
            assert!(
                matches!(classify(&status), Failure::Unknown(_)),
                "{status:?}"
            );
        }
    }
}
