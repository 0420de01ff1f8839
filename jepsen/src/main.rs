//! `quorumdb-jepsen`: the Jepsen-style fault suite's runner (the control node).
//!
//! The run itself, phase by phase, is `runner.rs`.
//!
//! Modes: `ci` (every fault once, about three minutes), `run` (`--time-limit`, `--nemesis`,
//! `--workload`, `--seed` for long runs), `self-test` (the checker must catch an anomaly), `check`
//! (re-check a saved history). Every run prints its seed; `--seed` replays the same schedule and
//! client choices.

mod checker;
mod client;
mod cluster;
mod history;
mod nemesis;
mod net;
mod report;
mod rng;
mod runner;
mod selftest;
mod workload;

use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use clap::Parser;
use clap::Subcommand;

use crate::history::Event;
use crate::history::operations;
use crate::nemesis::Family;
use crate::workload::WorkloadKind;

const CI_FAULT_S: f64 = 7.0;
const CI_QUIET_S: f64 = 5.0;
const LEAD_IN_S: f64 = 3.0;
const TAIL_S: f64 = 5.0;
/// A run never lasts longer than this, whatever --time-limit says (a bound on every loop).
const TIME_LIMIT_S_MAX: u64 = 24 * 3600;

#[derive(Parser)]
#[command(
    name = "quorumdb-jepsen",
    about = "Jepsen-style fault suite for QuorumDB (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The CI run: self-test, then all workloads while every fault happens once (about 3 min).
    Ci(Common),
    /// A long run: random faults from the chosen families until --time-limit.
    Run(RunArgs),
    /// Only the checker's self-test (it must report a stale read as not linearizable).
    SelfTest(Common),
    /// Re-check a saved history file (no cluster, no root needed).
    Check {
        #[arg(long)]
        history: PathBuf,
        #[arg(long, value_enum)]
        workload: WorkloadKind,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Replays a run: the same fault schedule and client choices.
    #[arg(long)]
    seed: Option<u64>,
    /// The server binary; default: `quorumdb` next to this binary (cargo's target folder).
    #[arg(long)]
    quorumdb_bin: Option<PathBuf>,
    /// Where each run's folder is written.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results_dir: PathBuf,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds of faults and load.
    #[arg(long, default_value_t = 600)]
    time_limit: u64,
    /// Fault families (comma list); default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    nemesis: Vec<Family>,
    /// Workloads (comma list); default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    workload: Vec<WorkloadKind>,
    /// Client processes per workload.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Percentage of packets the loss fault drops.
    #[arg(long, default_value_t = 30)]
    loss_percent: u8,
    #[arg(long)]
    skip_self_test: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, mode) = match &cli.mode {
        Mode::Check { history, workload } => return check_file(history, *workload),
        Mode::Ci(common) | Mode::SelfTest(common) => (common.clone(), &cli.mode),
        Mode::Run(args) => (args.common.clone(), &cli.mode),
    };
    let seed = common.seed.unwrap_or_else(rng::clock_seed);
    let plan = match plan(mode, &common, seed) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("quorumdb-jepsen: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!("jepsen: seed {seed} (replay: {})", plan.replay);
    match runner::run(plan) {
        Ok(passed) if passed => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("quorumdb-jepsen: {e}");
            println!("JEPSEN ERROR seed={seed} {e}");
            ExitCode::from(2)
        }
    }
}

fn plan(mode: &Mode, common: &Common, seed: u64) -> Result<runner::RunPlan, String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root: it creates network namespaces, veth pairs and nftables tables. \
                    Run it as root (CI and the rust-docker machines are), e.g. `sudo target/debug/quorumdb-jepsen ci`."
            .into());
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if net::run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return Err(format!(
                "`{tool}` not found: apt-get install {package} (jepsen/run-ci.sh installs it)"
            ));
        }
    }
    let binary = match &common.quorumdb_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("quorumdb"),
    };
    if !binary.is_file() {
        return Err(format!(
            "server binary {} not found: build it (`cargo build --bin quorumdb`) or pass --quorumdb-bin",
            binary.display()
        ));
    }
    let binary = binary.canonicalize().map_err(|e| e.to_string())?;
    let mut rng = rng::Rng::fork(seed, 0);
    let (mode_name, workloads, schedule, self_test, loss_percent, replay) = match mode {
        Mode::Ci(_) => {
            let workloads = vec![
                (WorkloadKind::Register, 5),
                (WorkloadKind::FollowerReads, 5),
                (WorkloadKind::Set, 3),
                (WorkloadKind::Bank, 3),
            ];
            let schedule = nemesis::every_fault_once(
                &mut rng,
                LEAD_IN_S,
                CI_FAULT_S,
                CI_QUIET_S,
                &Family::ALL,
            );
            (
                "ci",
                workloads,
                schedule,
                true,
                30,
                format!("quorumdb-jepsen ci --seed {seed}"),
            )
        }
        Mode::SelfTest(_) => (
            "self-test",
            vec![],
            vec![],
            true,
            30,
            format!("quorumdb-jepsen self-test --seed {seed}"),
        ),
        Mode::Run(args) => {
            let kinds = if args.workload.is_empty() {
                WorkloadKind::ALL.to_vec()
            } else {
                args.workload.clone()
            };
            let families = if args.nemesis.is_empty() {
                Family::ALL.to_vec()
            } else {
                args.nemesis.clone()
            };
            let time_limit = args.time_limit.min(TIME_LIMIT_S_MAX) as f64;
            let clients = args.clients.clamp(1, 50);
            let schedule = nemesis::random_until(&mut rng, LEAD_IN_S, time_limit, &families);
            let names = |v: Vec<String>| v.join(",");
            let replay = format!(
                "quorumdb-jepsen run --seed {seed} --time-limit {} --nemesis {} --workload {} --clients {clients} --loss-percent {}{}",
                args.time_limit,
                names(
                    families
                        .iter()
                        .map(|f| format!("{f:?}"))
                        .map(|s| kebab(&s))
                        .collect()
                ),
                names(kinds.iter().map(|k| k.name().to_string()).collect()),
                args.loss_percent,
                if args.skip_self_test {
                    " --skip-self-test"
                } else {
                    ""
                }
            );
            (
                "run",
                kinds.into_iter().map(|k| (k, clients)).collect(),
                schedule,
                !args.skip_self_test,
                args.loss_percent.min(100),
                replay,
            )
        }
        Mode::Check { .. } => unreachable!("handled before"),
    };
    let load_s = if workloads.is_empty() {
        0.0
    } else {
        schedule
            .last()
            .map_or(LEAD_IN_S, |p| p.start_s + p.duration_s)
            + TAIL_S
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_dir = common
        .results_dir
        .join(format!("{}-{mode_name}-seed{seed}", report::utc_stamp(now)));
    Ok(runner::RunPlan {
        mode: mode_name,
        seed,
        workloads,
        schedule,
        self_test,
        load_s,
        loss_percent,
        binary,
        run_dir,
        replay,
    })
}

fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// `check` mode: re-runs a checker on a saved history.
fn check_file(path: &Path, kind: WorkloadKind) -> ExitCode {
    let events: Vec<Event> = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(events) => events,
        Err(e) => {
            eprintln!("quorumdb-jepsen: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let result = runner::check_workload(kind, &operations(&events));
    // Written, not println!: a closed pipe (`| head`) must not panic.
    let text = serde_json::to_string_pretty(&result).unwrap_or_default();
    let _ = writeln!(std::io::stdout(), "{text}");
    if result.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
