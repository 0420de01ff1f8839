//! Replication, revisions and failure behaviour of a real three-node cluster: `quorumdb server`
//! processes on loopback, driven through the independent `etcd-client` crate.
//!
//! Each test proves one acceptance property of the issue: linearizable reads on followers,
//! forwarded writes and etcd's revision rules across nodes, compare-and-swap under contention,
//! leader loss, a hard restart of the whole cluster, catch-up by snapshot, and no stale read from
//! a partitioned follower. Choices that vary a run (which follower to cut, which node serves
//! which transaction) come from a printed seed: `QUORUMDB_TEST_SEED=<seed>` replays them.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::TestRng;
use common::http_get;
use common::sample;
use common::test_seed;
use etcd_client::Client;
use etcd_client::Compare;
use etcd_client::CompareOp;
use etcd_client::GetOptions;
use etcd_client::GetResponse;
use etcd_client::KeyValue;
use etcd_client::ResponseHeader;
use etcd_client::Txn;
use etcd_client::TxnOp;
use etcd_client::TxnOpResponse;

/// How long a test waits for the cluster to settle after a fault (election, catch-up, heal).
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// The revision in a response header; every KV response must carry one.
fn revision(header: Option<&ResponseHeader>) -> i64 {
    header.expect("response has a header").revision()
}

/// A Raft index gauge (`quorumdb_raft_*_index`) from a node's /metrics.
fn raft_gauge(cluster: &Cluster, node: usize, name: &str) -> u64 {
    let (status, scrape) = http_get(&cluster.nodes[node].metrics_url(), "/metrics");
    assert_eq!(status, 200, "/metrics of n{}", node + 1);
    sample(&scrape, name).unwrap_or_else(|| panic!("{name} missing in\n{scrape}")) as u64
}

/// What a key looks like to a client: its value and the metadata etcd's revision rules govern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    key: String,
    value: String,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
}

fn record(kv: &KeyValue) -> Record {
    Record {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    }
}

/// The only kv of a single-key get, failing the test if the key is absent.
fn single(response: &GetResponse, what: &str) -> Record {
    match response.kvs() {
        [kv] => record(kv),
        other => panic!("{what}: expected exactly one kv, got {}", other.len()),
    }
}

/// A linearizable prefix range on `node`, retried while the cluster settles.
/// A linearizable get of `key` on node `node`, retried until it succeeds (bounded by SETTLE_WAIT).
async fn eventually_get(cluster: &Cluster, node: usize, key: &str) -> GetResponse {
    let client = cluster.client(node).await;
    cluster
        .eventually(
            SETTLE_WAIT,
            &format!("linearizable get {key} on n{}", node + 1),
            || {
                let mut client = client.clone();
                let key = key.to_string();
                async move { client.get(key, None).await.map_err(|e| e.to_string()) }
            },
        )
        .await
}

async fn prefix_records(cluster: &Cluster, node: usize, prefix: &str) -> (Vec<Record>, i64) {
    let client = cluster.client(node).await;
    let what = format!("linearizable range {prefix:?} on n{}", node + 1);
    let response = cluster
        .eventually(SETTLE_WAIT, &what, || {
            let mut client = client.clone();
            async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
    (
        response.kvs().iter().map(record).collect(),
        revision(response.header()),
    )
}

/// 50 keys in a row: a follower whose state machine lags the leader's ack by even one entry
/// would be caught, because the get follows the ack with no pause. In a cluster of three voters
/// the leader answers these follower reads in one round trip (the follower vouches for its term,
/// no heartbeat round), and this is where that path is held to read-after-ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_get_on_every_follower_sees_the_put_acknowledged_just_before() {
    const KEYS: usize = 50;
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let mut leader_client = cluster.client(leader).await;
    let mut followers: Vec<(usize, Client)> = Vec::new();
    for follower in cluster.followers(leader) {
        followers.push((follower, cluster.client(follower).await));
    }

    for i in 0..KEYS {
        let key = format!("read-after-ack/{i:03}");
        let value = format!("value-{i}");
        let put = leader_client
            .put(key.as_str(), value.as_str(), None)
            .await
            .unwrap_or_else(|e| panic!("put {key} on the leader n{}: {e}", leader + 1));
        let put_revision = revision(put.header());
        for (follower, client) in &mut followers {
            let name = format!("n{}", *follower + 1);
            let got = client
                .get(key.as_str(), None)
                .await
                .unwrap_or_else(|e| panic!("linearizable get {key} on follower {name}: {e}"));
            if got.kvs().is_empty() {
                panic!(
                    "linearizable get of {key} on follower {name} right after the ack (revision {put_revision}) \
                     found nothing: the follower served a read behind an acknowledged write"
                );
            }
            let kv = single(&got, &format!("get {key} on {name}"));
            assert_eq!(kv.value, value, "value of {key} on follower {name}");
            assert_eq!(
                kv.mod_revision, put_revision,
                "mod_revision of {key} on follower {name}"
            );
            assert!(
                revision(got.header()) >= put_revision,
                "header revision {} on follower {name} is behind the acknowledged put at {put_revision}",
                revision(got.header())
            );
        }
    }
    let (vouched, heartbeat) = read_index_paths(&cluster, leader);
    assert!(
        vouched >= (KEYS * followers.len()) as f64 * 0.9,
        "follower reads in one round trip: {vouched} vouched, {heartbeat} with a heartbeat round"
    );
}

/// Follower reads that arrive while a ReadIndex request is out share the next one: 200 reads
/// at once on one follower make far fewer requests to the leader than reads, and every one of
/// them still sees the put acknowledged just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_follower_reads_share_read_index_requests_and_see_the_acknowledged_put() {
    const READS: usize = 200;
    let (cluster, leader, follower_client, put_revision) =
        warm_follower_after_a_put("batched").await;
    let (vouched, heartbeat) = read_index_paths(&cluster, leader);
    let asked_before = vouched + heartbeat;

    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..READS {
        let mut client = follower_client.clone();
        reads.spawn(async move { client.get("batched/k", None).await });
    }
    while let Some(read) = reads.join_next().await {
        let got = read
            .expect("read task")
            .expect("linearizable get on the follower");
        let kv = single(&got, "get batched/k on the follower");
        assert_eq!(
            kv.mod_revision, put_revision,
            "the read saw the acknowledged put"
        );
    }

    let (vouched, heartbeat) = read_index_paths(&cluster, leader);
    let asked = vouched + heartbeat - asked_before;
    assert!(
        asked >= 1.0 && asked < (READS / 2) as f64,
        "{READS} concurrent follower reads made {asked} read index requests to the leader"
    );
}

