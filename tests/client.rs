//! `quorumdb::client` against real three-node clusters (`quorumdb server` processes on loopback):
//! failover, leader loss in the middle of a write stream, the classification of an ambiguous
//! write, every operation and option with typed results and errors, and session consistency.
//!
//! Each test starts its own cluster (nextest runs each test in a process of its own). The
//! independent `etcd-client` crate (through the harness) is used only for what the client does
//! not offer (compaction) and to find the leader.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use quorumdb::client::CasOutcome;
use quorumdb::client::Client;
use quorumdb::client::ClientConfig;
use quorumdb::client::Compare;
use quorumdb::client::CompareOp;
use quorumdb::client::Consistency;
use quorumdb::client::DeleteOptions;
use quorumdb::client::Error;
use quorumdb::client::GetOptions;
use quorumdb::client::GetResponse;
use quorumdb::client::Op;
use quorumdb::client::OpResponse;
use quorumdb::client::PutOptions;
use quorumdb::client::SortOrder;
use quorumdb::client::SortTarget;
use quorumdb::client::Txn;
use tonic::Code;

/// Upper bound on one test, cluster start included: a hung server fails the test, not CI.
const TEST_TIME_MAX: Duration = Duration::from_secs(180);

/// Request deadline of the fault tests: room for an election (1-2 s) plus a forwarded write,
/// on a shared 2-core machine.
const FAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test waits for the cluster to settle (members publishing URLs, an election).
const SETTLE_WAIT: Duration = Duration::from_secs(30);

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

/// A client on every endpoint of `cluster`, once every member lists every member's client URL
/// (a call spread over members may ask any of them) and the client knows the leader `leader`.
async fn connect_when_settled(cluster: &Cluster, leader: usize, config: ClientConfig) -> Client {
    for index in 0..cluster.nodes.len() {
        cluster.wait_for_published_members(index).await;
    }
    let expected: BTreeSet<String> = cluster.endpoints().into_iter().collect();
    let leader_url = cluster.nodes[leader].client_url();
    cluster
        .eventually(
            SETTLE_WAIT,
            "a client that knows members and leader",
            || {
                let config = config.clone();
                let expected = expected.clone();
                let leader_url = leader_url.clone();
                async move {
                    let client = Client::connect(config).await.map_err(|e| e.to_string())?;
                    let published: BTreeSet<String> = client
                        .known_members()
                        .iter()
                        .flat_map(|m| m.client_urls.clone())
                        .collect();
                    if published != expected {
                        return Err(format!("members publish {published:?}"));
                    }
                    if client.leader_endpoint().as_deref() != Some(leader_url.as_str()) {
                        return Err(format!("leader known as {:?}", client.leader_endpoint()));
                    }
                    Ok(client)
                }
            },
        )
        .await
}

fn config(cluster: &Cluster) -> ClientConfig {
    ClientConfig::new(cluster.endpoints())
}

fn value_of(response: &GetResponse) -> Option<String> {
    response.kvs.first().map(|kv| kv.value_str().into_owned())
}

