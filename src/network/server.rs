//! The peer service: the receiving side of Raft traffic, plus the two requests followers send
//! their leader on behalf of clients (forwarded writes and read-index requests).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;

use futures::StreamExt;
use openraft::alias::SnapshotMetaOf;
use openraft::alias::SnapshotOf;
use openraft::alias::VoteOf;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::linearizable_read::ReadLogId;
use serde::Deserialize;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use super::FROM_NODE_METADATA;
use super::FaultPlan;
use super::Faults;
use super::HeldCommits;
use super::Proposals;
use super::membership::MembershipChange;
use super::membership::MembershipChanges;
use super::membership::MembershipError;
use super::read_index::ReadIndexCounters;
use crate::codec::decode;
use crate::codec::encode;
use crate::limits::PEER_MESSAGE_BYTES_MAX;
use crate::pb::peer::RaftMessage;
use crate::pb::peer::ReadIndexRequest;
use crate::pb::peer::SnapshotChunk;
use crate::pb::peer::peer_server::Peer;
use crate::pb::peer::peer_server::PeerServer;
use crate::store::snapshot::SnapshotData;
use crate::types::Command;
use crate::types::CommandResponse;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::TypeConfig;

/// Why the leader did not apply a forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardWriteError {
    /// Rejected before anything was proposed: retrying on the right leader is safe.
    NotLeader { leader: Option<NodeId> },
    /// Proposed, but the outcome is not known (leader changed or stopped mid-way).
    Unknown(String),
}

pub type ForwardWriteReply = Result<CommandResponse, ForwardWriteError>;

/// Proposes a write a follower forwarded, and says what became of it.
async fn run_forwarded_write(proposals: &Proposals, command: Command) -> ForwardWriteReply {
    match proposals.write(std::sync::Arc::new(command)).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ForwardWriteError::NotLeader {
                leader: f.leader_id,
            })
        }
        Err(RaftError::APIError(e)) => Err(ForwardWriteError::Unknown(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(ForwardWriteError::Unknown(e.to_string())),
    }
}

/// Runs one write of a forward stream; its answer is `(id, reply)`.
async fn forwarded_write(
    proposals: Proposals,
    id: u64,
    command: Command,
) -> Result<RaftMessage, Status> {
    let result = run_forwarded_write(&proposals, command).await;
    encode(&(id, result))
        .map(|payload| RaftMessage { payload })
        .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))
}

/// The answers of one forward stream: reads the follower's writes, runs them concurrently and
/// yields each answer as its write finishes. It is the response body itself, polled by the
/// connection's task: no task of its own per stream or per write, no queue in between (each was a
/// wake-up per write). When the input ends (closed by the follower, cut, undecodable, broken),
/// the answers end after those of the writes already running; the follower counts the writes it
/// sent after those as unknown. The follower reading no answers stops the reading of its writes
/// (HTTP/2 flow control stops the polling).
struct ForwardedWrites {
    input: Streaming<RaftMessage>,
    reading: bool,
    running: futures::stream::FuturesUnordered<
        futures::future::BoxFuture<'static, Result<RaftMessage, Status>>,
    >,
    from: Option<NodeId>,
    faults: Faults,
    proposals: Proposals,
}

impl futures::Stream for ForwardedWrites {
    type Item = Result<RaftMessage, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            // A finished write's answer goes before more input is read.
            if let Poll::Ready(Some(answer)) = self.running.poll_next_unpin(cx) {
                return Poll::Ready(Some(answer));
            }
            if !self.reading {
                return match self.running.is_empty() {
                    true => Poll::Ready(None),
                    false => Poll::Pending,
                };
            }
            let failure = match self.input.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(_)))
                    if self.from.is_some_and(|from| self.faults.is_cut(from)) =>
                {
                    cut_status(self.from.expect("checked above"))
                }
                Poll::Ready(Some(Ok(message))) => {
                    match decode::<(u64, Command)>(&message.payload) {
                        Ok((id, command)) => {
                            let write = forwarded_write(self.proposals.clone(), id, command);
                            self.running.push(Box::pin(write));
                            continue;
                        }
                        Err(e) => bad_payload(e),
                    }
                }
                Poll::Ready(Some(Err(status))) => status,
                // The follower closed its side: answer what is running, then end.
                Poll::Ready(None) => {
                    self.reading = false;
                    continue;
                }
            };
            tracing::debug!(%failure, "forward stream input ended");
            self.reading = false;
        }
    }
}

/// Why the leader could not give a read index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadIndexError {
    NotLeader {
        leader: Option<NodeId>,
    },
    /// It could not confirm its leadership with a quorum.
    NoQuorum(String),
}