/// A restarted leader does not take its leadership back without an election: its commit index
/// (a hint, not synced) and its state machine (persisted in batches) are not durable at every
/// step, so after a machine crash it could lead from behind what it had acknowledged. It
/// restarts well within the others' election timeout, so with leadership restore it would come
/// back in the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_wins_a_new_term_instead_of_restoring_its_leadership() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let mut on_leader = cluster.client(leader).await;
    on_leader.put("restore/k", "v", None).await.expect("put");
    let term_before = on_leader.status().await.expect("status").raft_term();
    drop(on_leader);
    cluster.kill(leader);
    cluster.restart(leader);
    let leader_after = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader_after).await;
    let term_after = client.status().await.expect("status").raft_term();
    assert!(
        term_after > term_before,
        "n{} restarted and the cluster is still in term {term_before} (leader n{})",
        leader + 1,
        leader_after + 1
    );
    let got = client.get("restore/k", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1, "the acknowledged put survives");
}

/// How the leader answered follower reads so far: (vouched, with a heartbeat round).
/// A follower read whose client goes away while its ReadIndex request is out (the leader is
/// paused) does not stall the reads that arrived behind it: they are served once a leader
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_read_abandoned_mid_request_does_not_stall_the_reads_behind_it() {
    let (cluster, leader, follower_client, put_revision) =
        warm_follower_after_a_put("abandoned").await;

    cluster.nodes[leader].pause();
    let mut first = follower_client.clone();
    let abandoned = tokio::spawn(async move { first.get("abandoned/k", None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = follower_client.clone();
    let behind = tokio::spawn(async move { second.get("abandoned/k", None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    abandoned.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.nodes[leader].resume();

    let got = tokio::time::timeout(Duration::from_secs(20), behind)
        .await
        .expect("the read behind the abandoned one is answered")
        .expect("read task")
        .expect("linearizable get on the follower");
    let kv = single(&got, "get abandoned/k on the follower");
    assert_eq!(kv.mod_revision, put_revision);
}

/// A three-node cluster, its leader, a client of one follower whose connection to the leader is
/// up (one read done), and the revision of `<prefix>/k` = `v`, put on the leader after that.
async fn warm_follower_after_a_put(prefix: &str) -> (Cluster, usize, Client, i64) {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let mut leader_client = cluster.client(leader).await;
    let follower_client = cluster.client(follower).await;
    follower_client
        .clone()
        .get(format!("{prefix}/warm-up"), None)
        .await
        .expect("warm-up read");
    let put = leader_client
        .put(format!("{prefix}/k"), "v", None)
        .await
        .expect("put on the leader");
    let put_revision = revision(put.header());
    (cluster, leader, follower_client, put_revision)
}

fn read_index_paths(cluster: &Cluster, leader: usize) -> (f64, f64) {
    let (status, scrape) = http_get(&cluster.nodes[leader].metrics_url(), "/metrics");
    assert_eq!(status, 200);
    let count = |name: &str| sample(&scrape, name).unwrap_or(0.0);
    (
        count("quorumdb_read_index_vouched_total"),
        count("quorumdb_read_index_heartbeat_total"),
    )
}

/// With five voters a follower and the leader are no majority: every follower read takes the
/// heartbeat round, and still sees the put acknowledged just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_in_a_five_voter_cluster_confirm_the_leader_with_a_heartbeat_round() {
    const KEYS: usize = 10;
    let cluster = Cluster::start(5);
    let leader = cluster.wait_for_leader().await;
    let mut leader_client = cluster.client(leader).await;
    let follower = cluster.followers(leader)[0];
    let mut on_follower = cluster.client(follower).await;
    for i in 0..KEYS {
        let key = format!("five/{i}");
        leader_client
            .put(key.as_str(), "v", None)
            .await
            .expect("put on the leader");
        let got = on_follower.get(key.as_str(), None).await.expect("get");
        assert_eq!(
            got.kvs().len(),
            1,
            "{key} on the follower right after the ack"
        );
    }
    let (vouched, heartbeat) = read_index_paths(&cluster, leader);
    assert_eq!(vouched, 0.0, "no follower read skipped the heartbeat round");
    assert!(
        heartbeat >= KEYS as f64,
        "{heartbeat} heartbeat-round reads"
    );
}

/// A put through a follower is forwarded to the leader, and revisions and per-key metadata follow
/// etcd's rules (ETCD_WIRE.md 3.2) identically on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_through_followers_are_forwarded_and_revisions_follow_etcd_rules_on_every_node() {
    const KEY: &str = "revisions/key";
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers(leader);
    let (first_follower, second_follower) = (followers[0], followers[1]);
    let mut clients = Vec::new();
    for node in 0..3 {
        clients.push(cluster.client(node).await);
    }

    // Every node agrees on the linearizable get of KEY: the same kv (if any) and header revision.
    async fn agreed_get(cluster: &Cluster, expected_revision: i64) -> Option<Record> {
        let mut seen = Vec::new();
        for node in 0..3 {
            let response = eventually_get(cluster, node, KEY).await;
            assert_eq!(
                revision(response.header()),
                expected_revision,
                "header revision of a linearizable get on n{}",
                node + 1
            );
            seen.push(response.kvs().first().map(record));
        }
        assert!(
            seen.iter().all(|kv| *kv == seen[0]),
            "nodes disagree on {KEY}: {seen:?}"
        );
        seen.remove(0)
    }

    // A fresh cluster is at revision 1, on every node.
    assert_eq!(
        agreed_get(&cluster, 1).await,
        None,
        "a fresh cluster has no {KEY}"
    );

    // The first put, through a follower, creates revision 2.
    let put = clients[first_follower]
        .put(KEY, "one", None)
        .await
        .unwrap_or_else(|e| panic!("put through follower n{}: {e}", first_follower + 1));
    assert_eq!(
        revision(put.header()),
        2,
        "the first write of a fresh cluster is revision 2"
    );
    let expected = Record {
        key: KEY.to_string(),
        value: "one".to_string(),
        create_revision: 2,
        mod_revision: 2,
        version: 1,
    };
    assert_eq!(agreed_get(&cluster, 2).await, Some(expected));

    // The second put of the same key, through the other follower.
    let put = clients[second_follower]
        .put(KEY, "two", None)
        .await
        .unwrap_or_else(|e| panic!("put through follower n{}: {e}", second_follower + 1));
    assert_eq!(revision(put.header()), 3, "the second write is revision 3");
    let expected = Record {
        key: KEY.to_string(),
        value: "two".to_string(),
        create_revision: 2,
        mod_revision: 3,
        version: 2,
    };
    assert_eq!(agreed_get(&cluster, 3).await, Some(expected.clone()));

    // Deleting a missing key changes nothing, so it takes no revision.
    let delete = clients[first_follower]
        .delete("revisions/missing", None)
        .await
        .unwrap_or_else(|e| panic!("delete through follower n{}: {e}", first_follower + 1));
    assert_eq!(delete.deleted(), 0, "nothing to delete");
    assert_eq!(
        revision(delete.header()),
        3,
        "a delete that matched nothing reports the current revision"
    );
    assert_eq!(agreed_get(&cluster, 3).await, Some(expected));

    // ... and the next write takes the very next revision.
    let put = clients[leader]
        .put("revisions/after-delete", "x", None)
        .await
        .unwrap_or_else(|e| panic!("put on the leader n{}: {e}", leader + 1));
    assert_eq!(
        revision(put.header()),
        4,
        "the no-op delete must not have used up a revision"
    );
}

/// N transactions race to swap the same expected value; the state machine must let exactly one
/// through, whichever node each was sent to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_concurrent_compare_and_swaps_on_the_same_value_wins() {
    const CONTENDERS: usize = 16;
    const KEY: &str = "cas/key";
    let seed = test_seed("exactly_one_of_concurrent_compare_and_swaps_on_the_same_value_wins");
    let mut rng = TestRng::new(seed);
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let mut clients = Vec::new();
    for node in 0..3 {
        clients.push(cluster.client(node).await);
    }
    let put = clients[leader]
        .put(KEY, "v0", None)
        .await
        .expect("put the initial value");
    let initial_revision = revision(put.header());

    // Every node serves some contenders; the seed decides which, and the spawn order.
    let mut assignment: Vec<(usize, usize)> = (0..CONTENDERS).map(|id| (id, id % 3)).collect();
    rng.shuffle(&mut assignment);
    eprintln!("contender -> node: {assignment:?}");

    let start = Arc::new(tokio::sync::Barrier::new(CONTENDERS));
    let mut tasks = Vec::new();
    for (id, node) in assignment {
        let mut client = clients[node].clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let own = format!("contender-{id:02}");
            let txn = Txn::new()
                .when([Compare::value(KEY, CompareOp::Equal, "v0")])
                .and_then([TxnOp::put(KEY, own.as_str(), None)])
                .or_else([TxnOp::get(KEY, None)]);
            start.wait().await;
            (id, node, client.txn(txn).await)
        }));
    }
    let outcomes = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the {CONTENDERS} transactions did not finish within 60 s\n{}",
                cluster.logs()
            )
        });

    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for outcome in outcomes {
        let (id, node, result) = outcome.expect("contender task panicked");
        let response =
            result.unwrap_or_else(|e| panic!("txn of contender {id} on n{}: {e}", node + 1));
        if response.succeeded() {
            winners.push((id, revision(response.header())));
        } else {
            let seen = match response.op_responses().as_slice() {
                [TxnOpResponse::Get(get)] => single(get, "the loser's get").value,
                other => panic!("a failed compare must run exactly the else get; got {other:?}"),
            };
            losers.push((id, seen));
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one compare-and-swap must win; winners: {winners:?}"
    );
    let (winner, winner_revision) = winners[0];
    let winner_value = format!("contender-{winner:02}");
    assert_eq!(
        winner_revision,
        initial_revision + 1,
        "the winning txn takes the next revision"
    );
    assert_eq!(losers.len(), CONTENDERS - 1);
    for (id, seen) in &losers {
        // A loser was applied after the winner (before it, its compare would have held).
        assert_eq!(
            seen, &winner_value,
            "contender {id} lost, so it must have seen the winner's value"
        );
    }

    for node in 0..3 {
        let response = eventually_get(&cluster, node, KEY).await;
        let kv = single(&response, "final value");
        assert_eq!(kv.value, winner_value, "final value on n{}", node + 1);
        assert_eq!(kv.version, 2, "one initial put and one swap");
        assert_eq!(kv.mod_revision, winner_revision);
        assert_eq!(
            revision(response.header()),
            winner_revision,
            "failed compares change nothing, so they must not bump the revision"
        );
    }
}