fn keys_of(response: &GetResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| kv.key_str().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Failover
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_reading_and_writing_after_the_endpoint_it_used_is_killed() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(
        &cluster,
        leader,
        config(&cluster).with_request_timeout(FAULT_REQUEST_TIMEOUT),
    )
    .await;
    within_time_limit(async {
        client
            .put("failover/before", "1", PutOptions::default())
            .await
            .expect("put before the kill");
        // Writes and linearizable reads go to the leader's endpoint: that is the one in use.
        let used = client.leader_endpoint().expect("leader known");
        assert_eq!(used, cluster.nodes[leader].client_url());

        cluster.kill(leader);
        let killed_at = Instant::now();
        let attempts_before = client.write_attempts();
        let put = client
            .put("failover/after", "2", PutOptions::default())
            .await
            .expect("the first put after the kill succeeds through another member");
        let first_write = killed_at.elapsed();
        let first_write_attempts = client.write_attempts() - attempts_before;
        let read_at = Instant::now();
        let read = client
            .get("failover/before", GetOptions::new())
            .await
            .expect("a linearizable read after the kill");
        let first_read = read_at.elapsed();
        eprintln!(
            "failover: n{} ({used}) killed; first put after it took {first_write:?} in {first_write_attempts} attempts (answered by member {:x}), first linearizable read then took {first_read:?}",
            leader + 1,
            put.header.member_id
        );
        assert_eq!(value_of(&read).as_deref(), Some("1"));
        assert_ne!(put.header.member_id, cluster.nodes[leader].id);

        for i in 0..20 {
            let key = format!("failover/more/{i:02}");
            client
                .put(key.as_str(), i.to_string(), PutOptions::default())
                .await
                .unwrap_or_else(|e| panic!("put {key} after failover: {e}"));
        }
        let after = client
            .get("failover/", GetOptions::new().prefix().count_only())
            .await
            .expect("count after failover");
        assert_eq!(after.count, 22, "every write before and after the kill");
        let new_leader = client.leader_endpoint();
        assert_ne!(
            new_leader.as_deref(),
            Some(used.as_str()),
            "the client no longer prefers the dead endpoint"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Leader change in the middle of a stream of writes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_put_survives_a_leader_kill_mid_stream_and_ambiguous_ones_are_counted() {
    const PUTS: usize = 300;
    const KILL_AT: usize = 100;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(
        &cluster,
        leader,
        config(&cluster).with_request_timeout(FAULT_REQUEST_TIMEOUT),
    )
    .await;
    within_time_limit(async {
        let mut acknowledged: BTreeMap<String, (String, i64)> = BTreeMap::new();
        let mut unknown: Vec<(String, String)> = Vec::new();
        let mut not_applied: Vec<(String, Error)> = Vec::new();
        let mut acknowledged_after_kill = 0;
        for i in 0..PUTS {
            if i == KILL_AT {
                cluster.kill(leader);
            }
            let key = format!("stream/{i:03}");
            let value = format!("value-{i}");
            match client
                .put(key.as_str(), value.as_str(), PutOptions::default())
                .await
            {
                Ok(put) => {
                    acknowledged_after_kill += usize::from(i >= KILL_AT);
                    acknowledged.insert(key, (value, put.header.revision));
                }
                Err(error) if error.is_unknown() => unknown.push((key, value)),
                Err(error) => not_applied.push((key, error)),
            }
        }
        eprintln!(
            "leader n{} killed before put {KILL_AT} of {PUTS}: {} acknowledged, {} unknown, {} not applied {:?}",
            leader + 1,
            acknowledged.len(),
            unknown.len(),
            not_applied.len(),
            not_applied
        );
        assert!(
            acknowledged_after_kill > 0,
            "writes resumed under a new leader"
        );

        let everything = client
            .get("stream/", GetOptions::new().prefix())
            .await
            .expect("read everything back");
        let stored: BTreeMap<String, (String, i64)> = everything
            .kvs
            .iter()
            .map(|kv| {
                (
                    kv.key_str().into_owned(),
                    (kv.value_str().into_owned(), kv.mod_revision),
                )
            })
            .collect();
        for (key, (value, revision)) in &acknowledged {
            assert_eq!(
                stored.get(key),
                Some(&(value.clone(), *revision)),
                "acknowledged {key} is lost or changed"
            );
        }
        for (key, value) in &unknown {
            if let Some((stored_value, _)) = stored.get(key) {
                assert_eq!(stored_value, value, "unknown {key} was applied with another value");
            }
        }
        for (key, error) in &not_applied {
            assert!(
                !stored.contains_key(key),
                "{key} failed with {error} (not applied) but is stored"
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. An ambiguous write is Unknown and is never re-sent
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_put_without_exactly_once_is_unknown_when_the_leader_dies_and_is_not_resent() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(
        &cluster,
        leader,
        config(&cluster)
            .with_exactly_once(false)
            .with_request_timeout(FAULT_REQUEST_TIMEOUT),
    )
    .await;
    assert_eq!(client.client_id(), None);
    within_time_limit(async {
        let followers = cluster.followers(leader);
        // The leader can still append the put but never commit it.
        cluster.cut_links(leader, &followers).await;
        let attempts_before = client.write_attempts();
        let put = tokio::spawn({
            let client = client.clone();
            async move {
                client
                    .put("ambiguous/key", "v", PutOptions::default())
                    .await
            }
        });
        cluster
            .eventually(Duration::from_secs(5), "the put is sent", || async {
                if client.write_attempts() > attempts_before {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            })
            .await;
        // Nothing observable says the request reached the leader's log; give it time to.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.kill(leader);

        let outcome = tokio::time::timeout(FAULT_REQUEST_TIMEOUT * 2, put)
            .await
            .expect("the put ends within its deadline")
            .expect("put task");
        assert!(
            matches!(&outcome, Err(Error::Unknown { .. })),
            "expected Unknown, got {outcome:?}"
        );
        assert_eq!(
            client.write_attempts() - attempts_before,
            1,
            "an ambiguous write must be sent exactly once"
        );

        // Had the put been re-sent to a follower, the survivors' new leader would have applied it.
        cluster.wait_for_leader().await;
        let after = client
            .get("ambiguous/key", GetOptions::new())
            .await
            .expect("read on the survivors");
        assert!(
            after.kvs.is_empty(),
            "the put was applied by the survivors: {after:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Operations, options, typed results and errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_options_select_sort_limit_and_time_travel_like_etcd() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(&cluster, leader, config(&cluster)).await;
    within_time_limit(async {
        let put = |key: &'static str, value: &'static str| {
            let client = client.clone();
            async move {
                client
                    .put(key, value, PutOptions::default())
                    .await
                    .unwrap_or_else(|e| panic!("put {key}: {e}"))
                    .header
                    .revision
            }
        };
        put("opt/a", "3").await;
        let after_first = put("opt/b", "1").await;
        put("opt/c", "2").await;
        put("opt/a", "4").await;
        put("opu/outside", "x").await;

        let single = client.get("opt/a", GetOptions::new()).await.expect("get");
        assert_eq!(keys_of(&single), ["opt/a"]);
        assert_eq!(single.kvs[0].value, b"4");
        assert_eq!(single.kvs[0].version, 2);
        assert!(single.kvs[0].create_revision < single.kvs[0].mod_revision);

        let prefix = client
            .get("opt/", GetOptions::new().prefix())
            .await
            .expect("prefix");
        assert_eq!(keys_of(&prefix), ["opt/a", "opt/b", "opt/c"]);
        assert_eq!((prefix.count, prefix.more), (3, false));

        let range = client
            .get("opt/a", GetOptions::new().range_end("opt/c"))
            .await
            .expect("range");
        assert_eq!(keys_of(&range), ["opt/a", "opt/b"]);

        let from_key = client
            .get("opt/c", GetOptions::new().from_key())
            .await
            .expect("from key");
        assert_eq!(keys_of(&from_key), ["opt/c", "opu/outside"]);

        let at_revision = client
            .get("opt/", GetOptions::new().prefix().revision(after_first))
            .await
            .expect("history");
        assert_eq!(keys_of(&at_revision), ["opt/a", "opt/b"]);
        assert_eq!(at_revision.kvs[0].value, b"3", "opt/a as it was then");

        let keys_only = client
            .get("opt/", GetOptions::new().prefix().keys_only())
            .await
            .expect("keys only");
        assert_eq!(keys_of(&keys_only), ["opt/a", "opt/b", "opt/c"]);
        assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));

        let count_only = client
            .get("opt/", GetOptions::new().prefix().count_only())
            .await
            .expect("count only");
        assert_eq!((count_only.count, count_only.kvs.len()), (3, 0));

        let limited = client
            .get("opt/", GetOptions::new().prefix().limit(2))
            .await
            .expect("limit");
        assert_eq!(keys_of(&limited), ["opt/a", "opt/b"]);
        assert_eq!((limited.count, limited.more), (3, true));

        let by_value = client
            .get(
                "opt/",
                GetOptions::new()
                    .prefix()
                    .sort(SortTarget::Value, SortOrder::Ascend),
            )
            .await
            .expect("sort by value");
        assert_eq!(keys_of(&by_value), ["opt/b", "opt/c", "opt/a"]);
        let newest_first = client
            .get(
                "opt/",
                GetOptions::new()
                    .prefix()
                    .sort(SortTarget::Mod, SortOrder::Descend),
            )
            .await
            .expect("sort by mod revision");
        assert_eq!(keys_of(&newest_first), ["opt/a", "opt/c", "opt/b"]);

        for consistency in [Consistency::Serializable, Consistency::Session] {
            let read = client
                .get("opt/", GetOptions::new().prefix().consistency(consistency))
                .await
                .unwrap_or_else(|e| panic!("{consistency} read: {e}"));
            assert!(read.count <= 3, "{consistency}: {read:?}");
        }
        assert_eq!(
            client.get_one("opt/b").await.expect("get one").value_str(),
            "1"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_transactions_and_compare_and_swap_report_their_outcomes_as_values() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(&cluster, leader, config(&cluster)).await;
    within_time_limit(async {
        for key in ["del/a", "del/b", "del/c", "del/d", "dem/e", "dez"] {
            client
                .put(key, "v", PutOptions::default())
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
        }
        let single = client
            .delete("del/a", DeleteOptions::new().prev_kv())
            .await
            .expect("delete one");
        assert_eq!(single.deleted, 1);
        assert_eq!(single.prev_kvs[0].key_str(), "del/a");
        let missing = client
            .delete("del/a", DeleteOptions::new())
            .await
            .expect("delete a missing key");
        assert_eq!(missing.deleted, 0);
        let range = client
            .delete("del/b", DeleteOptions::new().range_end("del/d"))
            .await
            .expect("delete a range");
        assert_eq!(range.deleted, 2, "del/b and del/c");
        let prefix = client
            .delete("del/", DeleteOptions::new().prefix())
            .await
            .expect("delete a prefix");
        assert_eq!(prefix.deleted, 1, "del/d");
        let from_key = client
            .delete("dem/", DeleteOptions::new().from_key().prev_kv())
            .await
            .expect("delete from a key on");
        assert_eq!(from_key.deleted, 2, "dem/e and dez");
        assert_eq!(from_key.prev_kvs.len(), 2);

        // A transaction whose compare holds runs and_then; one whose compare fails runs
        // or_else and is still Ok.
        client
            .put("txn/k", "one", PutOptions::default())
            .await
            .expect("put");
        let swap = |expected: &'static str, next: &'static str| {
            Txn::new()
                .when([Compare::value("txn/k", CompareOp::Equal, expected)])
                .and_then([
                    Op::put("txn/k", next, PutOptions::new().prev_kv()),
                    Op::get("txn/k", GetOptions::new()),
                ])
                .or_else([Op::get("txn/k", GetOptions::new())])
        };
        let held = client.txn(swap("one", "two")).await.expect("txn");
        assert!(held.succeeded);
        match &held.responses[..] {
            [OpResponse::Put(put), OpResponse::Get(get)] => {
                assert_eq!(put.prev_kv.as_ref().map(|kv| kv.value.clone()), Some(b"one".to_vec()));
                assert_eq!(value_of(get).as_deref(), Some("two"));
            }
            other => panic!("unexpected responses {other:?}"),
        }
        let failed = client.txn(swap("one", "three")).await.expect("a failed compare is Ok");
        assert!(!failed.succeeded);
        match &failed.responses[..] {
            [OpResponse::Get(get)] => assert_eq!(value_of(get).as_deref(), Some("two")),
            other => panic!("unexpected responses {other:?}"),
        }
        let nested = client
            .txn(Txn::new()
                .when([Compare::version("txn/k", CompareOp::Greater, 1)])
                .and_then([Op::txn(Txn::new().and_then([Op::delete(
                    "txn/k",
                    DeleteOptions::new(),
                )]))]))
            .await
            .expect("nested txn");
        match &nested.responses[..] {
            [OpResponse::Txn(inner)] => match &inner.responses[..] {
                [OpResponse::Delete(delete)] => assert_eq!(delete.deleted, 1),
                other => panic!("unexpected inner responses {other:?}"),
            },
            other => panic!("unexpected responses {other:?}"),
        }
        let read_only = client
            .txn(Txn::new().and_then([Op::get("txn/", GetOptions::new().prefix().count_only())]))
            .await
            .expect("read-only txn");
        assert!(read_only.succeeded);

        // Compare-and-swap: create if absent, swap on the expected value, report the current
        // value otherwise.
        let created = client
            .compare_and_swap("cas/k", None, "first")
            .await
            .expect("cas create");
        let CasOutcome::Swapped { revision } = created else {
            panic!("create-if-absent failed: {created:?}");
        };
        assert_eq!(client.get_one("cas/k").await.expect("get").mod_revision, revision);
        let again = client
            .compare_and_swap("cas/k", None, "other")
            .await
            .expect("cas on an existing key");
        match again {
            CasOutcome::CompareFailed { current: Some(kv) } => assert_eq!(kv.value_str(), "first"),
            other => panic!("expected CompareFailed with the current value, got {other:?}"),
        }
        let swapped = client
            .compare_and_swap("cas/k", Some(b"first"), "second")
            .await
            .expect("cas swap");
        assert!(matches!(swapped, CasOutcome::Swapped { .. }), "{swapped:?}");
        let stale = client
            .compare_and_swap("cas/k", Some(b"first"), "third")
            .await
            .expect("cas with a stale expectation");
        assert!(
            matches!(&stale, CasOutcome::CompareFailed { current: Some(kv) } if kv.value == b"second"),
            "{stale:?}"
        );
        let absent = client
            .compare_and_swap("cas/absent", Some(b"x"), "y")
            .await
            .expect("cas on a missing key");
        assert_eq!(absent, CasOutcome::CompareFailed { current: None });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_status_all_and_health_describe_every_member() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(&cluster, leader, config(&cluster)).await;
    within_time_limit(async {
        let members = client.member_list().await.expect("member list");
        let by_id: BTreeMap<u64, Vec<String>> = members
            .iter()
            .map(|m| (m.id, m.client_urls.clone()))
            .collect();
        let expected: BTreeMap<u64, Vec<String>> = cluster
            .nodes
            .iter()
            .map(|n| (n.id, vec![n.client_url()]))
            .collect();
        assert_eq!(by_id, expected);
        assert!(
            members
                .iter()
                .all(|m| !m.is_learner && !m.peer_urls.is_empty())
        );

        let statuses = client.status_all().await;
        assert_eq!(statuses.len(), 3, "{statuses:?}");
        let leader_id = cluster.nodes[leader].id;
        for (endpoint, status) in &statuses {
            let status = status
                .as_ref()
                .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            assert_eq!(&status.endpoint, endpoint);
            assert_eq!(status.leader, leader_id, "{endpoint} names the leader");
            assert!(status.raft_term > 0 && status.raft_index > 0 && status.revision >= 1);
            assert!(status.raft_applied_index <= status.raft_index);
            assert!(status.errors.is_empty(), "{:?}", status.errors);
            assert!(!status.version.is_empty());
            let node = cluster
                .nodes
                .iter()
                .find(|n| &n.client_url() == endpoint)
                .expect("a node's endpoint");
            assert_eq!(status.member_id, node.id);
            assert_eq!(status.is_leader(), node.id == leader_id);
        }

        for endpoint in cluster.endpoints() {
            let took = client
                .health(&endpoint)
                .await
                .unwrap_or_else(|e| panic!("{endpoint} is unhealthy: {e}"));
            eprintln!("{endpoint} is healthy: took {took:?}");
        }
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        }; // nothing listens there any more
        let unhealthy = client.health(&format!("127.0.0.1:{closed}")).await;
        assert!(
            matches!(unhealthy, Err(Error::Unavailable { .. })),
            "{unhealthy:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_invalid_argument_out_of_range_not_found_and_unavailable() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(&cluster, leader, config(&cluster)).await;
    within_time_limit(async {
        let empty_key = client.put("", "v", PutOptions::default()).await;
        match &empty_key {
            Err(error @ Error::InvalidArgument { message }) => {
                assert_eq!(message, "etcdserver: key is not provided");
                assert!(error.definitely_not_applied());
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }

        let missing = client.get_one("errors/missing").await;
        assert!(
            matches!(missing, Err(Error::NotFound { .. })),
            "{missing:?}"
        );

        let r1 = client
            .put("errors/k", "1", PutOptions::default())
            .await
            .expect("put")
            .header
            .revision;
        let r2 = client
            .put("errors/k", "2", PutOptions::default())
            .await
            .expect("put")
            .header
            .revision;
        let mut etcd = cluster.client(leader).await;
        etcd.compact(r2, None).await.expect("compact");
        let compacted = client.get("errors/k", GetOptions::new().revision(r1)).await;
        assert_eq!(
            compacted
                .as_ref()
                .map_err(|e| (e.code(), e.message().to_string())),
            Err((
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted".to_string()
            )),
            "{compacted:?}"
        );
        assert!(matches!(
            compacted,
            Err(Error::Failed {
                code: Code::OutOfRange,
                ..
            })
        ));
        let future = client
            .get("errors/k", GetOptions::new().revision(r2 + 1000))
            .await;
        assert!(
            matches!(
                future,
                Err(Error::Failed {
                    code: Code::OutOfRange,
                    ..
                })
            ),
            "{future:?}"
        );

        let closed: Vec<String> = (0..2)
            .map(|_| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                format!(
                    "127.0.0.1:{}",
                    listener.local_addr().expect("address").port()
                )
            })
            .collect();
        let nobody = Client::connect(ClientConfig::new(closed.clone())).await;
        match nobody {
            Err(Error::Unavailable { message }) => {
                for endpoint in &closed {
                    assert!(
                        message.contains(endpoint),
                        "{endpoint} not named in {message}"
                    );
                }
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let bad = Client::connect(ClientConfig::new(["https://127.0.0.1:1"])).await;
        assert!(matches!(bad, Err(Error::InvalidArgument { .. })), "{bad:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Session consistency
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_spread_over_every_member_and_see_the_sessions_own_writes() {
    const ROUNDS: usize = 10;
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(&cluster, leader, config(&cluster)).await;
    let session = client.session();
    assert_eq!(session.consistency(), Consistency::Session);
    assert_eq!(
        session.session_revision(),
        0,
        "a new session has seen nothing"
    );
    within_time_limit(async {
        let mut answered_by = BTreeSet::new();
        for round in 0..ROUNDS {
            let value = format!("v{round}");
            let put = session
                .put("session/own", value.as_str(), PutOptions::default())
                .await
                .expect("put through the leader");
            assert_eq!(session.session_revision(), put.header.revision);
            for _ in 0..cluster.nodes.len() {
                let read = session
                    .get("session/own", GetOptions::new())
                    .await
                    .expect("session read");
                assert_eq!(
                    value_of(&read).as_deref(),
                    Some(value.as_str()),
                    "member {:x} missed the session's own write",
                    read.header.member_id
                );
                assert!(read.header.revision >= put.header.revision);
                answered_by.insert(read.header.member_id);
            }
        }
        let members: BTreeSet<u64> = cluster.nodes.iter().map(|n| n.id).collect();
        assert_eq!(
            answered_by, members,
            "session reads are spread over followers too"
        );

        // A follower that cannot hear the leader cannot catch up: session reads go elsewhere
        // and still see the session's writes.
        let lagging = cluster.followers(leader)[0];
        cluster.cut_links(lagging, &[leader]).await;
        for round in 0..3 {
            let value = format!("cut{round}");
            session
                .put("session/own", value.as_str(), PutOptions::default())
                .await
                .expect("put with one follower cut off");
            for _ in 0..cluster.nodes.len() {
                let read = session
                    .get("session/own", GetOptions::new())
                    .await
                    .expect("session read with one follower cut off");
                assert_eq!(value_of(&read).as_deref(), Some(value.as_str()));
                assert_ne!(read.header.member_id, cluster.nodes[lagging].id);
            }
        }
        cluster.cut_links(lagging, &[]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_across_members_never_go_back_in_revision_while_a_follower_lags() {
    const READS: usize = 90;
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let client = connect_when_settled(&cluster, leader, config(&cluster)).await;
    within_time_limit(async {
        // Another client writes all along, so revisions keep moving.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn({
            let client = client.clone();
            let stop = stop.clone();
            async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = client
                        .put("monotonic/k", n.to_string(), PutOptions::default())
                        .await;
                    n += 1;
                }
                n
            }
        });

        let lagging = cluster.followers(leader)[0];
        let lagging_id = cluster.nodes[lagging].id;
        let session = client.session();
        let mut highest = 0;
        let mut lagging_stale_serializable = false;
        for read in 0..READS {
            if read == READS / 3 {
                cluster.cut_links(lagging, &[leader]).await;
            }
            if read == 2 * READS / 3 {
                // The lagging member really is behind: a plain serializable read there goes back.
                let mut etcd = cluster.client(lagging).await;
                let there = etcd
                    .get(
                        "monotonic/k",
                        Some(etcd_client::GetOptions::new().with_serializable()),
                    )
                    .await
                    .expect("serializable read on the lagging member");
                let there = there.header().map_or(0, |h| h.revision());
                lagging_stale_serializable = there < highest;
                eprintln!("lagging member at revision {there}, the session at {highest}");
                cluster.cut_links(lagging, &[]).await;
            }
            let response = session
                .get("monotonic/k", GetOptions::new())
                .await
                .unwrap_or_else(|e| panic!("session read {read}: {e}"));
            assert!(
                response.header.revision >= highest,
                "read {read} went back: revision {} after {highest} (member {:x}, lagging {lagging_id:x})",
                response.header.revision,
                response.header.member_id
            );
            highest = response.header.revision;
            assert_eq!(session.session_revision(), highest);
        }
        stop.store(true, Ordering::Relaxed);
        let writes = writer.await.expect("writer");
        eprintln!("{READS} session reads, monotonic up to revision {highest}, {writes} writes meanwhile");
        assert!(
            lagging_stale_serializable,
            "the cut follower never fell behind the session: the check proved nothing"
        );
    })
    .await;
}

/// Exactly-once through the library: the leader applies a Put and a Txn but their responses are
/// lost (fault seam); the client re-sends each under the same number and gets the original
/// answer. Without exactly-once the same loss is an `Unknown` the client does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_is_retried_under_its_number_and_applied_once() {
    within_time_limit(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let client = connect_when_settled(&cluster, leader, config(&cluster)).await;
        assert!(client.client_id().is_some(), "exactly-once is the default");

        cluster.drop_write_responses(leader, 1).await;
        let attempts_before = client.write_attempts();
        let put = client
            .put("eo/put", "v", PutOptions::new())
            .await
            .expect("the retry answers");
        assert_eq!(
            client.write_attempts() - attempts_before,
            2,
            "sent twice: the first answer was lost"
        );
        let stored = client.get_one("eo/put").await.expect("applied");
        assert_eq!(stored.version, 1, "applied once");
        assert_eq!(
            put.header.revision, stored.mod_revision,
            "the original revision"
        );

        // A create-if-absent txn: a second application would take the else branch.
        cluster.drop_write_responses(leader, 1).await;
        let create = Txn::new()
            .when([Compare::version("eo/txn", CompareOp::Equal, 0)])
            .and_then([Op::put("eo/txn", "v", PutOptions::new())])
            .or_else([Op::get("eo/txn", GetOptions::new())]);
        let txn = client.txn(create.clone()).await.expect("the retry answers");
        assert!(
            txn.succeeded,
            "the original run's answer, not a second run's"
        );
        let stored = client.get_one("eo/txn").await.expect("created");
        assert_eq!(
            (stored.version, stored.mod_revision),
            (1, txn.header.revision)
        );

        let plain =
            connect_when_settled(&cluster, leader, config(&cluster).with_exactly_once(false)).await;
        assert_eq!(plain.client_id(), None);
        cluster.drop_write_responses(leader, 1).await;
        let lost = plain
            .put("eo/plain", "v", PutOptions::new())
            .await
            .expect_err("the answer is lost and not retried");
        assert!(lost.is_unknown(), "{lost:?}");
        let stored = client.get_one("eo/plain").await.expect("it was applied");
        assert_eq!(stored.version, 1, "and not re-sent");
    })
    .await;
}
