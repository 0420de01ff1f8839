//! Exactly-once writes, client side: a random client id, write numbers from 1, and the
//! acknowledgement that lets the server forget finished writes.
//!
//! ```text
//! begin(deadline): take a slot (at most CLIENT_SESSION_WINDOW writes in flight)
//!                  seq = next++; wait until seq < ack + CLIENT_SESSION_WINDOW
//! every attempt:   metadata quorumdb-client-id / -seq / -ack (ack = lowest unfinished seq,
//!                  or 1 until the server has answered a write of this id)
//! ticket dropped:  seq finished (outcome delivered or given up) -> ack may advance
//! ```
//!
//! Why the second wait: the server keeps at most `CLIENT_SESSION_WINDOW` responses per client and
//! forgets the oldest beyond that. Counting writes in flight is not enough to protect a slow
//! write: while write 1 is still being retried, writes 2..=200 may have finished, and the server
//! would have forgotten 1's slot. Keeping every number in flight within `[ack, ack + WINDOW)`
//! means every response the client may still ask for again is kept.
//!
//! Must never: reuse a number for a different request under the same id.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::hash::Hasher;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::sync::Notify;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Numbered writes one client may have unfinished at once: the number of responses the server
/// keeps per client (`limits::CLIENT_SESSION_WINDOW` on the server side; the two must agree).
pub const CLIENT_SESSION_WINDOW: usize = crate::limits::CLIENT_SESSION_WINDOW;

const _: () = assert!(CLIENT_SESSION_WINDOW == crate::limits::CLIENT_SESSION_WINDOW);

/// gRPC metadata of a numbered write (the server's contract; the names are final).
pub const CLIENT_ID_METADATA: &str = crate::api::metadata::CLIENT_ID_KEY;
pub const CLIENT_SEQ_METADATA: &str = crate::api::metadata::CLIENT_SEQ_KEY;
pub const CLIENT_ACK_METADATA: &str = crate::api::metadata::CLIENT_ACK_KEY;

/// A random, nonzero client id. No random-number crate: std's `RandomState` is seeded from the
/// OS per process and per instance; time, pid and a counter make ids of one process distinct.
pub(crate) fn random_client_id() -> u64 {
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.write_u64(DRAWN.fetch_add(1, Ordering::Relaxed));
        let id = hasher.finish();
        if id != 0 {
            return id;
        }
    }
}

#[derive(Debug)]
struct Numbers {
    /// The number the next write gets.
    next: u64,
    /// Numbers handed out whose outcome has not been delivered yet.
    unfinished: BTreeSet<u64>,
}

/// One client id and its numbering. Replaced by a fresh one when the server says it forgot this
/// id; writes still in flight keep the one they started with.
#[derive(Debug)]
pub(crate) struct WriteSession {
    id: u64,
    slots: Arc<Semaphore>,
    numbers: Mutex<Numbers>,
    finished: Notify,
    /// A write under this id was answered: the server holds a session for it.
    known_to_server: AtomicBool,
}

