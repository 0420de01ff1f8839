//! The fault seam: a node can be told to cut its links to some peers, in both directions
//! (outgoing calls fail as unreachable, incoming calls from them are refused), and to drop the
//! answers to its next client writes after they were applied (a lost response, as a client sees
//! it when a connection dies at the wrong moment).
//!
//! Only reachable when the server was started with `--enable-fault-injection` (tests); a
//! production node never has a cut link unless the network really failed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde::Serialize;

use crate::types::NodeId;

/// What a `SetFaults` call changes; `None` leaves that fault as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// The peers this node cannot talk to (replaces the current set).
    pub cut: Option<BTreeSet<NodeId>>,
    /// How many of the next client writes (Put, DeleteRange, Txn) answered by this node lose
    /// their response after being applied.
    pub drop_write_responses: Option<u32>,
}

#[derive(Clone, Default)]
pub struct Faults {
    cut: Arc<RwLock<BTreeSet<NodeId>>>,
    drop_write_responses: Arc<AtomicU32>,
}

impl Faults {
    pub fn apply(&self, plan: FaultPlan) {
        if let Some(cut) = plan.cut {
            self.set_cut(cut);
        }
        if let Some(count) = plan.drop_write_responses {
            self.drop_write_responses.store(count, Ordering::SeqCst);
        }
    }

    /// Replaces the set of peers this node cannot talk to.
    pub fn set_cut(&self, peers: BTreeSet<NodeId>) {
        *self.cut.write().expect("fault set lock") = peers;
    }

    pub fn is_cut(&self, peer: NodeId) -> bool {
        self.cut.read().expect("fault set lock").contains(&peer)
    }

    pub fn cut(&self) -> BTreeSet<NodeId> {
        self.cut.read().expect("fault set lock").clone()
    }

    /// Whether the answer to the write just applied must be dropped (consumes one).
    pub fn take_dropped_write_response(&self) -> bool {
        self.drop_write_responses
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}
