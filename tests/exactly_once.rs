//! The server side of QuorumDB's beyond-etcd guarantees, over raw gRPC with our metadata keys
//! (src/api/metadata.rs): a numbered write is applied once however often it is delivered, and
//! answers the first application's response; a read naming a minimum revision waits for it.
//!
//! Every test runs against real `quorumdb server` processes. The client library's use of these
//! (retries after an ambiguous failure, session mode) is tested in tests/client.rs.

mod common;

use std::time::Duration;

use common::Cluster;
use common::test_seed;
use quorumdb::api::metadata::CLIENT_ACK_KEY;
use quorumdb::api::metadata::CLIENT_ID_KEY;
use quorumdb::api::metadata::CLIENT_SEQ_KEY;
use quorumdb::api::metadata::MIN_REVISION_KEY;
use quorumdb::pb::etcdserverpb as etcd;
use quorumdb::pb::etcdserverpb::kv_client::KvClient;
use tonic::Code;
use tonic::Request;
use tonic::transport::Channel;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);

async fn kv(cluster: &Cluster, index: usize) -> KvClient<Channel> {
    KvClient::new(cluster.channel(index).await)
}

/// `message` with our exactly-once metadata.
fn numbered<T>(message: T, client: u64, seq: u64, ack: u64) -> Request<T> {
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(CLIENT_ID_KEY, client.to_string().parse().expect("ascii"));
    metadata.insert(CLIENT_SEQ_KEY, seq.to_string().parse().expect("ascii"));
    metadata.insert(CLIENT_ACK_KEY, ack.to_string().parse().expect("ascii"));
    request
}