/// SIGKILL of the leader: the others elect a new one, writes resume, and nothing acknowledged is
/// lost on any surviving node: neither what was written before the kill, nor what was in flight
/// when it happened, nor what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_leader_is_killed_a_new_leader_takes_writes_and_no_acknowledged_write_is_lost() {
    const KEYS_EACH_SIDE: usize = 200;
    const IN_FLIGHT_WRITERS: usize = 6;
    const IN_FLIGHT_WRITES_MAX: usize = 2_000;
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(old_leader).await;
    let mut acknowledged: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for i in 0..KEYS_EACH_SIDE {
        let key = format!("leader-kill/before/{i:03}");
        let value = format!("before-{i}");
        let put = client
            .put(key.as_str(), value.as_str(), None)
            .await
            .unwrap_or_else(|e| panic!("put {key} before the kill: {e}"));
        acknowledged.insert(key, (value, revision(put.header())));
    }

    // Writers keep going, through every node, while the leader dies. A write that failed has an
    // unknown outcome: it may be present later or not, but one that was acknowledged must be.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..IN_FLIGHT_WRITERS {
        let mut client = cluster.client(writer % 3).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut unknown = Vec::new();
            for n in 0..IN_FLIGHT_WRITES_MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("leader-kill/during/{writer}/{n:05}");
                let value = format!("during-{writer}-{n}");
                match client.put(key.as_str(), value.as_str(), None).await {
                    Ok(put) => acknowledged.push((key, value, revision(put.header()))),
                    Err(_) => {
                        unknown.push(key);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (acknowledged, unknown)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.kill(old_leader);
    let killed_at = Instant::now();
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(
        new_leader, old_leader,
        "the killed node cannot still be the leader"
    );
    eprintln!(
        "n{} killed; n{} elected in {:?}",
        old_leader + 1,
        new_leader + 1,
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = tokio::time::timeout(SETTLE_WAIT, futures::future::join_all(writers))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "in-flight writers did not stop within {SETTLE_WAIT:?}\n{}",
                cluster.logs()
            )
        });
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    let mut in_flight_acknowledged = 0;
    for outcome in outcomes {
        let (writer_acknowledged, writer_unknown) = outcome.expect("writer task panicked");
        in_flight_acknowledged += writer_acknowledged.len();
        for (key, value, at) in writer_acknowledged {
            acknowledged.insert(key, (value, at));
        }
        unknown.extend(writer_unknown);
    }
    eprintln!(
        "writes around the kill: {in_flight_acknowledged} acknowledged, {} unknown",
        unknown.len()
    );

    // Writes resume, through the new leader and through the surviving follower alike.
    let survivors = [new_leader, cluster.followers(new_leader)[0]];
    let mut survivor_clients = Vec::new();
    for node in survivors {
        survivor_clients.push(cluster.client(node).await);
    }
    for i in 0..KEYS_EACH_SIDE {
        let key = format!("leader-kill/after/{i:03}");
        let value = format!("after-{i}");
        let client = &survivor_clients[i % 2];
        // The cluster may still be settling; re-sending the same value to the same key is
        // harmless (the acknowledged one is the last applied), so a failed write is retried.
        let put = cluster
            .eventually(SETTLE_WAIT, &format!("put {key} after the kill"), || {
                let mut client = client.clone();
                let (key, value) = (key.clone(), value.clone());
                async move {
                    client
                        .put(key, value, None)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        acknowledged.insert(key, (value, revision(put.header())));
    }
    eprintln!(
        "{KEYS_EACH_SIDE} writes after the kill done {:?} after it",
        killed_at.elapsed()
    );

    for node in survivors {
        let (records, _) = prefix_records(&cluster, node, "leader-kill/").await;
        let found: BTreeMap<String, (String, i64)> = records
            .into_iter()
            .map(|r| (r.key, (r.value, r.mod_revision)))
            .collect();
        let lost: Vec<&String> = acknowledged
            .iter()
            .filter(|(key, expected)| found.get(*key) != Some(*expected))
            .map(|(key, _)| key)
            .collect();
        assert!(
            lost.is_empty(),
            "n{} lost or changed {} acknowledged writes: {lost:?}",
            node + 1,
            lost.len()
        );
        let invented: Vec<&String> = found
            .keys()
            .filter(|key| !acknowledged.contains_key(*key) && !unknown.contains(*key))
            .collect();
        assert!(
            invented.is_empty(),
            "n{} has keys nobody wrote: {invented:?}",
            node + 1
        );
    }
}

/// SIGKILL of every node, then a restart of every node: what was acknowledged is on disk, the
/// cluster is not bootstrapped a second time, and it continues at the old revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_after_a_hard_kill_keeps_data_and_revisions() {
    const KEYS: usize = 100;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    for i in 0..KEYS {
        client
            .put(format!("restart/{i:03}"), format!("first-{i}"), None)
            .await
            .unwrap_or_else(|e| panic!("put restart/{i:03}: {e}"));
    }
    // Some keys get a second version, some are deleted, so the metadata is not all alike.
    for i in (0..KEYS).step_by(5) {
        client
            .put(format!("restart/{i:03}"), format!("second-{i}"), None)
            .await
            .unwrap_or_else(|e| panic!("update restart/{i:03}: {e}"));
    }
    for i in [7, 13, 42] {
        let delete = client
            .delete(format!("restart/{i:03}"), None)
            .await
            .unwrap_or_else(|e| panic!("delete restart/{i:03}: {e}"));
        assert_eq!(delete.deleted(), 1);
    }
    let (before, revision_before) = prefix_records(&cluster, leader, "restart/").await;
    assert_eq!(before.len(), KEYS - 3);
    assert_eq!(
        revision_before,
        1 + (KEYS + KEYS / 5 + 3) as i64,
        "one revision per write"
    );
    drop(client);

    for node in 0..3 {
        cluster.kill(node);
    }
    for node in 0..3 {
        cluster.restart(node);
    }
    cluster.wait_for_leader().await;

    for node in 0..3 {
        let (after, revision_after) = prefix_records(&cluster, node, "restart/").await;
        assert_eq!(
            revision_after,
            revision_before,
            "n{} after the restart: the revision must be the one before the kill",
            node + 1
        );
        assert_eq!(
            after,
            before,
            "n{} after the restart: data or metadata changed",
            node + 1
        );
    }

    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    let put = client
        .put("restart/new", "new", None)
        .await
        .expect("put after the restart");
    assert_eq!(
        revision(put.header()),
        revision_before + 1,
        "the cluster continues at the old revision"
    );
    let put = client
        .put("restart/000", "third-0", None)
        .await
        .expect("update after the restart");
    assert_eq!(revision(put.header()), revision_before + 2);
    let response = client
        .get("restart/000", None)
        .await
        .expect("get after the restart");
    let kv = single(&response, "restart/000 after the restart");
    let old = before
        .iter()
        .find(|r| r.key == "restart/000")
        .expect("restart/000 existed");
    assert_eq!(
        kv.create_revision, old.create_revision,
        "an update keeps the create_revision"
    );
    assert_eq!(
        kv.version,
        old.version + 1,
        "the version continues from before the restart"
    );
    assert_eq!(kv.mod_revision, revision_before + 2);
}

/// A follower down while 10,000 writes go through catches up once restarted. The leader has
/// purged its log by then (snapshot every 5,000 applied entries, 1,000 kept), so this is catch-up
/// by snapshot installation, not by log replay alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_down_during_10000_writes_catches_up_after_restart() {
    const WRITES: usize = 10_000;
    const WRITERS: usize = 32;
    const PREFIX: &str = "catch-up/";
    let seed = test_seed("a_follower_down_during_10000_writes_catches_up_after_restart");
    let mut rng = TestRng::new(seed);
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let down = rng.choose(&cluster.followers(leader));
    cluster.kill(down);
    // The killed follower holds no entry past the leader's last one at this moment.
    let missed_from = raft_gauge(&cluster, leader, "quorumdb_raft_last_log_index") + 1;
    eprintln!(
        "leader n{}, follower n{} killed; it lacks the entries from {missed_from}",
        leader + 1,
        down + 1
    );

    let client = cluster.client(leader).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut retried = 0;
            for i in (writer..WRITES).step_by(WRITERS) {
                let key = format!("{PREFIX}{i:05}");
                let mut attempts = 0;
                // The same value again is harmless, so a put with an unknown outcome is retried
                // (a few times only: on a healthy majority it should not fail at all).
                while let Err(e) = client.put(key.as_str(), format!("value-{i}"), None).await {
                    attempts += 1;
                    if attempts == 3 {
                        return Err(format!("put {key} failed {attempts} times, last: {e}"));
                    }
                    retried += 1;
                }
            }
            Ok(retried)
        }));
    }
    let results = tokio::time::timeout(Duration::from_secs(180), futures::future::join_all(tasks))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{WRITES} writes did not finish within 180 s\n{}",
                cluster.logs()
            )
        });
    let mut retried = 0;
    for result in results {
        match result.expect("writer task panicked") {
            Ok(count) => retried += count,
            Err(e) => panic!("{e}\n{}", cluster.logs()),
        }
    }
    eprintln!(
        "{WRITES} writes by {WRITERS} writers in {:?} ({retried} retried)",
        started.elapsed()
    );

    let mut leader_client = client.clone();
    let leader_view = leader_client
        .get(
            PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count on the leader");
    assert_eq!(
        leader_view.count(),
        WRITES as i64,
        "the leader has every write"
    );
    let leader_revision = revision(leader_view.header());

    // The point of 10,000 writes: the leader purges entries the follower lacks, so only a
    // snapshot can bring it back. openraft purges once its snapshot policy and log retention
    // allow it and no replication holds the range in flight, which for the dead follower's
    // retrying stream can be a moment after the writes: wait for it rather than assume it.
    let purged = cluster
        .eventually(
            Duration::from_secs(60),
            "the leader purging the missed entries",
            || {
                let purged = raft_gauge(&cluster, leader, "quorumdb_raft_purged_index");
                std::future::ready(if purged >= missed_from {
                    Ok(purged)
                } else {
                    Err(format!(
                        "purged through {purged}, the follower lacks {missed_from} on"
                    ))
                })
            },
        )
        .await;
    eprintln!("the leader purged its log through {purged}");

    cluster.restart(down);
    let restarted = Instant::now();
    let caught_up = cluster.client(down).await;
    cluster
        .eventually(Duration::from_secs(90), &format!("n{} catching up", down + 1), || {
            let mut client = caught_up.clone();
            async move {
                let options = GetOptions::new().with_prefix().with_count_only().with_serializable();
                let response = client.get(PREFIX, Some(options)).await.map_err(|e| e.to_string())?;
                let (count, at) = (response.count(), revision(response.header()));
                if count == WRITES as i64 && at == leader_revision {
                    Ok(())
                } else {
                    Err(format!("serializable view: {count} keys at revision {at}, leader: {WRITES} at {leader_revision}"))
                }
            }
        })
        .await;
    eprintln!(
        "n{} caught up {:?} after its restart",
        down + 1,
        restarted.elapsed()
    );

    // The leader could only send a snapshot. The follower logs the install after flushing it,
    // which can be a moment after its data already serves reads.
    cluster
        .wait_for_log_line(down, "installed snapshot", Duration::from_secs(10))
        .await;

    // Linearizable reads work on it too, and see exactly what the leader wrote.
    for i in [0, rng.index(WRITES), WRITES - 1] {
        let key = format!("{PREFIX}{i:05}");
        let response = eventually_get(&cluster, down, &key).await;
        assert_eq!(
            single(&response, &key).value,
            format!("value-{i}"),
            "{key} on n{}",
            down + 1
        );
    }
}

