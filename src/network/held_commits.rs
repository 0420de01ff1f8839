//! The leader's commit-only appends, held back briefly for the next append to the same follower.
//!
//! openraft's replication stream sends a follower an append without entries whenever the
//! leader's commit index moves, so that the follower learns what to apply. Under one client that
//! is one more append per write, and one more answer, beside the append that carried the write:
//! half of the peer messages, each waking the follower's Raft core. The next append carries the
//! newer commit index anyway. So an entry-less append waits on the leader, for at most [`HOLD`]:
//! if another append of the same stream comes meanwhile, that one goes alone and carries the
//! commit; otherwise the held one goes when the time is up.
//!
//! Why leaving one out is safe. openraft matches the answers of a stream to its requests by log
//! id, not one for one: an answer retires every request whose last log id its matching log id
//! covers (`InflightAppendQueue::drain_acked`). The append that replaces a held one is from the
//! same leader (same vote), starts no earlier and carries a commit index no lower, so its answer
//! retires the held one, and the follower learns at least as much from it. The leader lease
//! counts from the sending time openraft recorded for the answered request, which is the later
//! append's own; a held append that does go out carries the time it was made, before it was
//! sent, so a lease counted from it is shorter, never longer.
//!
//! What it costs: a follower applies a write up to [`HOLD`] later when no other write follows,
//! so a serializable read there, or a session read waiting for the write's revision, may wait
//! that much longer. A follower that asks for a read index is about to wait for its state
//! machine to reach the leader's commit, so the leader releases what it holds for that follower
//! at once ([`HeldCommits::release`]); linearizable reads on followers do not wait for the hold.
//!
//! Must never: reorder appends; drop an append that carries entries; hold a commit index longer
//! than [`HOLD`] (a newer commit-only append that replaces a held one keeps its deadline) or
//! past the end of its stream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt;
use openraft::raft::AppendEntriesRequest;
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::types::NodeId;
use crate::types::TypeConfig;

/// The longest a commit-only append waits for a later append to carry its commit index. Under
/// one client the next write's append comes a client round trip after the commit (0.2-0.6 ms on
/// loopback); longer than this the follower's apply would lag visibly.
pub(crate) const HOLD: Duration = Duration::from_millis(2);

type Request = AppendEntriesRequest<TypeConfig>;

/// Per follower, a way to make the leader's replication stream send what it holds at once.
/// Cheap to clone: clones share the signals.
#[derive(Clone, Default)]
pub struct HeldCommits {
    by_target: Arc<Mutex<HashMap<NodeId, Arc<Notify>>>>,
}

impl HeldCommits {
    fn signal(&self, target: NodeId) -> Arc<Notify> {
        self.by_target
            .lock()
            .expect("held commits lock")
            .entry(target)
            .or_default()
            .clone()
    }

    /// Sends the commit-only append held for `target`, if any, without waiting for the hold to
    /// end. With none held, the next one held for it goes at once.
    pub fn release(&self, target: NodeId) {
        let signal = self
            .by_target
            .lock()
            .expect("held commits lock")
            .get(&target)
            .cloned();
        if let Some(signal) = signal {
            signal.notify_one();
        }
    }

    /// Wraps the appends of one replication stream to `target`.
    pub(crate) fn hold<S>(&self, target: NodeId, input: S) -> HoldCommitOnly<S> {
        HoldCommitOnly {
            input,
            input_done: false,
            held: None,
            after_held: None,
            hold: HOLD,
            timer: None,
            signal: self.signal(target),
            released: None,
        }
    }
}

/// Whether `later` carries everything `earlier`, an append without entries, tells the follower.
fn replaces(later: &Request, earlier: &Request) -> bool {
    later.vote == earlier.vote
        && later.prev_log_id >= earlier.prev_log_id
        && later.leader_commit >= earlier.leader_commit
}

/// The appends of one replication stream, with commit-only appends held back (module docs).
pub(crate) struct HoldCommitOnly<S> {
    input: S,
    input_done: bool,
    held: Option<Request>,
    /// Taken from the input behind a held append that it cannot replace: it goes next.
    after_held: Option<Request>,
    hold: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    signal: Arc<Notify>,
    released: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<S> HoldCommitOnly<S> {
    #[cfg(test)]
    fn with_hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    #[cfg(test)]
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.held.as_ref()?;
        self.timer.as_ref().map(|timer| timer.deadline())
    }

