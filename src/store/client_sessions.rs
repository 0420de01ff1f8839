//! Client sessions: what makes a numbered write ([`Command::Numbered`]) apply at most once.
//!
//! A client that wants exactly-once writes picks a random id and numbers its writes from 1. The
//! state machine keeps, per client, the numbers it has applied and their responses, so a write
//! re-sent after an ambiguous failure (a lost response, a leader change) answers the first
//! application's response instead of applying again.
//!
//! ```text
//! numbered write (client, seq, ack) at log index i
//!   expire idle sessions (untouched for CLIENT_SESSION_IDLE_LOG_ENTRIES entries)
//!   unknown client: ack > 1 -> Forgotten (it had a session we dropped); else open a session
//!   floor = max(floor, ack)                  forget responses below the floor
//!   seq < floor            -> Forgotten      (not applied; the original's outcome is unknown)
//!   seq already applied    -> Replay         (the stored response, nothing applied)
//!   otherwise              -> Apply          (keep its response; at most WINDOW kept per client)
//! ```
//!
//! Every rule depends only on the log (indexes, ids, numbers), never on time or local config, so
//! every replica keeps the same sessions. The sessions live in the key space tree as extra
//! entries, written in the same batch as the data they describe, so they are in every snapshot
//! and survive restarts; [`ClientSessions`] is the in-memory index over them, rebuilt on open and
//! after a snapshot install.
//!
//! Must never: apply a numbered write whose number the session has seen or forgotten; decide
//! anything from the wall clock.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;

use serde::Deserialize;
use serde::Serialize;

use super::mvcc::EXTRA_PREFIX;
use super::mvcc::ExtraChanges;
use super::mvcc::KeySpace;
use crate::codec::decode;
use crate::codec::encode;
use crate::limits::CLIENT_SESSION_IDLE_LOG_ENTRIES;
use crate::limits::CLIENT_SESSION_WINDOW;
use crate::limits::CLIENT_SESSIONS_MAX;
use crate::types::ClientWrite;
use crate::types::CommandResponse;
use crate::types::KvError;

const SESSION_TAG: &[u8] = b"session/c/";
const RESPONSE_TAG: &[u8] = b"session/r/";

fn session_prefix() -> Vec<u8> {
    let mut key = vec![EXTRA_PREFIX];
    key.extend_from_slice(SESSION_TAG);
    key
}

fn response_prefix() -> Vec<u8> {
    let mut key = vec![EXTRA_PREFIX];
    key.extend_from_slice(RESPONSE_TAG);
    key
}

fn session_key(client: u64) -> Vec<u8> {
    let mut key = session_prefix();
    key.extend_from_slice(&client.to_be_bytes());
    key
}

fn response_key(client: u64, seq: u64) -> Vec<u8> {
    let mut key = response_prefix();
    key.extend_from_slice(&client.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn parse_u64s<const N: usize>(key: &[u8], prefix_len: usize) -> io::Result<[u64; N]> {
    let rest = &key[prefix_len..];
    if rest.len() != 8 * N {
        return Err(invalid_data(format!(
            "malformed client session key {key:?}"
        )));
    }
    let mut numbers = [0u64; N];
    for (i, number) in numbers.iter_mut().enumerate() {
        *number = u64::from_be_bytes(rest[8 * i..8 * i + 8].try_into().expect("8 bytes"));
    }
    Ok(numbers)
}

/// What a session stores besides its responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSession {
    /// Numbers below it are forgotten.
    floor: u64,
    /// Log index of the last numbered write of this client.
    last_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    stored: StoredSession,
    /// Numbers applied and not yet forgotten; each has a stored response.
    applied: BTreeSet<u64>,
}

/// What to do with one numbered write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Apply the command; its response must be recorded with [`BatchRecord::applied`].
    Apply,
    /// Already applied in an earlier batch: answer this response, apply nothing.
    Replay(CommandResponse),
    /// Already applied earlier in this batch, by the entry at this position.
    ReplayInBatch(usize),
    /// The session no longer knows this number: apply nothing, answer this error.
    Forgotten(KvError),
}