/// A follower that cannot reach the leader must not answer a linearizable read from its own,
/// possibly stale, state: it fails the read instead. Serializable reads may be stale; that is
/// their contract. Once healed, the follower's linearizable reads see the newer write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_fails_linearizable_reads_instead_of_serving_stale_data() {
    const KEY: &str = "partition/key";
    let seed =
        test_seed("a_cut_off_follower_fails_linearizable_reads_instead_of_serving_stale_data");
    let mut rng = TestRng::new(seed);
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let followers = cluster.followers(leader);
    let cut = rng.choose(&followers);
    let others: Vec<usize> = (0..3).filter(|n| *n != cut).collect();
    eprintln!("leader n{}, cutting off follower n{}", leader + 1, cut + 1);

    let mut leader_client = cluster.client(leader).await;
    let cut_client = cluster
        .client_with_timeout(cut, Duration::from_secs(15))
        .await;
    leader_client.put(KEY, "old", None).await.expect("put old");
    cluster
        .eventually(
            SETTLE_WAIT,
            &format!("n{} applying the old value", cut + 1),
            || {
                let mut client = cut_client.clone();
                async move {
                    let response = client
                        .get(KEY, Some(GetOptions::new().with_serializable()))
                        .await
                        .map_err(|e| e.to_string())?;
                    match response.kvs().first() {
                        Some(kv) if kv.value() == b"old" => Ok(()),
                        other => Err(format!("serializable view: {:?}", other.map(record))),
                    }
                }
            },
        )
        .await;

    cluster.cut_links(cut, &others).await;
    leader_client
        .put(KEY, "new", None)
        .await
        .expect("the leader still has a majority, so the put must succeed");

    let asked_at = Instant::now();
    let linearizable = cut_client.clone().get(KEY, None).await;
    let waited = asked_at.elapsed();
    match linearizable {
        Ok(response) => panic!(
            "a linearizable get on the cut-off follower n{} answered {:?} after {waited:?}; it must fail \
             (the value \"new\" was acknowledged and it cannot have seen it)",
            cut + 1,
            response.kvs().first().map(record)
        ),
        Err(e) => eprintln!(
            "linearizable get on the cut-off follower failed after {waited:?}, as it must: {e}"
        ),
    }

    // A serializable read is allowed to be stale, and here it must be: the follower has nothing newer.
    let serializable = cut_client
        .clone()
        .get(KEY, Some(GetOptions::new().with_serializable()))
        .await
        .expect("a serializable read needs no leader");
    assert_eq!(
        single(&serializable, "serializable get on the cut follower").value,
        "old"
    );

    cluster.cut_links(cut, &[]).await;
    let healed = cluster
        .eventually(
            SETTLE_WAIT,
            &format!("linearizable get on n{} after the heal", cut + 1),
            || {
                let mut client = cut_client.clone();
                async move {
                    let response = client.get(KEY, None).await.map_err(|e| e.to_string())?;
                    let value = single(&response, "linearizable get after the heal").value;
                    assert_ne!(
                        value, "old",
                        "a linearizable read after the heal returned the stale value"
                    );
                    Ok(value)
                }
            },
        )
        .await;
    assert_eq!(
        healed, "new",
        "after the heal the follower must see the acknowledged write"
    );
}

