//! Membership changes (etcd's MemberAdd / MemberPromote / MemberRemove / MemberUpdate) as openraft
//! runs them: on the leader, one at a time, through joint consensus.
//!
//! ```text
//! add (learner) -> AddNodes, as openraft's add_learner (the leader starts replicating, snapshot
//!                  then log)
//! add (voter)   -> AddVoters (joint config; commits with the old majority, as etcd's add does)
//! promote       -> refuse unless the learner has acknowledged the leader and is within
//!                  LEARNER_PROMOTE_LAG_ENTRIES_MAX of its log, then AddVoterIds
//! remove        -> RemoveVoters / RemoveNodes (not retained as a learner); a removed leader
//!                  steps down on its own (openraft's removed_leader_step_down)
//! update        -> SetNodes with the new peer URL (name and client URL kept)
//! publish       -> SetNodes with the member's own name and URLs
//! ```
//!
//! A follower that receives a change forwards it to the leader over the peer service
//! (`ChangeMembership`); the leader runs [`MembershipChanges::change`]. Must never: run two
//! changes at once (a change between the two steps of another splits it); promote a learner that
//! could not vote sensibly yet (it would slow every commit until it caught up).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::Precondition;
use openraft::alias::LogIdOf;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ChangeMembershipError;
use openraft::errors::ClientWriteError;
use openraft::errors::PreconditionFailed;
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
    /// A member's own name and URLs, as it publishes them at start (etcd's "publish").
    Publish {
        id: NodeId,
        member: Member,
    },
}

/// Why a change was not made; every variant but `Unknown` means nothing changed.
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
    /// The first of the change's two steps was written, then the change failed (the leader was
    /// lost): whether it takes effect is not known here.
    #[error("etcdserver: leader changed during a membership change; its outcome is unknown: {0}")]
    Unknown(String),
}

/// This node's membership changes as leader, made one at a time.
///
/// openraft changes voters in two steps, a joint config and then the new one, and another
/// change committed between the two makes the second step fail and leaves the cluster in joint
/// consensus: a promotion racing a member publishing its URLs was answered "can only promote a
/// learner member" on retry, though it had been made. So every change this node proposes (those
/// of clients, forwarded ones, publishes) takes its turn here, and each is proposed only while
/// the membership is still the one it was planned on (openraft's `LastMembershipLogId`
/// precondition), so a change planned on a stale view is refused whole and retried.
#[derive(Clone)]
pub struct MembershipChanges {
    raft: Raft,
    one_at_a_time: Arc<tokio::sync::Mutex<()>>,
}

/// The leader's membership as a change is planned on it.
struct LeaderView {
    /// The log id of the effective membership: the change's precondition.
    log_id: Option<LogIdOf<TypeConfig>>,
    joint: bool,
    nodes: BTreeMap<NodeId, Member>,
    /// The voters of the last (target) config.
    voters: BTreeSet<NodeId>,
    /// Per member, the last log index it acknowledged; `None` if it never acknowledged anything
    /// (not started, or unreachable).
    replication: BTreeMap<NodeId, Option<u64>>,
    last_log_index: u64,
}

/// How long a successful change waits for this node's metrics to show it, so that the next
/// change is planned on it (a change planned on a stale view is refused and retried anyway).
const CHANGE_VISIBLE_WAIT: Duration = Duration::from_secs(1);

