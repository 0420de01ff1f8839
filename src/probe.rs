//! `quorumdb probe`: the health check that containers and kubelets run. A `FROM scratch` image
//! has no curl or shell, so the binary checks its own node over the client API.
//!
//! ```text
//! ready (default):    linearizable Range "health" -> answered only by a member that reaches a
//!                     quorum through the leader (what `etcdctl endpoint health` does)
//! live (--serializable): serializable Range "health" -> the process and its store answer,
//!                     quorum or not (a lost quorum must not get every member restarted)
//! exit 0 healthy, 1 unhealthy, 2 bad arguments
//! ```
//!
//! When the HTTP `/readyz` and `/livez` endpoints exist, [`check`] asks them instead; the command
//! line and exit codes stay, so deployment files need no change.
//!
//! Must never: write anything, or wait longer than `--timeout-ms`.

use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use tonic::transport::Endpoint;

use crate::pb::etcdserverpb::RangeRequest;
use crate::pb::etcdserverpb::kv_client::KvClient;

/// Default bound on one probe (connect and read together): well under a healthcheck's interval,
/// and above a leader election (1-2 s with the default timings) would be wrong for readiness.
pub const PROBE_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Largest `--timeout-ms` accepted: a probe is never an unbounded wait.
pub const PROBE_TIMEOUT_MS_MAX: u64 = 60_000;

/// The key etcd's `endpoint health` reads; it need not exist.
const PROBE_KEY: &[u8] = b"health";

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Client URL of the node to check.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub endpoint: String,
    /// Give up after this many milliseconds (connect and read together).
    #[arg(long, default_value_t = PROBE_TIMEOUT_MS_DEFAULT)]
    pub timeout_ms: u64,
    /// Liveness instead of readiness: a serializable read, served without a quorum.
    #[arg(long)]
    pub serializable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid --endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("--timeout-ms must be between 1 and {PROBE_TIMEOUT_MS_MAX}")]
    InvalidTimeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("read failed: {0}")]
    Read(String),
    #[error("no answer within {0} ms")]
    Timeout(u64),
}

/// Checks the node once; `Ok` carries how long the read took.
pub async fn check(args: &ProbeArgs) -> Result<Duration, ProbeError> {
    if args.timeout_ms == 0 || args.timeout_ms > PROBE_TIMEOUT_MS_MAX {
        return Err(ProbeError::InvalidTimeout);
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let endpoint = Endpoint::from_shared(args.endpoint.clone())
        .map_err(|e| ProbeError::InvalidEndpoint {
            endpoint: args.endpoint.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    let started = Instant::now();
    let read = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ProbeError::Connect(error_chain(&e)))?;
        let request = RangeRequest {
            key: PROBE_KEY.to_vec(),
            serializable: args.serializable,
            keys_only: true,
            ..RangeRequest::default()
        };
        match KvClient::new(channel).range(request).await {
            Ok(_) => Ok(()),
            // etcd's `endpoint health` counts a refused permission as healthy: the member answered.
            Err(status) if status.code() == tonic::Code::PermissionDenied => Ok(()),
            Err(status) => Err(ProbeError::Read(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProbeError::Timeout(args.timeout_ms))??;
    Ok(started.elapsed())
}

/// `quorumdb probe`: prints one line and exits 0 (healthy), 1 (unhealthy) or 2 (bad arguments).
pub fn run(args: ProbeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("quorumdb: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let kind = if args.serializable {
        "serializable"
    } else {
        "linearizable"
    };
    match runtime.block_on(check(&args)) {
        Ok(took) => {
            println!(
                "{} is healthy: {kind} read took {} ms",
                args.endpoint,
                took.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e @ (ProbeError::InvalidEndpoint { .. } | ProbeError::InvalidTimeout)) => {
            eprintln!("quorumdb: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{} is unhealthy: {e}", args.endpoint);
            ExitCode::FAILURE
        }
    }
}

/// A transport error with its causes: tonic's top-level message alone is just "transport error".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    let mut previous = text.clone();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and tonic wrap the same cause twice ("tcp connect error: tcp connect error").
        if cause_text != previous {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        previous = cause_text;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: &str, timeout_ms: u64) -> ProbeArgs {
        ProbeArgs {
            endpoint: endpoint.to_string(),
            timeout_ms,
            serializable: false,
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unhealthy_within_the_timeout() {
        // Bind then drop: the port is (almost certainly) closed when the probe connects.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let result = check(&args(&format!("http://127.0.0.1:{port}"), 1_000)).await;
        assert!(matches!(result, Err(ProbeError::Connect(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_silent_server_is_unhealthy_after_the_timeout() {
        // Accepts TCP but never speaks HTTP/2: the probe must give up by itself.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let started = Instant::now();
        let result = check(&args(&format!("http://127.0.0.1:{port}"), 300)).await;
        assert!(result.is_err(), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_serving_single_node_cluster_is_healthy_and_unhealthy_once_stopped() {
        let ports: Vec<u16> = {
            let listeners: Vec<_> = (0..2)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            listeners
                .iter()
                .map(|l| l.local_addr().unwrap().port())
                .collect()
        };
        let data = tempfile::tempdir().unwrap();
        let config = crate::config::ServerArgs {
            name: Some("p1".into()),
            data_dir: Some(data.path().join("p1")),
            listen_client_urls: Some(format!("http://127.0.0.1:{}", ports[0])),
            listen_peer_urls: Some(format!("http://127.0.0.1:{}", ports[1])),
            ..crate::config::ServerArgs::default()
        }
        .into_config()
        .unwrap();
        let node = crate::node::Node::start(config).await.unwrap();
        let endpoint = format!("http://127.0.0.1:{}", ports[0]);
        // Readiness waits for the election; bounded like every wait.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match check(&args(&endpoint, 1_000)).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => panic!("never healthy: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let live = ProbeArgs {
            serializable: true,
            ..args(&endpoint, 1_000)
        };
        check(&live).await.unwrap();
        node.shutdown().await;
        assert!(check(&args(&endpoint, 1_000)).await.is_err());
        assert!(check(&live).await.is_err());
    }

    #[tokio::test]
    async fn bad_arguments_are_refused_before_connecting() {
        assert!(matches!(
            check(&args("not a url", 1_000)).await,
            Err(ProbeError::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            check(&args("http://127.0.0.1:2379", 0)).await,
            Err(ProbeError::InvalidTimeout)
        ));
    }
}
