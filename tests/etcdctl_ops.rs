//! Operating a live three-node cluster with the real `etcdctl` (3.4, Debian's etcd-client), as
//! an operator following etcd's documentation would: membership (add a learner, start it,
//! promote it once it has caught up, remove it), leader transfer, backups, alarms, compaction,
//! replica hashes and defragmentation. Each command's output and exit code must be what etcd's
//! would be.
//!
//! Needs `etcdctl` on PATH: `./scripts/test.sh` installs it (CI runs exactly that script);
//! elsewhere `apt-get install -y etcd-client`. Without it the tests fail instead of skipping.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use common::Cluster;
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// Upper bound on one etcdctl run; its own command timeout is 5 s, its dial timeout 2 s.
const ETCDCTL_RUN_MAX: Duration = Duration::from_secs(30);
/// How long a started learner may take to catch up before promote must succeed.
const CATCH_UP_MAX: Duration = Duration::from_secs(60);
/// How long members may take to agree after a change (apply, publish, elect).
const SETTLE_MAX: Duration = Duration::from_secs(30);
/// etcdctl's exit code for an error from the server (`ExitError`).
const EXIT_ERROR: i32 = 1;
/// etcdctl's exit code for arguments it cannot act on (`ExitBadArgs`).
const EXIT_BAD_ARGS: i32 = 128;
const COMPACTED: &str = "Error: etcdserver: mvcc: required revision has been compacted";

fn etcdctl_program() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("etcdctl"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "etcdctl is not installed: run ./scripts/test.sh (it installs etcd-client; CI \
                 runs it) or `apt-get install -y etcd-client` (Debian)"
            )
        })
}

