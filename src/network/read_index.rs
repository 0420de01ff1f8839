//! The leader's side of a follower read (ReadIndex), with a one-round-trip form for clusters of
//! at most three voters.
//!
//! The usual ReadIndex: the leader takes its read log id (its commit index, at least its first
//! entry of its term), then confirms with a heartbeat round that a quorum still follows it; the
//! follower applies up to that id and reads locally. From a follower that is two peer round
//! trips: follower -> leader, and leader -> quorum.
//!
//! The vouched form drops the heartbeat round. openraft orders leaders by their leader id
//! (term, node id): several candidates can win the same term, in node-id order, so the argument
//! is over votes, not terms. The follower F reads its vote through its own Raft core after the
//! client's read began (at t1 > t0) and sends it if committed. The leader L gives its read log
//! id (at t2 > t1), then asks its own core (at t3 >= t2) for its role, vote and membership, and
//! answers with that id without a heartbeat round only if all of these hold: L still leads with
//! vote (T, L); F's committed vote is (T, L) too, and so is the read log id's leader; L's
//! membership is committed, uniform (no joint config), of at most three voters, L and F among
//! them, and no newer than the read log id (so it was already L's membership at t2).
//!
//! Why that is linearizable: a write acknowledged before t0 was committed by a leader with some
//! leader id V. If V <= (T, L), L's read log id covers it (leader completeness; L's commit index
//! only grows). V > (T, L) is impossible: the first leader above (T, L) was elected, before t0, by
//! a majority of the configuration in its log. With joint consensus every such configuration has
//! a majority that meets {L, F}: L's own committed uniform set of at most three voters (where
//! {L, F} is a majority), a joint config containing it, or an older one whose holders refuse a
//! candidate without the committed change (their logs are newer). So L or F granted a vote above
//! (T, L) before t0; but L's vote is (T, L) at t3 and F's at t1, and votes never go down.
//!
//! Anything else (five voters, a membership change in flight, no fresh leader lease, a vote that
//! moved or names another leader) takes the usual heartbeat round.

use std::collections::BTreeSet;

use openraft::ReadPolicy;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::LinearizableReadError;
use openraft::errors::RaftError;
use openraft::raft::linearizable_read::ReadLogId;
use prometheus_client::metrics::counter::Counter;

use super::ReadIndexError;
use super::ReadIndexReply;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::TypeConfig;

/// The leader's state as its Raft core held it, after it gave a read log id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaderState {
    pub id: NodeId,
    pub leading: bool,
    pub term: u64,
    /// The index of the entry that holds the effective membership.
    pub membership_index: Option<u64>,
    /// Whether the effective membership is the committed one.
    pub membership_committed: bool,
    /// The effective membership's voter sets: more than one in a joint config.
    pub voter_sets: Vec<BTreeSet<NodeId>>,
}

impl LeaderState {
    async fn read(raft: &Raft) -> Option<LeaderState> {
        let id = raft.metrics().borrow_watched().id;
        raft.with_raft_state(move |st| {
            let effective = st.membership_state.effective();
            LeaderState {
                id,
                leading: st.server_state == ServerState::Leader,
                term: st.vote_ref().leader_id().term,
                membership_index: effective.log_id().map(|log_id| log_id.index),
                membership_committed: effective.log_id()
                    == st.membership_state.committed().log_id(),
                voter_sets: effective.membership().get_joint_config().clone(),
            }
        })
        .await
        .ok()
    }
}

/// Whether `leader` may answer `follower`'s read at `read` (leader term, leader node, index)
/// without a heartbeat round, given the follower's committed vote `vouch` (term, leader node);
/// see the module documentation.
pub(crate) fn vouched(
    leader: &LeaderState,
    read: (u64, NodeId, u64),
    follower: NodeId,
    vouch: (u64, NodeId),
) -> bool {
    let (read_term, read_leader, read_index) = read;
    let [voters] = leader.voter_sets.as_slice() else {
        return false;
    };
    let own_vote = (leader.term, leader.id);
    leader.leading
        && leader.term != 0
        && vouch == own_vote
        && (read_term, read_leader) == own_vote
        && leader.membership_committed
        && leader
            .membership_index
            .is_some_and(|index| index <= read_index)
        && voters.len() <= 3
        && follower != leader.id
        && voters.contains(&leader.id)
        && voters.contains(&follower)
}

/// How the leader answered follower reads: vouched (one round trip) or with a heartbeat round.
#[derive(Debug, Clone, Default)]
pub struct ReadIndexCounters {
    pub vouched: Counter,
    pub heartbeat: Counter,
}

/// Whether this node's metrics show a uniform membership of at most three voters: without one
/// no read can be vouched, and the two Raft core round trips of the check are skipped. Only a
/// filter: the check itself reads the core's state after the read log id.
fn small_uniform_membership(raft: &Raft) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    matches!(
        metrics.membership_config.membership().get_joint_config().as_slice(),
        [voters] if voters.len() <= 3
    )
}

