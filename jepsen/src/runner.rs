//! One run, from an empty machine back to an empty machine:
//!
//! ```text
//! remove stale namespaces of dead runs -> build namespaces + bridge + nft table (net.rs)
//!   -> move this process into the hub namespace -> start 3 quorumdb servers (cluster.rs)
//!   -> self-test (selftest.rs)
//!   -> workloads (workload.rs) || fault schedule (nemesis.rs) -> heal -> final reads
//!   -> checkers (checker/) -> report (report.rs) -> tear everything down (Drop guards)
//! ```
//!
//! Must never: leave a process, namespace, table or data folder behind, whatever happens (each
//! has a Drop guard; SIGINT/SIGTERM only set a flag every wait looks at); or wait without bound
//! (every phase has a deadline).

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::checker;
use crate::checker::linearizable::Verdict;
use crate::cluster;
use crate::history::Operation;
use crate::history::Recorder;
use crate::history::operations;
use crate::nemesis;
use crate::nemesis::Nemesis;
use crate::nemesis::Planned;
use crate::net;
use crate::report;
use crate::report::RunReport;
use crate::report::WorkloadResult;
use crate::selftest;
use crate::selftest::SelfTestReport;
use crate::workload;
use crate::workload::WorkloadKind;

/// The register checker's search budget per key (steps); past it the key is `unknown`.
pub const STEP_BUDGET_PER_KEY: u64 = 5_000_000;
/// How long the cluster may take to elect its first leader.
const FIRST_LEADER_WAIT: Duration = Duration::from_secs(60);
/// How long after the last heal the cluster must have a leader again.
const RECOVERY_LEADER_WAIT: Duration = Duration::from_secs(30);
/// Beyond the planned load time, how long clients may go on if the schedule overruns.
const LOAD_OVERRUN_S: f64 = 120.0;

/// Everything one run does, decided before anything starts.
pub struct RunPlan {
    pub mode: &'static str,
    pub seed: u64,
    pub workloads: Vec<(WorkloadKind, usize)>,
    pub schedule: Vec<Planned>,
    pub self_test: bool,
    /// Seconds the workloads run (the schedule fits inside).
    pub load_s: f64,
    pub loss_percent: u8,
    pub binary: PathBuf,
    pub run_dir: PathBuf,
    pub replay: String,
}

/// Builds the world, runs, tears the world down (also on error or panic: Drop guards).
/// Returns whether the run passed.
pub fn run(plan: RunPlan) -> Result<bool, String> {
    let nodes_dir = plan.run_dir.join("nodes");
    std::fs::create_dir_all(&nodes_dir)
        .map_err(|e| format!("create {}: {e}", nodes_dir.display()))?;
    for stale in net::remove_stale() {
        eprintln!("jepsen: removed stale {stale}");
    }
    let topology = net::Topology::create(3)?;
    let data_root = DataDir(std::env::temp_dir().join(format!("{}data", topology.prefix)));
    std::fs::create_dir_all(&data_root.0).map_err(|e| e.to_string())?;
    // A private copy: a rebuild of target/ during the run must not change what a restart runs.
    let binary = data_root.0.join("quorumdb");
    std::fs::copy(&plan.binary, &binary)
        .map_err(|e| format!("copy {}: {e}", plan.binary.display()))?;
    eprintln!(
        "jepsen: namespaces {}hub, {}n1..n3; results in {}",
        topology.prefix,
        topology.prefix,
        plan.run_dir.display()
    );
    let home = net::Home::current()?;
    net::enter(&topology.hub())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let world = World {
        topology: &topology,
        binary: &binary,
        data_root: &data_root.0,
        nodes_dir: &nodes_dir,
    };
    let outcome = runtime.block_on(run_in_hub(&plan, world));
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Err(e) = home.restore() {
        eprintln!("jepsen: {e}");
    }
    drop(topology);
    drop(data_root);
    outcome
}

/// What the run built, for the phases that use it.
#[derive(Clone, Copy)]
struct World<'a> {
    topology: &'a net::Topology,
    binary: &'a Path,
    data_root: &'a Path,
    nodes_dir: &'a Path,
}

