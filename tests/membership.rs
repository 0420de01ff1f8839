//! Membership changes through etcd's Cluster API against real processes: a cluster grows from
//! three to five members (each added as a learner, caught up, promoted) and shrinks back, its
//! leader included, while a writer keeps writing, and no acknowledged write is lost; a removed
//! member cannot disrupt the cluster; bad requests get etcd's errors and change nothing; a
//! linearizable MemberList on a cut-off member refuses rather than answer a stale list.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Cluster;
use common::http_get;
use common::sample;
use etcd_client::Client;
use etcd_client::ConnectOptions;
use etcd_client::GetOptions;
use etcd_client::MemberAddOptions;
use quorumdb::pb::etcdserverpb as etcd;
use quorumdb::pb::etcdserverpb::cluster_client::ClusterClient;
use tonic::Code;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// Bound on the background writer, whatever happens.
const WRITES_MAX: usize = 20_000;

async fn in_time(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("the test finished in time");
}

/// A client on the original three members (they stay members throughout).
async fn client_on(cluster: &Cluster, indexes: &[usize]) -> Client {
    let endpoints: Vec<String> = indexes
        .iter()
        .map(|i| cluster.nodes[*i].client_url())
        .collect();
    Client::connect(
        endpoints,
        Some(ConnectOptions::new().with_timeout(Duration::from_secs(10))),
    )
    .await
    .expect("connect")
}

/// Voter ids and learner ids, as MemberList reports them.
async fn roles(client: &mut Client) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let list = client.member_list().await.expect("member list");
    let mut voters = BTreeSet::new();
    let mut learners = BTreeSet::new();
    for member in list.members() {
        if member.is_learner() {
            learners.insert(member.id());
        } else {
            voters.insert(member.id());
        }
    }
    (voters, learners)
}

