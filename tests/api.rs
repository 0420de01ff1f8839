//! The etcd v3 client API as independent clients see it: the `etcd-client` crate, and etcdctl 3.4
//! when it is installed, against three real `quorumdb server` processes on loopback.
//!
//! Each test starts one cluster (nextest runs every test in a process of its own) and runs a
//! sequence of named checks against it. Every check works under its own key prefix, so none
//! depends on another's data; checks run one after another, so a check that compares revisions
//! before and after is the only writer while it runs.
//!
//! Errors are compared by gRPC code AND exact message: etcd's Go client (etcdctl, clientv3) maps
//! errors by their text, so a reworded message is a compatibility bug.

mod common;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use common::Cluster;
use etcd_client::Client;
use etcd_client::Compare;
use etcd_client::CompareOp;
use etcd_client::DeleteOptions;
use etcd_client::Error;
use etcd_client::GetOptions;
use etcd_client::KeyValue;
use etcd_client::Member;
use etcd_client::PutOptions;
use etcd_client::ResponseHeader;
use etcd_client::Txn;
use etcd_client::TxnOp;
use etcd_client::TxnOpResponse;
use tonic::Code;

/// Upper bound on one test, cluster start included: a hung server fails the test, not CI.
const TEST_TIME_MAX: Duration = Duration::from_secs(120);

/// Upper bound on one etcdctl invocation (its own default command timeout is 5 s).
const ETCDCTL_TIME_MAX: Duration = Duration::from_secs(30);

/// etcd's default `--max-request-bytes` (1.5 MiB) and `--max-txn-ops`.
const REQUEST_BYTES_MAX: usize = 1536 * 1024;
const TXN_OPS_MAX: usize = 128;

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs a test body under TEST_TIME_MAX. The cluster lives outside the body, so when the bound
/// trips the panic happens while the cluster is alive and its logs are printed.
async fn within_time_limit(body: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_TIME_MAX, body).await.is_err() {
        panic!("test did not finish within {TEST_TIME_MAX:?}");
    }
}

