//! Node configuration: flags (named like etcd's), `QUORUMDB_*` environment variables and an
//! optional TOML file, merged in that order of precedence and validated once at start-up.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::compactor::AutoCompaction;
use crate::limits;
use crate::types::Member;
use crate::types::NodeId;

/// `quorumdb server` flags. Every flag can also come from `QUORUMDB_<FLAG>` (e.g.
/// `QUORUMDB_INITIAL_CLUSTER`) or from the `--config-file` (same names, snake_case).
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerArgs {
    /// Human-readable name of this member; must appear in --initial-cluster.
    #[arg(long, env = "QUORUMDB_NAME")]
    pub name: Option<String>,
    /// Directory for the database and snapshots (default: `<name>.quorumdb`).
    #[arg(long, env = "QUORUMDB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to serve clients on (default: http://127.0.0.1:2379).
    #[arg(long, env = "QUORUMDB_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Client URLs announced to the cluster (default: the listen client URLs).
    #[arg(long, env = "QUORUMDB_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// URL to serve the Raft peer service on (default: http://127.0.0.1:2380).
    #[arg(long, env = "QUORUMDB_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Peer URL announced to the cluster (default: the listen peer URL).
    #[arg(long, env = "QUORUMDB_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial members: `n1=http://127.0.0.1:2380,n2=...`, or with explicit ids
    /// `n1=1@http://127.0.0.1:2380,...`. Ids are otherwise derived from the names.
    #[arg(long, env = "QUORUMDB_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` bootstraps a cluster from --initial-cluster; `existing` joins one.
    #[arg(long, env = "QUORUMDB_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Token that makes the cluster id unique among clusters with the same members.
    #[arg(long, env = "QUORUMDB_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "QUORUMDB_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Raft election timeout in milliseconds (elections start between it and twice it).
    #[arg(long, env = "QUORUMDB_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Largest client request in bytes (etcd's --max-request-bytes).
    #[arg(long, env = "QUORUMDB_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Largest number of operations in one list of a transaction (etcd's --max-txn-ops).
    #[arg(long, env = "QUORUMDB_MAX_TXN_OPS")]
    pub max_txn_ops: Option<usize>,
    /// Automatic compaction: `periodic` (keep a duration of history) or `revision` (keep a
    /// number of revisions); etcd's flag, default periodic.
    #[arg(long, env = "QUORUMDB_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// History to keep: periodic `1h`, `30m`, `90s` or hours (`1`); revision a count; 0 (the
    /// default) turns automatic compaction off.
    #[arg(long, env = "QUORUMDB_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// Space quota of the database in bytes (etcd's flag; default 2 GiB). Beyond it the NOSPACE
    /// alarm is raised and puts are refused until space is freed and the alarm disarmed.
    #[arg(long, env = "QUORUMDB_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: Option<u64>,
    /// Bound on the database's page cache in bytes (default 64 MiB). Pages beyond it are read
    /// back from the files (usually the kernel's page cache) when needed; a member's memory then
    /// stays near this bound plus the live keys, whatever the history written.
    #[arg(long, env = "QUORUMDB_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// Applied entries between snapshots; the log before a snapshot is then purged (etcd's flag;
    /// default 100,000 as in etcd 3.4). Lower means smaller logs and faster restarts; a snapshot
    /// costs a db flush (the key space is the snapshot, encoded only to send to a follower).
    #[arg(long, env = "QUORUMDB_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Comma-separated http://IP:PORT URLs serving /metrics, /health, /readyz, /livez, /leader,
    /// /replica, /status and the status page (etcd's flag; default: none).
    #[arg(long, env = "QUORUMDB_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// CPU scheduling policy of the server's threads on Linux: `batch` (the default,
    /// SCHED_BATCH: a woken thread never preempts the one that woke it) or `normal`
    /// (SCHED_OTHER, the kernel's default). Same CPU share either way.
    #[arg(long, env = "QUORUMDB_CPU_SCHEDULING")]
    pub cpu_scheduling: Option<String>,
    /// Lets tests cut this node's peer links through the peer service. Never in production.
    #[arg(long, env = "QUORUMDB_ENABLE_FAULT_INJECTION")]
    pub enable_fault_injection: Option<bool>,
    /// Read settings from this TOML file; flags and environment override it.
    #[arg(long, env = "QUORUMDB_CONFIG_FILE")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

/// Whether this start bootstraps a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// A validated configuration: every field is set and consistent.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: NodeId,
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_url: String,
    pub listen_peer_url: String,
    pub advertise_peer_url: String,
    /// The initial members by id.
    pub initial_cluster: BTreeMap<NodeId, Member>,
    pub cluster_state: ClusterState,
    pub cluster_id: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Where the HTTP observability endpoints listen (none by default).
    pub listen_metrics_urls: Vec<String>,
    /// Database size beyond which the NOSPACE alarm is raised.
    pub quota_backend_bytes: u64,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Bound on the database's page cache.
    pub cache_bytes: u64,
    pub auto_compaction: AutoCompaction,
    pub cpu_scheduling: CpuScheduling,
    pub enable_fault_injection: bool,
}