    fn start_holding(&mut self, request: Request) {
        self.held = Some(request);
        let deadline = tokio::time::Instant::now() + self.hold;
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        let signal = self.signal.clone();
        self.released = Some(Box::pin(async move { signal.notified().await }));
    }

    fn send_held(&mut self) -> Option<Request> {
        self.released = None;
        self.held.take()
    }
}

impl<S> Stream for HoldCommitOnly<S>
where
    S: Stream<Item = Request> + Unpin,
{
    type Item = Request;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        let this = self.get_mut();
        if let Some(request) = this.after_held.take() {
            return Poll::Ready(Some(request));
        }
        while !this.input_done {
            match this.input.poll_next_unpin(cx) {
                Poll::Ready(Some(request)) => {
                    if let Some(held) = this.held.as_ref()
                        && !replaces(&request, held)
                    {
                        this.after_held = Some(request);
                        return Poll::Ready(this.send_held());
                    }
                    // Replaced, if one was held: the new one carries its commit.
                    let replaced = this.held.take().is_some();
                    if request.entries.is_empty() {
                        if replaced {
                            // Within the replaced one's deadline: a run of commit-only appends
                            // never holds a commit longer than the hold.
                            this.held = Some(request);
                        } else {
                            this.start_holding(request);
                        }
                        continue;
                    }
                    this.released = None;
                    return Poll::Ready(Some(request));
                }
                Poll::Ready(None) => this.input_done = true,
                Poll::Pending => break,
            }
        }
        if this.input_done {
            // What is held goes before the end.
            return Poll::Ready(this.send_held());
        }
        if this.held.is_some() {
            let expired = this
                .timer
                .as_mut()
                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
            let released = this
                .released
                .as_mut()
                .is_some_and(|released| released.as_mut().poll(cx).is_ready());
            if expired || released {
                return Poll::Ready(this.send_held());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use openraft::alias::CommittedLeaderIdOf;
    use openraft::alias::EntryOf;
    use openraft::alias::LogIdOf;
    use openraft::alias::VoteOf;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;

    const FOLLOWER: NodeId = 2;

    fn log_id(index: u64) -> LogIdOf<TypeConfig> {
        LogIdOf::<TypeConfig>::new(CommittedLeaderIdOf::<TypeConfig>::new(3, 1), index)
    }

    /// An append from the leader of term 3 after `prev`, committed up to `commit`, with
    /// `entries` blank entries.
    fn append(term: u64, prev: u64, commit: u64, entries: u64) -> Request {
        AppendEntriesRequest {
            vote: VoteOf::<TypeConfig>::new_committed(term, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: Some(log_id(commit)),
            entries: (prev + 1..=prev + entries)
                .map(|index| EntryOf::<TypeConfig>::new_blank(log_id(index)))
                .collect(),
        }
    }

    fn summary(request: &Request) -> (u64, u64, usize) {
        (
            request.prev_log_id.expect("prev").index(),
            request.leader_commit.expect("commit").index(),
            request.entries.len(),
        )
    }

    type Input = mpsc::UnboundedSender<Request>;

    fn held_stream(
        commits: &HeldCommits,
    ) -> (Input, HoldCommitOnly<UnboundedReceiverStream<Request>>) {
        let (input, receiver) = mpsc::unbounded_channel();
        (
            input,
            commits.hold(FOLLOWER, UnboundedReceiverStream::new(receiver)),
        )
    }

    async fn next_now(
        stream: &mut HoldCommitOnly<UnboundedReceiverStream<Request>>,
    ) -> Option<Option<(u64, u64, usize)>> {
        tokio::task::yield_now().await;
        stream
            .next()
            .now_or_never()
            .map(|request| request.map(|r| summary(&r)))
    }

    #[tokio::test]
    async fn a_commit_only_append_followed_by_another_append_goes_out_inside_it() {
        let commits = HeldCommits::default();
        let (input, mut stream) = held_stream(&commits);
        input.send(append(3, 10, 10, 0)).unwrap();
        assert_eq!(next_now(&mut stream).await, None, "held, not sent");
        input.send(append(3, 10, 10, 2)).unwrap();
        assert_eq!(next_now(&mut stream).await, Some(Some((10, 10, 2))));
        // A commit-only append replaced by a newer one, which a write's append then replaces.
        input.send(append(3, 12, 11, 0)).unwrap();
        input.send(append(3, 12, 12, 0)).unwrap();
        input.send(append(3, 12, 12, 1)).unwrap();
        assert_eq!(next_now(&mut stream).await, Some(Some((12, 12, 1))));
        drop(input);
        assert_eq!(next_now(&mut stream).await, Some(None));
    }

    #[tokio::test]
    async fn a_commit_only_append_with_nothing_after_it_goes_out_when_the_hold_ends() {
        let commits = HeldCommits::default();
        let (input, stream) = held_stream(&commits);
        let hold = Duration::from_millis(50);
        let mut stream = stream.with_hold(hold);
        let started = tokio::time::Instant::now();
        input.send(append(3, 10, 10, 0)).unwrap();
        assert_eq!(next_now(&mut stream).await, None);
        let sent = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        assert_eq!(
            sent.expect("sent once the hold ends").map(|r| summary(&r)),
            Some((10, 10, 0))
        );
        assert!(started.elapsed() >= hold, "sent before the hold ended");
        drop(input);
    }

    #[tokio::test]
    async fn a_newer_commit_only_append_keeps_the_deadline_of_the_one_it_replaces() {
        let commits = HeldCommits::default();
        let (input, stream) = held_stream(&commits);
        let mut stream = stream.with_hold(Duration::from_millis(300));
        input.send(append(3, 10, 10, 0)).unwrap();
        assert_eq!(next_now(&mut stream).await, None);
        let first = stream.deadline().expect("held with a deadline");
        tokio::time::sleep(Duration::from_millis(5)).await;
        input.send(append(3, 10, 11, 0)).unwrap();
        assert_eq!(next_now(&mut stream).await, None);
        assert_eq!(stream.deadline(), Some(first), "the hold was extended");
        // Once sent, the next hold starts afresh.
        let sent = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        assert_eq!(
            sent.expect("sent once the hold ends").map(|r| summary(&r)),
            Some((10, 11, 0))
        );
        input.send(append(3, 10, 12, 0)).unwrap();
        assert_eq!(next_now(&mut stream).await, None);
        assert!(stream.deadline().expect("held again") > first);
        drop(input);
    }

    #[tokio::test]
    async fn a_release_for_the_follower_sends_its_held_append_at_once() {
        let commits = HeldCommits::default();
        let (input, mut stream) = held_stream(&commits);
        input.send(append(3, 10, 10, 0)).unwrap();
        assert_eq!(next_now(&mut stream).await, None);
        commits.release(FOLLOWER + 1);
        assert_eq!(
            next_now(&mut stream).await,
            None,
            "another follower's release"
        );
        commits.release(FOLLOWER);
        assert_eq!(next_now(&mut stream).await, Some(Some((10, 10, 0))));
        drop(input);
    }

    #[tokio::test]
    async fn the_end_of_the_stream_sends_what_is_held_first() {
        let commits = HeldCommits::default();
        let (input, mut stream) = held_stream(&commits);
        input.send(append(3, 10, 10, 0)).unwrap();
        drop(input);
        assert_eq!(next_now(&mut stream).await, Some(Some((10, 10, 0))));
        assert_eq!(next_now(&mut stream).await, Some(None));
    }

    #[tokio::test]
    async fn an_append_that_cannot_replace_the_held_one_goes_after_it() {
        let commits = HeldCommits::default();
        let (input, mut stream) = held_stream(&commits);
        input.send(append(3, 10, 10, 0)).unwrap();
        // Another vote (never within one stream, but order must hold whatever comes).
        input.send(append(4, 10, 10, 1)).unwrap();
        assert_eq!(next_now(&mut stream).await, Some(Some((10, 10, 0))));
        assert_eq!(next_now(&mut stream).await, Some(Some((10, 10, 1))));
        // A lower commit index cannot replace it either.
        input.send(append(3, 11, 11, 0)).unwrap();
        input.send(append(3, 11, 10, 1)).unwrap();
        assert_eq!(next_now(&mut stream).await, Some(Some((11, 11, 0))));
        assert_eq!(next_now(&mut stream).await, Some(Some((11, 10, 1))));
        drop(input);
        assert_eq!(next_now(&mut stream).await, Some(None));
    }
}