fn put(key: &str, value: &str) -> etcd::PutRequest {
    etcd::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// "create `key` = `value` if it does not exist": applied twice, the second run would fail.
fn create(key: &str, value: &str) -> etcd::TxnRequest {
    etcd::TxnRequest {
        compare: vec![etcd::Compare {
            result: etcd::compare::CompareResult::Equal as i32,
            target: etcd::compare::CompareTarget::Version as i32,
            key: key.into(),
            target_union: Some(etcd::compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![etcd::RequestOp {
            request: Some(etcd::request_op::Request::RequestPut(put(key, value))),
        }],
        failure: vec![],
    }
}

fn revision(header: &Option<etcd::ResponseHeader>) -> i64 {
    header
        .as_ref()
        .expect("every response has a header")
        .revision
}

/// The key's current version and value, read linearizably.
async fn stored(client: &mut KvClient<Channel>, key: &str) -> Option<(i64, String, i64)> {
    let response = client
        .range(etcd::RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    response.kvs.first().map(|kv| {
        (
            kv.version,
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.mod_revision,
        )
    })
}

async fn within_time_limit(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_put_delivered_twice_is_applied_once_and_answers_the_same_revision() {
    within_time_limit(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let follower = cluster.followers(leader)[0];
        // Through a follower too: forwarding must carry the number to the leader.
        for (index, key, id) in [(leader, "once/leader", 77), (follower, "once/follower", 78)] {
            let mut client = kv(&cluster, index).await;
            let first = client
                .put(numbered(put(key, "first"), id, 1, 1))
                .await
                .expect("first delivery")
                .into_inner();
            let again = client
                .put(numbered(put(key, "second"), id, 1, 1))
                .await
                .expect("second delivery")
                .into_inner();
            assert_eq!(
                revision(&again.header),
                revision(&first.header),
                "{key}: the repeat answers the original revision"
            );
            assert_eq!(
                stored(&mut client, key).await,
                Some((1, "first".to_string(), revision(&first.header))),
                "{key}: applied once"
            );
            // The next write of the same client (acknowledging the first) is a new write.
            client
                .put(numbered(put(key, "third"), id, 2, 2))
                .await
                .expect("next numbered write");
            let (version, value, _) = stored(&mut client, key).await.expect("exists");
            assert_eq!((version, value.as_str()), (2, "third"));
        }

        // Without the metadata the server is etcd: the same put twice is two versions.
        let mut client = kv(&cluster, leader).await;
        for _ in 0..2 {
            client.put(put("plain", "v")).await.expect("plain put");
        }
        assert_eq!(stored(&mut client, "plain").await.expect("exists").0, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_whose_response_was_dropped_answers_the_original_response_on_retry() {
    within_time_limit(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let follower = cluster.followers(leader)[0];
        for (index, key, id) in [
            (leader, "dropped/leader", 91),
            (follower, "dropped/follower", 92),
        ] {
            let mut client = kv(&cluster, index).await;
            cluster.drop_write_responses(index, 1).await;
            let lost = client
                .txn(numbered(create(key, "v"), id, 1, 1))
                .await
                .expect_err("the response is dropped");
            assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
            assert!(lost.message().contains("dropped by fault injection"));
            // Applied despite the lost answer: the retry must not create it a second time
            // (which would fail the compare) but answer what the first run answered.
            let retried = client
                .txn(numbered(create(key, "v"), id, 1, 1))
                .await
                .expect("the retry answers")
                .into_inner();
            assert!(retried.succeeded, "{key}: the original run's branch");
            let (version, _, mod_revision) = stored(&mut client, key).await.expect("created");
            assert_eq!(version, 1, "{key}: applied once");
            assert_eq!(
                revision(&retried.header),
                mod_revision,
                "{key}: same revision"
            );

            // The same txn unnumbered, re-sent after a lost answer, is applied again: here the
            // second run fails its compare. That is etcd's behaviour and why numbering exists.
            cluster.drop_write_responses(index, 1).await;
            let plain_key = format!("{key}/plain");
            client
                .txn(create(&plain_key, "v"))
                .await
                .expect_err("dropped");
            let again = client
                .txn(create(&plain_key, "v"))
                .await
                .expect("answers")
                .into_inner();
            assert!(!again.succeeded, "unnumbered: the re-sent txn ran twice");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_the_session_has_forgotten_is_refused_and_changes_nothing() {
    within_time_limit(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let mut client = kv(&cluster, leader).await;
        client
            .put(numbered(put("forgotten", "1"), 5, 1, 1))
            .await
            .expect("write 1");
        client
            .put(numbered(put("forgotten", "2"), 5, 2, 2))
            .await
            .expect("write 2, acknowledging 1");
        let refused = client
            .put(numbered(put("forgotten", "again"), 5, 1, 1))
            .await
            .expect_err("write 1 was acknowledged, so forgotten");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            refused.message().starts_with("quorumdb: client session"),
            "{refused:?}"
        );
        let (version, value, _) = stored(&mut client, "forgotten").await.expect("exists");
        assert_eq!((version, value.as_str()), (2, "2"), "nothing applied");

        // Malformed metadata: InvalidArgument naming the key, nothing applied.
        let refused = client
            .put(numbered(put("forgotten", "bad"), 5, 3, 4))
            .await
            .expect_err("ack above seq");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains(CLIENT_ACK_KEY), "{refused:?}");
        let mut request = Request::new(put("forgotten", "bad"));
        request
            .metadata_mut()
            .insert(CLIENT_SEQ_KEY, "3".parse().expect("ascii"));
        let refused = client.put(request).await.expect_err("seq without id");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(stored(&mut client, "forgotten").await.expect("exists").0, 2);
    })
    .await;
}

/// The client sessions are state-machine state: a member that caught up by snapshot, and a
/// whole cluster restarted from disk, still answer a repeat with the original response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbered_writes_stay_applied_once_across_snapshot_install_and_cluster_restart() {
    const FILLER_WRITES: usize = 6500;
    within_time_limit(async {
        let mut cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let down = cluster.followers(leader)[0];
        let mut client = kv(&cluster, leader).await;
        let original = client
            .txn(numbered(create("survives", "v"), 4242, 1, 1))
            .await
            .expect("numbered txn")
            .into_inner();
        assert!(original.succeeded);
        let original_revision = revision(&original.header);

        // Enough writes while `down` is away that the leader snapshots and purges its log
        // (every 5,000 entries, 1,000 kept): `down` can only come back by snapshot.
        cluster.kill(down);
        // The leader purges its log right after building the snapshot: only then is catch-up
        // by log impossible.
        cluster
            .fill_until_snapshot(leader, "filler/", FILLER_WRITES)
            .await;
        cluster.restart(down);
        cluster
            .wait_for_log_line(down, "installed snapshot", Duration::from_secs(90))
            .await;

        // The member that knows the session only from the snapshot leads and answers the repeat.
        cluster.lead_with(down).await;
        assert_eq!(cluster.wait_for_leader().await, down);
        let mut on_new_leader = kv(&cluster, down).await;
        let repeat = on_new_leader
            .txn(numbered(create("survives", "v"), 4242, 1, 1))
            .await
            .expect("repeat after snapshot install")
            .into_inner();
        assert!(repeat.succeeded, "the original answer, not a second run");
        assert_eq!(revision(&repeat.header), original_revision);

        // Every member restarted from its own disk.
        for index in 0..3 {
            cluster.kill(index);
        }
        for index in 0..3 {
            cluster.restart(index);
        }
        let leader = cluster.wait_for_leader().await;
        let mut client = kv(&cluster, leader).await;
        let repeat = client
            .txn(numbered(create("survives", "v"), 4242, 1, 1))
            .await
            .expect("repeat after restart")
            .into_inner();
        assert!(repeat.succeeded);
        assert_eq!(revision(&repeat.header), original_revision);
        let (version, _, _) = stored(&mut client, "survives").await.expect("exists");
        assert_eq!(version, 1, "applied once in all");
    })
    .await;
}

/// A serializable read naming a minimum revision: an isolated follower cannot reach it and says
/// so (instead of answering stale data); once healed, it answers at or above that revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_naming_a_min_revision_waits_for_it_on_a_lagging_follower() {
    let _seed = test_seed("a_read_naming_a_min_revision_waits_for_it_on_a_lagging_follower");
    within_time_limit(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let followers = cluster.followers(leader);
        let (lagging, other) = (followers[0], followers[1]);
        let mut on_leader = kv(&cluster, leader).await;
        let mut on_lagging = kv(&cluster, lagging).await;

        cluster.cut_links(lagging, &[leader, other]).await;
        let written = on_leader
            .put(put("session/key", "new"))
            .await
            .expect("the majority writes")
            .into_inner();
        let wanted = revision(&written.header);

        let session_read = |wanted: i64| {
            let mut request = Request::new(etcd::RangeRequest {
                key: "session/key".into(),
                serializable: true,
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert(MIN_REVISION_KEY, wanted.to_string().parse().expect("ascii"));
            request
        };
        let stale = on_lagging
            .range(etcd::RangeRequest {
                key: "session/key".into(),
                serializable: true,
                ..Default::default()
            })
            .await
            .expect("a plain serializable read answers")
            .into_inner();
        assert!(
            stale.kvs.is_empty(),
            "the cut follower has not seen the put"
        );
        let refused = on_lagging
            .range(session_read(wanted))
            .await
            .expect_err("the follower cannot reach the revision");
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(
            refused.message().starts_with(&format!(
                "quorumdb: timed out waiting for revision {wanted}"
            )),
            "{refused:?}"
        );

        cluster.cut_links(lagging, &[]).await;
        let fresh = on_lagging
            .range(session_read(wanted))
            .await
            .expect("healed: the follower catches up and answers")
            .into_inner();
        assert!(revision(&fresh.header) >= wanted);
        assert_eq!(fresh.kvs.len(), 1);
        assert_eq!(fresh.kvs[0].value, b"new");
    })
    .await;
}