/// The CPU scheduling policy a server's threads run under (`--cpu-scheduling`).
///
/// One put crosses a dozen threads on three members (client connection, Raft core, log
/// flusher, replication, and the same again on each follower), mostly on few cores. Under
/// SCHED_OTHER a thread woken on a busy core preempts the thread that woke it: two context
/// switches more per hand-off, and the waker's own work (often the next hand-off) waits. Under
/// SCHED_BATCH a woken thread runs when a core is idle, when the running thread blocks or when
/// its slice ends; the CPU share (weight, nice) is the same. Measured side by side with 1, 64
/// and 1000 clients: CPU per put -17% / -15% / -6%, req/s +8% / +15% / +5%, put-1 p50 -9%
/// (bench/results/2026-12-06-cpu-scheduling.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuScheduling {
    #[default]
    Batch,
    Normal,
}

impl CpuScheduling {
    fn parse(text: &str) -> Result<CpuScheduling, ConfigError> {
        match text {
            "batch" => Ok(CpuScheduling::Batch),
            "normal" => Ok(CpuScheduling::Normal),
            other => Err(invalid(format!(
                "--cpu-scheduling must be batch or normal (got {other:?})"
            ))),
        }
    }

    /// The Linux policy's name, for logs.
    pub fn linux_name(self) -> &'static str {
        match self {
            CpuScheduling::Batch => "SCHED_BATCH",
            CpuScheduling::Normal => "SCHED_OTHER",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// FNV-1a, 64 bits: a stable hash (unlike std's), so every member derives the same ids.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The id of a member named `name`: never 0 (etcd treats 0 as "none").
pub fn derive_node_id(name: &str) -> NodeId {
    stable_hash(name.as_bytes()).max(1)
}

fn check_url(flag: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim();
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        invalid(format!(
            "--{flag}: {url:?} must start with http:// (TLS is not supported yet)"
        ))
    })?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| {
        invalid(format!(
            "--{flag}: {url:?} must name a port, e.g. http://127.0.0.1:2379"
        ))
    })?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid(format!(
            "--{flag}: {url:?} must be http://HOST:PORT"
        )));
    }
    Ok(format!("http://{authority}"))
}

fn split_urls(flag: &str, list: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|url| check_url(flag, url))
        .collect::<Result<_, _>>()?;
    if urls.is_empty() {
        return Err(invalid(format!("--{flag} is empty")));
    }
    Ok(urls)
}

