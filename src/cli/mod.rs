//! The `quorumdb` client command line: etcdctl's verbs (`put`, `get`, `del`, `txn`,
//! `member list|add|remove|promote|update`, `endpoint status|health`, `snapshot
//! save|status|restore`) over [`crate::client`].
//!
//! ```text
//! quorumdb get k --prefix -w json
//!   clap (ClientCommand + ConnectionArgs) -> Client::connect(endpoints, timeouts, consistency)
//!   -> one client call -> output (table | simple | json) on stdout, errors on stderr
//!   -> exit code: 0 ok, 1 failed, 2 usage, 3 unknown outcome
//! ```
//!
//! Exit codes (stable, for scripts):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | failed: nothing was applied (refused, invalid, unreachable, not found, unhealthy) |
//! | 2 | usage: the command line itself is wrong (clap's own code for usage errors) |
//! | 3 | unknown: a write may or may not have been applied (read the data to find out) |
//!
//! The server lives elsewhere (`node`, `config`): this module only talks to one over the API.
//! Must never: retry a write whose outcome is unknown itself (the client library decides, with
//! exactly-once numbering); print errors on stdout.

pub mod output;
pub mod txn_script;

use std::io::IsTerminal;
use std::io::Read;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use clap::Subcommand;
use serde_json::json;

use crate::client::Client;
use crate::client::ClientConfig;
use crate::client::Consistency;
use crate::client::DeleteOptions;
use crate::client::EndpointStatus;
use crate::client::Error;
use crate::client::GetOptions;
use crate::client::Member;
use crate::client::PutOptions;
use crate::client::SortOrder;
use crate::client::SortTarget;
use output::Format;
use output::Table;

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: failed, nothing applied.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line is wrong (as clap exits on usage errors).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: a write's outcome is unknown.
pub const EXIT_UNKNOWN: u8 = 3;

/// The local cluster's client endpoints (`quorumdb local-cluster`).
pub const ENDPOINTS_DEFAULT: &str = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379";

/// How to reach the cluster; accepted by every client verb, before or after a nested verb.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Client URLs of members, comma separated; the rest of the cluster is discovered.
    #[arg(long, global = true, env = "QUORUMDB_ENDPOINTS", default_value = ENDPOINTS_DEFAULT)]
    pub endpoints: String,
    /// Reads: linearizable (default), session (never older than what this command saw) or
    /// serializable (local, may be stale). etcdctl's `l` and `s` work too.
    #[arg(long, global = true, default_value = "linearizable")]
    pub consistency: Consistency,
    /// Deadline of the whole command's request, retries included (e.g. 5s, 500ms, 1m).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Bound on connecting to one endpoint.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Output: table (default), simple (etcdctl's lines) or json (stable field names).
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        value_enum,
        default_value = "table"
    )]
    pub write_out: Format,
}

/// Flags of [`ConnectionArgs`] (with a value each), as they may come before the verb.
const CONNECTION_FLAGS: [&str; 6] = [
    "--endpoints",
    "--consistency",
    "--timeout",
    "--connect-timeout",
    "--write-out",
    "-w",
];

/// etcdctl takes its global flags before the verb (`etcdctl --endpoints=X get k`); clap takes
/// ours after it (they are per verb, so `bench --endpoints` keeps its own). This moves leading
/// connection flags to the end of the command line, where every verb accepts them. Anything it
/// does not recognise stops the scan and is left to clap.
pub fn connection_flags_after_verb(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args = args.into_iter();
    let mut kept: Vec<std::ffi::OsString> = args.next().into_iter().collect();
    let mut moved = Vec::new();
    let mut rest: Vec<std::ffi::OsString> = args.collect();
    let mut index = 0;
    while index < rest.len() {
        let Some(text) = rest[index].to_str() else {
            break;
        };
        let name = text.split_once('=').map_or(text, |(name, _)| name);
        let takes_value_after = !text.contains('=');
        if CONNECTION_FLAGS.contains(&name) {
            moved.push(rest[index].clone());
            if takes_value_after && index + 1 < rest.len() {
                moved.push(rest[index + 1].clone());
                index += 1;
            }
            index += 1;
        } else if name == "--log-format" {
            kept.push(rest[index].clone());
            if takes_value_after && index + 1 < rest.len() {
                kept.push(rest[index + 1].clone());
                index += 1;
            }
            index += 1;
        } else {
            break;
        }
    }
    kept.extend(rest.drain(index..));
    kept.extend(moved);
    kept
}

