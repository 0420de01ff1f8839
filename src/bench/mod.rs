//! `quorumdb bench`: a load generator over the etcd v3 KV API. It speaks only the public wire
//! API, so the same run works against QuorumDB and against etcd.
//!
//! ```text
//! clients (tasks) --round robin--> connections (HTTP/2, grpc.rs) --round robin--> endpoints
//! each client: loop { pick key (sequential or seeded random) -> one request -> record latency }
//! until the total count or the duration is reached; then merge latencies -> report
//! ```
//!
//! Every run is bounded (`BENCH_DURATION_SECS_MAX`, a per-request timeout) and reproducible in
//! its key choice from `--seed` (printed in the report).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use serde::Serialize;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::pb::etcdserverpb as etcd;
use crate::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::rng::SplitMix64;

mod grpc;

/// The KV methods the workloads call.
const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
const TXN: &str = "/etcdserverpb.KV/Txn";

/// Longest run accepted: a benchmark is never an unbounded load loop.
pub const BENCH_DURATION_SECS_MAX: f64 = 3600.0;
/// Most concurrent clients and connections accepted.
pub const BENCH_CLIENTS_MAX: usize = 10_000;
pub const BENCH_CONNECTIONS_MAX: usize = 1_000;
/// A request that takes longer counts as an error (`deadline`).
pub const BENCH_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Put of one key per request.
    Put,
    /// Linearizable Range of one key.
    RangeLinearizable,
    /// Serializable Range of one key.
    RangeSerializable,
    /// A Txn with one Put and no compare.
    TxnPut,
    /// Linearizable Range or Put, reads in the `--read-ratio` proportion.
    Mixed,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Comma-separated client URLs (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub endpoints: String,
    /// gRPC connections, spread round robin over the endpoints.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent clients, spread round robin over the connections.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Stop after this many requests in total (default: run for --duration).
    #[arg(long)]
    pub total: Option<u64>,
    /// Seconds to run when --total is not given.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Bytes per key.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// Walk the key space in order instead of picking keys at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Share of reads in the mixed workload, 0.0 to 1.0.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Send requests only to endpoints that are not the leader (by Maintenance.Status).
    #[arg(long)]
    pub follower_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seed of the key choice (default: from the clock; printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid benchmark: {0}")]
    Invalid(String),
    #[error("cannot reach {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencyMs {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The result of a run; the JSON field names are stable for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub seed: u64,
    pub requests_ok: u64,
    /// Failed requests by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// For each code in `errors`: the first failure's message and when failures of it came.
    pub error_samples: BTreeMap<String, ErrorSample>,
    pub duration_secs: f64,
    pub qps: f64,
    pub latency_ms: LatencyMs,
}

/// What the failures of one gRPC code looked like, so a report says which cause it was (one
/// code, `Unavailable` say, covers several) and whether the failures came together.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorSample {
    /// The message of the earliest failure of this code, as the server sent it.
    pub first_message: String,
    /// Seconds from the start of the run to the earliest and the latest failure of this code.
    pub first_at_secs: f64,
    pub last_at_secs: f64,
}

/// Failures of one code as a client (and then the run) counts them.
#[derive(Debug, Clone)]
struct ErrorTally {
    count: u64,
    sample: ErrorSample,
}

impl ErrorTally {
    fn record(tallies: &mut BTreeMap<String, ErrorTally>, status: &tonic::Status, at_secs: f64) {
        let code = format!("{:?}", status.code());
        match tallies.get_mut(&code) {
            Some(tally) => {
                tally.count += 1;
                tally.sample.last_at_secs = at_secs;
            }
            None => {
                let sample = ErrorSample {
                    first_message: status.message().to_string(),
                    first_at_secs: at_secs,
                    last_at_secs: at_secs,
                };
                tallies.insert(code, ErrorTally { count: 1, sample });
            }
        }
    }

    /// Folds another client's tally of the same code into this one.
    fn merge(&mut self, other: ErrorTally) {
        self.count += other.count;
        if other.sample.first_at_secs < self.sample.first_at_secs {
            self.sample.first_message = other.sample.first_message;
            self.sample.first_at_secs = other.sample.first_at_secs;
        }
        self.sample.last_at_secs = self.sample.last_at_secs.max(other.sample.last_at_secs);
    }
}

/// splitmix64: a tiny, well-mixed generator; enough to pick keys reproducibly.
/// Key number `n` as exactly `size` bytes: zero-padded decimal, so keys sort like numbers.
fn key(n: u64, size: usize) -> Vec<u8> {
    let digits = format!("{n:0size$}");
    digits.as_bytes()[digits.len() - size..].to_vec()
}