/// Removes the nodes' data when dropped.
struct DataDir(PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The flags signals set and every wait checks.
#[derive(Clone)]
struct Flags {
    /// SIGINT or SIGTERM arrived.
    interrupted: Arc<AtomicBool>,
    /// The workloads must stop (the schedule is over, or interrupted).
    workloads_stop: Arc<AtomicBool>,
}

impl Flags {
    fn install() -> Flags {
        let flags = Flags {
            interrupted: Arc::new(AtomicBool::new(false)),
            workloads_stop: Arc::new(AtomicBool::new(false)),
        };
        let handler = flags.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::SignalKind;
            let mut term = tokio::signal::unix::signal(SignalKind::terminate()).ok();
            let terminated = async {
                match term.as_mut() {
                    Some(term) => {
                        term.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminated => {}
            }
            eprintln!(
                "jepsen: interrupted: healing, stopping the nodes and removing the namespaces"
            );
            handler.interrupted.store(true, Ordering::Relaxed);
            handler.workloads_stop.store(true, Ordering::Relaxed);
        });
        flags
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Sleeps until `until` in short slices; false when the run was interrupted.
    async fn sleep_until(&self, until: Instant) -> bool {
        while Instant::now() < until {
            if self.interrupted() {
                return false;
            }
            let slice = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            tokio::time::sleep(slice).await;
        }
        !self.interrupted()
    }
}

async fn run_in_hub(plan: &RunPlan, world: World<'_>) -> Result<bool, String> {
    let flags = Flags::install();
    let started = std::time::Instant::now();
    let mut cluster = cluster::Cluster::new(
        world.binary,
        world.topology,
        world.data_root,
        world.nodes_dir,
    );
    cluster.start_all()?;
    let mut nemesis = Nemesis::new(world.topology, cluster, plan.seed, Recorder::new(started));
    nemesis.loss_percent = plan.loss_percent;
    let ids = nemesis.ids();
    if cluster::wait_for_leader(&ids, FIRST_LEADER_WAIT)
        .await
        .is_none()
    {
        nemesis.check_crashes();
        return Err(format!(
            "the cluster elected no leader within {FIRST_LEADER_WAIT:?} (crashes: {:?}); node logs in {}",
            nemesis.crashes,
            world.nodes_dir.display()
        ));
    }
    eprintln!(
        "jepsen: cluster up ({:.1}s)",
        started.elapsed().as_secs_f64()
    );

    let self_test = if plan.self_test && !flags.interrupted() {
        Some(self_test_phase(plan, world, &mut nemesis, started).await?)
    } else {
        None
    };
    let load = load_phase(plan, &mut nemesis, &flags, started).await?;
    nemesis.check_crashes();
    nemesis.cluster.stop_all();
    let duration_s = started.elapsed().as_secs_f64();
    eprintln!("jepsen: load done ({duration_s:.1}s); checking");

    let mut recovered = load.recovered;
    let mut results = Vec::new();
    let mut all_operations = Vec::new();
    for (kind, recorder) in &load.recorders {
        let events = recorder.events();
        report::write_history(
            &plan.run_dir.join(format!("history-{}.json", kind.name())),
            &events,
        )?;
        let ops = operations(&events);
        let result = check_workload(*kind, &ops);
        // No final read within its deadline: the cluster did not come back.
        if matches!(kind, WorkloadKind::Set | WorkloadKind::Bank) && result.verdict == "unknown" {
            recovered = false;
        }
        eprintln!(
            "jepsen: {}: {} {:?}",
            kind.name(),
            result.verdict,
            result.counts
        );
        results.push(result);
        all_operations.extend(ops);
    }
    let interrupted = flags.interrupted();
    let passed = !interrupted
        && load.nemesis_error.is_none()
        && recovered
        && self_test.as_ref().is_none_or(|s| s.detected)
        && nemesis.crashes.is_empty()
        && results.iter().all(|r| !r.failed);
    let recovery = report::recoveries(&all_operations, &nemesis.windows, ids.len());
    let run_report = RunReport {
        mode: plan.mode,
        seed: plan.seed,
        replay: &plan.replay,
        passed,
        duration_s,
        fault_time_s: nemesis
            .windows
            .iter()
            .map(|w| (w.end_ns - w.start_ns) as f64 / 1e9)
            .sum(),
        interrupted,
        recovered,
        nemesis_error: load.nemesis_error.as_deref(),
        schedule_planned: &plan.schedule,
        faults: &nemesis.windows,
        recovery: &recovery,
        workloads: &results,
        self_test: self_test.as_ref(),
        crashes: &nemesis.crashes,
        results_dir: &plan.run_dir,
    };
    let summary = report::write_run(&run_report, &all_operations)?;
    println!("{summary}");
    Ok(passed)
}

/// The planted anomaly, on the fresh cluster, before any load.
async fn self_test_phase(
    plan: &RunPlan,
    world: World<'_>,
    nemesis: &mut Nemesis<'_>,
    started: std::time::Instant,
) -> Result<SelfTestReport, String> {
    let ids = nemesis.ids();
    let recorder = Recorder::new(started);
    let result = selftest::run(world.topology, &ids, &recorder, STEP_BUDGET_PER_KEY).await;
    eprintln!(
        "jepsen: self-test: {} ({:?}, {} operations{})",
        if result.detected {
            "anomaly detected, as it must be"
        } else {
            "ANOMALY NOT DETECTED"
        },
        result.verdict,
        result.operations,
        result
            .error
            .as_deref()
            .map(|e| format!(", error: {e}"))
            .unwrap_or_default()
    );
    report::write_history(
        &plan.run_dir.join("history-self-test.json"),
        &recorder.events(),
    )?;
    if let Some(window) = &result.window {
        nemesis.windows.push(window.clone());
    }
    let _ = cluster::wait_for_leader(&ids, RECOVERY_LEADER_WAIT).await;
    Ok(result)
}

struct LoadOutcome {
    recorders: Vec<(WorkloadKind, Recorder)>,
    nemesis_error: Option<String>,
    /// A leader again after the last heal.
    recovered: bool,
}

/// The workloads run while the schedule injects and heals faults; then everything is healed
/// and the final reads are made.
async fn load_phase(
    plan: &RunPlan,
    nemesis: &mut Nemesis<'_>,
    flags: &Flags,
    started: std::time::Instant,
) -> Result<LoadOutcome, String> {
    let ids = nemesis.ids();
    let mut outcome = LoadOutcome {
        recorders: Vec::new(),
        nemesis_error: None,
        recovered: true,
    };
    if plan.workloads.is_empty() {
        return Ok(outcome);
    }
    if plan.workloads.iter().any(|(k, _)| *k == WorkloadKind::Bank) {
        workload::bank_setup(ids.len(), Duration::from_secs(30)).await?;
    }
    let load_start = Instant::now();
    let context = workload::Context {
        nodes: ids.len(),
        leader: Arc::new(AtomicUsize::new(usize::MAX)),
        stop: flags.workloads_stop.clone(),
        deadline: load_start + Duration::from_secs_f64(plan.load_s + LOAD_OVERRUN_S),
        seed: plan.seed,
    };
    let mut tasks = vec![tokio::spawn(workload::track_leader(
        context.clone(),
        ids.clone(),
        context.deadline,
    ))];
    for (kind, clients) in &plan.workloads {
        let recorder = Recorder::new(started);
        outcome.recorders.push((*kind, recorder.clone()));
        tasks.push(tokio::spawn(workload::run(
            *kind,
            *clients,
            context.clone(),
            recorder,
        )));
    }
    eprintln!(
        "jepsen: workloads {} running for {:.0}s with {} faults",
        plan.workloads
            .iter()
            .map(|(k, c)| format!("{}x{c}", k.name()))
            .collect::<Vec<_>>()
            .join(" "),
        plan.load_s,
        plan.schedule.len()
    );
    for planned in &plan.schedule {
        if !flags
            .sleep_until(load_start + Duration::from_secs_f64(planned.start_s))
            .await
        {
            break;
        }
        let duration = Duration::from_secs_f64(planned.duration_s);
        if let Err(e) = nemesis.inject(planned.fault, duration).await {
            outcome.nemesis_error = Some(e);
            break;
        }
        // A transfer storm spends its window inside inject.
        if planned.fault != nemesis::Fault::TransferStorm {
            let _ = flags.sleep_until(Instant::now() + duration).await;
        }
        if let Err(e) = nemesis.heal().await {
            outcome.nemesis_error = Some(e);
            break;
        }
    }
    let _ = flags
        .sleep_until(load_start + Duration::from_secs_f64(plan.load_s))
        .await;
    flags.workloads_stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    if let Err(e) = nemesis.heal_everything().await {
        outcome.nemesis_error.get_or_insert(e);
    }
    outcome.recovered = cluster::wait_for_leader(&ids, RECOVERY_LEADER_WAIT)
        .await
        .is_some();
    for (kind, recorder) in &outcome.recorders {
        workload::final_read(*kind, ids.len(), recorder, 1_000_000).await;
    }
    Ok(outcome)
}

pub fn check_workload(kind: WorkloadKind, ops: &[Operation]) -> WorkloadResult {
    let counts = report::counts(ops);
    let (verdict, failed, details) = match kind {
        WorkloadKind::Register | WorkloadKind::FollowerReads => {
            let checked = checker::linearizable::check(ops, STEP_BUDGET_PER_KEY);
            let verdict = match checked.verdict {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable => "not-linearizable",
                Verdict::Unknown => "unknown",
            };
            (
                verdict,
                checked.verdict == Verdict::NotLinearizable,
                serde_json::to_value(&checked),
            )
        }
        WorkloadKind::Set => {
            let checked = checker::set::check(ops);
            (
                checked.verdict,
                checked.verdict == "invalid",
                serde_json::to_value(&checked),
            )
        }
        WorkloadKind::Bank => {
            let checked = checker::bank::check(
                ops,
                workload::BANK_ACCOUNTS,
                workload::BANK_ACCOUNTS as i64 * workload::BANK_INITIAL_BALANCE,
            );
            (
                checked.verdict,
                checked.verdict == "invalid",
                serde_json::to_value(&checked),
            )
        }
    };
    WorkloadResult {
        workload: kind.name().to_string(),
        verdict: verdict.to_string(),
        failed,
        counts,
        details: details.unwrap_or(serde_json::Value::Null),
    }
}