impl MembershipChanges {
    pub fn new(raft: Raft) -> Self {
        MembershipChanges {
            raft,
            one_at_a_time: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Runs `change` on this node, which must be the leader. Returns once the change is
    /// committed (for a learner add: once the learner is in the committed membership).
    pub async fn change(&self, change: MembershipChange) -> Result<(), MembershipError> {
        let _turn = self.one_at_a_time.lock().await;
        let mut view = self.view()?;
        if view.joint {
            // A change whose second step never ran (the leader was lost between the steps, or
            // its caller gave up) left a joint config: finish it, towards its target, first.
            tracing::info!("finishing a membership change left in joint consensus");
            self.propose(ChangeMembers::AddVoterIds(BTreeSet::new()), false, &view)
                .await?;
            view = self.view()?;
        }
        let (changes, retain) = plan(change, &view)?;
        self.propose(changes, retain, &view).await
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    fn view(&self) -> Result<LeaderView, MembershipError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state != openraft::ServerState::Leader {
            return Err(MembershipError::NotLeader);
        }
        if m.membership_config.log_id() != m.committed_membership_config.log_id() {
            return Err(MembershipError::InProgress);
        }
        let membership = m.membership_config.membership();
        Ok(LeaderView {
            log_id: *m.membership_config.log_id(),
            joint: membership.get_joint_config().len() > 1,
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect(),
            voters: membership
                .get_joint_config()
                .last()
                .cloned()
                .unwrap_or_default(),
            replication: m
                .replication
                .iter()
                .flatten()
                .map(|(id, log_id)| (*id, log_id.map(|l| l.index)))
                .collect(),
            last_log_index: m.last_log_index.unwrap_or(0),
        })
    }

    /// Proposes `changes` if the membership is still the one `view` saw. A refusal before
    /// anything was written is `InProgress` (plan again); a failure after the first of two steps
    /// was written is `Unknown`, never a definite "not done".
    async fn propose(
        &self,
        changes: ChangeMembers<NodeId, Member>,
        retain: bool,
        view: &LeaderView,
    ) -> Result<(), MembershipError> {
        let planned_on = Precondition::LastMembershipLogId {
            last_membership_log_id: view.log_id,
        };
        match self
            .raft
            .change_membership_if(changes, retain, [planned_on])
            .await
        {
            Ok(response) => {
                // Committed in the metrics too: `view` refuses to plan while the effective
                // membership is ahead of the committed one there, and the metrics trail the
                // commit. Without this, the change after a flattening was refused as in
                // progress about one time in five (the joint-config test below).
                let shown = |m: &openraft::RaftMetrics<TypeConfig>| {
                    m.committed_membership_config.log_id().as_ref() >= Some(&response.log_id)
                };
                let _ = self
                    .raft
                    .wait(Some(CHANGE_VISIBLE_WAIT))
                    .metrics(shown, "the membership change shows in the metrics")
                    .await;
                Ok(())
            }
            Err(RaftError::APIError(ClientWriteError::PreconditionFailed(
                PreconditionFailed::LastMembershipLogIdMismatch { expected, .. },
            ))) if expected == view.log_id => Err(MembershipError::InProgress),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) => Err(MembershipError::InProgress),
            Err(error) => {
                let now = *self
                    .raft
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .log_id();
                if now != view.log_id {
                    Err(MembershipError::Unknown(error.to_string()))
                } else {
                    Err(raft_error(error))
                }
            }
        }
    }
}

/// The Raft change that makes `change` on `view`, and whether removed voters stay as learners.
fn plan(
    change: MembershipChange,
    view: &LeaderView,
) -> Result<(ChangeMembers<NodeId, Member>, bool), MembershipError> {
    let LeaderView {
        nodes,
        voters,
        replication,
        last_log_index,
        ..
    } = view;
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
                // As openraft's `add_learner`: the leader starts replicating to it at once.
                return Ok((
                    ChangeMembers::AddNodes(BTreeMap::from([(id, member)])),
                    true,
                ));
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
        MembershipChange::Publish { id, member } => {
            if !nodes.contains_key(&id) {
                return Err(MembershipError::MemberNotFound);
            }
            ChangeMembers::SetNodes(BTreeMap::from([(id, member)]))
        }
    };
    // `retain = false`: a removed voter leaves the cluster rather than staying as a learner.
    Ok((changes, false))
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

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::Membership;

    use super::*;
    use crate::network::test_support::lone_leader;

    /// A change whose second step never ran (its leader was lost between the steps) leaves a
    /// joint config. The next change must flatten it first and then make its own change: on the
    /// joint config openraft refuses every change as in progress, so the membership would be
    /// stuck for good (checked: without the flattening this test fails with `InProgress`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_on_a_config_left_joint_flattens_it_then_makes_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let (raft, _) = lone_leader(dir.path()).await;
        // openraft takes a membership entry only once the leader committed one of its term.
        let leader_blank = raft.metrics().borrow_watched().last_log_index;
        raft.wait(Some(Duration::from_secs(10)))
            .applied_index(leader_blank, "the leader's first entry is applied")
            .await
            .unwrap();
        let voters = BTreeSet::from([1]);
        // One entry holding a joint config, as the first step of a change leaves it.
        let joint = Membership::new(
            vec![voters.clone(), voters.clone()],
            BTreeMap::from([(1, Member::default())]),
        )
        .unwrap();
        let written = raft
            .append_membership(joint, EntryPayload::Blank, [])
            .await
            .unwrap();
        let joint_index = written.log_id.index;
        // As a leader that took over would: the joint config shows as committed in the metrics
        // (a change planned before that is refused as in progress, and retried by its caller).
        raft.wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| {
                    m.membership_config.log_id() == &Some(written.log_id)
                        && m.committed_membership_config.log_id() == &Some(written.log_id)
                },
                "the joint config shows as committed",
            )
            .await
            .unwrap();
        assert_eq!(
            raft.metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .get_joint_config()
                .len(),
            2,
            "the test starts from a joint config"
        );

        let member = Member {
            name: "one".to_string(),
            peer_url: "http://127.0.0.1:1".to_string(),
            client_url: "http://127.0.0.1:2".to_string(),
        };
        MembershipChanges::new(raft.clone())
            .change(MembershipChange::Publish {
                id: 1,
                member: member.clone(),
            })
            .await
            .unwrap();

        let metrics = raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        assert_eq!(
            membership.get_joint_config(),
            &vec![voters],
            "the joint config was flattened"
        );
        assert_eq!(membership.get_node(&1), Some(&member), "and then changed");
        assert_eq!(
            metrics.membership_config.log_id().map(|id| id.index),
            Some(joint_index + 2),
            "two entries: the flattening, then the change"
        );
        raft.shutdown().await.unwrap();
    }
}
