//! A node's HTTP side against a live three-node cluster: Prometheus metrics that move with the
//! traffic, health and routing checks that follow the leader and notice a cut-off member, the
//! `/status` view and the status page.

mod common;

use std::time::Duration;

use common::Cluster;
use common::http_get;
use common::sample;
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

async fn in_time(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_show_follower_lag_only_on_the_leader() {
    in_time(async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let followers = cluster.followers(leader);
        let mut client = cluster.client(leader).await;
        for i in 0..20 {
            client
                .put(format!("m/{i}"), "v", None)
                .await
                .expect("put");
        }
        client.put("", "v", None).await.expect_err("an empty key");

        let (status, scrape) = http_get(&cluster.nodes[leader].metrics_url(), "/metrics");
        assert_eq!(status, 200);
        assert_eq!(sample(&scrape, "quorumdb_server_is_leader"), Some(1.0));
        assert_eq!(
            sample(
                &scrape,
                r#"quorumdb_grpc_requests_total{method="/etcdserverpb.KV/Put",code="OK"}"#
            ),
            Some(20.0)
        );
        assert_eq!(
            sample(
                &scrape,
                r#"quorumdb_grpc_requests_total{method="/etcdserverpb.KV/Put",code="InvalidArgument"}"#
            ),
            Some(1.0),
            "refused requests are counted by code"
        );
        assert!(sample(&scrape, "quorumdb_proposals_committed_total") >= Some(20.0));
        assert!(sample(&scrape, "quorumdb_disk_flush_duration_seconds_count") > Some(0.0));
        // One put at a time: an append each; no append is empty (indexes count from 0).
        let appends = sample(&scrape, "quorumdb_disk_log_appends_total").expect("log appends");
        let last_index = sample(&scrape, "quorumdb_raft_last_log_index").expect("last index");
        assert!(
            (20.0..=last_index + 1.0).contains(&appends),
            "{appends} appends, last log index {last_index}"
        );
        assert_eq!(
            sample(&scrape, "quorumdb_raft_purged_index"),
            Some(0.0),
            "20 puts are far from the snapshot that allows a purge"
        );
        assert_eq!(sample(&scrape, "quorumdb_mvcc_keys"), Some(20.0));
        for follower in &followers {
            let label = format!(
                r#"quorumdb_raft_follower_lag_entries{{follower="{:x}"}}"#,
                cluster.nodes[*follower].id
            );
            assert!(sample(&scrape, &label).is_some(), "{label} in\n{scrape}");
        }

        let (_, scrape) = http_get(&cluster.nodes[followers[0]].metrics_url(), "/metrics");
        assert_eq!(sample(&scrape, "quorumdb_server_is_leader"), Some(0.0));
        assert_eq!(sample(&scrape, "quorumdb_server_has_leader"), Some(1.0));
        assert!(
            !scrape.contains("quorumdb_raft_follower_lag_entries{"),
            "a follower does not know other followers' lag"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_routing_checks_follow_the_leader_and_notice_a_cut_off_member() {
    in_time(async {
        let mut cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let followers = cluster.followers(leader);
        for index in 0..3 {
            let url = cluster.nodes[index].metrics_url();
            let is_leader = index == leader;
            assert_eq!(http_get(&url, "/livez").0, 200);
            cluster
                .eventually(Duration::from_secs(20), "ready", || {
                    let url = url.clone();
                    async move {
                        match http_get(&url, "/readyz") {
                            (200, _) => Ok(()),
                            (code, body) => Err(format!("{code} {body}")),
                        }
                    }
                })
                .await;
            let (_, health) = http_get(&url, "/health");
            let health: Value = serde_json::from_str(&health).expect("JSON");
            assert_eq!(health["health"], "true");
            assert_eq!(
                http_get(&url, "/leader").0,
                if is_leader { 200 } else { 503 }
            );
            assert_eq!(
                http_get(&url, "/replica").0,
                if is_leader { 503 } else { 200 }
            );
        }
        assert_eq!(
            http_get(&cluster.nodes[followers[0]].metrics_url(), "/replica?lag=x").0,
            400,
            "a malformed bound is the caller's error"
        );

        let (_, status) = http_get(&cluster.nodes[leader].metrics_url(), "/status");
        let status: Value = serde_json::from_str(&status).expect("JSON");
        assert_eq!(status["role"], "leader");
        assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
        assert!(
            status["members"]
                .as_array()
                .expect("members")
                .iter()
                .all(|m| m["lag_entries"].is_u64()),
            "the leader knows every member's lag: {status}"
        );

        // Cut one follower off: it stops being ready and routable, but stays alive.
        let cut = followers[0];
        let others: Vec<usize> = (0..3).filter(|i| *i != cut).collect();
        cluster.cut_links(cut, &others).await;
        let url = cluster.nodes[cut].metrics_url();
        cluster
            .eventually(
                Duration::from_secs(30),
                "the cut member is not ready",
                || {
                    let url = url.clone();
                    async move {
                        match http_get(&url, "/readyz") {
                            (503, _) => Ok(()),
                            (code, body) => Err(format!("{code} {body}")),
                        }
                    }
                },
            )
            .await;
        let (code, health) = http_get(&url, "/health");
        assert_eq!(code, 503);
        let health: Value = serde_json::from_str(&health).expect("JSON");
        assert_eq!(health["health"], "false");
        assert_eq!(http_get(&url, "/livez").0, 200, "alive, only cut off");
        assert_eq!(http_get(&url, "/replica?lag=500ms").0, 503);
        let healthy_follower = followers[1];
        assert_eq!(
            http_get(
                &cluster.nodes[healthy_follower].metrics_url(),
                "/replica?lag=2000ms"
            )
            .0,
            200
        );
        let (_, status) = http_get(&cluster.nodes[leader].metrics_url(), "/status");
        let status: Value = serde_json::from_str(&status).expect("JSON");
        let cut_id = format!("{:x}", cluster.nodes[cut].id);
        let cut_view = status["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["id"] == cut_id.as_str())
            .expect("the cut member is listed")
            .clone();
        assert!(
            cut_view["lag_ms"].as_u64() > Some(500),
            "the leader sees the cut member's last ack age: {cut_view}"
        );

        // A leader change is counted and listed by the members that see it.
        cluster.cut_links(cut, &[]).await;
        cluster.kill(leader);
        let survivor = healthy_follower;
        let url = cluster.nodes[survivor].metrics_url();
        cluster
            .eventually(Duration::from_secs(30), "a new leader is seen", || {
                let url = url.clone();
                async move {
                    let (_, scrape) = http_get(&url, "/metrics");
                    match sample(&scrape, "quorumdb_server_leader_changes_seen_total") {
                        Some(changes) if changes >= 2.0 => Ok(()),
                        other => Err(format!("leader changes seen: {other:?}")),
                    }
                }
            })
            .await;
        let (_, status) = http_get(&url, "/status");
        let status: Value = serde_json::from_str(&status).expect("JSON");
        assert!(
            status["leader_changes"].as_array().map(Vec::len) >= Some(2),
            "{status}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_served_as_html_that_polls_status() {
    in_time(async {
        let cluster = Cluster::start(3);
        cluster.wait_for_leader().await;
        let (status, page) = http_get(&cluster.nodes[0].metrics_url(), "/");
        assert_eq!(status, 200);
        assert!(page.contains("<title>QuorumDB status</title>"));
        assert!(page.contains(r#"fetch("status""#), "the page polls /status");
        assert_eq!(http_get(&cluster.nodes[0].metrics_url(), "/nowhere").0, 404);
    })
    .await;
}
