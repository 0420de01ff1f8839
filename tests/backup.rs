//! Backups end to end: `quorumdb snapshot save` from a live cluster under writes, `snapshot
//! restore` into a fresh three-node cluster, and the data equal up to the backup's revision
//! (checked key by key and with HashKV, which must also agree across replicas). etcdctl's
//! `snapshot save` stores the same stream.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Cluster;
use etcd_client::GetOptions;
use etcd_client::KeyValue;
use serde_json::Value;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
const WRITES_MAX: usize = 5_000;

fn quorumdb(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_quorumdb"))
        .args(args)
        .output()
        .expect("run quorumdb");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn summary(kvs: &[KeyValue]) -> Vec<(String, String, i64, i64, i64)> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_into_a_new_cluster_equal_up_to_its_revision() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let source = Cluster::start(3);
        let leader = source.wait_for_leader().await;
        let endpoints = source.endpoints().join(",");

        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let mut client = source.client(leader).await;
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut written = 0;
                for i in 0..WRITES_MAX {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // Overwrites too, so history matters: 50 keys, many versions each.
                    let key = format!("backup/{:02}", i % 50);
                    if client.put(key, format!("v{i}"), None).await.is_ok() {
                        written += 1;
                    }
                }
                written
            })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("cluster.backup");
        let file_text = file.to_str().expect("UTF-8 path");
        let (code, stdout, stderr) = quorumdb(&[
            "snapshot",
            "save",
            file_text,
            "--endpoints",
            &endpoints,
            "-w",
            "json",
        ]);
        assert_eq!(code, 0, "snapshot save: {stderr}");
        let saved: Value = serde_json::from_str(&stdout).expect("JSON");
        let revision = saved["revision"].as_i64().expect("revision");
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let written = writer.await.expect("writer");
        assert!(
            written > 20,
            "the writer wrote during the backup ({written})"
        );

        let (code, stdout, _) = quorumdb(&["snapshot", "status", file_text, "-w", "json"]);
        assert_eq!(code, 0);
        let status: Value = serde_json::from_str(&stdout).expect("JSON");
        assert_eq!(status["sha256"], saved["sha256"]);

        // A damaged copy is refused, and the restore writes nothing.
        let damaged = dir.path().join("damaged.backup");
        let mut bytes = std::fs::read(&file).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&damaged, bytes).expect("write");
        let refused_dir = dir.path().join("refused");
        let (code, _, stderr) = quorumdb(&[
            "snapshot",
            "restore",
            damaged.to_str().expect("UTF-8"),
            "--data-dir",
            refused_dir.to_str().expect("UTF-8"),
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("checksum"), "{stderr}");
        assert!(!refused_dir.exists());

        let restored = Cluster::start_with(3, |node| {
            let (code, _, stderr) = quorumdb(&[
                "snapshot",
                "restore",
                file_text,
                "--data-dir",
                node.data_dir.to_str().expect("UTF-8"),
            ]);
            assert_eq!(code, 0, "restore for {}: {stderr}", node.name);
        });
        let restored_leader = restored.wait_for_leader().await;

        let mut old = source.client(leader).await;
        let at_backup = old
            .get(
                "backup/",
                Some(GetOptions::new().with_prefix().with_revision(revision)),
            )
            .await
            .expect("the source at the backup's revision");
        for index in 0..3 {
            let mut new = restored.client(index).await;
            let now = new
                .get("backup/", Some(GetOptions::new().with_prefix()))
                .await
                .expect("linearizable read on the restored cluster");
            assert_eq!(
                summary(now.kvs()),
                summary(at_backup.kvs()),
                "n{} holds exactly the data at revision {revision}",
                index + 1
            );
            assert_eq!(
                now.header().expect("header").revision(),
                revision,
                "the restored cluster continues from the backup's revision"
            );
        }

        // HashKV: equal on every source replica at the backup's revision, and equal to the
        // restored cluster's hash of its (whole) history.
        let mut hashes = Vec::new();
        for index in 0..3 {
            let mut client = source.client(index).await;
            hashes.push(client.hash_kv(revision).await.expect("hashkv").hash());
        }
        assert!(
            hashes.windows(2).all(|w| w[0] == w[1]),
            "replicas agree: {hashes:?}"
        );
        let mut new = restored.client(restored_leader).await;
        let restored_hash = new.hash_kv(0).await.expect("hashkv").hash();
        assert_eq!(
            restored_hash, hashes[0],
            "the restored history is the source's"
        );

        // The restored cluster takes writes, from the next revision on.
        let put = new.put("backup/after", "x", None).await.expect("put");
        assert_eq!(put.header().expect("header").revision(), revision + 1);

        // etcdctl's snapshot save stores the same stream, and it checks out.
        let etcdctl_file = dir.path().join("etcdctl.backup");
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &source.nodes[leader].client_url(),
                "snapshot",
                "save",
                etcdctl_file.to_str().expect("UTF-8"),
            ])
            .output()
            .expect("etcdctl runs (scripts/test.sh installs it)");
        assert!(
            output.status.success(),
            "etcdctl snapshot save: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (code, _, stderr) =
            quorumdb(&["snapshot", "status", etcdctl_file.to_str().expect("UTF-8")]);
        assert_eq!(code, 0, "{stderr}");
    })
    .await
    .expect("the test finished in time");
}
