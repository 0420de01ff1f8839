//! The workloads: concurrent client processes that invoke operations, record them, and stop by
//! themselves at a deadline, at an operation count, or when the run is interrupted.
//!
//! - `register`: read / write / compare-and-set on rotating keys (each key gets about
//!   `OPS_PER_KEY_GROUP / KEYS_PER_GROUP` operations, so the checker's search per key stays small).
//! - `follower-reads`: the same, but every read goes to a node the majority does not name leader:
//!   linearizable reads on followers (read index) are QuorumDB's central claim.
//! - `set`: unique adds (one key per element); a final linearizable read after the faults.
//! - `bank`: transfers between accounts in one Txn guarded by mod revisions; reads of all accounts.
//!
//! A process whose operation ended `info` is replaced by a fresh process id (Jepsen's rule: the
//! old operation may still be in flight, so the old process is never reused).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::client::Client;
use crate::client::Failure;
use crate::client::balance;
use crate::history::EventKind;
use crate::history::Op;
use crate::history::Recorder;
use crate::rng::Rng;

pub const OPS_PER_KEY_GROUP: u64 = 120;
pub const KEYS_PER_GROUP: u64 = 3;
pub const BANK_ACCOUNTS: usize = 5;
pub const BANK_INITIAL_BALANCE: i64 = 100;
/// A hard cap on operations per client, whatever the time limit.
pub const OPS_PER_CLIENT_MAX: u64 = 200_000;
/// How long a final read keeps trying after the faults healed.
pub const FINAL_READ_WAIT: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    Register,
    FollowerReads,
    Set,
    Bank,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 4] = [
        WorkloadKind::Register,
        WorkloadKind::FollowerReads,
        WorkloadKind::Set,
        WorkloadKind::Bank,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::FollowerReads => "follower-reads",
            WorkloadKind::Set => "set",
            WorkloadKind::Bank => "bank",
        }
    }

    fn prefix(self) -> String {
        format!("/jepsen/{}/", self.name())
    }
}

/// What every client of a run shares.
#[derive(Clone)]
pub struct Context {
    pub nodes: usize,
    /// The node index a majority names leader, or usize::MAX when unknown (kept fresh by
    /// [`track_leader`]).
    pub leader: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
    pub deadline: Instant,
    pub seed: u64,
}

impl Context {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }

    fn follower(&self, rng: &mut Rng) -> usize {
        let leader = self.leader.load(Ordering::Relaxed);
        let candidates: Vec<usize> = (0..self.nodes).filter(|n| *n != leader).collect();
        candidates[rng.index(candidates.len())]
    }
}