/// Percentiles of sorted latencies (microseconds) by the nearest-rank rule.
fn percentiles(sorted_micros: &[u64]) -> LatencyMs {
    if sorted_micros.is_empty() {
        return LatencyMs::default();
    }
    let at = |q: f64| {
        let rank = ((q * sorted_micros.len() as f64).ceil() as usize).clamp(1, sorted_micros.len());
        sorted_micros[rank - 1] as f64 / 1000.0
    };
    LatencyMs {
        min: sorted_micros[0] as f64 / 1000.0,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: sorted_micros[sorted_micros.len() - 1] as f64 / 1000.0,
    }
}

impl BenchArgs {
    fn validate(&self) -> Result<Vec<String>, BenchError> {
        let invalid = |m: String| Err(BenchError::Invalid(m));
        let endpoints = crate::client::split_endpoint_list(&self.endpoints);
        if endpoints.is_empty() {
            return invalid("--endpoints is empty".into());
        }
        if self.clients == 0 || self.clients > BENCH_CLIENTS_MAX {
            return invalid(format!(
                "--clients must be between 1 and {BENCH_CLIENTS_MAX}"
            ));
        }
        if self.conns == 0 || self.conns > BENCH_CONNECTIONS_MAX {
            return invalid(format!(
                "--conns must be between 1 and {BENCH_CONNECTIONS_MAX}"
            ));
        }
        if self.total.is_none()
            && !(self.duration > 0.0 && self.duration <= BENCH_DURATION_SECS_MAX)
        {
            return invalid(format!(
                "--duration must be more than 0 and at most {BENCH_DURATION_SECS_MAX} seconds"
            ));
        }
        if self.total == Some(0) {
            return invalid("--total must be positive".into());
        }
        if self.key_size == 0 || self.key_space == 0 {
            return invalid("--key-size and --key-space must be positive".into());
        }
        if self.key_space.to_string().len() > self.key_size {
            return invalid(format!(
                "--key-size {} bytes cannot hold {} distinct keys",
                self.key_size, self.key_space
            ));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return invalid("--read-ratio must be between 0.0 and 1.0".into());
        }
        Ok(endpoints)
    }
}

async fn connect(endpoint: &str) -> Result<Channel, BenchError> {
    let connect_error = |reason: String| BenchError::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| connect_error(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| connect_error(e.to_string()))
}

/// The endpoints whose member is not the leader, by asking each for its status.
async fn followers(endpoints: &[String]) -> Result<Vec<String>, BenchError> {
    let mut followers = Vec::new();
    for endpoint in endpoints {
        let mut client = MaintenanceClient::new(connect(endpoint).await?);
        let status = client
            .status(etcd::StatusRequest {})
            .await
            .map_err(|e| BenchError::Connect {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?
            .into_inner();
        let member = status.header.map_or(0, |h| h.member_id);
        if status.leader != member {
            followers.push(endpoint.clone());
        }
    }
    if followers.is_empty() {
        return Err(BenchError::Invalid(
            "--follower-only: no endpoint is a follower".into(),
        ));
    }
    Ok(followers)
}

/// One request of the workload.
async fn request(
    connection: &mut grpc::Connection,
    args: &BenchArgs,
    key: Vec<u8>,
    read: bool,
) -> Result<(), tonic::Status> {
    let put = || etcd::PutRequest {
        key: key.clone(),
        value: vec![b'v'; args.val_size],
        ..Default::default()
    };
    let range = |serializable| etcd::RangeRequest {
        key: key.clone(),
        serializable,
        ..Default::default()
    };
    match (args.workload, read) {
        (Workload::Put, _) | (Workload::Mixed, false) => connection
            .unary::<_, etcd::PutResponse>(PUT, &put())
            .await
            .map(drop),
        (Workload::RangeLinearizable, _) | (Workload::Mixed, true) => connection
            .unary::<_, etcd::RangeResponse>(RANGE, &range(false))
            .await
            .map(drop),
        (Workload::RangeSerializable, _) => connection
            .unary::<_, etcd::RangeResponse>(RANGE, &range(true))
            .await
            .map(drop),
        (Workload::TxnPut, _) => {
            let txn = etcd::TxnRequest {
                compare: Vec::new(),
                success: vec![etcd::RequestOp {
                    request: Some(etcd::request_op::Request::RequestPut(put())),
                }],
                failure: Vec::new(),
            };
            connection
                .unary::<_, etcd::TxnResponse>(TXN, &txn)
                .await
                .map(drop)
        }
    }
}

/// Runs the benchmark to completion and reports it.
pub async fn run(args: BenchArgs) -> Result<Report, BenchError> {
    let mut endpoints = args.validate()?;
    if args.follower_only {
        endpoints = followers(&endpoints).await?;
    }
    let mut connections = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let connection = grpc::connect(endpoint, BENCH_REQUEST_TIMEOUT)
            .await
            .map_err(|reason| BenchError::Connect {
                endpoint: endpoint.clone(),
                reason,
            })?;
        connections.push(connection);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let args = Arc::new(args);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration.min(BENCH_DURATION_SECS_MAX));

    let tasks: Vec<_> = (0..args.clients)
        .map(|client_index| {
            let mut connection = connections[client_index % connections.len()].clone();
            let args = args.clone();
            let issued = issued.clone();
            let mut random =
                SplitMix64::new(seed ^ (client_index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors: BTreeMap<String, ErrorTally> = BTreeMap::new();
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    match args.total {
                        Some(total) if n >= total => break,
                        None if Instant::now() >= deadline => break,
                        _ => {}
                    }
                    let key_number = if args.sequential_keys {
                        n % args.key_space
                    } else {
                        random.below(args.key_space)
                    };
                    let read = (random.next_u64() as f64 / u64::MAX as f64) < args.read_ratio;
                    let sent = Instant::now();
                    match request(&mut connection, &args, key(key_number, args.key_size), read)
                        .await
                    {
                        Ok(()) => latencies.push(sent.elapsed().as_micros() as u64),
                        Err(status) => ErrorTally::record(
                            &mut errors,
                            &status,
                            started.elapsed().as_secs_f64(),
                        ),
                    }
                }
                (latencies, errors)
            })
        })
        .collect();

    let mut latencies = Vec::new();
    let mut tallies: BTreeMap<String, ErrorTally> = BTreeMap::new();
    for task in tasks {
        let (client_latencies, client_errors) = task.await.expect("benchmark client task");
        latencies.extend(client_latencies);
        for (code, tally) in client_errors {
            match tallies.get_mut(&code) {
                Some(total) => total.merge(tally),
                None => {
                    tallies.insert(code, tally);
                }
            }
        }
    }
    let duration_secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Report {
        workload: args.workload,
        endpoints,
        conns: args.conns,
        clients: args.clients,
        seed,
        requests_ok: latencies.len() as u64,
        errors: tallies.iter().map(|(c, t)| (c.clone(), t.count)).collect(),
        error_samples: tallies.into_iter().map(|(c, t)| (c, t.sample)).collect(),
        duration_secs,
        qps: latencies.len() as f64 / duration_secs,
        latency_ms: percentiles(&latencies),
    })
}

