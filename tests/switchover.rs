//! Switchover (Maintenance.MoveLeader) under a stream of writes: leadership moves, no
//! acknowledged write is lost, and the write pause it causes is measured and printed (a figure
//! for the notes, not asserted: this machine is shared and noisy).

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use etcd_client::GetOptions;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const SWITCHOVERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_under_writes_loses_nothing_and_its_pause_is_measured() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = Cluster::start(3);
        let mut leader = cluster.wait_for_leader().await;
        let endpoints = cluster.endpoints();
        let mut writer = etcd_client::Client::connect(endpoints, None)
            .await
            .expect("connect");
        let mut acknowledged = Vec::new();
        let mut pauses = Vec::new();
        let mut i = 0;
        for round in 0..SWITCHOVERS {
            // Steady writes, then a switchover while writing goes on in this task.
            for _ in 0..50 {
                writer.put(format!("sw/{i:05}"), "v", None).await.expect("steady put");
                acknowledged.push(i);
                i += 1;
            }
            let target = cluster.followers(leader)[round % 2];
            let target_id = cluster.nodes[target].id;
            let mut on_leader = cluster.client(leader).await;
            let move_leader = tokio::spawn(async move { on_leader.move_leader(target_id).await });
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            while !move_leader.is_finished() {
                match writer.put(format!("sw/{i:05}"), "v", None).await {
                    Ok(_) => {
                        acknowledged.push(i);
                        longest = longest.max(last.elapsed());
                        last = Instant::now();
                    }
                    Err(e) => eprintln!("put {i} during the switchover: {e}"),
                }
                i += 1;
            }
            move_leader.await.expect("task").expect("move leader");
            // The first write after the move finishes the measurement.
            writer.put(format!("sw/{i:05}"), "v", None).await.expect("put after the move");
            acknowledged.push(i);
            i += 1;
            longest = longest.max(last.elapsed());
            pauses.push(longest);
            leader = cluster.wait_for_leader().await;
            assert_eq!(leader, target, "leadership moved to the target");
        }
        pauses.sort();
        eprintln!(
            "switchover write pause (longest gap between acknowledged puts) over {SWITCHOVERS} moves: {pauses:?}"
        );

        let mut client = cluster.client(leader).await;
        let stored = client
            .get("sw/", Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .expect("read");
        let stored: std::collections::BTreeSet<String> = stored
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        for i in acknowledged {
            assert!(stored.contains(&format!("sw/{i:05}")), "sw/{i:05} was acknowledged");
        }
    })
    .await
    .expect("the test finished in time");
}
