//! The Raft peer transport: openraft's messages over our gRPC peer service.
//!
//! ```text
//! openraft core --RaftNetworkV2--> PeerConnection --gRPC quorumdb.raft.v1.Peer--> PeerService --> Raft
//! api::Consensus --Forwarder--> ForwardWrites (one stream) on the leader
//! api::Consensus --Peers::client--> ReadIndex on the leader (which releases held commits, HeldCommits)
//! ```
//!
//! Payloads are openraft's own serde types encoded with [`crate::codec`]; the proto only frames
//! them. Every outgoing call names its sender (metadata `x-quorumdb-from`) so the receiving side
//! can apply the [`Faults`] seam to incoming traffic as well.
//!
//! Must never: touch storage; decide anything about client semantics.

mod coalesced_writes;
mod faults;
mod forward;
mod held_commits;
pub mod membership;
mod peers;
mod proposals;
mod raft_network;
pub mod read_index;
mod server;
#[cfg(test)]
mod test_support;

pub use coalesced_writes::CoalescedWrites;
pub use faults::FaultPlan;
pub use faults::Faults;
pub use forward::ForwardFailure;
pub use forward::Forwarder;
pub use held_commits::HeldCommits;
pub use peers::PeerUnreachable;
pub use peers::Peers;
pub use proposals::Proposals;
pub use raft_network::PeerNetworkFactory;
pub use server::ForwardWriteError;
pub use server::ForwardWriteReply;
pub use server::LeaderContact;
pub use server::MembersReply;
pub use server::PeerService;
pub use server::ReadIndexError;
pub use server::ReadIndexReply;
pub use server::publish_on_leader;

/// A peer call failed to connect: nothing was sent (the peer is not listening, yet or any more).
pub(crate) fn connection_refused(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("tcp connect error")
            || status.message().contains("Connection refused"))
}

/// A peer call failed in a way that proves the request was never delivered.
pub(crate) fn never_delivered(status: &tonic::Status) -> bool {
    connection_refused(status)
        || status.code() == tonic::Code::Unavailable
            && (status.message().contains("cut by fault injection")
            // The peer's name did not resolve (a container that is gone): no connection, so
            // nothing was sent.
            || status.message().contains("dns error"))
}

/// gRPC metadata key carrying the sending node's id on every peer call.
pub const FROM_NODE_METADATA: &str = "x-quorumdb-from";

/// `http://127.0.0.1:<port>` where nothing listens (a port just bound and released).
#[cfg(test)]
pub(crate) fn closed_port_url() -> String {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: nothing listens there now
    format!("http://127.0.0.1:{port}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pb::peer::RaftMessage;

    /// Pins how tonic reports a refused connection: the write-retry decision depends on it, and
    /// a tonic or hyper upgrade could change the wording (then this fails, not a silent retry).
    #[tokio::test]
    async fn a_refused_connection_is_classified_as_never_delivered() {
        let peers = Peers::new(1, Faults::default());
        let mut client = peers.client(2, &closed_port_url()).unwrap();
        let request = peers.request(RaftMessage { payload: vec![] }, Duration::from_secs(2));
        let status = client
            .forward_write(request)
            .await
            .expect_err("nothing listens");
        assert!(never_delivered(&status), "{status:?}");
    }

    #[test]
    fn a_timeout_or_reset_is_not_classified_as_never_delivered() {
        assert!(!never_delivered(&tonic::Status::deadline_exceeded(
            "deadline"
        )));
        assert!(!never_delivered(&tonic::Status::unavailable(
            "error reading a body from connection"
        )));
        assert!(!never_delivered(&tonic::Status::cancelled(
            "operation was canceled"
        )));
    }
}
