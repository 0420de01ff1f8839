//! How client requests reach consensus: writes go to the leader (forwarded by a follower), and
//! linearizable reads pass a read-index barrier before reading locally, on any member.
//!
//! ```text
//! write:  leader?  yes -> Proposals (raft.client_write, a burst's writes in one append)
//!                  no  -> Peer.ForwardWrites, one stream to the leader (which runs client_write)
//! read:   leader?  yes -> raft.ensure_linearizable(ReadIndex)
//!                  no  -> Peer.ReadIndex on the leader, one request for every read waiting
//!                         -> wait until applied >= read log id
//!         then read the local state machine
//! ```
//!
//! Retries stay inside one deadline and only where nothing can have been applied: a proposal
//! refused with "forward to leader", a peer that could not be reached at all. A write whose
//! outcome is unknown is never re-sent; the client gets `leader changed` or `request timed out`.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;
use openraft::raft::linearizable_read::Linearizer;
use openraft::raft::linearizable_read::ReadLogId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::api::error::ApiError;
use crate::codec::decode;
use crate::codec::encode;
use crate::limits::LEADER_WAIT_MS_MAX;
use crate::limits::PEER_RPC_TIMEOUT_MS;
use crate::limits::READ_INDEX_APPLY_WAIT_MS_MAX;
use crate::limits::REQUEST_TIMEOUT_MS;
use crate::network::ForwardFailure;
use crate::network::ForwardWriteError;
use crate::network::Forwarder;
use crate::network::Peers;
use crate::network::Proposals;
use crate::network::ReadIndexError;
use crate::network::ReadIndexReply;
use crate::network::membership::MembershipChange;
use crate::network::membership::MembershipChanges;
use crate::network::membership::MembershipError;
use crate::network::never_delivered;
use crate::pb::peer::RaftMessage;
use crate::pb::peer::ReadIndexRequest;
use crate::types::Command;
use crate::types::CommandResponse;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::TypeConfig;

/// Pause between attempts when a retry is known to be safe (leader moving, peer unreachable).
const RETRY_PAUSE_MS: u64 = 50;

#[derive(Clone)]
pub struct Consensus {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    membership: MembershipChanges,
    proposals: Proposals,
    peers: Peers,
    forwarder: Forwarder,
    read_batch: Arc<Mutex<ReadBatch>>,
}

/// Follower reads waiting for a read log id from the leader. One ReadIndex request is out at a
/// time; the reads that arrive meanwhile wait for the next, which serves them all. A read joins
/// only a request not yet begun: the request takes its batch, then reads this node's vote and
/// asks the leader, so every step the protocol needs after the read began (see
/// `network::read_index`) comes after every read of the batch began.
#[derive(Default)]
struct ReadBatch {
    waiting: Vec<oneshot::Sender<Asked>>,
    /// A read, or a task after it, is asking the leader for a batch; whoever asks hands over to
    /// a task when reads gathered meanwhile, and the asking ends when none is waiting.
    asking: bool,
}

/// What one ReadIndex request gave: the leader and its read log id, or nothing (ask again).
type Asked = Option<(NodeId, ReadLogId<TypeConfig>)>;

/// Where the leader is, for sending it a request.
enum LeaderAt {
    /// This node leads.
    Here,
    /// Another node leads: its id and peer URL.
    Peer(NodeId, String),
}

impl Consensus {
    /// `membership` makes this node's membership changes when it leads, `proposals` its writes;
    /// every part of the node must share one of each, so that its changes are made one at a time
    /// and its writes of one burst join one append.
    pub fn new(
        id: NodeId,
        membership: MembershipChanges,
        proposals: Proposals,
        peers: Peers,
    ) -> Self {
        Consensus {
            id,
            raft: membership.raft().clone(),
            membership,
            proposals,
            forwarder: Forwarder::new(peers.clone()),
            peers,
            read_batch: Arc::default(),
        }
    }

    pub(crate) fn membership(&self) -> &MembershipChanges {
        &self.membership
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The leader as this node sees it, if it has one and knows its address.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader?;
        let member = metrics.membership_config.get_node(&leader)?.clone();
        Some((leader, member))
    }

