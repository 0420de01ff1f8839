//! The `quorumdb` command line against a live three-node cluster: golden files of its table,
//! simple and JSON output (tests/golden/cli/), and its exit codes.
//!
//! Output that differs from run to run (ports, cluster id, terms, raft indexes, db sizes,
//! latencies) is masked before the comparison; everything else must match byte for byte. To
//! accept a deliberate change of the output, run with `UPDATE_GOLDEN=1` and review the diff.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;

use common::Cluster;
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs `quorumdb ARGS --endpoints ENDPOINTS` with `stdin`.
fn quorumdb(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quorumdb"));
    command.args(args).args(["--endpoints", endpoints]);
    if !args.contains(&"--timeout") {
        command.args(["--timeout", "5s"]);
    }
    command
        .env_remove("QUORUMDB_ENDPOINTS")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn quorumdb");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("quorumdb ran")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// Asserts the exit code, showing stderr when it is not the expected one.
fn expect_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: exit code\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

struct Golden {
    cluster_urls: Vec<(String, String)>,
    mismatches: Vec<String>,
}

impl Golden {
    fn new(cluster: &Cluster) -> Golden {
        let mut cluster_urls = Vec::new();
        for node in &cluster.nodes {
            cluster_urls.push((node.client_url(), format!("<{}>", node.name)));
            cluster_urls.push((node.peer_url(), format!("<{}-peer>", node.name)));
        }
        Golden {
            cluster_urls,
            mismatches: Vec::new(),
        }
    }

    fn urls_replaced(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (url, name) in &self.cluster_urls {
            text = text.replace(url, name);
        }
        text
    }

    /// Checks `actual` (after masking) against tests/golden/cli/NAME.
    fn check(&mut self, name: &str, actual: &str) {
        let actual = self.urls_replaced(actual);
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/cli")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&path, &actual).expect("write golden file");
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        if expected != actual {
            self.mismatches.push(format!(
                "--- {name} expected ---\n{expected}--- {name} actual ---\n{actual}"
            ));
        }
    }

    fn assert_all_matched(&self) {
        assert!(
            self.mismatches.is_empty(),
            "output differs from the golden files:\n{}",
            self.mismatches.join("\n")
        );
    }
}

/// A table with the cells of `columns` replaced by `*`, one line per row with cells joined by
/// ` | ` and rules shortened (widths depend on masked values and port numbers, so they are not
/// compared).
fn mask_table(table: &str, columns: &[&str]) -> String {
    let mut masked_indexes = Vec::new();
    let mut out = String::new();
    let mut header_seen = false;
    for line in table.lines() {
        if line.starts_with('+') {
            out.push_str("+--+\n");
            continue;
        }
        if !line.starts_with('|') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if !header_seen {
            header_seen = true;
            masked_indexes = cells
                .iter()
                .enumerate()
                .filter(|(_, cell)| columns.contains(cell))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(masked_indexes.len(), columns.len(), "columns in {table}");
            out.push_str(&cells.join(" | "));
        } else {
            let cells: Vec<&str> = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    if masked_indexes.contains(&i) {
                        "*"
                    } else {
                        cell
                    }
                })
                .collect();
            out.push_str(&cells.join(" | "));
        }
        out.push('\n');
    }
    out
}

