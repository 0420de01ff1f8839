//! Membership changes (etcd's MemberAdd / MemberPromote / MemberRemove / MemberUpdate) as openraft
//! runs them: on the leader, one at a time, through joint consensus.
//!
//! ```text
//! add (learner) -> add_learner (non-blocking: the leader starts replicating, snapshot then log)
//! add (voter)   -> AddVoters (joint config; commits with the old majority, as etcd's add does)
//! promote       -> refuse unless the learner has acknowledged the leader and is within
//!                  LEARNER_PROMOTE_LAG_ENTRIES_MAX of its log, then AddVoterIds
//! remove        -> RemoveVoters / RemoveNodes (not retained as a learner); a removed leader
//!                  steps down on its own (openraft's removed_leader_step_down)
//! update        -> SetNodes with the new peer URL (name and client URL kept)
//! ```
//!
//! A follower that receives a change forwards it to the leader over the peer service
//! (`ChangeMembership`); the leader runs [`change_on_leader`]. Must never: run two changes at
//! once (openraft refuses, and we answer "retry"); promote a learner that could not vote sensibly
//! yet (it would slow every commit until it caught up).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ChangeMembershipError;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;
use serde::Deserialize;
use serde::Serialize;

use crate::limits::LEARNER_PROMOTE_LAG_ENTRIES_MAX;
use crate::types::Member;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::TypeConfig;

/// One membership change, as it travels to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    Add {
        id: NodeId,
        member: Member,
        learner: bool,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    Update {
        id: NodeId,
        peer_url: String,
    },
}

/// Why a change was not made; every variant means nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MembershipError {
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// Another change (or this member publishing its URLs) is still uncommitted: retry.
    #[error("etcdserver: a membership change is in progress; retry")]
    InProgress,
    #[error("etcdserver: membership change failed: {0}")]
    Raft(String),
}

/// Runs `change` on this node, which must be the leader. Returns once the change is committed
/// (for a learner add: once the learner is in the committed membership).
pub async fn change_on_leader(
    raft: &Raft,
    change: MembershipChange,
) -> Result<(), MembershipError> {
    let (nodes, voters, replication, last_log_index) = {
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        if !raft_is_leader(&m) {
            return Err(MembershipError::NotLeader);
        }
        if m.membership_config.log_id() != m.committed_membership_config.log_id() {
            return Err(MembershipError::InProgress);
        }
        let membership = m.membership_config.membership();
        let nodes: BTreeMap<NodeId, Member> = membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        // None: the member never acknowledged anything (not started, or unreachable).
        let replication: BTreeMap<NodeId, Option<u64>> = m
            .replication
            .iter()
            .flatten()
            .map(|(id, log_id)| (*id, log_id.map(|l| l.index)))
            .collect();
        (nodes, voters, replication, m.last_log_index.unwrap_or(0))
    };
    let changes = match change {
        MembershipChange::Add {
            id,
            member,
            learner,
        } => {
            if nodes.contains_key(&id)
                || nodes
                    .values()
                    .any(|known| known.peer_url == member.peer_url)
            {
                return Err(MembershipError::PeerUrlExists);
            }
            if learner {
                return raft
                    .add_learner(id, member, false)
                    .await
                    .map(|_| ())
                    .map_err(raft_error);
            }
            ChangeMembers::AddVoters(BTreeMap::from([(id, member)]))
        }
        MembershipChange::Promote { id } => {
            if !nodes.contains_key(&id) {
                return Err(MembershipError::MemberNotFound);
            }
            if voters.contains(&id) {
                return Err(MembershipError::NotLearner);
            }
            match replication.get(&id).copied().flatten() {
                Some(matched)
                    if last_log_index.saturating_sub(matched)
                        <= LEARNER_PROMOTE_LAG_ENTRIES_MAX => {}
                _ => return Err(MembershipError::LearnerNotReady),
            }
            ChangeMembers::AddVoterIds(BTreeSet::from([id]))
        }
        MembershipChange::Remove { id } => {
            if !nodes.contains_key(&id) {
                return Err(MembershipError::MemberNotFound);
            }
            if voters.contains(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            }
        }
        MembershipChange::Update { id, peer_url } => {
            let Some(known) = nodes.get(&id) else {
                return Err(MembershipError::MemberNotFound);
            };
            if nodes
                .iter()
                .any(|(other, node)| *other != id && node.peer_url == peer_url)
            {
                return Err(MembershipError::PeerUrlExists);
            }
            let updated = Member {
                peer_url,
                ..known.clone()
            };
            ChangeMembers::SetNodes(BTreeMap::from([(id, updated)]))
        }
    };
    // `retain = false`: a removed voter leaves the cluster rather than staying as a learner.
    raft.change_membership(changes, false)
        .await
        .map(|_| ())
        .map_err(raft_error)
}

fn raft_is_leader(m: &openraft::RaftMetrics<crate::types::TypeConfig>) -> bool {
    m.state == openraft::ServerState::Leader
}

fn raft_error(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> MembershipError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => MembershipError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => MembershipError::InProgress,
        other => MembershipError::Raft(other.to_string()),
    }
}
