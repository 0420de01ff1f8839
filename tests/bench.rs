//! `quorumdb bench` against a real node: it drives load over the etcd API, reports figures that
//! hang together and failures with the server's message, stops by itself, and refuses nonsense
//! flags with usage exit code 2.

mod common;

use std::process::Command;

use common::Cluster;
use serde_json::Value;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quorumdb"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run quorumdb bench")
}

fn report(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("bench --json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_puts_and_reads_and_reports_consistent_figures() {
    let cluster = Cluster::start(1);
    cluster.wait_for_leader().await;
    let endpoint = cluster.nodes[0].client_url();

    let puts = report(&bench(&[
        "--endpoints",
        &endpoint,
        "--clients",
        "4",
        "--conns",
        "2",
        "--duration",
        "1",
        "--seed",
        "7",
        "--json",
    ]));
    let ok = puts["requests_ok"].as_u64().unwrap();
    assert!(ok > 0, "{puts}");
    assert_eq!(puts["errors"].as_object().unwrap().len(), 0, "{puts}");
    assert_eq!(puts["seed"].as_u64(), Some(7));
    let latency = &puts["latency_ms"];
    let ordered: Vec<f64> = ["min", "p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| latency[k].as_f64().unwrap())
        .collect();
    assert!(
        ordered.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {latency}"
    );
    let qps = puts["qps"].as_f64().unwrap();
    let duration = puts["duration_secs"].as_f64().unwrap();
    assert!(
        (qps * duration - ok as f64).abs() < 1.0,
        "qps disagrees with count and duration: {puts}"
    );

    // A fixed total stops the run at exactly that many requests.
    let reads = report(&bench(&[
        "--endpoints",
        &endpoint,
        "--workload",
        "range-serializable",
        "--total",
        "200",
        "--clients",
        "3",
        "--sequential-keys",
        "--json",
    ]));
    assert_eq!(reads["requests_ok"].as_u64(), Some(200), "{reads}");

    // The keys the put run wrote are there: the tool really wrote through the etcd API.
    let mut client = cluster.client(0).await;
    let count = client
        .get(
            "0",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count the keys");
    assert!(count.count() > 0, "bench wrote no keys");

    // Failures are counted by code, with the server's own message, so a report says the cause.
    let too_large = report(&bench(&[
        "--endpoints",
        &endpoint,
        "--val-size",
        "1600000",
        "--total",
        "3",
        "--json",
    ]));
    assert_eq!(too_large["requests_ok"].as_u64(), Some(0), "{too_large}");
    assert_eq!(too_large["errors"]["InvalidArgument"].as_u64(), Some(3));
    let sample = &too_large["error_samples"]["InvalidArgument"];
    assert!(
        sample["first_message"]
            .as_str()
            .unwrap()
            .contains("request is too large"),
        "{too_large}"
    );
    assert!(
        sample["first_at_secs"].as_f64().unwrap() <= sample["last_at_secs"].as_f64().unwrap(),
        "{too_large}"
    );
}

#[test]
fn bench_refuses_nonsense_flags_with_a_usage_error() {
    for args in [
        &["--clients", "0"][..],
        &["--duration", "0"][..],
        &["--key-size", "2", "--key-space", "1000"][..],
        &["--read-ratio", "1.5"][..],
    ] {
        let output = bench(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("invalid benchmark"),
            "{args:?}"
        );
    }
}
