//! The checker's self-test: a run that MUST be found not linearizable, or the checker (or the
//! harness) is broken. A follower is isolated, a writer keeps writing through the majority, and a
//! reader sends `serializable` reads (local state, no read index) to the isolated follower. Those
//! reads return the value from before the partition after newer writes were acknowledged: a
//! stale read the register checker must report. CI passes this step only when it does.
//!
//! Must never: count as passed when nothing stale was read (the verdict is then "not detected").

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::checker::linearizable;
use crate::checker::linearizable::Verdict;
use crate::client::Client;
use crate::cluster;
use crate::history::EventKind;
use crate::history::Op;
use crate::history::Recorder;
use crate::history::operations;
use crate::nemesis::Fault;
use crate::nemesis::Window;
use crate::net::NetFaults;
use crate::net::Topology;

const KEY: &str = "/jepsen/self-test/register";
const ANOMALY_WINDOW: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Serialize)]
pub struct SelfTestReport {
    /// True when the checker reported the anomaly (what the self-test wants).
    pub detected: bool,
    pub verdict: Verdict,
    pub follower: String,
    pub operations: usize,
    pub failing_key: Option<String>,
    pub minimal_failing_history: Vec<serde_json::Value>,
    pub window: Option<Window>,
    pub error: Option<String>,
}

pub async fn run(
    topology: &Topology,
    ids: &[u64],
    recorder: &Recorder,
    step_budget: u64,
) -> SelfTestReport {
    let mut report = SelfTestReport {
        detected: false,
        verdict: Verdict::Unknown,
        follower: String::new(),
        operations: 0,
        failing_key: None,
        minimal_failing_history: Vec::new(),
        window: None,
        error: None,
    };
    let nodes = ids.len();
    let Some(leader) = cluster::wait_for_leader(ids, Duration::from_secs(30)).await else {
        report.error = Some("no leader within 30 s".into());
        return report;
    };
    let follower = (leader + 1) % nodes;
    report.follower = format!("n{}", follower + 1);
    let mut writer = Client::new(nodes);
    let mut reader = Client::new(nodes);
    let mut value = 1;
    // 1. A first value, written through the leader and seen by the follower.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut replicated = false;
    while Instant::now() < deadline && !replicated {
        if record_write(&mut writer, leader, value, recorder).await {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if record_read(&mut reader, follower, recorder).await == Some(value) {
                    replicated = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        value += 1;
    }
    if !replicated {
        report.error = Some("the follower never saw the first write".into());
        return report;
    }
    // 2. Cut the follower off; keep writing through the majority and reading from the follower.
    let mut faults = NetFaults::default();
    let others: Vec<usize> = (0..nodes).filter(|i| *i != follower).collect();
    faults.cut_between(&[follower], &others);
    if let Err(e) = topology.apply(&faults) {
        report.error = Some(e);
        return report;
    }
    let start_ns = recorder.now_ns();
    let done = Arc::new(AtomicBool::new(false));
    let reader_task = {
        let recorder = recorder.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                record_read(&mut reader, follower, &recorder).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let until = Instant::now() + ANOMALY_WINDOW;
    while Instant::now() < until {
        record_write(&mut writer, leader, value, recorder).await;
        value += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    done.store(true, Ordering::Relaxed);
    let _ = reader_task.await;
    let healed = topology.apply(&NetFaults::default());
    report.window = Some(Window {
        fault: Fault::IsolateRandom,
        name: "self-test".to_string(),
        description: format!(
            "self-test: isolated {} (a follower); serializable reads sent to it",
            report.follower
        ),
        start_ns,
        end_ns: recorder.now_ns(),
    });
    if let Err(e) = healed {
        report.error = Some(e);
    }
    // 3. The checker must say no.
    let history = operations(&recorder.events());
    report.operations = history.len();
    let checked = linearizable::check(&history, step_budget);
    report.verdict = checked.verdict;
    report.detected = checked.verdict == Verdict::NotLinearizable;
    report.failing_key = checked.failing_key;
    report.minimal_failing_history = checked.minimal_failing_history;
    report
}

async fn record_write(client: &mut Client, node: usize, value: u64, recorder: &Recorder) -> bool {
    let name = format!("n{}", node + 1);
    let op = Op::Write {
        key: KEY.into(),
        value,
    };
    recorder.record(EventKind::Invoke, 0, &name, op.clone(), None);
    match client.write(node, KEY, value).await {
        Ok(()) => {
            recorder.record(EventKind::Ok, 0, &name, op, None);
            true
        }
        Err(e) => {
            // The writer keeps its process id: its next write starts only after this one ended.
            let kind = if matches!(e, crate::client::Failure::Definite(_)) {
                EventKind::Fail
            } else {
                EventKind::Info
            };
            recorder.record(kind, 0, &name, op, Some(e.message().to_string()));
            false
        }
    }
}

async fn record_read(client: &mut Client, node: usize, recorder: &Recorder) -> Option<u64> {
    let name = format!("n{}", node + 1);
    let op = Op::Read {
        key: KEY.into(),
        value: None,
    };
    recorder.record(EventKind::Invoke, 1, &name, op.clone(), None);
    match client.read(node, KEY, true).await {
        Ok(value) => {
            recorder.record(
                EventKind::Ok,
                1,
                &name,
                Op::Read {
                    key: KEY.into(),
                    value,
                },
                None,
            );
            value
        }
        Err(e) => {
            recorder.record(EventKind::Fail, 1, &name, op, Some(e.message().to_string()));
            None
        }
    }
}
