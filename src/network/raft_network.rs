//! openraft's client side of the peer transport (`RaftNetworkV2`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use futures::Stream;
use futures::StreamExt;

use openraft::AnyError;
use openraft::OptionalSend;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::alias::SnapshotOf;
use openraft::alias::VoteOf;
use openraft::base::BoxFuture;
use openraft::base::BoxStream;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::RPCOption;
use openraft::network::stream_append_sequential;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::StreamAppendResult;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::PeerUnreachable;
use super::Peers;
use crate::codec::decode;
use crate::codec::encode;
use crate::limits::PEER_RPC_TIMEOUT_MS;
use crate::limits::SNAPSHOT_CHUNK_BYTES;
use crate::pb::peer::RaftMessage;
use crate::pb::peer::SnapshotChunk;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::TypeConfig;

/// Creates one [`PeerConnection`] per replication target.
pub struct PeerNetworkFactory {
    peers: Peers,
}

impl PeerNetworkFactory {
    pub fn new(peers: Peers) -> Self {
        PeerNetworkFactory { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            peers: self.peers.clone(),
            target,
            peer_url: node.peer_url.clone(),
        }
    }
}

pub struct PeerConnection {
    peers: Peers,
    target: NodeId,
    peer_url: String,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    PreVote,
    TransferLeader,
}

fn unreachable(error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(error.to_string())))
}

fn network_error(error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&AnyError::error(error.to_string())))
}

/// A connection refused or a dead channel is "unreachable" (openraft backs off); anything else
/// is a network error (openraft retries at once).
fn status_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::PermissionDenied => unreachable(status),
        _ => network_error(status),
    }
}

/// Pause between attempts to deliver a vote request to a peer that refused the connection.
const VOTE_REDELIVERY_PAUSE: Duration = Duration::from_millis(20);

impl PeerConnection {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        message: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let mut client = self
            .peers
            .client(self.target, &self.peer_url)
            .map_err(unreachable)?;
        let payload = encode(message).map_err(network_error)?;
        // A (pre-)vote request is delivered again while the peer refuses connections, within
        // the RPC's time: when a new cluster starts, the first candidate often asks before its
        // peers listen, and openraft would otherwise wait a whole election timeout (seconds) for
        // a second round. Harmless to repeat: nothing was delivered, and a late answer to an
        // older round is ignored.
        let redeliver_until =
            matches!(rpc, Rpc::Vote | Rpc::PreVote).then(|| tokio::time::Instant::now() + timeout);
        let response = loop {
            let request = self.peers.request(
                RaftMessage {
                    payload: payload.clone(),
                },
                timeout,
            );
            let response = match rpc {
                Rpc::Append => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::PreVote => client.pre_vote(request).await,
                Rpc::TransferLeader => client.transfer_leader(request).await,
            };
            match response {
                Err(status)
                    if crate::network::connection_refused(&status)
                        && redeliver_until.is_some_and(|until| {
                            tokio::time::Instant::now() + VOTE_REDELIVERY_PAUSE < until
                        }) =>
                {
                    tokio::time::sleep(VOTE_REDELIVERY_PAUSE).await;
                }
                response => break response,
            }
        }
        .map_err(status_error)?;
        decode(&response.into_inner().payload).map_err(network_error)
    }
}

fn rpc_timeout(option: &RPCOption) -> Duration {
    option
        .hard_ttl()
        .min(Duration::from_millis(PEER_RPC_TIMEOUT_MS))
}