/// Parses `5s`, `500ms`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (text, 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 5s, 500ms or 1m"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?}: a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(value * unit_ms / 1000.0))
}

/// The client verbs of `quorumdb`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Put KEY = VALUE (VALUE read from stdin when omitted).
    Put(PutArgs),
    /// Get a key, a range [KEY, RANGE_END), a prefix, or everything from a key.
    Get(GetArgs),
    /// Delete a key, a range, a prefix, or everything from a key.
    Del(DelArgs),
    /// Run a transaction: compares, success ops, failure ops (etcdctl's syntax), from stdin, a
    /// file, or interactively with -i.
    Txn(TxnArgs),
    /// Cluster members.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// Back up the cluster's data to a file, inspect a backup, or seed a new member from one.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
        #[command(flatten)]
        connection: ConnectionArgs,
    },
    /// Members' status and health.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
        #[command(flatten)]
        connection: ConnectionArgs,
    },
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    pub value: Option<String>,
    /// Print the previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SortBy {
    Key,
    Version,
    Create,
    Modify,
    Value,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Order {
    Ascend,
    Descend,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    pub range_end: Option<String>,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
    pub prefix: bool,
    /// Every key from KEY on.
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// Read at this revision (0: current).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    #[arg(long)]
    pub keys_only: bool,
    #[arg(long)]
    pub count_only: bool,
    /// At most this many keys (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    #[arg(long, value_enum)]
    pub sort_by: Option<SortBy>,
    #[arg(long, value_enum)]
    pub order: Option<Order>,
    /// Print only the values, one per line.
    #[arg(long)]
    pub print_value_only: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    pub key: String,
    pub range_end: Option<String>,
    #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
    pub prefix: bool,
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// Print the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Args)]
pub struct TxnArgs {
    /// Prompt for each block (compares, success ops, failure ops), as etcdctl txn -i.
    #[arg(short, long)]
    pub interactive: bool,
    /// Read the transaction from this file instead of stdin.
    #[arg(long, conflicts_with = "interactive")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Every member: id, status, name, peer and client URLs, learner or not.
    List,
    /// Add a member (start it afterwards with the printed flags).
    Add {
        /// The new member's name (used in the printed start command).
        name: String,
        /// The new member's peer URL, http://IP:PORT.
        #[arg(long)]
        peer_urls: String,
        /// Add it as a learner (no vote until `member promote`).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (hex id, as `member list` shows it).
    Remove { id: String },
    /// Make a caught-up learner a voter.
    Promote { id: String },
    /// Change a member's peer URL.
    Update {
        id: String,
        #[arg(long)]
        peer_urls: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent backup of the cluster's data to FILE (with a progress line on stderr).
    Save {
        file: PathBuf,
        /// Bound on the whole download.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        download_timeout: Duration,
    },
    /// Check a backup file and show its revision, entries and SHA-256.
    Status { file: PathBuf },
    /// Seed a new member's data directory from a backup (then start it with a new
    /// --initial-cluster, as etcdutl snapshot restore). Restore the same file for every member.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Every member's role, term, indexes, revision, db size and lag behind the leader.
    Status,
    /// Whether each member serves a linearizable read, and how long it took.
    Health,
}

/// Why a command failed: the client's error, or a problem with the command line itself.
enum Failure {
    Client(Error),
    Usage(String),
    /// Printed already (a table with failed rows); exit 1.
    Reported,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Client(error)
    }
}

/// Runs one client verb and returns the process exit code.
pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let outcome = runtime.block_on(execute(command));
    match outcome {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error of the command.
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            ExitCode::from(EXIT_OK)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("Error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Reported) => ExitCode::from(EXIT_FAILED),
        Err(Failure::Client(error)) => {
            eprintln!("Error: {error}");
            ExitCode::from(exit_code(&error))
        }
    }
}

/// The exit code for a client error: 3 when the outcome is unknown, else 1.
pub fn exit_code(error: &Error) -> u8 {
    if error.is_unknown() {
        EXIT_UNKNOWN
    } else {
        EXIT_FAILED
    }
}

async fn connect(connection: &ConnectionArgs) -> Result<Client, Failure> {
    let endpoints = crate::client::split_endpoint_list(&connection.endpoints);
    if endpoints.is_empty() {
        return Err(Failure::Usage("--endpoints names no endpoint".to_string()));
    }
    let config = ClientConfig::new(endpoints)
        .with_connect_timeout(connection.connect_timeout)
        .with_request_timeout(connection.timeout)
        .with_consistency(connection.consistency);
    let client = Client::connect(config).await?;
    Ok(if connection.consistency == Consistency::Session {
        client.session()
    } else {
        client
    })
}

async fn execute(command: ClientCommand) -> Result<String, Failure> {
    match command {
        ClientCommand::Put(args) => put(args).await,
        ClientCommand::Get(args) => get(args).await,
        ClientCommand::Del(args) => del(args).await,
        ClientCommand::Txn(args) => txn(args).await,
        ClientCommand::Member {
            command: MemberCommand::List,
            connection,
        } => member_list(&connection).await,
        ClientCommand::Member {
            command,
            connection,
        } => member_change(command, &connection).await,
        ClientCommand::Snapshot {
            command,
            connection,
        } => snapshot(command, &connection).await,
        ClientCommand::Endpoint {
            command: EndpointCommand::Status,
            connection,
        } => endpoint_status(&connection).await,
        ClientCommand::Endpoint {
            command: EndpointCommand::Health,
            connection,
        } => endpoint_health(&connection).await,
    }
}

fn json_text(value: serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(&value).expect("JSON values always serialize");
    text.push('\n');
    text
}

async fn put(args: PutArgs) -> Result<String, Failure> {
    let value = match args.value {
        Some(value) => value,
        None => {
            if std::io::stdin().is_terminal() {
                return Err(Failure::Usage(
                    "put needs a VALUE argument or the value on stdin".to_string(),
                ));
            }
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(|e| Failure::Usage(format!("cannot read the value from stdin: {e}")))?;
            value
        }
    };
    let client = connect(&args.connection).await?;
    let mut options = PutOptions::new();
    if args.prev_kv {
        options = options.prev_kv();
    }
    let response = client.put(args.key, value, options).await?;
    Ok(match args.connection.write_out {
        Format::Json => json_text(output::put_json(&response)),
        Format::Table | Format::Simple => {
            let mut out = String::from("OK\n");
            if let Some(prev) = &response.prev_kv {
                out.push_str(&format!(
                    "{}\n{}\n",
                    output::text(&prev.key),
                    output::text(&prev.value)
                ));
            }
            out
        }
    })
}

async fn get(args: GetArgs) -> Result<String, Failure> {
    let mut options = GetOptions::new().consistency(args.connection.consistency);
    if let Some(end) = &args.range_end {
        options = options.range_end(end.clone());
    }
    if args.prefix {
        options = options.prefix();
    }
    if args.from_key {
        options = options.from_key();
    }
    if args.rev != 0 {
        options = options.revision(args.rev);
    }
    if args.keys_only {
        options = options.keys_only();
    }
    if args.count_only {
        options = options.count_only();
    }
    if args.limit != 0 {
        options = options.limit(args.limit);
    }
    if args.sort_by.is_some() || args.order.is_some() {
        let target = match args.sort_by.unwrap_or(SortBy::Key) {
            SortBy::Key => SortTarget::Key,
            SortBy::Version => SortTarget::Version,
            SortBy::Create => SortTarget::Create,
            SortBy::Modify => SortTarget::Mod,
            SortBy::Value => SortTarget::Value,
        };
        let order = match args.order.unwrap_or(Order::Ascend) {
            Order::Ascend => SortOrder::Ascend,
            Order::Descend => SortOrder::Descend,
        };
        options = options.sort(target, order);
    }
    let client = connect(&args.connection).await?;
    let response = client.get(args.key, options).await?;
    Ok(match args.connection.write_out {
        Format::Json => json_text(output::get_json(&response)),
        _ if args.print_value_only => output::get_simple(&response, true, false, args.count_only),
        Format::Simple => output::get_simple(&response, false, args.keys_only, args.count_only),
        Format::Table => output::get_table(&response, args.keys_only, args.count_only),
    })
}

async fn del(args: DelArgs) -> Result<String, Failure> {
    let mut options = DeleteOptions::new();
    if let Some(end) = &args.range_end {
        options = options.range_end(end.clone());
    }
    if args.prefix {
        options = options.prefix();
    }
    if args.from_key {
        options = options.from_key();
    }
    if args.prev_kv {
        options = options.prev_kv();
    }
    let client = connect(&args.connection).await?;
    let response = client.delete(args.key, options).await?;
    Ok(match args.connection.write_out {
        Format::Json => json_text(output::delete_json(&response)),
        Format::Table | Format::Simple => {
            let mut out = format!("{}\n", response.deleted);
            for prev in &response.prev_kvs {
                out.push_str(&format!(
                    "{}\n{}\n",
                    output::text(&prev.key),
                    output::text(&prev.value)
                ));
            }
            out
        }
    })
}

/// Reads the transaction text: from a file, from stdin, or block by block with prompts.
fn read_txn_script(args: &TxnArgs) -> Result<String, Failure> {
    if let Some(path) = &args.file {
        return std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())));
    }
    let stdin = std::io::stdin();
    if !args.interactive {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("cannot read the transaction from stdin: {e}")))?;
        return Ok(text);
    }
    let prompts = [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
    ];
    let mut text = String::new();
    let mut lines = stdin.lock();
    for prompt in prompts {
        eprintln!("{prompt}");
        loop {
            let mut line = String::new();
            let read = std::io::BufRead::read_line(&mut lines, &mut line)
                .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
            if read == 0 || line.trim().is_empty() {
                break;
            }
            text.push_str(&line);
        }
        text.push('\n');
        eprintln!();
    }
    Ok(text)
}