/// Voter ids and learner ids once `listed` holds for them, or as last listed after 10 s. The
/// etcd-client crate's MemberList is serializable (an empty request, as etcd 3.4 sends), so right
/// after a change another member may answer that has not applied it yet.
async fn roles_once(
    client: &mut Client,
    listed: impl Fn(&BTreeSet<u64>, &BTreeSet<u64>) -> bool,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (voters, learners) = roles(client).await;
        if listed(&voters, &learners) || tokio::time::Instant::now() >= deadline {
            return (voters, learners);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds the prepared node `index` as a learner (not started) and records the id it was given.
async fn add_as_learner(cluster: &mut Cluster, client: &mut Client, index: usize) -> u64 {
    let added = client
        .member_add(
            [cluster.nodes[index].peer_url()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add");
    let id = added.member().expect("the added member").id();
    cluster.nodes[index].id = id;
    id
}

/// Adds node `index` as a learner, starts it, and promotes it once it has caught up.
async fn grow(cluster: &mut Cluster, client: &mut Client, index: usize) {
    let id = add_as_learner(cluster, client, index).await;
    let (_, learners) = roles_once(client, |_, learners| learners.contains(&id)).await;
    assert!(learners.contains(&id), "added as a learner");
    cluster.restart(index);
    let name = cluster.nodes[index].name.clone();
    cluster
        .eventually(
            Duration::from_secs(60),
            &format!("{name} is promoted"),
            || {
                let mut client = client.clone();
                async move {
                    match client.member_promote(id).await {
                        Ok(_) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await;
    let (voters, _) = roles_once(client, |voters, _| voters.contains(&id)).await;
    assert!(voters.contains(&id), "{name} votes");
    // It serves linearizable reads of everything written so far.
    let mut on_new = cluster.client(index).await;
    cluster
        .eventually(
            Duration::from_secs(30),
            &format!("{name} serves reads"),
            || {
                let mut on_new = on_new.clone();
                async move {
                    on_new
                        .get(
                            "grow/",
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await;
    let _ = &mut on_new;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_grows_to_five_and_shrinks_back_under_writes_losing_no_acknowledged_write() {
    in_time(async {
        let mut cluster = Cluster::start(3);
        cluster.wait_for_leader().await;
        let mut admin = client_on(&cluster, &[0, 1, 2]).await;

        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let unknown = Arc::new(Mutex::new(0usize));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let mut client = client_on(&cluster, &[0, 1, 2]).await;
            let (acknowledged, unknown, stop) =
                (acknowledged.clone(), unknown.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 0..WRITES_MAX {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("grow/{i:05}");
                    match client.put(key.as_str(), format!("v{i}"), None).await {
                        Ok(_) => acknowledged.lock().expect("lock").push(key),
                        Err(_) => *unknown.lock().expect("lock") += 1,
                    }
                }
            })
        };

        let n4 = cluster.add_node();
        grow(&mut cluster, &mut admin, n4).await;
        let n5 = cluster.add_node();
        grow(&mut cluster, &mut admin, n5).await;
        let (voters, _) = roles_once(&mut admin, |voters, _| voters.len() == 5).await;
        assert_eq!(voters.len(), 5);

        // Shrink: first the leader (moved to n4 so the original three stay), then n5.
        let n4_id = cluster.nodes[n4].id;
        let leader = cluster.wait_for_leader().await;
        if leader != n4 {
            let mut on_leader = cluster.client(leader).await;
            cluster
                .eventually(Duration::from_secs(30), "n4 leads", || {
                    let mut on_leader = on_leader.clone();
                    async move {
                        on_leader
                            .move_leader(n4_id)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                })
                .await;
            let _ = &mut on_leader;
        }
        assert_eq!(cluster.wait_for_leader().await, n4);
        admin.member_remove(n4_id).await.expect("remove the leader");
        // The removed leader steps down; one of the remaining members takes over.
        cluster.kill(n4);
        let leader = cluster.wait_for_leader().await;
        assert_ne!(leader, n4);
        admin
            .member_remove(cluster.nodes[n5].id)
            .await
            .expect("remove n5");
        cluster.kill(n5);
        let original: BTreeSet<u64> = (0..3).map(|i| cluster.nodes[i].id).collect();
        let (voters, learners) = roles_once(&mut admin, |voters, learners| {
            *voters == original && learners.is_empty()
        })
        .await;
        assert_eq!((voters, learners.len()), (original, 0));

        // Let the writer run a little on the shrunk cluster, then stop it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        writer.await.expect("writer");
        let acknowledged = acknowledged.lock().expect("lock").clone();
        let unknown = *unknown.lock().expect("lock");
        eprintln!(
            "{} writes acknowledged, {unknown} failed or unknown during the changes",
            acknowledged.len()
        );
        assert!(acknowledged.len() > 50, "the writer made progress");

        for index in 0..3 {
            let mut client = cluster.client(index).await;
            let stored = client
                .get(
                    "grow/",
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
                .expect("linearizable read");
            let stored: BTreeSet<String> = stored
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect();
            let lost: Vec<&String> = acknowledged
                .iter()
                .filter(|key| !stored.contains(*key))
                .collect();
            assert!(
                lost.is_empty(),
                "n{} lost acknowledged writes: {lost:?}",
                index + 1
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_disrupt_the_cluster() {
    in_time(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let removed = cluster.followers(leader)[0];
        let mut on_leader = cluster.client(leader).await;
        let term_before = on_leader.status().await.expect("status").raft_term();
        on_leader
            .member_remove(cluster.nodes[removed].id)
            .await
            .expect("remove a follower");
        // The removed member keeps running, no longer hears from the leader and would like to
        // start elections; the remaining members must not let it.
        let started = std::time::Instant::now();
        let mut writes = 0;
        while started.elapsed() < Duration::from_secs(5) {
            on_leader
                .put(format!("after-remove/{writes}"), "v", None)
                .await
                .expect("writes keep working");
            writes += 1;
        }
        let status = on_leader.status().await.expect("status");
        assert_eq!(
            status.leader(),
            cluster.nodes[leader].id,
            "the leader kept its leadership"
        );
        assert_eq!(
            status.raft_term(),
            term_before,
            "no election was forced by the removed member"
        );
        assert!(writes > 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_get_etcd_errors_and_change_nothing() {
    in_time(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let follower = cluster.followers(leader)[0];
        let mut client = cluster.client(follower).await;
        // Serializable on the follower: wait until it has applied the initial membership, or
        // "before" is empty and no later list can equal it.
        let (voters_before, _) = roles_once(&mut client, |voters, _| voters.len() == 3).await;
        assert_eq!(
            voters_before.len(),
            3,
            "the three voters, listed by the follower"
        );

        let code_and_message = |e: etcd_client::Error| match e {
            etcd_client::Error::GRpcStatus(status) => (status.code(), status.message().to_string()),
            other => panic!("not a gRPC status: {other}"),
        };
        let bad_url = client
            .member_add(["http://127.0.0.1"], None)
            .await
            .expect_err("no port");
        assert_eq!(
            code_and_message(bad_url),
            (
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid".into()
            )
        );
        let taken = client
            .member_add([cluster.nodes[leader].peer_url()], None)
            .await
            .expect_err("a member already has it");
        assert_eq!(
            code_and_message(taken),
            (
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists".into()
            )
        );
        let unknown = client
            .member_remove(12345)
            .await
            .expect_err("no such member");
        assert_eq!(
            code_and_message(unknown),
            (Code::NotFound, "etcdserver: member not found".into())
        );
        let voter = client
            .member_promote(cluster.nodes[leader].id)
            .await
            .expect_err("already a voter");
        assert_eq!(
            code_and_message(voter),
            (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member".into()
            )
        );
        // A learner that was never started has acknowledged nothing: not in sync.
        let added = client
            .member_add(
                ["http://127.0.0.1:9"],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
            .expect("add a learner");
        let learner = added.member().expect("member").id();
        let not_ready = client
            .member_promote(learner)
            .await
            .expect_err("never caught up");
        assert_eq!(
            code_and_message(not_ready),
            (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader".into()
            )
        );
        let (voters_after, learners) = roles(&mut client).await;
        assert_eq!(voters_after, voters_before, "no voter changed");
        assert_eq!(learners, BTreeSet::from([learner]));

        // MemberUpdate moves a member to a new peer URL; a URL another member has is refused.
        client
            .member_update(learner, vec!["http://127.0.0.1:10".to_string()])
            .await
            .expect("update the learner's peer URL");
        let list = client.member_list().await.expect("member list");
        let updated = list
            .members()
            .iter()
            .find(|m| m.id() == learner)
            .expect("still a member");
        assert_eq!(updated.peer_urls(), ["http://127.0.0.1:10"]);
        let taken = client
            .member_update(learner, vec![cluster.nodes[leader].peer_url()])
            .await
            .expect_err("the leader's URL");
        assert_eq!(code_and_message(taken).0, Code::FailedPrecondition);
        let unknown = client
            .member_update(12345, vec!["http://127.0.0.1:11".to_string()])
            .await
            .expect_err("no such member");
        assert_eq!(code_and_message(unknown).0, Code::NotFound);
        client
            .member_remove(learner)
            .await
            .expect("remove the learner");
        let (_, learners) = roles(&mut client).await;
        assert!(learners.is_empty());
    })
    .await;
}

/// A member added after the leader purged its log can only catch up by installing a snapshot,
/// then by log; it is promoted and serves everything written before it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_the_log_was_purged_catches_up_by_snapshot_then_votes() {
    const WRITES: usize = 6500;
    in_time(async {
        let mut cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        // Snapshot every 5,000 entries, 1,000 kept: once built, the start of the log is gone.
        cluster.fill_until_snapshot(leader, "purged/", WRITES).await;

        let mut admin = client_on(&cluster, &[0, 1, 2]).await;
        let n4 = cluster.add_node();
        grow(&mut cluster, &mut admin, n4).await;
        assert!(
            cluster.nodes[n4].log().contains("installed snapshot"),
            "n4 caught up by snapshot"
        );
        let (_, leader_scrape) = http_get(&cluster.nodes[leader].metrics_url(), "/metrics");
        assert!(
            sample(&leader_scrape, "quorumdb_snapshots_sent_total") >= Some(1.0),
            "the leader counts the snapshot it sent"
        );
        let (_, n4_scrape) = http_get(&cluster.nodes[n4].metrics_url(), "/metrics");
        assert!(sample(&n4_scrape, "quorumdb_snapshots_installed_total") >= Some(1.0));
        let mut on_n4 = cluster.client(n4).await;
        let count = on_n4
            .get(
                "purged/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("a linearizable read on the new member");
        assert_eq!(count.count(), WRITES as i64);
    })
    .await;
}

/// MemberList with `linearizable` (what etcd 3.5+ clients send) passes the read barrier: a
/// member cut off from the leader refuses it instead of answering without a change committed
/// meanwhile, and the first answer after the heal lists that change. Without `linearizable` the
/// member answers its own, stale, list, as etcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_member_list_on_a_cut_off_member_refuses_rather_than_answer_stale() {
    in_time(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let followers = cluster.followers(leader);
        let cut = followers[0];
        let mut on_cut = ClusterClient::new(cluster.channel(cut).await);
        let list = |linearizable: bool| etcd::MemberListRequest { linearizable };
        let listed = |response: &etcd::MemberListResponse, id: u64| {
            response.members.iter().any(|member| member.id == id)
        };

        cluster.cut_links(cut, &[leader, followers[1]]).await;
        let mut on_leader = cluster.client(leader).await;
        let added = on_leader
            .member_add(
                ["http://127.0.0.1:9"],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
            .expect("the majority adds a learner");
        let learner = added.member().expect("the added member").id();

        let stale = on_cut
            .member_list(list(false))
            .await
            .expect("a serializable list answers from the member's own state")
            .into_inner();
        assert!(
            !listed(&stale, learner),
            "the cut member has not seen the change"
        );
        let refused = on_cut
            .member_list(list(true))
            .await
            .expect_err("no read index without the leader");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

        cluster.cut_links(cut, &[]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let fresh = loop {
            match on_cut.member_list(list(true)).await {
                Ok(response) => break response.into_inner(),
                Err(status) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the healed member never answered a linearizable list: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert!(
            listed(&fresh, learner),
            "the first linearizable answer lists the committed change"
        );
    })
    .await;
}

/// A promotion is two Raft changes (the joint config, then the new one). A membership change
/// committed between the two (here peer-URL updates, in production the new member publishing its
/// client URL) made the second step fail as "in progress"; the retry then answered "can only
/// promote a learner member" for a promotion that had been made, and nothing told the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_racing_other_membership_changes_succeeds_once_and_says_so() {
    const UPDATERS: usize = 8;
    const UPDATES_MAX: usize = 400;
    in_time(async {
        let mut cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let mut on_leader = cluster.client(leader).await;
        let learner = cluster.add_node();
        let id = add_as_learner(&mut cluster, &mut on_leader, learner).await;
        cluster.restart(learner);
        // Its client URL is listed once it has published (a change the leader made with it
        // reachable), so it is caught up enough to be promoted.
        let client_url = cluster.nodes[learner].client_url();
        cluster
            .eventually(Duration::from_secs(30), "the learner publishes", || {
                let mut on_leader = on_leader.clone();
                let client_url = client_url.clone();
                async move {
                    let list = on_leader.member_list().await.map_err(|e| e.to_string())?;
                    let published = list
                        .members()
                        .iter()
                        .any(|m| m.id() == id && m.client_urls().contains(&client_url));
                    published.then_some(()).ok_or("not yet".to_string())
                }
            })
            .await;

        // Peer-URL updates of another member to its own URL: each one a membership change.
        let other = cluster.followers(leader)[0];
        let (other_id, other_url) = (cluster.nodes[other].id, cluster.nodes[other].peer_url());
        let promoted = Arc::new(AtomicBool::new(false));
        let mut updaters = Vec::new();
        for _ in 0..UPDATERS {
            let mut client = on_leader.clone();
            let (promoted, other_url) = (promoted.clone(), other_url.clone());
            updaters.push(tokio::spawn(async move {
                let mut made = 0;
                while !promoted.load(Ordering::SeqCst) && made < UPDATES_MAX / UPDATERS {
                    client
                        .member_update(other_id, vec![other_url.clone()])
                        .await
                        .expect("a peer-URL update");
                    made += 1;
                }
                made
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let outcome = on_leader.member_promote(id).await;
        promoted.store(true, Ordering::SeqCst);
        let mut updates = 0;
        for updater in updaters {
            updates += updater.await.expect("updater");
        }
        eprintln!("{updates} peer-URL updates ran beside the promotion");
        outcome.expect("the promotion succeeds and says so");
        let (voters, learners) = roles(&mut on_leader).await;
        assert!(voters.contains(&id) && learners.is_empty());
    })
    .await;
}