/// What an open append stream answers: each item the result for one request, in order.
type AppendAnswers<'s> =
    BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Vec<u8>;

    /// Pipelined replication over one gRPC stream (`StreamAppend`): requests go out as openraft
    /// produces them, without waiting for earlier answers, and the follower answers in order.
    /// A cut link ends the stream on either side at once; an answer that does not come within
    /// the RPC timeout while requests are outstanding ends it as a network error (openraft then
    /// opens a new one).
    ///
    /// openraft sends each heartbeat as a stream of one request, and its heartbeat worker counts
    /// the acknowledgement only once the stream has ended: as a gRPC stream that is a stream
    /// set-up, the answer, and a tear-down round on every heartbeat, and every ReadIndex read
    /// waits for one. A stream already complete after its first request goes as one unary call.
    fn stream_append<'s, S>(
        &'s mut self,
        mut input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<AppendAnswers<'s>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let timeout = rpc_timeout(&option);
        Box::pin(async move {
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as AppendAnswers<'s>);
            };
            let mut head = vec![first];
            match input.next().now_or_never() {
                Some(None) => {
                    let single = futures::stream::iter(head);
                    return stream_append_sequential(self, single, option).await;
                }
                Some(Some(second)) => head.push(second),
                None => {}
            }
            let input = futures::stream::iter(head).chain(input);
            let mut client = self
                .peers
                .client(self.target, &self.peer_url)
                .map_err(unreachable)?;
            let (faults, target) = (self.peers.faults.clone(), self.target);
            let outstanding = Arc::new(AtomicU64::new(0));
            let sent = outstanding.clone();
            let send_faults = faults.clone();
            let outbound = input
                .map(|request| encode(&request))
                .take_while(move |encoded| {
                    // A cut link, or a request we cannot encode (a bug, logged), ends the stream.
                    if let Err(e) = encoded {
                        tracing::error!(error = %e, "cannot encode an append request");
                    }
                    std::future::ready(encoded.is_ok() && !send_faults.is_cut(target))
                })
                .filter_map(move |encoded| {
                    sent.fetch_add(1, Ordering::SeqCst);
                    std::future::ready(encoded.ok().map(|payload| RaftMessage { payload }))
                });
            let call = client.stream_append(self.peers.stream_request(outbound));
            let inbound = match tokio::time::timeout(timeout, call).await {
                Ok(response) => response.map_err(status_error)?.into_inner(),
                Err(_) => return Err(network_error("append stream not answered in time")),
            };
            let answers = futures::stream::unfold(Some(inbound), move |inbound| {
                let (faults, outstanding) = (faults.clone(), outstanding.clone());
                async move {
                    let mut inbound = inbound?;
                    loop {
                        let answer = match tokio::time::timeout(timeout, inbound.next()).await {
                            // Idle with nothing outstanding: keep waiting.
                            Err(_) if outstanding.load(Ordering::SeqCst) == 0 => continue,
                            Err(_) => Err(network_error(format!(
                                "no append answer within {} ms",
                                timeout.as_millis()
                            ))),
                            Ok(None) => return None,
                            Ok(Some(Err(status))) => Err(status_error(status)),
                            Ok(Some(Ok(_))) if faults.is_cut(target) => {
                                Err(unreachable(PeerUnreachable::Cut(target)))
                            }
                            Ok(Some(Ok(message))) => {
                                outstanding.fetch_sub(1, Ordering::SeqCst);
                                decode(&message.payload).map_err(network_error)
                            }
                        };
                        let go_on = answer.is_ok();
                        return Some((answer, go_on.then_some(inbound)));
                    }
                }
            });
            Ok(Box::pin(answers) as AppendAnswers<'s>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Append, &rpc, rpc_timeout(&option)).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote, &rpc, rpc_timeout(&option)).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote, &rpc, rpc_timeout(&option)).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::TransferLeader, &req, rpc_timeout(&option))
            .await
    }

    /// Streams the snapshot in chunks of at most [`SNAPSHOT_CHUNK_BYTES`]: the first carries the
    /// vote and the meta, the last is marked `done`. The receiver installs only a complete one.
    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let meta = encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::from(network_error(e)))?;
        let data = snapshot.snapshot;
        let mut chunks = vec![SnapshotChunk {
            meta,
            data: Vec::new(),
            offset: 0,
            done: data.is_empty(),
        }];
        let mut offset = 0usize;
        for piece in data.chunks(SNAPSHOT_CHUNK_BYTES) {
            offset += piece.len();
            chunks.push(SnapshotChunk {
                meta: Vec::new(),
                data: piece.to_vec(),
                offset: (offset - piece.len()) as u64,
                done: offset == data.len(),
            });
        }
        let mut client = self
            .peers
            .client(self.target, &self.peer_url)
            .map_err(|e| StreamingError::from(unreachable(e)))?;
        // A whole snapshot gets the soft TTL per chunk, at least the plain RPC timeout.
        let per_chunk = option
            .soft_ttl()
            .max(Duration::from_millis(PEER_RPC_TIMEOUT_MS));
        let timeout = per_chunk * (chunks.len() as u32 + 1);
        let request = self.peers.request(tokio_stream::iter(chunks), timeout);
        let send = client.install_snapshot(request);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            response = send => {
                let response = response.map_err(|s| StreamingError::from(status_error(s)))?;
                self.peers.snapshots_sent.inc();
                decode(&response.into_inner().payload).map_err(|e| StreamingError::from(network_error(e)))
            }
        }
    }
}
