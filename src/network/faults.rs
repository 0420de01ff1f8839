//! The fault seam of the peer transport: a node can be told to cut its links to some peers, in
//! both directions (outgoing calls fail as unreachable, incoming calls from them are refused).
//!
//! Only reachable when the server was started with `--enable-fault-injection` (tests); a
//! production node never has a cut link unless the network really failed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::RwLock;

use crate::types::NodeId;

#[derive(Clone, Default)]
pub struct Faults {
    cut: Arc<RwLock<BTreeSet<NodeId>>>,
}

impl Faults {
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
}
