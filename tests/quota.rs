//! The space quota (etcd's `--quota-backend-bytes`) against real processes: past it the NOSPACE
//! alarm is raised cluster-wide, writes that add data are refused with etcd's error while reads
//! and deletes go on, the alarm shows in Alarm GET and Status, and disarming it clears it.

mod common;

use std::time::Duration;

use common::Cluster;
use etcd_client::AlarmAction;
use etcd_client::AlarmOptions;
use etcd_client::AlarmType;
use tonic::Code;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// Small enough that a few hundred KiB of values exceed it.
const QUOTA_BYTES: &str = "262144";
const VALUE_BYTES: usize = 16 * 1024;
const PUTS_MAX: usize = 200;

fn for_member(id: u64) -> AlarmOptions {
    let mut options = AlarmOptions::new();
    options.with_member(id);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_quota_puts_are_refused_until_the_nospace_alarm_is_disarmed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = Cluster::start_with_args(3, &["--quota-backend-bytes", QUOTA_BYTES]);
        let leader = cluster.wait_for_leader().await;
        let follower = cluster.followers(leader)[0];
        let mut client = cluster.client(leader).await;

        let value = "x".repeat(VALUE_BYTES);
        let mut refused = None;
        for i in 0..PUTS_MAX {
            match client.put(format!("big/{i}"), value.as_str(), None).await {
                Ok(_) => {}
                Err(etcd_client::Error::GRpcStatus(status)) => {
                    refused = Some((i, status));
                    break;
                }
                Err(other) => panic!("put {i}: {other}"),
            }
        }
        let (accepted, status) = refused.expect("the quota was reached within the bound");
        assert!(accepted > 0, "some puts fit under the quota");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: database space exceeded"
        );

        // Cluster-wide: a follower refuses too, and reports the alarm.
        let mut on_follower = cluster.client(follower).await;
        let refused = on_follower
            .put("small", "v", None)
            .await
            .expect_err("refused on every member");
        assert!(
            refused.to_string().contains("database space exceeded"),
            "{refused}"
        );
        let alarms = on_follower
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("alarm list");
        // Each member past the quota raises its own alarm (the follower just did, on its put).
        let raised: Vec<u64> = alarms.alarms().iter().map(|a| a.member_id()).collect();
        assert!(
            alarms
                .alarms()
                .iter()
                .all(|a| a.alarm() == AlarmType::Nospace),
            "only NOSPACE"
        );
        assert!(raised.contains(&cluster.nodes[leader].id), "{raised:?}");
        let status = on_follower.status().await.expect("status");
        assert!(
            status.errors().iter().any(|e| e.contains("alarm:NOSPACE")),
            "{:?}",
            status.errors()
        );

        // Reads and deletes still work: that is how space is freed.
        let read = client.get("big/0", None).await.expect("reads go on");
        assert_eq!(read.kvs().len(), 1);
        client
            .delete("big/0", None)
            .await
            .expect("deletes go on under NOSPACE");

        // Disarm: each raised alarm answers once, then it is gone everywhere.
        for member in &raised {
            let cleared = client
                .alarm(
                    AlarmAction::Deactivate,
                    AlarmType::Nospace,
                    Some(for_member(*member)),
                )
                .await
                .expect("disarm");
            assert_eq!(cleared.alarms().len(), 1, "it answers the alarm it removed");
        }
        let alarms = on_follower
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("alarm list");
        assert!(alarms.alarms().is_empty());
        let again = client
            .alarm(
                AlarmAction::Deactivate,
                AlarmType::Nospace,
                Some(for_member(cluster.nodes[leader].id)),
            )
            .await
            .expect("disarm again");
        assert!(again.alarms().is_empty(), "nothing left to remove");
    })
    .await
    .expect("the test finished in time");
}