async fn txn(args: TxnArgs) -> Result<String, Failure> {
    let script = read_txn_script(&args)?;
    let txn = txn_script::parse_script(&script).map_err(Failure::Usage)?;
    let client = connect(&args.connection).await?;
    let response = client.txn(txn).await?;
    Ok(match args.connection.write_out {
        Format::Json => json_text(output::txn_json(&response)),
        Format::Table | Format::Simple => output::txn_simple(&response),
    })
}

fn member_json(member: &Member) -> serde_json::Value {
    json!({
        "id": output::hex(member.id),
        "name": member.name,
        "peer_urls": member.peer_urls,
        "client_urls": member.client_urls,
        "is_learner": member.is_learner,
    })
}

async fn member_list(connection: &ConnectionArgs) -> Result<String, Failure> {
    let client = connect(connection).await?;
    let mut members = client.member_list().await?;
    members.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(match connection.write_out {
        Format::Json => json_text(json!({
            "members": members.iter().map(member_json).collect::<Vec<_>>(),
        })),
        Format::Simple => members
            .iter()
            .map(|m| {
                format!(
                    "{}, {}, {}, {}, {}, {}\n",
                    output::hex(m.id),
                    started(m),
                    m.name,
                    m.peer_urls.join(","),
                    m.client_urls.join(","),
                    m.is_learner
                )
            })
            .collect(),
        Format::Table => {
            let mut table = Table::new(&[
                "ID",
                "STATUS",
                "NAME",
                "PEER ADDRS",
                "CLIENT ADDRS",
                "IS LEARNER",
            ]);
            for m in &members {
                table.row(vec![
                    output::hex(m.id),
                    started(m).to_string(),
                    m.name.clone(),
                    m.peer_urls.join(","),
                    m.client_urls.join(","),
                    m.is_learner.to_string(),
                ]);
            }
            table.render()
        }
    })
}

