//! The CPU scheduling policy of a server's threads (`--cpu-scheduling`): every thread a
//! `quorumdb server` process runs, including the ones the store and the runtime start, is under
//! the policy the flag names, SCHED_BATCH unless told otherwise.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use common::Cluster;

/// Linux's policy numbers (sched.h), as /proc shows them.
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// The policies the threads of `pid` run under, by thread name: field 41 of each
/// `/proc/<pid>/task/<tid>/stat` (after the parenthesised name, which may hold spaces).
fn policies_by_thread_name(pid: u32) -> BTreeMap<String, BTreeSet<u32>> {
    let mut policies: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's tasks") {
        // A thread may end between the listing and the read (tokio's idle blocking threads).
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue;
        };
        let (head, fields) = stat
            .rsplit_once(')')
            .expect("stat has the name in parentheses");
        let name = head
            .split_once('(')
            .expect("stat has the name")
            .1
            .to_string();
        // `fields` starts at field 3 (state): field 41 is its 39th.
        let policy = fields
            .split_whitespace()
            .nth(38)
            .expect("field 41")
            .parse()
            .unwrap();
        policies.entry(name).or_default().insert(policy);
    }
    policies
}

/// Writes once (so the store's and the runtime's threads exist), then reads the policies.
async fn policies_after_a_write(cluster: &Cluster) -> BTreeMap<String, BTreeSet<u32>> {
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    client.put("k", "v", None).await.expect("put");
    let policies = policies_by_thread_name(cluster.nodes[0].pid());
    for name in ["tokio-rt-worker", "log flusher"] {
        assert!(
            policies.contains_key(name),
            "no {name:?} thread among {policies:?}"
        );
    }
    policies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_thread_runs_under_sched_batch_unless_told_normal() {
    let cluster = Cluster::start(1);
    let policies = policies_after_a_write(&cluster).await;
    assert!(
        policies
            .values()
            .all(|set| *set == BTreeSet::from([SCHED_BATCH])),
        "threads not under SCHED_BATCH by default: {policies:?}"
    );
    assert!(
        !cluster
            .logs()
            .contains("cannot set the CPU scheduling policy")
    );
    drop(cluster);

    let cluster = Cluster::start_with_args(1, &["--cpu-scheduling", "normal"]);
    let policies = policies_after_a_write(&cluster).await;
    assert!(
        policies
            .values()
            .all(|set| *set == BTreeSet::from([SCHED_OTHER])),
        "threads not under SCHED_OTHER with --cpu-scheduling normal: {policies:?}"
    );
}