impl Report {
    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let l = &self.latency_ms;
        let errors: u64 = self.errors.values().sum();
        let mut text = format!(
            "workload {:?}, {} clients over {} connections, seed {}\n\
             requests ok {} in {:.2} s: {:.0} requests/s, errors {} {:?}\n\
             latency ms: min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.workload,
            self.clients,
            self.conns,
            self.seed,
            self.requests_ok,
            self.duration_secs,
            self.qps,
            errors,
            self.errors,
            l.min,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
        for (code, sample) in &self.error_samples {
            text.push_str(&format!(
                "\n{code}: from {:.2} s to {:.2} s, first: {}",
                sample.first_at_secs, sample.last_at_secs, sample.first_message
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_nearest_rank_rule() {
        let micros: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles(&micros);
        assert_eq!(
            (p.min, p.p50, p.p90, p.p99, p.p999, p.max),
            (1.0, 500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(percentiles(&[]), LatencyMs::default());
    }

    #[test]
    fn error_tallies_keep_the_earliest_message_and_the_span_of_each_code() {
        let mut first_client = BTreeMap::new();
        let mut second_client = BTreeMap::new();
        ErrorTally::record(&mut first_client, &tonic::Status::unavailable("later"), 2.0);
        ErrorTally::record(&mut first_client, &tonic::Status::unavailable("last"), 5.0);
        ErrorTally::record(
            &mut second_client,
            &tonic::Status::unavailable("earliest"),
            1.0,
        );
        ErrorTally::record(
            &mut second_client,
            &tonic::Status::unavailable("other"),
            3.0,
        );
        let mut total = first_client.remove("Unavailable").unwrap();
        total.merge(second_client.remove("Unavailable").unwrap());
        assert_eq!(total.count, 4);
        assert_eq!(
            total.sample,
            ErrorSample {
                first_message: "earliest".into(),
                first_at_secs: 1.0,
                last_at_secs: 5.0,
            }
        );
    }

    #[test]
    fn keys_are_fixed_width_and_sort_like_numbers() {
        assert_eq!(key(42, 8), b"00000042".to_vec());
        assert!(key(9, 4) < key(10, 4));
    }

    #[test]
    fn the_key_choice_replays_from_the_seed() {
        let draw = |seed| {
            let mut r = SplitMix64::new(seed);
            (0..5).map(|_| r.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
