//! The `quorumdb` command line: a thin clap front over the library.
//!
//! `quorumdb server ...` runs a node with etcd-named flags (see `config::ServerArgs`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;
use quorumdb::bench::BenchArgs;
use quorumdb::config::CpuScheduling;
use quorumdb::config::NodeConfig;
use quorumdb::config::ServerArgs;
use quorumdb::node::Node;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "quorumdb",
    version,
    about = "A strongly consistent, replicated key-value database with an etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: human-readable text, or one JSON object per line for collectors.
    #[arg(
        long,
        global = true,
        env = "QUORUMDB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a QuorumDB node.
    Server(Box<ServerArgs>),
    /// Load-test a cluster (QuorumDB or etcd) over the etcd v3 API; prints QPS and latencies.
    Bench(Box<BenchArgs>),
    /// Client verbs (etcdctl's): put, get, del, txn, member list, endpoint status/health.
    #[command(flatten)]
    Client(quorumdb::cli::ClientCommand),
    /// Check a node's health (exit 0 healthy, 1 not): the healthcheck of containers and pods.
    Probe(quorumdb::probe::ProbeArgs),
    /// Run a local three-node cluster in this process (clients on 127.0.0.1:2379, 22379, 32379,
    /// status pages and metrics on 2381, 22381, 32381), data under DATA_DIR/n1..n3. Ctrl-C stops it cleanly; starting it again keeps the data.
    LocalCluster {
        /// Folder holding the three nodes' data.
        #[arg(long, default_value = "quorumdb-local")]
        data_dir: PathBuf,
    },
}

