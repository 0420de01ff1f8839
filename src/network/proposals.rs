//! The leader's proposals: writes that arrive together go to openraft together, so they become
//! one log append.
//!
//! openraft merges the client writes already waiting in its queue into one append. But its core
//! task runs as soon as the first write of a burst wakes it (tokio runs a task just woken right
//! after the task that woke it), so with many clients most appends held one or two entries: 1.7
//! at 64 clients, each append costing a `pwrite`, a hand-off to the log flusher and wake-ups of
//! the replication tasks.
//!
//! ```text
//! write: no other write in flight -> raft.client_write, at once (a lone client waits for nothing)
//!        else -> queue; the first queued spawns a sender task
//! sender: other writes in flight beyond the queued ones -> let the tasks already queued run once
//!         take the queue -> raft.write(command).responder(..) for each, in a row (merged by openraft)
//! ```
//!
//! Why wait only while other writes are in flight: a commit answers many clients at once, and
//! their next writes arrive together; the tasks reading them are queued behind the sender.
//!
//! Must never: lose a write's answer (every queued write is sent or its responder dropped, which
//! its waiter reads as stopped); hold a write past one turn of the scheduler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;

use openraft::alias::WriteResponderOf;
use openraft::errors::ClientWriteError;
use openraft::errors::Fatal;
use openraft::errors::RaftError;
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResponse;

use crate::types::Command;
use crate::types::Raft;
use crate::types::TypeConfig;

pub type ProposalResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

#[derive(Default)]
struct Queue {
    pending: Vec<(Arc<Command>, WriteResponderOf<TypeConfig>)>,
    /// A sender task is on its way to take `pending`.
    sending: bool,
}

/// Proposes client writes on this node's Raft (it must lead). Cheap to clone: clones share the
/// queue, and every part of a node that writes must share one.
#[derive(Clone)]
pub struct Proposals {
    raft: Raft,
    queue: Arc<Mutex<Queue>>,
    /// Writes proposed here and not yet answered (or given up by their caller).
    in_flight: Arc<AtomicUsize>,
}

/// Counts one write in flight until dropped (answered, or its caller gave up).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proposals {
    pub fn new(raft: Raft) -> Self {
        Proposals {
            raft,
            queue: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    /// Proposes `command` and waits for its applied result, as `Raft::client_write` does.
    pub async fn write(&self, command: Arc<Command>) -> ProposalResult {
        let others = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.in_flight);
        if others == 0 {
            return self.raft.client_write(command).await;
        }
        let (responder, answer) = ProgressResponder::complete_only();
        let start_sender = {
            let mut queue = self.queue.lock().expect("proposal queue lock");
            queue.pending.push((command, responder));
            !std::mem::replace(&mut queue.sending, true)
        };
        if start_sender {
            tokio::spawn(self.clone().send_queued());
        }
        match answer.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(RaftError::APIError(e)),
            // The responder was dropped: openraft stopped before taking the write.
            Err(_) => Err(RaftError::Fatal(Fatal::Stopped)),
        }
    }

    async fn send_queued(self) {
        let others_in_flight = {
            let queue = self.queue.lock().expect("proposal queue lock");
            self.in_flight.load(Ordering::Relaxed) > queue.pending.len()
        };
        if others_in_flight {
            YieldOnce(false).await;
        }
        let batch = {
            let mut queue = self.queue.lock().expect("proposal queue lock");
            queue.sending = false;
            std::mem::take(&mut queue.pending)
        };
        for (command, responder) in batch {
            // Fails only once openraft has stopped; the responder is dropped then.
            let _ = self.raft.write(command).responder(responder).await;
        }
    }
}

/// Pending once, after waking itself: tokio puts a task that woke itself behind the tasks
/// already queued on its worker, so those run first.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::test_support::lone_leader;
    use crate::types::CommandOutput;
    use crate::types::PutOp;

    fn put(key: usize, value: &str) -> Arc<Command> {
        Arc::new(Command::Put(PutOp {
            key: format!("k{key}").into_bytes(),
            value: value.as_bytes().to_vec(),
            prev_kv: true,
            ..PutOp::default()
        }))
    }

    /// The writes of tasks woken together (as a connection wakes its requests' tasks) join one
    /// append, and each still gets the answer of its own write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn writes_woken_together_share_an_append_and_each_gets_its_own_answer() {
        const WRITES: usize = 32;
        let dir = tempfile::tempdir().unwrap();
        let (raft, metrics) = lone_leader(dir.path()).await;
        let proposals = Proposals::new(raft.clone());
        for key in 0..WRITES {
            proposals.write(put(key, "old")).await.unwrap();
        }
        let appends_before = metrics.log_appends.get();

        // Spawned from a task on the worker, the writers queue behind each other there.
        let writers = tokio::spawn({
            let proposals = proposals.clone();
            async move {
                let writers: Vec<_> = (0..WRITES)
                    .map(|key| {
                        let proposals = proposals.clone();
                        tokio::spawn(async move { proposals.write(put(key, "new")).await })
                    })
                    .collect();
                let mut answers = Vec::new();
                for writer in writers {
                    answers.push(writer.await.unwrap().unwrap().data);
                }
                answers
            }
        });
        let answers = writers.await.unwrap();

        let appends = metrics.log_appends.get() - appends_before;
        // One for the first write (nothing else in flight), one for the rest; a few more if the
        // log flusher finished in between. One each, without the batching.
        assert!(
            appends <= 4,
            "{WRITES} writes took {appends} appends; expected them to share"
        );
        let mut revisions = std::collections::BTreeSet::new();
        for (key, answer) in answers.into_iter().enumerate() {
            revisions.insert(answer.revision);
            match answer.result {
                Ok(CommandOutput::Put {
                    prev_kv: Some(previous),
                }) => {
                    assert_eq!(previous.key, format!("k{key}").into_bytes());
                    assert_eq!(previous.value, b"old");
                }
                other => panic!("write {key} answered {other:?}"),
            }
        }
        assert_eq!(revisions.len(), WRITES, "every write has its own revision");
        raft.shutdown().await.unwrap();
    }
}