/// MoveLeader (openraft's leader transfer through the peer service) hands leadership to the
/// named follower; a non-leader refuses with etcd's `not leader`, a non-member target with
/// `bad leader transferee`; writes work under the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_leadership_to_the_named_follower() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.followers(leader)[0];
    let target = cluster.nodes[follower].id;

    let mut on_follower = cluster.client(follower).await;
    let refused = on_follower
        .move_leader(target)
        .await
        .expect_err("a follower cannot move leadership");
    assert!(
        refused.to_string().contains("etcdserver: not leader"),
        "{refused}"
    );

    let mut on_leader = cluster.client(leader).await;
    let bad = on_leader
        .move_leader(12345)
        .await
        .expect_err("12345 is not a member");
    assert!(
        bad.to_string()
            .contains("etcdserver: bad leader transferee"),
        "{bad}"
    );

    on_leader.move_leader(target).await.expect("move leader");
    let new_leader = cluster.wait_for_leader().await;
    assert_eq!(
        new_leader,
        follower,
        "leadership went elsewhere\n{}",
        cluster.logs()
    );
    // The handover went through the peer service's TransferLeader, not a plain election.
    let handled = cluster.nodes[follower]
        .log()
        .contains("leader transfer request received");
    assert!(
        handled,
        "the target never received the transfer request\n{}",
        cluster.logs()
    );

    let mut client = cluster.client(leader).await;
    client
        .put("moved", "yes", None)
        .await
        .expect("write after the transfer");
    let read = on_follower
        .get("moved", None)
        .await
        .expect("read on the new leader");
    assert_eq!(read.kvs()[0].value(), b"yes");
}