impl WriteSession {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(WriteSession {
            id: random_client_id(),
            slots: Arc::new(Semaphore::new(CLIENT_SESSION_WINDOW)),
            numbers: Mutex::new(Numbers {
                next: 1,
                unfinished: BTreeSet::new(),
            }),
            finished: Notify::new(),
            known_to_server: AtomicBool::new(false),
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn numbers(&self) -> std::sync::MutexGuard<'_, Numbers> {
        self.numbers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lowest number whose outcome has not been delivered (every number below it is done).
    pub(crate) fn ack(&self) -> u64 {
        let numbers = self.numbers();
        numbers.unfinished.first().copied().unwrap_or(numbers.next)
    }

    /// The `quorumdb-client-ack` to send: [`WriteSession::ack`] once a write under this id was
    /// answered, 1 before. The server reads an ack above 1 from an id it has no session for as
    /// "this client's session was dropped" and refuses the write; but a client whose first writes
    /// were all refused before reaching the log (an empty key) has finished numbers the server
    /// never saw.
    pub(crate) fn ack_to_send(&self) -> u64 {
        if self.known_to_server.load(Ordering::Acquire) {
            self.ack()
        } else {
            1
        }
    }

    /// A write under this id was applied (or replayed): the server has its session.
    pub(crate) fn confirm(&self) {
        self.known_to_server.store(true, Ordering::Release);
    }

    /// Numbers the next write; `None` if the deadline passes first (nothing was sent).
    pub(crate) async fn begin(self: &Arc<Self>, deadline: Instant) -> Option<WriteTicket> {
        let slot = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let seq = {
            let mut numbers = self.numbers();
            let seq = numbers.next;
            numbers.next += 1;
            numbers.unfinished.insert(seq);
            seq
        };
        // Built before waiting, so a deadline below finishes the number again.
        let ticket = WriteTicket {
            session: self.clone(),
            seq,
            _slot: slot,
        };
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if seq < self.ack() + CLIENT_SESSION_WINDOW as u64 {
                return Some(ticket);
            }
            tokio::time::timeout_at(deadline, finished).await.ok()?;
        }
    }
}

/// One numbered write in flight; dropping it marks the number finished.
#[derive(Debug)]
pub(crate) struct WriteTicket {
    session: Arc<WriteSession>,
    seq: u64,
    _slot: OwnedSemaphorePermit,
}

impl WriteTicket {
    pub(crate) fn session(&self) -> &Arc<WriteSession> {
        &self.session
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.session.numbers().unfinished.remove(&self.seq);
        self.session.finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn client_ids_are_nonzero_and_distinct() {
        let ids: BTreeSet<u64> = (0..1000).map(|_| random_client_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&0));
    }

    #[tokio::test]
    async fn ack_is_the_lowest_unfinished_number() {
        let session = WriteSession::new();
        assert_eq!(session.ack(), 1, "a new client acknowledges nothing");
        let first = session.begin(soon()).await.expect("slot");
        let second = session.begin(soon()).await.expect("slot");
        assert_eq!((first.seq(), second.seq()), (1, 2));
        drop(second);
        assert_eq!(session.ack(), 1, "write 1 is still unfinished");
        drop(first);
        assert_eq!(session.ack(), 3);
    }

    #[tokio::test]
    async fn ack_stays_1_until_the_server_has_answered_a_write_of_this_id() {
        let session = WriteSession::new();
        let refused = session.begin(soon()).await.expect("slot");
        drop(refused); // e.g. an empty key: refused before the log, the server never saw it
        let next = session.begin(soon()).await.expect("slot");
        assert_eq!((session.ack(), session.ack_to_send()), (2, 1));
        session.confirm();
        assert_eq!(session.ack_to_send(), 2);
        drop(next);
        assert_eq!(session.ack_to_send(), 3);
    }

    #[tokio::test]
    async fn a_write_waits_while_an_old_one_holds_the_window() {
        let session = WriteSession::new();
        let oldest = session.begin(soon()).await.expect("slot");
        for _ in 1..CLIENT_SESSION_WINDOW {
            drop(session.begin(soon()).await.expect("slot"));
        }
        // Numbers 2..=128 are done, 1 is not: 129 would leave the server's window.
        let mut waiting = tokio::spawn({
            let session = session.clone();
            async move { session.begin(soon()).await.map(|t| t.seq()) }
        });
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(early.is_err(), "write 129 went ahead of write 1: {early:?}");
        drop(oldest);
        assert_eq!(waiting.await.expect("task"), Some(129));
    }

    #[tokio::test]
    async fn a_write_that_never_got_its_turn_finishes_its_number() {
        let session = WriteSession::new();
        let oldest = session.begin(soon()).await.expect("slot");
        for _ in 1..CLIENT_SESSION_WINDOW {
            drop(session.begin(soon()).await.expect("slot"));
        }
        let gave_up = session
            .begin(Instant::now() + Duration::from_millis(20))
            .await;
        assert!(gave_up.is_none());
        drop(oldest);
        assert_eq!(session.ack(), CLIENT_SESSION_WINDOW as u64 + 2);
    }
}
