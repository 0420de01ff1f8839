//! `--log-format json`: every log line is one JSON object, and the events an operator looks for
//! (leader changes, membership changes) are logged at info.

mod common;

use std::time::Duration;

use common::Cluster;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_record_leader_and_membership_changes() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Cluster::start_with_args(3, &["--log-format", "json"]);
        let leader = cluster.wait_for_leader().await;
        // Members publish their client URLs through a membership change.
        cluster
            .eventually(Duration::from_secs(30), "events logged", || {
                let log = cluster.nodes[leader].log();
                async move {
                    let lines: Vec<Value> = log
                        .lines()
                        .map(|line| {
                            serde_json::from_str(line)
                                .map_err(|e| format!("not JSON ({e}): {line}"))
                        })
                        .collect::<Result<_, _>>()?;
                    let messages: Vec<&str> = lines
                        .iter()
                        .filter(|line| line["level"] == "INFO")
                        .filter_map(|line| line["fields"]["message"].as_str())
                        .collect();
                    for wanted in ["leader changed", "membership changed"] {
                        if !messages.contains(&wanted) {
                            return Err(format!("no {wanted:?} at info yet: {messages:?}"));
                        }
                    }
                    Ok(())
                }
            })
            .await;
    })
    .await
    .expect("the test finished in time");
}