fn parse_member_id(text: &str) -> Result<u64, Failure> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| {
            Failure::Usage(format!(
                "{text:?} is not a member id (hex, as member list shows)"
            ))
        })
}

async fn member_change(
    command: MemberCommand,
    connection: &ConnectionArgs,
) -> Result<String, Failure> {
    let client = connect(connection).await?;
    let (headline, members) = match command {
        MemberCommand::List => unreachable!("handled by member_list"),
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let (member, members) = client.member_add(&peer_urls, learner).await?;
            let mut initial: Vec<String> = members
                .iter()
                .filter(|m| m.id != member.id && !m.name.is_empty())
                .filter_map(|m| m.peer_urls.first().map(|url| format!("{}={url}", m.name)))
                .collect();
            initial.push(format!("{name}={peer_urls}"));
            let headline = format!(
                "Member {} added{}. Start it with:\n  quorumdb server --name {name} --listen-peer-urls {peer_urls} --initial-cluster {} --initial-cluster-state existing\n{}",
                output::hex(member.id),
                if learner {
                    " as a learner (promote it once it has caught up)"
                } else {
                    ""
                },
                initial.join(","),
                if learner {
                    format!("then: quorumdb member promote {}\n", output::hex(member.id))
                } else {
                    String::new()
                },
            );
            (headline, members)
        }
        MemberCommand::Remove { id } => {
            let id = parse_member_id(&id)?;
            let members = client.member_remove(id).await?;
            (format!("Member {} removed.\n", output::hex(id)), members)
        }
        MemberCommand::Promote { id } => {
            let id = parse_member_id(&id)?;
            let members = client.member_promote(id).await?;
            (
                format!("Member {} promoted to voter.\n", output::hex(id)),
                members,
            )
        }
        MemberCommand::Update { id, peer_urls } => {
            let id = parse_member_id(&id)?;
            let members = client.member_update(id, &peer_urls).await?;
            (
                format!(
                    "Member {} updated: peer URL {peer_urls}.\n",
                    output::hex(id)
                ),
                members,
            )
        }
    };
    Ok(match connection.write_out {
        Format::Json => json_text(json!({
            "members": members.iter().map(member_json).collect::<Vec<_>>(),
        })),
        _ => headline,
    })
}

