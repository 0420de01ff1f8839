//! A follower's writes forwarded to the leader, many on one `ForwardWrites` stream.
//!
//! A unary call per write cost an HTTP/2 stream on both ends (headers, hpack, stream state) for a
//! few hundred bytes of command; with clients spread over all members, two writes in three were
//! forwarded. Here each write is one message out, `(id, command)`, and one answer back,
//! `(id, reply)`, in the order the leader finishes them.
//!
//! What a caller learns, as with the unary call: the leader's reply; or that nothing reached the
//! leader (the link is cut, the connection was refused), when retrying is safe; or that the
//! write was sent and no answer came (the stream broke, the deadline passed), when the outcome
//! is unknown and the write must not be sent again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::ForwardWriteReply;
use super::Peers;
use crate::codec::decode;
use crate::codec::encode;
use crate::pb::peer::RaftMessage;
use crate::pb::peer::peer_client::PeerClient;
use crate::types::Command;
use crate::types::NodeId;

/// Why a forwarded write has no reply from the leader.
#[derive(Debug, Clone)]
pub enum ForwardFailure {
    /// Nothing reached the leader: sending it again is safe.
    NeverDelivered(String),
    /// It was sent and no answer came: the outcome is unknown.
    Unknown(String),
}

type Waiter = oneshot::Sender<Result<ForwardWriteReply, ForwardFailure>>;

#[derive(Default)]
struct Waiters {
    by_id: HashMap<u64, Waiter>,
    /// The stream has ended: nothing more will be answered.
    closed: bool,
}

/// One open stream to one leader.
struct Link {
    leader: NodeId,
    peer_url: String,
    outbound: mpsc::UnboundedSender<RaftMessage>,
    waiters: Arc<Mutex<Waiters>>,
}

/// Forwards writes to the leader. Cheap to clone: clones share the stream.
#[derive(Clone)]
pub struct Forwarder {
    peers: Peers,
    link: Arc<Mutex<Option<Arc<Link>>>>,
    next_id: Arc<AtomicU64>,
}

impl Forwarder {
    pub fn new(peers: Peers) -> Self {
        Forwarder {
            peers,
            link: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// Sends `command` to `leader` and waits, until `deadline`, for what became of it.
    pub async fn write(
        &self,
        leader: NodeId,
        peer_url: &str,
        command: &Command,
        deadline: Instant,
    ) -> Result<ForwardWriteReply, ForwardFailure> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let payload = encode(&(id, command))
            .map_err(|e| ForwardFailure::NeverDelivered(format!("cannot encode: {e}")))?;
        let (waiter, answer) = oneshot::channel();
        let link = self.enlist(leader, peer_url, id, waiter)?;
        if link.outbound.send(RaftMessage { payload }).is_err() {
            // The stream's driver is gone, so the message was not taken: never sent.
            link.waiters.lock().expect("waiters lock").by_id.remove(&id);
            self.forget(&link);
            return Err(ForwardFailure::NeverDelivered(
                "forward stream closed".to_string(),
            ));
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ForwardFailure::Unknown(
                "forward stream dropped the write".to_string(),
            )),
            Err(_) => {
                link.waiters.lock().expect("waiters lock").by_id.remove(&id);
                // A stream that leaves a write unanswered this long may be stuck on a dead
                // connection: the next write opens a new one.
                self.forget(&link);
                Err(ForwardFailure::Unknown(
                    "no answer from the leader before the deadline".to_string(),
                ))
            }
        }
    }

    /// Registers `waiter` for answer `id` on an open stream to `leader`, opening one if needed.
    fn enlist(
        &self,
        leader: NodeId,
        peer_url: &str,
        id: u64,
        waiter: Waiter,
    ) -> Result<Arc<Link>, ForwardFailure> {
        if self.peers.faults.is_cut(leader) {
            return Err(ForwardFailure::NeverDelivered(format!(
                "link to node {leader:x} is cut by fault injection"
            )));
        }
        let mut slot = self.link.lock().expect("forward link lock");
        if let Some(link) = slot.as_ref()
            && link.leader == leader
            && link.peer_url == peer_url
        {
            let mut waiters = link.waiters.lock().expect("waiters lock");
            if !waiters.closed {
                waiters.by_id.insert(id, waiter);
                return Ok(link.clone());
            }
        }
        let link = self.open(leader, peer_url)?;
        link.waiters
            .lock()
            .expect("waiters lock")
            .by_id
            .insert(id, waiter);
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Drops `link` from use (if still in use); its stream ends once its writes are answered.
    fn forget(&self, link: &Arc<Link>) {
        let mut slot = self.link.lock().expect("forward link lock");
        if slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, link))
        {
            *slot = None;
        }
    }

    fn open(&self, leader: NodeId, peer_url: &str) -> Result<Arc<Link>, ForwardFailure> {
        let client = self
            .peers
            .client(leader, peer_url)
            .map_err(|e| ForwardFailure::NeverDelivered(e.to_string()))?;
        let (outbound, queued) = mpsc::unbounded_channel();
        let waiters: Arc<Mutex<Waiters>> = Arc::default();
        let request = self
            .peers
            .stream_request(UnboundedReceiverStream::new(queued));
        tokio::spawn(drive(client, request, waiters.clone()));
        Ok(Arc::new(Link {
            leader,
            peer_url: peer_url.to_string(),
            outbound,
            waiters,
        }))
    }
}