/// JSON with every field named in `fields`, at any depth, replaced by `"*"`.
fn mask_json(text: &str, fields: &[&str]) -> String {
    fn mask(value: &mut Value, fields: &[&str]) {
        match value {
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if fields.contains(&key.as_str()) {
                        *value = Value::String("*".to_string());
                    } else {
                        mask(value, fields);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| mask(v, fields)),
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_str(text).expect("the output is JSON");
    mask(&mut value, fields);
    let mut text = serde_json::to_string_pretty(&value).expect("serialize");
    text.push('\n');
    text
}

const HEADER_FIELDS: &[&str] = &["cluster_id", "member_id", "raft_term"];

/// Makes n1 the leader, so roles in the status table are the same on every run.
async fn lead_with_n1(cluster: &Cluster) {
    cluster.lead_with(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_output_matches_the_golden_tables_lines_and_json() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = Cluster::start(3);
        cluster.wait_for_leader().await;
        lead_with_n1(&cluster).await;
        let endpoints = cluster.endpoints().join(",");
        let run = |args: &[&str]| {
            let output = quorumdb(&endpoints, args, None);
            expect_exit(&output, 0, &args.join(" "));
            stdout(&output)
        };
        let mut golden = Golden::new(&cluster);

        let mut puts = String::new();
        for args in [
            &["put", "greeting", "hello"][..],
            &["put", "fruit/apple", "red"],
            &["put", "fruit/banana", "yellow"],
            &["put", "fruit/cherry", "dark red"],
            &["put", "fruit/apple", "green", "--prev-kv"],
        ] {
            puts.push_str(&format!("$ {}\n{}", args.join(" "), run(args)));
        }
        golden.check("put.txt", &puts);
        golden.check("get_prefix_table.txt", &run(&["get", "fruit/", "--prefix"]));
        golden.check(
            "get_sorted_limited_table.txt",
            &run(&[
                "get", "fruit/", "--prefix", "--sort-by", "value", "--order", "descend",
                "--limit", "2",
            ]),
        );
        golden.check(
            "get_simple.txt",
            &run(&["get", "fruit/", "--prefix", "-w", "simple"]),
        );
        golden.check(
            "get_print_value_only.txt",
            &run(&["get", "fruit/", "--prefix", "--print-value-only"]),
        );
        golden.check(
            "get_keys_only_table.txt",
            &run(&["get", "", "--from-key", "--keys-only"]),
        );
        golden.check(
            "get_count_only_table.txt",
            &run(&["get", "fruit/", "--prefix", "--count-only"]),
        );
        golden.check(
            "get_at_revision_json.txt",
            &mask_json(
                &run(&["get", "fruit/apple", "--rev", "3", "-w", "json"]),
                HEADER_FIELDS,
            ),
        );
        golden.check(
            "get_session_json.txt",
            &mask_json(
                &run(&["get", "greeting", "--consistency", "session", "-w", "json"]),
                HEADER_FIELDS,
            ),
        );

        let script = "value(\"fruit/apple\") = \"green\"\n\nput fruit/apple ripe\nget fruit/banana\n\nget fruit/apple\n";
        let txn = quorumdb(&endpoints, &["txn"], Some(script));
        expect_exit(&txn, 0, "txn from stdin");
        golden.check("txn_success.txt", &stdout(&txn));
        let txn = quorumdb(&endpoints, &["txn", "-w", "json"], Some(script));
        expect_exit(&txn, 0, "txn again: the compare now fails");
        golden.check("txn_failure_json.txt", &mask_json(&stdout(&txn), HEADER_FIELDS));

        golden.check("del_prev_kv.txt", &run(&["del", "fruit/b", "fruit/d", "--prev-kv"]));
        golden.check(
            "del_json.txt",
            &mask_json(&run(&["del", "greeting", "-w", "json"]), HEADER_FIELDS),
        );

        // Members publish their client URLs shortly after they start: wait for all three.
        cluster
            .eventually(Duration::from_secs(30), "every member published its URL", || {
                let output = quorumdb(&endpoints, &["member", "list", "-w", "json"], None);
                async move {
                    let list: Value =
                        serde_json::from_str(&stdout(&output)).map_err(|e| e.to_string())?;
                    let published = list["members"]
                        .as_array()
                        .ok_or("no members")?
                        .iter()
                        .filter(|m| m["client_urls"].as_array().is_some_and(|u| !u.is_empty()))
                        .count();
                    if published == 3 {
                        Ok(())
                    } else {
                        Err(format!("{published} of 3 published"))
                    }
                }
            })
            .await;
        golden.check(
            "member_list_table.txt",
            &mask_table(&run(&["member", "list"]), &[]),
        );
        golden.check(
            "member_list_json.txt",
            &run(&["member", "list", "-w", "json"]),
        );

        // Lag is 0 only once every member applied everything: wait for it, then compare.
        let settled = cluster
            .eventually(Duration::from_secs(30), "every member applied the log", || {
                let output = quorumdb(&endpoints, &["endpoint", "status", "-w", "json"], None);
                async move {
                    let text = stdout(&output);
                    let rows: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                    let lags: Vec<&Value> = rows
                        .as_array()
                        .ok_or("not an array")?
                        .iter()
                        .map(|row| &row["lag"])
                        .collect();
                    if output.status.success() && lags.iter().all(|lag| lag.as_u64() == Some(0)) {
                        Ok(text)
                    } else {
                        Err(format!("lags {lags:?}"))
                    }
                }
            })
            .await;
        golden.check(
            "endpoint_status_json.txt",
            &mask_json(
                &settled,
                &["raft_term", "raft_index", "raft_applied_index", "db_size"],
            ),
        );
        golden.check(
            "endpoint_status_table.txt",
            &mask_table(
                &run(&["endpoint", "status"]),
                &["RAFT TERM", "RAFT INDEX", "APPLIED INDEX", "DB SIZE"],
            ),
        );
        golden.check(
            "endpoint_health_table.txt",
            &mask_table(&run(&["endpoint", "health"]), &["TOOK"]),
        );
        golden.check(
            "endpoint_health_json.txt",
            &mask_json(&run(&["endpoint", "health", "-w", "json"]), &["took_ms"]),
        );
        golden.assert_all_matched();
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_say_done_failed_usage_or_unknown() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = Cluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let endpoints = cluster.endpoints().join(",");

        let done = quorumdb(&endpoints, &["put", "k", "v"], None);
        expect_exit(&done, 0, "a put");

        // Failed, nothing applied: a future revision, an empty key.
        let future = quorumdb(&endpoints, &["get", "k", "--rev", "1000"], None);
        expect_exit(&future, 1, "a read at a future revision");
        assert!(String::from_utf8_lossy(&future.stderr).contains("future revision"));
        expect_exit(
            &quorumdb(&endpoints, &["put", "", "v"], None),
            1,
            "an empty key",
        );

        // Usage: a missing argument, an unknown flag, a transaction script it cannot parse.
        expect_exit(
            &quorumdb(&endpoints, &["get"], None),
            2,
            "get without a key",
        );
        expect_exit(
            &quorumdb(&endpoints, &["get", "k", "--frobnicate"], None),
            2,
            "an unknown flag",
        );
        let bad_txn = quorumdb(&endpoints, &["txn"], Some("size(\"k\") = \"1\"\n\n\n"));
        expect_exit(&bad_txn, 2, "an unparsable txn");
        assert!(String::from_utf8_lossy(&bad_txn.stderr).contains("unknown target"));
        expect_exit(
            &quorumdb(&endpoints, &["get", "k", "--consistency", "eventual"], None),
            2,
            "an unknown consistency",
        );

        // A lost response is retried under the write's number: applied once, exit 0.
        cluster.drop_write_responses(leader, 1).await;
        let retried = quorumdb(&endpoints, &["put", "once", "v"], None);
        expect_exit(&retried, 0, "a put whose first response was lost");
        let version = quorumdb(&endpoints, &["get", "once", "-w", "json"], None);
        let version: Value = serde_json::from_str(&stdout(&version)).expect("JSON");
        assert_eq!(version["kvs"][0]["version"], 1, "applied once: {version}");

        // Every answer lost until the deadline: the outcome is unknown, exit 3, and the put was
        // in fact applied (once), which is why the CLI must not say "failed".
        for index in 0..3 {
            cluster.drop_write_responses(index, 1000).await;
        }
        let unknown = quorumdb(&endpoints, &["put", "lost", "v", "--timeout", "2s"], None);
        expect_exit(&unknown, 3, "a put whose every response was lost");
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown"));
        for index in 0..3 {
            cluster.drop_write_responses(index, 0).await;
        }
        let lost = quorumdb(&endpoints, &["get", "lost", "-w", "json"], None);
        let lost: Value = serde_json::from_str(&stdout(&lost)).expect("JSON");
        assert_eq!(lost["kvs"][0]["version"], 1, "applied exactly once: {lost}");
    })
    .await
    .expect("the test finished in time");
}
