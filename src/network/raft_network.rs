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
use crate::store::snapshot::SnapshotData;
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
    type SnapshotData = SnapshotData;

    /// Pipelined replication over one gRPC stream (`StreamAppend`): requests go out as openraft
    /// produces them, without waiting for earlier answers, and the follower answers in order.
    /// A cut link ends the stream on either side at once; an answer that does not come within
    /// the RPC timeout while requests are outstanding ends it as a network error (openraft then
    /// opens a new one). An append without entries (a commit update) waits briefly for the next
    /// append to carry its commit index instead ([`super::HeldCommits`]).
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
            let input = self
                .peers
                .held_commits
                .hold(self.target, futures::stream::iter(head).chain(input));
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

    /// Streams the snapshot in chunks of at most [`SNAPSHOT_CHUNK_BYTES`], encoded to a local file
    /// first (never the whole dump in memory; see `store::snapshot`): the first carries the vote
    /// and the meta, then the data, then an empty last one marked `done`. The receiver installs
    /// only a complete one.
    ///
    /// The call has no deadline of its own: while chunks go out, each must be taken by the
    /// transport within the per-chunk time (twice that for the first, which includes connecting);
    /// once all are out, the receiver has one per-chunk time per chunk sent (plus one) to install
    /// and answer.
    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let meta = encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::from(network_error(e)))?;
        tokio::pin!(cancel);
        let data = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            data = snapshot.snapshot.into_chunks(SNAPSHOT_CHUNK_BYTES) => data
                .map_err(|e| network_error(format!("cannot encode the snapshot: {e}")))?,
        };
        let mut client = self
            .peers
            .client(self.target, &self.peer_url)
            .map_err(|e| StreamingError::from(unreachable(e)))?;
        let progress = Arc::new(SnapshotProgress::default());
        let chunks = snapshot_chunks(meta, data, progress.clone());
        let per_chunk = option
            .soft_ttl()
            .max(Duration::from_millis(PEER_RPC_TIMEOUT_MS));
        let send = client.install_snapshot(self.peers.stream_request(chunks));
        tokio::pin!(send);
        let response = loop {
            let (sent, all_sent) = (progress.sent(), progress.all_sent());
            let wait = match (all_sent, sent) {
                (true, _) => per_chunk * (sent as u32 + 1),
                (false, 0) => per_chunk * 2,
                (false, _) => per_chunk,
            };
            tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                response = &mut send => break response,
                _ = tokio::time::sleep(wait) => {
                    if all_sent {
                        return Err(network_error(format!(
                            "snapshot of {sent} chunks not installed within {} ms of its end",
                            wait.as_millis()
                        )).into());
                    }
                    if progress.sent() == sent {
                        return Err(network_error(format!(
                            "snapshot stream stalled: no chunk taken for {} ms after {sent}",
                            wait.as_millis()
                        )).into());
                    }
                }
            }
        };
        let response = match response {
            Ok(response) => response,
            // The stream stopped short because the encoded dump could not be read back: say so,
            // rather than the receiver's complaint about a stream that ended early.
            Err(status) => {
                return Err(match progress.take_failure() {
                    Some(e) => network_error(format!("cannot read the snapshot: {e}")).into(),
                    None => status_error(status).into(),
                });
            }
        };
        self.peers.snapshots_sent.inc();
        decode(&response.into_inner().payload).map_err(|e| StreamingError::from(network_error(e)))
    }
}

/// How far a snapshot stream got, shared between the stream and [`PeerConnection::full_snapshot`].
#[derive(Default)]
struct SnapshotProgress {
    /// Chunks taken by the transport, the meta chunk included.
    sent: AtomicU64,
    all_sent: std::sync::atomic::AtomicBool,
    failure: std::sync::Mutex<Option<std::io::Error>>,
}

impl SnapshotProgress {
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    fn all_sent(&self) -> bool {
        self.all_sent.load(Ordering::SeqCst)
    }

    fn take_failure(&self) -> Option<std::io::Error> {
        self.failure.lock().expect("snapshot progress lock").take()
    }
}

/// The chunks of one snapshot stream: the meta, the data at their offsets, an empty `done`
/// chunk. An error reading the data ends the stream without its `done` chunk, so the receiver
/// refuses it, and is kept in `progress`.
fn snapshot_chunks(
    meta: Vec<u8>,
    data: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    progress: Arc<SnapshotProgress>,
) -> impl Stream<Item = SnapshotChunk> + Send + 'static {
    let first = SnapshotChunk {
        meta,
        data: Vec::new(),
        offset: 0,
        done: false,
    };
    let counted = progress.clone();
    let rest = futures::stream::unfold(Some((data, 0u64)), move |state| {
        let progress = progress.clone();
        async move {
            let (mut data, offset) = state?;
            match data.recv().await {
                Some(Ok(bytes)) => {
                    let next = offset + bytes.len() as u64;
                    let chunk = SnapshotChunk {
                        meta: Vec::new(),
                        data: bytes,
                        offset,
                        done: false,
                    };
                    Some((chunk, Some((data, next))))
                }
                Some(Err(e)) => {
                    *progress.failure.lock().expect("snapshot progress lock") = Some(e);
                    None
                }
                None => {
                    progress.all_sent.store(true, Ordering::SeqCst);
                    let last = SnapshotChunk {
                        meta: Vec::new(),
                        data: Vec::new(),
                        offset,
                        done: true,
                    };
                    Some((last, None))
                }
            }
        }
    });
    futures::stream::once(std::future::ready(first))
        .chain(rest)
        .inspect(move |_| {
            counted.sent.fetch_add(1, Ordering::SeqCst);
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stream_of(
        items: Vec<std::io::Result<Vec<u8>>>,
    ) -> (Vec<SnapshotChunk>, Arc<SnapshotProgress>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(items.len() + 1);
        for item in items {
            sender.send(item).await.expect("send");
        }
        drop(sender);
        let progress = Arc::new(SnapshotProgress::default());
        let chunks = snapshot_chunks(b"meta".to_vec(), receiver, progress.clone())
            .collect::<Vec<_>>()
            .await;
        (chunks, progress)
    }

    #[tokio::test]
    async fn a_snapshot_stream_is_meta_then_contiguous_data_then_one_done_chunk() {
        let (chunks, progress) = stream_of(vec![Ok(vec![1; 5]), Ok(vec![2; 3])]).await;
        let shape: Vec<(&[u8], usize, u64, bool)> = chunks
            .iter()
            .map(|c| (c.meta.as_slice(), c.data.len(), c.offset, c.done))
            .collect();
        assert_eq!(
            shape,
            vec![
                (&b"meta"[..], 0, 0, false),
                (&[][..], 5, 0, false),
                (&[][..], 3, 5, false),
                (&[][..], 0, 8, true),
            ]
        );
        assert_eq!((progress.sent(), progress.all_sent()), (4, true));
        assert!(progress.take_failure().is_none());
    }

    #[tokio::test]
    async fn an_error_reading_the_data_ends_the_stream_without_its_done_chunk() {
        let failure = std::io::Error::other("input/output error");
        let (chunks, progress) = stream_of(vec![Ok(vec![1; 5]), Err(failure)]).await;
        assert_eq!(chunks.len(), 2, "the meta and the one chunk encoded");
        assert!(
            chunks.iter().all(|c| !c.done),
            "the receiver must refuse it"
        );
        assert!(!progress.all_sent());
        let failure = progress.take_failure().expect("the failure is kept");
        assert!(failure.to_string().contains("input/output error"));
    }
}