/// Runs one stream: hands each answer to its waiter; when the stream ends, tells every waiter
/// left why it has no answer.
async fn drive(
    mut client: PeerClient<tonic::transport::Channel>,
    request: tonic::Request<UnboundedReceiverStream<RaftMessage>>,
    waiters: Arc<Mutex<Waiters>>,
) {
    let failure = match client.forward_writes(request).await {
        Err(status) if super::never_delivered(&status) => {
            ForwardFailure::NeverDelivered(status.to_string())
        }
        Err(status) => ForwardFailure::Unknown(status.to_string()),
        Ok(response) => {
            let mut answers = response.into_inner();
            loop {
                let handed_over = match answers.message().await {
                    Ok(Some(message)) => hand_over(&waiters, &message.payload),
                    Ok(None) => Err(ForwardFailure::Unknown(
                        "the leader ended the forward stream".to_string(),
                    )),
                    Err(status) => Err(ForwardFailure::Unknown(status.to_string())),
                };
                if let Err(failure) = handed_over {
                    break failure;
                }
            }
        }
    };
    let mut waiters = waiters.lock().expect("waiters lock");
    waiters.closed = true;
    for (_, waiter) in waiters.by_id.drain() {
        let _ = waiter.send(Err(failure.clone()));
    }
}

/// Gives one answer of the stream to the write waiting for it (none when it gave up).
fn hand_over(waiters: &Mutex<Waiters>, payload: &[u8]) -> Result<(), ForwardFailure> {
    let (id, reply) = decode::<(u64, ForwardWriteReply)>(payload)
        .map_err(|e| ForwardFailure::Unknown(format!("undecodable answer from the leader: {e}")))?;
    let waiter = waiters.lock().expect("waiters lock").by_id.remove(&id);
    if let Some(waiter) = waiter {
        let _ = waiter.send(Ok(reply));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::network::Faults;

    fn compact() -> Command {
        Command::Compact { revision: 1 }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// A leader that refuses the connection got nothing: the caller may retry the write.
    #[tokio::test]
    async fn a_refused_stream_is_never_delivered_and_the_next_write_opens_a_new_one() {
        let forwarder = Forwarder::new(Peers::new(1, Faults::default()));
        let url = crate::network::closed_port_url();
        for _ in 0..2 {
            match forwarder.write(2, &url, &compact(), soon()).await {
                Err(ForwardFailure::NeverDelivered(_)) => {}
                other => panic!("expected never delivered, got {other:?}"),
            }
        }
    }

    /// A leader that takes the write and never answers leaves its outcome unknown.
    #[tokio::test]
    async fn a_write_without_an_answer_is_unknown() {
        // Accepts the connection and reads, never answering: the stream opens, nothing returns.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut sink).await;
        });
        let forwarder = Forwarder::new(Peers::new(1, Faults::default()));
        let deadline = Instant::now() + Duration::from_millis(300);
        match forwarder.write(2, &url, &compact(), deadline).await {
            Err(ForwardFailure::Unknown(_)) => {}
            other => panic!("expected unknown, got {other:?}"),
        }
        silent.abort();
    }

    /// A cut link sends nothing: the write may be retried once the link is back.
    #[tokio::test]
    async fn a_cut_link_is_never_delivered() {
        let faults = Faults::default();
        let forwarder = Forwarder::new(Peers::new(1, faults.clone()));
        faults.set_cut(BTreeSet::from([2]));
        match forwarder
            .write(2, "http://127.0.0.1:9", &compact(), soon())
            .await
        {
            Err(ForwardFailure::NeverDelivered(reason)) => {
                assert!(reason.contains("cut by fault injection"), "{reason}");
            }
            other => panic!("expected never delivered, got {other:?}"),
        }
    }
}
