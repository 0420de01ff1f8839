//! Crash consistency of the store: writes under load, SIGKILL of the process (no shutdown code
//! runs, sled loses whatever it had not flushed), restart from the same disk, verify.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::SystemTime;

use common::Cluster;
use etcd_client::GetOptions;

fn seed() -> u64 {
    std::env::var("QUORUMDB_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_hard_kill_of_a_single_node() {
    let seed = seed();
    println!("seed: {seed} (replay with QUORUMDB_TEST_SEED={seed})");
    // The kill lands somewhere between 300 and 1,300 ms into the load.
    let kill_after = Duration::from_millis(300 + seed % 1000);

    let mut cluster = Cluster::start(1);
    cluster.wait_for_leader().await;
    let client = cluster.client(0).await;

    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut acked = BTreeMap::new();
                for i in 0.. {
                    let key = format!("crash/{writer}/{i:06}");
                    match client.put(key.as_str(), format!("value-{i}"), None).await {
                        Ok(response) => {
                            acked.insert(key, response.header().expect("header").revision());
                        }
                        Err(_) => break, // the node is gone: from here on nothing is acknowledged
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(kill_after).await;
    cluster.kill(0);
    let mut acked = BTreeMap::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer task"));
    }
    assert!(
        acked.len() > 10,
        "the load acknowledged too little to test anything: {}",
        acked.len()
    );

    cluster.restart(0);
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    let stored = client
        .get("crash/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read back after restart");
    let current_revision = stored.header().expect("header").revision();
    let stored: BTreeMap<String, (String, i64)> = stored
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect();

    for (key, revision) in &acked {
        let (value, mod_revision) = stored.get(key).unwrap_or_else(|| {
            panic!("acknowledged write {key} (revision {revision}) lost; seed {seed}")
        });
        assert_eq!(
            mod_revision, revision,
            "{key} came back with another revision; seed {seed}"
        );
        assert!(
            value.starts_with("value-"),
            "{key} came back with {value:?}"
        );
    }
    // Every put made exactly one revision, so the revisions on disk are a gap-free prefix.
    let mut revisions: Vec<i64> = stored.values().map(|(_, r)| *r).collect();
    revisions.sort_unstable();
    let expected: Vec<i64> = (2..2 + revisions.len() as i64).collect();
    assert_eq!(
        revisions, expected,
        "revisions after restart are not a contiguous prefix; seed {seed}"
    );
    assert_eq!(
        current_revision,
        1 + revisions.len() as i64,
        "store revision disagrees with its keys"
    );
    println!(
        "{} acknowledged writes, {} on disk after the kill",
        acked.len(),
        stored.len()
    );
}