/// Polls who leads until stopped; bounded by the context's deadline plus a margin.
pub async fn track_leader(context: Context, ids: Vec<u64>, until: Instant) {
    let channels = crate::cluster::status_channels(ids.len());
    while !context.stop.load(Ordering::Relaxed) && Instant::now() < until {
        let leader = crate::cluster::agreed_leader_over(&channels, &ids)
            .await
            .unwrap_or(usize::MAX);
        context.leader.store(leader, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One client process's bookkeeping: its current process id and how to renumber it.
struct Process {
    id: u64,
    stride: u64,
}

impl Process {
    fn record_failure(&mut self, recorder: &Recorder, node: &str, op: Op, failure: Failure) {
        match failure {
            Failure::Definite(m) => recorder.record(EventKind::Fail, self.id, node, op, Some(m)),
            Failure::Unknown(m) => {
                recorder.record(EventKind::Info, self.id, node, op, Some(m));
                self.id += self.stride;
            }
        }
    }
}

fn node_name(index: usize) -> String {
    format!("n{}", index + 1)
}

/// Runs `clients` processes of `kind` until the context says stop. Returns when all are done.
pub async fn run(kind: WorkloadKind, clients: usize, context: Context, recorder: Recorder) {
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..clients {
        let context = context.clone();
        let recorder = recorder.clone();
        let counter = counter.clone();
        let stream = (kind as u64 + 1) * 1000 + index as u64;
        let mut rng = Rng::fork(context.seed, stream);
        let mut process = Process {
            id: index as u64,
            stride: clients as u64,
        };
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(context.nodes);
            let mut done = 0;
            while context.running() && done < OPS_PER_CLIENT_MAX {
                match kind {
                    WorkloadKind::Register | WorkloadKind::FollowerReads => {
                        register_op(
                            kind,
                            &mut client,
                            &mut rng,
                            &mut process,
                            &context,
                            &recorder,
                            &counter,
                        )
                        .await
                    }
                    WorkloadKind::Set => {
                        set_op(
                            &mut client,
                            &mut rng,
                            &mut process,
                            &context,
                            &recorder,
                            &counter,
                        )
                        .await
                    }
                    WorkloadKind::Bank => {
                        bank_op(&mut client, &mut rng, &mut process, &context, &recorder).await
                    }
                }
                done += 1;
                tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn register_op(
    kind: WorkloadKind,
    client: &mut Client,
    rng: &mut Rng,
    process: &mut Process,
    context: &Context,
    recorder: &Recorder,
    counter: &AtomicU64,
) {
    let count = counter.fetch_add(1, Ordering::Relaxed);
    let group = count / OPS_PER_KEY_GROUP;
    let key = format!(
        "{}{}",
        kind.prefix(),
        group * KEYS_PER_GROUP + rng.below(KEYS_PER_GROUP)
    );
    // Values are unique across the workload: the op counter, plus one so 0 never appears.
    let value = count + 1;
    let roll = rng.below(100);
    if roll < 50 {
        let node = if kind == WorkloadKind::FollowerReads {
            context.follower(rng)
        } else {
            rng.index(context.nodes)
        };
        let name = node_name(node);
        let op = Op::Read {
            key: key.clone(),
            value: None,
        };
        recorder.record(EventKind::Invoke, process.id, &name, op.clone(), None);
        match client.read(node, &key, false).await {
            Ok(value) => recorder.record(
                EventKind::Ok,
                process.id,
                &name,
                Op::Read { key, value },
                None,
            ),
            // A failed read changed nothing: always `fail`, whatever the error.
            Err(failure) => recorder.record(
                EventKind::Fail,
                process.id,
                &name,
                op,
                Some(failure.message().to_string()),
            ),
        }
        return;
    }
    let node = rng.index(context.nodes);
    let name = node_name(node);
    if roll < 75 {
        let op = Op::Write {
            key: key.clone(),
            value,
        };
        recorder.record(EventKind::Invoke, process.id, &name, op.clone(), None);
        match client.write(node, &key, value).await {
            Ok(()) => recorder.record(EventKind::Ok, process.id, &name, op, None),
            Err(failure) => process.record_failure(recorder, &name, op, failure),
        }
    } else {
        // Compare against a recent value so that some compares hold.
        let expected = count.saturating_sub(rng.below(8)).max(1);
        let op = Op::Cas {
            key: key.clone(),
            expected,
            new: value,
            succeeded: None,
        };
        recorder.record(EventKind::Invoke, process.id, &name, op.clone(), None);
        match client.cas(node, &key, expected, value).await {
            Ok(succeeded) => recorder.record(
                EventKind::Ok,
                process.id,
                &name,
                Op::Cas {
                    key,
                    expected,
                    new: value,
                    succeeded: Some(succeeded),
                },
                None,
            ),
            Err(failure) => process.record_failure(recorder, &name, op, failure),
        }
    }
}

fn set_key(element: u64) -> String {
    format!("{}{element:020}", WorkloadKind::Set.prefix())
}

async fn set_op(
    client: &mut Client,
    rng: &mut Rng,
    process: &mut Process,
    context: &Context,
    recorder: &Recorder,
    counter: &AtomicU64,
) {
    let element = counter.fetch_add(1, Ordering::Relaxed) + 1;
    let node = rng.index(context.nodes);
    let name = node_name(node);
    let op = Op::Add { element };
    recorder.record(EventKind::Invoke, process.id, &name, op.clone(), None);
    match client.write(node, &set_key(element), 1).await {
        Ok(()) => recorder.record(EventKind::Ok, process.id, &name, op, None),
        Err(failure) => process.record_failure(recorder, &name, op, failure),
    }
}

fn account_key(account: usize) -> String {
    format!("{}{account}", WorkloadKind::Bank.prefix())
}

/// Reads every account: (balances by account, mod revisions by account), or a failure. A read
/// with missing or unparsable accounts is still returned (the checker flags it).
async fn read_accounts(client: &mut Client, node: usize) -> Result<(Vec<i64>, Vec<i64>), Failure> {
    let kvs = client
        .read_prefix(node, &WorkloadKind::Bank.prefix())
        .await?;
    let balances = kvs
        .iter()
        .map(|kv| balance(kv).unwrap_or(i64::MIN))
        .collect();
    let revisions = kvs.iter().map(|kv| kv.mod_revision).collect();
    Ok((balances, revisions))
}

async fn bank_op(
    client: &mut Client,
    rng: &mut Rng,
    process: &mut Process,
    context: &Context,
    recorder: &Recorder,
) {
    let node = rng.index(context.nodes);
    let name = node_name(node);
    let read = Op::ReadAccounts { balances: None };
    recorder.record(EventKind::Invoke, process.id, &name, read.clone(), None);
    let (balances, revisions) = match read_accounts(client, node).await {
        Ok(found) => found,
        Err(failure) => {
            recorder.record(
                EventKind::Fail,
                process.id,
                &name,
                read,
                Some(failure.message().to_string()),
            );
            return;
        }
    };
    recorder.record(
        EventKind::Ok,
        process.id,
        &name,
        Op::ReadAccounts {
            balances: Some(balances.clone()),
        },
        None,
    );
    if balances.len() != BANK_ACCOUNTS || rng.chance(40) {
        return;
    }
    let from = rng.index(BANK_ACCOUNTS);
    let to = (from + 1 + rng.index(BANK_ACCOUNTS - 1)) % BANK_ACCOUNTS;
    if balances[from] <= 0 {
        return;
    }
    let amount = 1 + rng.below(balances[from].min(20) as u64) as i64;
    let op = Op::Transfer {
        from,
        to,
        amount,
        succeeded: None,
    };
    recorder.record(EventKind::Invoke, process.id, &name, op.clone(), None);
    let unchanged = [
        (account_key(from), revisions[from]),
        (account_key(to), revisions[to]),
    ];
    let puts = [
        (account_key(from), (balances[from] - amount).to_string()),
        (account_key(to), (balances[to] + amount).to_string()),
    ];
    match client.put_if_unchanged(node, &unchanged, &puts).await {
        Ok(succeeded) => recorder.record(
            EventKind::Ok,
            process.id,
            &name,
            Op::Transfer {
                from,
                to,
                amount,
                succeeded: Some(succeeded),
            },
            None,
        ),
        Err(failure) => process.record_failure(recorder, &name, op, failure),
    }
}

/// Creates the bank's accounts once (idempotent: the Txn only puts when none exists).
pub async fn bank_setup(nodes: usize, timeout: Duration) -> Result<(), String> {
    let mut client = Client::new(nodes);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    let mut node = 0;
    while Instant::now() < deadline {
        match read_accounts(&mut client, node).await {
            Ok((balances, _)) if balances.len() == BANK_ACCOUNTS => return Ok(()),
            Ok(_) => {
                let absent: Vec<(String, i64)> =
                    (0..BANK_ACCOUNTS).map(|a| (account_key(a), 0)).collect();
                let puts: Vec<(String, String)> = (0..BANK_ACCOUNTS)
                    .map(|a| (account_key(a), BANK_INITIAL_BALANCE.to_string()))
                    .collect();
                if let Err(e) = client.put_if_unchanged(node, &absent, &puts).await {
                    last = e.message().to_string();
                }
            }
            Err(e) => last = e.message().to_string(),
        }
        node = (node + 1) % nodes;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "bank accounts not created within {timeout:?}: {last}"
    ))
}

/// The final reads after the faults healed: the set's elements, the bank's accounts. Each is
/// retried on every node until one answers (bounded by [`FINAL_READ_WAIT`]); the successful
/// attempt is what the history records.
pub async fn final_read(kind: WorkloadKind, nodes: usize, recorder: &Recorder, process: u64) {
    let mut client = Client::new(nodes);
    let deadline = Instant::now() + FINAL_READ_WAIT;
    let mut node = 0;
    while Instant::now() < deadline {
        let name = node_name(node);
        let pending = match kind {
            WorkloadKind::Set => Op::ReadAll { elements: None },
            WorkloadKind::Bank => Op::ReadAccounts { balances: None },
            WorkloadKind::Register | WorkloadKind::FollowerReads => return,
        };
        recorder.record(EventKind::Invoke, process, &name, pending.clone(), None);
        let outcome = if kind == WorkloadKind::Set {
            let prefix = WorkloadKind::Set.prefix();
            client
                .read_keys_paged(node, &prefix)
                .await
                .map(|keys| Op::ReadAll {
                    elements: Some(
                        keys.iter()
                            .filter_map(|key| {
                                let key = std::str::from_utf8(key).ok()?;
                                key.strip_prefix(&prefix)?.parse().ok()
                            })
                            .collect(),
                    ),
                })
        } else {
            read_accounts(&mut client, node)
                .await
                .map(|(balances, _)| Op::ReadAccounts {
                    balances: Some(balances),
                })
        };
        match outcome {
            Ok(done) => {
                recorder.record(EventKind::Ok, process, &name, done, None);
                return;
            }
            Err(e) => recorder.record(
                EventKind::Fail,
                process,
                &name,
                pending,
                Some(e.message().to_string()),
            ),
        }
        node = (node + 1) % nodes;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