async fn snapshot(
    command: SnapshotCommand,
    connection: &ConnectionArgs,
) -> Result<String, Failure> {
    use crate::store::backup;
    match command {
        SnapshotCommand::Save {
            file,
            download_timeout,
        } => {
            let client = connect(connection).await?;
            let show = std::io::stderr().is_terminal();
            let bytes = client
                .snapshot(download_timeout, |received, remaining| {
                    if show {
                        let total = received + remaining;
                        eprint!(
                            "\rreceived {:.1} of {:.1} MB ({:.0}%)",
                            received as f64 / 1e6,
                            total as f64 / 1e6,
                            100.0 * received as f64 / total.max(1) as f64
                        );
                    }
                })
                .await?;
            if show {
                eprintln!();
            }
            let (summary, checksum) = backup::inspect(&bytes).map_err(|e| Error::Unknown {
                message: format!("the downloaded backup is not usable: {e}"),
            })?;
            let partial = file.with_extension("part");
            let written = std::fs::write(&partial, &bytes)
                .and_then(|()| std::fs::File::open(&partial)?.sync_all())
                .and_then(|()| std::fs::rename(&partial, &file));
            if let Err(e) = written {
                return Err(Failure::Usage(format!(
                    "cannot write {}: {e}",
                    file.display()
                )));
            }
            Ok(match connection.write_out {
                Format::Json => json_text(json!({
                    "file": file.display().to_string(),
                    "bytes": bytes.len(),
                    "revision": summary.revision,
                    "compact_revision": summary.compact_revision,
                    "entries": summary.entries,
                    "sha256": checksum,
                })),
                _ => format!(
                    "Snapshot saved at {} ({} bytes, revision {}, sha256 {checksum})\n",
                    file.display(),
                    bytes.len(),
                    summary.revision
                ),
            })
        }
        SnapshotCommand::Status { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let (summary, checksum) = backup::inspect(&bytes).map_err(|e| Error::Failed {
                code: tonic::Code::DataLoss,
                message: e.to_string(),
            })?;
            Ok(match connection.write_out {
                Format::Json => json_text(json!({
                    "bytes": bytes.len(),
                    "revision": summary.revision,
                    "compact_revision": summary.compact_revision,
                    "entries": summary.entries,
                    "sha256": checksum,
                })),
                _ => {
                    let mut table =
                        Table::new(&["REVISION", "COMPACT REVISION", "ENTRIES", "SIZE", "SHA256"]);
                    table.row(vec![
                        summary.revision.to_string(),
                        summary.compact_revision.to_string(),
                        summary.entries.to_string(),
                        human_bytes(bytes.len() as i64),
                        checksum,
                    ]);
                    table.render()
                }
            })
        }
        SnapshotCommand::Restore { file, data_dir } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let summary = backup::restore(&bytes, &data_dir).map_err(|e| Error::Failed {
                code: tonic::Code::FailedPrecondition,
                message: e.to_string(),
            })?;
            Ok(format!(
                "Restored revision {} ({} entries) into {}. Start the member on it with a new --initial-cluster.\n",
                summary.revision,
                summary.entries,
                data_dir.display()
            ))
        }
    }
}