/// mimalloc instead of glibc's malloc: a loaded member spent about a fifth of its CPU in glibc's
/// malloc/free (`_int_malloc`, `unlink_chunk`, `malloc_consolidate`), spread over gRPC serving,
/// openraft and the state machine. Measured side by side: put with 1000 clients +20% req/s, 64
/// clients +15% (bench/results/2026-12-02-live-in-memory.md).
///
/// Without transparent huge pages: mimalloc returns freed pages to the kernel after a delay, and
/// with huge pages every page it takes back faulted in a whole 2 MiB page that the kernel zeroed
/// first (`clear_page_erms`, 9% of a loaded member's CPU in perf). The `no_thp` build stops
/// mimalloc asking for them (`madvise`); [`no_transparent_huge_pages`] covers hosts that give
/// them unasked. Measured side by side, put with 1000 clients: peak RSS -28%, CPU per put -4% to
/// -8% (bench/results/2026-12-02-live-in-memory.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, for hosts where they are on for every
/// mapping (`/sys/kernel/mm/transparent_hugepage/enabled` = `always`). Best effort: a kernel
/// that refuses only costs the memory and CPU described above.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Puts this thread under `policy` ([`CpuScheduling`] says why batch is the default). Called on
/// the main thread before the runtime and the store start: every thread of the server is created
/// after it and inherits the policy. A thread already under it (a service manager set it, as
/// deploy/systemd does) is left alone: a sandbox may forbid the call. A kernel that refuses
/// leaves its default policy: the server runs the same, with more context switches.
fn set_cpu_scheduling(policy: CpuScheduling) {
    #[cfg(target_os = "linux")]
    {
        let linux_policy = match policy {
            CpuScheduling::Batch => libc::SCHED_BATCH,
            CpuScheduling::Normal => libc::SCHED_OTHER,
        };
        // SAFETY: sched_getscheduler takes a pid (0: this thread) and touches no memory of ours.
        if unsafe { libc::sched_getscheduler(0) } == linux_policy {
            tracing::info!(
                policy = policy.linux_name(),
                "CPU scheduling policy already set"
            );
            return;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this thread.
        let set = unsafe { libc::sched_setscheduler(0, linux_policy, &param) };
        if set == 0 {
            tracing::info!(policy = policy.linux_name(), "CPU scheduling policy set");
        } else {
            tracing::warn!(
                policy = policy.linux_name(),
                error = %std::io::Error::last_os_error(),
                "cannot set the CPU scheduling policy (a sandbox may forbid it: systemd's \
                 CPUSchedulingPolicy= sets it instead); the current policy stays"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::info!(
        policy = policy.linux_name(),
        "--cpu-scheduling applies on Linux only; the platform's default stays"
    );
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse_from(quorumdb::cli::connection_flags_after_verb(
        std::env::args_os().collect(),
    ));
    let filter = EnvFilter::try_from_env("QUORUMDB_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Server(args) => run_server(*args),
        Command::LocalCluster { data_dir } => run_local_cluster(data_dir),
        Command::Bench(args) => run_bench(*args),
        Command::Probe(args) => quorumdb::probe::run(args),
        Command::Client(command) => quorumdb::cli::run(command),
    }
}

/// Client and peer ports of the local cluster's members, as in etcd's own local Procfile.
const LOCAL_CLUSTER_PORTS: [(u16, u16); 3] = [(2379, 2380), (22379, 22380), (32379, 32380)];

fn run_local_cluster(data_dir: PathBuf) -> ExitCode {
    let initial_cluster = LOCAL_CLUSTER_PORTS
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("n{}=http://127.0.0.1:{peer}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut configs = Vec::new();
    for (i, (client, peer)) in LOCAL_CLUSTER_PORTS.iter().enumerate() {
        let args = ServerArgs {
            name: Some(format!("n{}", i + 1)),
            data_dir: Some(data_dir.join(format!("n{}", i + 1))),
            listen_client_urls: Some(format!("http://127.0.0.1:{client}")),
            listen_peer_urls: Some(format!("http://127.0.0.1:{peer}")),
            // etcd's convention: metrics on the client port + 2 (2381, 22381, 32381).
            listen_metrics_urls: Some(format!("http://127.0.0.1:{}", client + 2)),
            initial_cluster: Some(initial_cluster.clone()),
            ..ServerArgs::default()
        };
        match config(args) {
            Ok(config) => configs.push(config),
            Err(code) => return code,
        }
    }
    set_cpu_scheduling(CpuScheduling::default());
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let mut nodes = Vec::new();
        for config in configs {
            match Node::start(config).await {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    eprintln!("quorumdb: {e}");
                    for node in nodes {
                        node.shutdown().await;
                    }
                    return ExitCode::FAILURE;
                }
            }
        }
        eprintln!(
            "quorumdb: local cluster running, data in {}. Try:\n  etcdctl --endpoints=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 put greeting hello\n  etcdctl --endpoints=127.0.0.1:22379 get greeting\n  quorumdb endpoint status\nStatus page: http://127.0.0.1:2381/ (metrics: /metrics). Ctrl-C stops it.",
            data_dir.display()
        );
        shutdown_signal().await;
        eprintln!("quorumdb: stopping the local cluster");
        for node in nodes {
            node.shutdown().await;
        }
        ExitCode::SUCCESS
    })
}

fn run_server(args: ServerArgs) -> ExitCode {
    let config = match config(args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    set_cpu_scheduling(config.cpu_scheduling);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let node = match Node::start(config).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("quorumdb: {e}");
                return ExitCode::FAILURE;
            }
        };
        node.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn run_bench(args: BenchArgs) -> ExitCode {
    let json = args.json;
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(quorumdb::bench::run(args)) {
        Ok(report) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a report serializes")
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{}", report.to_text());
            ExitCode::SUCCESS
        }
        Err(e @ quorumdb::bench::BenchError::Invalid(_)) => {
            eprintln!("quorumdb: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("quorumdb: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A validated configuration, or exit code 2 (usage) after printing why.
fn config(args: ServerArgs) -> Result<NodeConfig, ExitCode> {
    args.into_config().map_err(|e| {
        eprintln!("quorumdb: {e}");
        ExitCode::from(2)
    })
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .inspect_err(|e| eprintln!("quorumdb: cannot start the async runtime: {e}"))
        .ok()
}

/// Ctrl-C or SIGTERM: both stop the node cleanly.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