/// The changes one batch makes to the stored sessions, in order (a later write to a key wins).
#[derive(Debug, Default)]
pub struct BatchRecord {
    /// (client, seq) -> position in the batch, for numbers applied in this batch.
    applied: BTreeMap<(u64, u64), usize>,
    /// Stored response keys to insert (position of the response) or remove, in order.
    responses: Vec<(Vec<u8>, Option<usize>)>,
    /// Clients whose stored session changed.
    touched: BTreeSet<u64>,
}

/// The in-memory index of every client session (see the module docs).
#[derive(Debug, Default)]
pub struct ClientSessions {
    sessions: BTreeMap<u64, Session>,
    /// (last_index, client): the order sessions expire and are evicted in.
    by_last_index: BTreeSet<(u64, u64)>,
}

impl ClientSessions {
    /// Rebuilds the index from the key space's stored sessions.
    pub fn load(keyspace: &KeySpace) -> io::Result<ClientSessions> {
        let mut sessions = BTreeMap::new();
        let prefix = session_prefix();
        for (key, value) in keyspace.scan_extra(&prefix)? {
            let [client] = parse_u64s::<1>(&key, prefix.len())?;
            let stored: StoredSession = decode(&value)?;
            sessions.insert(
                client,
                Session {
                    stored,
                    applied: BTreeSet::new(),
                },
            );
        }
        let prefix = response_prefix();
        for (key, _) in keyspace.scan_extra(&prefix)? {
            let [client, seq] = parse_u64s::<2>(&key, prefix.len())?;
            let Some(session) = sessions.get_mut(&client) else {
                return Err(invalid_data(format!(
                    "a stored response of write {seq} for client {client:x}, which has no session"
                )));
            };
            session.applied.insert(seq);
        }
        let by_last_index = sessions
            .iter()
            .map(|(client, session)| (session.stored.last_index, *client))
            .collect();
        Ok(ClientSessions {
            sessions,
            by_last_index,
        })
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Decides what the numbered write `write` at log index `log_index` (position `position` in
    /// the batch) does, and updates the sessions accordingly; the stored side of the change goes
    /// into `record`. Reads stored responses from `keyspace` for replays.
    pub fn admit(
        &mut self,
        keyspace: &KeySpace,
        write: ClientWrite,
        log_index: u64,
        position: usize,
        record: &mut BatchRecord,
    ) -> io::Result<Admission> {
        self.expire_idle(log_index, record);
        let forgotten = Admission::Forgotten(KvError::ClientSessionForgotten {
            client: write.client,
            seq: write.seq,
        });
        if !self.sessions.contains_key(&write.client) {
            if write.ack > 1 {
                // The client has finished writes before: its session existed and was dropped.
                return Ok(forgotten);
            }
            self.open(write.client, log_index, record);
        }
        record.touched.insert(write.client);

        let session = self.sessions.get_mut(&write.client).expect("opened above");
        self.by_last_index
            .remove(&(session.stored.last_index, write.client));
        session.stored.last_index = log_index;
        self.by_last_index.insert((log_index, write.client));
        if write.ack > session.stored.floor {
            session.stored.floor = write.ack;
            forget_below(write.client, session, record);
        }

        if write.seq < session.stored.floor {
            return Ok(forgotten);
        }
        if session.applied.contains(&write.seq) {
            if let Some(&earlier) = record.applied.get(&(write.client, write.seq)) {
                return Ok(Admission::ReplayInBatch(earlier));
            }
            let bytes = keyspace
                .get_extra(&response_key(write.client, write.seq))?
                .ok_or_else(|| {
                    invalid_data(format!(
                        "no stored response for applied write {} of client {:x}",
                        write.seq, write.client
                    ))
                })?;
            return Ok(Admission::Replay(decode(&bytes)?));
        }

        session.applied.insert(write.seq);
        record.applied.insert((write.client, write.seq), position);
        record
            .responses
            .push((response_key(write.client, write.seq), Some(position)));
        if session.applied.len() > CLIENT_SESSION_WINDOW {
            let oldest = *session.applied.first().expect("not empty");
            session.stored.floor = oldest + 1;
            forget_below(write.client, session, record);
        }
        assert!(session.applied.len() <= CLIENT_SESSION_WINDOW);
        Ok(Admission::Apply)
    }

    /// The extra entries (key, value to insert or `None` to remove) that store `record`, with
    /// `responses` the batch's responses by position.
    pub fn stored_changes(
        &self,
        record: &BatchRecord,
        responses: &[CommandResponse],
    ) -> io::Result<ExtraChanges> {
        let mut changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for (key, position) in &record.responses {
            let value = match position {
                Some(position) => Some(encode(&responses[*position])?),
                None => None,
            };
            changes.insert(key.clone(), value);
        }
        for client in &record.touched {
            let value = match self.sessions.get(client) {
                Some(session) => Some(encode(&session.stored)?),
                None => None,
            };
            changes.insert(session_key(*client), value);
        }
        Ok(changes.into_iter().collect())
    }

    fn open(&mut self, client: u64, log_index: u64, record: &mut BatchRecord) {
        let session = Session {
            stored: StoredSession {
                floor: 1,
                last_index: log_index,
            },
            applied: BTreeSet::new(),
        };
        assert!(self.sessions.insert(client, session).is_none());
        self.by_last_index.insert((log_index, client));
        while self.sessions.len() > CLIENT_SESSIONS_MAX {
            let &(_, oldest) = self.by_last_index.first().expect("sessions are indexed");
            assert_ne!(oldest, client, "the newest session is never the oldest");
            self.drop_session(oldest, record);
        }
    }

    fn expire_idle(&mut self, log_index: u64, record: &mut BatchRecord) {
        while let Some(&(last_index, client)) = self.by_last_index.first() {
            if last_index.saturating_add(CLIENT_SESSION_IDLE_LOG_ENTRIES) >= log_index {
                break;
            }
            self.drop_session(client, record);
        }
    }

    fn drop_session(&mut self, client: u64, record: &mut BatchRecord) {
        let session = self
            .sessions
            .remove(&client)
            .expect("indexed sessions exist");
        self.by_last_index
            .remove(&(session.stored.last_index, client));
        for seq in session.applied {
            record.responses.push((response_key(client, seq), None));
        }
        record.touched.insert(client);
    }
}

/// Drops the responses of `session` below its floor.
fn forget_below(client: u64, session: &mut Session, record: &mut BatchRecord) {
    let kept = session.applied.split_off(&session.stored.floor);
    for seq in std::mem::replace(&mut session.applied, kept) {
        record.responses.push((response_key(client, seq), None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::CommandOutput;

    fn keyspace() -> (tempfile::TempDir, KeySpace) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("open sled");
        let keyspace = KeySpace::open(
            db.open_tree("keyspace").expect("tree"),
            &crate::store::history_dir(dir.path()),
        )
        .expect("open");
        (dir, keyspace)
    }

    fn write(client: u64, seq: u64, ack: u64) -> ClientWrite {
        ClientWrite { client, seq, ack }
    }

    fn response(revision: i64) -> CommandResponse {
        CommandResponse {
            revision,
            result: Ok(CommandOutput::Put { prev_kv: None }),
        }
    }

    /// Admits `writes` as one batch at consecutive log indexes from `first_index`, stores the
    /// changes (each applied write answering revision = its log index) and returns the decisions.
    fn batch(
        keyspace: &KeySpace,
        sessions: &mut ClientSessions,
        first_index: u64,
        writes: &[ClientWrite],
    ) -> Vec<Admission> {
        let mut record = BatchRecord::default();
        let admissions: Vec<Admission> = writes
            .iter()
            .enumerate()
            .map(|(position, w)| {
                sessions
                    .admit(
                        keyspace,
                        *w,
                        first_index + position as u64,
                        position,
                        &mut record,
                    )
                    .expect("admit")
            })
            .collect();
        let responses: Vec<CommandResponse> = (0..writes.len())
            .map(|position| response(first_index as i64 + position as i64))
            .collect();
        let changes = sessions
            .stored_changes(&record, &responses)
            .expect("changes");
        keyspace.apply(&[], changes).expect("store the changes");
        admissions
    }

    #[test]
    fn a_repeated_number_replays_the_first_response_in_and_across_batches() {
        let (_dir, keyspace) = keyspace();
        let mut sessions = ClientSessions::default();
        let decisions = batch(
            &keyspace,
            &mut sessions,
            10,
            &[write(7, 1, 1), write(7, 1, 1), write(7, 2, 1)],
        );
        assert_eq!(
            decisions,
            vec![
                Admission::Apply,
                Admission::ReplayInBatch(0),
                Admission::Apply
            ]
        );
        let decisions = batch(&keyspace, &mut sessions, 20, &[write(7, 1, 1)]);
        assert_eq!(decisions, vec![Admission::Replay(response(10))]);
    }

    #[test]
    fn acknowledged_numbers_are_forgotten_and_refused_not_applied() {
        let (_dir, keyspace) = keyspace();
        let mut sessions = ClientSessions::default();
        batch(
            &keyspace,
            &mut sessions,
            1,
            &[write(7, 1, 1), write(7, 2, 1)],
        );
        let decisions = batch(
            &keyspace,
            &mut sessions,
            3,
            &[write(7, 3, 3), write(7, 1, 3)],
        );
        assert_eq!(decisions[0], Admission::Apply);
        assert!(matches!(
            decisions[1],
            Admission::Forgotten(KvError::ClientSessionForgotten { client: 7, seq: 1 })
        ));
        let reloaded = ClientSessions::load(&keyspace).expect("load");
        assert_eq!(reloaded.sessions, sessions.sessions);
        assert_eq!(
            reloaded.sessions[&7].applied,
            BTreeSet::from([3]),
            "the responses of 1 and 2 are gone from the store too"
        );
    }

    #[test]
    fn at_most_a_window_of_responses_is_kept_per_client() {
        let (_dir, keyspace) = keyspace();
        let mut sessions = ClientSessions::default();
        let writes: Vec<ClientWrite> = (1..=CLIENT_SESSION_WINDOW as u64 + 2)
            .map(|seq| write(9, seq, 1))
            .collect();
        batch(&keyspace, &mut sessions, 1, &writes);
        assert_eq!(sessions.sessions[&9].applied.len(), CLIENT_SESSION_WINDOW);
        assert_eq!(sessions.sessions[&9].stored.floor, 3);
        let decisions = batch(&keyspace, &mut sessions, 1000, &[write(9, 2, 1)]);
        assert!(matches!(decisions[0], Admission::Forgotten(_)));
    }

    #[test]
    fn idle_sessions_expire_and_their_clients_are_told_not_reapplied() {
        let (_dir, keyspace) = keyspace();
        let mut sessions = ClientSessions::default();
        batch(&keyspace, &mut sessions, 1, &[write(5, 1, 1)]);
        let later = 2 + CLIENT_SESSION_IDLE_LOG_ENTRIES;
        let decisions = batch(
            &keyspace,
            &mut sessions,
            later,
            &[write(6, 1, 1), write(5, 2, 2)],
        );
        assert_eq!(decisions[0], Admission::Apply);
        assert!(
            matches!(decisions[1], Admission::Forgotten(_)),
            "a client with finished writes and no session was dropped: refused"
        );
        assert!(!sessions.sessions.contains_key(&5));
        let reloaded = ClientSessions::load(&keyspace).expect("load");
        assert_eq!(reloaded.sessions, sessions.sessions);
    }

    #[test]
    fn the_least_recently_used_session_is_evicted_beyond_the_cap() {
        let (_dir, keyspace) = keyspace();
        let mut sessions = ClientSessions::default();
        let writes: Vec<ClientWrite> = (1..=CLIENT_SESSIONS_MAX as u64 + 1)
            .map(|client| write(client, 1, 1))
            .collect();
        batch(&keyspace, &mut sessions, 1, &writes);
        assert_eq!(sessions.len(), CLIENT_SESSIONS_MAX);
        assert!(
            !sessions.sessions.contains_key(&1),
            "client 1 was used first"
        );
        let reloaded = ClientSessions::load(&keyspace).expect("load");
        assert_eq!(reloaded.len(), CLIENT_SESSIONS_MAX);
    }
}