pub type ReadIndexReply = Result<ReadLogId<TypeConfig>, ReadIndexError>;

/// Whether a node has Raft state, and the members it knows by id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersReply {
    /// Whether the answering node has any Raft state.
    pub initialized: bool,
    pub members: BTreeMap<NodeId, Member>,
    /// The cluster id the answering node serves under (a joining node adopts it).
    pub cluster_id: u64,
}

/// Puts member `id`'s current name and URLs in the membership (etcd's "publish"), on the leader.
/// Members that start together publish together, and the leader makes one membership change at
/// a time: a publish waits (up to [`PUBLISH_QUEUE_WAIT`]) for the change in flight instead of
/// being refused and retried half a second later.
pub async fn publish_on_leader(
    changes: &MembershipChanges,
    id: NodeId,
    member: Member,
) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + PUBLISH_QUEUE_WAIT;
    let mut metrics = changes.raft().metrics();
    let in_flight = || Status::unavailable("a membership change is in flight; retry");
    loop {
        let publish = MembershipChange::Publish {
            id,
            member: member.clone(),
        };
        match tokio::time::timeout_at(deadline, changes.change(publish)).await {
            Err(_) => return Err(in_flight()),
            Ok(Ok(())) => return Ok(()),
            // A change proposed by an earlier leader is still uncommitted: wait for it.
            Ok(Err(MembershipError::InProgress)) => {}
            Ok(Err(MembershipError::NotLeader)) => {
                return Err(Status::failed_precondition("etcdserver: not leader"));
            }
            Ok(Err(e)) => return Err(Status::unavailable(format!("cannot publish member: {e}"))),
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(in_flight()),
            changed = metrics.changed() => {
                if changed.is_err() {
                    return Err(Status::unavailable("raft has stopped"));
                }
            }
        }
    }
}

/// How long the leader holds a member's publish while another membership change is in flight.
const PUBLISH_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct PeerService {
    raft: Raft,
    membership: MembershipChanges,
    proposals: Proposals,
    read_index_counters: ReadIndexCounters,
    held_commits: HeldCommits,
    faults: Faults,
    fault_injection_enabled: bool,
    leader_contact: LeaderContact,
    cluster_id: u64,
}

/// When this member last accepted an append (or heartbeat) from a leader: how fresh a
/// follower's view is, from its own side (the `/replica?lag=...ms` routing check).
#[derive(Clone, Default)]
pub struct LeaderContact {
    last: Arc<Mutex<Option<std::time::Instant>>>,
}

impl LeaderContact {
    pub fn record(&self) {
        *self.last.lock().expect("leader contact lock") = Some(std::time::Instant::now());
    }

    /// Time since the last accepted append; `None` if there never was one since start.
    pub fn elapsed(&self) -> Option<std::time::Duration> {
        self.last
            .lock()
            .expect("leader contact lock")
            .map(|at| at.elapsed())
    }
}

impl PeerService {
    /// `membership` makes this node's membership changes (the same one its client API uses) and
    /// holds the node's Raft handle.
    pub fn new(
        membership: MembershipChanges,
        proposals: Proposals,
        faults: Faults,
        fault_injection_enabled: bool,
    ) -> Self {
        PeerService {
            raft: membership.raft().clone(),
            membership,
            proposals,
            read_index_counters: ReadIndexCounters::default(),
            held_commits: HeldCommits::default(),
            faults,
            fault_injection_enabled,
            leader_contact: LeaderContact::default(),
            cluster_id: 0,
        }
    }

    /// Counts follower reads answered in one round trip or with a heartbeat round.
    pub fn with_read_index_counters(mut self, counters: ReadIndexCounters) -> Self {
        self.read_index_counters = counters;
        self
    }

    /// The commit-only appends this node's replication holds back as leader (the same
    /// [`HeldCommits`] as its [`super::Peers`]): a follower asking for a read index gets its own
    /// released at once.
    pub fn with_held_commits(mut self, held_commits: HeldCommits) -> Self {
        self.held_commits = held_commits;
        self
    }

    /// The cluster id this node reports to peers (joining nodes adopt it).
    pub fn with_cluster_id(mut self, cluster_id: u64) -> Self {
        self.cluster_id = cluster_id;
        self
    }

    /// Records accepted appends into `contact` (shared with the HTTP routing checks).
    pub fn with_leader_contact(mut self, contact: LeaderContact) -> Self {
        self.leader_contact = contact;
        self
    }

    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }

    /// Refuses traffic from a peer whose link is cut, so a cut is symmetric even when only one
    /// side was told about it.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match sender(request) {
            Some(from) if self.faults.is_cut(from) => Err(cut_status(from)),
            _ => Ok(()),
        }
    }
}