    /// Where to send a request for the leader, as this node sees it: copies only the peer URL,
    /// and only when another node leads (every write asks).
    fn leader_at(&self) -> Option<LeaderAt> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader?;
        let member = metrics.membership_config.get_node(&leader)?;
        Some(if leader == self.id {
            LeaderAt::Here
        } else {
            LeaderAt::Peer(leader, member.peer_url.clone())
        })
    }

    /// Waits (bounded by [`LEADER_WAIT_MS_MAX`] and the deadline) until a leader is known.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<LeaderAt, ApiError> {
        let wait_until = deadline.min(Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX));
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = self.leader_at() {
                return Ok(leader);
            }
            if metrics.borrow_watched().running_state.is_err() {
                return Err(ApiError::Stopped);
            }
            match tokio::time::timeout_at(wait_until, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ApiError::Stopped),
                Err(_) => return Err(ApiError::NoLeader),
            }
        }
    }

    async fn pause(deadline: Instant) -> Result<(), ApiError> {
        let next = Instant::now() + Duration::from_millis(RETRY_PAUSE_MS);
        if next >= deadline {
            return Err(ApiError::Timeout);
        }
        tokio::time::sleep_until(next).await;
        Ok(())
    }

    /// Proposes `command` and returns its applied result.
    pub async fn write(&self, command: Command) -> Result<CommandResponse, ApiError> {
        let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
        let command = Arc::new(command);
        loop {
            let (leader, peer_url) = match self.wait_for_leader(deadline).await? {
                LeaderAt::Here => match self.propose_here(&command, deadline).await? {
                    Some(response) => return Ok(response),
                    None => {
                        Self::pause(deadline).await?;
                        continue;
                    }
                },
                LeaderAt::Peer(leader, peer_url) => (leader, peer_url),
            };
            let outcome = self
                .forwarder
                .write(leader, &peer_url, &command, deadline)
                .await;
            match outcome {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(ForwardWriteError::NotLeader { .. })) => Self::pause(deadline).await?,
                Ok(Err(ForwardWriteError::Unknown(reason))) => {
                    tracing::warn!(%reason, "forwarded write has an unknown outcome");
                    return Err(ApiError::LeaderChanged);
                }
                Err(ForwardFailure::NeverDelivered(_)) => Self::pause(deadline).await?,
                Err(ForwardFailure::Unknown(reason)) => {
                    tracing::warn!(%reason, "forwarded write failed in flight; outcome unknown");
                    return Err(ApiError::Timeout);
                }
            }
        }
    }

    /// Proposes `command` on this node's Raft, which leads; `None` when it was refused before it
    /// was appended (leadership moved on): nothing happened, try the new leader.
    async fn propose_here(
        &self,
        command: &Arc<Command>,
        deadline: Instant,
    ) -> Result<Option<CommandResponse>, ApiError> {
        let outcome =
            tokio::time::timeout_at(deadline, self.proposals.write(Arc::clone(command))).await;
        match outcome {
            Ok(Ok(response)) => Ok(Some(response.data)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Ok(None),
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Err(ApiError::LeaderChanged)
            }
            Ok(Err(RaftError::APIError(e))) => Err(ApiError::Internal(e.to_string())),
            Ok(Err(RaftError::Fatal(_))) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    /// Runs a membership change on the leader (forwarded when this node is not it), retrying
    /// within one deadline while the leader moves or another change is still uncommitted.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ApiError> {
        let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
        loop {
            let outcome = match self.wait_for_leader(deadline).await? {
                LeaderAt::Here => {
                    match tokio::time::timeout_at(deadline, self.membership.change(change.clone()))
                        .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => return Err(ApiError::Timeout),
                    }
                }
                LeaderAt::Peer(leader, peer_url) => {
                    let Ok(mut client) = self.peers.client(leader, &peer_url) else {
                        Self::pause(deadline).await?;
                        continue;
                    };
                    let payload = encode(&change).map_err(|e| ApiError::Internal(e.to_string()))?;
                    let timeout = deadline.saturating_duration_since(Instant::now());
                    let request = self.peers.request(RaftMessage { payload }, timeout);
                    match client.change_membership(request).await {
                        Ok(response) => decode(&response.into_inner().payload)
                            .map_err(|e| ApiError::Internal(e.to_string()))?,
                        Err(status) if never_delivered(&status) => {
                            Self::pause(deadline).await?;
                            continue;
                        }
                        Err(status) => {
                            tracing::warn!(%status, "forwarded membership change failed in flight");
                            return Err(ApiError::Timeout);
                        }
                    }
                }
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(MembershipError::NotLeader | MembershipError::InProgress) => {
                    Self::pause(deadline).await?
                }
                Err(MembershipError::MemberNotFound) => return Err(ApiError::MemberNotFound),
                Err(MembershipError::PeerUrlExists) => return Err(ApiError::PeerUrlExists),
                Err(MembershipError::NotLearner) => return Err(ApiError::NotLearner),
                Err(MembershipError::LearnerNotReady) => return Err(ApiError::LearnerNotReady),
                Err(MembershipError::Raft(reason)) => return Err(ApiError::Internal(reason)),
                Err(MembershipError::Unknown(reason)) => {
                    tracing::warn!(%reason, "membership change interrupted after its first step");
                    return Err(ApiError::LeaderChanged);
                }
            }
        }
    }

    /// Returns once this node's state machine reflects every write acknowledged before the call:
    /// after it, a local read is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS);
        loop {
            if let LeaderAt::Here = self.wait_for_leader(deadline).await? {
                let outcome = tokio::time::timeout_at(
                    deadline,
                    self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
                )
                .await;
                match outcome {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => {
                        Self::pause(deadline).await?
                    }
                    Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)))) => {
                        Self::pause(deadline).await?
                    }
                    Ok(Err(RaftError::Fatal(_))) => return Err(ApiError::Stopped),
                    Err(_) => return Err(ApiError::Timeout),
                }
                continue;
            }

            let (answer, asked) = oneshot::channel();
            let start_asking = {
                let mut batch = self.read_batch.lock().expect("read batch lock");
                batch.waiting.push(answer);
                !std::mem::replace(&mut batch.asking, true)
            };
            if start_asking {
                // This read asks for the batch itself (no task hop when reads come one at a
                // time); a task asks for the reads that gather meanwhile.
                self.ask_for_one_read_batch().await;
            }
            let (leader, read_log_id) = match tokio::time::timeout_at(deadline, asked).await {
                Ok(Ok(Some(asked))) => asked,
                // Reads are idempotent: any failure to get a read index may be retried.
                Ok(Ok(None) | Err(_)) => {
                    Self::pause(deadline).await?;
                    continue;
                }
                Err(_) => return Err(ApiError::Timeout),
            };
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(READ_INDEX_APPLY_WAIT_MS_MAX));
            let linearizer = Linearizer::new(leader, read_log_id, None);
            return match linearizer.try_await_ready(&self.raft, Some(wait)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(ApiError::TimeoutWaitAppliedIndex),
                Err(_) => Err(ApiError::Stopped),
            };
        }
    }
}

