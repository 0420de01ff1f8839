//! Automatic compaction (etcd's `--auto-compaction-mode periodic`) against real processes: old
//! history is compacted away by the leader on its own, while recent history stays readable.

mod common;

use std::time::Duration;

use common::Cluster;
use etcd_client::GetOptions;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_drops_history_older_than_the_retention() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = Cluster::start_with_args(
            3,
            &[
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention",
                "2s",
            ],
        );
        let leader = cluster.wait_for_leader().await;
        let mut client = cluster.client(leader).await;
        let first = client.put("k", "v1", None).await.expect("put");
        let old_revision = first.header().expect("header").revision();
        for i in 2..=5 {
            client.put("k", format!("v{i}"), None).await.expect("put");
        }
        cluster
            .eventually(Duration::from_secs(30), "old history is compacted", || {
                let mut client = client.clone();
                async move {
                    match client
                        .get("k", Some(GetOptions::new().with_revision(old_revision)))
                        .await
                    {
                        Err(e)
                            if e.to_string()
                                .contains("required revision has been compacted") =>
                        {
                            Ok(())
                        }
                        other => Err(format!("a read at {old_revision}: {other:?}")),
                    }
                }
            })
            .await;
        // The current value and a revision written just now stay readable.
        let recent = client.put("k", "latest", None).await.expect("put");
        let revision = recent.header().expect("header").revision();
        let read = client
            .get("k", Some(GetOptions::new().with_revision(revision)))
            .await
            .expect("a revision younger than the retention is kept");
        assert_eq!(read.kvs()[0].value(), b"latest");
    })
    .await
    .expect("the test finished in time");
}