/// Calls `path` on `url` with `message` and the extra `headers`, straight on an HTTP/2 stream
/// (no client-side deadline), and returns the answer's `grpc-status` and `grpc-message`.
async fn grpc_status_of_raw_call(
    url: &str,
    path: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> (String, String) {
    let address = url.trim_start_matches("http://");
    let socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the client port");
    let (mut client, connection) = h2::client::handshake(socket).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut request = http::Request::post(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(()).expect("a well-formed request");
    let mut body = vec![0];
    body.extend_from_slice(&u32::try_from(message.encoded_len()).unwrap().to_be_bytes());
    message.encode(&mut body).expect("encode");
    let (answer, mut send) = client.send_request(request, false).expect("open a stream");
    send.send_data(body.into(), true).expect("send the message");
    let answer = answer.await.expect("response headers");
    let field = |headers: &http::HeaderMap, name: &str| {
        headers
            .get(name)
            .map(|value| value.to_str().expect("ascii").to_string())
    };
    if let Some(status) = field(answer.headers(), "grpc-status") {
        let message = field(answer.headers(), "grpc-message").unwrap_or_default();
        return (status, message);
    }
    let mut body = answer.into_body();
    while let Some(data) = body.data().await {
        let data = data.expect("response body");
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body
        .trailers()
        .await
        .expect("trailers")
        .expect("a gRPC answer ends with trailers");
    let status = field(&trailers, "grpc-status").expect("grpc-status");
    (status, field(&trailers, "grpc-message").unwrap_or_default())
}

/// Asserts that `result` is the error etcd returns: the same gRPC code and the same message.
#[track_caller]
fn assert_etcd_error<T: Debug>(result: Result<T, Error>, code: Code, message: &str, what: &str) {
    match result {
        Err(Error::GRpcStatus(status)) => {
            assert_eq!(
                (status.code(), status.message()),
                (code, message),
                "{what}: wrong gRPC status"
            );
        }
        other => panic!("{what}: expected gRPC status {code:?} {message:?}, got {other:?}"),
    }
}

fn revision_of(header: Option<&ResponseHeader>) -> i64 {
    header
        .expect("every etcd response carries a header")
        .revision()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn keys_of(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| text(kv.key())).collect()
}

/// One key as a rejected request must leave it: value, mod_revision, version.
#[derive(Debug, PartialEq, Eq)]
struct ObservedKey {
    key: String,
    value: String,
    mod_revision: i64,
    version: i64,
}

/// The store revision and every key under a prefix, read linearizably.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    revision: i64,
    keys: Vec<ObservedKey>,
}

async fn observe(client: &mut Client, prefix: &str) -> Observed {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("observe the store");
    Observed {
        revision: revision_of(response.header()),
        keys: response
            .kvs()
            .iter()
            .map(|kv| ObservedKey {
                key: text(kv.key()),
                value: text(kv.value()),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
            })
            .collect(),
    }
}

/// Indexes of the leader and of one follower, once all nodes agree on a leader.
async fn leader_and_follower(cluster: &Cluster) -> (usize, usize) {
    let leader = cluster.wait_for_leader().await;
    (leader, (leader + 1) % cluster.nodes.len())
}

// ---------------------------------------------------------------------------------------------
// A. Bad inputs get etcd's error and change nothing
// ---------------------------------------------------------------------------------------------

/// Sends one bad request (the caller builds it on a follower's client; futures are lazy, so it
/// goes out only here), expects etcd's error, and checks through `leader` that neither the store
/// revision nor any key under `prefix` changed.
async fn rejected_without_change<T: Debug>(
    leader: &mut Client,
    prefix: &str,
    what: &str,
    code: Code,
    message: &str,
    request: impl Future<Output = Result<T, Error>>,
) {
    let before = observe(leader, prefix).await;
    assert_etcd_error(request.await, code, message, what);
    let after = observe(leader, prefix).await;
    assert_eq!(
        after, before,
        "{what}: a rejected request changed the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcd_errors_and_change_nothing() {
    let cluster = Cluster::start(3);
    within_time_limit(async {
        let (leader_index, follower_index) = leader_and_follower(&cluster).await;
        let mut leader = cluster.client(leader_index).await;
        let mut follower = cluster.client(follower_index).await;
        let prefix = "bad/";
        let key = "bad/k";
        leader.put(key, "v1", None).await.expect("seed put");
        leader.put("bad/other", "o1", None).await.expect("seed put");

        const TOO_LARGE: &str = "etcdserver: request is too large";
        let big_value = vec![b'x'; REQUEST_BYTES_MAX + MIB / 10];
        rejected_without_change(
            &mut leader,
            prefix,
            "put of a 1.6 MiB value",
            Code::InvalidArgument,
            TOO_LARGE,
            follower.put(key, big_value.clone(), None),
        )
        .await;
        rejected_without_change(
            &mut leader,
            prefix,
            "txn putting a 1.6 MiB value",
            Code::InvalidArgument,
            TOO_LARGE,
            follower.txn(Txn::new().and_then([TxnOp::put(key, big_value.clone(), None)])),
        )
        .await;
        rejected_without_change(
            &mut leader,
            prefix,
            "range with a 1.6 MiB key",
            Code::InvalidArgument,
            TOO_LARGE,
            follower.get(big_value, None),
        )
        .await;

        // Over the gRPC receive limit (1.5 MiB + 512 KiB): refused before any handler runs, so
        // the code is tonic's; what matters is that it fails and writes nothing.
        let before = observe(&mut leader, prefix).await;
        let huge = follower.put(key, vec![b'y'; 3 * MIB], None).await;
        assert!(
            huge.is_err(),
            "a 3 MiB put over the gRPC receive limit succeeded: {huge:?}"
        );
        assert_eq!(
            observe(&mut leader, prefix).await,
            before,
            "a 3 MiB put changed the store"
        );
        eprintln!("3 MiB put was refused with: {:?}", huge.unwrap_err());

        const EMPTY_KEY: &str = "etcdserver: key is not provided";
        rejected_without_change(
            &mut leader,
            prefix,
            "put with an empty key",
            Code::InvalidArgument,
            EMPTY_KEY,
            follower.put("", "v", None),
        )
        .await;
        rejected_without_change(
            &mut leader,
            prefix,
            "get with an empty key",
            Code::InvalidArgument,
            EMPTY_KEY,
            follower.get("", None),
        )
        .await;
        rejected_without_change(
            &mut leader,
            prefix,
            "delete with an empty key",
            Code::InvalidArgument,
            EMPTY_KEY,
            follower.delete("", None),
        )
        .await;

        const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
        let puts: Vec<TxnOp> = (0..=TXN_OPS_MAX)
            .map(|i| TxnOp::put(format!("bad/many/{i:03}"), "v", None))
            .collect();
        rejected_without_change(
            &mut leader,
            prefix,
            "txn with 129 ops in success",
            Code::InvalidArgument,
            TOO_MANY_OPS,
            follower.txn(Txn::new().and_then(puts.clone())),
        )
        .await;
        rejected_without_change(
            &mut leader,
            prefix,
            "txn with 129 ops in failure",
            Code::InvalidArgument,
            TOO_MANY_OPS,
            follower.txn(Txn::new().or_else(puts)),
        )
        .await;
        let compares: Vec<Compare> = (0..=TXN_OPS_MAX)
            .map(|i| Compare::version(format!("bad/cmp/{i:03}"), CompareOp::Equal, 0))
            .collect();
        rejected_without_change(
            &mut leader,
            prefix,
            "txn with 129 compares",
            Code::InvalidArgument,
            TOO_MANY_OPS,
            follower.txn(
                Txn::new()
                    .when(compares)
                    .and_then([TxnOp::put(key, "v2", None)]),
            ),
        )
        .await;

        const DUPLICATE: &str = "etcdserver: duplicate key given in txn request";
        rejected_without_change(
            &mut leader,
            prefix,
            "txn putting the same key twice",
            Code::InvalidArgument,
            DUPLICATE,
            follower
                .txn(Txn::new().and_then([TxnOp::put(key, "x", None), TxnOp::put(key, "y", None)])),
        )
        .await;
        rejected_without_change(
            &mut leader,
            prefix,
            "txn putting a key inside a range it deletes",
            Code::InvalidArgument,
            DUPLICATE,
            follower.txn(Txn::new().and_then([
                TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix())),
                TxnOp::put(key, "z", None),
            ])),
        )
        .await;
        rejected_without_change(
            &mut leader,
            prefix,
            "txn putting a key again in a nested txn",
            Code::InvalidArgument,
            DUPLICATE,
            follower.txn(Txn::new().and_then([
                TxnOp::put(key, "outer", None),
                TxnOp::txn(Txn::new().and_then([TxnOp::put(key, "inner", None)])),
            ])),
        )
        .await;

        rejected_without_change(
            &mut leader,
            prefix,
            "put with ignore_value and a value",
            Code::InvalidArgument,
            "etcdserver: value is provided",
            follower.put(key, "new", Some(PutOptions::new().with_ignore_value())),
        )
        .await;

        // The limit is exactly 128: a full txn is accepted, as one revision.
        let before = observe(&mut leader, "bad/full/").await;
        let puts: Vec<TxnOp> = (0..TXN_OPS_MAX)
            .map(|i| TxnOp::put(format!("bad/full/{i:03}"), "v", None))
            .collect();
        let response = follower
            .txn(Txn::new().and_then(puts))
            .await
            .expect("txn with 128 ops");
        assert!(response.succeeded());
        assert_eq!(
            revision_of(response.header()),
            before.revision + 1,
            "a txn is one revision"
        );
        let after = observe(&mut leader, "bad/full/").await;
        assert_eq!(after.keys.len(), TXN_OPS_MAX);
        assert!(
            after
                .keys
                .iter()
                .all(|k| k.mod_revision == before.revision + 1)
        );

        // The seeded keys are exactly as written at the start.
        let seeded = observe(&mut leader, prefix).await;
        let untouched: Vec<(&str, &str, i64)> = seeded
            .keys
            .iter()
            .filter(|k| !k.key.starts_with("bad/full/"))
            .map(|k| (k.key.as_str(), k.value.as_str(), k.version))
            .collect();
        assert_eq!(untouched, [("bad/k", "v1", 1), ("bad/other", "o1", 1)]);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// B. Historical reads and compaction
// ---------------------------------------------------------------------------------------------

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

async fn value_at(client: &mut Client, key: &str, revision: i64) -> (Option<String>, i64) {
    let response = client
        .get(key, Some(GetOptions::new().with_revision(revision)))
        .await
        .unwrap_or_else(|e| panic!("get {key} at revision {revision}: {e:?}"));
    (
        response.kvs().first().map(|kv| text(kv.value())),
        revision_of(response.header()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn historical_reads_and_compaction_follow_etcd_revision_rules() {
    let cluster = Cluster::start(3);
    within_time_limit(async {
        let (leader_index, _) = leader_and_follower(&cluster).await;
        let mut leader = cluster.client(leader_index).await;
        let key = "history/k";
        let mut revisions = Vec::new();
        for value in ["v1", "v2", "v3"] {
            let response = leader.put(key, value, None).await.expect("put");
            revisions.push(revision_of(response.header()));
        }
        let [r1, r2, r3] = revisions[..] else {
            unreachable!()
        };
        assert_eq!(
            (r2, r3),
            (r1 + 1, r1 + 2),
            "each put bumps the revision by one"
        );
        let gone = leader.put("history/gone", "g", None).await.expect("put");
        let gone_created = revision_of(gone.header());
        leader.delete("history/gone", None).await.expect("delete");
        let current = r3 + 2;

        // Every node serves the past, and reports the current revision in the header.
        for index in 0..cluster.nodes.len() {
            let mut client = cluster.client(index).await;
            for (revision, expected) in [(r1, "v1"), (r2, "v2"), (r3, "v3")] {
                let (value, header_revision) = value_at(&mut client, key, revision).await;
                assert_eq!(
                    value.as_deref(),
                    Some(expected),
                    "node {index}: value at revision {revision}"
                );
                assert_eq!(
                    header_revision, current,
                    "node {index}: header.revision of a read at {revision}"
                );
            }
            let (value, _) = value_at(&mut client, "history/gone", gone_created).await;
            assert_eq!(
                value.as_deref(),
                Some("g"),
                "node {index}: a deleted key is still in history"
            );
        }

        let compacted = leader.compact(r2, None).await.expect("compact");
        assert_eq!(
            revision_of(compacted.header()),
            current,
            "compaction does not change the revision"
        );

        for index in 0..cluster.nodes.len() {
            let mut client = cluster.client(index).await;
            assert_etcd_error(
                client
                    .get(key, Some(GetOptions::new().with_revision(r2 - 1)))
                    .await,
                Code::OutOfRange,
                COMPACTED,
                &format!("node {index}: get below the compact revision"),
            );
            let (value, header_revision) = value_at(&mut client, key, r2).await;
            assert_eq!(
                value.as_deref(),
                Some("v2"),
                "node {index}: the compact revision itself stays readable"
            );
            assert_eq!(
                header_revision, current,
                "node {index}: header.revision of a read at {r2}"
            );
            let (value, _) = value_at(&mut client, key, r3).await;
            assert_eq!(
                value.as_deref(),
                Some("v3"),
                "node {index}: value after the compact revision"
            );
            assert_etcd_error(
                client
                    .get(key, Some(GetOptions::new().with_revision(current + 1)))
                    .await,
                Code::OutOfRange,
                FUTURE,
                &format!("node {index}: get at the next revision"),
            );
            assert_etcd_error(
                client
                    .get(key, Some(GetOptions::new().with_revision(current + 1000)))
                    .await,
                Code::OutOfRange,
                FUTURE,
                &format!("node {index}: get far in the future"),
            );
        }

        assert_etcd_error(
            leader.compact(r2, None).await,
            Code::OutOfRange,
            COMPACTED,
            "compact again at R",
        );
        assert_etcd_error(
            leader.compact(r1, None).await,
            Code::OutOfRange,
            COMPACTED,
            "compact below R",
        );
        assert_etcd_error(
            leader.compact(current + 1, None).await,
            Code::OutOfRange,
            FUTURE,
            "compact in the future",
        );

        let (value, header_revision) = value_at(&mut leader, key, 0).await;
        assert_eq!(
            value.as_deref(),
            Some("v3"),
            "the current value survives compaction"
        );
        assert_eq!(
            header_revision, current,
            "rejected compactions changed the revision"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// C. Everyday operations of the etcd client
// ---------------------------------------------------------------------------------------------

async fn put_with_prev_kv_returns_the_overwritten_key(client: &mut Client) {
    let key = "put/k";
    let options = || Some(PutOptions::new().with_prev_key());
    let first = client.put(key, "v1", options()).await.expect("first put");
    assert!(
        first.prev_key().is_none(),
        "a new key has no previous value: {first:?}"
    );
    let created = revision_of(first.header());

    let second = client.put(key, "v2", options()).await.expect("second put");
    assert_eq!(
        revision_of(second.header()),
        created + 1,
        "a put bumps the revision by one"
    );
    let previous = second.prev_key().expect("prev_kv of an overwrite");
    assert_eq!(
        (text(previous.key()), text(previous.value())),
        (key.to_string(), "v1".to_string())
    );
    assert_eq!(
        (
            previous.create_revision(),
            previous.mod_revision(),
            previous.version()
        ),
        (created, created, 1)
    );

    let response = client.get(key, None).await.expect("get single");
    assert_eq!(response.count(), 1);
    assert!(!response.more());
    let [kv] = response.kvs() else {
        panic!("one key expected: {response:?}")
    };
    assert_eq!(text(kv.value()), "v2");
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (created, created + 1, 2)
    );
    assert_eq!(revision_of(response.header()), created + 1);

    let missing = client
        .get("put/missing", None)
        .await
        .expect("get a missing key");
    assert!(missing.kvs().is_empty());
    assert_eq!(missing.count(), 0);
}

async fn prefix_get_is_sorted_and_honours_limit_keys_only_and_count_only(client: &mut Client) {
    // Written out of order, with neighbours just outside the prefix on both sides.
    for key in [
        "list/c", "list/a", "list/d", "list/b", "list.", "list0", "lisz",
    ] {
        client
            .put(key, format!("value of {key}"), None)
            .await
            .expect("put");
    }
    let prefix = || GetOptions::new().with_prefix();
    let expected = ["list/a", "list/b", "list/c", "list/d"];

    let all = client
        .get("list/", Some(prefix()))
        .await
        .expect("get prefix");
    assert_eq!(
        keys_of(all.kvs()),
        expected,
        "keys sorted ascending, prefix only"
    );
    assert!(
        all.kvs()
            .iter()
            .all(|kv| text(kv.value()) == format!("value of {}", text(kv.key())))
    );
    assert_eq!((all.count(), all.more()), (4, false));

    let limited = client
        .get("list/", Some(prefix().with_limit(2)))
        .await
        .expect("get with limit");
    assert_eq!(keys_of(limited.kvs()), expected[..2]);
    assert!(limited.more(), "more keys remain beyond the limit");
    assert_eq!(limited.count(), 4, "count is the total, whatever the limit");

    let keys_only = client
        .get("list/", Some(prefix().with_keys_only()))
        .await
        .expect("keys only");
    assert_eq!(keys_of(keys_only.kvs()), expected);
    assert!(
        keys_only.kvs().iter().all(|kv| kv.value().is_empty()),
        "keys_only returns no values"
    );

    let count_only = client
        .get("list/", Some(prefix().with_count_only()))
        .await
        .expect("count only");
    assert!(count_only.kvs().is_empty(), "count_only returns no keys");
    assert_eq!(count_only.count(), 4);
}

async fn delete_reports_the_deleted_count_and_previous_keys(client: &mut Client) {
    for key in ["del/a", "del/b", "del/c", "del/d", "dem"] {
        client
            .put(key, format!("value of {key}"), None)
            .await
            .expect("put");
    }
    let single = client
        .delete("del/a", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete single");
    assert_eq!(single.deleted(), 1);
    assert_eq!(keys_of(single.prev_kvs()), ["del/a"]);
    assert_eq!(text(single.prev_kvs()[0].value()), "value of del/a");
    let after_single = revision_of(single.header());
    assert!(
        client
            .get("del/a", None)
            .await
            .expect("get")
            .kvs()
            .is_empty(),
        "deleted key is gone"
    );

    let nothing = client
        .delete("del/a", None)
        .await
        .expect("delete a missing key");
    assert_eq!(nothing.deleted(), 0);
    assert_eq!(
        revision_of(nothing.header()),
        after_single,
        "deleting nothing does not bump the revision"
    );

    let by_prefix = client
        .delete(
            "del/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete prefix");
    assert_eq!(by_prefix.deleted(), 3);
    assert_eq!(
        revision_of(by_prefix.header()),
        after_single + 1,
        "one delete, one revision"
    );
    let mut previous: Vec<(String, String)> = by_prefix
        .prev_kvs()
        .iter()
        .map(|kv| (text(kv.key()), text(kv.value())))
        .collect();
    previous.sort();
    let expected: Vec<(String, String)> = ["del/b", "del/c", "del/d"]
        .iter()
        .map(|k| (k.to_string(), format!("value of {k}")))
        .collect();
    assert_eq!(previous, expected);

    let left = client
        .get("del/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(left.count(), 0, "the prefix is empty");
    let neighbour = client.get("dem", None).await.expect("get");
    assert_eq!(neighbour.count(), 1, "a key outside the prefix survives");
}

/// Which branch a txn took, and what its single Get op saw.
async fn txn_branch(client: &mut Client, compare: Compare, what: &str) -> (bool, Vec<String>) {
    let response = client
        .txn(
            Txn::new()
                .when([compare])
                .and_then([TxnOp::get("txn/then", None)])
                .or_else([TxnOp::get("txn/else", None)]),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let responses = response.op_responses();
    let [TxnOpResponse::Get(get)] = &responses[..] else {
        panic!("{what}: exactly one Get response expected: {response:?}")
    };
    (
        response.succeeded(),
        get.kvs().iter().map(|kv| text(kv.value())).collect(),
    )
}

async fn txn_compares_on_version_create_mod_and_value_pick_the_branch(client: &mut Client) {
    let key = "txn/k";
    client.put("txn/then", "then", None).await.expect("put");
    client.put("txn/else", "else", None).await.expect("put");
    let created = revision_of(client.put(key, "v1", None).await.expect("put").header());
    let modified = revision_of(client.put(key, "v2", None).await.expect("put").header());

    use CompareOp::Equal;
    use CompareOp::Greater;
    use CompareOp::Less;
    use CompareOp::NotEqual;
    let cases = [
        (Compare::version(key, Equal, 2), true, "version == 2"),
        (Compare::version(key, Greater, 2), false, "version > 2"),
        (
            Compare::create_revision(key, Equal, created),
            true,
            "create == created",
        ),
        (
            Compare::create_revision(key, Less, created),
            false,
            "create < created",
        ),
        (
            Compare::mod_revision(key, Equal, modified),
            true,
            "mod == modified",
        ),
        (
            Compare::mod_revision(key, NotEqual, modified),
            false,
            "mod != modified",
        ),
        (Compare::value(key, Equal, "v2"), true, "value == v2"),
        (Compare::value(key, Equal, "v1"), false, "value == v1"),
        (Compare::value(key, Greater, "v1"), true, "value > v1"),
        (
            Compare::create_revision("txn/missing", Equal, 0),
            true,
            "missing key: create == 0",
        ),
        (
            Compare::version("txn/missing", Greater, 0),
            false,
            "missing key: version > 0",
        ),
        (
            Compare::value("txn/missing", Equal, ""),
            false,
            "missing key: value compare is false",
        ),
    ];
    for (compare, expected, what) in cases {
        let (succeeded, seen) = txn_branch(client, compare, what).await;
        let branch = if expected { "then" } else { "else" };
        assert_eq!(
            (succeeded, seen),
            (expected, vec![branch.to_string()]),
            "{what}"
        );
    }

    // Compares are ANDed.
    let response = client
        .txn(Txn::new().when([
            Compare::version(key, Equal, 2),
            Compare::value(key, Equal, "nope"),
        ]))
        .await
        .expect("txn");
    assert!(
        !response.succeeded(),
        "one false compare fails the whole txn"
    );

    // Writes run only in the branch taken; a Get later in the same txn sees them; the whole
    // txn is one revision, and a read-only branch changes no revision.
    let response = client
        .txn(
            Txn::new()
                .when([Compare::mod_revision(key, Equal, modified)])
                .and_then([
                    TxnOp::put(key, "v3", Some(PutOptions::new().with_prev_key())),
                    TxnOp::put("txn/written", "yes", None),
                    TxnOp::get(key, None),
                ])
                .or_else([TxnOp::put("txn/failed", "wrong branch", None)]),
        )
        .await
        .expect("txn with writes");
    assert!(response.succeeded());
    let written = revision_of(response.header());
    assert_eq!(
        written,
        modified + 1,
        "a txn with several writes is one revision"
    );
    let responses = response.op_responses();
    let [
        TxnOpResponse::Put(put),
        TxnOpResponse::Put(_),
        TxnOpResponse::Get(get),
    ] = &responses[..]
    else {
        panic!("put, put, get responses expected: {response:?}")
    };
    assert_eq!(
        put.prev_key().map(|kv| text(kv.value())).as_deref(),
        Some("v2")
    );
    assert_eq!(keys_of(get.kvs()), [key]);
    assert_eq!(
        text(get.kvs()[0].value()),
        "v3",
        "a get sees earlier writes of its txn"
    );
    assert_eq!(get.kvs()[0].mod_revision(), written);

    let response = client
        .txn(
            Txn::new()
                .when([Compare::mod_revision(key, Equal, modified)])
                .and_then([TxnOp::put("txn/failed", "wrong branch", None)])
                .or_else([TxnOp::get(key, None)]),
        )
        .await
        .expect("txn taking the read-only failure branch");
    assert!(!response.succeeded(), "the key was modified since");
    assert_eq!(
        revision_of(response.header()),
        written,
        "a read-only branch does not bump the revision"
    );

    let written_key = client.get("txn/written", None).await.expect("get");
    assert_eq!(written_key.kvs()[0].mod_revision(), written);
    let failed = client.get("txn/failed", None).await.expect("get");
    assert!(
        failed.kvs().is_empty(),
        "the branch not taken wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_kv_and_txn_operations_behave_like_etcd() {
    let cluster = Cluster::start(3);
    within_time_limit(async {
        let (leader_index, follower_index) = leader_and_follower(&cluster).await;
        let mut leader = cluster.client(leader_index).await;
        let mut follower = cluster.client(follower_index).await;
        put_with_prev_kv_returns_the_overwritten_key(&mut leader).await;
        prefix_get_is_sorted_and_honours_limit_keys_only_and_count_only(&mut leader).await;
        delete_reports_the_deleted_count_and_previous_keys(&mut leader).await;
        txn_compares_on_version_create_mod_and_value_pick_the_branch(&mut leader).await;
        // Through a follower too: writes are forwarded to the leader, reads stay linearizable.
        let response = follower.get("txn/k", None).await.expect("follower get");
        assert_eq!(
            text(response.kvs()[0].value()),
            "v3",
            "a follower reads the latest write"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_and_endpoint_status_describe_the_cluster_on_every_node() {
    let cluster = Cluster::start(3);
    within_time_limit(async {
        cluster.wait_for_leader().await;
        let node_ids: BTreeSet<u64> = cluster.nodes.iter().map(|n| n.id).collect();

        let members = cluster.wait_for_published_members(0).await;
        assert_eq!(members.len(), 3, "{members:?}");
        for node in &cluster.nodes {
            let member = members
                .iter()
                .find(|m| m.id() == node.id)
                .unwrap_or_else(|| {
                    panic!("{} missing from the member list: {members:?}", node.name)
                });
            assert!(
                !member.name().is_empty(),
                "a started member has a name: {member:?}"
            );
            assert_eq!(member.name(), node.name);
            assert_eq!(member.peer_urls(), [node.peer_url()]);
            assert_eq!(member.client_urls(), [node.client_url()]);
            assert!(!member.is_learner());
        }
        for index in 1..cluster.nodes.len() {
            let mut others = cluster.wait_for_published_members(index).await;
            let mut expected = members.clone();
            others.sort_by_key(Member::id);
            expected.sort_by_key(Member::id);
            assert_eq!(others, expected, "node {index} lists the same members");
        }

        let mut leaders = BTreeSet::new();
        let mut member_ids = BTreeSet::new();
        let mut cluster_ids = BTreeSet::new();
        for (index, node) in cluster.nodes.iter().enumerate() {
            let status = cluster.client(index).await.status().await.expect("status");
            let header = status.header().expect("status has a header");
            assert_eq!(
                header.member_id(),
                node.id,
                "node {index}: header.member_id is its own id"
            );
            assert!(
                member_ids.insert(header.member_id()),
                "member ids are distinct"
            );
            assert_ne!(header.cluster_id(), 0, "node {index}: cluster_id");
            cluster_ids.insert(header.cluster_id());
            assert!(
                status.raft_term() > 0,
                "node {index}: raft_term {}",
                status.raft_term()
            );
            assert!(
                status.version().starts_with("3."),
                "node {index}: version {:?}",
                status.version()
            );
            assert!(!status.is_learner());
            assert!(
                status.errors().is_empty(),
                "node {index}: errors {:?}",
                status.errors()
            );
            leaders.insert(status.leader());
        }
        assert_eq!(member_ids, node_ids);
        assert_eq!(
            cluster_ids.len(),
            1,
            "every node reports the same cluster id"
        );
        assert_eq!(
            leaders.len(),
            1,
            "every node reports the same leader: {leaders:?}"
        );
        let leader = *leaders.first().unwrap();
        assert!(node_ids.contains(&leader), "leader {leader} is a member");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// D. etcdctl 3.4, the Go client, when installed
// ---------------------------------------------------------------------------------------------

fn etcdctl_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcdctl"))
        .find(|candidate| candidate.is_file())
}

/// Runs `etcdctl --endpoints <endpoint> <args>` and returns its standard output.
async fn etcdctl(program: &Path, endpoint: &str, args: &[&str]) -> String {
    let run = tokio::process::Command::new(program)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(ETCDCTL_TIME_MAX, run)
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish within {ETCDCTL_TIME_MAX:?}"))
        .expect("run etcdctl");
    let stdout = String::from_utf8(output.stdout).expect("etcdctl prints UTF-8");
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Checks `etcdctl endpoint status -w json` output: one entry per endpoint, each reporting its
/// own member id, all agreeing on one leader that is a member, a term, and an etcd 3.x version.
fn check_endpoint_status_json(cluster: &Cluster, json: &str, endpoints: &[String]) {
    let statuses: serde_json::Value =
        serde_json::from_str(json).expect("endpoint status prints JSON");
    let statuses = statuses
        .as_array()
        .unwrap_or_else(|| panic!("a JSON array expected: {json}"));
    assert_eq!(statuses.len(), endpoints.len(), "{json}");
    let reported: BTreeSet<&str> = statuses
        .iter()
        .filter_map(|s| s["Endpoint"].as_str())
        .collect();
    let expected: BTreeSet<&str> = endpoints.iter().map(String::as_str).collect();
    assert_eq!(reported, expected, "{json}");
    let member_ids: BTreeSet<u64> = statuses
        .iter()
        .filter_map(|s| s["Status"]["header"]["member_id"].as_u64())
        .collect();
    let node_ids: BTreeSet<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    assert_eq!(member_ids, node_ids, "{json}");
    let leaders: BTreeSet<u64> = statuses
        .iter()
        .filter_map(|s| s["Status"]["leader"].as_u64())
        .collect();
    assert_eq!(leaders.len(), 1, "one leader on every node: {json}");
    assert!(node_ids.contains(leaders.first().unwrap()), "{json}");
    for status in statuses {
        let term = status["Status"]["raftTerm"].as_u64().unwrap_or(0);
        assert!(term > 0, "{json}");
        let version = status["Status"]["version"].as_str().unwrap_or_default();
        assert!(version.starts_with("3."), "{json}");
    }
}

fn skip_without_etcdctl() -> Option<PathBuf> {
    let program = etcdctl_path();
    if program.is_none() {
        eprintln!("=================================================================");
        eprintln!("SKIPPED: etcdctl not installed (apt-get install etcd-client)");
        eprintln!("=================================================================");
    }
    program
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_puts_gets_deletes_and_reports_members_and_status() {
    let Some(program) = skip_without_etcdctl() else {
        return;
    };
    let cluster = Cluster::start(3);
    within_time_limit(async {
        cluster.wait_for_leader().await;
        cluster.wait_for_published_members(0).await;
        let endpoint = format!("127.0.0.1:{}", cluster.nodes[0].client_port);
        let (program, endpoint) = (program.as_path(), endpoint.as_str());
        let run = move |args: &'static [&'static str]| etcdctl(program, endpoint, args);

        assert_eq!(run(&["put", "ctl/k", "v"]).await, "OK\n");
        assert_eq!(run(&["put", "ctl/k2", "v2"]).await, "OK\n");
        assert_eq!(run(&["put", "ctm", "outside"]).await, "OK\n");
        assert_eq!(run(&["get", "ctl/k"]).await, "ctl/k\nv\n");
        assert_eq!(
            run(&["get", "--prefix", "ctl/"]).await,
            "ctl/k\nv\nctl/k2\nv2\n"
        );
        assert_eq!(run(&["del", "ctl/k"]).await, "1\n");
        assert_eq!(run(&["get", "ctl/k"]).await, "", "deleted key is gone");
        assert_eq!(run(&["del", "ctl/k"]).await, "0\n");

        // `member list`: "<hex id>, started, <name>, <peer URLs>, <client URLs>, <is learner>".
        let listed = run(&["member", "list"]).await;
        let rows: Vec<Vec<&str>> = listed
            .lines()
            .map(|line| line.split(", ").collect())
            .collect();
        assert_eq!(rows.len(), 3, "{listed}");
        for node in &cluster.nodes {
            let expected = [
                format!("{:x}", node.id),
                "started".to_string(),
                node.name.clone(),
                node.peer_url(),
                node.client_url(),
                "false".to_string(),
            ];
            assert!(
                rows.iter().any(|row| *row == expected),
                "{} not listed as {expected:?}:\n{listed}",
                node.name
            );
        }

        // `endpoint status` against every node named as host:port, as operators usually write it.
        let every_node: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.client_port))
            .collect();
        let json = etcdctl(
            program,
            &every_node.join(","),
            &["endpoint", "status", "-w", "json"],
        )
        .await;
        check_endpoint_status_json(&cluster, &json, &every_node);
    })
    .await;
}

/// `--cluster` makes etcdctl dial every member's published client URL (`http://host:port`); Go's
/// gRPC then sends that whole URL as the HTTP/2 `:authority`, which real etcd accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoint_status_cluster_reaches_every_member_by_its_client_url() {
    let Some(program) = skip_without_etcdctl() else {
        return;
    };
    let cluster = Cluster::start(3);
    within_time_limit(async {
        cluster.wait_for_leader().await;
        cluster.wait_for_published_members(0).await;
        let endpoint = format!("127.0.0.1:{}", cluster.nodes[0].client_port);
        let json = etcdctl(
            &program,
            &endpoint,
            &["endpoint", "status", "--cluster", "-w", "json"],
        )
        .await;
        check_endpoint_status_json(&cluster, &json, &cluster.endpoints());
    })
    .await;
}

/// Like etcd, every client port serves the standard gRPC health service with "" SERVING, so
/// generic gRPC tooling (grpc_health_probe, load balancers) can check a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_health_service_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let cluster = common::Cluster::start(1);
    cluster.wait_for_leader().await;
    let mut health = HealthClient::new(cluster.channel(0).await);
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check");
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
}

/// A stop (SIGTERM) lets calls in flight finish but does not wait for ever on a client that
/// keeps a stream open: a health Watch held tonic's server, and so the node, until the client
/// let go. The node closes such connections after the drain time and exits cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_closes_a_watching_client_after_the_drain_time_and_exits_cleanly() {
    use quorumdb::limits::CLIENT_DRAIN_MS_MAX;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut cluster = common::Cluster::start(1);
    cluster.wait_for_leader().await;
    let mut watch = HealthClient::new(cluster.channel(0).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("first status")
        .expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let drain = Duration::from_millis(CLIENT_DRAIN_MS_MAX);
    let (status, took) =
        tokio::task::block_in_place(|| cluster.nodes[0].terminate(drain + Duration::from_secs(15)))
            .expect("the node stops despite the open watch");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= drain,
        "stopped after {took:?}, before the drain time"
    );
    assert!(
        !matches!(watch.message().await, Ok(Some(_))),
        "the watch ends with the node"
    );
}

/// A client can call any path: calls no service implements are counted under one method label,
/// so made-up paths cannot grow the metrics without bound; a known method that answers
/// UNIMPLEMENTED with a message keeps its own label.
#[tokio::test(flavor = "multi_thread")]
async fn calls_to_unknown_services_and_methods_are_counted_under_one_method_label() {
    use quorumdb::pb::etcdserverpb as etcd;

    let cluster = common::Cluster::start(1);
    cluster.wait_for_leader().await;
    let url = cluster.nodes[0].client_url();
    within_time_limit(async {
        for path in [
            "/made.up.Service/Call",
            "/etcdserverpb.KV/NoSuchMethod",
            "/etcdserverpb.Lease/LeaseGrant",
        ] {
            let (status, message) =
                grpc_status_of_raw_call(&url, path, &etcd::RangeRequest::default(), &[]).await;
            assert_eq!((status.as_str(), message.as_str()), ("12", ""), "{path}");
        }
        let (status, _) = grpc_status_of_raw_call(
            &url,
            "/etcdserverpb.Maintenance/Hash",
            &etcd::HashRequest::default(),
            &[],
        )
        .await;
        assert_eq!(status, "12", "Hash is not implemented");
    })
    .await;

    let (_, scrape) = common::http_get(&cluster.nodes[0].metrics_url(), "/metrics");
    assert_eq!(
        common::sample(
            &scrape,
            r#"quorumdb_grpc_requests_total{method="unknown",code="Unimplemented"}"#
        ),
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(
        common::sample(
            &scrape,
            r#"quorumdb_grpc_requests_total{method="/etcdserverpb.Maintenance/Hash",code="Unimplemented"}"#
        ),
        Some(1.0),
        "{scrape}"
    );
    for made_up in ["made.up", "NoSuchMethod", "Lease"] {
        assert!(!scrape.contains(made_up), "{made_up} in {scrape}");
    }
}

/// The client port answers as tonic's server did, and grpc-go's does in these cases: a service
/// it does not serve is UNIMPLEMENTED with an empty message, and a call still waiting when its
/// `grpc-timeout` passes is dropped with CANCELLED "Timeout expired" (here a read waiting for a
/// revision that will not come before its own, longer, wait ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_is_unimplemented_and_a_call_past_its_grpc_timeout_is_cancelled() {
    use quorumdb::api::metadata::MIN_REVISION_KEY;
    use quorumdb::limits::MIN_REVISION_WAIT_MS_MAX;
    use quorumdb::pb::etcdserverpb as etcd;

    const DEADLINE: Duration = Duration::from_millis(300);
    assert!(DEADLINE < Duration::from_millis(MIN_REVISION_WAIT_MS_MAX));
    let cluster = common::Cluster::start(1);
    cluster.wait_for_leader().await;
    within_time_limit(async {
        let channel = tonic::transport::Endpoint::from_shared(cluster.nodes[0].client_url())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the client port");

        let mut lease = etcd::lease_client::LeaseClient::new(channel.clone());
        let unknown = lease
            .lease_grant(etcd::LeaseGrantRequest { ttl: 10, id: 0 })
            .await
            .expect_err("no lease service");
        assert_eq!(
            (unknown.code(), unknown.message()),
            (Code::Unimplemented, "")
        );

        // Straight on h2: tonic's client would enforce the grpc-timeout itself.
        let request = etcd::RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let (status, message) = grpc_status_of_raw_call(
            &cluster.nodes[0].client_url(),
            "/etcdserverpb.KV/Range",
            &request,
            &[
                (MIN_REVISION_KEY, "1000000"),
                ("grpc-timeout", &format!("{}m", DEADLINE.as_millis())),
            ],
        )
        .await;
        let waited = started.elapsed();
        assert_eq!(
            (status.as_str(), message.as_str()),
            ("1", "Timeout%20expired"),
            "CANCELLED by the server's deadline (grpc-message is percent-encoded on the wire)"
        );
        assert!(
            waited >= DEADLINE && waited < Duration::from_millis(MIN_REVISION_WAIT_MS_MAX),
            "answered after {waited:?}, the deadline was {DEADLINE:?}"
        );
    })
    .await;
}