/// With two of three members gone no leader can be elected: the survivor answers writes and
/// linearizable reads with Unavailable and etcd's message, within a bounded time, instead of
/// hanging; a serializable read still answers from local state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_requests_fail_unavailable_within_a_bounded_time() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    client
        .put("quorum", "before", None)
        .await
        .expect("write with a quorum");

    let survivor = cluster.followers(leader)[0];
    // A linearizable read on the survivor makes sure it has applied the write before the others go.
    let mut on_survivor = cluster.client(survivor).await;
    let seen = on_survivor
        .get("quorum", None)
        .await
        .expect("read on the survivor");
    assert_eq!(seen.kvs()[0].value(), b"before");
    for index in 0..3 {
        if index != survivor {
            cluster.kill(index);
        }
    }
    let mut client = cluster
        .client_with_timeout(survivor, Duration::from_secs(20))
        .await;
    for what in ["put", "linearizable get"] {
        let started = Instant::now();
        let outcome = match what {
            "put" => client.put("quorum", "after", None).await.map(|_| ()),
            _ => client.get("quorum", None).await.map(|_| ()),
        };
        let took = started.elapsed();
        let error = outcome.expect_err("no quorum, no answer");
        let etcd_client::Error::GRpcStatus(status) = &error else {
            panic!("{what}: expected a gRPC status, got {error}");
        };
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{what}: {status:?}"
        );
        assert!(
            ["etcdserver: no leader", "etcdserver: request timed out"].contains(&status.message()),
            "{what}: unexpected message {:?}",
            status.message()
        );
        // The server gives up after its own bound (a few election timeouts), well before the
        // client's 20 s deadline.
        assert!(took < Duration::from_secs(12), "{what} took {took:?}");
    }
    let stale = client
        .get("quorum", Some(GetOptions::new().with_serializable()))
        .await
        .expect("a serializable read needs no quorum");
    assert_eq!(stale.kvs()[0].value(), b"before");
}