/// Parses `name=url` or `name=id@url` entries.
pub fn parse_initial_cluster(list: &str) -> Result<BTreeMap<NodeId, Member>, ConfigError> {
    let mut members = BTreeMap::new();
    for entry in list.split(',').filter(|s| !s.trim().is_empty()) {
        let (name, target) = entry.trim().split_once('=').ok_or_else(|| {
            invalid(format!(
                "--initial-cluster entry {entry:?} must be NAME=URL or NAME=ID@URL"
            ))
        })?;
        if name.is_empty() {
            return Err(invalid(format!(
                "--initial-cluster entry {entry:?} has an empty name"
            )));
        }
        let (id, url) = match target.split_once('@') {
            Some((id, url)) => {
                let id = id
                    .parse::<NodeId>()
                    .ok()
                    .filter(|id| *id != 0)
                    .ok_or_else(|| {
                        invalid(format!(
                            "--initial-cluster entry {entry:?}: id must be a non-zero integer"
                        ))
                    })?;
                (id, url)
            }
            None => (derive_node_id(name), target),
        };
        let member = Member {
            name: name.to_string(),
            peer_url: check_url("initial-cluster", url)?,
            client_url: String::new(),
        };
        if members.values().any(|m: &Member| m.name == member.name) {
            return Err(invalid(format!("--initial-cluster names {name:?} twice")));
        }
        if members.insert(id, member).is_some() {
            return Err(invalid(format!(
                "--initial-cluster: two members share the id {id}"
            )));
        }
    }
    if members.is_empty() {
        return Err(invalid("--initial-cluster lists no members"));
    }
    Ok(members)
}

impl ServerArgs {
    /// Fills what flags and environment left unset from the TOML file.
    fn merged(self) -> Result<ServerArgs, ConfigError> {
        let Some(path) = self.config_file.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file: ServerArgs = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(ServerArgs {
            name: self.name.or(file.name),
            data_dir: self.data_dir.or(file.data_dir),
            listen_client_urls: self.listen_client_urls.or(file.listen_client_urls),
            advertise_client_urls: self.advertise_client_urls.or(file.advertise_client_urls),
            listen_peer_urls: self.listen_peer_urls.or(file.listen_peer_urls),
            initial_advertise_peer_urls: self
                .initial_advertise_peer_urls
                .or(file.initial_advertise_peer_urls),
            initial_cluster: self.initial_cluster.or(file.initial_cluster),
            initial_cluster_state: self.initial_cluster_state.or(file.initial_cluster_state),
            initial_cluster_token: self.initial_cluster_token.or(file.initial_cluster_token),
            heartbeat_interval: self.heartbeat_interval.or(file.heartbeat_interval),
            election_timeout: self.election_timeout.or(file.election_timeout),
            max_request_bytes: self.max_request_bytes.or(file.max_request_bytes),
            max_txn_ops: self.max_txn_ops.or(file.max_txn_ops),
            listen_metrics_urls: self.listen_metrics_urls.or(file.listen_metrics_urls),
            quota_backend_bytes: self.quota_backend_bytes.or(file.quota_backend_bytes),
            snapshot_count: self.snapshot_count.or(file.snapshot_count),
            cache_bytes: self.cache_bytes.or(file.cache_bytes),
            auto_compaction_mode: self.auto_compaction_mode.or(file.auto_compaction_mode),
            auto_compaction_retention: self
                .auto_compaction_retention
                .or(file.auto_compaction_retention),
            cpu_scheduling: self.cpu_scheduling.or(file.cpu_scheduling),
            enable_fault_injection: self.enable_fault_injection.or(file.enable_fault_injection),
            config_file: Some(path),
        })
    }

