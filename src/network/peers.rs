//! gRPC clients to the other members' peer services, one lazily connected channel per URL.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tower::ServiceExt;

use super::CoalescedWrites;
use super::Faults;
use super::HeldCommits;
use crate::limits::PEER_KEEPALIVE_INTERVAL_MS;
use crate::limits::PEER_KEEPALIVE_TIMEOUT_MS;
use crate::limits::PEER_MESSAGE_BYTES_MAX;
use crate::limits::PEER_RPC_TIMEOUT_MS;
use crate::pb::peer::peer_client::PeerClient;
use crate::types::NodeId;

#[derive(Clone)]
pub struct Peers {
    pub(crate) this_node: NodeId,
    pub(crate) faults: Faults,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Snapshots this node sent to a follower that took them (a metric).
    pub(crate) snapshots_sent: Counter,
    /// The commit-only appends this node holds back as leader, per follower.
    pub(crate) held_commits: HeldCommits,
}

/// TCP connections to peers, without Nagle delay (Raft messages are small and latency-bound),
/// whose writes go out once per HTTP/2 flush ([`CoalescedWrites`]): a forwarded put with a
/// 256-byte value is one write, not two. The connector is tonic's own (an `HttpConnector`), so
/// connect errors read the same, which [`super::never_delivered`] relies on.
fn peer_connector() -> impl tower::Service<
    http::Uri,
    Response = TokioIo<CoalescedWrites<tokio::net::TcpStream>>,
    Error: std::error::Error + Send + Sync + 'static,
    Future: Send,
> + Clone
+ Send
+ 'static {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.map_response(|io: TokioIo<tokio::net::TcpStream>| {
        TokioIo::new(CoalescedWrites::new(io.into_inner()))
    })
}

/// Why a peer could not be called at all: nothing was sent, so retrying elsewhere is safe.
#[derive(Debug, thiserror::Error)]
pub enum PeerUnreachable {
    #[error("link to node {0:x} is cut by fault injection")]
    Cut(NodeId),
    #[error("invalid peer URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

impl Peers {
    pub fn new(this_node: NodeId, faults: Faults) -> Self {
        Peers {
            this_node,
            faults,
            channels: Arc::default(),
            snapshots_sent: Counter::default(),
            held_commits: HeldCommits::default(),
        }
    }

    /// Counts snapshots sent into `counter` (shared with the node's metrics registry).
    pub fn with_snapshot_counter(mut self, counter: Counter) -> Self {
        self.snapshots_sent = counter;
        self
    }

    /// A client for `target` at `peer_url`. The channel connects on first use and reconnects by
    /// itself; callers set per-call deadlines.
    pub fn client(
        &self,
        target: NodeId,
        peer_url: &str,
    ) -> Result<PeerClient<Channel>, PeerUnreachable> {
        if self.faults.is_cut(target) {
            return Err(PeerUnreachable::Cut(target));
        }
        let mut channels = self.channels.lock().expect("peer channel lock");
        let channel = match channels.get(peer_url) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(peer_url.to_string())
                    .map_err(|e| PeerUnreachable::BadUrl {
                        url: peer_url.to_string(),
                        reason: e.to_string(),
                    })?
                    .connect_timeout(Duration::from_millis(PEER_RPC_TIMEOUT_MS))
                    .http2_keep_alive_interval(Duration::from_millis(PEER_KEEPALIVE_INTERVAL_MS))
                    .keep_alive_timeout(Duration::from_millis(PEER_KEEPALIVE_TIMEOUT_MS))
                    .keep_alive_while_idle(true);
                let channel = endpoint.connect_with_connector_lazy(peer_connector());
                channels.insert(peer_url.to_string(), channel.clone());
                channel
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }

    /// A request carrying this node's id, for the receiver's fault seam.
    pub fn request<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = self.stream_request(message);
        request.set_timeout(timeout);
        request
    }

    /// [`Peers::request`] with no deadline on the whole call, for a stream that lasts a whole
    /// replication session; the caller times out each answer instead.
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            super::FROM_NODE_METADATA,
            self.this_node
                .to_string()
                .parse()
                .expect("a number is valid metadata"),
        );
        request
    }
}