/// etcd's member status: a member that has not published its client URLs has not started.
fn started(member: &Member) -> &'static str {
    if member.client_urls.is_empty() {
        "unstarted"
    } else {
        "started"
    }
}

/// One row of `endpoint status`.
struct StatusRow {
    endpoint: String,
    id: Option<u64>,
    name: String,
    role: &'static str,
    status: Option<EndpointStatus>,
    lag: Option<u64>,
    error: Option<String>,
}

fn status_rows(
    members: &[Member],
    statuses: Vec<(String, Result<EndpointStatus, Error>)>,
) -> Vec<StatusRow> {
    // The leader's last log index, as the leader itself reports it.
    let leader_index = statuses.iter().find_map(|(_, status)| match status {
        Ok(s) if s.is_leader() => Some(s.raft_index),
        _ => None,
    });
    let name_of = |id: u64| {
        members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    let member_at = |endpoint: &str| {
        members
            .iter()
            .find(|m| m.client_urls.iter().any(|url| url == endpoint))
    };
    statuses
        .into_iter()
        .map(|(endpoint, status)| match status {
            Ok(status) => {
                let role = if status.is_leader() {
                    "leader"
                } else if status.is_learner {
                    "learner"
                } else {
                    "follower"
                };
                let error = (!status.errors.is_empty()).then(|| status.errors.join("; "));
                StatusRow {
                    id: Some(status.member_id),
                    name: name_of(status.member_id),
                    role,
                    lag: leader_index.map(|index| index.saturating_sub(status.raft_applied_index)),
                    error,
                    endpoint,
                    status: Some(status),
                }
            }
            Err(error) => {
                let member = member_at(&endpoint);
                StatusRow {
                    id: member.map(|m| m.id),
                    name: member.map(|m| m.name.clone()).unwrap_or_default(),
                    role: "unreachable",
                    status: None,
                    lag: None,
                    error: Some(error.to_string()),
                    endpoint,
                }
            }
        })
        .collect()
}

async fn endpoint_status(connection: &ConnectionArgs) -> Result<String, Failure> {
    let client = connect(connection).await?;
    // Serializable: a diagnosis has to work without a quorum.
    let members = client.member_list_as(Consistency::Serializable).await?;
    let mut rows = status_rows(&members, client.status_all().await);
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.endpoint.cmp(&b.endpoint)));
    let failed = rows.iter().any(|row| row.status.is_none());
    let out = match connection.write_out {
        Format::Json => json_text(serde_json::Value::Array(
            rows.iter()
                .map(|row| {
                    let s = row.status.as_ref();
                    json!({
                        "endpoint": row.endpoint,
                        "id": row.id.map(output::hex),
                        "name": row.name,
                        "role": row.role,
                        "raft_term": s.map(|s| s.raft_term),
                        "raft_index": s.map(|s| s.raft_index),
                        "raft_applied_index": s.map(|s| s.raft_applied_index),
                        "revision": s.map(|s| s.revision),
                        "db_size": s.map(|s| s.db_size),
                        "lag": row.lag,
                        "error": row.error,
                    })
                })
                .collect(),
        )),
        Format::Table | Format::Simple => {
            let mut table = Table::new(&[
                "ID",
                "NAME",
                "ENDPOINT",
                "ROLE",
                "RAFT TERM",
                "RAFT INDEX",
                "APPLIED INDEX",
                "REVISION",
                "DB SIZE",
                "LAG",
                "ERRORS",
            ]);
            let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
            for row in &rows {
                let s = row.status.as_ref();
                table.row(vec![
                    or_dash(row.id.map(output::hex)),
                    row.name.clone(),
                    row.endpoint.clone(),
                    row.role.to_string(),
                    or_dash(s.map(|s| s.raft_term.to_string())),
                    or_dash(s.map(|s| s.raft_index.to_string())),
                    or_dash(s.map(|s| s.raft_applied_index.to_string())),
                    or_dash(s.map(|s| s.revision.to_string())),
                    or_dash(s.map(|s| human_bytes(s.db_size))),
                    or_dash(row.lag.map(|lag| lag.to_string())),
                    row.error.clone().unwrap_or_default(),
                ]);
            }
            table.render()
        }
    };
    if failed {
        // The table is the answer, but a member that did not answer is a failure for scripts.
        print!("{out}");
        return Err(Failure::Reported);
    }
    Ok(out)
}