    /// Merges the sources and validates everything, with a message naming the offending flag.
    pub fn into_config(self) -> Result<NodeConfig, ConfigError> {
        let args = self.merged()?;
        let name = args.name.ok_or_else(|| invalid("--name is required"))?;
        let data_dir = args
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("{name}.quorumdb")));
        let listen_client_urls = split_urls(
            "listen-client-urls",
            args.listen_client_urls
                .as_deref()
                .unwrap_or("http://127.0.0.1:2379"),
        )?;
        let advertise_client_url = match &args.advertise_client_urls {
            Some(list) => split_urls("advertise-client-urls", list)?.remove(0),
            None => listen_client_urls[0].clone(),
        };
        let mut listen_peer_urls = split_urls(
            "listen-peer-urls",
            args.listen_peer_urls
                .as_deref()
                .unwrap_or("http://127.0.0.1:2380"),
        )?;
        if listen_peer_urls.len() != 1 {
            return Err(invalid("--listen-peer-urls takes exactly one URL"));
        }
        let listen_peer_url = listen_peer_urls.remove(0);
        let advertise_peer_url = match &args.initial_advertise_peer_urls {
            Some(list) => split_urls("initial-advertise-peer-urls", list)?.remove(0),
            None => listen_peer_url.clone(),
        };
        let initial_cluster_text = args
            .initial_cluster
            .unwrap_or_else(|| format!("{name}={advertise_peer_url}"));
        let initial_cluster = parse_initial_cluster(&initial_cluster_text)?;
        let (id, this_member) = initial_cluster
            .iter()
            .find(|(_, m)| m.name == name)
            .ok_or_else(|| {
                invalid(format!(
                    "--name {name:?} is not listed in --initial-cluster {initial_cluster_text:?}"
                ))
            })?;
        if this_member.peer_url != advertise_peer_url {
            return Err(invalid(format!(
                "--initial-cluster gives {name:?} the peer URL {} but this node advertises {advertise_peer_url}",
                this_member.peer_url
            )));
        }
        let cluster_state = match args.initial_cluster_state.as_deref().unwrap_or("new") {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(invalid(format!(
                    "--initial-cluster-state must be new or existing, not {other:?}"
                )));
            }
        };
        let token = args
            .initial_cluster_token
            .unwrap_or_else(|| "quorumdb-cluster".to_string());
        let mut identity: Vec<String> = initial_cluster
            .iter()
            .map(|(id, m)| format!("{id}={}", m.peer_url))
            .collect();
        identity.push(token);
        let cluster_id = stable_hash(identity.join(",").as_bytes()).max(1);

        let heartbeat_interval_ms = args
            .heartbeat_interval
            .unwrap_or(limits::HEARTBEAT_INTERVAL_MS);
        let election_timeout_ms = args
            .election_timeout
            .unwrap_or(limits::ELECTION_TIMEOUT_MS_MIN);
        if heartbeat_interval_ms == 0 {
            return Err(invalid("--heartbeat-interval must be positive"));
        }
        if election_timeout_ms > limits::ELECTION_TIMEOUT_MS_LIMIT_MAX {
            return Err(invalid(format!(
                "--election-timeout ({election_timeout_ms} ms) must be at most {} ms",
                limits::ELECTION_TIMEOUT_MS_LIMIT_MAX
            )));
        }
        if election_timeout_ms < 3 * heartbeat_interval_ms {
            return Err(invalid(format!(
                "--election-timeout ({election_timeout_ms} ms) must be at least 3 x --heartbeat-interval ({heartbeat_interval_ms} ms)"
            )));
        }
        let max_request_bytes = args.max_request_bytes.unwrap_or(limits::REQUEST_BYTES_MAX);
        if max_request_bytes == 0 || max_request_bytes > limits::REQUEST_BYTES_LIMIT_MAX {
            return Err(invalid(format!(
                "--max-request-bytes must be between 1 and {} bytes",
                limits::REQUEST_BYTES_LIMIT_MAX
            )));
        }
        let listen_metrics_urls = match &args.listen_metrics_urls {
            Some(list) if !list.trim().is_empty() => split_urls("listen-metrics-urls", list)?,
            _ => Vec::new(),
        };
        // etcd reads 0 as "the default".
        let quota_backend_bytes = match args.quota_backend_bytes {
            None | Some(0) => limits::QUOTA_BACKEND_BYTES_DEFAULT,
            Some(bytes) if bytes > limits::QUOTA_BACKEND_BYTES_LIMIT_MAX => {
                return Err(invalid(format!(
                    "--quota-backend-bytes must be at most {} bytes",
                    limits::QUOTA_BACKEND_BYTES_LIMIT_MAX
                )));
            }
            Some(bytes) => bytes,
        };
        let snapshot_count = args
            .snapshot_count
            .unwrap_or(limits::SNAPSHOT_COUNT_DEFAULT);
        if !(limits::SNAPSHOT_COUNT_MIN..=limits::SNAPSHOT_COUNT_MAX).contains(&snapshot_count) {
            return Err(invalid(format!(
                "--snapshot-count must be between {} and {} entries (got {snapshot_count})",
                limits::SNAPSHOT_COUNT_MIN,
                limits::SNAPSHOT_COUNT_MAX
            )));
        }
        let cache_bytes = args.cache_bytes.unwrap_or(limits::CACHE_BYTES_DEFAULT);
        if !(limits::CACHE_BYTES_MIN..=limits::CACHE_BYTES_MAX).contains(&cache_bytes) {
            return Err(invalid(format!(
                "--cache-bytes must be between {} and {} bytes (got {cache_bytes})",
                limits::CACHE_BYTES_MIN,
                limits::CACHE_BYTES_MAX
            )));
        }
        let auto_compaction = AutoCompaction::parse(
            args.auto_compaction_mode.as_deref().unwrap_or("periodic"),
            args.auto_compaction_retention.as_deref().unwrap_or("0"),
        )
        .map_err(invalid)?;
        let cpu_scheduling = match args.cpu_scheduling.as_deref() {
            Some(text) => CpuScheduling::parse(text)?,
            None => CpuScheduling::default(),
        };
        let max_txn_ops = args.max_txn_ops.unwrap_or(limits::TXN_OPS_MAX);
        if max_txn_ops == 0 {
            return Err(invalid("--max-txn-ops must be positive"));
        }
        Ok(NodeConfig {
            id: *id,
            name,
            data_dir,
            listen_client_urls,
            advertise_client_url,
            listen_peer_url,
            advertise_peer_url,
            initial_cluster,
            cluster_state,
            cluster_id,
            heartbeat_interval_ms,
            election_timeout_ms,
            max_request_bytes,
            max_txn_ops,
            listen_metrics_urls,
            quota_backend_bytes,
            snapshot_count,
            cache_bytes,
            auto_compaction,
            cpu_scheduling,
            enable_fault_injection: args.enable_fault_injection.unwrap_or(false),
        })
    }
}