/// The peer that sent `request`, from its metadata.
fn sender<T>(request: &Request<T>) -> Option<NodeId> {
    request
        .metadata()
        .get(FROM_NODE_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok())
}

fn cut_status(from: NodeId) -> Status {
    Status::unavailable(format!("link from node {from:x} is cut by fault injection"))
}

fn bad_payload(error: std::io::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer payload: {error}"))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload =
        encode(value).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
    Ok(Response::new(RaftMessage { payload }))
}

fn fatal<E: std::fmt::Display>(error: E) -> Status {
    Status::unavailable(format!("raft stopped: {error}"))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let rpc = decode(&request.into_inner().payload).map_err(bad_payload)?;
        let response = self.raft.append_entries(rpc).await.map_err(fatal)?;
        if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            self.leader_contact.record();
        }
        reply(&response)
    }

    type StreamAppendStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftMessage, Status>> + Send>>;

    /// Feeds the leader's appends to openraft's pipelined `stream_append` in order and answers
    /// each in order. The stream ends, with an error, at the first undecodable message, transport
    /// error or cut link (checked per message, so a cut made mid-stream takes effect at once).
    async fn stream_append(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        self.admit(&request)?;
        let from = sender(&request);
        let faults = self.faults.clone();
        let is_cut = move || from.is_some_and(|from| faults.is_cut(from));
        // Why the input ended early, reported after the answers to what came before it.
        let failure: Arc<Mutex<Option<Status>>> = Arc::default();
        let input_failure = failure.clone();
        let input_cut = is_cut.clone();
        let input = request
            .into_inner()
            .map(move |message| {
                let message = message?;
                if input_cut() {
                    return Err(cut_status(from.expect("a cut link has a sender")));
                }
                decode(&message.payload).map_err(bad_payload)
            })
            .take_while(move |decoded| {
                let go_on = decoded.is_ok();
                if let Err(status) = decoded {
                    *input_failure.lock().expect("stream failure lock") = Some(status.clone());
                }
                std::future::ready(go_on)
            })
            .filter_map(|decoded| std::future::ready(decoded.ok()));
        let contact = self.leader_contact.clone();
        let answers = self
            .raft
            .stream_append(input)
            .map(move |result| {
                if is_cut() {
                    return Err(cut_status(from.expect("a cut link has a sender")));
                }
                let result = result.map_err(fatal)?;
                if !matches!(
                    result,
                    Err(openraft::raft::StreamAppendError::HigherVote(_))
                ) {
                    contact.record();
                }
                let payload = encode(&result)
                    .map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
                Ok(RaftMessage { payload })
            })
            .scan(false, |failed, answer| {
                // Nothing after the first error.
                if *failed {
                    return std::future::ready(None);
                }
                *failed = answer.is_err();
                std::future::ready(Some(answer))
            })
            .chain(
                futures::stream::once(async move {
                    failure.lock().expect("stream failure lock").take()
                })
                .filter_map(|failure| std::future::ready(failure.map(Err))),
            );
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let rpc = decode(&request.into_inner().payload).map_err(bad_payload)?;
        let response = self.raft.vote(rpc).await.map_err(fatal)?;
        reply(&response)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let rpc = decode(&request.into_inner().payload).map_err(bad_payload)?;
        let response = self.raft.pre_vote(rpc).await.map_err(fatal)?;
        reply(&response)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let rpc: TransferLeaderRequest<TypeConfig> =
            decode(&request.into_inner().payload).map_err(bad_payload)?;
        tracing::info!(request = %rpc, "leader transfer request received");
        let response = self.raft.handle_transfer_leader(rpc).await.map_err(fatal)?;
        reply(&response)
    }

    /// Collects a chunked snapshot and installs it only once complete and contiguous.
    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let mut chunks = request.into_inner();
        let first = chunks
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
            decode(&first.meta).map_err(bad_payload)?;
        let mut data = Vec::new();
        let mut done = first.done;
        while !done {
            let chunk = chunks.next().await.ok_or_else(|| {
                Status::invalid_argument("snapshot stream ended before its last chunk")
            })??;
            if chunk.offset != data.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {} but {} bytes received so far",
                    chunk.offset,
                    data.len()
                )));
            }
            data.extend_from_slice(&chunk.data);
            done = chunk.done;
        }
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::Received(data),
        };
        let response = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(fatal)?;
        reply(&response)
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        // The follower waits next for its state machine to reach this leader's commit index:
        // the commit-only append held for it should not make it wait longer.
        self.held_commits.release(request.from_node_id);
        let result = super::read_index::read_index(
            &self.raft,
            request.from_node_id,
            (request.vouch_term, request.vouch_leader),
            &self.read_index_counters,
        )
        .await
        .map_err(fatal)?;
        reply(&result)
    }

    async fn forward_write(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let command: Command = decode(&request.into_inner().payload).map_err(bad_payload)?;
        reply(&run_forwarded_write(&self.proposals, command).await)
    }

    type ForwardWritesStream = futures::stream::BoxStream<'static, Result<RaftMessage, Status>>;

    /// Runs each forwarded write of the stream as it arrives, concurrently, and answers each
    /// with its id as it finishes. A cut link, an undecodable message or a transport error ends
    /// the input; the answers end after those of the writes already running.
    async fn forward_writes(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::ForwardWritesStream>, Status> {
        self.admit(&request)?;
        let from = sender(&request);
        let input = request.into_inner();
        Ok(Response::new(
            ForwardedWrites {
                input,
                reading: true,
                running: futures::stream::FuturesUnordered::new(),
                from,
                faults: self.faults.clone(),
                proposals: self.proposals.clone(),
            }
            .boxed(),
        ))
    }

    /// A member publishes its current name and URLs (etcd's "publish"); only the leader can put
    /// them in the membership.
    async fn publish_member(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let (id, member): (NodeId, Member) =
            decode(&request.into_inner().payload).map_err(bad_payload)?;
        publish_on_leader(&self.membership, id, member).await?;
        reply(&())
    }

    /// Runs a membership change forwarded by a follower (this node should be the leader).
    async fn change_membership(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let change: MembershipChange =
            decode(&request.into_inner().payload).map_err(bad_payload)?;
        let outcome: Result<(), MembershipError> = self.membership.change(change).await;
        reply(&outcome)
    }

    /// What this node knows of the membership, and whether it has any Raft state at all.
    async fn members(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.admit(&request)?;
        let initialized = self.raft.is_initialized().await.map_err(fatal)?;
        let members: MembersReply = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            let nodes = metrics
                .membership_config
                .nodes()
                .map(|(id, member)| (*id, member.clone()))
                .collect();
            MembersReply {
                initialized,
                members: nodes,
                cluster_id: self.cluster_id,
            }
        };
        reply(&members)
    }

    /// Test seam: replaces the set of cut links. Refused unless the node was started with
    /// `--enable-fault-injection`.
    async fn set_faults(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        if !self.fault_injection_enabled {
            return Err(Status::permission_denied(
                "fault injection is disabled; start the node with --enable-fault-injection",
            ));
        }
        let plan: FaultPlan = decode(&request.into_inner().payload).map_err(bad_payload)?;
        tracing::warn!(?plan, "fault injection");
        self.faults.apply(plan);
        reply(&())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::network::test_support::lone_leader;
    use crate::pb::peer::peer_client::PeerClient;
    use crate::types::PutOp;

    /// Every write a forward stream took is answered, with its id, even when the follower closes
    /// its side right after sending them: the answers end only after the last running write's.
    /// (Checked: ending the stream task when the input ends loses the answers.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forward_stream_answers_every_write_it_took_after_its_input_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, _) = lone_leader(dir.path()).await;
        let service = PeerService::new(
            MembershipChanges::new(raft.clone()),
            Proposals::new(raft.clone()),
            Faults::default(),
            false,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );

        const WRITES: u64 = 200;
        let messages: Vec<RaftMessage> = (0..WRITES)
            .map(|id| {
                let command = Command::Put(PutOp {
                    key: format!("key-{}", id % 7).into_bytes(),
                    value: id.to_be_bytes().to_vec(),
                    ..PutOp::default()
                });
                RaftMessage {
                    payload: encode(&(id, command)).unwrap(),
                }
            })
            .collect();
        let mut client = PeerClient::connect(url).await.unwrap();
        // The input is the whole batch and then its end.
        let mut answers = client
            .forward_writes(futures::stream::iter(messages))
            .await
            .unwrap()
            .into_inner();
        let mut answered = BTreeSet::new();
        let mut revisions = BTreeSet::new();
        while let Some(message) = answers.message().await.unwrap() {
            let (id, reply): (u64, ForwardWriteReply) = decode(&message.payload).unwrap();
            let response = reply.unwrap_or_else(|e| panic!("write {id} failed: {e:?}"));
            assert!(answered.insert(id), "write {id} answered twice");
            assert!(
                revisions.insert(response.revision),
                "two writes at revision {}",
                response.revision
            );
        }
        assert_eq!(answered, (0..WRITES).collect::<BTreeSet<_>>());
        server.abort();
        raft.shutdown().await.unwrap();
    }
}