/// A member whose data directory was lost must not bootstrap again with a blank vote and log
/// (with one other member it could form a quorum that forgets acknowledged writes): it refuses
/// to start with etcd's "already bootstrapped" error, and the cluster keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_was_lost_refuses_to_bootstrap_again() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let lost = cluster.followers(leader)[0];
    // Wait until every member has published its client URL: that is what marks "bootstrapped".
    cluster
        .eventually(SETTLE_WAIT, "client URLs published", || async {
            let mut client = cluster.client(leader).await;
            let members = client.member_list().await.map_err(|e| e.to_string())?;
            let published = members
                .members()
                .iter()
                .all(|m| !m.client_urls().is_empty());
            if published && members.members().len() == 3 {
                Ok(())
            } else {
                Err(format!("{:?}", members.members()))
            }
        })
        .await;
    let mut client = cluster.client(leader).await;
    client
        .put("kept", "yes", None)
        .await
        .expect("write before the loss");

    cluster.kill(lost);
    std::fs::remove_dir_all(&cluster.nodes[lost].data_dir).expect("wipe the data directory");
    cluster.restart(lost);

    let deadline = Instant::now() + SETTLE_WAIT;
    let status = loop {
        if let Some(status) = cluster.nodes[lost].unexpected_exit() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the wiped member kept running\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "the wiped member exited with {status}");
    let log = cluster.nodes[lost].log();
    assert!(
        log.contains("has already been bootstrapped"),
        "{}",
        cluster.nodes[lost].log_tail(5)
    );
    cluster.nodes[lost].kill(); // reap it, so the harness does not report an unexpected exit

    let read = client
        .get("kept", None)
        .await
        .expect("the other two keep serving");
    assert_eq!(read.kvs()[0].value(), b"yes");
}