/// What one etcdctl run printed, and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Standard output of a run that must have succeeded.
    fn ok(self, what: &str) -> String {
        assert_eq!(
            self.code, 0,
            "etcdctl {what} failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Standard error of a run that must have failed with `code`.
    fn failed(self, what: &str, code: i32) -> String {
        assert_eq!(
            self.code, code,
            "etcdctl {what} must fail:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stderr
    }

    fn json(self, what: &str) -> Value {
        let stdout = self.ok(what);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("etcdctl {what} printed no JSON ({e}): {stdout}"))
    }
}

/// Runs `ETCDCTL_API=3 etcdctl --endpoints=<endpoints> <args>`, bounded by [`ETCDCTL_RUN_MAX`]
/// (killed past it).
async fn etcdctl(program: &Path, endpoints: &[String], args: &[&str]) -> Run {
    let run = tokio::process::Command::new(program)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(ETCDCTL_RUN_MAX, run)
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish within {ETCDCTL_RUN_MAX:?}"))
        .expect("run etcdctl");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).expect("etcdctl prints UTF-8"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// One member of `member list -w json` (ids are decimal there).
#[derive(Debug, PartialEq)]
struct Listed {
    id: u64,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    is_learner: bool,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn member_list(program: &Path, endpoints: &[String]) -> Vec<Listed> {
    let list = etcdctl(program, endpoints, &["member", "list", "-w", "json"])
        .await
        .json("member list");
    let mut members: Vec<Listed> = list["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {list}"))
        .iter()
        .map(|member| Listed {
            id: member["ID"].as_u64().expect("a member ID"),
            name: member["name"].as_str().unwrap_or_default().to_string(),
            peer_urls: strings(&member["peerURLs"]),
            client_urls: strings(&member["clientURLs"]),
            // etcd leaves false fields out of its JSON.
            is_learner: member["isLearner"].as_bool().unwrap_or(false),
        })
        .collect();
    members.sort_by_key(|member| member.id);
    members
}

/// The members as they must be listed once every running node has published its client URL.
fn expected_members(cluster: &Cluster) -> Vec<Listed> {
    let mut members: Vec<Listed> = cluster
        .nodes
        .iter()
        .filter(|node| node.is_running())
        .map(|node| Listed {
            id: node.id,
            name: node.name.clone(),
            peer_urls: vec![node.peer_url()],
            client_urls: vec![node.client_url()],
            is_learner: false,
        })
        .collect();
    members.sort_by_key(|member| member.id);
    members
}

/// Waits until `member list` shows exactly the running nodes, all voters, all published.
async fn wait_for_members(cluster: &Cluster, program: &Path, endpoints: &[String]) {
    let expected = expected_members(cluster);
    cluster
        .eventually(SETTLE_MAX, "member list shows the running nodes", || {
            let expected = &expected;
            async move {
                let listed = member_list(program, endpoints).await;
                if listed == *expected {
                    Ok(())
                } else {
                    Err(format!("{listed:?}"))
                }
            }
        })
        .await;
}

/// The member id in etcdctl's `Member <hex> <verb> ... cluster <hex>` line (ids printed `%16x`,
/// so a short one is padded with spaces).
fn member_line_id(stdout: &str, verb: &str) -> u64 {
    let line = stdout.lines().next().unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        words.len() == 6 && words[0] == "Member" && words[2] == verb && words[4] == "cluster",
        "not `Member <id> {verb} ... cluster <id>`: {stdout}"
    );
    u64::from_str_radix(words[1], 16).unwrap_or_else(|e| panic!("id {}: {e}", words[1]))
}

/// Every endpoint's `endpoint status -w json` view of the leader (decimal ids).
async fn leaders_seen(program: &Path, endpoints: &[String]) -> Vec<u64> {
    let statuses = etcdctl(program, endpoints, &["endpoint", "status", "-w", "json"])
        .await
        .json("endpoint status");
    let statuses = statuses.as_array().expect("an array of statuses");
    assert_eq!(statuses.len(), endpoints.len(), "{statuses:?}");
    statuses
        .iter()
        .map(|status| status["Status"]["leader"].as_u64().unwrap_or(0))
        .collect()
}

async fn in_time(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_adds_promotes_and_removes_a_learner_and_moves_the_leader() {
    let program = etcdctl_program();
    let program = program.as_path();
    let mut cluster = Cluster::start(3);
    in_time(async {
        cluster.wait_for_leader().await;
        let endpoints = cluster.endpoints();
        wait_for_members(&cluster, program, &endpoints).await;

        // Add n4 as a learner: etcdctl prints its id and the settings to start it with.
        let n4 = cluster.add_node();
        let peer_url = cluster.nodes[n4].peer_url();
        let added = etcdctl(
            program,
            &endpoints,
            &[
                "member",
                "add",
                "n4",
                &format!("--peer-urls={peer_url}"),
                "--learner",
            ],
        )
        .await
        .ok("member add");
        let id = member_line_id(&added, "added");
        let hex_id = format!("{id:x}");
        for setting in [
            r#"ETCD_NAME="n4""#.to_string(),
            format!(r#"ETCD_INITIAL_ADVERTISE_PEER_URLS="{peer_url}""#),
            r#"ETCD_INITIAL_CLUSTER_STATE="existing""#.to_string(),
        ] {
            assert!(
                added.lines().any(|line| line == setting),
                "{setting} in {added}"
            );
        }
        let initial_cluster = added
            .lines()
            .find_map(|line| line.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {added}"));
        let initial_cluster: Vec<&str> = initial_cluster.trim_matches('"').split(',').collect();
        let expected_initial_cluster = cluster
            .nodes
            .iter()
            .map(|node| format!("{}={}", node.name, node.peer_url()));
        for member in expected_initial_cluster {
            assert!(
                initial_cluster.contains(&member.as_str()),
                "{member} in ETCD_INITIAL_CLUSTER: {added}"
            );
        }
        assert_eq!(initial_cluster.len(), 4, "{added}");
        cluster.nodes[n4].id = id;
        // etcd 3.4's MemberList answers from the member asked, which may not have the change yet.
        let listed = cluster
            .eventually(
                SETTLE_MAX,
                "member list shows the added learner",
                || async {
                    let listed = member_list(program, &endpoints).await;
                    if listed.iter().any(|member| member.id == id) {
                        Ok(listed)
                    } else {
                        Err(format!("{hex_id} not listed: {listed:?}"))
                    }
                },
            )
            .await;
        let learner = listed
            .iter()
            .find(|member| member.id == id)
            .expect("listed");
        assert!(learner.is_learner, "added as a learner: {learner:?}");
        assert_eq!(learner.peer_urls, [peer_url.as_str()]);
        assert_eq!(listed.len(), 4, "{listed:?}");

        // A learner that has never answered the leader is not in sync: etcd's refusal.
        let refused = etcdctl(program, &endpoints, &["member", "promote", &hex_id])
            .await
            .failed("member promote (not started)", EXIT_ERROR);
        assert!(
            refused.contains(
                "Error: etcdserver: can only promote a learner member which is in sync with leader"
            ),
            "{refused}"
        );

        cluster.restart(n4);
        let promoted = cluster
            .eventually(CATCH_UP_MAX, "n4 is promoted", || {
                let hex_id = hex_id.clone();
                let endpoints = &endpoints;
                async move {
                    let run = etcdctl(program, endpoints, &["member", "promote", &hex_id]).await;
                    match run.code {
                        0 => Ok(run.stdout),
                        _ => Err(run.stderr),
                    }
                }
            })
            .await;
        assert_eq!(member_line_id(&promoted, "promoted"), id, "{promoted}");
        let with_n4 = cluster.endpoints();
        wait_for_members(&cluster, program, &with_n4).await;

        // Remove it again; the original three remain, all voters.
        let removed = etcdctl(program, &endpoints, &["member", "remove", &hex_id])
            .await
            .ok("member remove");
        assert_eq!(member_line_id(&removed, "removed"), id, "{removed}");
        cluster.kill(n4);
        wait_for_members(&cluster, program, &endpoints).await;

        // move-leader asks each given endpoint for its status and sends the transfer to the one
        // that says it leads; given only a follower, etcdctl refuses before sending anything.
        let leader = cluster.wait_for_leader().await;
        let target = cluster.followers(leader)[0];
        let target_id = cluster.nodes[target].id;
        let refused = etcdctl(
            program,
            &[cluster.nodes[target].client_url()],
            &["move-leader", &format!("{target_id:x}")],
        )
        .await
        .failed("move-leader (a follower only)", EXIT_BAD_ARGS);
        assert!(refused.contains("no leader endpoint given at"), "{refused}");

        let moved = etcdctl(
            program,
            &[cluster.nodes[leader].client_url()],
            &["move-leader", &format!("{target_id:x}")],
        )
        .await
        .ok("move-leader");
        assert_eq!(
            moved,
            format!(
                "Leadership transferred from {:x} to {target_id:x}\n",
                cluster.nodes[leader].id
            )
        );
        cluster
            .eventually(SETTLE_MAX, "every member reports the new leader", || {
                let endpoints = &endpoints;
                async move {
                    let leaders = leaders_seen(program, endpoints).await;
                    if leaders.iter().all(|seen| *seen == target_id) {
                        Ok(())
                    } else {
                        Err(format!("leaders seen {leaders:?}, wanted {target_id}"))
                    }
                }
            })
            .await;
        assert_eq!(cluster.wait_for_leader().await, target);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_alarm_compaction_hashkv_and_defrag_answer_as_etcd_does() {
    let program = etcdctl_program();
    let program = program.as_path();
    let cluster = Cluster::start(3);
    in_time(async {
        let leader = cluster.wait_for_leader().await;
        let endpoints = cluster.endpoints();
        // `--cluster` dials the published client URLs.
        wait_for_members(&cluster, program, &endpoints).await;
        let one = [cluster.nodes[leader].client_url()];

        let mut revisions = Vec::new();
        for value in ["v1", "v2", "v3"] {
            let put = etcdctl(
                program,
                &endpoints,
                &["put", "ops/key", value, "-w", "json"],
            )
            .await
            .json("put");
            revisions.push(put["header"]["revision"].as_i64().expect("a revision"));
        }
        let (first, second, last) = (revisions[0], revisions[1], revisions[2]);
        assert!(first < second && second < last, "{revisions:?}");

        // A backup, from one member (etcdctl refuses several).
        let dir = tempfile::tempdir().expect("temporary directory");
        let backup = dir.path().join("backup.db");
        let backup_arg = backup.to_str().expect("UTF-8 path");
        let saved = etcdctl(program, &one, &["snapshot", "save", backup_arg])
            .await
            .ok("snapshot save");
        assert_eq!(saved, format!("Snapshot saved at {backup_arg}\n"));
        let size = std::fs::metadata(&backup).expect("the backup file").len();
        assert!(size > 0, "an empty backup");

        // No alarm raised: list prints nothing, disarm has nothing to clear.
        assert_eq!(
            etcdctl(program, &endpoints, &["alarm", "list"])
                .await
                .ok("alarm list"),
            ""
        );
        assert_eq!(
            etcdctl(program, &endpoints, &["alarm", "disarm"])
                .await
                .ok("alarm disarm"),
            ""
        );

        // Compact to the second revision: the first is gone on every member, the second stays.
        let compacted = etcdctl(program, &endpoints, &["compaction", &second.to_string()])
            .await
            .ok("compaction");
        assert_eq!(compacted, format!("compacted revision {second}\n"));
        for endpoint in &endpoints {
            let endpoint = [endpoint.clone()];
            let stderr = etcdctl(
                program,
                &endpoint,
                &["get", "ops/key", &format!("--rev={first}")],
            )
            .await
            .failed("get below the compaction", EXIT_ERROR);
            assert!(stderr.contains(COMPACTED), "{endpoint:?}: {stderr}");
            let kept = etcdctl(
                program,
                &endpoint,
                &["get", "ops/key", &format!("--rev={second}")],
            )
            .await
            .ok("get at the compaction");
            assert_eq!(kept, "ops/key\nv2\n", "{endpoint:?}");
        }
        let again = etcdctl(program, &endpoints, &["compaction", &second.to_string()])
            .await
            .failed("compaction again", EXIT_ERROR);
        assert!(again.contains(COMPACTED), "{again}");

        // Replicas agree: one hash at the same revision and compaction on every member.
        let one = &one;
        cluster
            .eventually(SETTLE_MAX, "equal hashes on every member", || async move {
                let hashes = etcdctl(
                    program,
                    one,
                    &["endpoint", "hashkv", "--cluster", "-w", "json"],
                )
                .await
                .json("endpoint hashkv");
                let hashes = hashes.as_array().expect("an array of hashes");
                let seen: Vec<(u64, i64, i64)> = hashes
                    .iter()
                    .map(|h| {
                        let hash = &h["HashKV"];
                        (
                            hash["hash"].as_u64().unwrap_or(0),
                            hash["header"]["revision"].as_i64().unwrap_or(0),
                            hash["compact_revision"].as_i64().unwrap_or(0),
                        )
                    })
                    .collect();
                let agreed = seen.len() == 3
                    && seen[0].0 != 0
                    && seen.iter().all(|s| *s == (seen[0].0, last, second));
                if agreed {
                    Ok(())
                } else {
                    Err(format!("(hash, revision, compact revision): {seen:?}"))
                }
            })
            .await;

        let defragmented = etcdctl(program, &endpoints, &["defrag"]).await.ok("defrag");
        let expected: String = endpoints
            .iter()
            .map(|endpoint| format!("Finished defragmenting etcd member[{endpoint}]\n"))
            .collect();
        assert_eq!(defragmented, expected);

        // Still a working cluster after all of it.
        assert_eq!(
            etcdctl(program, &endpoints, &["put", "ops/after", "x"])
                .await
                .ok("put"),
            "OK\n"
        );
    })
    .await;
}