/// The read log id for `follower`'s read, on the leader.
pub(crate) async fn read_index(
    raft: &Raft,
    follower: NodeId,
    vouch: (u64, NodeId),
    counters: &ReadIndexCounters,
) -> Result<ReadIndexReply, RaftError<TypeConfig, openraft::errors::Fatal<TypeConfig>>> {
    if vouch.0 != 0
        && small_uniform_membership(raft)
        && let Ok(linearizer) = raft.get_read_linearizer(ReadPolicy::LeaseRead).await
    {
        let read: ReadLogId<TypeConfig> = *linearizer.read_log_id();
        let read_leader = read.committed_leader_id();
        let read_at = (read_leader.term, read_leader.node_id, read.index());
        if let Some(leader) = LeaderState::read(raft).await
            && vouched(&leader, read_at, follower, vouch)
        {
            counters.vouched.inc();
            return Ok(Ok(read));
        }
    }
    counters.heartbeat.inc();
    Ok(
        match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(linearizer) => Ok(*linearizer.read_log_id()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ReadIndexError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
                Err(ReadIndexError::NoQuorum(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => return Err(RaftError::Fatal(e)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: NodeId = 1;
    const F: NodeId = 2;

    fn three_voters() -> LeaderState {
        LeaderState {
            id: L,
            leading: true,
            term: 7,
            membership_index: Some(40),
            membership_committed: true,
            voter_sets: vec![BTreeSet::from([L, F, 3])],
        }
    }

    #[test]
    fn a_voter_of_a_settled_three_voter_cluster_in_the_leaders_term_vouches() {
        assert!(vouched(&three_voters(), (7, L, 50), F, (7, L)));
        let two = LeaderState {
            voter_sets: vec![BTreeSet::from([L, F])],
            ..three_voters()
        };
        assert!(vouched(&two, (7, L, 50), F, (7, L)));
    }

    /// Why not, the leader's state, the read (term, leader, index), the asking follower, its
    /// committed vote (term, leader).
    type Case = (
        &'static str,
        LeaderState,
        (u64, NodeId, u64),
        NodeId,
        (u64, NodeId),
    );

    #[test]
    fn any_doubt_takes_the_heartbeat_round() {
        let base = three_voters();
        let cases: Vec<Case> = vec![
            ("no vouch sent", base.clone(), (7, L, 50), F, (0, 0)),
            (
                "follower in an older term",
                base.clone(),
                (7, L, 50),
                F,
                (6, L),
            ),
            (
                "follower in a newer term",
                base.clone(),
                (7, L, 50),
                F,
                (8, L),
            ),
            // openraft's leader ids are (term, node id): a later candidate of the same term
            // can win it with the follower's vote while this leader still leads.
            (
                "follower elected another leader of the term",
                base.clone(),
                (7, L, 50),
                F,
                (7, 3),
            ),
            (
                "read id of another term",
                base.clone(),
                (6, L, 50),
                F,
                (7, L),
            ),
            (
                "read id of another leader",
                base.clone(),
                (7, 3, 50),
                F,
                (7, L),
            ),
            (
                "no longer leading",
                LeaderState {
                    leading: false,
                    ..base.clone()
                },
                (7, L, 50),
                F,
                (7, L),
            ),
            (
                "five voters",
                LeaderState {
                    voter_sets: vec![BTreeSet::from([L, F, 3, 4, 5])],
                    ..base.clone()
                },
                (7, L, 50),
                F,
                (7, L),
            ),
            (
                "joint config",
                LeaderState {
                    voter_sets: vec![BTreeSet::from([L, F, 3]), BTreeSet::from([L, F])],
                    ..base.clone()
                },
                (7, L, 50),
                F,
                (7, L),
            ),
            (
                "membership change in flight",
                LeaderState {
                    membership_committed: false,
                    ..base.clone()
                },
                (7, L, 50),
                F,
                (7, L),
            ),
            (
                "membership newer than the read id",
                LeaderState {
                    membership_index: Some(51),
                    ..base.clone()
                },
                (7, L, 50),
                F,
                (7, L),
            ),
            ("a learner asks", base.clone(), (7, L, 50), 9, (7, L)),
            ("the leader itself", base.clone(), (7, L, 50), L, (7, L)),
            (
                "leader not a voter",
                LeaderState {
                    voter_sets: vec![BTreeSet::from([F, 3, 4])],
                    ..base.clone()
                },
                (7, L, 50),
                F,
                (7, L),
            ),
        ];
        for (why, leader, read, follower, vouch) in cases {
            assert!(
                !vouched(&leader, read, follower, vouch),
                "vouched although: {why}"
            );
        }
    }
}