/// Hands the asking for read batches over to a task when dropped armed: the read that was
/// asking stopped (its client went away), and the reads it had taken wait again; or reads
/// gathered while it asked.
struct HandOver<'a> {
    consensus: Option<&'a Consensus>,
    taken: Vec<oneshot::Sender<Asked>>,
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        if let Some(consensus) = self.consensus.take() {
            let taken = std::mem::take(&mut self.taken);
            if !taken.is_empty() {
                let mut batch = consensus.read_batch.lock().expect("read batch lock");
                batch.waiting.extend(taken);
            }
            let consensus = consensus.clone();
            tokio::spawn(async move { consensus.ask_for_one_read_batch().await });
        }
    }
}

impl Consensus {
    /// Asks the leader for a read log id for the reads waiting now (the caller's among them),
    /// then hands the asking over to a task if more gathered meanwhile, or ends it.
    async fn ask_for_one_read_batch(&self) {
        let taken = std::mem::take(&mut self.read_batch.lock().expect("read batch lock").waiting);
        let mut hand_over = HandOver {
            consensus: Some(self),
            taken,
        };
        let asked = self.ask_read_index().await;
        for waiter in std::mem::take(&mut hand_over.taken) {
            let _ = waiter.send(asked);
        }
        let mut batch = self.read_batch.lock().expect("read batch lock");
        if batch.waiting.is_empty() {
            batch.asking = false;
            hand_over.consensus = None;
        }
    }

    /// One ReadIndex request to the leader this node knows now; `None` when there is none to
    /// ask (this node leads, or no leader is known) or it gave no read log id.
    async fn ask_read_index(&self) -> Asked {
        let LeaderAt::Peer(leader, peer_url) = self.leader_at()? else {
            return None;
        };
        let mut client = self.peers.client(leader, &peer_url).ok()?;
        // Read through the Raft core after every read of the batch began: the leader may then
        // answer without a heartbeat round (see `network::read_index`).
        let (vouch_term, vouch_leader) = self
            .raft
            .with_raft_state(|st| {
                let vote = st.vote_ref();
                match vote.is_committed() {
                    true => (vote.leader_id().term, vote.leader_id().node_id),
                    false => (0, 0),
                }
            })
            .await
            .ok()?;
        let request = self.peers.request(
            ReadIndexRequest {
                from_node_id: self.id,
                vouch_term,
                vouch_leader,
            },
            Duration::from_millis(PEER_RPC_TIMEOUT_MS),
        );
        let response = client.read_index(request).await.ok()?;
        match decode::<ReadIndexReply>(&response.into_inner().payload) {
            Ok(Ok(read_log_id)) => Some((leader, read_log_id)),
            Ok(Err(ReadIndexError::NotLeader { .. } | ReadIndexError::NoQuorum(_))) => None,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable read index reply");
                None
            }
        }
    }
}