async fn endpoint_health(connection: &ConnectionArgs) -> Result<String, Failure> {
    let client = connect(connection).await?;
    // In member-name order, so the output reads the same on every run.
    let members = client
        .member_list_as(Consistency::Serializable)
        .await
        .unwrap_or_default();
    let name_of = |endpoint: &str| {
        members
            .iter()
            .find(|m| m.client_urls.iter().any(|url| url == endpoint))
            .map(|m| m.name.clone())
    };
    let mut endpoints = client.endpoints();
    endpoints.sort_by_key(|endpoint| (name_of(endpoint), endpoint.clone()));
    let checks = futures::future::join_all(endpoints.iter().map(|e| client.health(e))).await;
    let unhealthy = checks.iter().any(Result::is_err);
    let out = match connection.write_out {
        Format::Json => json_text(serde_json::Value::Array(
            endpoints
                .iter()
                .zip(&checks)
                .map(|(endpoint, check)| {
                    json!({
                        "endpoint": endpoint,
                        "health": check.is_ok(),
                        "took_ms": check.as_ref().ok().map(|took| took.as_secs_f64() * 1000.0),
                        "error": check.as_ref().err().map(|e| e.to_string()),
                    })
                })
                .collect(),
        )),
        Format::Simple => endpoints
            .iter()
            .zip(&checks)
            .map(|(endpoint, check)| match check {
                Ok(took) => format!(
                    "{endpoint} is healthy: successfully committed proposal: took = {took:?}\n"
                ),
                Err(error) => format!("{endpoint} is unhealthy: {error}\n"),
            })
            .collect(),
        Format::Table => {
            let mut table = Table::new(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"]);
            for (endpoint, check) in endpoints.iter().zip(&checks) {
                table.row(match check {
                    Ok(took) => vec![
                        endpoint.clone(),
                        "true".to_string(),
                        format!("{:.1}ms", took.as_secs_f64() * 1000.0),
                        String::new(),
                    ],
                    Err(error) => vec![
                        endpoint.clone(),
                        "false".to_string(),
                        "-".to_string(),
                        error.to_string(),
                    ],
                });
            }
            table.render()
        }
    };
    if unhealthy {
        print!("{out}");
        return Err(Failure::Reported);
    }
    Ok(out)
}

/// Bytes as etcdctl shows db sizes: 20 kB, 1.2 MB.
fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_flags_before_the_verb_move_after_it() {
        let moved = |args: &[&str]| -> Vec<String> {
            connection_flags_after_verb(args.iter().map(std::ffi::OsString::from).collect())
                .into_iter()
                .map(|a| a.into_string().expect("UTF-8"))
                .collect()
        };
        assert_eq!(
            moved(&["quorumdb", "--endpoints", "a:1", "-w", "json", "get", "k"]),
            ["quorumdb", "get", "k", "--endpoints", "a:1", "-w", "json"]
        );
        assert_eq!(
            moved(&[
                "quorumdb",
                "--endpoints=a:1",
                "--log-format",
                "json",
                "member",
                "list"
            ]),
            [
                "quorumdb",
                "--log-format",
                "json",
                "member",
                "list",
                "--endpoints=a:1"
            ]
        );
        assert_eq!(
            moved(&["quorumdb", "get", "k", "--endpoints", "a:1"]),
            ["quorumdb", "get", "k", "--endpoints", "a:1"],
            "already after the verb: untouched"
        );
        assert_eq!(
            moved(&["quorumdb", "--frob", "get"]),
            ["quorumdb", "--frob", "get"]
        );
    }

    #[test]
    fn durations_take_etcdctl_forms() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_print_in_decimal_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(20_480), "20.5 kB");
        assert_eq!(human_bytes(3_500_000), "3.5 MB");
    }

    #[test]
    fn an_unknown_outcome_exits_3_and_a_failure_1() {
        let unknown = Error::Unknown {
            message: "leader changed".into(),
        };
        assert_eq!(exit_code(&unknown), EXIT_UNKNOWN);
        let failed = Error::InvalidArgument {
            message: "key is not provided".into(),
        };
        assert_eq!(exit_code(&failed), EXIT_FAILED);
    }
}