/// A new cluster is started by one member (the smallest id); the others wait for its election or
/// its leader's log, even when they start late. So the cluster keeps its first leader and term
/// when its last member (the largest id) starts a moment after the others, and all three publish
/// their client URLs. Before, every member initialized and campaigned: the late member's vote
/// in the leader's term outranked the leader, it refused the leader's log for an election
/// timeout, and a second election followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_starting_late_joins_the_first_leader_in_the_first_term() {
    let last = common::indexes_by_member_id(3)[2];
    let mut cluster = Cluster::start_without(3, last);
    let leader = cluster.wait_for_leader().await;
    cluster.restart(last);
    for index in 0..3 {
        cluster.wait_for_published_members(index).await;
    }
    for index in 0..3 {
        let mut client = cluster.client(index).await;
        let status = client.status().await.expect("status");
        assert_eq!(
            (status.raft_term(), status.leader()),
            (1, cluster.nodes[leader].id),
            "n{}'s term and leader\n{}",
            index + 1,
            cluster.logs()
        );
    }
}

/// Without the member that starts a new cluster (the smallest id), the other two start it
/// themselves after waiting three election timeouts, and serve; the late member then joins the
/// cluster they started instead of starting another, and serves what was written without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_forms_without_its_first_member_which_joins_it_later() {
    let first = common::indexes_by_member_id(3)[0];
    let mut cluster = Cluster::start_without(3, first);
    let leader = cluster.wait_for_leader().await;
    assert_ne!(leader, first);
    let mut client = cluster.client(leader).await;
    client
        .put("formed", "without the first", None)
        .await
        .expect("two of three serve");

    cluster.restart(first);
    let mut late = cluster.client(first).await;
    cluster
        .eventually(SETTLE_WAIT, "the late member serves the write", || {
            let mut late = late.clone();
            async move {
                let read = late.get("formed", None).await.map_err(|e| e.to_string())?;
                match read.kvs().first() {
                    Some(kv) if kv.value() == b"without the first" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    let _ = &mut late;
    assert!(
        !cluster.nodes[first]
            .log()
            .contains("initializing a new cluster"),
        "the late member joined instead of starting a cluster\n{}",
        cluster.nodes[first].log_tail(20)
    );
    assert_eq!(cluster.wait_for_leader().await, leader, "no new election");
}

/// SIGTERM to node `index` (`who`, for the message): it must exit successfully within 20 s.
fn stop_cleanly(cluster: &mut Cluster, index: usize, who: &str) {
    let stopped =
        tokio::task::block_in_place(|| cluster.nodes[index].terminate(Duration::from_secs(20)));
    let Some((status, took)) = stopped else {
        panic!("n{} ({who}) still ran 20 s after SIGTERM", index + 1);
    };
    assert!(
        status.success(),
        "n{} ({who}) exited with {status:?} after {took:?}",
        index + 1
    );
}

/// A stop (SIGTERM) of a follower ends while its leader lives: the leader's append stream into
/// it held the peer listener open, and the follower never exited (an operator's restart waited
/// for the kill after it). It exits cleanly, and after a restart serves what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_exits_cleanly_while_its_leader_streams_appends_to_it() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut on_leader = cluster.client(leader).await;
    on_leader.put("stop/k", "v", None).await.expect("put");
    // The follower holds the put: the append stream carried it there.
    let before = eventually_get(&cluster, follower, "stop/k").await;
    assert_eq!(before.kvs().len(), 1, "the follower serves the put");

    stop_cleanly(
        &mut cluster,
        follower,
        "the follower, while its leader lives",
    );
    on_leader
        .put("stop/k2", "v2", None)
        .await
        .expect("the other two take writes");

    cluster.restart(follower);
    let after = eventually_get(&cluster, follower, "stop/k2").await;
    assert_eq!(after.kvs().len(), 1, "the restarted follower catches up");
    let kept = eventually_get(&cluster, follower, "stop/k").await;
    assert_eq!(kept.kvs().len(), 1, "and keeps what it held");
}

/// A stop (SIGTERM) of the leader first hands its leadership to a follower, as etcd does: the
/// other two take writes again at once instead of after an election timeout with no leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_hands_its_leadership_to_a_follower_first() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader().await;
    let mut on_leader = cluster.client(leader).await;
    on_leader.put("handover/k", "v", None).await.expect("put");
    drop(on_leader);

    stop_cleanly(&mut cluster, leader, "the leader");
    let log = cluster.nodes[leader].log();
    let handed = log
        .lines()
        .find(|line| line.contains("handed leadership over"))
        .unwrap_or_else(|| {
            panic!(
                "n{} stopped without handing its leadership over:\n{}",
                leader + 1,
                cluster.nodes[leader].log_tail(20)
            )
        });
    // The follower named there leads now, and takes writes.
    let successor = cluster.wait_for_leader().await;
    let mut client = cluster.client(successor).await;
    let status = client.status().await.expect("status");
    assert_eq!(
        status.leader(),
        status.header().expect("header").member_id()
    );
    assert!(
        handed.contains(&format!("to={:x}", status.leader())),
        "n{} leads, but the handover went elsewhere: {handed}",
        successor + 1
    );
    client
        .put("handover/k2", "v2", None)
        .await
        .expect("the new leader takes writes");
    let got = client.get("handover/k", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1, "with what the old leader acknowledged");
}
