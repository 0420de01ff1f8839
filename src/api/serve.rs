//! The client gRPC listener, served on hyper's HTTP/2 directly rather than through tonic's
//! transport server.
//!
//! Why: tonic's server takes every call through an axum router (a route lookup, URL parameters
//! put in the request's extensions and dropped again), a boxed clone of its whole tower stack
//! and four more layers of futures; at put-1000 that glue was 6-7% of member CPU (see
//! bench/results/2026-12-05-client-server.md). Here a call goes to its service on one match of
//! the service name in its path, and one future carries the deadline and the request metrics.
//!
//! Kept from tonic's server, so that clients see no difference:
//! - HTTP/2 only, with the same connection settings (no limit on concurrent streams, hyper's
//!   window and frame sizes, no keep-alive pings of the server's own);
//! - an unknown service answers `UNIMPLEMENTED` with an empty message, a known service with an
//!   unknown method is answered by the service (also `UNIMPLEMENTED`);
//! - a `grpc-timeout` header bounds the call: past it the call is dropped and answers
//!   `CANCELLED` "Timeout expired"; a malformed value is ignored;
//! - on stop: no new connection is accepted, every connection gets a GOAWAY, calls in flight
//!   finish, and serving ends when the last connection has closed, or after
//!   [`CLIENT_DRAIN_MS_MAX`], when the connections still open are closed (tonic's server waited
//!   for ever: an open health `Watch` stream held the node's stop).
//!
//! Must never: answer a call without counting it in the request metrics; keep accepting once
//! asked to stop.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;
use tower::util::BoxCloneSyncService;

use super::cluster::ClusterService;
use super::kv::KvService;
use super::maintenance::MaintenanceService;
use crate::limits::CLIENT_DRAIN_MS_MAX;
use crate::observe::metrics::NodeMetrics;
use crate::observe::requests::RequestRecord;
use crate::pb::etcdserverpb::cluster_server::ClusterServer;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;

type CallFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// A service behind a type we cannot name (tonic-health's), boxed.
type BoxedService = BoxCloneSyncService<http::Request<Incoming>, http::Response<Body>, Infallible>;

/// How long a connection may leave a keep-alive ping unanswered, were the server to send any
/// (tonic's default, kept; with no interval set it sends none).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// After a failed accept (out of file descriptors, say), wait this long before the next.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// The services of the client API, by gRPC service name.
pub struct ClientRoutes {
    kv: KvServer<KvService>,
    cluster: ClusterServer<ClusterService>,
    maintenance: MaintenanceServer<MaintenanceService>,
    /// `grpc.health.v1.Health`, whose type tonic-health does not name.
    health: BoxedService,
    health_name: &'static str,
    metrics: Arc<NodeMetrics>,
}

impl ClientRoutes {
    pub fn new<H>(
        kv: KvServer<KvService>,
        cluster: ClusterServer<ClusterService>,
        maintenance: MaintenanceServer<MaintenanceService>,
        health: H,
        metrics: Arc<NodeMetrics>,
    ) -> ClientRoutes
    where
        H: Service<
                http::Request<Incoming>,
                Response = http::Response<Body>,
                Error = Infallible,
                Future: Send + 'static,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        ClientRoutes {
            kv,
            cluster,
            maintenance,
            health: BoxedService::new(health),
            health_name: H::NAME,
            metrics,
        }
    }

    /// The answer of the service the path names, unimplemented when none does.
    fn route(&self, request: http::Request<Incoming>) -> CallFuture {
        let service = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .map_or("", |(service, _method)| service);
        if service == KvServer::<KvService>::NAME {
            self.kv.clone().call(request)
        } else if service == MaintenanceServer::<MaintenanceService>::NAME {
            self.maintenance.clone().call(request)
        } else if service == ClusterServer::<ClusterService>::NAME {
            self.cluster.clone().call(request)
        } else if service == self.health_name {
            self.health.clone().call(request)
        } else {
            Box::pin(async { Ok(Status::unimplemented("").into_http()) })
        }
    }
}

/// One connection's view of the routes.
#[derive(Clone)]
struct Dispatch(Arc<ClientRoutes>);

impl hyper::service::Service<http::Request<Incoming>> for Dispatch {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = CallFuture;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let deadline = grpc_timeout(request.headers());
        let record = RequestRecord::start(&self.0.metrics, request.uri().path());
        let answer = self.0.route(request);
        Box::pin(async move {
            let response = match deadline {
                None => answer.await?,
                Some(timeout) => match tokio::time::timeout(timeout, answer).await {
                    Ok(response) => response?,
                    Err(_) => Status::cancelled("Timeout expired").into_http(),
                },
            };
            record.finish(&response);
            Ok(response)
        })
    }
}

/// The call's `grpc-timeout` (gRPC over HTTP/2: at most 8 digits and a unit, H M S m u n);
/// `None` when absent or malformed.
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Serves `routes` on every connection `listener` accepts, each wrapped by `wrap`, until
/// `stopped` turns true; then stops accepting, asks every connection to close gracefully and
/// returns once all have, closing those still open after [`CLIENT_DRAIN_MS_MAX`].
pub async fn serve<IO>(
    listener: TcpListener,
    wrap: impl Fn(TcpStream) -> IO,
    routes: ClientRoutes,
    mut stopped: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let dispatch = Dispatch(Arc::new(routes));
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(None)
        .keep_alive_interval(None)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .adaptive_window(false)
        .max_pending_accept_reset_streams(None)
        .max_local_error_reset_streams(None)
        .max_frame_size(None);
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        let io = match accepted {
            Ok((stream, _)) => wrap(stream),
            Err(e) => {
                tracing::debug!(error = %e, "cannot accept a client connection");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                continue;
            }
        };
        let connection = http2.serve_connection(TokioIo::new(io), dispatch.clone());
        let mut closing = closing_seen.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "client connection ended");
                    }
                    return;
                }
                _ = closing.wait_for(|closing| *closing) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(CLIENT_DRAIN_MS_MAX), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            connections = connections.len(),
            drain_ms = CLIENT_DRAIN_MS_MAX,
            "closing client connections still open after the drain time"
        );
        connections.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeout_reads_every_unit_and_ignores_malformed_values() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout_of("300m"), Some(Duration::from_millis(300)));
        assert_eq!(
            timeout_of("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout_of("7n"), Some(Duration::from_nanos(7)));
        for malformed in [
            "",
            "m",
            "100",
            "100x",
            "123456789m",
            "-1m",
            "+1m",
            "1.5S",
            " 1m",
        ] {
            assert_eq!(timeout_of(malformed), None, "{malformed:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