impl NodeConfig {
    /// This node as a member of the cluster, with the URLs it advertises.
    pub fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            peer_url: self.advertise_peer_url.clone(),
            client_url: self.advertise_client_url.clone(),
        }
    }

    /// The gRPC decode limit for client requests: the request limit plus etcd's 512 KiB slack.
    pub fn grpc_decode_bytes_max(&self) -> usize {
        self.max_request_bytes + 512 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, cluster: &str) -> ServerArgs {
        ServerArgs {
            name: Some(name.into()),
            listen_peer_urls: Some("http://127.0.0.1:2380".into()),
            initial_cluster: Some(cluster.into()),
            ..ServerArgs::default()
        }
    }

    #[test]
    fn ids_are_derived_from_names_and_agree_across_members() {
        let cluster = "n1=http://127.0.0.1:2380,n2=http://127.0.0.1:2480";
        let config = args("n1", cluster).into_config().unwrap();
        assert_eq!(config.id, derive_node_id("n1"));
        assert_eq!(config.initial_cluster.len(), 2);
        assert!(config.initial_cluster.contains_key(&derive_node_id("n2")));
    }

    #[test]
    fn explicit_ids_are_used() {
        let config = args("n1", "n1=7@http://127.0.0.1:2380")
            .into_config()
            .unwrap();
        assert_eq!(config.id, 7);
    }

    #[test]
    fn a_name_missing_from_the_cluster_is_refused_with_a_message() {
        let error = args("n9", "n1=http://127.0.0.1:2380")
            .into_config()
            .unwrap_err();
        assert!(
            error.to_string().contains("\"n9\" is not listed"),
            "{error}"
        );
    }

    #[test]
    fn urls_without_port_or_scheme_are_refused() {
        assert!(args("n1", "n1=127.0.0.1:2380").into_config().is_err());
        assert!(args("n1", "n1=http://127.0.0.1").into_config().is_err());
    }

    #[test]
    fn election_timeout_must_exceed_three_heartbeats() {
        let mut a = args("n1", "n1=http://127.0.0.1:2380");
        a.heartbeat_interval = Some(100);
        a.election_timeout = Some(250);
        assert!(
            a.into_config()
                .unwrap_err()
                .to_string()
                .contains("--election-timeout")
        );
    }

    #[test]
    fn snapshot_count_defaults_to_etcds_and_refuses_values_below_the_kept_log() {
        let config = args("n1", "n1=http://127.0.0.1:2380")
            .into_config()
            .unwrap();
        assert_eq!(config.snapshot_count, limits::SNAPSHOT_COUNT_DEFAULT);
        let mut a = args("n1", "n1=http://127.0.0.1:2380");
        a.snapshot_count = Some(limits::LOG_ENTRIES_KEPT_AFTER_SNAPSHOT);
        let error = a.into_config().unwrap_err().to_string();
        assert!(
            error.contains("--snapshot-count must be between 1001"),
            "{error}"
        );
        let mut a = args("n1", "n1=http://127.0.0.1:2380");
        a.snapshot_count = Some(5000);
        assert_eq!(a.into_config().unwrap().snapshot_count, 5000);
    }

    #[test]
    fn cpu_scheduling_defaults_to_batch_and_refuses_other_policies_by_name() {
        let config = args("n1", "n1=http://127.0.0.1:2380")
            .into_config()
            .unwrap();
        assert_eq!(config.cpu_scheduling, CpuScheduling::Batch);
        let mut a = args("n1", "n1=http://127.0.0.1:2380");
        a.cpu_scheduling = Some("normal".into());
        assert_eq!(
            a.into_config().unwrap().cpu_scheduling,
            CpuScheduling::Normal
        );
        let mut a = args("n1", "n1=http://127.0.0.1:2380");
        a.cpu_scheduling = Some("fifo".into());
        let error = a.into_config().unwrap_err().to_string();
        assert!(
            error.contains("--cpu-scheduling must be batch or normal (got \"fifo\")"),
            "{error}"
        );
    }

    #[test]
    fn cache_bytes_defaults_to_64_mib_and_refuses_values_outside_its_limits() {
        let config = args("n1", "n1=http://127.0.0.1:2380")
            .into_config()
            .unwrap();
        assert_eq!(config.cache_bytes, 64 << 20);
        for refused in [0, limits::CACHE_BYTES_MIN - 1, limits::CACHE_BYTES_MAX + 1] {
            let mut a = args("n1", "n1=http://127.0.0.1:2380");
            a.cache_bytes = Some(refused);
            let error = a.into_config().unwrap_err().to_string();
            assert!(
                error.contains("--cache-bytes must be between 1048576 and"),
                "{error}"
            );
        }
        let mut a = args("n1", "n1=http://127.0.0.1:2380");
        a.cache_bytes = Some(256 << 20);
        assert_eq!(a.into_config().unwrap().cache_bytes, 256 << 20);
    }

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.toml");
        std::fs::write(
            &path,
            "name = \"n1\"\ninitial_cluster = \"n1=http://127.0.0.1:2380\"\nmax_txn_ops = 5\nelection_timeout = 900\ncache_bytes = 2097152\n",
        )
        .unwrap();
        let a = ServerArgs {
            config_file: Some(path),
            election_timeout: Some(1500),
            ..ServerArgs::default()
        };
        let config = a.into_config().unwrap();
        assert_eq!(config.max_txn_ops, 5);
        assert_eq!(config.election_timeout_ms, 1500);
        assert_eq!(config.cache_bytes, 2 << 20);
    }
}
